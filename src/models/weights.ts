/**
 * Turning checkpoint tensors into packed HostWeights, with the checks every model file needs:
 * the tensor exists, has the shape the architecture expects, and (for FP8) carries a
 * block-scale tensor of the right shape. Each weight is read from disk only when asked for.
 */
import { UserError } from '../errors.js';
import type { HostWeight, WeightFormat } from '../backends/backend.js';
import type { Checkpoint, DType } from '../formats/types.js';

const FORMAT_OF: Partial<Record<DType, WeightFormat>> = {
  F32: 'f32', F16: 'f16', BF16: 'bf16', F8_E4M3: 'fp8_e4m3_block',
};

export class WeightReader {
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
    }
  }

  /** Reads a small float vector (e.g. a router bias) as F32 values. */
  readVector(name: string, len: number): HostWeight {
    return this.read(name, [len]);
  }
}
