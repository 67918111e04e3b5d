/**
 * Turning checkpoint tensors into packed HostWeights, with the checks every model file needs:
 * the tensor exists, has the shape the architecture expects, and (for FP8) carries a
 * block-scale tensor of the right shape. Each weight is read from disk only when asked for.
 */
import { UserError } from '../errors.js';
import type { Backend, DeviceWeight, HostWeight, WeightFormat, WeightSpec } from '../backends/backend.js';
import type { Checkpoint, DType } from '../formats/types.js';
import { dequantRow, weightDataBytes } from '../backends/cpu/dequant.js';
import { f32ToF16, isPackedFormat, packedRowBytes, quantizeRow, PACKED_FORMATS, type PackedFormat } from '../formats/quant.js';

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
   * The tensor's format when its stored bytes are its HostWeight data as they are, so readInto
   * can copy them into memory the caller holds; null when read() has to build the weight
   * (FP8 with its scales, kv_b from GGUF's k_b and v_b). Checks like read.
   */
  storedFormat?(name: string, shape: number[]): WeightSpec['format'] | null;
  /** Reads bytes [offset, offset + dst.byteLength) of a tensor that has a storedFormat. */
  readInto?(name: string, shape: number[], dst: Uint8Array, offset: number): void;
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

  storedFormat(name: string, shape: number[]): WeightSpec['format'] | null {
    this.check(name, shape);
    const f = FORMAT_OF[this.ckpt.tensors.info(name).dtype]!;
    return f === 'fp8_e4m3_block' ? null : f;
  }

  readInto(name: string, _shape: number[], dst: Uint8Array, offset: number): void {
    this.ckpt.tensors.readInto(name, dst, offset);
  }

  /** Reads a 1-D or 2-D tensor (checked against `shape`) as a packed HostWeight. */
  read(name: string, shape: number[]): HostWeight {
    this.check(name, shape);
    const src = this.ckpt.tensors;
    const info = src.info(name);
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape[shape.length - 1];
    const bytes = src.read(name);
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
 * biases and the router stay. A k-quant whose columns are not whole 256-value blocks (e.g.
 * DeepSeek-V2-Lite's dense down projection, 10944 columns) falls back to q8_0, as llama.cpp's
 * quantizer falls back to a 32-value type; a weight whose columns fit no block stays as it is.
 */
export function quantizeTarget(type: QuantizeType, role: WeightRole, cols: number): PackedFormat | null {
  let to: PackedFormat;
  switch (role) {
    case 'vector':
    case 'router':
      return null;
    case 'embedding': to = 'q8_0'; break;
    case 'head': to = type === 'q4_k' ? 'q6_k' : 'q8_0'; break;
    case 'projection': to = type; break;
  }
  if (packedRowBytes(to, cols) !== null) return to;
  return packedRowBytes('q8_0', cols) === null ? null : 'q8_0';
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

/** A HostWeight over `bytes` (no copy; `bytes` must be aligned for the format's element type). */
export function hostWeight(name: string, format: WeightSpec['format'], rows: number, cols: number, bytes: Uint8Array): HostWeight {
  switch (format) {
    case 'f32': return { name, format, rows, cols, data: new Float32Array(bytes.buffer, bytes.byteOffset, rows * cols) };
    case 'f16':
    case 'bf16': return { name, format, rows, cols, data: new Uint16Array(bytes.buffer, bytes.byteOffset, rows * cols) };
    default: return { name, format, rows, cols, data: bytes };
  }
}

/**
 * Re-encodes a weight in another format, one row at a time through a float32 scratch row, so
 * a tensor is never held in float32 as a whole. Block formats need cols in whole blocks.
 * The result is written into `into` (weightDataBytes long, aligned) when given, else a new array.
 */
export function convertWeight(w: HostWeight, to: WeightFormat, into?: Uint8Array): HostWeight {
  if (w.format === to && !into) return w;
  if (to === 'fp8_e4m3_block') throw new Error(`${w.name}: cannot convert to ${to}`);
  const { rows, cols } = w;
  if (isPackedFormat(to) && packedRowBytes(to, cols) === null) {
    throw new Error(`${w.name}: ${cols} columns is not a whole number of ${to} blocks (${PACKED_FORMATS[to].block})`);
  }
  const out = hostWeight(w.name, to, rows, cols, into ?? new Uint8Array(weightDataBytes(to, rows, cols)));
  if (w.format === to) {
    into!.set(new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength));
    return out;
  }
  const row = new Float32Array(cols);
  if (isPackedFormat(to)) {
    const rb = packedRowBytes(to, cols)!;
    for (let r = 0; r < rows; r++) {
      dequantRow(w, r, row);
      quantizeRow(to, row, 0, cols, out.data as Uint8Array, r * rb);
    }
  } else if (to === 'f32') {
    for (let r = 0; r < rows; r++) dequantRow(w, r, out.data as Float32Array, r * cols);
  } else {
    const data = out.data as Uint16Array;
    const enc = to === 'bf16' ? f32ToBf16 : f32ToF16;
    for (let r = 0; r < rows; r++) {
      dequantRow(w, r, row);
      for (let c = 0; c < cols; c++) data[r * cols + c] = enc(row[c]);
    }
  }
  return out;
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
  /** Most bytes of a tensor read at once when it is re-encoded on load (default 16 MiB). */
  chunkBytes?: number;
}

/**
 * Uploads a weight whose data `fill` writes: straight into the backend's storage where it
 * has uploadWeightFrom, else into a fresh buffer handed over to uploadWeight.
 */
export function uploadFilled(b: Backend, spec: WeightSpec, fill: (dst: Uint8Array) => void): DeviceWeight {
  if (b.uploadWeightFrom) return b.uploadWeightFrom(spec, fill);
  const data = new Uint8Array(weightDataBytes(spec.format, spec.rows, spec.cols));
  fill(data);
  return b.uploadWeight(hostWeight(spec.name, spec.format, spec.rows, spec.cols, data));
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
  /** Where re-encoded tensors are read, a chunk at a time (reused from tensor to tensor). */
  private scratch = new Uint8Array(0);

  constructor(private readonly opts: PrepareOptions = {}) {}

  /** Size of the buffer re-encoded tensors have been read through (at most about chunkBytes). */
  get scratchBytes(): number {
    return this.scratch.byteLength;
  }

  /**
   * Reads a weight from `src`, prepares it and uploads it to `b`. Where the source can read
   * bytes into memory the caller holds (storedFormat), no host copy of the tensor is made: its
   * bytes go straight into the backend's storage (uploadFilled), or, when --quantize re-encodes
   * them, pass through one reused buffer a chunk of rows at a time. Otherwise (FP8, GGUF's
   * kv_b, a format the backend lacks) the tensor is read whole and prepared.
   */
  upload(b: Backend, name: string, shape: number[], src: WeightSource): DeviceWeight {
    const stored = src.storedFormat?.(name, shape) ?? null;
    const to = stored && (this.quantizeTo(name, shape, stored) ?? stored);
    if (!stored || !to || !backendSupports(b, to)) return b.uploadWeight(this.prepare(b, name, shape, src.read(name, shape)));
    const rows = shape.length === 2 ? shape[0] : 1;
    const cols = shape[shape.length - 1];
    const spec: WeightSpec = { name, format: to, rows, cols };
    if (to === stored) return uploadFilled(b, spec, (dst) => src.readInto!(name, shape, dst, 0));
    this.quantized++;
    const srcRow = weightDataBytes(stored, 1, cols), dstRow = weightDataBytes(to, 1, cols);
    const step = Math.max(1, Math.floor((this.opts.chunkBytes ?? 16 << 20) / srcRow));
    return uploadFilled(b, spec, (dst) => {
      for (let r0 = 0; r0 < rows; r0 += step) {
        const n = Math.min(step, rows - r0);
        const bytes = this.scratchOf(n * srcRow);
        src.readInto!(name, shape, bytes, r0 * srcRow);
        convertWeight(hostWeight(name, stored, n, cols, bytes), to, dst.subarray(r0 * dstRow, (r0 + n) * dstRow));
      }
    });
  }

  /** `bytes` of the reused scratch buffer. */
  private scratchOf(bytes: number): Uint8Array {
    if (this.scratch.byteLength < bytes) this.scratch = new Uint8Array(bytes);
    return this.scratch.subarray(0, bytes);
  }

  /** The format --quantize packs a weight now in `from` into, or null to keep it. */
  private quantizeTo(name: string, shape: readonly number[], from: WeightFormat): PackedFormat | null {
    const q = this.opts.quantize;
    const to = q ? quantizeTarget(q, weightRole(name, shape), shape[shape.length - 1]) : null;
    return to === from ? null : to;
  }

  prepare(b: Backend, name: string, shape: readonly number[], hw: HostWeight): HostWeight {
    let w = hw;
    const q = this.quantizeTo(name, shape, w.format);
    if (q) {
      w = convertWeight(w, q);
      this.quantized++;
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
