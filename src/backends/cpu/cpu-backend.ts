/**
 * The CPU backend: plain TypeScript over typed arrays, single-threaded.
 * It is the reference every other backend is checked against by the conformance suite,
 * so clarity wins over speed here — but it is not careless: weights stay packed,
 * rows are dequantized into reused scratch, inner loops are closure-free.
 */
import type {
  AttentionBatch, Backend, DeviceInfo, DeviceWeight, ExpertWeights, HostWeight, KVPool,
  MlaShape, RouterConfig, Routing, Tensor, WeightFormat,
} from '../backend.js';
import { dequantRow, weightBytes } from './dequant.js';

export class CpuTensor implements Tensor {
  constructor(readonly rows: number, readonly cols: number, readonly data: Float32Array) {}
}

class CpuWeight implements DeviceWeight {
  readonly name: string;
  readonly format: HostWeight['format'];
  readonly rows: number;
  readonly cols: number;
  readonly bytes: number;
  constructor(readonly host: HostWeight) {
    this.name = host.name;
    this.format = host.format;
    this.rows = host.rows;
    this.cols = host.cols;
    this.bytes = weightBytes(host);
  }
}

class CpuKVPool implements KVPool {
  readonly bytes: number;
  /** One array per layer: numBlocks * blockSize slots of `width` floats. */
  readonly data: Float32Array[];
  constructor(readonly layers: number, readonly numBlocks: number, readonly blockSize: number, readonly width: number) {
    this.data = [];
    for (let l = 0; l < layers; l++) this.data.push(new Float32Array(numBlocks * blockSize * width));
    this.bytes = layers * numBlocks * blockSize * width * 4;
  }
}

class CpuRouting implements Routing {
  constructor(readonly tokens: number, readonly topK: number, readonly ids: Int32Array, readonly weights: Float32Array) {}
}

/** Rows of a weight dequantized per call in tiles of this many rows. */
const TILE_ROWS = 16;

function dot(a: Float32Array, aOff: number, b: Float32Array, bOff: number, n: number): number {
  // Four accumulators: shorter dependency chains, and the same summation order every call.
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    s0 += a[aOff + i] * b[bOff + i];
    s1 += a[aOff + i + 1] * b[bOff + i + 1];
    s2 += a[aOff + i + 2] * b[bOff + i + 2];
    s3 += a[aOff + i + 3] * b[bOff + i + 3];
  }
  for (; i < n; i++) s0 += a[aOff + i] * b[bOff + i];
  return s0 + s1 + s2 + s3;
}

/**
 * out[i, r] = x[i] · rows[r - r0] for rows r0..r1 (row r at rows[base + (r - r0) * k]).
 * Blocks of 4 tokens x 4 rows keep 16 sums in registers, so each value loaded serves four
 * multiply-adds: this is what lets a batch of tokens run faster than the same tokens one by one.
 */
function matmulTile(x: Float32Array, n: number, k: number, rows: Float32Array, base: number, r0: number, r1: number, out: Float32Array, m: number): void {
  let r = r0;
  for (; r + 3 < r1; r += 4) {
    const w0 = base + (r - r0) * k, w1 = w0 + k, w2 = w1 + k, w3 = w2 + k;
    let i = 0;
    for (; i + 3 < n; i += 4) {
      const x0 = i * k, x1 = x0 + k, x2 = x1 + k, x3 = x2 + k;
      let a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
      let a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0;
      for (let c = 0; c < k; c++) {
        const v0 = rows[w0 + c], v1 = rows[w1 + c], v2 = rows[w2 + c], v3 = rows[w3 + c];
        const u0 = x[x0 + c], u1 = x[x1 + c], u2 = x[x2 + c], u3 = x[x3 + c];
        a00 += u0 * v0; a01 += u0 * v1; a02 += u0 * v2; a03 += u0 * v3;
        a10 += u1 * v0; a11 += u1 * v1; a12 += u1 * v2; a13 += u1 * v3;
        a20 += u2 * v0; a21 += u2 * v1; a22 += u2 * v2; a23 += u2 * v3;
        a30 += u3 * v0; a31 += u3 * v1; a32 += u3 * v2; a33 += u3 * v3;
      }
      let o = i * m + r;
      out[o] = a00; out[o + 1] = a01; out[o + 2] = a02; out[o + 3] = a03; o += m;
      out[o] = a10; out[o + 1] = a11; out[o + 2] = a12; out[o + 3] = a13; o += m;
      out[o] = a20; out[o + 1] = a21; out[o + 2] = a22; out[o + 3] = a23; o += m;
      out[o] = a30; out[o + 1] = a31; out[o + 2] = a32; out[o + 3] = a33;
    }
    for (; i + 1 < n; i += 2) {
      const x0 = i * k, x1 = x0 + k;
      let a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0;
      for (let c = 0; c < k; c++) {
        const v0 = rows[w0 + c], v1 = rows[w1 + c], v2 = rows[w2 + c], v3 = rows[w3 + c];
        const u0 = x[x0 + c], u1 = x[x1 + c];
        a00 += u0 * v0; a01 += u0 * v1; a02 += u0 * v2; a03 += u0 * v3;
        a10 += u1 * v0; a11 += u1 * v1; a12 += u1 * v2; a13 += u1 * v3;
      }
      let o = i * m + r;
      out[o] = a00; out[o + 1] = a01; out[o + 2] = a02; out[o + 3] = a03; o += m;
      out[o] = a10; out[o + 1] = a11; out[o + 2] = a12; out[o + 3] = a13;
    }
    for (; i < n; i++) {
      const x0 = i * k;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let c = 0; c < k; c++) {
        const u = x[x0 + c];
        a0 += u * rows[w0 + c]; a1 += u * rows[w1 + c]; a2 += u * rows[w2 + c]; a3 += u * rows[w3 + c];
      }
      const o = i * m + r;
      out[o] = a0; out[o + 1] = a1; out[o + 2] = a2; out[o + 3] = a3;
    }
  }
  for (; r < r1; r++) {
    const w0 = base + (r - r0) * k;
    for (let i = 0; i < n; i++) out[i * m + r] = dot(x, i * k, rows, w0, k);
  }
}

function t(x: Tensor): CpuTensor {
  return x as CpuTensor;
}
function w(x: DeviceWeight): CpuWeight {
  return x as CpuWeight;
}

export class CpuBackend implements Backend {
  readonly info: DeviceInfo = { name: 'cpu (TypeScript reference)', kind: 'cpu' };
  /** Scratch for dequantized weight rows, grown on demand. */
  private scratch = new Float32Array(0);

  private scratchFor(n: number): Float32Array {
    if (this.scratch.length < n) this.scratch = new Float32Array(n);
    return this.scratch;
  }

  /** Every format: each is decoded a row at a time by dequantRow. */
  supportsFormat(_format: WeightFormat): boolean {
    return true;
  }

  uploadWeight(hw: HostWeight): DeviceWeight {
    return new CpuWeight(hw);
  }

  fromHost(data: Float32Array, rows: number, cols: number): Tensor {
    if (data.length !== rows * cols) throw new Error(`fromHost: ${data.length} values for [${rows}, ${cols}]`);
    return new CpuTensor(rows, cols, Float32Array.from(data));
  }

  async read(x: Tensor): Promise<Float32Array> {
    return Float32Array.from(t(x).data);
  }

  createKVPool(layers: number, numBlocks: number, blockSize: number, width: number): KVPool {
    return new CpuKVPool(layers, numBlocks, blockSize, width);
  }

  copyBlocks(pool: KVPool, src: Int32Array, dst: Int32Array): void {
    const p = pool as CpuKVPool;
    const span = p.blockSize * p.width;
    for (const layer of p.data) {
      for (let i = 0; i < src.length; i++) layer.copyWithin(dst[i] * span, src[i] * span, (src[i] + 1) * span);
    }
  }

  embedding(table: DeviceWeight, ids: Int32Array): Tensor {
    const tw = w(table);
    const d = tw.cols;
    const out = new Float32Array(ids.length * d);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0) continue; // zero row
      if (id >= tw.rows) throw new RangeError(`token id ${id} outside the vocabulary (${tw.rows})`);
      dequantRow(tw.host, id, out, i * d);
    }
    return new CpuTensor(ids.length, d, out);
  }

  matmul(xIn: Tensor, wIn: DeviceWeight): Tensor {
    const x = t(xIn);
    const wt = w(wIn);
    const n = x.rows, k = x.cols, m = wt.rows;
    if (wt.cols !== k) throw new Error(`matmul: x has ${k} columns, ${wt.name} has ${wt.cols}`);
    const out = new Float32Array(n * m);
    const f32 = wt.format === 'f32' ? (wt.host.data as Float32Array) : null;
    const tile = f32 ? null : this.scratchFor(TILE_ROWS * k);
    for (let r0 = 0; r0 < m; r0 += TILE_ROWS) {
      const r1 = Math.min(m, r0 + TILE_ROWS);
      // Rows r0..r1 as float32: a view of an f32 weight, else dequantized once into scratch.
      let rows: Float32Array, base: number;
      if (f32) { rows = f32; base = r0 * k; }
      else {
        for (let r = r0; r < r1; r++) dequantRow(wt.host, r, tile!, (r - r0) * k);
        rows = tile!; base = 0;
      }
      matmulTile(x.data, n, k, rows, base, r0, r1, out, m);
    }
    return new CpuTensor(n, m, out);
  }

  rmsNorm(xIn: Tensor, wIn: DeviceWeight, eps: number): Tensor {
    const x = t(xIn);
    const d = x.cols;
    const g = this.vector(wIn, d);
    const out = new Float32Array(x.data.length);
    for (let i = 0; i < x.rows; i++) {
      const o = i * d;
      let ss = 0;
      for (let j = 0; j < d; j++) ss += x.data[o + j] * x.data[o + j];
      const inv = 1 / Math.sqrt(ss / d + eps);
      for (let j = 0; j < d; j++) out[o + j] = x.data[o + j] * inv * g[j];
    }
    return new CpuTensor(x.rows, d, out);
  }

  /** A 1-row weight as float32 (norm weights are tiny). */
  private vector(wIn: DeviceWeight, len: number): Float32Array {
    const wt = w(wIn);
    if (wt.rows * wt.cols !== len) throw new Error(`${wt.name}: expected ${len} values, has ${wt.rows * wt.cols}`);
    if (wt.format === 'f32') return wt.host.data as Float32Array;
    const out = new Float32Array(len);
    dequantRow({ ...wt.host, rows: 1, cols: len }, 0, out);
    return out;
  }

  add(aIn: Tensor, bIn: Tensor): Tensor {
    const a = t(aIn), b = t(bIn);
    if (a.rows !== b.rows || a.cols !== b.cols) throw new Error('add: shape mismatch');
    const out = new Float32Array(a.data.length);
    for (let i = 0; i < out.length; i++) out[i] = a.data[i] + b.data[i];
    return new CpuTensor(a.rows, a.cols, out);
  }

  swiglu(gIn: Tensor, uIn: Tensor): Tensor {
    const g = t(gIn), u = t(uIn);
    if (g.rows !== u.rows || g.cols !== u.cols) throw new Error('swiglu: shape mismatch');
    const out = new Float32Array(g.data.length);
    for (let i = 0; i < out.length; i++) {
      const v = g.data[i];
      out[i] = (v / (1 + Math.exp(-v))) * u.data[i];
    }
    return new CpuTensor(g.rows, g.cols, out);
  }

  /**
   * Allocates the output of a data-movement op (contents unspecified). A subclass that keeps
   * tensors in its own memory overrides this alone, placing the output near `near`.
   */
  protected output(rows: number, cols: number, ..._near: Tensor[]): CpuTensor {
    return new CpuTensor(rows, cols, new Float32Array(rows * cols));
  }

  sliceCols(xIn: Tensor, start: number, count: number): Tensor {
    const x = t(xIn);
    if (start < 0 || start + count > x.cols) throw new Error('sliceCols: out of range');
    const out = this.output(x.rows, count, x);
    for (let i = 0; i < x.rows; i++) out.data.set(x.data.subarray(i * x.cols + start, i * x.cols + start + count), i * count);
    return out;
  }

  concatCols(aIn: Tensor, bIn: Tensor): Tensor {
    const a = t(aIn), b = t(bIn);
    if (a.rows !== b.rows) throw new Error('concatCols: row mismatch');
    const c = a.cols + b.cols;
    const out = this.output(a.rows, c, a, b);
    for (let i = 0; i < a.rows; i++) {
      out.data.set(a.data.subarray(i * a.cols, (i + 1) * a.cols), i * c);
      out.data.set(b.data.subarray(i * b.cols, (i + 1) * b.cols), i * c + a.cols);
    }
    return out;
  }

  gatherRows(xIn: Tensor, rows: Int32Array): Tensor {
    const x = t(xIn);
    for (let i = 0; i < rows.length; i++) if (rows[i] < 0 || rows[i] >= x.rows) throw new RangeError('gatherRows: row out of range');
    const out = this.output(rows.length, x.cols, x);
    for (let i = 0; i < rows.length; i++) out.data.set(x.data.subarray(rows[i] * x.cols, (rows[i] + 1) * x.cols), i * x.cols);
    return out;
  }

  rope(xIn: Tensor, positions: Int32Array, invFreq: Float32Array, heads: number, headStride: number, offset: number): Tensor {
    const x = t(xIn);
    if (x.cols !== heads * headStride) throw new Error('rope: columns do not match heads * headStride');
    const out = this.output(x.rows, x.cols, x);
    const src = x.data, dst = out.data;
    dst.set(src);
    const half = invFreq.length;
    for (let i = 0; i < x.rows; i++) {
      const pos = positions[i];
      for (let p = 0; p < half; p++) {
        const angle = pos * invFreq[p];
        const c = Math.cos(angle), s = Math.sin(angle);
        for (let h = 0; h < heads; h++) {
          const o = i * x.cols + h * headStride + offset + 2 * p;
          const a = src[o], b = src[o + 1];
          dst[o] = a * c - b * s;
          dst[o + 1] = a * s + b * c;
        }
      }
    }
    return out;
  }

  writeKV(poolIn: KVPool, layer: number, kvIn: Tensor, batch: AttentionBatch): void {
    const pool = poolIn as CpuKVPool;
    const kv = t(kvIn);
    if (kv.cols !== pool.width) throw new Error(`writeKV: rows of ${kv.cols} values, pool width ${pool.width}`);
    const dst = pool.data[layer];
    for (let i = 0; i < kv.rows; i++) {
      const slot = slotOf(batch, i, pool.blockSize);
      dst.set(kv.data.subarray(i * kv.cols, (i + 1) * kv.cols), slot * pool.width);
    }
  }

  mlaAttention(qIn: Tensor, kvBIn: DeviceWeight, poolIn: KVPool, layer: number, batch: AttentionBatch, s: MlaShape): Tensor {
    const q = t(qIn);
    const kvB = w(kvBIn);
    const pool = poolIn as CpuKVPool;
    const n = q.rows, H = s.heads, R = s.kvRank, P = s.ropeDim, qStride = s.nopeDim + P;
    if (q.cols !== H * qStride) throw new Error('mlaAttention: q has the wrong width');
    if (kvB.rows !== H * (s.nopeDim + s.vDim) || kvB.cols !== R) throw new Error(`mlaAttention: ${kvB.name} has the wrong shape`);
    const cache = pool.data[layer];
    const W = pool.width;
    const row = this.scratchFor(R);

    // 1. Absorb W_UK into the query: qAbs[i, h] = q_nope[i, h] · W_UK[h]  ([n, H, R]).
    const qAbs = new Float32Array(n * H * R);
    for (let h = 0; h < H; h++) {
      for (let d = 0; d < s.nopeDim; d++) {
        dequantRow(kvB.host, h * (s.nopeDim + s.vDim) + d, row);
        for (let i = 0; i < n; i++) {
          const qv = q.data[i * q.cols + h * qStride + d];
          if (qv === 0) continue;
          const o = (i * H + h) * R;
          for (let c = 0; c < R; c++) qAbs[o + c] += qv * row[c];
        }
      }
    }

    // 2. Scores against cached latents and rope keys, softmax, weighted sum of latents.
    const latOut = new Float32Array(n * H * R);
    let scores = new Float32Array(64);
    let slots = new Int32Array(64);
    for (let i = 0; i < n; i++) {
      const len = batch.positions[i] + 1;
      if (scores.length < len) { scores = new Float32Array(len * 2); slots = new Int32Array(len * 2); }
      const table = batch.blockTables[batch.seqIndex[i]];
      for (let p = 0; p < len; p++) slots[p] = table[(p / pool.blockSize) | 0] * pool.blockSize + (p % pool.blockSize);
      for (let h = 0; h < H; h++) {
        const qa = (i * H + h) * R;
        const qp = i * q.cols + h * qStride + s.nopeDim;
        let max = -Infinity;
        for (let p = 0; p < len; p++) {
          const kOff = slots[p] * W;
          const sc = (dot(qAbs, qa, cache, kOff, R) + dot(q.data, qp, cache, kOff + R, P)) * s.softmaxScale;
          scores[p] = sc;
          if (sc > max) max = sc;
        }
        let sum = 0;
        for (let p = 0; p < len; p++) { const e = Math.exp(scores[p] - max); scores[p] = e; sum += e; }
        const inv = 1 / sum;
        for (let p = 0; p < len; p++) {
          const wgt = scores[p] * inv;
          const kOff = slots[p] * W;
          for (let c = 0; c < R; c++) latOut[qa + c] += wgt * cache[kOff + c];
        }
      }
    }

    // 3. Up-project the attended latent with W_UV: out[i, h, d] = latOut[i, h] · W_UV[h, d].
    const out = new Float32Array(n * H * s.vDim);
    for (let h = 0; h < H; h++) {
      for (let d = 0; d < s.vDim; d++) {
        dequantRow(kvB.host, h * (s.nopeDim + s.vDim) + s.nopeDim + d, row);
        for (let i = 0; i < n; i++) out[(i * H + h) * s.vDim + d] = dot(latOut, (i * H + h) * R, row, 0, R);
      }
    }
    return new CpuTensor(n, H * s.vDim, out);
  }

  route(logitsIn: Tensor, bias: DeviceWeight | null, cfg: RouterConfig): Routing {
    const lg = t(logitsIn);
    const n = lg.rows, E = lg.cols, K = cfg.topK;
    const biasV = bias ? this.vector(bias, E) : null;
    const ids = new Int32Array(n * K);
    const weights = new Float32Array(n * K);
    const scores = new Float32Array(E); // unbiased: give the weights
    const choice = new Float32Array(E); // biased and group-masked: decide the experts
    const perGroup = E / cfg.nGroup;
    const groupScore = new Float32Array(cfg.nGroup);
    for (let i = 0; i < n; i++) {
      const o = i * E;
      if (cfg.scoring === 'softmax') {
        let max = -Infinity;
        for (let e = 0; e < E; e++) if (lg.data[o + e] > max) max = lg.data[o + e];
        let sum = 0;
        for (let e = 0; e < E; e++) { scores[e] = Math.exp(lg.data[o + e] - max); sum += scores[e]; }
        for (let e = 0; e < E; e++) scores[e] /= sum;
      } else {
        for (let e = 0; e < E; e++) scores[e] = 1 / (1 + Math.exp(-lg.data[o + e]));
      }
      for (let e = 0; e < E; e++) choice[e] = biasV ? scores[e] + biasV[e] : scores[e];
      if (cfg.nGroup > 1) {
        for (let g = 0; g < cfg.nGroup; g++) {
          let best = -Infinity, second = -Infinity;
          for (let e = g * perGroup; e < (g + 1) * perGroup; e++) {
            const v = choice[e];
            if (v > best) { second = best; best = v; } else if (v > second) second = v;
          }
          groupScore[g] = cfg.groupScore === 'max' ? best : best + (perGroup > 1 ? second : 0);
        }
        // Keep the topkGroup best groups; mask the rest to -inf.
        const keep = topIndices(groupScore, cfg.topkGroup);
        for (let g = 0; g < cfg.nGroup; g++) {
          if (keep.includes(g)) continue;
          for (let e = g * perGroup; e < (g + 1) * perGroup; e++) choice[e] = -Infinity;
        }
      }
      const top = topIndices(choice, K);
      let sum = 0;
      for (let k = 0; k < K; k++) { ids[i * K + k] = top[k]; weights[i * K + k] = scores[top[k]]; sum += scores[top[k]]; }
      const f = (cfg.normalize ? 1 / sum : 1) * cfg.scale;
      for (let k = 0; k < K; k++) weights[i * K + k] *= f;
    }
    return new CpuRouting(n, K, ids, weights);
  }

  async readRouting(r: Routing): Promise<{ ids: Int32Array; weights: Float32Array }> {
    const cr = r as CpuRouting;
    return { ids: Int32Array.from(cr.ids), weights: Float32Array.from(cr.weights) };
  }

  moe(xIn: Tensor, rIn: Routing, experts: ExpertWeights[]): Tensor {
    const x = t(xIn);
    const r = rIn as CpuRouting;
    const d = x.cols;
    const out = new Float32Array(x.rows * d);
    // Group (token, weight) pairs by expert so each expert's weights are read once per call.
    const byExpert: number[][] = experts.map(() => []);
    for (let j = 0; j < r.ids.length; j++) byExpert[r.ids[j]].push(j);
    for (let e = 0; e < experts.length; e++) {
      const picks = byExpert[e];
      if (!picks.length) continue;
      const rows = new Int32Array(picks.length);
      for (let p = 0; p < picks.length; p++) rows[p] = (picks[p] / r.topK) | 0;
      const xe = this.gatherRows(x, rows);
      const ex = experts[e];
      const h = this.swiglu(this.matmul(xe, ex.gate), this.matmul(xe, ex.up));
      const y = t(this.matmul(h, ex.down));
      for (let p = 0; p < picks.length; p++) {
        const wgt = r.weights[picks[p]];
        const oo = rows[p] * d, yo = p * d;
        for (let c = 0; c < d; c++) out[oo + c] += wgt * y.data[yo + c];
      }
    }
    return new CpuTensor(x.rows, d, out);
  }

  async argmaxRows(xIn: Tensor): Promise<Int32Array> {
    const x = t(xIn);
    const out = new Int32Array(x.rows);
    for (let i = 0; i < x.rows; i++) {
      let best = 0, bv = -Infinity;
      for (let j = 0; j < x.cols; j++) { const v = x.data[i * x.cols + j]; if (v > bv) { bv = v; best = j; } }
      out[i] = best;
    }
    return out;
  }

  /** Float32Arrays on the JS heap: the garbage collector frees them. */
  release(_t: Tensor): void {}

  dispose(): void {
    this.scratch = new Float32Array(0);
  }
}

/** Cache slot of token i: its sequence's block table at its position. */
function slotOf(batch: AttentionBatch, i: number, blockSize: number): number {
  const pos = batch.positions[i];
  const table = batch.blockTables[batch.seqIndex[i]];
  const block = table[(pos / blockSize) | 0];
  if (block === undefined) throw new RangeError(`no cache block for position ${pos}`);
  return block * blockSize + (pos % blockSize);
}

/** Indices of the k largest values, largest first (ties: lower index first, like torch.topk on CPU). */
function topIndices(v: Float32Array, k: number): number[] {
  const best: number[] = [];
  for (let j = 0; j < v.length; j++) {
    const x = v[j];
    if (best.length === k && !(x > v[best[k - 1]])) continue;
    let p = best.length < k ? best.length : k - 1;
    while (p > 0 && x > v[best[p - 1]]) p--;
    best.splice(p, 0, j);
    if (best.length > k) best.pop();
  }
  return best;
}
