/**
 * Host-side decoding of packed weight formats, one row at a time.
 * Kernels dequantize a row (or a tile of rows) into scratch and compute on it, so a
 * packed weight is never inflated to float32 as a whole.
 */
import type { HostWeight, WeightFormat } from '../backend.js';
import { e4m3Table32, f16Table32 } from '../../formats/safetensors.js';
import { dequantizeRow, isPackedFormat, packedRowBytes, PACKED_FORMATS } from '../../formats/quant.js';

/** e4m3fn codes as float32 (the format module owns the decode tables). */
const E4M3_TABLE: Float32Array = e4m3Table32();

/**
 * Writes row r of w as float32 into out[outOffset .. outOffset + cols).
 * For f32 weights prefer `f32Row`, which returns a view and copies nothing.
 */
export function dequantRow(w: HostWeight, r: number, out: Float32Array, outOffset = 0): void {
  const cols = w.cols;
  const base = r * cols;
  switch (w.format) {
    case 'f32': {
      out.set((w.data as Float32Array).subarray(base, base + cols), outOffset);
      return;
    }
    case 'bf16': {
      // bf16 is the top half of a float32: shift into place through an integer view.
      const src = w.data as Uint16Array;
      const o32 = new Uint32Array(out.buffer, out.byteOffset + outOffset * 4, cols);
      for (let c = 0; c < cols; c++) o32[c] = src[base + c] << 16;
      return;
    }
    case 'f16': {
      const src = w.data as Uint16Array;
      const t = f16Table32();
      for (let c = 0; c < cols; c++) out[outOffset + c] = t[src[base + c]];
      return;
    }
    case 'fp8_e4m3_block': {
      const src = w.data as Uint8Array;
      const scales = w.scales!;
      const bc = w.blockCols!;
      const scaleCols = Math.ceil(cols / bc);
      const srow = Math.floor(r / w.blockRows!) * scaleCols;
      for (let c0 = 0, sb = 0; c0 < cols; c0 += bc, sb++) {
        const s = scales[srow + sb];
        const end = Math.min(cols, c0 + bc);
        for (let c = c0; c < end; c++) out[outOffset + c] = E4M3_TABLE[src[base + c]] * s;
      }
      return;
    }
    case 'q8_0':
    case 'q4_0':
    case 'q4_k':
    case 'q6_k': {
      // Blocks are decoded as ggml's dequantize_row_* does (float32 results, same rounding).
      const spec = PACKED_FORMATS[w.format];
      dequantizeRow(w.format, w.data as Uint8Array, (r * cols / spec.block) * spec.bytes, cols, out, outOffset);
      return;
    }
  }
}

/** Bytes of a weight's data (HostWeight.data) in `format`, fp8 scales not included. */
export function weightDataBytes(format: WeightFormat, rows: number, cols: number): number {
  if (isPackedFormat(format)) {
    const rb = packedRowBytes(format, cols);
    if (rb === null) throw new Error(`${cols} columns is not a whole number of ${format} blocks (${PACKED_FORMATS[format].block})`);
    return rows * rb;
  }
  return rows * cols * (format === 'f32' ? 4 : format === 'fp8_e4m3_block' ? 1 : 2);
}

/** Bytes the packed weight occupies (data plus scales). */
export function weightBytes(w: HostWeight): number {
  return w.data.byteLength + (w.scales ? w.scales.byteLength : 0);
}
