/**
 * Running a small model entirely in a browser tab: the same model code (src/models/deepseek.ts)
 * on the same WebGPU backend (webgpu-backend.ts, here on the browser's `navigator.gpu`), the
 * same tokenizer and Sampler as `shoal serve`. Weights and tokenizer come from the server's
 * GET /api/model/files/NAME (src/formats/http-safetensors.ts); nothing else is fetched.
 *
 * scripts/build-web.js bundles this file (compiled to dist/src) with esbuild into
 * dist/web/inbrowser.js; the playground imports that bundle only when the in-tab mode is
 * switched on. Node built-ins that the shared modules import (node:fs for the local file
 * readers, node:crypto for the Rng's seed) are replaced in the bundle by stubs: none of those
 * code paths runs here, except getRandomValues, which maps to the Web Crypto API.
 *
 * Generation is one sequence at a time: prefill the prompt in one forward pass, then decode
 * token by token, each step reading back the last row's logits and choosing with the shared
 * Sampler (greedy = argmax, ties to the lower id, exactly as the server's scheduler does).
 */
/// <reference types="@webgpu/types" />
import { DeepseekModel, type ModelCache } from '../../models/deepseek.js';
import { HttpModelFolder, type HttpModelOptions } from '../../formats/http-safetensors.js';
import { ShoalTokenizer, type ChatMessage } from '../../tokenizer/tokenizer.js';
import { GREEDY_TEMPERATURE_EPS, Sampler, defaultSamplingParams, validateSamplingParams, type SamplingParams } from '../../engine/sampling.js';
import { WebGpuBackend } from './webgpu-backend.js';

export interface InTabLoadOptions extends HttpModelOptions {
  /** Where the model's files are, ending in `/` (default: the page's `/api/model/files/`). */
  baseUrl?: string;
  /** The WebGPU entry point (default: navigator.gpu). */
  gpu?: GPU;
  /** Tokens of context (default min(max_position_embeddings, 1024)). */
  maxContext?: number;
  /** Progress lines for the page (downloading, uploading layers). */
  onStatus?: (line: string) => void;
}

export interface InTabGenerateOptions {
  maxTokens?: number;
  /** Overrides of the model's sampling defaults (generation_config.json, else greedy). */
  sampling?: Partial<SamplingParams>;
  ignoreEos?: boolean;
  signal?: AbortSignal;
}

export interface InTabToken {
  id: number;
  /** Text completed by this token (may be empty while a character is split over tokens). */
  text: string;
}

export interface InTabResult {
  tokenIds: number[];
  text: string;
  finishReason: 'stop' | 'length' | 'aborted';
  promptTokens: number;
  /** Time to the first token (prefill + first choice). */
  prefillMs: number;
  /** Time after the first token. */
  decodeMs: number;
}

const BLOCK = 16;

/** HF generation_config.json's sampling defaults, else greedy (as engine.ts's readGenerationConfig). */
function generationDefaults(g: Record<string, unknown> | undefined): SamplingParams {
  const p = { ...defaultSamplingParams(), temperature: 0 };
  if (!g || g.do_sample === false) return p;
  if (typeof g.temperature === 'number') p.temperature = g.temperature;
  else if (g.do_sample === true) p.temperature = 1;
  if (typeof g.top_p === 'number') p.topP = g.top_p;
  if (typeof g.top_k === 'number' && g.top_k > 0) p.topK = g.top_k;
  return p;
}

export class InTabModel {
  private cache: ModelCache;
  private busy = false;

  private constructor(
    readonly model: DeepseekModel,
    readonly tokenizer: ShoalTokenizer,
    readonly backend: WebGpuBackend,
    readonly defaultSampling: SamplingParams,
    readonly maxContext: number,
    private readonly eos: number[],
  ) {
    this.cache = model.createCache(Math.ceil(maxContext / BLOCK), BLOCK);
  }

  /** Downloads the model's files, uploads the weights onto a WebGPU device and loads the tokenizer. */
  static async load(opts: InTabLoadOptions = {}): Promise<InTabModel> {
    const say = opts.onStatus ?? (() => {});
    const gpu = opts.gpu ?? (globalThis.navigator as Navigator | undefined)?.gpu;
    if (!gpu) throw new Error('this browser has no WebGPU (navigator.gpu is missing)');
    const baseUrl = opts.baseUrl ?? new URL('/api/model/files/', globalThis.location?.href).href;
    const folder = new HttpModelFolder(baseUrl, {
      ...opts,
      onProgress: (n, total) => {
        opts.onProgress?.(n, total);
        say(`downloading weights: ${(n / 1e6).toFixed(1)}${total ? ` of ${(total / 1e6).toFixed(1)}` : ''} MB`);
      },
    });
    const [tj, tcfg, gen] = await Promise.all([
      folder.json('tokenizer.json'),
      folder.json('tokenizer_config.json'),
      folder.json('generation_config.json', true),
    ]);
    const tokenizer = new ShoalTokenizer(tj!, tcfg!);
    const ckpt = await folder.checkpoint();
    say('requesting a WebGPU device');
    const backend = await WebGpuBackend.fromGpu(gpu);
    try {
      say('uploading weights');
      const model = DeepseekModel.load(ckpt, backend, {
        log: (l) => say(l),
        onProgress: (d, t) => say(`uploading weights: layer ${d} of ${t}`),
      });
      ckpt.tensors.close(); // every tensor has been copied to the device
      const cfg = model.cfg;
      const maxContext = Math.min(opts.maxContext ?? 1024, cfg.maxPositionEmbeddings);
      const eos = new Set(cfg.eosTokenIds);
      if (tokenizer.eosTokenId !== undefined) eos.add(tokenizer.eosTokenId);
      say(`ready: ${backend.info.name}`);
      return new InTabModel(model, tokenizer, backend, generationDefaults(gen), maxContext, [...eos]);
    } catch (e) {
      backend.dispose();
      throw e;
    }
  }

  /** Prompt ids for a chat, as the server's /v1/chat/completions builds them (no tools). */
  chatPrompt(messages: readonly ChatMessage[]): number[] {
    const text = this.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
    return this.tokenizer.encode(text, { addSpecialTokens: false });
  }

  /** Generates from prompt ids, yielding each token; returns the ids, the text and timings. */
  async *generate(prompt: readonly number[], opts: InTabGenerateOptions = {}): AsyncGenerator<InTabToken, InTabResult> {
    if (this.busy) throw new Error('a generation is already running in this tab');
    if (!prompt.length) throw new Error('empty prompt');
    const maxTokens = Math.min(opts.maxTokens ?? 256, this.maxContext - prompt.length);
    if (maxTokens < 1) throw new Error(`the prompt is ${prompt.length} tokens; the in-tab context holds ${this.maxContext}`);
    const params = validateSamplingParams({ ...this.defaultSampling, ...opts.sampling });
    const V = this.model.cfg.vocabSize;
    const sampler = new Sampler(params, V, prompt);
    const stopIds = new Set(opts.ignoreEos ? [] : this.eos);
    const decoder = this.tokenizer.streamDecoder({ skipSpecialTokens: true, contextIds: prompt });
    const table = Int32Array.from({ length: this.cache.numBlocks }, (_, i) => i);
    const backend = this.backend;
    const ids: number[] = [];
    let text = '';
    let finishReason: InTabResult['finishReason'] = 'length';
    const t0 = performance.now();
    let tFirst = 0;
    this.busy = true;
    try {
      let tokens = Int32Array.from(prompt);
      let pos = 0;
      while (ids.length < maxTokens) {
        if (opts.signal?.aborted) {
          finishReason = 'aborted';
          break;
        }
        const n = tokens.length;
        const batch = {
          tokens,
          positions: Int32Array.from({ length: n }, (_, i) => pos + i),
          seqIndex: new Int32Array(n),
          blockTables: [table],
        };
        const hidden = await this.model.forward(batch, this.cache);
        const logits = await backend.read(this.model.logits(hidden, Int32Array.of(n - 1)));
        pos += n;
        const id = sampler.sample(logits);
        sampler.accept(id);
        if (!tFirst) tFirst = performance.now();
        if (stopIds.has(id)) {
          finishReason = 'stop';
          break;
        }
        ids.push(id);
        const piece = decoder.push(id);
        text += piece;
        yield { id, text: piece };
        tokens = Int32Array.of(id);
      }
      const rest = decoder.flush();
      if (rest) {
        text += rest;
        yield { id: -1, text: rest };
      }
    } finally {
      this.busy = false;
    }
    const tEnd = performance.now();
    return { tokenIds: ids, text, finishReason, promptTokens: prompt.length, prefillMs: (tFirst || tEnd) - t0, decodeMs: tFirst ? tEnd - tFirst : 0 };
  }

  /** Whether `params` choose greedily (for display). */
  static isGreedy(params: Partial<SamplingParams>): boolean {
    return (params.temperature ?? 1) < GREEDY_TEMPERATURE_EPS;
  }

  close(): void {
    this.backend.dispose();
  }
}

/** The bundle's entry points (dist/web/inbrowser.js). */
export async function loadInTab(opts: InTabLoadOptions = {}): Promise<InTabModel> {
  return InTabModel.load(opts);
}
