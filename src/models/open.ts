/**
 * Opening a model path, whatever it holds: a Hugging Face DeepSeek folder, or a GGUF file of one
 * of the architectures shoal reads (llama.cpp's deepseek2, llama, qwen2), and loading it as the
 * model class of its architecture.
 */
import type { Backend } from '../backends/backend.js';
import { openCheckpoint } from '../formats/checkpoint.js';
import { openGguf, type GgufFile } from '../formats/gguf.js';
import type { Checkpoint } from '../formats/types.js';
import { UserError } from '../errors.js';
import { DeepseekModel } from './deepseek.js';
import { deepseekGgufModel, ggufPathOf, type GgufModel } from './gguf-deepseek.js';
import { isLlamaGgufArchitecture, LLAMA_GGUF_ARCHITECTURES, llamaGgufModel, type LlamaGgufModel } from './gguf-llama.js';
import { LlamaModel } from './llama.js';
import type { LanguageModel, LoadOptions } from './model.js';

/** GGUF general.architecture values shoal reads. */
export const GGUF_ARCHITECTURES: readonly string[] = ['deepseek2', ...Object.keys(LLAMA_GGUF_ARCHITECTURES)];

/** A model path opened: which model class reads it, its source, and the GGUF file (tokenizer inside) if any. */
export type OpenedModel =
  | { family: 'deepseek'; source: Checkpoint | GgufModel; ggufFile: GgufFile | null; close(): void }
  | { family: 'llama'; source: LlamaGgufModel; ggufFile: GgufFile; close(): void };

export function openModelPath(path: string): OpenedModel {
  const g = ggufPathOf(path);
  if (!g) {
    const ckpt = openCheckpoint(path);
    return { family: 'deepseek', source: ckpt, ggufFile: null, close: () => ckpt.tensors.close() };
  }
  const file = openGguf(g);
  try {
    const arch = file.string('general.architecture', true);
    if (arch === 'deepseek2') {
      const m = deepseekGgufModel(file);
      return { family: 'deepseek', source: m, ggufFile: file, close: () => file.close() };
    }
    if (isLlamaGgufArchitecture(arch)) return { family: 'llama', source: llamaGgufModel(file), ggufFile: file, close: () => file.close() };
    throw new UserError(`architecture "${arch}" is not supported (supported: ${GGUF_ARCHITECTURES.join(', ')})`, g);
  } catch (e) {
    file.close();
    throw e;
  }
}

/** Reads and uploads an opened model's weights with the model class of its architecture. */
export function loadOpenedModel(opened: OpenedModel, backend: Backend, opts: LoadOptions = {}): LanguageModel {
  return opened.family === 'llama' ? LlamaModel.load(opened.source, backend, opts) : DeepseekModel.load(opened.source, backend, opts);
}
