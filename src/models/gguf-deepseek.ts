/**
 * llama.cpp's `deepseek2` GGUF architecture <-> the DeepSeek model (models/deepseek.ts).
 *
 * Reading: GGUF metadata becomes a DeepseekConfig (through the same validation as config.json)
 * and GGUF tensors are served under their Hugging Face names, so DeepseekModel.load needs no
 * GGUF knowledge. Writing (`shoal convert`): a Hugging Face checkpoint becomes a GGUF file laid
 * out as current llama.cpp's convert_hf_to_gguf.py writes it, tensor by tensor.
 *
 * Conventions (llama.cpp's converter, DeepseekV2Model):
 * - Tensors: token_embd, output_norm, output; per block blk.N.{attn_norm, attn_q_a, attn_q_a_norm,
 *   attn_q_b | attn_q, attn_kv_a_mqa, attn_kv_a_norm, attn_k_b + attn_v_b (older files: attn_kv_b),
 *   attn_output, ffn_norm, ffn_gate/up/down (dense), ffn_gate_inp (router), exp_probs_b (router
 *   bias), ffn_{gate,up,down}_exps (routed experts stacked in a 3-D tensor), ffn_*_shexp}.
 * - kv_b_proj [H * (nope + v), rank] is split per head: attn_k_b holds W_UK transposed,
 *   torch shape [H, rank, nope], attn_v_b holds W_UV, [H, v, rank].
 * - No RoPE permutation: deepseek2 uses llama.cpp's "normal" RoPE on adjacent pairs, which is
 *   DeepSeek's own (interleaved) layout, so q/k rope weights are stored as in the checkpoint.
 * - Norms, router and router bias are F32; attention.head_count_kv is 1 (MLA runs as MQA);
 *   key_length/value_length describe the cached latent, key_length_mla/value_length_mla the heads;
 *   rope.scaling.yarn_log_multiplier is 0.1 * mscale_all_dim.
 * - The MTP layers are left out, as llama.cpp's converter does (it has no DeepSeek MTP yet);
 *   files that carry them as blk.N.nextn.* are read.
 */
import { basename, extname, join } from 'node:path';
import { existsSync, rmSync, statSync } from 'node:fs';
import { UserError } from '../errors.js';
import type { HostWeight, WeightFormat, WeightSpec } from '../backends/backend.js';
import { GGML, GgufType, kv, openGguf, writeGguf, type GgufFile, type GgufMetadata, type GgufTensorToWrite } from '../formats/gguf.js';
import { openCheckpoint } from '../formats/checkpoint.js';
import type { DType } from '../formats/types.js';
import { dequantRow } from '../backends/cpu/dequant.js';
import { parseDeepseekConfig, type DeepseekConfig } from './config.js';
import { DeepseekModel, type ModelSource } from './deepseek.js';
import { convertWeight, hostWeight, quantizeTarget, weightRole, WeightReader, type QuantizeType, type WeightSource } from './weights.js';
import { ggufTokenizerMetadata } from '../tokenizer/gguf-tokenizer.js';

const ARCH = 'deepseek2';

/** ggml types shoal computes on, and their weight formats. */
export const FORMAT_OF_GGML: Record<number, WeightSpec['format']> = {
  [GGML.F32]: 'f32', [GGML.F16]: 'f16', [GGML.BF16]: 'bf16', [GGML.Q8_0]: 'q8_0', [GGML.Q4_0]: 'q4_0', [GGML.Q4_K]: 'q4_k', [GGML.Q6_K]: 'q6_k',
};
const GGML_OF_FORMAT: Partial<Record<WeightFormat, number>> = {
  f32: GGML.F32, f16: GGML.F16, bf16: GGML.BF16, q8_0: GGML.Q8_0, q4_0: GGML.Q4_0, q4_k: GGML.Q4_K, q6_k: GGML.Q6_K,
};

// ---- names -----------------------------------------------------------------------------------

const LAYER_NAMES: Record<string, string> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.q_a_proj.weight': 'attn_q_a.weight',
  'self_attn.q_a_layernorm.weight': 'attn_q_a_norm.weight',
  'self_attn.q_b_proj.weight': 'attn_q_b.weight',
  'self_attn.kv_a_proj_with_mqa.weight': 'attn_kv_a_mqa.weight',
  'self_attn.kv_a_layernorm.weight': 'attn_kv_a_norm.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
  'mlp.gate.weight': 'ffn_gate_inp.weight',
  'mlp.gate.e_score_correction_bias': 'exp_probs_b.bias',
  'mlp.shared_experts.gate_proj.weight': 'ffn_gate_shexp.weight',
  'mlp.shared_experts.up_proj.weight': 'ffn_up_shexp.weight',
  'mlp.shared_experts.down_proj.weight': 'ffn_down_shexp.weight',
  // The MTP module's own tensors (llama.cpp's NextN names).
  'embed_tokens.weight': 'nextn.embed_tokens.weight',
  'enorm.weight': 'nextn.enorm.weight',
  'hnorm.weight': 'nextn.hnorm.weight',
  'eh_proj.weight': 'nextn.eh_proj.weight',
  'shared_head.norm.weight': 'nextn.shared_head_norm.weight',
  'shared_head.head.weight': 'nextn.shared_head_head.weight',
};
const GLOBAL_NAMES: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};

/** Where a Hugging Face tensor lives in a deepseek2 GGUF. */
export type GgufPlace =
  | { kind: 'plain'; name: string }
  | { kind: 'expert'; name: string; expert: number }
  | { kind: 'kv_b'; layer: number };

export function ggufPlaceOf(hfName: string): GgufPlace | null {
  if (GLOBAL_NAMES[hfName]) return { kind: 'plain', name: GLOBAL_NAMES[hfName] };
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hfName);
  if (!m) return null;
  const layer = Number(m[1]), rest = m[2];
  if (rest === 'self_attn.kv_b_proj.weight') return { kind: 'kv_b', layer };
  const e = /^mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$/.exec(rest);
  if (e) return { kind: 'expert', name: `blk.${layer}.ffn_${e[2]}_exps.weight`, expert: Number(e[1]) };
  const g = LAYER_NAMES[rest];
  return g ? { kind: 'plain', name: `blk.${layer}.${g}` } : null;
}

// ---- reading: weights ------------------------------------------------------------------------

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** The weight format of GGUF tensor `gname`; a UserError naming it for a type shoal does not compute on. */
export function ggufWeightFormat(file: GgufFile, gname: string): WeightSpec['format'] {
  const t = file.info(gname);
  const f = FORMAT_OF_GGML[t.type];
  if (!f) throw new UserError(`tensor "${gname}": type ${t.typeName} is not one shoal computes on (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)`, file.path);
  return f;
}

/** A deepseek2 GGUF's tensors under Hugging Face names. */
export class GgufWeights implements WeightSource {
  constructor(readonly file: GgufFile, private readonly cfg: { numAttentionHeads: number; qkNopeHeadDim: number; vHeadDim: number; kvLoraRank: number; nRoutedExperts: number }) {}

  has(name: string): boolean {
    const p = ggufPlaceOf(name);
    if (!p) return false;
    if (p.kind === 'kv_b') return this.file.has(`blk.${p.layer}.attn_kv_b.weight`) || this.file.has(`blk.${p.layer}.attn_k_b.weight`);
    return this.file.has(p.name);
  }

  private fail(msg: string, tensor?: string): never {
    throw new UserError(tensor ? `tensor "${tensor}": ${msg}` : msg, this.file.path);
  }

  private format(gname: string): WeightSpec['format'] {
    return ggufWeightFormat(this.file, gname);
  }

  private expectShape(gname: string, want: number[], hfName: string): void {
    if (!this.file.has(gname)) this.fail(`missing tensor "${gname}" (${hfName}, expected shape [${want}])`);
    const got = this.file.info(gname).shape;
    if (!sameShape(got, want)) this.fail(`has shape [${got}] (ggml ne [${[...got].reverse()}]), expected [${want}] for ${hfName}`, gname);
    this.format(gname);
  }

  check(name: string, shape: number[]): void {
    const p = ggufPlaceOf(name);
    if (!p) this.fail(`no GGUF tensor corresponds to ${name}`);
    const { numAttentionHeads: H, qkNopeHeadDim: nope, vHeadDim: v, kvLoraRank: rank } = this.cfg;
    switch (p.kind) {
      case 'plain':
        return this.expectShape(p.name, shape, name);
      case 'expert':
        if (p.expert >= this.cfg.nRoutedExperts) this.fail(`expert ${p.expert} of ${name} is beyond expert_count (${this.cfg.nRoutedExperts})`);
        return this.expectShape(p.name, [this.cfg.nRoutedExperts, ...shape], name);
      case 'kv_b': {
        const legacy = `blk.${p.layer}.attn_kv_b.weight`;
        if (this.file.has(legacy)) return this.expectShape(legacy, shape, name);
        this.expectShape(`blk.${p.layer}.attn_k_b.weight`, [H, rank, nope], name);
        this.expectShape(`blk.${p.layer}.attn_v_b.weight`, [H, v, rank], name);
        return;
      }
    }
  }

  /**
   * Where a tensor's bytes lie in the file, when they are stored as they are: every tensor
   * but a kv_b split into attn_k_b and attn_v_b. An expert is its slice of the stacked tensor.
   */
  private extent(name: string, shape: number[]): { format: WeightSpec['format']; offset: number; bytes: number } | null {
    this.check(name, shape);
    const p = ggufPlaceOf(name)!;
    const gname = p.kind !== 'kv_b' ? p.name : `blk.${p.layer}.attn_kv_b.weight`;
    if (!this.file.has(gname)) return null;
    const t = this.file.info(gname);
    const format = this.format(gname);
    if (p.kind !== 'expert') return { format, offset: t.offset, bytes: t.byteLength };
    const per = t.byteLength / this.cfg.nRoutedExperts;
    return { format, offset: t.offset + p.expert * per, bytes: per };
  }

  storedFormat(name: string, shape: number[]): WeightSpec['format'] | null {
    return this.extent(name, shape)?.format ?? null;
  }

  readInto(name: string, shape: number[], dst: Uint8Array, offset: number): void {
    const e = this.extent(name, shape);
    if (!e) throw new Error(`${name} is not stored as it is (read it)`);
    if (offset < 0 || offset + dst.byteLength > e.bytes) throw new Error(`readInto ${name}: bytes [${offset}, ${offset + dst.byteLength}) are outside its ${e.bytes}`);
    this.file.readAt(e.offset + offset, dst, name);
  }

  read(name: string, shape: number[]): HostWeight {
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape[shape.length - 1];
    const e = this.extent(name, shape);
    if (!e) return this.joinKvB(name, (ggufPlaceOf(name) as { layer: number }).layer);
    // A buffer of its own from offset 0, so typed views over it are aligned.
    const bytes = new Uint8Array(e.bytes);
    this.file.readAt(e.offset, bytes, name);
    return hostWeight(name, e.format, rows, cols, bytes);
  }

  /**
   * Rebuilds kv_b_proj [H * (nope + v), rank] from attn_k_b ([H, rank, nope]: W_UK transposed
   * per head) and attn_v_b ([H, v, rank]). When both are f32/f16/bf16 of one type, the elements
   * are only moved; otherwise (block formats cannot be transposed) kv_b is their decoded values
   * in f32: exact, and small (under 1% of a DeepSeek model).
   */
  private joinKvB(name: string, layer: number): HostWeight {
    const { numAttentionHeads: H, qkNopeHeadDim: nope, vHeadDim: v, kvLoraRank: R } = this.cfg;
    const kName = `blk.${layer}.attn_k_b.weight`, vName = `blk.${layer}.attn_v_b.weight`;
    const kf = this.format(kName), vf = this.format(vName);
    const kb = hostWeight(kName, kf, H * R, nope, this.file.read(kName));
    const vb = hostWeight(vName, vf, H * v, R, this.file.read(vName));
    const rows = H * (nope + v);
    if (kf === vf && (kf === 'f32' || kf === 'f16' || kf === 'bf16')) {
      const out = kf === 'f32' ? new Float32Array(rows * R) : new Uint16Array(rows * R);
      const k = kb.data as Float32Array | Uint16Array, vv = vb.data as Float32Array | Uint16Array;
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < nope; d++) for (let c = 0; c < R; c++) out[(h * (nope + v) + d) * R + c] = k[(h * R + c) * nope + d];
        out.set(vv.subarray(h * v * R, (h + 1) * v * R), (h * (nope + v) + nope) * R);
      }
      return { name, format: kf, rows, cols: R, data: out };
    }
    const out = new Float32Array(rows * R);
    const krow = new Float32Array(nope);
    for (let h = 0; h < H; h++) {
      for (let c = 0; c < R; c++) {
        dequantRow(kb, h * R + c, krow);
        for (let d = 0; d < nope; d++) out[(h * (nope + v) + d) * R + c] = krow[d];
      }
      for (let j = 0; j < v; j++) dequantRow(vb, h * v + j, out, (h * (nope + v) + nope + j) * R);
    }
    return { name, format: 'f32', rows, cols: R, data: out };
  }
}

// ---- reading: config ------------------------------------------------------------------------

/** The DeepseekConfig a deepseek2 GGUF describes (validated like config.json). */
export function configFromGguf(f: GgufFile): DeepseekConfig {
  const arch = f.string('general.architecture', true);
  if (arch !== ARCH) throw new UserError(`architecture "${arch}" is not ${ARCH} (DeepSeek V2/V3)`, f.path);
  const k = (key: string) => `${ARCH}.${key}`;
  const num = (key: string) => f.number(k(key));
  const req = (key: string) => f.number(k(key), true);
  const blocks = req('block_count');
  const nextnKey = num('nextn_predict_layers') ?? 0;
  // MTP layers count only when their tensors are there (llama.cpp's "trunk only" files drop them).
  const mtp = nextnKey > 0 && f.has(`blk.${blocks - nextnKey}.nextn.eh_proj.weight`) ? nextnKey : 0;
  const layers = blocks - nextnKey;
  const rope = req('rope.dimension_count');
  const keyMla = num('attention.key_length_mla');
  const valueMla = num('attention.value_length_mla');
  // Files written before the MLA split give the head sizes in key_length/value_length.
  const headK = keyMla ?? req('attention.key_length');
  const headV = valueMla ?? req('attention.value_length');
  const gating = num('expert_gating_func') ?? 1; // llama.cpp: 1 softmax (default for old files), 2 sigmoid
  if (gating !== 1 && gating !== 2) throw new UserError(`${k('expert_gating_func')} ${gating} is not supported (1 softmax, 2 sigmoid)`, f.path);
  const sigmoid = gating === 2;
  const norm = f.bool(k('expert_weights_norm')) ?? false;
  const nGroup = num('expert_group_count') ?? 1;
  const firstDense = num('leading_dense_block_count') ?? 0;
  const hasBias = f.has(`blk.${firstDense}.exp_probs_b.bias`);
  const tokens = f.get('tokenizer.ggml.tokens');
  const vocab = num('vocab_size') ?? (tokens && tokens.type === GgufType.ARRAY ? tokens.value.length : f.has('token_embd.weight') ? f.info('token_embd.weight').shape[0] : undefined);
  if (vocab === undefined) throw new UserError(`missing metadata "${k('vocab_size')}"`, f.path);
  let ropeScaling: Record<string, unknown> | null = null;
  const scalingType = f.string(k('rope.scaling.type'));
  if (scalingType !== undefined && scalingType !== 'none') {
    if (scalingType !== 'yarn') throw new UserError(`${k('rope.scaling.type')} "${scalingType}" is not supported (supported: yarn, none)`, f.path);
    ropeScaling = {
      type: 'yarn',
      factor: f.number(k('rope.scaling.factor'), true),
      original_max_position_embeddings: f.number(k('rope.scaling.original_context_length'), true),
      beta_fast: num('rope.scaling.yarn_beta_fast') ?? 32,
      beta_slow: num('rope.scaling.yarn_beta_slow') ?? 1,
      // llama.cpp's converter stores 0.1 * mscale_all_dim (TAG_DEEPSEEK2_YARN_LOG_MUL_FIX).
      mscale_all_dim: (num('rope.scaling.yarn_log_multiplier') ?? 0) / 0.1,
    };
  }
  const bos = f.number('tokenizer.ggml.bos_token_id');
  const eos = f.number('tokenizer.ggml.eos_token_id');
  const qLora = num('attention.q_lora_rank');
  const raw: Record<string, unknown> = {
    // llama.cpp normalizes then scales whenever expert_weights_norm is set, which is the V3
    // router's rule; V2's ("normalize or scale") is the same when norm is off.
    architectures: [sigmoid || norm ? 'DeepseekV3ForCausalLM' : 'DeepseekV2ForCausalLM'],
    vocab_size: vocab,
    hidden_size: req('embedding_length'),
    intermediate_size: req('feed_forward_length'),
    moe_intermediate_size: num('expert_feed_forward_length'),
    num_hidden_layers: layers,
    num_attention_heads: req('attention.head_count'),
    kv_lora_rank: req('attention.kv_lora_rank'),
    qk_nope_head_dim: headK - rope,
    qk_rope_head_dim: rope,
    v_head_dim: headV,
    first_k_dense_replace: firstDense,
    moe_layer_freq: 1,
    n_routed_experts: num('expert_count') ?? 0,
    n_shared_experts: num('expert_shared_count') ?? 0,
    num_experts_per_tok: num('expert_used_count'),
    n_group: nGroup,
    topk_group: num('expert_group_used_count') ?? 1,
    topk_method: sigmoid && hasBias ? 'noaux_tc' : nGroup > 1 ? 'group_limited_greedy' : 'greedy',
    scoring_func: sigmoid ? 'sigmoid' : 'softmax',
    norm_topk_prob: norm,
    routed_scaling_factor: num('expert_weights_scale') ?? 1,
    q_lora_rank: qLora ? qLora : null,
    rms_norm_eps: num('attention.layer_norm_rms_epsilon') ?? 1e-6,
    rope_theta: num('rope.freq_base') ?? 10000,
    rope_scaling: ropeScaling,
    max_position_embeddings: num('context_length'),
    num_nextn_predict_layers: mtp,
    tie_word_embeddings: !f.has('output.weight'),
    bos_token_id: bos ?? null,
    eos_token_id: eos ?? null,
  };
  return parseDeepseekConfig(raw, f.path);
}

/** A deepseek2 GGUF opened as a model source (config, weights, and the file to close). */
export interface GgufModel extends ModelSource {
  file: GgufFile;
  close(): void;
}

export function openGgufModel(path: string): GgufModel {
  const file = openGguf(path);
  try {
    return deepseekGgufModel(file);
  } catch (e) {
    file.close();
    throw e;
  }
}

/** The model in an opened deepseek2 GGUF (the caller closes the file on error). */
export function deepseekGgufModel(file: GgufFile): GgufModel {
  const cfg = configFromGguf(file);
  return { label: file.path, cfg, weights: new GgufWeights(file, cfg), file, close: () => file.close() };
}

/** Whether a path names a GGUF file (by extension, or a folder holding model.gguf and no config.json). */
export function ggufPathOf(path: string): string | null {
  if (extname(path).toLowerCase() === '.gguf') return path;
  try {
    if (statSync(path).isDirectory() && !existsSync(join(path, 'config.json')) && existsSync(join(path, 'model.gguf'))) return join(path, 'model.gguf');
  } catch {
    // not there: the caller's open reports it
  }
  return null;
}

// ---- writing ---------------------------------------------------------------------------------

export type GgufOutType = 'bf16' | QuantizeType;
export const GGUF_OUT_TYPES: readonly GgufOutType[] = ['bf16', 'q8_0', 'q4_k'];

/** llama_ftype of the file (general.file_type). */
const FILE_TYPE: Record<GgufOutType, number> = { bf16: 32, q8_0: 7, q4_k: 14 };

const FORMAT_OF_DTYPE: Partial<Record<DType, WeightFormat>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', F8_E4M3: 'fp8_e4m3_block' };

/**
 * What a tensor is written as: norms, router and bias F32 (as llama.cpp's converter keeps
 * them); under bf16 every matrix bf16; under q8_0/q4_k the --quantize policy (quantizeTarget),
 * and matrices it leaves alone keep an f32/f16/bf16 format or become bf16 (FP8 has no GGUF type).
 */
export function ggufTargetFormat(type: GgufOutType, hfName: string, shape: readonly number[], src: WeightFormat): WeightFormat {
  const role = weightRole(hfName, shape);
  if (role === 'vector' || role === 'router') return 'f32';
  if (type === 'bf16') return 'bf16';
  const q = quantizeTarget(type, role, shape[shape.length - 1]);
  if (q) return q;
  return src === 'f32' || src === 'f16' || src === 'bf16' ? src : 'bf16';
}

function bytesOf(w: HostWeight): Uint8Array {
  return new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength);
}

/** The deepseek2 metadata llama.cpp reads (architecture keys, no tokenizer). */
export function archMetadata(cfg: DeepseekConfig, name: string, type: GgufOutType): GgufMetadata {
  const k = (key: string) => `${ARCH}.${key}`;
  if (cfg.moeLayerFreq !== 1 && cfg.nRoutedExperts > 0) throw new UserError(`moe_layer_freq ${cfg.moeLayerFreq}: llama.cpp's deepseek2 has MoE in every layer after the dense ones`);
  const md: GgufMetadata = [
    ['general.architecture', kv.str(ARCH)],
    ['general.name', kv.str(name)],
    ['general.file_type', kv.u32(FILE_TYPE[type])],
  ];
  if (type !== 'bf16') md.push(['general.quantization_version', kv.u32(2)]);
  const moe = cfg.nRoutedExperts > 0;
  // HF's V2 router either normalizes or scales; llama.cpp normalizes, then scales: write a
  // scale of 1 when a V2 model normalizes, so llama.cpp computes what the checkpoint means.
  const v2Norm = cfg.architecture === 'DeepseekV2ForCausalLM' && cfg.normTopkProb && cfg.numExpertsPerTok > 1;
  md.push(
    [k('block_count'), kv.u32(cfg.numHiddenLayers)],
    [k('context_length'), kv.u32(cfg.maxPositionEmbeddings)],
    [k('embedding_length'), kv.u32(cfg.hiddenSize)],
    [k('feed_forward_length'), kv.u32(cfg.intermediateSize)],
    [k('attention.head_count'), kv.u32(cfg.numAttentionHeads)],
    [k('attention.head_count_kv'), kv.u32(1)],
    [k('rope.freq_base'), kv.f32(cfg.ropeTheta)],
    [k('attention.layer_norm_rms_epsilon'), kv.f32(cfg.rmsNormEps)],
    [k('leading_dense_block_count'), kv.u32(moe ? cfg.firstKDenseReplace : cfg.numHiddenLayers)],
    [k('vocab_size'), kv.u32(cfg.vocabSize)],
    [k('attention.q_lora_rank'), kv.u32(cfg.qLoraRank ?? 0)],
    [k('attention.kv_lora_rank'), kv.u32(cfg.kvLoraRank)],
    [k('attention.key_length'), kv.u32(cfg.kvLoraRank + cfg.qkRopeHeadDim)],
    [k('attention.value_length'), kv.u32(cfg.kvLoraRank)],
    [k('attention.key_length_mla'), kv.u32(cfg.qkNopeHeadDim + cfg.qkRopeHeadDim)],
    [k('attention.value_length_mla'), kv.u32(cfg.vHeadDim)],
    [k('expert_feed_forward_length'), kv.u32(cfg.moeIntermediateSize)],
    [k('expert_shared_count'), kv.u32(cfg.nSharedExperts)],
    [k('rope.dimension_count'), kv.u32(cfg.qkRopeHeadDim)],
  );
  if (moe) {
    md.push(
      [k('expert_count'), kv.u32(cfg.nRoutedExperts)],
      [k('expert_used_count'), kv.u32(cfg.numExpertsPerTok)],
      [k('expert_weights_scale'), kv.f32(v2Norm ? 1 : cfg.routedScalingFactor)],
      [k('expert_weights_norm'), kv.bool(cfg.normTopkProb && cfg.numExpertsPerTok > 1)],
      [k('expert_gating_func'), kv.u32(cfg.scoringFunc === 'sigmoid' ? 2 : 1)],
    );
    if (cfg.topkMethod !== 'greedy' && cfg.nGroup > 1) {
      md.push([k('expert_group_count'), kv.u32(cfg.nGroup)], [k('expert_group_used_count'), kv.u32(cfg.topkGroup)]);
    }
  }
  const ys = cfg.ropeScaling;
  if (ys) {
    md.push(
      [k('rope.scaling.type'), kv.str('yarn')],
      [k('rope.scaling.factor'), kv.f32(ys.factor)],
      [k('rope.scaling.original_context_length'), kv.u32(ys.originalMaxPositionEmbeddings)],
      [k('rope.scaling.yarn_beta_fast'), kv.f32(ys.betaFast)],
      [k('rope.scaling.yarn_beta_slow'), kv.f32(ys.betaSlow)],
      [k('rope.scaling.yarn_log_multiplier'), kv.f32(0.1 * ys.mscaleAllDim)],
    );
  }
  return md;
}

export interface ConvertReport {
  tensors: number;
  bytes: number;
  /** Tensors per written format. */
  formats: Record<string, number>;
  mtpDropped: boolean;
}

/**
 * Writes a Hugging Face DeepSeek checkpoint as a deepseek2 GGUF: one tensor in memory at a
 * time (read packed, re-encoded a row at a time, written, dropped).
 */
export function convertToGguf(dir: string, out: string, type: GgufOutType, onProgress?: (done: number, total: number) => void): ConvertReport {
  const ckpt = openCheckpoint(dir);
  try {
    const cfg = DeepseekModel.checkCheckpoint(ckpt, { mtp: false });
    const r = new WeightReader(ckpt, cfg.weightBlockSize);
    const srcFormat = (hf: string) => FORMAT_OF_DTYPE[ckpt.tensors.info(hf).dtype]!;
    const md = [...archMetadata(cfg, basename(dir), type), ...ggufTokenizerMetadata(dir, cfg.vocabSize, { bos: cfg.bosTokenId, eos: cfg.eosTokenIds[0] ?? null })];
    const tensors: GgufTensorToWrite[] = [];
    const formats: Record<string, number> = {};
    const count = (f: WeightFormat) => { formats[f] = (formats[f] ?? 0) + 1; };
    const ggmlOf = (f: WeightFormat) => GGML_OF_FORMAT[f]!;
    const d = cfg.hiddenSize, H = cfg.numAttentionHeads;

    const plain = (hf: string, shape: number[]) => {
      const to = ggufTargetFormat(type, hf, shape, srcFormat(hf));
      count(to);
      tensors.push({
        name: (ggufPlaceOf(hf) as { name: string }).name, type: ggmlOf(to), ne: [...shape].reverse(),
        write: (emit) => emit(bytesOf(convertWeight(r.read(hf, shape), to))),
      });
    };
    const experts = (layer: number, proj: 'gate' | 'up' | 'down', shape: number[]) => {
      const first = `model.layers.${layer}.mlp.experts.0.${proj}_proj.weight`;
      const to = ggufTargetFormat(type, first, shape, srcFormat(first));
      count(to);
      tensors.push({
        name: `blk.${layer}.ffn_${proj}_exps.weight`, type: ggmlOf(to), ne: [shape[1], shape[0], cfg.nRoutedExperts],
        write: (emit) => {
          for (let e = 0; e < cfg.nRoutedExperts; e++) emit(bytesOf(convertWeight(r.read(`model.layers.${layer}.mlp.experts.${e}.${proj}_proj.weight`, shape), to)));
        },
      });
    };
    const kvB = (layer: number) => {
      const hf = `model.layers.${layer}.self_attn.kv_b_proj.weight`;
      const nope = cfg.qkNopeHeadDim, v = cfg.vHeadDim, R = cfg.kvLoraRank;
      const shape = [H * (nope + v), R];
      // Split per head as llama.cpp's converter does: k_b = W_UK^T [H, R, nope], v_b = W_UV [H, v, R].
      const split = (which: 'k' | 'v'): HostWeight => {
        const w = r.read(hf, shape);
        const row = new Float32Array(R);
        const rows = which === 'k' ? H * R : H * v, cols = which === 'k' ? nope : R;
        const data = new Float32Array(rows * cols);
        for (let h = 0; h < H; h++) {
          if (which === 'k') {
            for (let dd = 0; dd < nope; dd++) {
              dequantRow(w, h * (nope + v) + dd, row);
              for (let c = 0; c < R; c++) data[(h * R + c) * nope + dd] = row[c];
            }
          } else for (let j = 0; j < v; j++) dequantRow(w, h * (nope + v) + nope + j, data, (h * v + j) * R);
        }
        return { name: `${hf}.${which}`, format: 'f32', rows, cols, data };
      };
      for (const which of ['k', 'v'] as const) {
        const cols = which === 'k' ? nope : R;
        const to = ggufTargetFormat(type, hf, [which === 'k' ? H * R : H * v, cols], srcFormat(hf));
        count(to);
        tensors.push({
          name: `blk.${layer}.attn_${which}_b.weight`, type: ggmlOf(to), ne: which === 'k' ? [nope, R, H] : [R, v, H],
          write: (emit) => emit(bytesOf(convertWeight(split(which), to))),
        });
      }
    };

    plain('model.embed_tokens.weight', [cfg.vocabSize, d]);
    for (let i = 0; i < cfg.numHiddenLayers; i++) {
      const p = `model.layers.${i}`;
      const qDim = H * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
      plain(`${p}.input_layernorm.weight`, [d]);
      if (cfg.qLoraRank) {
        plain(`${p}.self_attn.q_a_proj.weight`, [cfg.qLoraRank, d]);
        plain(`${p}.self_attn.q_a_layernorm.weight`, [cfg.qLoraRank]);
        plain(`${p}.self_attn.q_b_proj.weight`, [qDim, cfg.qLoraRank]);
      } else plain(`${p}.self_attn.q_proj.weight`, [qDim, d]);
      plain(`${p}.self_attn.kv_a_proj_with_mqa.weight`, [cfg.kvLoraRank + cfg.qkRopeHeadDim, d]);
      plain(`${p}.self_attn.kv_a_layernorm.weight`, [cfg.kvLoraRank]);
      kvB(i);
      plain(`${p}.self_attn.o_proj.weight`, [d, H * cfg.vHeadDim]);
      plain(`${p}.post_attention_layernorm.weight`, [d]);
      const moe = cfg.nRoutedExperts > 0 && i >= cfg.firstKDenseReplace;
      if (!moe) {
        plain(`${p}.mlp.gate_proj.weight`, [cfg.intermediateSize, d]);
        plain(`${p}.mlp.up_proj.weight`, [cfg.intermediateSize, d]);
        plain(`${p}.mlp.down_proj.weight`, [d, cfg.intermediateSize]);
      } else {
        const inter = cfg.moeIntermediateSize;
        plain(`${p}.mlp.gate.weight`, [cfg.nRoutedExperts, d]);
        if (cfg.topkMethod === 'noaux_tc') plain(`${p}.mlp.gate.e_score_correction_bias`, [cfg.nRoutedExperts]);
        experts(i, 'gate', [inter, d]);
        experts(i, 'up', [inter, d]);
        experts(i, 'down', [d, inter]);
        if (cfg.nSharedExperts > 0) {
          const si = inter * cfg.nSharedExperts;
          plain(`${p}.mlp.shared_experts.gate_proj.weight`, [si, d]);
          plain(`${p}.mlp.shared_experts.up_proj.weight`, [si, d]);
          plain(`${p}.mlp.shared_experts.down_proj.weight`, [d, si]);
        }
      }
    }
    plain('model.norm.weight', [d]);
    if (!cfg.tieWordEmbeddings) plain('lm_head.weight', [cfg.vocabSize, d]);
    try {
      writeGguf(out, md, tensors, onProgress);
    } catch (e) {
      // No half-written file left behind (unless opening it was what failed).
      if ((e as NodeJS.ErrnoException).syscall !== 'open') rmSync(out, { force: true });
      throw e;
    }
    let bytes = 0;
    try { bytes = statSync(out).size; } catch { /* reported as 0 */ }
    return { tensors: tensors.length, bytes, formats, mtpDropped: cfg.numNextnPredictLayers > 0 };
  } finally {
    ckpt.tensors.close();
  }
}
