/**
 * DeepSeek V2 / V3 (and the models built on them: R1, Kimi K2, Moonlight).
 *
 * Read top to bottom: the rotary tables (YaRN), the weights of one layer, attention
 * (MLA over the compressed latent cache, absorbed form), the MLP (dense SwiGLU or MoE with
 * shared experts), the whole forward, and the multi-token-prediction (MTP) head.
 * Written once against the Backend interface; math follows DeepSeek's reference
 * inference/model.py, which the golden fixtures come from.
 */
import type {
  AttentionBatch, Backend, DeviceWeight, ExpertWeights, MlaShape, RouterConfig, Tensor,
} from '../backends/backend.js';
import type { Checkpoint } from '../formats/types.js';
import { parseDeepseekConfig, type DeepseekConfig } from './config.js';
import { WeightPreparer, WeightReader, type WeightSource } from './weights.js';
import { Placement } from '../engine/placement.js';
import { createModelCache, releaseAll, type ForwardBatch, type LanguageModel, type LayerRouting, type LoadOptions, type ModelCache } from './model.js';

export type { ForwardBatch, LayerRouting, LoadOptions, ModelCache } from './model.js';

// ---- rotary embedding ------------------------------------------------------------------

/**
 * YaRN settings when they take effect: as in DeepSeek's reference, only when the model's
 * context (max_position_embeddings) extends past the original one.
 */
function yarnScaling(cfg: DeepseekConfig) {
  const ys = cfg.ropeScaling;
  return ys && cfg.maxPositionEmbeddings > ys.originalMaxPositionEmbeddings ? ys : null;
}

/** Inverse RoPE frequencies for the rope slice, with YaRN's blend when rope_scaling is set. */
export function ropeInvFreq(cfg: DeepseekConfig): Float32Array {
  const dim = cfg.qkRopeHeadDim;
  const half = dim / 2;
  const freqs = new Float32Array(half);
  for (let i = 0; i < half; i++) freqs[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / dim);
  const ys = yarnScaling(cfg);
  if (!ys) return freqs;
  // Dimensions that rotate fewer than beta_slow times over the original context get
  // interpolated (divided by factor); those above beta_fast keep their frequency.
  const correctionDim = (rotations: number) =>
    (dim * Math.log(ys.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(cfg.ropeTheta));
  const low = Math.max(Math.floor(correctionDim(ys.betaFast)), 0);
  let high = Math.min(Math.ceil(correctionDim(ys.betaSlow)), dim - 1);
  if (low === high) high += 0.001;
  for (let i = 0; i < half; i++) {
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const smooth = 1 - ramp;
    freqs[i] = (freqs[i] / ys.factor) * (1 - smooth) + freqs[i] * smooth;
  }
  return freqs;
}

/** q·k scale: 1/sqrt(qk head dim), times mscale^2 under YaRN (mscale from mscale_all_dim). */
export function softmaxScale(cfg: DeepseekConfig): number {
  let scale = 1 / Math.sqrt(cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
  const ys = yarnScaling(cfg);
  if (ys && ys.factor > 1) {
    const m = 0.1 * ys.mscaleAllDim * Math.log(ys.factor) + 1;
    scale *= m * m;
  }
  return scale;
}

// ---- weights ---------------------------------------------------------------------------

interface AttentionWeights {
  qA?: DeviceWeight; // q_lora_rank set: x -> q_a -> norm -> q_b
  qANorm?: DeviceWeight;
  qB?: DeviceWeight;
  q?: DeviceWeight; // q_lora_rank null: plain q_proj
  kvA: DeviceWeight; // x -> [latent | rope key]
  kvANorm: DeviceWeight;
  kvB: DeviceWeight; // latent -> per-head [k_nope | v], used absorbed
  o: DeviceWeight;
}

interface DenseMlp { kind: 'dense'; gate: DeviceWeight; up: DeviceWeight; down: DeviceWeight }
interface MoeMlp {
  kind: 'moe';
  router: DeviceWeight;
  routerBias: DeviceWeight | null;
  experts: ExpertWeights[];
  shared: { gate: DeviceWeight; up: DeviceWeight; down: DeviceWeight } | null;
}

interface DecoderLayer {
  index: number;
  backend: Backend;
  inputNorm: DeviceWeight;
  attn: AttentionWeights;
  postAttnNorm: DeviceWeight;
  mlp: DenseMlp | MoeMlp;
}

/** The MTP module: one extra decoder layer fed [enorm(embedding of next token); hnorm(hidden)]. */
interface MtpLayer {
  decoder: DecoderLayer;
  embed: DeviceWeight;
  enorm: DeviceWeight;
  hnorm: DeviceWeight;
  ehProj: DeviceWeight;
  headNorm: DeviceWeight;
  head: DeviceWeight;
}

/** A model that is not a Hugging Face folder (a GGUF file): its config and its weights by HF name. */
export interface ModelSource {
  /** Named in messages (the file). */
  label: string;
  cfg: DeepseekConfig;
  weights: WeightSource;
}

export class DeepseekModel implements LanguageModel {
  readonly cfg: DeepseekConfig;
  readonly mla: MlaShape;
  readonly router: RouterConfig;
  readonly invFreq: Float32Array;
  readonly layers: DecoderLayer[] = [];
  readonly mtp: MtpLayer[] = [];
  readonly placement: Placement;
  private embed!: DeviceWeight;
  private finalNorm!: DeviceWeight;
  private lmHead!: DeviceWeight;
  /** Bytes of weights per backend after upload. */
  readonly weightBytes = new Map<Backend, number>();

  private constructor(cfg: DeepseekConfig, placement: Placement) {
    this.cfg = cfg;
    this.placement = placement;
    this.invFreq = ropeInvFreq(cfg);
    this.mla = {
      heads: cfg.numAttentionHeads,
      nopeDim: cfg.qkNopeHeadDim,
      ropeDim: cfg.qkRopeHeadDim,
      vDim: cfg.vHeadDim,
      kvRank: cfg.kvLoraRank,
      softmaxScale: softmaxScale(cfg),
    };
    const withBias = cfg.topkMethod === 'noaux_tc';
    this.router = {
      topK: cfg.numExpertsPerTok,
      scoring: cfg.scoringFunc,
      nGroup: cfg.topkMethod === 'greedy' ? 1 : cfg.nGroup,
      topkGroup: cfg.topkMethod === 'greedy' ? 1 : cfg.topkGroup,
      groupScore: withBias ? 'top2sum' : 'max',
      // V3 normalizes when norm_topk_prob, then always scales; V2 scales only when it does not normalize.
      normalize: cfg.normTopkProb && cfg.numExpertsPerTok > 1,
      scale: cfg.architecture === 'DeepseekV2ForCausalLM' && cfg.normTopkProb && cfg.numExpertsPerTok > 1 ? 1 : cfg.routedScalingFactor,
    };
  }

  /** Number of decoder layers including MTP layers (each has a slot in the latent cache). */
  get cacheLayers(): number {
    return this.cfg.numHiddenLayers + this.mtp.length;
  }

  /** Validates every tensor the architecture needs (shape, dtype, FP8 scales) without reading data. */
  static checkCheckpoint(ckpt: Checkpoint, opts: { mtp?: boolean } = {}): DeepseekConfig {
    const cfg = parseDeepseekConfig(ckpt.config, `${ckpt.dir}/config.json`);
    const r = new WeightReader(ckpt, cfg.weightBlockSize);
    for (const [name, shape] of expectedTensors(cfg, opts.mtp ?? true, (n) => r.has(n))) r.check(name, shape);
    return cfg;
  }

  /** Reads and uploads every weight, layer by layer, onto the placement's backends. */
  static load(src: Checkpoint | ModelSource, backendOrOpts: Backend | LoadOptions, maybeOpts: LoadOptions = {}): DeepseekModel {
    const opts = 'info' in backendOrOpts ? { ...maybeOpts, placement: maybeOpts.placement ?? Placement.single(backendOrOpts) } : backendOrOpts;
    let cfg: DeepseekConfig, r: WeightSource;
    if ('weights' in src) {
      ({ cfg, weights: r } = src);
      for (const [name, shape] of expectedTensors(cfg, true, (n) => r.has(n))) r.check(name, shape);
    } else {
      cfg = DeepseekModel.checkCheckpoint(src);
      r = new WeightReader(src, cfg.weightBlockSize);
    }
    const placement = opts.placement!;
    const m = new DeepseekModel(cfg, placement);
    // Each weight goes from the file to its backend (packed by --quantize, converted for formats the backend lacks) with no whole host copy where it can.
    const prep = new WeightPreparer({ quantize: opts.quantize, log: opts.log });
    const up = (b: Backend, name: string, shape: number[]) => {
      const dw = prep.upload(b, name, shape, r);
      m.weightBytes.set(b, (m.weightBytes.get(b) ?? 0) + dw.bytes);
      return dw;
    };
    const d = cfg.hiddenSize;
    const total = cfg.numHiddenLayers + 2;
    const first = placement.backendFor(0);
    m.embed = up(first, 'model.embed_tokens.weight', [cfg.vocabSize, d]);
    opts.onProgress?.(1, total);
    for (let i = 0; i < cfg.numHiddenLayers; i++) {
      m.layers.push(loadDecoderLayer(cfg, i, placement.backendFor(i), up));
      opts.onProgress?.(i + 2, total);
    }
    const last = placement.backendFor(cfg.numHiddenLayers - 1);
    m.finalNorm = up(last, 'model.norm.weight', [d]);
    m.lmHead = up(last, cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', [cfg.vocabSize, d]);
    for (let j = 0; j < cfg.numNextnPredictLayers; j++) {
      const i = cfg.numHiddenLayers + j;
      const b = placement.backendFor(i);
      const p = `model.layers.${i}`;
      // Published checkpoints store copies of the main embedding and LM head in the MTP layer;
      // small exports may leave them out, and then the main ones (same values) are used.
      const shared = (name: string, main: DeviceWeight, mainName: string) =>
        r.has(name) ? up(b, name, [cfg.vocabSize, d]) : b === last ? main : up(b, mainName, [cfg.vocabSize, d]);
      m.mtp.push({
        decoder: loadDecoderLayer(cfg, i, b, up),
        embed: shared(`${p}.embed_tokens.weight`, m.embed, 'model.embed_tokens.weight'),
        enorm: up(b, `${p}.enorm.weight`, [d]),
        hnorm: up(b, `${p}.hnorm.weight`, [d]),
        ehProj: up(b, `${p}.eh_proj.weight`, [d, 2 * d]),
        headNorm: up(b, `${p}.shared_head.norm.weight`, [d]),
        head: shared(`${p}.shared_head.head.weight`, m.lmHead, cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'),
      });
    }
    opts.onProgress?.(total, total);
    return m;
  }

  /** Allocates the paged latent cache: `numBlocks` blocks of `blockSize` tokens on every backend. */
  createCache(numBlocks: number, blockSize: number): ModelCache {
    return createModelCache(this.placement, this.cacheLayers, 1, this.cfg.kvLoraRank + this.cfg.qkRopeHeadDim, numBlocks, blockSize);
  }

  /** Bytes of latent cache one token takes over all layers (float32 storage). */
  get cacheBytesPerToken(): number {
    return this.cacheLayers * (this.cfg.kvLoraRank + this.cfg.qkRopeHeadDim) * 4;
  }

  // ---- forward -------------------------------------------------------------------------

  /**
   * Runs the decoder over a batch of new tokens (prefill chunks and decode steps mixed),
   * writing their latents into the cache. Returns the final hidden states after model.norm,
   * [tokens, hidden], on the last layer's backend.
   */
  async forward(batch: ForwardBatch, cache: ModelCache, routings?: LayerRouting[]): Promise<Tensor> {
    let b = this.placement.backendFor(0);
    let x = b.embedding(this.embed, batch.tokens);
    // Every intermediate is released as soon as it is dead (Backend.release): a prefill
    // chunk's activations would otherwise stay until V8 collects their handles.
    for (const layer of this.layers) {
      const here = await this.placement.move(x, b, layer.backend);
      if (here !== x) b.release(x);
      b = layer.backend;
      x = this.decoderLayer(layer, here, batch, cache, routings);
      b.release(here);
    }
    const out = b.rmsNorm(x, this.finalNorm, this.cfg.rmsNormEps);
    b.release(x);
    return out;
  }

  /** LM-head logits for the given rows of `hidden` (e.g. each sequence's last token). */
  logits(hidden: Tensor, rows?: Int32Array): Tensor {
    const b = this.placement.backendFor(this.cfg.numHiddenLayers - 1);
    return b.matmul(rows ? b.gatherRows(hidden, rows) : hidden, this.lmHead);
  }

  /**
   * The MTP module k: for each token, hidden is the main model's final hidden state at its
   * position and nextTokens the token that follows it (-1 for a zeroed embedding, as at
   * position 0). Its decoder layer attends over its own cache. Returns [logits, its hidden].
   */
  async mtpForward(k: number, hidden: Tensor, nextTokens: Int32Array, batch: AttentionBatch, cache: ModelCache): Promise<{ logits: Tensor; hidden: Tensor }> {
    const mtp = this.mtp[k];
    const b = mtp.decoder.backend;
    const h = await this.placement.move(hidden, this.placement.backendFor(this.cfg.numHiddenLayers - 1), b);
    const e = b.embedding(mtp.embed, nextTokens);
    const eps = this.cfg.rmsNormEps;
    const en = b.rmsNorm(e, mtp.enorm, eps), hn = b.rmsNorm(h, mtp.hnorm, eps);
    const both = b.concatCols(en, hn);
    const x0 = b.matmul(both, mtp.ehProj);
    releaseAll(b, e, en, hn, both);
    if (h !== hidden) b.release(h);
    const x = this.decoderLayer(mtp.decoder, x0, batch, cache);
    b.release(x0);
    const out = b.rmsNorm(x, mtp.headNorm, eps);
    const logits = b.matmul(out, mtp.head);
    b.release(out);
    return { logits, hidden: x };
  }

  private decoderLayer(layer: DecoderLayer, x: Tensor, batch: AttentionBatch, cache: ModelCache, routings?: LayerRouting[]): Tensor {
    const b = layer.backend;
    const eps = this.cfg.rmsNormEps;
    const xn = b.rmsNorm(x, layer.inputNorm, eps);
    const att = this.attention(layer, xn, batch, cache);
    const h = b.add(x, att);
    releaseAll(b, xn, att);
    const hn = b.rmsNorm(h, layer.postAttnNorm, eps);
    const mlp = this.mlp(layer, hn, routings);
    const out = b.add(h, mlp);
    releaseAll(b, hn, h, mlp);
    return out;
  }

  /** Multi-head latent attention: only [normalized latent | rotated rope key] is cached per token. */
  private attention(layer: DecoderLayer, x: Tensor, batch: AttentionBatch, cache: ModelCache): Tensor {
    const b = layer.backend;
    const a = layer.attn;
    const { heads, nopeDim, ropeDim, kvRank } = this.mla;
    const eps = this.cfg.rmsNormEps;
    let qFull: Tensor;
    if (a.q) qFull = b.matmul(x, a.q);
    else {
      const qa = b.matmul(x, a.qA!), qn = b.rmsNorm(qa, a.qANorm!, eps);
      qFull = b.matmul(qn, a.qB!);
      releaseAll(b, qa, qn);
    }
    const q = b.rope(qFull, batch.positions, this.invFreq, heads, nopeDim + ropeDim, nopeDim);
    const kv = b.matmul(x, a.kvA);
    const latentRaw = b.sliceCols(kv, 0, kvRank), ropeRaw = b.sliceCols(kv, kvRank, ropeDim);
    const latent = b.rmsNorm(latentRaw, a.kvANorm, eps);
    const kRope = b.rope(ropeRaw, batch.positions, this.invFreq, 1, ropeDim, 0);
    const pool = cache.pools.get(b)!;
    const poolLayer = cache.poolLayer[layer.index];
    const entry = b.concatCols(latent, kRope);
    b.writeKV(pool, poolLayer, entry, batch);
    releaseAll(b, qFull, kv, latentRaw, ropeRaw, latent, kRope, entry);
    const out = b.mlaAttention(q, a.kvB, pool, poolLayer, batch, this.mla);
    const y = b.matmul(out, a.o);
    releaseAll(b, q, out);
    return y;
  }

  private mlp(layer: DecoderLayer, x: Tensor, routings?: LayerRouting[]): Tensor {
    const b = layer.backend;
    const m = layer.mlp;
    if (m.kind === 'dense') return ffn(b, x, m);
    const logits = b.matmul(x, m.router);
    const routing = b.route(logits, m.routerBias, this.router);
    b.release(logits);
    routings?.push({ layer: layer.index, backend: b, routing });
    const routed = b.moe(x, routing, m.experts);
    if (!m.shared) return routed;
    const shared = ffn(b, x, m.shared);
    const y = b.add(routed, shared);
    releaseAll(b, routed, shared);
    return y;
  }
}

/** down(silu(gate x) · up x), its intermediates released. */
function ffn(b: Backend, x: Tensor, w: { gate: DeviceWeight; up: DeviceWeight; down: DeviceWeight }): Tensor {
  const g = b.matmul(x, w.gate), u = b.matmul(x, w.up);
  const a = b.swiglu(g, u);
  releaseAll(b, g, u);
  const y = b.matmul(a, w.down);
  b.release(a);
  return y;
}

// ---- which tensors the architecture needs ------------------------------------------------

function isMoeLayer(cfg: DeepseekConfig, i: number): boolean {
  return cfg.nRoutedExperts > 0 && i >= cfg.firstKDenseReplace && i % cfg.moeLayerFreq === 0;
}

function attentionTensors(cfg: DeepseekConfig, p: string): [string, number[]][] {
  const d = cfg.hiddenSize, H = cfg.numAttentionHeads;
  const qDim = H * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
  const t: [string, number[]][] = [];
  if (cfg.qLoraRank) {
    t.push([`${p}.q_a_proj.weight`, [cfg.qLoraRank, d]], [`${p}.q_a_layernorm.weight`, [cfg.qLoraRank]], [`${p}.q_b_proj.weight`, [qDim, cfg.qLoraRank]]);
  } else t.push([`${p}.q_proj.weight`, [qDim, d]]);
  t.push(
    [`${p}.kv_a_proj_with_mqa.weight`, [cfg.kvLoraRank + cfg.qkRopeHeadDim, d]],
    [`${p}.kv_a_layernorm.weight`, [cfg.kvLoraRank]],
    [`${p}.kv_b_proj.weight`, [H * (cfg.qkNopeHeadDim + cfg.vHeadDim), cfg.kvLoraRank]],
    [`${p}.o_proj.weight`, [d, H * cfg.vHeadDim]],
  );
  return t;
}

function layerTensors(cfg: DeepseekConfig, i: number): [string, number[]][] {
  const d = cfg.hiddenSize;
  const p = `model.layers.${i}`;
  const t: [string, number[]][] = [[`${p}.input_layernorm.weight`, [d]], [`${p}.post_attention_layernorm.weight`, [d]]];
  t.push(...attentionTensors(cfg, `${p}.self_attn`));
  const swiglu = (q: string, inner: number): [string, number[]][] => [
    [`${q}.gate_proj.weight`, [inner, d]], [`${q}.up_proj.weight`, [inner, d]], [`${q}.down_proj.weight`, [d, inner]],
  ];
  if (!isMoeLayer(cfg, i)) t.push(...swiglu(`${p}.mlp`, cfg.intermediateSize));
  else {
    t.push([`${p}.mlp.gate.weight`, [cfg.nRoutedExperts, d]]);
    if (cfg.topkMethod === 'noaux_tc') t.push([`${p}.mlp.gate.e_score_correction_bias`, [cfg.nRoutedExperts]]);
    for (let e = 0; e < cfg.nRoutedExperts; e++) t.push(...swiglu(`${p}.mlp.experts.${e}`, cfg.moeIntermediateSize));
    if (cfg.nSharedExperts > 0) t.push(...swiglu(`${p}.mlp.shared_experts`, cfg.moeIntermediateSize * cfg.nSharedExperts));
  }
  return t;
}

/** Every tensor name and shape the config implies (the checkpoint may hold more). */
export function expectedTensors(cfg: DeepseekConfig, withMtp = true, present: (name: string) => boolean = () => true): [string, number[]][] {
  const d = cfg.hiddenSize;
  const t: [string, number[]][] = [[`model.embed_tokens.weight`, [cfg.vocabSize, d]], [`model.norm.weight`, [d]]];
  if (!cfg.tieWordEmbeddings) t.push([`lm_head.weight`, [cfg.vocabSize, d]]);
  for (let i = 0; i < cfg.numHiddenLayers; i++) t.push(...layerTensors(cfg, i));
  if (withMtp) {
    for (let j = 0; j < cfg.numNextnPredictLayers; j++) {
      const i = cfg.numHiddenLayers + j;
      const p = `model.layers.${i}`;
      t.push(...layerTensors(cfg, i));
      t.push(
        [`${p}.enorm.weight`, [d]], [`${p}.hnorm.weight`, [d]],
        [`${p}.eh_proj.weight`, [d, 2 * d]], [`${p}.shared_head.norm.weight`, [d]],
      );
      // Optional copies of the main embedding and head (checked when present).
      for (const n of [`${p}.embed_tokens.weight`, `${p}.shared_head.head.weight`]) if (present(n)) t.push([n, [cfg.vocabSize, d]]);
    }
  }
  return t;
}

type Upload = (b: Backend, name: string, shape: number[]) => DeviceWeight;

function loadDecoderLayer(cfg: DeepseekConfig, i: number, b: Backend, up: Upload): DecoderLayer {
  const d = cfg.hiddenSize, H = cfg.numAttentionHeads;
  const p = `model.layers.${i}`;
  const a = `${p}.self_attn`;
  const qDim = H * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
  const attn: AttentionWeights = {
    kvA: up(b, `${a}.kv_a_proj_with_mqa.weight`, [cfg.kvLoraRank + cfg.qkRopeHeadDim, d]),
    kvANorm: up(b, `${a}.kv_a_layernorm.weight`, [cfg.kvLoraRank]),
    kvB: up(b, `${a}.kv_b_proj.weight`, [H * (cfg.qkNopeHeadDim + cfg.vHeadDim), cfg.kvLoraRank]),
    o: up(b, `${a}.o_proj.weight`, [d, H * cfg.vHeadDim]),
  };
  if (cfg.qLoraRank) {
    attn.qA = up(b, `${a}.q_a_proj.weight`, [cfg.qLoraRank, d]);
    attn.qANorm = up(b, `${a}.q_a_layernorm.weight`, [cfg.qLoraRank]);
    attn.qB = up(b, `${a}.q_b_proj.weight`, [qDim, cfg.qLoraRank]);
  } else attn.q = up(b, `${a}.q_proj.weight`, [qDim, d]);
  const swiglu = (q: string, inner: number) => ({
    gate: up(b, `${q}.gate_proj.weight`, [inner, d]),
    up: up(b, `${q}.up_proj.weight`, [inner, d]),
    down: up(b, `${q}.down_proj.weight`, [d, inner]),
  });
  let mlp: DenseMlp | MoeMlp;
  if (!isMoeLayer(cfg, i)) mlp = { kind: 'dense', ...swiglu(`${p}.mlp`, cfg.intermediateSize) };
  else {
    const experts: ExpertWeights[] = [];
    for (let e = 0; e < cfg.nRoutedExperts; e++) experts.push(swiglu(`${p}.mlp.experts.${e}`, cfg.moeIntermediateSize));
    mlp = {
      kind: 'moe',
      router: up(b, `${p}.mlp.gate.weight`, [cfg.nRoutedExperts, d]),
      routerBias: cfg.topkMethod === 'noaux_tc' ? up(b, `${p}.mlp.gate.e_score_correction_bias`, [cfg.nRoutedExperts]) : null,
      experts,
      shared: cfg.nSharedExperts > 0 ? swiglu(`${p}.mlp.shared_experts`, cfg.moeIntermediateSize * cfg.nSharedExperts) : null,
    };
  }
  return {
    index: i,
    backend: b,
    inputNorm: up(b, `${p}.input_layernorm.weight`, [d]),
    attn,
    postAttnNorm: up(b, `${p}.post_attention_layernorm.weight`, [d]),
    mlp,
  };
}
