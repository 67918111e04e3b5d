/**
 * Golden check: run a fixture folder (see ../shared/fixtures/README.md) and compare prefill,
 * decode (through the KV cache) and MTP logits with those of DeepSeek's reference implementation.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../backends/backend.js';
import { openSafetensors, toFloat32 } from '../formats/safetensors.js';
import { loadOpenedModel, openModelPath } from '../models/open.js';
import type { QuantizeType } from '../models/weights.js';
import { UserError } from '../errors.js';
import { BlockAllocator, SequenceBlocks } from './kv-cache.js';

export const GOLDEN_TOLERANCE = 1e-3;

export interface GoldenComparison {
  name: 'prefill' | 'decode' | 'mtp';
  rows: number;
  maxAbsDiff: number;
  argmaxAgree: number;
  pass: boolean;
}

export interface GoldenReport {
  dir: string;
  architecture: string;
  comparisons: GoldenComparison[];
  pass: boolean;
}

interface GoldenJson {
  prompt_token_ids: number[];
  decode_token_ids: number[];
}

function argmax(v: Float32Array, off: number, n: number): number {
  let best = 0;
  for (let j = 1; j < n; j++) if (v[off + j] > v[off + best]) best = j;
  return best;
}

function compare(name: GoldenComparison['name'], ours: Float32Array, ref: Float32Array, vocab: number, tol: number): GoldenComparison {
  if (ours.length !== ref.length) throw new UserError(`${name}: golden has ${ref.length / vocab} rows, computed ${ours.length / vocab}`);
  const rows = ref.length / vocab;
  let maxAbsDiff = 0;
  let argmaxAgree = 0;
  for (let i = 0; i < ours.length; i++) {
    const d = Math.abs(ours[i] - ref[i]);
    if (!(d <= maxAbsDiff)) maxAbsDiff = Number.isNaN(d) ? Infinity : d;
  }
  for (let r = 0; r < rows; r++) if (argmax(ours, r * vocab, vocab) === argmax(ref, r * vocab, vocab)) argmaxAgree++;
  return { name, rows, maxAbsDiff, argmaxAgree, pass: maxAbsDiff <= tol && argmaxAgree === rows };
}

function readGoldenJson(dir: string): GoldenJson {
  const file = join(dir, 'golden.json');
  if (!existsSync(file)) throw new UserError('missing golden.json', dir);
  let j: unknown;
  try {
    j = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new UserError(`invalid JSON: ${(e as Error).message}`, file);
  }
  const g = j as Partial<GoldenJson>;
  for (const k of ['prompt_token_ids', 'decode_token_ids'] as const) {
    if (!Array.isArray(g[k]) || !g[k]!.every((v) => Number.isInteger(v))) throw new UserError(`field "${k}" must be a list of token ids`, file);
  }
  if (g.prompt_token_ids!.length < 2) throw new UserError('field "prompt_token_ids" needs at least 2 tokens', file);
  return g as GoldenJson;
}

export interface GoldenOptions {
  /** Pack projection weights on load (`--quantize`), to measure what packing costs. */
  quantize?: QuantizeType | null;
}

/**
 * Runs a fixture: a folder with golden.json, golden.safetensors and either a Hugging Face
 * checkpoint or model.gguf.
 */
export async function runGolden(dir: string, backend: Backend, tol = GOLDEN_TOLERANCE, opts: GoldenOptions = {}): Promise<GoldenReport> {
  const golden = readGoldenJson(dir);
  const goldenFile = join(dir, 'golden.safetensors');
  if (!existsSync(goldenFile)) throw new UserError('missing golden.safetensors', dir);
  const ref = openSafetensors(goldenFile);
  let opened: ReturnType<typeof openModelPath>;
  try {
    opened = openModelPath(dir);
  } catch (e) {
    ref.close();
    throw e;
  }
  try {
    const model = loadOpenedModel(opened, backend, { quantize: opts.quantize });
    const V = model.cfg.vocabSize;
    const refArray = (name: string) => {
      const info = ref.info(name);
      if (info.shape[info.shape.length - 1] !== V) throw new UserError(`${name} has shape [${info.shape}], vocabulary is ${V}`, goldenFile);
      return toFloat32(info, ref.read(name));
    };
    const prompt = Int32Array.from(golden.prompt_token_ids);
    const decode = Int32Array.from(golden.decode_token_ids);
    for (const id of [...prompt, ...decode]) if (id < 0 || id >= V) throw new UserError(`token id ${id} outside the vocabulary (${V})`, join(dir, 'golden.json'));
    const L = prompt.length;
    const total = L + decode.length;
    if (total > model.cfg.maxPositionEmbeddings) throw new UserError(`prompt plus decode tokens (${total}) exceed max_position_embeddings`, dir);

    const blockSize = 16;
    const alloc = new BlockAllocator(Math.ceil(total / blockSize) + 1, blockSize);
    const cache = model.createCache(alloc.numBlocks, blockSize);
    const seq = new SequenceBlocks(alloc);
    seq.ensure(total);
    const blockTables = [seq.table()];
    const comparisons: GoldenComparison[] = [];

    // Prefill: the whole prompt in one forward pass, logits at every position.
    const positions = Int32Array.from({ length: L }, (_, i) => i);
    const prefillBatch = { tokens: prompt, positions, seqIndex: new Int32Array(L), blockTables };
    const hidden = await model.forward(prefillBatch, cache);
    const b = model.placement.backendFor(model.cfg.numHiddenLayers - 1);
    comparisons.push(compare('prefill', await b.read(model.logits(hidden)), refArray('prefill_logits'), V, tol));

    // Decode: one token at a time through the cache.
    if (decode.length && ref.has('decode_logits')) {
      const rows = new Float32Array(decode.length * V);
      for (let k = 0; k < decode.length; k++) {
        const step = { tokens: decode.subarray(k, k + 1), positions: Int32Array.of(L + k), seqIndex: new Int32Array(1), blockTables };
        const h = await model.forward(step, cache);
        rows.set(await b.read(model.logits(h)), k * V);
      }
      comparisons.push(compare('decode', rows, refArray('decode_logits'), V, tol));
    }

    // MTP: position i sees hidden h_i and the embedding of prompt[i+1] (zeroed at position 0).
    if (model.mtpForward && model.mtp.length && ref.has('mtp_logits')) {
      const n = L - 1;
      const next = Int32Array.from({ length: n }, (_, i) => (i === 0 ? -1 : prompt[i + 1]));
      const rows = Int32Array.from({ length: n }, (_, i) => i);
      const mtpBatch = { positions: rows, seqIndex: new Int32Array(n), blockTables };
      const { logits } = await model.mtpForward(0, b.gatherRows(hidden, rows), next, mtpBatch, cache);
      comparisons.push(compare('mtp', await model.mtp[0].decoder.backend.read(logits), refArray('mtp_logits'), V, tol));
    }
    return { dir, architecture: model.cfg.architecture, comparisons, pass: comparisons.every((c) => c.pass) };
  } finally {
    opened.close();
    ref.close();
  }
}
