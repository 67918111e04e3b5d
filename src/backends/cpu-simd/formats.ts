/**
 * The per-format kernel table of the fast CPU backend. A weight whose format has an entry here
 * (and that the entry accepts) is computed on by the wasm kernels; any other weight stays with
 * the TypeScript reference code (CpuBackend), op by op. Adding a packed format (q8_0, q4_k, ...)
 * means: a decoder or kernels in kernels.as, their names in protocol.ts KERNELS, an entry here.
 */
import type { HostWeight, WeightFormat } from '../backend.js';
import type { KernelName } from './protocol.js';
import { isPackedFormat, packedRowBytes } from '../../formats/quant.js';

export interface FormatKernels {
  /** matmul(x, xs, n, w, k, r0, r1, out, os, scales, blockRows, blockCols). */
  matmul: KernelName;
  /** Absorbed MLA with kv_b in this format. */
  mla: KernelName;
  /** rmsNorm with the norm weight in this format. */
  rmsnorm?: KernelName;
  /** Batched matmul on q8-quantized activations (llama.cpp's block formats; see Int8Kernels). */
  int8?: Int8Kernels;
}

/**
 * The integer path of a block format: activations quantized by `quantize` to blocks of `block`
 * values (llama.cpp's q8_0 for q8_0/q4_0 weights, q8_K for the k-quants), with the code sums
 * of every `sums` values (0: none; q4_k's sub-block mins use per-32 sums, q6_k's offset on the
 * relaxed kernels per-16 ones), then integer dot products. quantize_q8 writes int16 codes
 * (SIMD128 kernels), quantize_q8r int8 codes (relaxed-SIMD kernels; layouts in kernels.as).
 * imatmul(codes, scales, sums, n, w, k, r0, r1, out, os).
 */
export interface Int8Kernels {
  matmul: KernelName;
  quantize: 'quantize_q8' | 'quantize_q8r';
  block: 32 | 256;
  sums: 0 | 16 | 32;
}

interface FormatEntry {
  /** Kernels for this weight (`relaxed`: the relaxed-SIMD build is loaded), or null when it must use the reference code. */
  pick(w: HostWeight, relaxed: boolean): FormatKernels | null;
}

/**
 * Subnormal codes above this fraction select the subnormal-safe decoders: the fast ones touch a
 * float32 denormal per subnormal code, which x86 handles in microcode (~100 cycles each), and
 * the safe ones cost a few more instructions per weight. Real checkpoints have very few
 * subnormal codes (a block's scale puts its largest value near the top of the range).
 */
const SUBNORMAL_FRACTION = 1 / 2048;

const f16: { fast: FormatKernels; safe: FormatKernels } = {
  fast: { matmul: 'matmul_f16', mla: 'mla_f16', rmsnorm: 'rmsnorm_f16' },
  safe: { matmul: 'matmul_f16s', mla: 'mla_f16s', rmsnorm: 'rmsnorm_f16s' },
};
const fp8: { fast: FormatKernels; safe: FormatKernels } = {
  fast: { matmul: 'matmul_fp8', mla: 'mla_fp8' },
  safe: { matmul: 'matmul_fp8s', mla: 'mla_fp8s' },
};

export const FORMAT_KERNELS: Partial<Record<WeightFormat, FormatEntry>> = {
  f32: { pick: () => ({ matmul: 'matmul_f32', mla: 'mla_f32', rmsnorm: 'rmsnorm_f32' }) },
  bf16: { pick: () => ({ matmul: 'matmul_bf16', mla: 'mla_bf16', rmsnorm: 'rmsnorm_bf16' }) },
  f16: {
    pick(w) {
      // Exponent 31 (inf, NaN) is not decoded by the kernels; subnormals: exponent 0, mantissa != 0.
      const d = w.data as Uint16Array;
      let sub = 0;
      for (let i = 0; i < d.length; i++) {
        const e = d[i] & 0x7c00;
        if (e === 0x7c00) return null;
        if (e === 0 && (d[i] & 0x3ff) !== 0) sub++;
      }
      return sub > d.length * SUBNORMAL_FRACTION ? f16.safe : f16.fast;
    },
  },
  fp8_e4m3_block: {
    pick(w) {
      const br = w.blockRows, bc = w.blockCols;
      if (!w.scales || !br || !bc || br < 1 || bc < 1) return null;
      if (w.scales.length < Math.ceil(w.rows / br) * Math.ceil(w.cols / bc)) return null;
      // e4m3fn NaN (0x7f, 0xff) is not decoded by the kernels; subnormals: exponent 0, mantissa != 0.
      const d = w.data as Uint8Array;
      let sub = 0;
      for (let i = 0; i < d.length; i++) {
        const m = d[i] & 0x7f;
        if (m === 0x7f) return null;
        if (m !== 0 && m < 8) sub++;
      }
      return sub > d.length * SUBNORMAL_FRACTION ? fp8.safe : fp8.fast;
    },
  },
  // llama.cpp's block formats: blocks are read in place and decoded in registers (kernels.as).
  // No rmsnorm kernel (norm weights are never block-quantized): the reference handles that case.
  // The k-quants' codes are unsigned bytes before their offsets, which relaxed SIMD's byte dot
  // product takes as they are (kernels.as); q8_0/q4_0 keep the SIMD128 kernels on either build.
  q8_0: { pick: () => ({ matmul: 'matmul_q8_0', mla: 'mla_q8_0', int8: { matmul: 'imatmul_q8_0', quantize: 'quantize_q8', block: 32, sums: 0 } }) },
  q4_0: { pick: () => ({ matmul: 'matmul_q4_0', mla: 'mla_q4_0', int8: { matmul: 'imatmul_q4_0', quantize: 'quantize_q8', block: 32, sums: 0 } }) },
  q4_k: {
    pick: (_w, relaxed) => ({
      matmul: 'matmul_q4_k', mla: 'mla_q4_k',
      int8: relaxed ? { matmul: 'imatmulr_q4_k', quantize: 'quantize_q8r', block: 256, sums: 32 } : { matmul: 'imatmul_q4_k', quantize: 'quantize_q8', block: 256, sums: 32 },
    }),
  },
  q6_k: {
    pick: (_w, relaxed) => ({
      matmul: 'matmul_q6_k', mla: 'mla_q6_k',
      int8: relaxed ? { matmul: 'imatmulr_q6_k', quantize: 'quantize_q8r', block: 256, sums: 16 } : { matmul: 'imatmul_q6_k', quantize: 'quantize_q8', block: 256, sums: 0 },
    }),
  },
};

/** The kernels for a weight (on the relaxed-SIMD build when `relaxed`), or null when it must use the reference code. */
export function kernelsFor(w: HostWeight, relaxed = false): FormatKernels | null {
  const entry = FORMAT_KERNELS[w.format];
  if (!entry) return null;
  if (isPackedFormat(w.format)) {
    const rb = packedRowBytes(w.format, w.cols);
    if (rb === null || !(w.data instanceof Uint8Array) || w.data.length !== w.rows * rb) return null;
  } else if (w.data.length !== w.rows * w.cols) return null;
  return entry.pick(w, relaxed);
}
