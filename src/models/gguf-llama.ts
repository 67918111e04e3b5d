/**
 * llama.cpp's `llama` and `qwen2` GGUF architectures -> the dense GQA model (models/llama.ts).
 *
 * GGUF metadata ({arch}.block_count, embedding_length, ...) becomes a validated LlamaConfig and
 * GGUF tensors are served under their Hugging Face names (token_embd -> model.embed_tokens,
 * blk.N.attn_q -> model.layers.N.self_attn.q_proj, ...).
 *
 * RoPE layouts: shoal's `rope` op rotates adjacent pairs (x[2i], x[2i+1]). llama.cpp's converter
 * stores `llama` q/k rows permuted for exactly that ("normal" RoPE), so they are served as they
 * are. `qwen2` uses NEOX RoPE, pairs (x[i], x[i + d/2]): its q/k weight rows and biases are
 * reordered within each head to [0, d/2, 1, d/2 + 1, ...], so the adjacent-pair op computes the
 * same rotation; q·k is unchanged because both get the same order, and V is untouched. Each row
 * of a packed (q8_0, q4_k, ...) weight is its own run of blocks, so reordering rows only moves
 * bytes: nothing is decoded.
 */
import { UserError } from '../errors.js';
import type { HostWeight, WeightSpec } from '../backends/backend.js';
import { GgufType, type GgufFile } from '../formats/gguf.js';
import { dequantRow } from '../backends/cpu/dequant.js';
import { FORMAT_OF_GGML, ggufWeightFormat, sameShape } from './gguf-deepseek.js';
import type { LlamaConfig, LlamaSource } from './llama.js';
import { hostWeight, type WeightSource } from './weights.js';

/** GGUF architectures this file reads, and the Hugging Face architecture each is. */
export const LLAMA_GGUF_ARCHITECTURES = { llama: 'LlamaForCausalLM', qwen2: 'Qwen2ForCausalLM' } as const;
export type LlamaGgufArchitecture = keyof typeof LLAMA_GGUF_ARCHITECTURES;

export function isLlamaGgufArchitecture(arch: string): arch is LlamaGgufArchitecture {
  return Object.hasOwn(LLAMA_GGUF_ARCHITECTURES, arch);
}

const GLOBAL_NAMES: Record<string, string> = {
  'model.embed_tokens.weight': 'token_embd.weight',
  'model.norm.weight': 'output_norm.weight',
  'lm_head.weight': 'output.weight',
};

const LAYER_NAMES: Record<string, string> = {
  'input_layernorm.weight': 'attn_norm.weight',
  'self_attn.q_proj.weight': 'attn_q.weight',
  'self_attn.k_proj.weight': 'attn_k.weight',
  'self_attn.v_proj.weight': 'attn_v.weight',
  'self_attn.o_proj.weight': 'attn_output.weight',
  'self_attn.q_proj.bias': 'attn_q.bias',
  'self_attn.k_proj.bias': 'attn_k.bias',
  'self_attn.v_proj.bias': 'attn_v.bias',
  'self_attn.o_proj.bias': 'attn_output.bias',
  'post_attention_layernorm.weight': 'ffn_norm.weight',
  'mlp.gate_proj.weight': 'ffn_gate.weight',
  'mlp.up_proj.weight': 'ffn_up.weight',
  'mlp.down_proj.weight': 'ffn_down.weight',
};

/** The GGUF tensor holding a Hugging Face tensor of a llama/qwen2 model, or null. */
export function llamaGgufNameOf(hfName: string): string | null {
  if (GLOBAL_NAMES[hfName]) return GLOBAL_NAMES[hfName];
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(hfName);
  const g = m && LAYER_NAMES[m[2]];
  return g ? `blk.${m[1]}.${g}` : null;
}

/** Source index of each of `ropeDim` leading dims of a head, in NEOX pair order [0, d/2, 1, d/2 + 1, ...]. */
function neoxToAdjacent(headDim: number, ropeDim: number): Int32Array {
  const src = Int32Array.from({ length: headDim }, (_, j) => j);
  for (let j = 0; j < ropeDim; j++) src[j] = (j >> 1) + (j & 1) * (ropeDim / 2);
  return src;
}

/** A llama/qwen2 GGUF's tensors under Hugging Face names (q/k in the adjacent-pair RoPE layout). */
export class LlamaGgufWeights implements WeightSource {
  private readonly order: Int32Array | null;

  constructor(readonly file: GgufFile, cfg: LlamaConfig, neoxRope: boolean) {
    this.order = neoxRope ? neoxToAdjacent(cfg.keyHeadDim, cfg.ropeDim) : null;
  }

  has(name: string): boolean {
    const g = llamaGgufNameOf(name);
    return g !== null && this.file.has(g);
  }

  private fail(msg: string, tensor?: string): never {
    throw new UserError(tensor ? `tensor "${tensor}": ${msg}` : msg, this.file.path);
  }

  private format(gname: string): WeightSpec['format'] {
    return ggufWeightFormat(this.file, gname);
  }

  check(name: string, shape: number[]): void {
    const g = llamaGgufNameOf(name);
    if (!g) this.fail(`no GGUF tensor corresponds to ${name}`);
    if (!this.file.has(g)) this.fail(`missing tensor "${g}" (${name}, expected shape [${shape}])`);
    const got = this.file.info(g).shape;
    if (!sameShape(got, shape)) this.fail(`has shape [${got}] (ggml ne [${[...got].reverse()}]), expected [${shape}] for ${name}`, g);
    const f = this.format(g);
    if (this.reordered(name) && shape.length === 1 && f !== 'f32' && f !== 'f16' && f !== 'bf16') this.fail(`a bias must be F32, F16 or BF16, not ${f}`, g);
  }

  /** Whether a tensor's rows (weights) or values (biases) are reordered for NEOX RoPE. */
  private reordered(name: string): boolean {
    return this.order !== null && /\.self_attn\.[qk]_proj\./.test(name);
  }

  /** Tensors stored as shoal keeps them: all but the reordered q/k (see WeightSource). */
  storedFormat(name: string, shape: number[]): WeightSpec['format'] | null {
    this.check(name, shape);
    return this.reordered(name) ? null : this.format(llamaGgufNameOf(name)!);
  }

  readInto(name: string, shape: number[], dst: Uint8Array, offset: number): void {
    if (!this.storedFormat(name, shape)) throw new Error(`${name} is not stored as it is (read it)`);
    const t = this.file.info(llamaGgufNameOf(name)!);
    if (offset < 0 || offset + dst.byteLength > t.byteLength) throw new Error(`readInto ${name}: bytes [${offset}, ${offset + dst.byteLength}) are outside its ${t.byteLength}`);
    this.file.readAt(t.offset + offset, dst, name);
  }

  read(name: string, shape: number[]): HostWeight {
    this.check(name, shape);
    const g = llamaGgufNameOf(name)!;
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape[shape.length - 1];
    let bytes = this.file.read(g);
    if (this.reordered(name)) bytes = this.reorderHeads(bytes, shape.length === 2 ? rows : cols);
    return hostWeight(name, this.format(g), rows, cols, bytes);
  }

  /** Reorders `units` equal byte runs (rows of a weight, values of a bias) within each head. */
  private reorderHeads(bytes: Uint8Array, units: number): Uint8Array {
    const order = this.order!, d = order.length, unit = bytes.byteLength / units;
    const out = new Uint8Array(bytes.byteLength);
    for (let h = 0; h < units / d; h++) {
      for (let j = 0; j < d; j++) {
        const from = (h * d + order[j]) * unit;
        out.set(bytes.subarray(from, from + unit), (h * d + j) * unit);
      }
    }
    return out;
  }
}

/** The LlamaConfig a llama/qwen2 GGUF describes; a UserError naming the file and key on anything missing or inconsistent. */
export function llamaConfigFromGguf(f: GgufFile): LlamaConfig {
  const arch = f.string('general.architecture', true);
  if (!isLlamaGgufArchitecture(arch)) throw new UserError(`architecture "${arch}" is not a llama/qwen2 one`, f.path);
  const key = (k: string) => `${arch}.${k}`;
  const bad = (k: string, why: string): never => { throw new UserError(`metadata "${key(k)}" ${why}`, f.path); };
  const value = (k: string, fallback?: number): number => (fallback === undefined ? f.number(key(k), true) : f.number(key(k)) ?? fallback);
  const count = (k: string, fallback?: number): number => {
    const v = value(k, fallback);
    if (!Number.isInteger(v) || v < 1) bad(k, `must be a positive integer, got ${v}`);
    return v;
  };
  const positive = (k: string, fallback?: number): number => {
    const v = value(k, fallback);
    if (!(v > 0)) bad(k, `must be positive, got ${v}`);
    return v;
  };
  const layers = count('block_count');
  const hidden = count('embedding_length');
  const heads = count('attention.head_count');
  const kvHeads = count('attention.head_count_kv', heads);
  if (heads % kvHeads !== 0) bad('attention.head_count_kv', `(${kvHeads}) must divide attention.head_count (${heads})`);
  if (f.number(key('attention.key_length')) === undefined && hidden % heads !== 0) bad('attention.head_count', `(${heads}) must divide embedding_length (${hidden})`);
  const keyDim = count('attention.key_length', hidden / heads);
  const valueDim = count('attention.value_length', keyDim);
  const ropeDim = count('rope.dimension_count', keyDim);
  if (ropeDim % 2 !== 0 || ropeDim > keyDim) bad('rope.dimension_count', `(${ropeDim}) must be even and at most the key head size (${keyDim})`);

  let factors: Float32Array | null = null;
  const scaling = f.string(key('rope.scaling.type'));
  if (scaling === 'linear') factors = new Float32Array(ropeDim / 2).fill(positive('rope.scaling.factor'));
  else if (scaling !== undefined && scaling !== 'none') bad('rope.scaling.type', `"${scaling}" is not supported (supported: none, linear)`);
  if (f.has('rope_freqs.weight')) {
    if (factors) throw new UserError('rope_freqs.weight and linear rope scaling together are not supported', f.path);
    factors = ropeFreqFactors(f, ropeDim / 2);
  }

  const tokens = f.get('tokenizer.ggml.tokens');
  const vocab = f.number(key('vocab_size'))
    ?? (tokens?.type === GgufType.ARRAY ? tokens.value.length : f.has('token_embd.weight') ? f.info('token_embd.weight').shape[0] : undefined);
  if (vocab === undefined) throw new UserError(`missing metadata "${key('vocab_size')}" (and no tokenizer.ggml.tokens or token_embd.weight to count)`, f.path);
  // Generation ends at end-of-sequence and, as in llama.cpp, at end-of-turn/-message (Llama 3's <|eot_id|>).
  const stops = ['eos', 'eot', 'eom'].map((t) => f.number(`tokenizer.ggml.${t}_token_id`)).filter((id) => id !== undefined);
  return {
    architecture: LLAMA_GGUF_ARCHITECTURES[arch],
    vocabSize: vocab,
    hiddenSize: hidden,
    intermediateSize: count('feed_forward_length'),
    numHiddenLayers: layers,
    numAttentionHeads: heads,
    numKeyValueHeads: kvHeads,
    keyHeadDim: keyDim,
    valueHeadDim: valueDim,
    ropeDim,
    ropeTheta: positive('rope.freq_base', 10000),
    ropeFreqFactors: factors,
    rmsNormEps: positive('attention.layer_norm_rms_epsilon'),
    maxPositionEmbeddings: count('context_length'),
    // Qwen2 always has q/k/v biases; llama files may carry them too.
    attentionBias: arch === 'qwen2' || f.has('blk.0.attn_q.bias'),
    outputBias: f.has('blk.0.attn_output.bias'),
    tieWordEmbeddings: !f.has('output.weight'),
    bosTokenId: f.number('tokenizer.ggml.bos_token_id') ?? null,
    eosTokenIds: [...new Set(stops)],
    nRoutedExperts: 0,
    nSharedExperts: 0,
    numExpertsPerTok: 0,
    firstKDenseReplace: layers,
    moeLayerFreq: 1,
    numNextnPredictLayers: 0,
  };
}

/** Llama 3.1's rope_freqs.weight: one factor per rotated pair, dividing its inverse frequency. */
function ropeFreqFactors(f: GgufFile, pairs: number): Float32Array {
  const name = 'rope_freqs.weight';
  const info = f.info(name);
  if (!sameShape(info.shape, [pairs])) throw new UserError(`tensor "${name}": has shape [${info.shape}], expected [${pairs}] (rope.dimension_count / 2)`, f.path);
  const format = FORMAT_OF_GGML[info.type];
  if (format !== 'f32' && format !== 'f16' && format !== 'bf16') throw new UserError(`tensor "${name}": type ${info.typeName}, expected F32`, f.path);
  const out = new Float32Array(pairs);
  dequantRow(hostWeight(name, format, 1, pairs, f.read(name)), 0, out);
  if (!out.every((v) => v > 0)) throw new UserError(`tensor "${name}": factors must be positive`, f.path);
  return out;
}

/** A llama/qwen2 GGUF opened as a model source. */
export interface LlamaGgufModel extends LlamaSource {
  file: GgufFile;
  close(): void;
}

/** The model in an opened llama/qwen2 GGUF (the caller closes the file on error). */
export function llamaGgufModel(file: GgufFile): LlamaGgufModel {
  const cfg = llamaConfigFromGguf(file);
  const neoxRope = cfg.architecture === LLAMA_GGUF_ARCHITECTURES.qwen2;
  return { label: file.path, cfg, weights: new LlamaGgufWeights(file, cfg, neoxRope), file, close: () => file.close() };
}
