/**
 * Model analysis for the planner: parameters (total and active per token), bytes per weight
 * format, KV-cache bytes per token (MLA latent vs. MHA/GQA), FLOPs per token for prefill and
 * decode including attention at a given context, from any Hugging Face config.json.
 *
 * The built-in catalog holds the published config.json numbers of each model (only the fields
 * the analysis reads, with their original names), so catalog models and user configs go through
 * the same parser.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import type { Precision } from './hardware-data.js';

type RawConfig = Record<string, unknown>;

const V3_BASE: RawConfig = {
  architectures: ['DeepseekV3ForCausalLM'],
  model_type: 'deepseek_v3',
  vocab_size: 129280,
  hidden_size: 7168,
  intermediate_size: 18432,
  moe_intermediate_size: 2048,
  num_hidden_layers: 61,
  num_nextn_predict_layers: 1,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  n_shared_experts: 1,
  n_routed_experts: 256,
  num_experts_per_tok: 8,
  n_group: 8,
  topk_group: 4,
  first_k_dense_replace: 3,
  moe_layer_freq: 1,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  tie_word_embeddings: false,
  max_position_embeddings: 163840,
  torch_dtype: 'bfloat16',
  quantization_config: { quant_method: 'fp8', fmt: 'e4m3', weight_block_size: [128, 128], activation_scheme: 'dynamic' },
};

const dense = (arch: string, type: string, h: number, inter: number, layers: number, heads: number, kv: number, vocab: number, ctx: number): RawConfig => ({
  architectures: [arch],
  model_type: type,
  hidden_size: h,
  intermediate_size: inter,
  num_hidden_layers: layers,
  num_attention_heads: heads,
  num_key_value_heads: kv,
  vocab_size: vocab,
  tie_word_embeddings: false,
  max_position_embeddings: ctx,
  torch_dtype: 'bfloat16',
});

export interface CatalogModel {
  name: string;
  hfId: string;
  config: RawConfig;
}

/** Published config.json values (huggingface.co/<hfId>/blob/main/config.json). */
export const MODEL_CATALOG: CatalogModel[] = [
  { name: 'deepseek-v3', hfId: 'deepseek-ai/DeepSeek-V3', config: V3_BASE },
  { name: 'deepseek-r1', hfId: 'deepseek-ai/DeepSeek-R1', config: V3_BASE },
  {
    name: 'deepseek-v3.2',
    hfId: 'deepseek-ai/DeepSeek-V3.2-Exp',
    config: { ...V3_BASE, architectures: ['DeepseekV32ForCausalLM'], model_type: 'deepseek_v32', index_n_heads: 64, index_head_dim: 128, index_topk: 2048 },
  },
  {
    name: 'deepseek-v2',
    hfId: 'deepseek-ai/DeepSeek-V2',
    config: {
      architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2', vocab_size: 102400, hidden_size: 5120,
      intermediate_size: 12288, moe_intermediate_size: 1536, num_hidden_layers: 60, num_attention_heads: 128,
      num_key_value_heads: 128, n_shared_experts: 2, n_routed_experts: 160, num_experts_per_tok: 6, n_group: 8,
      topk_group: 3, first_k_dense_replace: 1, moe_layer_freq: 1, q_lora_rank: 1536, kv_lora_rank: 512,
      qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, tie_word_embeddings: false,
      max_position_embeddings: 163840, torch_dtype: 'bfloat16',
    },
  },
  {
    name: 'deepseek-v2-lite',
    hfId: 'deepseek-ai/DeepSeek-V2-Lite',
    config: {
      architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2', vocab_size: 102400, hidden_size: 2048,
      intermediate_size: 10944, moe_intermediate_size: 1408, num_hidden_layers: 27, num_attention_heads: 16,
      num_key_value_heads: 16, n_shared_experts: 2, n_routed_experts: 64, num_experts_per_tok: 6, n_group: 1,
      topk_group: 1, first_k_dense_replace: 1, moe_layer_freq: 1, q_lora_rank: null, kv_lora_rank: 512,
      qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, tie_word_embeddings: false,
      max_position_embeddings: 163840, torch_dtype: 'bfloat16',
    },
  },
  {
    name: 'kimi-k2',
    hfId: 'moonshotai/Kimi-K2-Instruct',
    config: {
      ...V3_BASE, vocab_size: 163840, num_attention_heads: 64, num_key_value_heads: 64, n_routed_experts: 384,
      n_group: 1, topk_group: 1, first_k_dense_replace: 1, num_nextn_predict_layers: 0, max_position_embeddings: 131072,
    },
  },
  {
    name: 'moonlight',
    hfId: 'moonshotai/Moonlight-16B-A3B-Instruct',
    config: {
      architectures: ['DeepseekV3ForCausalLM'], model_type: 'deepseek_v3', vocab_size: 163840, hidden_size: 2048,
      intermediate_size: 11264, moe_intermediate_size: 1408, num_hidden_layers: 27, num_attention_heads: 16,
      num_key_value_heads: 16, n_shared_experts: 2, n_routed_experts: 64, num_experts_per_tok: 6, n_group: 1,
      topk_group: 1, first_k_dense_replace: 1, moe_layer_freq: 1, q_lora_rank: null, kv_lora_rank: 512,
      qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, tie_word_embeddings: false,
      max_position_embeddings: 8192, torch_dtype: 'bfloat16',
    },
  },
  { name: 'r1-distill-qwen-1.5b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B', config: dense('Qwen2ForCausalLM', 'qwen2', 1536, 8960, 28, 12, 2, 151936, 131072) },
  { name: 'r1-distill-qwen-7b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Qwen-7B', config: dense('Qwen2ForCausalLM', 'qwen2', 3584, 18944, 28, 28, 4, 152064, 131072) },
  { name: 'r1-distill-llama-8b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Llama-8B', config: dense('LlamaForCausalLM', 'llama', 4096, 14336, 32, 32, 8, 128256, 131072) },
  { name: 'r1-distill-qwen-14b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Qwen-14B', config: dense('Qwen2ForCausalLM', 'qwen2', 5120, 13824, 48, 40, 8, 152064, 131072) },
  { name: 'r1-distill-qwen-32b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Qwen-32B', config: dense('Qwen2ForCausalLM', 'qwen2', 5120, 27648, 64, 40, 8, 152064, 131072) },
  { name: 'r1-distill-llama-70b', hfId: 'deepseek-ai/DeepSeek-R1-Distill-Llama-70B', config: dense('LlamaForCausalLM', 'llama', 8192, 28672, 80, 64, 8, 128256, 131072) },
];

export type AttentionSpec =
  | { kind: 'mla'; heads: number; qLoraRank: number | null; kvLoraRank: number; qkNope: number; qkRope: number; vHead: number }
  | { kind: 'gqa'; heads: number; kvHeads: number; headDim: number; qkvBias: boolean };

export interface MoeSpec {
  routedExperts: number;
  sharedExperts: number;
  topK: number;
  /** Intermediate size of one routed expert (and of each shared expert). */
  expertIntermediate: number;
  /** Total intermediate size of the shared expert(s) when given separately (Qwen-MoE style). */
  sharedIntermediate: number;
  firstDense: number;
  layerFreq: number;
}

/** Sparse-attention indexer (DeepSeek V3.2 DSA): each query attends to indexTopk selected keys. */
export interface IndexerSpec {
  heads: number;
  headDim: number;
  topK: number;
}

export interface ModelSpec {
  name: string;
  architecture: string;
  hiddenSize: number;
  layers: number;
  vocabSize: number;
  tieEmbeddings: boolean;
  denseIntermediate: number;
  attention: AttentionSpec;
  moe: MoeSpec | null;
  indexer: IndexerSpec | null;
  mtpLayers: number;
  /** The format the published weights use ('fp8' for block-quantized FP8 checkpoints). */
  nativeFormat: Precision;
  maxContext: number;
}

function field(cfg: RawConfig, key: string, where: string, opts: { optional?: boolean; nullable?: boolean } = {}): number | null | undefined {
  const v = cfg[key];
  if (v === undefined) {
    if (opts.optional) return undefined;
    throw new UserError(`config.json is missing "${key}"`, where);
  }
  if (v === null) {
    if (opts.nullable || opts.optional) return null;
    throw new UserError(`config.json field "${key}" is null`, where);
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) {
    throw new UserError(`config.json field "${key}" must be a non-negative number, got ${JSON.stringify(v)}`, where);
  }
  return v;
}

const req = (cfg: RawConfig, key: string, where: string): number => {
  const v = field(cfg, key, where) as number;
  if (v <= 0) throw new UserError(`config.json field "${key}" must be positive, got ${v}`, where);
  return v;
};
const opt = (cfg: RawConfig, key: string, where: string, dflt: number): number => {
  const v = field(cfg, key, where, { optional: true });
  return v === undefined || v === null ? dflt : v;
};

/** Validates a Hugging Face config.json object and extracts what the planner needs. */
export function parseModelConfig(cfg: unknown, name: string, where = name): ModelSpec {
  if (typeof cfg !== 'object' || cfg === null || Array.isArray(cfg)) throw new UserError('config.json must be a JSON object', where);
  const c = cfg as RawConfig;
  const archs = Array.isArray(c.architectures) ? (c.architectures as unknown[]).map(String) : [];
  const architecture = archs[0] ?? String(c.model_type ?? 'unknown');
  const hiddenSize = req(c, 'hidden_size', where);
  const layers = req(c, 'num_hidden_layers', where);
  const heads = req(c, 'num_attention_heads', where);
  const vocabSize = req(c, 'vocab_size', where);

  let attention: AttentionSpec;
  if (c.kv_lora_rank !== undefined && c.kv_lora_rank !== null) {
    attention = {
      kind: 'mla',
      heads,
      qLoraRank: (field(c, 'q_lora_rank', where, { nullable: true, optional: true }) ?? null) as number | null,
      kvLoraRank: req(c, 'kv_lora_rank', where),
      qkNope: req(c, 'qk_nope_head_dim', where),
      qkRope: req(c, 'qk_rope_head_dim', where),
      vHead: req(c, 'v_head_dim', where),
    };
  } else {
    const kvHeads = opt(c, 'num_key_value_heads', where, heads);
    if (kvHeads <= 0 || heads % kvHeads !== 0) throw new UserError(`num_attention_heads (${heads}) is not a multiple of num_key_value_heads (${kvHeads})`, where);
    const headDim = opt(c, 'head_dim', where, hiddenSize / heads);
    if (!Number.isInteger(headDim)) throw new UserError(`hidden_size ${hiddenSize} is not divisible by num_attention_heads ${heads}; give "head_dim"`, where);
    const type = String(c.model_type ?? '');
    attention = { kind: 'gqa', heads, kvHeads, headDim, qkvBias: Boolean(c.attention_bias) || type === 'qwen2' || type === 'qwen2_moe' };
  }

  let moe: MoeSpec | null = null;
  const routed = field(c, 'n_routed_experts', where, { optional: true }) ?? field(c, 'num_local_experts', where, { optional: true }) ?? field(c, 'num_experts', where, { optional: true });
  if (routed) {
    const topK = req(c, 'num_experts_per_tok', where);
    if (topK > routed) throw new UserError(`num_experts_per_tok (${topK}) exceeds the number of experts (${routed})`, where);
    const isMixtral = c.num_local_experts !== undefined;
    const expertIntermediate = isMixtral ? req(c, 'intermediate_size', where) : req(c, 'moe_intermediate_size', where);
    moe = {
      routedExperts: routed,
      sharedExperts: opt(c, 'n_shared_experts', where, 0),
      topK,
      expertIntermediate,
      sharedIntermediate: opt(c, 'shared_expert_intermediate_size', where, 0),
      firstDense: opt(c, 'first_k_dense_replace', where, 0),
      layerFreq: Math.max(1, opt(c, 'moe_layer_freq', where, 1)),
    };
  }
  const needsDense = !moe || moe.firstDense > 0 || moe.layerFreq > 1;
  const denseIntermediate = needsDense ? req(c, 'intermediate_size', where) : opt(c, 'intermediate_size', where, 0);

  let indexer: IndexerSpec | null = null;
  if (c.index_topk !== undefined) {
    indexer = { heads: req(c, 'index_n_heads', where), headDim: req(c, 'index_head_dim', where), topK: req(c, 'index_topk', where) };
  }
  const q = c.quantization_config as RawConfig | undefined;
  const qm = String(q?.quant_method ?? '').toLowerCase();
  const nativeFormat: Precision = qm === 'fp8' ? 'fp8' : 'bf16';
  return {
    name,
    architecture,
    hiddenSize,
    layers,
    vocabSize,
    tieEmbeddings: Boolean(c.tie_word_embeddings),
    denseIntermediate,
    attention,
    moe,
    indexer,
    mtpLayers: opt(c, 'num_nextn_predict_layers', where, 0),
    nativeFormat,
    maxContext: opt(c, 'max_position_embeddings', where, 131072),
  };
}

export function modelNames(): string[] {
  return MODEL_CATALOG.map((m) => m.name);
}

/** A catalog name / HF id, a config.json path, or a folder holding config.json. */
export function resolveModel(nameOrPath: string): ModelSpec {
  const key = nameOrPath.trim().toLowerCase();
  const hit = MODEL_CATALOG.find((m) => m.name === key || m.hfId.toLowerCase() === key || m.hfId.split('/')[1].toLowerCase() === key);
  if (hit) return parseModelConfig(hit.config, hit.name, `catalog model ${hit.name}`);
  if (existsSync(nameOrPath)) {
    const file = statSync(nameOrPath).isDirectory() ? join(nameOrPath, 'config.json') : nameOrPath;
    if (!existsSync(file)) throw new UserError('folder has no config.json', nameOrPath);
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(file, 'utf8'));
    } catch (e) {
      throw new UserError(`not valid JSON (${(e as Error).message})`, file);
    }
    const base = file.replace(/\/config\.json$/, '').split('/').pop() || 'model';
    return parseModelConfig(json, base, file);
  }
  throw new UserError(`unknown model "${nameOrPath}": not a catalog model (${modelNames().join(', ')}) nor a config.json path`, '--model');
}

/** Bytes per stored weight for a format, including block/group scales. */
export function bytesPerWeight(format: Precision): number {
  switch (format) {
    case 'bf16':
      return 2;
    case 'fp8':
      return 1 + 4 / (128 * 128); // FP32 scale per 128x128 block (DeepSeek-V3 checkpoint layout)
    case 'int8':
      return 1 + 4 / 4096; // per-output-channel FP32 scale, rows ~4k-18k wide
    case 'fp4':
      return 0.5 + 1 / 16; // NVFP4: FP8 scale per 16 values
  }
}

/** Bytes per activation element sent in an MoE dispatch at a given compute precision. */
export function dispatchBytesPerElement(format: Precision): number {
  if (format === 'bf16') return 2;
  if (format === 'fp4') return 1 + 4 / 128; // dispatch stays FP8 for FP4 GEMMs (NVFP4 recipes quantize after)
  return 1 + 4 / 128; // FP8/INT8 with a per-128 FP32 scale (DeepEP layout)
}

export interface ModelAnalysis {
  spec: ModelSpec;
  /** Parameter counts. */
  params: {
    embedding: number;
    lmHead: number;
    /** Attention projections, all layers. */
    attention: number;
    /** Dense (non-MoE) MLPs, all layers. */
    denseMlp: number;
    /** Shared experts, all MoE layers. */
    sharedExperts: number;
    /** All routed experts, all MoE layers. */
    routedExperts: number;
    /** One routed expert in one layer. */
    oneExpert: number;
    router: number;
    norms: number;
    /** Multi-token-prediction module(s), not counted in `total`. */
    mtp: number;
    /** Main model, excluding MTP modules (the "671B" of DeepSeek-V3). */
    total: number;
    /** Touched per token: everything but the unrouted experts (embedding row counted as 0). */
    active: number;
  };
  moeLayers: number;
  denseLayers: number;
}

export function analyzeModel(spec: ModelSpec): ModelAnalysis {
  const h = spec.hiddenSize;
  const a = spec.attention;
  let attnPerLayer: number;
  let normsPerLayer = 2 * h;
  if (a.kind === 'mla') {
    const qk = a.qkNope + a.qkRope;
    const q = a.qLoraRank ? h * a.qLoraRank + a.qLoraRank * a.heads * qk : h * a.heads * qk;
    const kvA = h * (a.kvLoraRank + a.qkRope);
    const kvB = a.kvLoraRank * a.heads * (a.qkNope + a.vHead);
    const o = a.heads * a.vHead * h;
    attnPerLayer = q + kvA + kvB + o;
    normsPerLayer += a.kvLoraRank + (a.qLoraRank ?? 0);
  } else {
    attnPerLayer = h * a.heads * a.headDim + 2 * h * a.kvHeads * a.headDim + a.heads * a.headDim * h;
    if (a.qkvBias) attnPerLayer += (a.heads + 2 * a.kvHeads) * a.headDim;
  }
  if (spec.indexer) {
    const ix = spec.indexer;
    // DSA lightning indexer: q from the q-LoRA latent, one shared key, per-head weights.
    const qLatent = a.kind === 'mla' && a.qLoraRank ? a.qLoraRank : h;
    attnPerLayer += qLatent * ix.heads * ix.headDim + h * ix.headDim + h * ix.heads;
  }
  const moe = spec.moe;
  let moeLayers = 0;
  if (moe) {
    for (let l = 0; l < spec.layers; l++) if (l >= moe.firstDense && l % moe.layerFreq === 0) moeLayers++;
  }
  const denseLayers = spec.layers - moeLayers;
  const oneExpert = moe ? 3 * h * moe.expertIntermediate : 0;
  const sharedPerLayer = moe ? (moe.sharedIntermediate ? 3 * h * moe.sharedIntermediate : moe.sharedExperts * oneExpert) : 0;
  const routerPerLayer = moe ? h * moe.routedExperts : 0;
  const embedding = spec.vocabSize * h;
  const lmHead = spec.tieEmbeddings ? 0 : spec.vocabSize * h;
  const attention = attnPerLayer * spec.layers;
  const denseMlp = denseLayers * 3 * h * spec.denseIntermediate;
  const sharedExperts = moeLayers * sharedPerLayer;
  const routedExperts = moe ? moeLayers * moe.routedExperts * oneExpert : 0;
  const router = moeLayers * routerPerLayer;
  const norms = normsPerLayer * spec.layers + h;
  const total = embedding + lmHead + attention + denseMlp + sharedExperts + routedExperts + router + norms;
  const activeExperts = moe ? moeLayers * moe.topK * oneExpert : 0;
  const active = (spec.tieEmbeddings ? embedding : lmHead) + attention + denseMlp + sharedExperts + activeExperts + router + norms;
  // MTP module (DeepSeek-V3): enorm + hnorm + eh_proj (2h x h) + one full MoE decoder layer;
  // embedding and head are shared with the main model.
  const mtpLayer = attnPerLayer + (moe ? moe.routedExperts * oneExpert + sharedPerLayer + routerPerLayer : 3 * h * spec.denseIntermediate) + normsPerLayer + 2 * h * h + 3 * h;
  return {
    spec,
    params: { embedding, lmHead, attention, denseMlp, sharedExperts, routedExperts, oneExpert, router, norms, mtp: spec.mtpLayers * mtpLayer, total, active },
    moeLayers,
    denseLayers,
  };
}

/** KV-cache bytes per token for all layers (MLA keeps the compressed latent + RoPE key). */
export function kvBytesPerToken(spec: ModelSpec, kvFormat: Precision = 'bf16'): number {
  const b = kvFormat === 'bf16' ? 2 : kvFormat === 'fp4' ? 0.5625 : 1;
  const a = spec.attention;
  let perLayer = a.kind === 'mla' ? (a.kvLoraRank + a.qkRope) * b : 2 * a.kvHeads * a.headDim * b;
  if (spec.indexer) perLayer += spec.indexer.headDim + 4; // FP8 indexer key + scale
  return perLayer * spec.layers;
}

/** Keys each query attends to at context `ctx` (DSA caps it at index_topk). */
function attendedKeys(spec: ModelSpec, ctx: number): number {
  return spec.indexer ? Math.min(ctx, spec.indexer.topK) : ctx;
}

/** Attention-core FLOPs (scores + weighted sum) for one new token that sees `ctx` keys. */
export function attentionFlopsPerToken(spec: ModelSpec, ctx: number, phase: 'prefill' | 'decode'): number {
  const a = spec.attention;
  const keys = attendedKeys(spec, ctx);
  let perLayer: number;
  if (a.kind === 'mla') {
    // Prefill runs MLA as MHA over up-projected keys (qk 192, v 128 for V3); decode runs the
    // "absorbed" form over the 512+64 latent, which is cheaper in bytes but not in FLOPs.
    perLayer = phase === 'prefill'
      ? 2 * a.heads * keys * (a.qkNope + a.qkRope + a.vHead)
      : 2 * a.heads * keys * (a.kvLoraRank + a.qkRope + a.kvLoraRank);
  } else {
    perLayer = 2 * a.heads * keys * 2 * a.headDim;
  }
  if (spec.indexer) perLayer += 2 * spec.indexer.heads * spec.indexer.headDim * ctx;
  return perLayer * spec.layers;
}

/** KV-cache bytes one decode step reads for one sequence at context `ctx`. */
export function kvReadBytesPerToken(spec: ModelSpec, ctx: number, kvFormat: Precision = 'bf16'): number {
  if (!spec.indexer) return kvBytesPerToken(spec, kvFormat) * ctx;
  const b = kvFormat === 'bf16' ? 2 : 1;
  const a = spec.attention;
  const main = a.kind === 'mla' ? (a.kvLoraRank + a.qkRope) * b : 2 * a.kvHeads * a.headDim * b;
  return spec.layers * (main * Math.min(ctx, spec.indexer.topK) + (spec.indexer.headDim + 4) * ctx);
}

/** Linear-layer FLOPs per token (2 per active weight), excluding the LM head. */
export function linearFlopsPerToken(an: ModelAnalysis): number {
  const p = an.params;
  const head = an.spec.tieEmbeddings ? p.embedding : p.lmHead;
  return 2 * (p.active - head - p.norms);
}

/** LM-head FLOPs for one token's logits. */
export function lmHeadFlops(an: ModelAnalysis): number {
  return 2 * an.spec.vocabSize * an.spec.hiddenSize;
}

/** Human-readable summary used by `shoal plan --list` and the docs. */
export function describeModel(an: ModelAnalysis): string {
  const p = an.params;
  const b = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)}B` : `${(n / 1e6).toFixed(0)}M`);
  const kv = kvBytesPerToken(an.spec) / 1024;
  const att = an.spec.attention.kind === 'mla' ? 'MLA' : an.spec.attention.heads === an.spec.attention.kvHeads ? 'MHA' : 'GQA';
  return `${b(p.total)} total, ${b(p.active)} active, ${att}, KV ${kv.toFixed(1)} KiB/token (BF16)`;
}
