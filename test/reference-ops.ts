/**
 * A naive, obviously-correct reference of every backend op, written without looking at
 * (or importing) the CPU backend or its dequantization code.
 *
 * - Weights are dequantized whole to float64 with this file's own bit decoders.
 * - Everything is computed in float64 with plain loops.
 * - MLA attention is computed in the expanded (non-absorbed) form: per head,
 *   k = [W_UK·latent | k_rope], v = W_UV·latent, out = softmax(q·k · scale) · v. Backends
 *   compute the absorbed form, so agreement also checks that absorption is right.
 * - Routing follows the RouterConfig comments in src/backends/backend.ts, selecting with
 *   a full sort (score descending, ties to the lower index).
 *
 * Only the types are imported from the backend interface.
 */
import type { AttentionBatch, HostWeight, MlaShape, RouterConfig } from '../src/backends/backend.js';

/** A host matrix [rows, cols], row-major, float64. */
export interface Mat {
  rows: number;
  cols: number;
  data: Float64Array;
}

export function mat(rows: number, cols: number, data?: ArrayLike<number>): Mat {
  const d = new Float64Array(rows * cols);
  if (data) {
    if (data.length !== rows * cols) throw new Error(`mat: ${data.length} values for [${rows}, ${cols}]`);
    for (let i = 0; i < d.length; i++) d[i] = data[i];
  }
  return { rows, cols, data: d };
}

function at(m: Mat, r: number, c: number): number {
  return m.data[r * m.cols + c];
}

// ---- scalar decoders ---------------------------------------------------------------------

const dv = new DataView(new ArrayBuffer(4));

/** bfloat16: the upper 16 bits of an IEEE float32. */
export function decodeBf16(code: number): number {
  dv.setUint32(0, (code & 0xffff) * 65536);
  return dv.getFloat32(0);
}

/** IEEE 754 binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. */
export function decodeF16(code: number): number {
  const sign = (code >>> 15) & 1 ? -1 : 1;
  const exp = (code >>> 10) & 0x1f;
  const man = code & 0x3ff;
  if (exp === 0x1f) return man === 0 ? sign * Infinity : NaN;
  if (exp === 0) return sign * man * Math.pow(2, -24); // subnormal: man/1024 * 2^-14
  return sign * (1024 + man) * Math.pow(2, exp - 25); // (1 + man/1024) * 2^(exp-15)
}

/**
 * OCP float8 e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
 * exponent 1111 with mantissa 111 is NaN (0x7f, 0xff); largest finite is 448.
 */
export function decodeE4m3(byte: number): number {
  const sign = (byte >>> 7) & 1 ? -1 : 1;
  const exp = (byte >>> 3) & 0xf;
  const man = byte & 0x7;
  if (exp === 0xf && man === 0x7) return NaN;
  if (exp === 0) return sign * man * Math.pow(2, -9); // subnormal: man/8 * 2^-6
  return sign * (8 + man) * Math.pow(2, exp - 10); // (1 + man/8) * 2^(exp-7)
}

// ---- llama.cpp block formats, decoded element by element from the layout description ----
//
// Written from ggml-common.h's block definitions, one element at a time (where does element c
// of a row live, which scale applies), not as ggml's row loops: an independent second reading.

/** Block length in values and bytes of each GGUF block format. */
const BLOCKS: Record<string, { values: number; bytes: number }> = {
  q8_0: { values: 32, bytes: 34 }, q4_0: { values: 32, bytes: 18 }, q4_k: { values: 256, bytes: 144 }, q6_k: { values: 256, bytes: 210 },
};

function int8(b: number): number {
  return b >= 128 ? b - 256 : b;
}

/** Element (r, c) of a block-format weight. */
export function decodeBlockElement(w: HostWeight, r: number, c: number): number {
  const spec = BLOCKS[w.format];
  const bytes = w.data as Uint8Array;
  const blk = Math.floor(c / spec.values);
  const j = c % spec.values; // position inside the block
  const p = (r * (w.cols / spec.values) + blk) * spec.bytes; // first byte of the block
  const half = (o: number) => decodeF16(bytes[o] | (bytes[o + 1] << 8));
  switch (w.format) {
    case 'q8_0': // d, then one signed byte per value
      return int8(bytes[p + 2 + j]) * half(p);
    case 'q4_0': { // d, then 16 bytes: value j in the low nibble of byte j, value j+16 in the high nibble of byte j
      const byte = bytes[p + 2 + (j % 16)];
      const nib = j < 16 ? byte & 15 : byte >> 4;
      return (nib - 8) * half(p);
    }
    case 'q4_k': {
      // d, dmin, 12 bytes of scales, 128 bytes of nibbles. Sub-block s = j / 32 has a 6-bit scale and min:
      // bytes 0-3 low 6 bits: scales 0-3 (top 2 bits: scales 4-7 bits 4-5); bytes 4-7 the same for mins;
      // bytes 8-11: low nibble = scale 4-7 bits 0-3, high nibble = min 4-7 bits 0-3.
      const s = Math.floor(j / 32);
      const sb = p + 4;
      let scale: number, min: number;
      if (s < 4) {
        scale = bytes[sb + s] % 64;
        min = bytes[sb + 4 + s] % 64;
      } else {
        scale = (bytes[sb + 8 + (s - 4)] % 16) + Math.floor(bytes[sb + (s - 4)] / 64) * 16;
        min = Math.floor(bytes[sb + 8 + (s - 4)] / 16) + Math.floor(bytes[sb + 4 + (s - 4)] / 64) * 16;
      }
      // Values come in groups of 64 sharing 32 bytes: the first 32 in the low nibbles, the next 32 in the high ones.
      const group = Math.floor(j / 64), k = j % 64;
      const byte = bytes[p + 16 + 32 * group + (k % 32)];
      const q = k < 32 ? byte % 16 : Math.floor(byte / 16);
      return half(p) * scale * q - half(p + 2) * min;
    }
    case 'q6_k': {
      // ql[128], qh[64], int8 scales[16], d. Halves of 128 values; in a half, quarter qd = k / 32 and l = k % 32:
      // low 4 bits from ql[64h + 32(qd odd) + l] (low nibble for qd 0-1, high for 2-3),
      // high 2 bits from qh[32h + l] bits 2qd..2qd+1; scale index 8h + 2qd + l / 16.
      const h = Math.floor(j / 128), k = j % 128, qd = Math.floor(k / 32), l = k % 32;
      const qlByte = bytes[p + 64 * h + (qd % 2) * 32 + l];
      const low = qd < 2 ? qlByte % 16 : Math.floor(qlByte / 16);
      const high = Math.floor(bytes[p + 128 + 32 * h + l] / 4 ** qd) % 4;
      const scale = int8(bytes[p + 192 + 8 * h + 2 * qd + Math.floor(l / 16)]);
      return half(p + 208) * scale * (low + 16 * high - 32);
    }
  }
  throw new Error(`${w.name}: ${w.format} is not a block format`);
}

/** The whole weight as float64, [rows, cols]. fp8 multiplies each element by its block's scale. */
export function dequantize(w: HostWeight): Mat {
  const out = mat(w.rows, w.cols);
  const n = w.rows * w.cols;
  if (BLOCKS[w.format]) {
    const spec = BLOCKS[w.format];
    if (w.cols % spec.values !== 0) throw new Error(`${w.name}: ${w.cols} columns is not a whole number of ${w.format} blocks`);
    if (w.data.length !== (n / spec.values) * spec.bytes) throw new Error(`${w.name}: ${w.data.length} bytes for [${w.rows}, ${w.cols}] ${w.format}`);
    for (let r = 0; r < w.rows; r++) for (let c = 0; c < w.cols; c++) out.data[r * w.cols + c] = decodeBlockElement(w, r, c);
    return out;
  }
  if (w.data.length !== n) throw new Error(`${w.name}: ${w.data.length} values for [${w.rows}, ${w.cols}]`);
  for (let r = 0; r < w.rows; r++) {
    for (let c = 0; c < w.cols; c++) {
      const i = r * w.cols + c;
      const v = w.data[i];
      let x: number;
      switch (w.format) {
        case 'f32': x = v; break;
        case 'bf16': x = decodeBf16(v); break;
        case 'f16': x = decodeF16(v); break;
        case 'fp8_e4m3_block': {
          const br = w.blockRows!, bc = w.blockCols!;
          const scaleCols = Math.ceil(w.cols / bc);
          const s = w.scales![Math.floor(r / br) * scaleCols + Math.floor(c / bc)];
          x = decodeE4m3(v) * s;
          break;
        }
        default: throw new Error(`${w.name}: unknown format ${w.format}`);
      }
      out.data[i] = x;
    }
  }
  return out;
}

// ---- elementwise and data movement -------------------------------------------------------

export function refEmbedding(table: HostWeight, ids: ArrayLike<number>): Mat {
  const t = dequantize(table);
  const out = mat(ids.length, t.cols);
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0) continue;
    for (let c = 0; c < t.cols; c++) out.data[i * t.cols + c] = at(t, ids[i], c);
  }
  return out;
}

/** x [n, k] · w[m, k]^T = [n, m]. */
export function refMatmul(x: Mat, w: HostWeight | Mat): Mat {
  const wd = 'format' in w ? dequantize(w) : w;
  if (wd.cols !== x.cols) throw new Error('refMatmul: inner dimensions differ');
  const out = mat(x.rows, wd.rows);
  for (let i = 0; i < x.rows; i++) {
    for (let j = 0; j < wd.rows; j++) {
      let s = 0;
      for (let c = 0; c < x.cols; c++) s += at(x, i, c) * at(wd, j, c);
      out.data[i * wd.rows + j] = s;
    }
  }
  return out;
}

export function refRmsNorm(x: Mat, w: HostWeight, eps: number): Mat {
  const g = dequantize(w).data;
  const out = mat(x.rows, x.cols);
  for (let i = 0; i < x.rows; i++) {
    let ss = 0;
    for (let c = 0; c < x.cols; c++) ss += at(x, i, c) ** 2;
    const rms = Math.sqrt(ss / x.cols + eps);
    for (let c = 0; c < x.cols; c++) out.data[i * x.cols + c] = (at(x, i, c) / rms) * g[c];
  }
  return out;
}

export function refAdd(a: Mat, b: Mat): Mat {
  const out = mat(a.rows, a.cols);
  for (let i = 0; i < out.data.length; i++) out.data[i] = a.data[i] + b.data[i];
  return out;
}

export function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

export function refSwiglu(gate: Mat, up: Mat): Mat {
  const out = mat(gate.rows, gate.cols);
  for (let i = 0; i < out.data.length; i++) out.data[i] = silu(gate.data[i]) * up.data[i];
  return out;
}

export function refSliceCols(x: Mat, start: number, count: number): Mat {
  const out = mat(x.rows, count);
  for (let i = 0; i < x.rows; i++) for (let c = 0; c < count; c++) out.data[i * count + c] = at(x, i, start + c);
  return out;
}

export function refConcatCols(a: Mat, b: Mat): Mat {
  const out = mat(a.rows, a.cols + b.cols);
  for (let i = 0; i < a.rows; i++) {
    for (let c = 0; c < a.cols; c++) out.data[i * out.cols + c] = at(a, i, c);
    for (let c = 0; c < b.cols; c++) out.data[i * out.cols + a.cols + c] = at(b, i, c);
  }
  return out;
}

export function refGatherRows(x: Mat, rows: ArrayLike<number>): Mat {
  const out = mat(rows.length, x.cols);
  for (let i = 0; i < rows.length; i++) for (let c = 0; c < x.cols; c++) out.data[i * x.cols + c] = at(x, rows[i], c);
  return out;
}

/**
 * RoPE on adjacent pairs: in each head, the pair (2i, 2i+1) counted from `offset` is
 * rotated by positions[row] * invFreq[i]; everything else is copied.
 */
export function refRope(x: Mat, positions: ArrayLike<number>, invFreq: ArrayLike<number>, heads: number, headStride: number, offset: number): Mat {
  const out = mat(x.rows, x.cols, x.data);
  for (let r = 0; r < x.rows; r++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < invFreq.length; i++) {
        const angle = positions[r] * invFreq[i];
        const c0 = h * headStride + offset + 2 * i;
        const a = at(x, r, c0), b = at(x, r, c0 + 1);
        out.data[r * x.cols + c0] = a * Math.cos(angle) - b * Math.sin(angle);
        out.data[r * x.cols + c0 + 1] = a * Math.sin(angle) + b * Math.cos(angle);
      }
    }
  }
  return out;
}

export function refArgmaxRows(x: Mat): Int32Array {
  const out = new Int32Array(x.rows);
  for (let i = 0; i < x.rows; i++) {
    let best = 0;
    for (let c = 1; c < x.cols; c++) if (at(x, i, c) > at(x, i, best)) best = c;
    out[i] = best;
  }
  return out;
}

// ---- paged latent cache ------------------------------------------------------------------

/** A host model of the paged pool: slots[layer][block][offset] is a row of `width` floats. */
export class RefKVPool {
  readonly slots: Float64Array[][][];
  constructor(readonly layers: number, readonly numBlocks: number, readonly blockSize: number, readonly width: number) {
    this.slots = [];
    for (let l = 0; l < layers; l++) {
      const blocks: Float64Array[][] = [];
      for (let b = 0; b < numBlocks; b++) {
        const offs: Float64Array[] = [];
        for (let o = 0; o < blockSize; o++) offs.push(new Float64Array(width));
        blocks.push(offs);
      }
      this.slots.push(blocks);
    }
  }

  /** The cached row of position `pos` of a sequence with the given block table. */
  row(layer: number, table: ArrayLike<number>, pos: number): Float64Array {
    const block = table[Math.floor(pos / this.blockSize)];
    if (block === undefined) throw new Error(`no block for position ${pos}`);
    return this.slots[layer][block][pos % this.blockSize];
  }
}

export function refWriteKV(pool: RefKVPool, layer: number, kv: Mat, batch: AttentionBatch): void {
  for (let t = 0; t < kv.rows; t++) {
    const dst = pool.row(layer, batch.blockTables[batch.seqIndex[t]], batch.positions[t]);
    for (let c = 0; c < kv.cols; c++) dst[c] = at(kv, t, c);
  }
}

export function refCopyBlocks(pool: RefKVPool, src: ArrayLike<number>, dst: ArrayLike<number>): void {
  for (let l = 0; l < pool.layers; l++) {
    for (let i = 0; i < src.length; i++) {
      for (let o = 0; o < pool.blockSize; o++) pool.slots[l][dst[i]][o] = Float64Array.from(pool.slots[l][src[i]][o]);
    }
  }
}

/**
 * MLA in the expanded form. kv_b_proj rows of head h: [h*(nope+v), h*(nope+v)+nope) are
 * W_UK (latent -> k_nope), the next vDim rows are W_UV (latent -> v). Cached row =
 * [latent (kvRank) | k_rope (ropeDim), shared by all heads]. Token t attends to
 * positions 0..positions[t] of its sequence.
 */
export function refMlaAttention(q: Mat, kvB: HostWeight, pool: RefKVPool, layer: number, batch: AttentionBatch, s: MlaShape): Mat {
  const W = dequantize(kvB);
  const H = s.heads, N = s.nopeDim, P = s.ropeDim, V = s.vDim, R = s.kvRank;
  const out = mat(q.rows, H * V);
  for (let t = 0; t < q.rows; t++) {
    const table = batch.blockTables[batch.seqIndex[t]];
    const len = batch.positions[t] + 1;
    for (let h = 0; h < H; h++) {
      // Expand keys and values of every visible position for this head.
      const keys: number[][] = [];
      const vals: number[][] = [];
      for (let p = 0; p < len; p++) {
        const row = pool.row(layer, table, p);
        const k: number[] = [];
        for (let d = 0; d < N; d++) {
          let sum = 0;
          for (let c = 0; c < R; c++) sum += at(W, h * (N + V) + d, c) * row[c];
          k.push(sum);
        }
        for (let d = 0; d < P; d++) k.push(row[R + d]);
        const v: number[] = [];
        for (let d = 0; d < V; d++) {
          let sum = 0;
          for (let c = 0; c < R; c++) sum += at(W, h * (N + V) + N + d, c) * row[c];
          v.push(sum);
        }
        keys.push(k);
        vals.push(v);
      }
      const qh: number[] = [];
      for (let d = 0; d < N + P; d++) qh.push(at(q, t, h * (N + P) + d));
      const scores = keys.map((k) => k.reduce((acc, kv, d) => acc + kv * qh[d], 0) * s.softmaxScale);
      const max = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - max));
      const z = e.reduce((a, b) => a + b, 0);
      for (let d = 0; d < V; d++) {
        let sum = 0;
        for (let p = 0; p < len; p++) sum += (e[p] / z) * vals[p][d];
        out.data[t * H * V + h * V + d] = sum;
      }
    }
  }
  return out;
}

// ---- routing and experts -----------------------------------------------------------------

export interface RefRouting {
  topK: number;
  /** [tokens * topK]: best first (by biased, group-masked score; ties to the lower id). */
  ids: Int32Array;
  weights: Float64Array;
  /**
   * The smallest gap, over all tokens, between a chosen and a rejected candidate at each
   * decision (kept vs dropped group, chosen vs next expert). Infinity when nothing was
   * rejected. Tests use it to avoid random data whose choice hinges on rounding.
   */
  margin: number;
}

/** Indices sorted by value descending, ties to the lower index (a full, stable sort). */
function rank(values: number[]): number[] {
  return values.map((_, i) => i).sort((a, b) => (values[b] - values[a]) || a - b);
}

export function refRoute(logits: Mat, bias: HostWeight | null, cfg: RouterConfig): RefRouting {
  const E = logits.cols, K = cfg.topK;
  const b = bias ? dequantize(bias).data : null;
  const ids = new Int32Array(logits.rows * K);
  const weights = new Float64Array(logits.rows * K);
  let margin = Infinity;
  const gap = (x: number, y: number) => {
    if (x === -Infinity || y === -Infinity) return;
    margin = Math.min(margin, Math.abs(x - y));
  };
  for (let t = 0; t < logits.rows; t++) {
    const lg: number[] = [];
    for (let e = 0; e < E; e++) lg.push(at(logits, t, e));
    let scores: number[];
    if (cfg.scoring === 'softmax') {
      const max = Math.max(...lg);
      const ex = lg.map((v) => Math.exp(v - max));
      const z = ex.reduce((a, c) => a + c, 0);
      scores = ex.map((v) => v / z);
    } else {
      scores = lg.map((v) => 1 / (1 + Math.exp(-v)));
    }
    // Selection scores: bias added; it never enters the weights.
    const choice = scores.map((v, e) => (b ? v + b[e] : v));
    if (cfg.nGroup > 1) {
      const per = E / cfg.nGroup;
      const groupScores: number[] = [];
      for (let g = 0; g < cfg.nGroup; g++) {
        const members = choice.slice(g * per, (g + 1) * per).sort((x, y) => y - x);
        groupScores.push(cfg.groupScore === 'max' ? members[0] : members[0] + (members.length > 1 ? members[1] : 0));
      }
      const order = rank(groupScores);
      if (cfg.topkGroup < cfg.nGroup) gap(groupScores[order[cfg.topkGroup - 1]], groupScores[order[cfg.topkGroup]]);
      for (const g of order.slice(cfg.topkGroup)) for (let e = g * per; e < (g + 1) * per; e++) choice[e] = -Infinity;
    }
    const order = rank(choice);
    if (K < E) gap(choice[order[K - 1]], choice[order[K]]);
    const chosen = order.slice(0, K);
    const sum = chosen.reduce((a, e) => a + scores[e], 0);
    for (let k = 0; k < K; k++) {
      ids[t * K + k] = chosen[k];
      weights[t * K + k] = (cfg.normalize ? scores[chosen[k]] / sum : scores[chosen[k]]) * cfg.scale;
    }
  }
  return { topK: K, ids, weights, margin };
}

export interface RefExpert {
  gate: HostWeight;
  up: HostWeight;
  down: HostWeight;
}

/** Per token: sum over its chosen experts of weight * down(silu(gate x) * up x). */
export function refMoe(x: Mat, routing: { topK: number; ids: ArrayLike<number>; weights: ArrayLike<number> }, experts: RefExpert[]): Mat {
  const out = mat(x.rows, x.cols);
  const deq = new Map<RefExpert, { gate: Mat; up: Mat; down: Mat }>();
  for (let t = 0; t < x.rows; t++) {
    const xt = refSliceRows(x, t);
    for (let k = 0; k < routing.topK; k++) {
      const ex = experts[routing.ids[t * routing.topK + k]];
      let d = deq.get(ex);
      if (!d) {
        d = { gate: dequantize(ex.gate), up: dequantize(ex.up), down: dequantize(ex.down) };
        deq.set(ex, d);
      }
      const y = refMatmul(refSwiglu(refMatmul(xt, d.gate), refMatmul(xt, d.up)), d.down);
      const wgt = routing.weights[t * routing.topK + k];
      for (let c = 0; c < x.cols; c++) out.data[t * x.cols + c] += wgt * y.data[c];
    }
  }
  return out;
}

function refSliceRows(x: Mat, r: number): Mat {
  return mat(1, x.cols, x.data.subarray(r * x.cols, (r + 1) * x.cols));
}
