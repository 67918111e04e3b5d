/**
 * What the engine, the scheduler and the golden check ask of a loaded model, whatever its
 * architecture: DeepseekModel (models/deepseek.ts, MLA + MoE) and LlamaModel (models/llama.ts,
 * dense GQA) both implement LanguageModel.
 */
import type { AttentionBatch, Backend, KVPool, Routing, Tensor } from '../backends/backend.js';
import type { Placement } from '../engine/placement.js';
import type { QuantizeType } from './weights.js';

/** The config fields every architecture reports (dense models: no experts, no MTP). */
export interface ModelShape {
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  numHiddenLayers: number;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  nRoutedExperts: number;
  nSharedExperts: number;
  numExpertsPerTok: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  numNextnPredictLayers: number;
}

/** One forward step: new tokens of one or more sequences, and where their cache lives. */
export interface ForwardBatch extends AttentionBatch {
  tokens: Int32Array;
}

/** Per-backend cache pools for every layer of the model (main + MTP). */
export interface ModelCache {
  pools: Map<Backend, KVPool>;
  blockSize: number;
  numBlocks: number;
  /** Global layer index -> its first layer index inside its backend's pool. */
  poolLayer: number[];
}

/** A MoE layer's routing decision, collected on request (for statistics and visualisation). */
export interface LayerRouting {
  layer: number;
  backend: Backend;
  routing: Routing;
}

export interface LoadOptions {
  placement?: Placement;
  /** Pack projection weights on load (`--quantize`). */
  quantize?: QuantizeType | null;
  /** Where load notes go (format conversions); default stderr. */
  log?: (line: string) => void;
  /** Called after each layer is uploaded (for progress display). */
  onProgress?: (done: number, total: number) => void;
}

export interface LanguageModel {
  readonly cfg: ModelShape;
  readonly placement: Placement;
  /** Bytes of weights per backend after upload. */
  readonly weightBytes: Map<Backend, number>;
  /** Bytes of cache one token takes over all layers (float32 storage). */
  readonly cacheBytesPerToken: number;
  /** Allocates the paged cache: `numBlocks` blocks of `blockSize` tokens on every backend. */
  createCache(numBlocks: number, blockSize: number): ModelCache;
  /**
   * Runs the decoder over a batch of new tokens (prefill chunks and decode steps mixed), writing
   * their keys/values into the cache. Returns the final normalized hidden states [tokens, hidden].
   */
  forward(batch: ForwardBatch, cache: ModelCache, routings?: LayerRouting[]): Promise<Tensor>;
  /** LM-head logits for the given rows of `hidden` (e.g. each sequence's last token). */
  logits(hidden: Tensor, rows?: Int32Array): Tensor;
  /** Multi-token-prediction modules (empty when the model has none) and the backend each runs on. */
  readonly mtp: readonly { readonly decoder: { readonly backend: Backend } }[];
  /** MTP module k's logits and hidden state (models with MTP layers only). */
  mtpForward?(k: number, hidden: Tensor, nextTokens: Int32Array, batch: AttentionBatch, cache: ModelCache): Promise<{ logits: Tensor; hidden: Tensor }>;
}

/**
 * Cache pools for `layers` decoder layers that each take `slotsPerLayer` pool layers of `width`
 * floats per token, every layer's pool layers on the backend the placement gives it.
 */
export function createModelCache(placement: Placement, layers: number, slotsPerLayer: number, width: number, numBlocks: number, blockSize: number): ModelCache {
  const counts = new Map<Backend, number>();
  const poolLayer: number[] = [];
  for (let i = 0; i < layers; i++) {
    const b = placement.backendFor(i);
    poolLayer.push(counts.get(b) ?? 0);
    counts.set(b, (counts.get(b) ?? 0) + slotsPerLayer);
  }
  const pools = new Map<Backend, KVPool>();
  for (const [b, n] of counts) pools.set(b, b.createKVPool(n, numBlocks, blockSize, width));
  return { pools, blockSize, numBlocks, poolLayer };
}

/** Releases each of ts on b (Backend.release): the forward passes free their dead intermediates at once. */
export function releaseAll(b: Backend, ...ts: Tensor[]): void {
  for (const t of ts) b.release(t);
}
