/**
 * Dense transformers with grouped-query attention: Llama 2/3.x (and DeepSeek-R1-Distill-Llama)
 * and Qwen2 (and DeepSeek-R1-Distill-Qwen), which is Llama with q/k/v biases.
 *
 * Per layer: x + attention(rmsNorm(x)), then h + SwiGLU MLP(rmsNorm(h)). Written against the
 * same Backend ops as DeepSeek's MLA: GQA runs on `mlaAttention` (see LlamaModel.attention).
 * Weights come by Hugging Face name from a WeightSource, with q/k projections already in the
 * adjacent-pair RoPE layout shoal's `rope` op rotates (models/gguf-llama.ts sees to that).
 */
import type { Backend, DeviceWeight, MlaShape, Tensor } from '../backends/backend.js';
import { Placement } from '../engine/placement.js';
import { createModelCache, releaseAll, type ForwardBatch, type LanguageModel, type LoadOptions, type ModelCache, type ModelShape } from './model.js';
import { WeightPreparer, type WeightSource } from './weights.js';

export interface LlamaConfig extends ModelShape {
  architecture: 'LlamaForCausalLM' | 'Qwen2ForCausalLM';
  intermediateSize: number;
  numAttentionHeads: number;
  numKeyValueHeads: number;
  /** Per-head widths of keys (and queries) and of values. */
  keyHeadDim: number;
  valueHeadDim: number;
  /** Leading dimensions of each q/k head that RoPE rotates. */
  ropeDim: number;
  ropeTheta: number;
  /** Divides each inverse frequency (Llama 3.1's rope_freqs; linear scaling gives one factor for all). */
  ropeFreqFactors: Float32Array | null;
  rmsNormEps: number;
  /** q/k/v projections carry biases (Qwen2). */
  attentionBias: boolean;
  /** The output projection carries a bias (some Llama-architecture models). */
  outputBias: boolean;
  tieWordEmbeddings: boolean;
}

/** A model that is not a Hugging Face folder (a GGUF file): its config and its weights by HF name. */
export interface LlamaSource {
  /** Named in messages (the file). */
  label: string;
  cfg: LlamaConfig;
  weights: WeightSource;
}

/** Inverse RoPE frequencies theta^(-2i/ropeDim), divided by the frequency factors when given. */
export function llamaInvFreq(cfg: LlamaConfig): Float32Array {
  const half = cfg.ropeDim / 2;
  const f = new Float32Array(half);
  for (let i = 0; i < half; i++) f[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / cfg.ropeDim) / (cfg.ropeFreqFactors?.[i] ?? 1);
  return f;
}

interface Bias { q: DeviceWeight; k: DeviceWeight; v: DeviceWeight }

interface LlamaLayer {
  index: number;
  backend: Backend;
  inputNorm: DeviceWeight;
  q: DeviceWeight;
  k: DeviceWeight;
  v: DeviceWeight;
  o: DeviceWeight;
  bias: Bias | null;
  oBias: DeviceWeight | null;
  postAttnNorm: DeviceWeight;
  gate: DeviceWeight;
  up: DeviceWeight;
  down: DeviceWeight;
}

/** Every tensor name and shape the config implies. */
export function expectedLlamaTensors(cfg: LlamaConfig): [string, number[]][] {
  const d = cfg.hiddenSize, H = cfg.numAttentionHeads, KV = cfg.numKeyValueHeads;
  const t: [string, number[]][] = [['model.embed_tokens.weight', [cfg.vocabSize, d]], ['model.norm.weight', [d]]];
  if (!cfg.tieWordEmbeddings) t.push(['lm_head.weight', [cfg.vocabSize, d]]);
  for (let i = 0; i < cfg.numHiddenLayers; i++) {
    const p = `model.layers.${i}`;
    t.push(
      [`${p}.input_layernorm.weight`, [d]],
      [`${p}.self_attn.q_proj.weight`, [H * cfg.keyHeadDim, d]],
      [`${p}.self_attn.k_proj.weight`, [KV * cfg.keyHeadDim, d]],
      [`${p}.self_attn.v_proj.weight`, [KV * cfg.valueHeadDim, d]],
      [`${p}.self_attn.o_proj.weight`, [d, H * cfg.valueHeadDim]],
      [`${p}.post_attention_layernorm.weight`, [d]],
      [`${p}.mlp.gate_proj.weight`, [cfg.intermediateSize, d]],
      [`${p}.mlp.up_proj.weight`, [cfg.intermediateSize, d]],
      [`${p}.mlp.down_proj.weight`, [d, cfg.intermediateSize]],
    );
    if (cfg.attentionBias) {
      t.push(
        [`${p}.self_attn.q_proj.bias`, [H * cfg.keyHeadDim]],
        [`${p}.self_attn.k_proj.bias`, [KV * cfg.keyHeadDim]],
        [`${p}.self_attn.v_proj.bias`, [KV * cfg.valueHeadDim]],
      );
    }
    if (cfg.outputBias) t.push([`${p}.self_attn.o_proj.bias`, [d]]);
  }
  return t;
}

export class LlamaModel implements LanguageModel {
  readonly layers: LlamaLayer[] = [];
  readonly mtp = [] as const;
  readonly weightBytes = new Map<Backend, number>();
  readonly invFreq: Float32Array;
  /** The attention of one KV-head group, as mlaAttention sees it (see attention). */
  readonly group: MlaShape;
  private embed!: DeviceWeight;
  private finalNorm!: DeviceWeight;
  private lmHead!: DeviceWeight;
  /** Per backend: mlaAttention's kv_b for a group, [identity; ...] (one block per query head). */
  private readonly groupKvB = new Map<Backend, DeviceWeight>();

  private constructor(readonly cfg: LlamaConfig, readonly placement: Placement) {
    this.invFreq = llamaInvFreq(cfg);
    this.group = {
      heads: cfg.numAttentionHeads / cfg.numKeyValueHeads,
      nopeDim: 0,
      ropeDim: cfg.keyHeadDim,
      vDim: cfg.valueHeadDim,
      kvRank: cfg.valueHeadDim,
      softmaxScale: 1 / Math.sqrt(cfg.keyHeadDim),
    };
  }

  /** Reads and uploads every weight, layer by layer, onto the placement's backends. */
  static load(src: LlamaSource, backendOrOpts: Backend | LoadOptions, maybeOpts: LoadOptions = {}): LlamaModel {
    const opts = 'info' in backendOrOpts ? { ...maybeOpts, placement: maybeOpts.placement ?? Placement.single(backendOrOpts) } : backendOrOpts;
    const { cfg, weights: r } = src;
    for (const [name, shape] of expectedLlamaTensors(cfg)) r.check(name, shape);
    const placement = opts.placement!;
    const m = new LlamaModel(cfg, placement);
    const prep = new WeightPreparer({ quantize: opts.quantize, log: opts.log });
    const exact = new WeightPreparer({ log: opts.log });
    const count = (b: Backend, dw: DeviceWeight) => {
      m.weightBytes.set(b, (m.weightBytes.get(b) ?? 0) + dw.bytes);
      return dw;
    };
    const up = (b: Backend, name: string, shape: number[]) => count(b, prep.upload(b, name, shape, r));
    const d = cfg.hiddenSize, H = cfg.numAttentionHeads, KV = cfg.numKeyValueHeads, dk = cfg.keyHeadDim, dv = cfg.valueHeadDim;
    const total = cfg.numHiddenLayers + 2;
    m.embed = up(placement.backendFor(0), 'model.embed_tokens.weight', [cfg.vocabSize, d]);
    opts.onProgress?.(1, total);
    for (let i = 0; i < cfg.numHiddenLayers; i++) {
      const b = placement.backendFor(i);
      const p = `model.layers.${i}`, a = `${p}.self_attn`;
      // The identity is never packed by --quantize (q8_0 would not keep its ones exact).
      if (!m.groupKvB.has(b)) m.groupKvB.set(b, count(b, b.uploadWeight(exact.prepare(b, 'gqa.kv_b', [m.group.heads * dv, dv], identityBlocks(m.group.heads, dv)))));
      m.layers.push({
        index: i,
        backend: b,
        inputNorm: up(b, `${p}.input_layernorm.weight`, [d]),
        q: up(b, `${a}.q_proj.weight`, [H * dk, d]),
        k: up(b, `${a}.k_proj.weight`, [KV * dk, d]),
        v: up(b, `${a}.v_proj.weight`, [KV * dv, d]),
        o: up(b, `${a}.o_proj.weight`, [d, H * dv]),
        bias: cfg.attentionBias
          ? { q: up(b, `${a}.q_proj.bias`, [H * dk]), k: up(b, `${a}.k_proj.bias`, [KV * dk]), v: up(b, `${a}.v_proj.bias`, [KV * dv]) }
          : null,
        oBias: cfg.outputBias ? up(b, `${a}.o_proj.bias`, [d]) : null,
        postAttnNorm: up(b, `${p}.post_attention_layernorm.weight`, [d]),
        gate: up(b, `${p}.mlp.gate_proj.weight`, [cfg.intermediateSize, d]),
        up: up(b, `${p}.mlp.up_proj.weight`, [cfg.intermediateSize, d]),
        down: up(b, `${p}.mlp.down_proj.weight`, [d, cfg.intermediateSize]),
      });
      opts.onProgress?.(i + 2, total);
    }
    const last = placement.backendFor(cfg.numHiddenLayers - 1);
    m.finalNorm = up(last, 'model.norm.weight', [d]);
    m.lmHead = up(last, cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight', [cfg.vocabSize, d]);
    opts.onProgress?.(total, total);
    return m;
  }

  /** Each layer caches, per KV head, one row [value | rotated key] per token. */
  createCache(numBlocks: number, blockSize: number): ModelCache {
    return createModelCache(this.placement, this.cfg.numHiddenLayers, this.cfg.numKeyValueHeads, this.cfg.keyHeadDim + this.cfg.valueHeadDim, numBlocks, blockSize);
  }

  get cacheBytesPerToken(): number {
    return this.cfg.numHiddenLayers * this.cfg.numKeyValueHeads * (this.cfg.keyHeadDim + this.cfg.valueHeadDim) * 4;
  }

  async forward(batch: ForwardBatch, cache: ModelCache): Promise<Tensor> {
    let b = this.placement.backendFor(0);
    let x = b.embedding(this.embed, batch.tokens);
    const eps = this.cfg.rmsNormEps;
    // Dead activations are released at once (Backend.release), as in deepseek.ts.
    for (const layer of this.layers) {
      const here = await this.placement.move(x, b, layer.backend);
      if (here !== x) b.release(x);
      b = layer.backend;
      const xn = b.rmsNorm(here, layer.inputNorm, eps);
      const att = this.attention(layer, xn, batch, cache);
      const h = b.add(here, att);
      releaseAll(b, here, xn, att);
      const y = b.rmsNorm(h, layer.postAttnNorm, eps);
      const g = b.matmul(y, layer.gate), u = b.matmul(y, layer.up);
      const a = b.swiglu(g, u);
      const down = b.matmul(a, layer.down);
      x = b.add(h, down);
      releaseAll(b, y, g, u, a, down, h);
    }
    const out = b.rmsNorm(x, this.finalNorm, eps);
    b.release(x);
    return out;
  }

  logits(hidden: Tensor, rows?: Int32Array): Tensor {
    const b = this.placement.backendFor(this.cfg.numHiddenLayers - 1);
    return b.matmul(rows ? b.gatherRows(hidden, rows) : hidden, this.lmHead);
  }

  /**
   * Grouped-query attention on mlaAttention. For each KV head (a group of H/KV query heads),
   * absorbed MLA is exactly multi-query attention over a cached row [latent | rope key]: the
   * group's value is stored as the latent (kvRank = value head dim) and its rotated key as the
   * rope key (ropeDim = key head dim); the queries have no "nope" part (nopeDim = 0), so scores
   * are q·k; kv_b's value block is the identity, so the output is softmax·V. Exact, and the pool
   * holds layers x KV rows of key + value floats per token, as a standard K/V cache does. The
   * cost over a dedicated kernel: the (zero) latent half of each score dot product and an
   * identity matmul per head.
   */
  private attention(layer: LlamaLayer, x: Tensor, batch: ForwardBatch, cache: ModelCache): Tensor {
    const b = layer.backend;
    const { numAttentionHeads: H, numKeyValueHeads: KV, keyHeadDim: dk, valueHeadDim: dv } = this.cfg;
    const project = (w: DeviceWeight, bias: DeviceWeight | undefined) => {
      const y = b.matmul(x, w);
      return bias ? b.add(y, broadcastRows(b, bias, x.rows)) : y;
    };
    const q = b.rope(project(layer.q, layer.bias?.q), batch.positions, this.invFreq, H, dk, 0);
    const k = b.rope(project(layer.k, layer.bias?.k), batch.positions, this.invFreq, KV, dk, 0);
    const v = project(layer.v, layer.bias?.v);
    const pool = cache.pools.get(b)!;
    const groupHeads = H / KV;
    let out: Tensor | null = null;
    for (let g = 0; g < KV; g++) {
      const slot = cache.poolLayer[layer.index] + g;
      b.writeKV(pool, slot, b.concatCols(b.sliceCols(v, g * dv, dv), b.sliceCols(k, g * dk, dk)), batch);
      const o = b.mlaAttention(b.sliceCols(q, g * groupHeads * dk, groupHeads * dk), this.groupKvB.get(b)!, pool, slot, batch, this.group);
      out = out ? b.concatCols(out, o) : o;
    }
    const y = b.matmul(out!, layer.o);
    return layer.oBias ? b.add(y, broadcastRows(b, layer.oBias, x.rows)) : y;
  }
}

/** kv_b for one group: `heads` identity blocks [dim, dim] stacked (no nope rows). */
function identityBlocks(heads: number, dim: number) {
  const data = new Float32Array(heads * dim * dim);
  for (let h = 0; h < heads; h++) for (let i = 0; i < dim; i++) data[(h * dim + i) * dim + i] = 1;
  return { name: 'gqa.kv_b', format: 'f32' as const, rows: heads * dim, cols: dim, data };
}

/** A bias vector as `rows` identical rows: an embedding lookup of its only row. */
function broadcastRows(b: Backend, bias: DeviceWeight, rows: number): Tensor {
  return b.embedding(bias, new Int32Array(rows));
}
