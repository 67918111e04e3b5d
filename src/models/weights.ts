/**
 * Turning checkpoint tensors into packed HostWeights, with the checks every model file needs:
 * the tensor exists, has the shape the architecture expects, and (for FP8) carries a
 * block-scale tensor of the right shape. Each weight is read from disk only when asked for.
 */
import { UserError } from '../errors.js';
import type { Backend, HostWeight, WeightFormat } from '../backends/backend.js';
import type { Checkpoint, DType } from '../formats/types.js';
import { dequantRow } from '../backends/cpu/dequant.js';
import { f32ToF16, isPackedFormat, packedRowBytes, quantizeRow, PACKED_FORMATS } from '../formats/quant.js';

/**
 * Where a model's weights come from, by Hugging Face tensor name: a checkpoint folder
 * (WeightReader) or a GGUF file (models/gguf-deepseek.ts), which maps the names.
 */
export interface WeightSource {
  has(name: string): boolean;
  /** Throws a UserError naming the tensor (and file) when it is missing or shaped otherwise. */
  check(name: string, shape: number[]): void;
  /** The tensor as a packed HostWeight, checked against `shape` ([n] for vectors, [rows, cols]). */
  read(name: string, shape: number[]): HostWeight;
  /**
   * Like read, but into a buffer the next readTransient call reuses: for weights re-encoded at
   * once (--quantize), so the source bytes never pile up waiting for the garbage collector.
   */
  readTransient?(name: string, shape: number[]): HostWeight;
}

const FORMAT_OF: Partial<Record<DType, WeightFormat>> = {
  F32: 'f32', F16: 'f16', BF16: 'bf16', F8_E4M3: 'fp8_e4m3_block',
};

export class WeightReader implements WeightSource {
  constructor(
    readonly ckpt: Checkpoint,
    /** FP8 block size from quantization_config (rows, cols). */
    readonly blockSize: [number, number] | null,
  ) {}

  has(name: string): boolean {
    return this.ckpt.tensors.has(name);
  }

  /** Throws a UserError naming the tensor if it is missing or shaped otherwise. */
  check(name: string, shape: number[]): void {
    const src = this.ckpt.tensors;
    if (!src.has(name)) throw new UserError(`missing tensor ${name} (expected shape [${shape}])`, this.ckpt.dir);
    const info = src.info(name);
    const got = info.shape.length === 1 && shape.length === 2 && shape[0] === 1 ? [1, info.shape[0]] : info.shape;
    if (got.length !== shape.length || got.some((v, i) => v !== shape[i])) {
      throw new UserError(`tensor ${name} has shape [${info.shape}], expected [${shape}]`, info.file);
    }
    if (!FORMAT_OF[info.dtype]) throw new UserError(`tensor ${name} has dtype ${info.dtype}, not a float weight format`, info.file);
    if (info.dtype === 'F8_E4M3') {
      const scale = `${name}_scale_inv`;
      if (!src.has(scale)) throw new UserError(`FP8 tensor ${name} has no ${scale}`, info.file);
      const [br, bc] = this.blockSize ?? [128, 128];
      const rows = shape.length === 2 ? shape[0] : 1;
      const cols = shape[shape.length - 1];
      const want = [Math.ceil(rows / br), Math.ceil(cols / bc)];
      const s = src.info(scale);
      if (s.dtype !== 'F32' && s.dtype !== 'BF16') throw new UserError(`${scale} has dtype ${s.dtype}, expected F32`, s.file);
      const sShape = s.shape.length === 1 ? [1, s.shape[0]] : s.shape;
      if (sShape.length !== 2 || sShape[0] !== want[0] || sShape[1] !== want[1]) {
        throw new UserError(`${scale} has shape [${s.shape}], expected [${want}] for blocks of ${br}x${bc}`, s.file);
      }
    }
  }

  private scratch = new Uint8Array(0);

  /** Reads a 1-D or 2-D tensor (checked against `shape`) as a packed HostWeight. */
  read(name: string, shape: number[]): HostWeight {
    return this.readWith(name, shape, false);
  }

  readTransient(name: string, shape: number[]): HostWeight {
    return this.readWith(name, shape, true);
  }

  private readWith(name: string, shape: number[], transient: boolean): HostWeight {
    this.check(name, shape);
    const src = this.ckpt.tensors;
    const info = src.info(name);
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape[shape.length - 1];
    let bytes: Uint8Array;
    const into = (src as { readInto?: (n: string, dst: Uint8Array) => void }).readInto;
    if (transient && into) {
      if (this.scratch.byteLength < info.byteLength) this.scratch = new Uint8Array(Math.ceil(Math.max(info.byteLength, this.scratch.byteLength * 1.5) / 8) * 8);
      bytes = this.scratch.subarray(0, info.byteLength);
      into.call(src, name, bytes);
    } else bytes = src.read(name);
    const format = FORMAT_OF[info.dtype]!;
    switch (format) {
      case 'f32':
        return { name, format, rows, cols, data: new Float32Array(bytes.buffer, bytes.byteOffset, rows * cols) };
      case 'f16':
      case 'bf16':
        return { name, format, rows, cols, data: new Uint16Array(bytes.buffer, bytes.byteOffset, rows * cols) };
      case 'fp8_e4m3_block': {
        const [br, bc] = this.blockSize ?? [128, 128];
        const scaleName = `${name}_scale_inv`;
        const sInfo = src.info(scaleName);
        const sBytes = src.read(scaleName);
        const count = sInfo.shape.reduce((a, b) => a * b, 1);
        let scales: Float32Array;
        if (sInfo.dtype === 'F32') scales = new Float32Array(sBytes.buffer, sBytes.byteOffset, count);
        else {
          const u16 = new Uint16Array(sBytes.buffer, sBytes.byteOffset, count);
          scales = new Float32Array(count);
          const u32 = new Uint32Array(scales.buffer);
          for (let i = 0; i < count; i++) u32[i] = u16[i] << 16;
        }
        return { name, format, rows, cols, data: bytes, scales, blockRows: br, blockCols: bc };
      }
      default:
        throw new Error(`${name}: unexpected format ${format}`);
    }
  }

  /** Reads a small float vector (e.g. a router bias) as F32 values. */
  readVector(name: string, len: number): HostWeight {
    return this.read(name, [len]);
  }
}

// ---- converting weights on load ------------------------------------------------------------

/** What `--quantize` packs projection weights into. */
export type QuantizeType = 'q8_0' | 'q4_k';
export const QUANTIZE_TYPES: readonly QuantizeType[] = ['q8_0', 'q4_k'];

/** How a weight is used, which decides what --quantize (and `shoal convert`) do with it. */
export type WeightRole = 'embedding' | 'head' | 'projection' | 'router' | 'vector';

/** The role of a tensor from its Hugging Face name and shape. */
export function weightRole(name: string, shape: readonly number[]): WeightRole {
  if (shape.length < 2) return 'vector';
  if (name.endsWith('embed_tokens.weight')) return 'embedding';
  if (name === 'lm_head.weight' || name.endsWith('shared_head.head.weight')) return 'head';
  if (name.endsWith('.mlp.gate.weight')) return 'router';
  return 'projection';
}

/**
 * The packed format a weight gets under `--quantize type`, or null to keep it as it is:
 * projections take the type; embeddings q8_0 (a row lookup, so the cheapest place to keep
 * precision); the LM head q8_0, or q6_k under q4_k (as llama.cpp's Q4_K_M does); norms,
 * biases and the router stay. A weight whose columns are not whole blocks stays too.
 */
export function quantizeTarget(type: QuantizeType, role: WeightRole, cols: number): WeightFormat | null {
  let to: WeightFormat;
  switch (role) {
    case 'vector':
    case 'router':
      return null;
    case 'embedding': to = 'q8_0'; break;
    case 'head': to = type === 'q4_k' ? 'q6_k' : 'q8_0'; break;
    case 'projection': to = type; break;
  }
  return isPackedFormat(to) && packedRowBytes(to, cols) === null ? null : to;
}

const bf16Cvt = new Float32Array(1);
const bf16U32 = new Uint32Array(bf16Cvt.buffer);

/** float32 -> bfloat16, round to nearest even (as torch's .to(torch.bfloat16)); NaN stays NaN. */
export function f32ToBf16(v: number): number {
  bf16Cvt[0] = v;
  const x = bf16U32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return (x >>> 16) | 0x40;
  return (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

/**
 * Re-encodes a weight in another format, one row at a time through a float32 scratch row, so
 * a tensor is never held in float32 as a whole. Block formats need cols in whole blocks.
 */
export function convertWeight(w: HostWeight, to: WeightFormat): HostWeight {
  if (w.format === to) return w;
  const { rows, cols } = w;
  const row = new Float32Array(cols);
  const base = { name: w.name, format: to, rows, cols };
  if (isPackedFormat(to)) {
    const rb = packedRowBytes(to, cols);
    if (rb === null) throw new Error(`${w.name}: ${cols} columns is not a whole number of ${to} blocks (${PACKED_FORMATS[to].block})`);
    const data = new Uint8Array(rows * rb);
    for (let r = 0; r < rows; r++) {
      dequantRow(w, r, row);
      quantizeRow(to, row, 0, cols, data, r * rb);
    }
    return { ...base, data };
  }
  switch (to) {
    case 'f32': {
      const data = new Float32Array(rows * cols);
      for (let r = 0; r < rows; r++) dequantRow(w, r, data, r * cols);
      return { ...base, data };
    }
    case 'bf16':
    case 'f16': {
      const data = new Uint16Array(rows * cols);
      const enc = to === 'bf16' ? f32ToBf16 : f32ToF16;
      for (let r = 0; r < rows; r++) {
        dequantRow(w, r, row);
        for (let c = 0; c < cols; c++) data[r * cols + c] = enc(row[c]);
      }
      return { ...base, data };
    }
    default:
      throw new Error(`${w.name}: cannot convert to ${to}`);
  }
}

/** Whether a backend takes a format (backends written before supportsFormat take the first four). */
export function backendSupports(b: Backend, format: WeightFormat): boolean {
  if (typeof (b as Partial<Backend>).supportsFormat === 'function') return b.supportsFormat(format);
  return format === 'f32' || format === 'f16' || format === 'bf16' || format === 'fp8_e4m3_block';
}

export interface PrepareOptions {
  /** Pack projection weights on load (see quantizeTarget). */
  quantize?: QuantizeType | null;
  /** Where notes go (default: stderr). */
  log?: (line: string) => void;
}

/**
 * Turns each weight as read into what its backend will hold: packed by --quantize, and
 * converted to bf16 (f32 if the backend lacks bf16) when the backend does not compute on its
 * format, saying so once per format on stderr. One tensor at a time.
 */
export class WeightPreparer {
  private readonly told = new Set<string>();
  /** Tensors packed by --quantize, and tensors converted for the backend. */
  quantized = 0;
  converted = 0;

  constructor(private readonly opts: PrepareOptions = {}) {}

  /** Reads a weight from `src` and prepares it (reading into reused scratch when it is re-encoded at once). */
  load(b: Backend, name: string, shape: number[], src: WeightSource): HostWeight {
    const q = this.opts.quantize;
    const to = q ? quantizeTarget(q, weightRole(name, shape), shape[shape.length - 1]) : null;
    if (!to || !src.readTransient) return this.prepare(b, name, shape, src.read(name, shape));
    const t = src.readTransient(name, shape);
    // Already in the target format: keep a copy (the transient buffer is reused).
    const w = t.format === to ? { ...t, data: t.data.slice() } : this.pack(t, to);
    return this.prepare(b, name, shape, w);
  }

  private pack(w: HostWeight, to: WeightFormat): HostWeight {
    this.quantized++;
    return convertWeight(w, to);
  }

  prepare(b: Backend, name: string, shape: readonly number[], hw: HostWeight): HostWeight {
    let w = hw;
    const q = this.opts.quantize;
    if (q) {
      const to = quantizeTarget(q, weightRole(name, shape), w.cols);
      if (to && to !== w.format) w = this.pack(w, to);
    }
    if (!backendSupports(b, w.format)) {
      const to: WeightFormat = backendSupports(b, 'bf16') ? 'bf16' : 'f32';
      const key = `${b.info.name}/${w.format}`;
      if (!this.told.has(key)) {
        this.told.add(key);
        const line = `shoal: ${b.info.name} does not compute on ${w.format} weights; converting them to ${to} on load`;
        (this.opts.log ?? ((l: string) => process.stderr.write(l + '\n')))(line);
      }
      w = convertWeight(w, to);
      this.converted++;
    }
    return w;
  }
}
