/**
 * The engine: a loaded model, its tokenizer and latent cache, and the generation loop for
 * one sequence at a time (the server's scheduler batches many on top of the same model).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../backends/backend.js';
import { openCheckpoint } from '../formats/checkpoint.js';
import type { Checkpoint } from '../formats/types.js';
import { DeepseekModel, type ModelCache } from '../models/deepseek.js';
import { loadTokenizer, type ShoalTokenizer } from '../tokenizer/tokenizer.js';
import { UserError } from '../errors.js';
import { BlockAllocator, SequenceBlocks } from './kv-cache.js';
import { Sampler, StopStringMatcher, defaultSamplingParams, type SamplingParams } from './sampling.js';

export interface EngineOptions {
  backend: Backend;
  /** Tokens of context the cache is sized for (default: min(max_position_embeddings, 4096)). */
  maxContext?: number;
  /** Tokens per cache block. */
  blockSize?: number;
  /** Prompt tokens per forward pass during prefill (bounds activation memory). */
  prefillChunk?: number;
  onProgress?: (done: number, total: number) => void;
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

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationStats {
  promptTokens: number;
  completionTokens: number;
  prefillMs: number;
  decodeMs: number;
  finishReason: FinishReason;
  tokenIds: number[];
}

export class Engine {
  readonly cache: ModelCache;
  readonly alloc: BlockAllocator;
  readonly maxContext: number;
  readonly prefillChunk: number;
  /** Sampling defaults from generation_config.json, else greedy. */
  readonly defaultSampling: SamplingParams;

  private constructor(
    readonly dir: string,
    readonly ckpt: Checkpoint,
    readonly model: DeepseekModel,
    readonly tokenizer: ShoalTokenizer,
    readonly backend: Backend,
    opts: EngineOptions,
  ) {
    const cfg = model.cfg;
    this.maxContext = Math.min(opts.maxContext ?? 4096, cfg.maxPositionEmbeddings);
    const blockSize = opts.blockSize ?? 16;
    this.alloc = new BlockAllocator(Math.ceil(this.maxContext / blockSize), blockSize);
    this.cache = model.createCache(this.alloc.numBlocks, blockSize);
    this.prefillChunk = opts.prefillChunk ?? 256;
    this.defaultSampling = readGenerationConfig(dir);
  }

  static async load(dir: string, opts: EngineOptions): Promise<Engine> {
    const ckpt = openCheckpoint(dir);
    try {
      const model = DeepseekModel.load(ckpt, opts.backend, { onProgress: opts.onProgress });
      const tokenizer = await loadTokenizer(dir);
      return new Engine(dir, ckpt, model, tokenizer, opts.backend, opts);
    } catch (e) {
      ckpt.tensors.close();
      throw e;
    }
  }

  /** Token ids that end generation: the config's EOS ids and the tokenizer's EOS. */
  get eosTokenIds(): number[] {
    const ids = new Set(this.model.cfg.eosTokenIds);
    if (this.tokenizer.eosTokenId !== undefined) ids.add(this.tokenizer.eosTokenId);
    return [...ids];
  }

  /**
   * Generates from prompt token ids, yielding text chunks as they complete (never half a
   * UTF-8 character, never part of a stop string). Returns the statistics.
   */
  async *generate(prompt: number[], opts: GenerateOptions = {}): AsyncGenerator<string, GenerationStats> {
    const cfg = this.model.cfg;
    if (!prompt.length) throw new UserError('the prompt is empty');
    for (const id of prompt) if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) throw new UserError(`token id ${id} outside the vocabulary (${cfg.vocabSize})`, 'prompt');
    const maxTokens = opts.maxTokens ?? 256;
    if (prompt.length >= this.maxContext) {
      throw new UserError(`prompt is ${prompt.length} tokens, the context holds ${this.maxContext}`, 'prompt');
    }
    const budget = Math.min(maxTokens, this.maxContext - prompt.length);
    const sampler = new Sampler({ ...this.defaultSampling, ...stripUndefined(opts.sampling ?? {}) }, cfg.vocabSize, prompt);
    const stopIds = new Set([...(opts.ignoreEos ? [] : this.eosTokenIds), ...(opts.stopTokenIds ?? [])]);
    const stops = new StopStringMatcher(opts.stop ?? []);
    const detok = this.tokenizer.streamDecoder({ contextIds: prompt, skipSpecialTokens: true });
    const seq = new SequenceBlocks(this.alloc);
    const b = this.model.placement.backendFor(cfg.numHiddenLayers - 1);
    const tokenIds: number[] = [];
    let finishReason: FinishReason = 'length';
    const t0 = performance.now();
    let prefillMs = 0;
    try {
      if (!seq.ensure(prompt.length + budget)) throw new UserError('not enough KV-cache blocks for this request');
      const blockTables = [seq.table()];
      // Prefill in chunks; only the last position's logits are needed.
      let logits: Float32Array | null = null;
      for (let start = 0; start < prompt.length; start += this.prefillChunk) {
        const end = Math.min(prompt.length, start + this.prefillChunk);
        const n = end - start;
        const batch = {
          tokens: Int32Array.from(prompt.slice(start, end)),
          positions: Int32Array.from({ length: n }, (_, i) => start + i),
          seqIndex: new Int32Array(n),
          blockTables,
        };
        const hidden = await this.model.forward(batch, this.cache);
        if (end === prompt.length) logits = await b.read(this.model.logits(hidden, Int32Array.of(n - 1)));
        if (opts.signal?.aborted) return { promptTokens: prompt.length, completionTokens: 0, prefillMs: performance.now() - t0, decodeMs: 0, finishReason: 'abort', tokenIds };
      }
      prefillMs = performance.now() - t0;
      let pos = prompt.length;
      while (tokenIds.length < budget) {
        const token = sampler.sample(logits!);
        sampler.accept(token);
        tokenIds.push(token);
        if (stopIds.has(token)) { finishReason = 'stop'; break; }
        const r = stops.push(detok.push(token));
        if (r.emit) yield r.emit;
        if (r.stopped) { finishReason = 'stop'; break; }
        if (tokenIds.length >= budget) break;
        if (opts.signal?.aborted) { finishReason = 'abort'; break; }
        const hidden = await this.model.forward({ tokens: Int32Array.of(token), positions: Int32Array.of(pos), seqIndex: new Int32Array(1), blockTables }, this.cache);
        logits = await b.read(this.model.logits(hidden));
        pos++;
      }
      if (finishReason !== 'stop' || !stops.stopped) {
        const tail = stops.push(detok.flush());
        const rest = tail.emit + (tail.stopped ? '' : stops.flush());
        if (rest) yield rest;
      }
    } finally {
      seq.releaseAll();
    }
    return {
      promptTokens: prompt.length,
      completionTokens: tokenIds.length,
      prefillMs,
      decodeMs: performance.now() - t0 - prefillMs,
      finishReason,
      tokenIds,
    };
  }

  close(): void {
    this.ckpt.tensors.close();
    this.backend.dispose();
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** HF generation_config.json sampling defaults (temperature, top_p, top_k), else greedy. */
function readGenerationConfig(dir: string): SamplingParams {
  const p = { ...defaultSamplingParams(), temperature: 0 };
  const file = join(dir, 'generation_config.json');
  if (!existsSync(file)) return p;
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
