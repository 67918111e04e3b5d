/**
 * llama.cpp's block-quantized weight formats, byte for byte as GGUF stores them
 * (ggml-common.h / ggml-quants.c), with their reference quantizers and row decoders.
 *
 *   q8_0  32 values in 34 bytes:  f16 d | 32 x int8 q              value = q * d
 *   q4_0  32 values in 18 bytes:  f16 d | 16 bytes of nibbles      value = (nibble - 8) * d
 *         (byte j holds element j in its low nibble and element j + 16 in its high nibble)
 *   q4_k  256 values in 144 bytes: f16 d | f16 dmin | 12 bytes of 6-bit scales and mins for
 *         eight sub-blocks of 32 | 128 bytes of nibbles
 *         value = d * scale_s * nibble - dmin * min_s
 *   q6_k  256 values in 210 bytes: 128 bytes ql (low 4 bits) | 64 bytes qh (high 2 bits) |
 *         16 x int8 sub-block scales (sub-blocks of 16) | f16 d
 *         value = d * scale_s * (q - 32), q in 0..63
 *
 * A weight in one of these formats is a Uint8Array of whole blocks, rows one after another
 * (cols must be a multiple of the block size).
 *
 * The quantizers reproduce ggml's reference quantizers (quantize_row_q8_0_ref, q4_0_ref,
 * q4_K_ref with make_qkx2_quants, q6_K_ref with make_qx_quants) step by step in float32
 * arithmetic (every operation rounded through Math.fround, no fused multiply-add), so a file
 * we write holds the bytes llama.cpp's `llama-quantize` (without an importance matrix) would
 * write from the same float32 values. test/quant.test.ts checks hand-made blocks, and
 * test/llama-cpp.test.ts checks random rows against libggml itself when it is installed.
 */

export type PackedFormat = 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

export interface PackedSpec {
  /** Values per block. */
  block: number;
  /** Bytes per block. */
  bytes: number;
  /** ggml_type id in GGUF files. */
  ggmlType: number;
}

export const PACKED_FORMATS: Record<PackedFormat, PackedSpec> = {
  q8_0: { block: 32, bytes: 34, ggmlType: 8 },
  q4_0: { block: 32, bytes: 18, ggmlType: 2 },
  q4_k: { block: 256, bytes: 144, ggmlType: 12 },
  q6_k: { block: 256, bytes: 210, ggmlType: 14 },
};

export function isPackedFormat(f: string): f is PackedFormat {
  return Object.prototype.hasOwnProperty.call(PACKED_FORMATS, f);
}

/** Bytes one row of `cols` values takes, or null when cols is not a whole number of blocks. */
export function packedRowBytes(f: PackedFormat, cols: number): number | null {
  const s = PACKED_FORMATS[f];
  return cols > 0 && cols % s.block === 0 ? (cols / s.block) * s.bytes : null;
}

// ---- float32 / float16 ---------------------------------------------------------------------

const fround = Math.fround;
const cvtF = new Float32Array(1);
const cvtU = new Uint32Array(cvtF.buffer);

/** float32 -> IEEE half, round to nearest even (what F16C's vcvtps2ph and ggml's fallback do). */
export function f32ToF16(v: number): number {
  cvtF[0] = v;
  const x = cvtU[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let man = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (man ? 0x200 : 0);
  const e = exp - 112; // rebias 127 -> 15
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half (or zero): m * 2^-24 with m = (1.man) * 2^(e - 14 + 23) >> 23.
    const shift = 14 - e;
    if (shift > 24) return sign;
    man |= 0x800000;
    let h = man >>> shift;
    const rem = man & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && (h & 1))) h++;
    return sign | h;
  }
  let h = (e << 10) | (man >>> 13);
  const rem = man & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++; // a carry rolls into the exponent, up to inf
  return sign | h;
}

let halfTable: Float32Array | null = null;

/** All 65536 halves as float32. */
export function halfTable32(): Float32Array {
  if (halfTable) return halfTable;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    t[h] = sign * (exp === 0 ? man * 2 ** -24 : exp === 31 ? (man ? NaN : Infinity) : (1 + man / 1024) * 2 ** (exp - 15));
  }
  return (halfTable = t);
}

/** ggml's nearest_int: round half to even through the 1.5 * 2^23 trick, wrapping like the C code outside ±2^22. */
function nearestInt(v: number): number {
  cvtF[0] = v + 12582912;
  return (cvtU[0] & 0x007fffff) - 0x00400000;
}

/** C's roundf: halves away from zero. */
function roundf(v: number): number {
  return v < 0 ? -Math.floor(-v + 0.5) : Math.floor(v + 0.5);
}

const GROUP_MAX_EPS = fround(1e-15);
const F_0_1 = fround(0.1);

function putF16(dst: Uint8Array, off: number, h: number): void {
  dst[off] = h & 0xff;
  dst[off + 1] = h >>> 8;
}

function getF16(src: Uint8Array, off: number): number {
  return src[off] | (src[off + 1] << 8);
}

// ---- reference quantizers -------------------------------------------------------------------

/** quantize_row_q8_0_ref: n values of x from xOff into n / 32 blocks at dst[dstOff]. */
export function quantizeRowQ8_0(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / 32; b++) {
    const xb = xOff + b * 32, yb = dstOff + b * 34;
    let amax = 0;
    for (let j = 0; j < 32; j++) {
      const a = Math.abs(x[xb + j]);
      amax = amax > a ? amax : a;
    }
    const d = fround(amax / 127);
    const id = d ? fround(1 / d) : 0;
    putF16(dst, yb, f32ToF16(d));
    for (let j = 0; j < 32; j++) dst[yb + 2 + j] = roundf(fround(x[xb + j] * id)) & 0xff;
  }
}

/** quantize_row_q4_0_ref. */
export function quantizeRowQ4_0(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  for (let b = 0; b < n / 32; b++) {
    const xb = xOff + b * 32, yb = dstOff + b * 18;
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[xb + j];
      if (amax < Math.abs(v)) { amax = Math.abs(v); max = v; }
    }
    const d = fround(max / -8);
    const id = d ? fround(1 / d) : 0;
    putF16(dst, yb, f32ToF16(d));
    for (let j = 0; j < 16; j++) {
      const x0 = fround(x[xb + j] * id), x1 = fround(x[xb + 16 + j] * id);
      const q0 = Math.min(15, Math.trunc(fround(x0 + 8.5)));
      const q1 = Math.min(15, Math.trunc(fround(x1 + 8.5)));
      dst[yb + 2 + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
    }
  }
}

/**
 * make_qkx2_quants: scale and (negated) min for n values with levels 0..nmax, searching
 * nstep + 1 candidate scales around nmax / (max - min) for the least weighted error.
 * Writes the levels to L. Returns [scale, theMin].
 */
function makeQkx2Quants(
  n: number, nmax: number, x: Float32Array, xo: number, weights: Float32Array, L: Uint8Array, lo: number, Laux: Uint8Array,
  rmin: number, rdelta: number, nstep: number, useMad: boolean,
): [number, number] {
  let min = x[xo], max = x[xo];
  let sumW = weights[0];
  let sumX = fround(sumW * x[xo]);
  for (let i = 1; i < n; i++) {
    const xi = x[xo + i];
    if (xi < min) min = xi;
    if (xi > max) max = xi;
    const w = weights[i];
    sumW = fround(sumW + w);
    sumX = fround(sumX + fround(w * xi));
  }
  if (min > 0) min = 0;
  if (max === min) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return [0, -min];
  }
  // (max - min) is recomputed below on purpose: as in ggml, a better candidate's min moves
  // the search range for the candidates after it.
  let iscale = fround(nmax / fround(max - min));
  let scale = fround(1 / iscale);
  let bestError = 0;
  for (let i = 0; i < n; i++) {
    const l = nearestInt(fround(iscale * fround(x[xo + i] - min)));
    L[lo + i] = Math.max(0, Math.min(nmax, l));
    let diff = fround(fround(fround(scale * L[lo + i]) + min) - x[xo + i]);
    diff = useMad ? Math.abs(diff) : fround(diff * diff);
    bestError = fround(bestError + fround(weights[i] * diff));
  }
  if (nstep < 1) return [scale, -min];
  for (let is = 0; is <= nstep; is++) {
    iscale = fround(fround(fround(rmin + fround(rdelta * is)) + nmax) / fround(max - min));
    let sumL = 0, sumL2 = 0, sumXL = 0;
    for (let i = 0; i < n; i++) {
      const l = Math.max(0, Math.min(nmax, nearestInt(fround(iscale * fround(x[xo + i] - min)))));
      Laux[i] = l;
      const wl = fround(weights[i] * l);
      sumL = fround(sumL + wl);
      sumL2 = fround(sumL2 + fround(wl * l));
      sumXL = fround(sumXL + fround(wl * x[xo + i]));
    }
    const D = fround(fround(sumW * sumL2) - fround(sumL * sumL));
    if (D > 0) {
      let thisScale = fround(fround(fround(sumW * sumXL) - fround(sumX * sumL)) / D);
      let thisMin = fround(fround(fround(sumL2 * sumX) - fround(sumL * sumXL)) / D);
      if (thisMin > 0) {
        thisMin = 0;
        thisScale = fround(sumXL / sumL2);
      }
      let curError = 0;
      for (let i = 0; i < n; i++) {
        let diff = fround(fround(fround(thisScale * Laux[i]) + thisMin) - x[xo + i]);
        diff = useMad ? Math.abs(diff) : fround(diff * diff);
        curError = fround(curError + fround(weights[i] * diff));
      }
      if (curError < bestError) {
        for (let i = 0; i < n; i++) L[lo + i] = Laux[i];
        bestError = curError;
        scale = thisScale;
        min = thisMin;
      }
    }
  }
  return [scale, -min];
}

/** get_scale_min_k4: the 6-bit scale and min of sub-block j from the 12 packed bytes at q[o]. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j] & 63, q[o + j + 4] & 63];
  return [(q[o + j + 4] & 0xf) | ((q[o + j - 4] >> 6) << 4), (q[o + j + 4] >> 4) | ((q[o + j] >> 6) << 4)];
}

/** quantize_row_q4_K_ref. */
export function quantizeRowQ4_K(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const L = new Uint8Array(256);
  const Laux = new Uint8Array(32);
  const weights = new Float32Array(32);
  const mins = new Float32Array(8);
  const scales = new Float32Array(8);
  for (let b = 0; b < n / 256; b++) {
    const xb = xOff + b * 256, yb = dstOff + b * 144;
    let maxScale = 0, maxMin = 0;
    for (let j = 0; j < 8; j++) {
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) { const v = x[xb + 32 * j + l]; sumX2 = fround(sumX2 + fround(v * v)); }
      const avX = fround(Math.sqrt(fround(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = fround(avX + Math.abs(x[xb + 32 * j + l]));
      const [scale, theMin] = makeQkx2Quants(32, 15, x, xb + 32 * j, weights, L, 32 * j, Laux, -1, F_0_1, 20, false);
      scales[j] = scale;
      mins[j] = theMin;
      if (scales[j] > maxScale) maxScale = scales[j];
      if (mins[j] > maxMin) maxMin = mins[j];
    }
    const invScale = maxScale > 0 ? fround(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? fround(63 / maxMin) : 0;
    const sc = yb + 4;
    for (let j = 0; j < 8; j++) {
      const ls = Math.min(63, nearestInt(fround(invScale * scales[j])) & 0xff);
      const lm = Math.min(63, nearestInt(fround(invMin * mins[j])) & 0xff);
      if (j < 4) {
        dst[sc + j] = ls;
        dst[sc + j + 4] = lm;
      } else {
        dst[sc + j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        dst[sc + j - 4] |= (ls >> 4) << 6;
        dst[sc + j] |= (lm >> 4) << 6;
      }
    }
    const dh = f32ToF16(fround(maxScale / 63));
    const mh = f32ToF16(fround(maxMin / 63));
    putF16(dst, yb, dh);
    putF16(dst, yb + 2, mh);
    const half = halfTable32();
    for (let j = 0; j < 8; j++) {
      const [s, m] = scaleMinK4(j, dst, sc);
      const d = fround(half[dh] * s);
      if (!d) continue;
      const dm = fround(half[mh] * m);
      for (let ii = 0; ii < 32; ii++) {
        const l = nearestInt(fround(fround(x[xb + 32 * j + ii] + dm) / d));
        L[32 * j + ii] = Math.max(0, Math.min(15, l));
      }
    }
    const q = yb + 16;
    for (let j = 0; j < 256; j += 64) {
      for (let l = 0; l < 32; l++) dst[q + j / 2 + l] = L[j + l] | (L[j + l + 32] << 4);
    }
  }
}

/**
 * make_qx_quants with rmse_type 1 and no importance weights (weights x^2): symmetric levels
 * -nmax..nmax-1 stored as 0..2nmax-1 in L, trying 18 scales around nmax / max. Returns the scale.
 */
function makeQxQuants(n: number, nmax: number, x: Float32Array, xo: number, L: Int8Array, lo: number): number {
  let max = 0, amax = 0;
  for (let i = 0; i < n; i++) {
    const ax = Math.abs(x[xo + i]);
    if (ax > amax) { amax = ax; max = x[xo + i]; }
  }
  if (amax < GROUP_MAX_EPS) {
    for (let i = 0; i < n; i++) L[lo + i] = 0;
    return 0;
  }
  let iscale = fround(-nmax / max);
  let sumlx = 0, suml2 = 0;
  for (let i = 0; i < n; i++) {
    const xi = x[xo + i];
    const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * xi))));
    L[lo + i] = l + nmax;
    const w = fround(xi * xi);
    sumlx = fround(sumlx + fround(fround(w * xi) * l));
    suml2 = fround(suml2 + fround(fround(w * l) * l));
  }
  let scale = suml2 ? fround(sumlx / suml2) : 0;
  let best = fround(scale * sumlx);
  for (let is = -9; is <= 9; is++) {
    if (is === 0) continue;
    iscale = fround(-fround(nmax + fround(F_0_1 * is)) / max);
    sumlx = 0;
    suml2 = 0;
    for (let i = 0; i < n; i++) {
      const xi = x[xo + i];
      const l = Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * xi))));
      const w = fround(xi * xi);
      sumlx = fround(sumlx + fround(fround(w * xi) * l));
      suml2 = fround(suml2 + fround(fround(w * l) * l));
    }
    if (suml2 > 0 && fround(sumlx * sumlx) > fround(best * suml2)) {
      for (let i = 0; i < n; i++) L[lo + i] = nmax + Math.max(-nmax, Math.min(nmax - 1, nearestInt(fround(iscale * x[xo + i]))));
      scale = fround(sumlx / suml2);
      best = fround(scale * sumlx);
    }
  }
  return scale;
}

/** quantize_row_q6_K_ref. */
export function quantizeRowQ6_K(x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff: number): void {
  const L = new Int8Array(256);
  const scales = new Float32Array(16);
  const half = halfTable32();
  for (let b = 0; b < n / 256; b++) {
    const xb = xOff + b * 256, yb = dstOff + b * 210;
    let maxScale = 0, maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const scale = makeQxQuants(16, 32, x, xb + 16 * ib, L, 16 * ib);
      scales[ib] = scale;
      const a = Math.abs(scales[ib]);
      if (a > maxAbsScale) { maxAbsScale = a; maxScale = scales[ib]; }
    }
    if (maxAbsScale < GROUP_MAX_EPS) {
      dst.fill(0, yb, yb + 210);
      continue;
    }
    const iscale = fround(-128 / maxScale);
    const dh = f32ToF16(fround(1 / iscale));
    putF16(dst, yb + 208, dh);
    const sc = yb + 192;
    for (let ib = 0; ib < 16; ib++) dst[sc + ib] = Math.min(127, nearestInt(fround(iscale * scales[ib]))) & 0xff;
    for (let j = 0; j < 16; j++) {
      const d = fround(half[dh] * ((dst[sc + j] << 24) >> 24));
      if (!d) continue;
      for (let ii = 0; ii < 16; ii++) {
        const l = Math.max(-32, Math.min(31, nearestInt(fround(x[xb + 16 * j + ii] / d))));
        L[16 * j + ii] = l + 32;
      }
    }
    for (let j = 0, ql = yb, qh = yb + 128; j < 256; j += 128, ql += 64, qh += 32) {
      for (let l = 0; l < 32; l++) {
        const a = L[j + l], bb = L[j + l + 32], c = L[j + l + 64], e = L[j + l + 96];
        dst[ql + l] = (a & 0xf) | ((c & 0xf) << 4);
        dst[ql + l + 32] = (bb & 0xf) | ((e & 0xf) << 4);
        dst[qh + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
    }
  }
}

/** Quantizes `n` float32 values (n a multiple of the block size) into `dst` at `dstOff`. */
export function quantizeRow(f: PackedFormat, x: Float32Array, xOff: number, n: number, dst: Uint8Array, dstOff = 0): void {
  if (n % PACKED_FORMATS[f].block !== 0) throw new Error(`${f}: ${n} values is not a whole number of blocks`);
  switch (f) {
    case 'q8_0': return quantizeRowQ8_0(x, xOff, n, dst, dstOff);
    case 'q4_0': return quantizeRowQ4_0(x, xOff, n, dst, dstOff);
    case 'q4_k': return quantizeRowQ4_K(x, xOff, n, dst, dstOff);
    case 'q6_k': return quantizeRowQ6_K(x, xOff, n, dst, dstOff);
  }
}

// ---- decoders (dequantize_row_*), float32 results as ggml computes them --------------------

/** Decodes `n` values (whole blocks) starting at byte `off` of `src` into out[outOff ..]. */
export function dequantizeRow(f: PackedFormat, src: Uint8Array, off: number, n: number, out: Float32Array, outOff = 0): void {
  const half = halfTable32();
  switch (f) {
    case 'q8_0':
      for (let b = 0, p = off, o = outOff; b < n / 32; b++, p += 34, o += 32) {
        const d = half[getF16(src, p)];
        for (let j = 0; j < 32; j++) out[o + j] = ((src[p + 2 + j] << 24) >> 24) * d;
      }
      return;
    case 'q4_0':
      for (let b = 0, p = off, o = outOff; b < n / 32; b++, p += 18, o += 32) {
        const d = half[getF16(src, p)];
        for (let j = 0; j < 16; j++) {
          const q = src[p + 2 + j];
          out[o + j] = ((q & 0xf) - 8) * d;
          out[o + j + 16] = ((q >> 4) - 8) * d;
        }
      }
      return;
    case 'q4_k':
      for (let b = 0, p = off, o = outOff; b < n / 256; b++, p += 144) {
        const d = half[getF16(src, p)], min = half[getF16(src, p + 2)];
        for (let j = 0, q = p + 16, is = 0; j < 256; j += 64, q += 32, is += 2) {
          const [s1, m1] = scaleMinK4(is, src, p + 4);
          const [s2, m2] = scaleMinK4(is + 1, src, p + 4);
          const d1 = fround(d * s1), mm1 = fround(min * m1), d2 = fround(d * s2), mm2 = fround(min * m2);
          for (let l = 0; l < 32; l++) out[o++] = fround(d1 * (src[q + l] & 0xf)) - mm1;
          for (let l = 0; l < 32; l++) out[o++] = fround(d2 * (src[q + l] >> 4)) - mm2;
        }
      }
      return;
    case 'q6_k':
      for (let b = 0, p = off, o = outOff; b < n / 256; b++, p += 210) {
        const d = half[getF16(src, p + 208)];
        for (let nn = 0, ql = p, qh = p + 128, sc = p + 192; nn < 256; nn += 128, ql += 64, qh += 32, sc += 8, o += 128) {
          for (let l = 0; l < 32; l++) {
            const is = l >> 4;
            const h = src[qh + l];
            const q1 = ((src[ql + l] & 0xf) | ((h & 3) << 4)) - 32;
            const q2 = ((src[ql + l + 32] & 0xf) | (((h >> 2) & 3) << 4)) - 32;
            const q3 = ((src[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
            const q4 = ((src[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
            out[o + l] = fround(d * ((src[sc + is] << 24) >> 24)) * q1;
            out[o + l + 32] = fround(d * ((src[sc + is + 2] << 24) >> 24)) * q2;
            out[o + l + 64] = fround(d * ((src[sc + is + 4] << 24) >> 24)) * q3;
            out[o + l + 96] = fround(d * ((src[sc + is + 6] << 24) >> 24)) * q4;
          }
        }
      }
      return;
  }
}
