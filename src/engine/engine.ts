/**
 * The engine: a checkpoint loaded onto a backend, its tokenizer, and the scheduler that
 * runs generations (one at a time for `shoal run`, many batched for `shoal serve`).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../backends/backend.js';
import type { LanguageModel } from '../models/model.js';
import { loadOpenedModel, openModelPath } from '../models/open.js';
import type { QuantizeType } from '../models/weights.js';
import { loadTokenizer, type ShoalTokenizer } from '../tokenizer/tokenizer.js';
import { tokenizerFromGguf } from '../tokenizer/gguf-tokenizer.js';
import { UserError } from '../errors.js';
import { defaultSamplingParams, type SamplingParams } from './sampling.js';
import { Scheduler } from './scheduler.js';
import type { FinishReason } from './scheduler-types.js';

export interface EngineOptions {
  backend: Backend;
  /** Tokens of context (default: min(max_position_embeddings, 4096)). */
  maxContext?: number;
  /** Tokens per cache block. */
  blockSize?: number;
  /** Tokens per forward pass over all sequences (long prompts are prefilled in chunks of this). */
  maxBatchTokens?: number;
  /** Sequences decoded together. */
  maxRunning?: number;
  maxQueue?: number;
  kvCacheMb?: number;
  speculative?: 'mtp' | null;
  onProgress?: (done: number, total: number) => void;
  /** Pack projection weights on load (`--quantize`). */
  quantize?: QuantizeType | null;
}

export interface GenerateOptions {
  sampling?: Partial<SamplingParams>;
  maxTokens?: number;
  stop?: string[];
  stopTokenIds?: number[];
  /** Keep going past EOS (benchmarks). */
  ignoreEos?: boolean;
  signal?: AbortSignal;
}

export interface GenerationStats {
  promptTokens: number;
  completionTokens: number;
  /** Time to the first token (prefill). */
  prefillMs: number;
  /** Time after the first token. */
  decodeMs: number;
  finishReason: FinishReason;
  tokenIds: number[];
  draftTokens: number;
  acceptedTokens: number;
}

/** A checkpoint loaded onto a backend with its tokenizer: what a scheduler runs on. */
export interface LoadedModel {
  dir: string;
  model: LanguageModel;
  tokenizer: ShoalTokenizer;
  backend: Backend;
  /** Sampling defaults from generation_config.json, else greedy. */
  defaultSampling: SamplingParams;
  /** Closes the checkpoint's files and frees the backend. */
  close(): void;
}

export interface LoadModelOptions {
  /** Pack projection weights on load (`--quantize`). */
  quantize?: QuantizeType | null;
}

/**
 * Opens a Hugging Face model folder or a .gguf file (llama.cpp's deepseek2, llama or qwen2),
 * uploads its weights to `backend` and loads its tokenizer.
 */
export async function loadModel(dir: string, backend: Backend, onProgress?: (done: number, total: number) => void, opts: LoadModelOptions = {}): Promise<LoadedModel> {
  const opened = openModelPath(dir);
  try {
    const model = loadOpenedModel(opened, backend, { onProgress, quantize: opts.quantize });
    // A GGUF carries its tokenizer and chat template; it has no generation_config (greedy by default).
    const tokenizer = opened.ggufFile ? tokenizerFromGguf(opened.ggufFile) : await loadTokenizer(dir);
    const defaultSampling = opened.ggufFile ? readGenerationConfig('') : readGenerationConfig(dir);
    if (opened.ggufFile) opened.close(); // every tensor has been read
    return {
      dir, model, tokenizer, backend, defaultSampling,
      close: () => { opened.close(); backend.dispose(); },
    };
  } catch (e) {
    opened.close();
    throw e;
  }
}

/** A loaded model and the scheduler that runs its generations. */
export class Engine {
  readonly scheduler: Scheduler;
  readonly model: LanguageModel;
  readonly tokenizer: ShoalTokenizer;
  readonly backend: Backend;
  readonly defaultSampling: SamplingParams;

  private constructor(readonly loaded: LoadedModel, opts: EngineOptions) {
    ({ model: this.model, tokenizer: this.tokenizer, backend: this.backend, defaultSampling: this.defaultSampling } = loaded);
    this.scheduler = new Scheduler(this.model, this.tokenizer, this.backend, {
      maxRunning: opts.maxRunning ?? 1,
      maxQueue: opts.maxQueue ?? 256,
      kvCacheMb: opts.kvCacheMb,
      blockSize: opts.blockSize,
      maxBatchTokens: opts.maxBatchTokens,
      maxContext: opts.maxContext,
      speculative: opts.speculative,
      defaultSampling: this.defaultSampling,
    });
  }

  static async load(dir: string, opts: EngineOptions): Promise<Engine> {
    const loaded = await loadModel(dir, opts.backend, opts.onProgress, { quantize: opts.quantize });
    try {
      return new Engine(loaded, opts);
    } catch (e) {
      loaded.close();
      throw e;
    }
  }

  get maxContext(): number {
    return this.scheduler.maxContext;
  }

  /**
   * Generates from prompt token ids, yielding text chunks as they complete (never half a
   * UTF-8 character, never part of a stop string). Returns the statistics.
   */
  async *generate(prompt: number[], opts: GenerateOptions = {}): AsyncGenerator<string, GenerationStats> {
    const maxTokens = Math.min(opts.maxTokens ?? 256, this.maxContext - prompt.length);
    if (maxTokens < 1) throw new UserError(`prompt is ${prompt.length} tokens, the context holds ${this.maxContext}`, 'prompt');
    const events = this.scheduler.submit({
      prompt, maxTokens, sampling: opts.sampling, stop: opts.stop, stopTokenIds: opts.stopTokenIds,
      ignoreEos: opts.ignoreEos, signal: opts.signal,
    });
    const tokenIds: number[] = [];
    for await (const e of events) {
      if (e.text) yield e.text;
      if (e.type === 'token') tokenIds.push(e.token.id);
      else {
        return {
          promptTokens: e.usage.promptTokens,
          completionTokens: e.usage.completionTokens,
          prefillMs: e.ttftMs,
          decodeMs: e.totalMs - e.ttftMs,
          finishReason: e.finishReason,
          tokenIds,
          draftTokens: e.draftTokens,
          acceptedTokens: e.acceptedTokens,
        };
      }
    }
    throw new Error('generation ended without a result');
  }

  async close(): Promise<void> {
    await this.scheduler.shutdown();
    this.loaded.close();
  }
}

/** HF generation_config.json sampling defaults (temperature, top_p, top_k), else greedy. */
export function readGenerationConfig(dir: string): SamplingParams {
  const p = { ...defaultSamplingParams(), temperature: 0 };
  const file = join(dir, 'generation_config.json');
  if (!dir || !existsSync(file)) return p;
  let g: Record<string, unknown>;
  try {
    g = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`invalid JSON: ${(e as Error).message}`, file);
  }
  if (g.do_sample === false) return p;
  if (typeof g.temperature === 'number') p.temperature = g.temperature;
  else if (g.do_sample === true) p.temperature = 1;
  if (typeof g.top_p === 'number') p.topP = g.top_p;
  if (typeof g.top_k === 'number' && g.top_k > 0) p.topK = g.top_k;
  return p;
}
