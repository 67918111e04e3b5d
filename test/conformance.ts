/**
 * Backend conformance suite: every op of a Backend checked against the naive reference in
 * test/reference-ops.ts, on seeded random data (failures reproduce) and hand-made edge
 * cases. A new backend runs it with a three-line test file:
 *
 *   import { backendConformance } from './conformance.js';
 *   import { MyBackend } from '../src/backends/my/my-backend.js';
 *   backendConformance('my', () => new MyBackend());
 *
 * Tolerance policy: computed float results must satisfy
 *   max |actual - expected| <= tolerance * max(1, max |expected|)
 * per compared tensor (default tolerance 1e-4, i.e. float32 arithmetic with any summation
 * order; raise it for backends that compute in f16/bf16). RoPE also allows the error of
 * forming the angle position * invFreq in float32 (as DeepSeek's reference does).
 * Data movement (fromHost/read, sliceCols, concatCols, gatherRows, zero embedding rows)
 * and integer results (argmaxRows, routing ids) must be exact.
 *
 * q8 activations (ConformanceOptions.q8Activations): a backend that, like llama.cpp, quantizes
 * the activations of a block-format matmul to int8 (blocks of 32 or 256 values, d = max|x|/127,
 * code = round-to-even(x · (1/d)), all in float32) is checked twice: at the tolerance above
 * against the reference run on those same quantized activations (so only the arithmetic after
 * quantization may differ), and against the exact reference with, per output element, the
 * slack that quantization can cause at most: Σ_c |w[r, c]| · d(i, c) / 2 (each activation
 * moves by at most half a step). A wrong scale, code or block fails the first check.
 */
import { after, before, describe, it, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import type {
  AttentionBatch, Backend, DeviceWeight, ExpertWeights, HostWeight, MlaShape, RouterConfig,
  Tensor, WeightFormat,
} from '../src/backends/backend.js';
import * as ref from './reference-ops.js';
import type { Mat } from './reference-ops.js';

export interface ConformanceOptions {
  /** Relative tolerance for computed results (default 1e-4). */
  tolerance?: number;
  /** When set, the whole suite is registered as skipped with this reason (e.g. no device). */
  skip?: string;
  /**
   * For a matmul of n tokens with a weight in `format`: the block length (32 or 256) of the q8
   * blocks the backend quantizes the activations to, or 0 when it computes on them as they are.
   * Default: always 0.
   */
  q8Activations?: (format: WeightFormat, n: number) => number;
  /**
   * For mlaAttention with kv_b in `format`, for a token whose sequence has `tokens` tokens in
   * the batch and a cache of `length` rows (its last position + 1): the q8 block length when
   * the backend decompresses that sequence's cached latents through a matmul on q8 activations
   * (attention without absorption, the latents quantized as q8Activations describes), or 0 when
   * it computes on them as they are. The suite then expects those tokens' outputs from the
   * reference on a cache whose latent columns are quantized that way. Default: always 0.
   */
  mlaQ8Latents?: (format: WeightFormat, tokens: number, length: number, shape: MlaShape) => number;
}

/**
 * x's rows quantized to q8 blocks of `block` values as the suite's tolerance policy describes
 * (float32 arithmetic, ties to even): the dequantized values (code · d, exact in float64) and
 * each value's step d.
 */
export function quantizeQ8Rows(x: Mat, block: number): { q: Mat; step: Float64Array } {
  const q = ref.mat(x.rows, x.cols), step = new Float64Array(x.rows * x.cols);
  const f = Math.fround;
  const roundEven = (v: number): number => (Math.abs(v % 1) === 0.5 ? 2 * Math.round(v / 2) : Math.round(v));
  for (let i = 0; i < x.rows; i++) {
    for (let c0 = 0; c0 < x.cols; c0 += block) {
      let amax = 0;
      for (let c = c0; c < c0 + block; c++) amax = Math.max(amax, Math.abs(x.data[i * x.cols + c]));
      const d = f(amax / 127), id = d !== 0 ? f(1 / d) : 0;
      for (let c = c0; c < c0 + block; c++) {
        const o = i * x.cols + c;
        q.data[o] = roundEven(f(x.data[o] * id)) * d;
        step[o] = d;
      }
    }
  }
  return { q, step };
}

/**
 * A copy of a reference cache whose rows' latent columns [0, rank) are rounded to float32 (as a
 * backend stores them) and quantized to q8 blocks of `block` values (quantizeQ8Rows); the rope
 * columns are kept.
 */
function quantizedLatents(pool: ref.RefKVPool, rank: number, block: number): ref.RefKVPool {
  const out = new ref.RefKVPool(pool.layers, pool.numBlocks, pool.blockSize, pool.width);
  for (let l = 0; l < pool.layers; l++) {
    for (let b = 0; b < pool.numBlocks; b++) {
      for (let o = 0; o < pool.blockSize; o++) {
        const row = pool.slots[l][b][o], dst = out.slots[l][b][o];
        const { q } = quantizeQ8Rows(ref.mat(1, rank, Array.from(row.subarray(0, rank), Math.fround)), block);
        dst.set(q.data);
        dst.set(row.subarray(rank), rank);
      }
    }
  }
  return out;
}

/**
 * ref.refMoe with each projection's input quantized as `block` says for its format and the
 * expert's token count (a row's q8 blocks do not depend on the other rows, so token by token
 * is the same). The hidden activations are rounded to float32 first, as a backend stores them.
 */
function refMoeQ8(x: Mat, routing: { topK: number; ids: ArrayLike<number>; weights: ArrayLike<number> }, experts: ref.RefExpert[], block: (format: WeightFormat, n: number) => number): Mat {
  const cnt = new Map<ref.RefExpert, number>();
  for (let j = 0; j < routing.ids.length; j++) cnt.set(experts[routing.ids[j]], (cnt.get(experts[routing.ids[j]]) ?? 0) + 1);
  const input = (v: Mat, w: HostWeight, n: number): Mat => {
    const bl = block(w.format, n);
    return bl ? quantizeQ8Rows(ref.mat(v.rows, v.cols, Float32Array.from(v.data)), bl).q : v;
  };
  const out = ref.mat(x.rows, x.cols);
  for (let t = 0; t < x.rows; t++) {
    const xt = ref.mat(1, x.cols, x.data.subarray(t * x.cols, (t + 1) * x.cols));
    for (let k = 0; k < routing.topK; k++) {
      const ex = experts[routing.ids[t * routing.topK + k]], n = cnt.get(ex)!;
      const h = ref.refSwiglu(ref.refMatmul(input(xt, ex.gate, n), ex.gate), ref.refMatmul(input(xt, ex.up, n), ex.up));
      const y = ref.refMatmul(input(h, ex.down, n), ex.down);
      const wgt = routing.weights[t * routing.topK + k];
      for (let c = 0; c < x.cols; c++) out.data[t * x.cols + c] += wgt * y.data[c];
    }
  }
  return out;
}

/** Per element of x · w^T: the most that moving each x[i, c] by step[i, c] / 2 can change it. */
export function q8Slack(wd: Mat, step: Float64Array, n: number): Float64Array {
  const k = wd.cols, slack = new Float64Array(n * wd.rows);
  // Half a step, and a little for the rounding of x · (1/d) (below 2^-16 of a step).
  for (let i = 0; i < n; i++) {
    for (let r = 0; r < wd.rows; r++) {
      let s = 0;
      for (let c = 0; c < k; c++) s += Math.abs(wd.data[r * k + c]) * step[i * k + c];
      slack[i * wd.rows + r] = s * (0.5 + 2 ** -16);
    }
  }
  return slack;
}

// ---- seeded data -------------------------------------------------------------------------

/** mulberry32: a tiny seeded PRNG, uniform in [0, 1). */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  uniform(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  floats(n: number, lo = -1, hi = 1): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = this.uniform(lo, hi);
    return out;
  }
}

/** A PRNG seeded from a test's name (FNV-1a), so each test's data is independent of order. */
export function rngFor(name: string): Prng {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return new Prng(h >>> 0);
}

/** A weight format plus, for fp8, its block shape. */
export interface FormatSpec {
  format: WeightFormat;
  block?: [number, number];
}

export const FORMATS: FormatSpec[] = [
  { format: 'f32' },
  { format: 'f16' },
  { format: 'bf16' },
  { format: 'fp8_e4m3_block', block: [128, 128] },
  { format: 'fp8_e4m3_block', block: [4, 8] },
  { format: 'fp8_e4m3_block', block: [3, 5] },
];

/** llama.cpp's block formats (GGUF): columns must be a multiple of the block length. */
export const BLOCK_FORMATS: FormatSpec[] = [{ format: 'q8_0' }, { format: 'q4_0' }, { format: 'q4_k' }, { format: 'q6_k' }];

/** Every format the suite knows; each runs only when the backend's supportsFormat says so. */
export const ALL_FORMATS: FormatSpec[] = [...FORMATS, ...BLOCK_FORMATS];

/** Values per block of a block format (1 for the element formats). */
export function blockValues(format: WeightFormat): number {
  return format === 'q8_0' || format === 'q4_0' ? 32 : format === 'q4_k' || format === 'q6_k' ? 256 : 1;
}

export function formatName(f: FormatSpec): string {
  return f.block ? `fp8[${f.block[0]}x${f.block[1]}]` : f.format;
}

/** Whether a backend takes weights in this format (backends written before supportsFormat: the first four). */
export function backendSupports(b: Backend, format: WeightFormat): boolean {
  if (typeof (b as Partial<Backend>).supportsFormat === 'function') return b.supportsFormat(format);
  return format === 'f32' || format === 'f16' || format === 'bf16' || format === 'fp8_e4m3_block';
}

const cvt = new DataView(new ArrayBuffer(4));
function putHalf(bytes: Uint8Array, off: number, v: number): void {
  // Round to the nearest half by search over the exponent (tests only; values are well inside range).
  const sign = v < 0 ? 0x8000 : 0;
  const a = Math.abs(v);
  let h = 0;
  if (a >= Math.pow(2, -14)) {
    const e = Math.min(30, Math.floor(Math.log2(a)) + 15);
    h = (e << 10) | Math.min(1023, Math.round((a / Math.pow(2, e - 15) - 1) * 1024));
  } else h = Math.round(a / Math.pow(2, -24));
  bytes[off] = (sign | h) & 0xff;
  bytes[off + 1] = (sign | h) >> 8;
}

/**
 * Random blocks of a GGUF block format: every quant byte random (so all codes and sub-block
 * scales occur), block scales chosen so values reach about `scale`, with random signs where
 * the format allows them (ggml's q4_0 and q6_k scales are often negative).
 */
function randomBlocks(rng: Prng, format: WeightFormat, rows: number, cols: number, scale: number): Uint8Array {
  const per = blockValues(format);
  if (cols % per !== 0) throw new Error(`randomWeight: ${format} needs columns in multiples of ${per}, got ${cols}`);
  const blockBytes = format === 'q8_0' ? 34 : format === 'q4_0' ? 18 : format === 'q4_k' ? 144 : 210;
  const n = rows * (cols / per);
  const out = new Uint8Array(n * blockBytes);
  for (let i = 0; i < out.length; i++) out[i] = rng.int(256);
  const sgn = () => (rng.next() < 0.5 ? -1 : 1);
  for (let b = 0; b < n; b++) {
    const p = b * blockBytes;
    const u = rng.uniform(0.5, 1.5) * scale;
    switch (format) {
      case 'q8_0': putHalf(out, p, (sgn() * u) / 128); break;
      case 'q4_0': putHalf(out, p, (sgn() * u) / 8); break;
      case 'q4_k': putHalf(out, p, u / (63 * 15)); putHalf(out, p + 2, (rng.uniform(0, 1) * u) / (63 * 15)); break;
      case 'q6_k': putHalf(out, p + 208, (sgn() * u) / (128 * 32)); break;
    }
  }
  return out;
}

function bf16Truncate(x: number): number {
  cvt.setFloat32(0, x);
  return cvt.getUint32(0) >>> 16;
}

/**
 * Random packed weight [rows, cols] with values of magnitude up to about `scale`.
 * f16 codes include subnormals; fp8 bytes cover every finite e4m3 code (never 0x7f/0xff),
 * with a random positive scale per block.
 */
export function randomWeight(rng: Prng, spec: FormatSpec, rows: number, cols: number, scale = 1, name = 'w'): HostWeight {
  const n = rows * cols;
  switch (spec.format) {
    case 'f32': {
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = rng.uniform(-scale, scale);
      return { name, format: 'f32', rows, cols, data };
    }
    case 'bf16': {
      const data = new Uint16Array(n);
      for (let i = 0; i < n; i++) data[i] = rng.next() < 0.02 ? 0 : bf16Truncate(rng.uniform(-scale, scale));
      return { name, format: 'bf16', rows, cols, data };
    }
    case 'f16': {
      // Exponent chosen so |v| < 2^e(scale); 3% subnormals, a few signed zeros.
      const top = Math.max(1, Math.min(30, 15 + Math.floor(Math.log2(scale))));
      const data = new Uint16Array(n);
      for (let i = 0; i < n; i++) {
        const sign = rng.next() < 0.5 ? 0x8000 : 0;
        const u = rng.next();
        const exp = u < 0.03 ? 0 : Math.max(1, top - 1 - rng.int(10));
        data[i] = sign | (exp << 10) | rng.int(1024);
      }
      return { name, format: 'f16', rows, cols, data };
    }
    case 'fp8_e4m3_block': {
      const [br, bc] = spec.block ?? [128, 128];
      const data = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        let v = rng.int(256);
        while ((v & 0x7f) === 0x7f) v = rng.int(256);
        data[i] = v;
      }
      const sr = Math.ceil(rows / br), sc = Math.ceil(cols / bc);
      const scales = new Float32Array(sr * sc);
      for (let i = 0; i < scales.length; i++) scales[i] = (rng.uniform(0.5, 1.5) * scale) / 448;
      return { name, format: 'fp8_e4m3_block', rows, cols, data, scales, blockRows: br, blockCols: bc };
    }
    case 'q8_0':
    case 'q4_0':
    case 'q4_k':
    case 'q6_k':
      return { name, format: spec.format, rows, cols, data: randomBlocks(rng, spec.format, rows, cols, scale) };
  }
}

function f32Weight(name: string, rows: number, cols: number, values: ArrayLike<number>): HostWeight {
  return { name, format: 'f32', rows, cols, data: Float32Array.from(values) };
}

/** Standard RoPE inverse frequencies for a rope slice of `dim` values. */
export function plainInvFreq(dim: number, base: number): Float32Array {
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = Math.pow(base, (-2 * i) / dim);
  return out;
}

/** YaRN-blended frequencies (long-context scaled: low ones divided by factor, high ones kept). */
export function yarnInvFreq(dim: number, base: number, factor: number, original: number, betaFast: number, betaSlow: number): Float32Array {
  const plain = plainInvFreq(dim, base);
  const corr = (rot: number) => (dim * Math.log(original / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  const lo = Math.max(Math.floor(corr(betaFast)), 0);
  let hi = Math.min(Math.ceil(corr(betaSlow)), dim - 1);
  if (hi === lo) hi += 0.001;
  const out = new Float32Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) {
    const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
    out[i] = (plain[i] / factor) * ramp + plain[i] * (1 - ramp);
  }
  return out;
}

// ---- comparison --------------------------------------------------------------------------

function toMat(rows: number, cols: number, data: ArrayLike<number>): Mat {
  return ref.mat(rows, cols, data);
}

interface CloseOptions {
  tol: number;
  /** Extra allowed absolute error per element. */
  slack?: Float64Array;
}

function compare(actual: Float32Array, expected: Mat, what: string, o: CloseOptions): void {
  assert.equal(actual.length, expected.data.length, `${what}: ${actual.length} values, expected ${expected.data.length}`);
  let mag = 0;
  for (const v of expected.data) mag = Math.max(mag, Math.abs(v));
  const base = o.tol * Math.max(1, mag);
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i], e = expected.data[i];
    const allowed = base + (o.slack ? o.slack[i] : 0);
    const diff = Math.abs(a - e);
    if (!(diff <= allowed)) {
      const excess = Number.isNaN(diff) ? Infinity : diff - allowed;
      if (worst < 0 || excess > worstExcess) { worst = i; worstExcess = excess; }
    }
  }
  if (worst >= 0) {
    const r = Math.floor(worst / expected.cols), c = worst % expected.cols;
    const allowed = base + (o.slack ? o.slack[worst] : 0);
    assert.fail(
      `${what}: [${r}, ${c}] is ${actual[worst]}, expected ${expected.data[worst]} ` +
        `(|diff| ${Math.abs(actual[worst] - expected.data[worst]).toExponential(3)} > allowed ${allowed.toExponential(3)}; ` +
        `tolerance ${o.tol}, max |expected| ${mag.toPrecision(4)})`,
    );
  }
}

function compareExact(actual: Float32Array, expected: ArrayLike<number>, what: string, cols: number): void {
  assert.equal(actual.length, expected.length, `${what}: ${actual.length} values, expected ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], Math.fround(expected[i]))) {
      assert.fail(`${what}: [${Math.floor(i / cols)}, ${i % cols}] is ${actual[i]}, expected exactly ${Math.fround(expected[i])}`);
    }
  }
}

// ---- the suite ---------------------------------------------------------------------------

export function backendConformance(label: string, make: () => Backend | Promise<Backend>, opts: ConformanceOptions = {}): void {
  const tol = opts.tolerance ?? 1e-4;
  const q8Block = (format: WeightFormat, n: number): number => opts.q8Activations?.(format, n) ?? 0;

  describe(`backend conformance: ${label}`, { skip: opts.skip }, () => {
    let b: Backend;
    before(async () => {
      b = await make();
    });
    after(() => {
      b?.dispose();
    });

    const up = (hw: HostWeight): DeviceWeight => b.uploadWeight(hw);
    const host = (m: Mat): Tensor => b.fromHost(Float32Array.from(m.data), m.rows, m.cols);
    const randMat = (rng: Prng, rows: number, cols: number, lo = -1, hi = 1): Mat => toMat(rows, cols, rng.floats(rows * cols, lo, hi));
    /** A test body that runs only when the backend takes every given format (else the test is skipped, saying why). */
    const whenSupported = (specs: FormatSpec[], body: () => Promise<void> | void) => async (t: TestContext): Promise<void> => {
      const missing = specs.filter((f) => !backendSupports(b, f.format)).map((f) => f.format);
      if (missing.length) {
        t.skip(`backend does not support ${[...new Set(missing)].join(', ')}`);
        return;
      }
      await body();
    };

    async function expectClose(t: Tensor, expected: Mat, what: string, o: Partial<CloseOptions> = {}): Promise<void> {
      assert.deepEqual([t.rows, t.cols], [expected.rows, expected.cols], `${what}: shape`);
      compare(await b.read(t), expected, what, { tol: o.tol ?? tol, slack: o.slack });
    }
    async function expectExact(t: Tensor, expected: Mat, what: string): Promise<void> {
      assert.deepEqual([t.rows, t.cols], [expected.rows, expected.cols], `${what}: shape`);
      compareExact(await b.read(t), expected.data, what, expected.cols);
    }

    // ---- buffers ----------------------------------------------------------------------

    describe('buffers', () => {
      it('fromHost/read round-trips exactly, and fromHost copies its input', async () => {
        const rng = rngFor('buffers.roundtrip');
        const data = rng.floats(7 * 13, -100, 100);
        data[0] = 3.4e38; data[1] = -1.2e-38; data[2] = 0; data[3] = 1e-30;
        const x = b.fromHost(data, 7, 13);
        const keep = Float32Array.from(data);
        data.fill(42);
        assert.deepEqual([x.rows, x.cols], [7, 13]);
        compareExact(await b.read(x), keep, 'read(fromHost(x))', 13);
        compareExact(await b.read(x), keep, 'second read', 13);
      });

      it('read returns a copy: mutating it changes neither the tensor nor later reads', async () => {
        const x = b.fromHost(Float32Array.from([1, 2, 3, 4, 5, 6]), 2, 3);
        const y = b.add(x, x);
        for (const t of [x, y]) {
          const first = await b.read(t);
          const keep = Float32Array.from(first);
          first.fill(-7);
          compareExact(await b.read(t), keep, 'read after mutating an earlier read', 3);
        }
        compareExact(await b.read(b.add(x, x)), [2, 4, 6, 8, 10, 12], 'op on the tensor after mutating a read', 3);
      });

      it('release: the tensors still in use keep their values while released memory is reused; releasing twice is harmless', async () => {
        const rng = rngFor('buffers.release');
        const a = rng.floats(9 * 33, -4, 4), c = rng.floats(9 * 33, -4, 4);
        const x = b.fromHost(a, 9, 33), y = b.fromHost(c, 9, 33);
        const keep = b.add(x, y);
        const sum = Float32Array.from(a, (v, i) => Math.fround(v + c[i]));
        // Churn: each round's tensors are released at once, so their bytes come back for the next.
        for (let round = 0; round < 20; round++) {
          const t = b.add(keep, x);
          const u = b.add(t, y);
          b.release(t);
          b.release(u);
          b.release(t);
        }
        const later = b.add(keep, keep);
        b.release(x);
        compareExact(await b.read(keep), sum, 'tensor kept across released ones', 33);
        compareExact(await b.read(later), sum.map((v) => Math.fround(v + v)), 'op after releases', 33);
        compareExact(await b.read(y), c, 'input kept', 33);
      });

      it('supports f32 or bf16 (the formats every loader can fall back to)', () => {
        assert.ok(backendSupports(b, 'f32') || backendSupports(b, 'bf16'), `${b.info.name} supports neither f32 nor bf16`);
      });

      it('uploadWeight keeps name, format and shape; bytes cover the packed data', () => {
        const rng = rngFor('buffers.upload');
        for (const f of ALL_FORMATS) {
          if (!backendSupports(b, f.format)) continue;
          const hw = randomWeight(rng, f, 9, blockValues(f.format) > 1 ? 2 * blockValues(f.format) : 11, 1, `w.${formatName(f)}`);
          const dw = up(hw);
          assert.equal(dw.name, hw.name);
          assert.equal(dw.format, hw.format);
          assert.deepEqual([dw.rows, dw.cols], [9, hw.cols]);
          assert.ok(dw.bytes >= hw.data.byteLength, `${dw.name}: ${dw.bytes} bytes for ${hw.data.byteLength} packed`);
        }
      });

      it('uploadWeightFrom (where a backend has it) gives a weight that computes as uploadWeight\'s', async (t) => {
        if (!b.uploadWeightFrom) {
          t.skip('no uploadWeightFrom: loaders hand a fresh buffer to uploadWeight');
          return;
        }
        const rng = rngFor('buffers.uploadFrom');
        for (const f of ALL_FORMATS) {
          if (f.format === 'fp8_e4m3_block' || !backendSupports(b, f.format)) continue;
          const k = blockValues(f.format) > 1 ? 2 * blockValues(f.format) : 11;
          const hw = randomWeight(rng, f, 9, k, 1, `w.${formatName(f)}`);
          const dw = b.uploadWeightFrom({ name: hw.name, format: f.format, rows: 9, cols: k }, (dst) => {
            assert.equal(dst.byteLength, hw.data.byteLength);
            dst.set(new Uint8Array(hw.data.buffer, hw.data.byteOffset, hw.data.byteLength));
          });
          assert.deepEqual([dw.name, dw.format, dw.rows, dw.cols], [hw.name, hw.format, 9, k]);
          assert.ok(dw.bytes >= hw.data.byteLength);
          const x = randMat(rng, 3, k);
          assert.deepEqual(await b.read(b.matmul(host(x), dw)), await b.read(b.matmul(host(x), up(hw))), formatName(f));
        }
        assert.throws(() => b.uploadWeightFrom!({ name: 'w', format: 'f32', rows: 2, cols: 3 }, () => { throw new Error('disk gone'); }), /disk gone/);
      });

      it('createKVPool keeps its shape', () => {
        const pool = b.createKVPool(3, 5, 4, 14);
        assert.deepEqual([pool.layers, pool.numBlocks, pool.blockSize, pool.width], [3, 5, 4, 14]);
        assert.ok(pool.bytes > 0);
      });
    });

    // ---- matmul ---------------------------------------------------------------------

    describe('matmul', () => {
      // [n, m, k]: x [n, k] times w [m, k]^T. Odd sizes, partial fp8 blocks, n = 1 (decode) and n > 1.
      const shapes: [number, number, number][] = [[1, 7, 5], [3, 130, 129], [17, 33, 257], [1, 300, 260], [5, 1, 300], [2, 257, 33], [1, 9, 64]];
      // Block formats: k a whole number of blocks (32 or 256 values).
      const blockShapes = (per: number): [number, number, number][] =>
        per === 32 ? [[1, 7, 32], [3, 130, 96], [17, 33, 256], [1, 300, 512], [5, 1, 64], [38, 35, 64]] : [[1, 7, 256], [3, 130, 512], [17, 33, 256], [2, 257, 768], [5, 1, 256], [38, 35, 256]];
      for (const f of ALL_FORMATS) {
        for (const [n, m, k] of blockValues(f.format) > 1 ? blockShapes(blockValues(f.format)) : shapes) {
          const name = `${formatName(f)} x[${n}, ${k}] · w[${m}, ${k}]^T`;
          it(name, whenSupported([f], async () => {
            const rng = rngFor(`matmul ${name}`);
            const hw = randomWeight(rng, f, m, k, 0.5);
            const x = randMat(rng, n, k, -2, 2);
            const y = b.matmul(host(x), up(hw));
            const block = q8Block(f.format, n);
            if (!block) {
              await expectClose(y, ref.refMatmul(x, hw), name);
              return;
            }
            const { q, step } = quantizeQ8Rows(x, block);
            await expectClose(y, ref.refMatmul(q, hw), `${name} (reference on the same q8 activations)`);
            await expectClose(y, ref.refMatmul(x, hw), `${name} (exact reference, q8 slack)`, { slack: q8Slack(ref.dequantize(hw), step, n) });
          }));
        }
      }

      it('the same weight serves several inputs (decode after prefill)', whenSupported([FORMATS[4]], async () => {
        const rng = rngFor('matmul.reuse');
        const hw = randomWeight(rng, { format: 'fp8_e4m3_block', block: [4, 8] }, 21, 19);
        const w = up(hw);
        for (const n of [6, 1, 3]) {
          const x = randMat(rng, n, 19);
          await expectClose(b.matmul(host(x), w), ref.refMatmul(x, hw), `n=${n}`);
        }
      }));
    });

    // ---- embedding ------------------------------------------------------------------

    describe('embedding', () => {
      for (const f of ALL_FORMATS) {
        const name = `${formatName(f)} table, ids with -1 and repeats`;
        it(name, whenSupported([f], async () => {
          const rng = rngFor(`embedding ${name}`);
          const big = f.block?.[0] === 128;
          const per = blockValues(f.format);
          const vocab = big ? 300 : 37, d = big ? 130 : per > 1 ? 2 * per : 19;
          const hw = randomWeight(rng, f, vocab, d);
          const ids = Int32Array.from([3, -1, 0, vocab - 1, 3, -1, 17, big ? 257 : 30]);
          const t = b.embedding(up(hw), ids);
          const expected = ref.refEmbedding(hw, ids);
          await expectClose(t, expected, name);
          const got = await b.read(t);
          for (const row of [1, 5]) {
            for (let c = 0; c < d; c++) assert.ok(Object.is(got[row * d + c], 0), `id -1 (row ${row}) must give +0, got ${got[row * d + c]} at column ${c}`);
          }
        }));
      }

      for (const f of BLOCK_FORMATS) {
        it(`decodes ${f.format} blocks (every quant code, every sub-block scale; per-element relative tolerance)`, whenSupported([f], async () => {
          // 64 rows of 4 blocks of random bytes: each code and scale byte value occurs many times.
          // ggml decodes in float32 with one rounding per element; the reference is exact.
          const rng = rngFor(`embedding.blocks ${f.format}`);
          const per = blockValues(f.format);
          const hw = randomWeight(rng, f, 64, 4 * per, 3, `${f.format}.codes`);
          const ids = Int32Array.from({ length: hw.rows }, (_, i) => i);
          const expected = ref.refEmbedding(hw, ids);
          const got = await b.read(b.embedding(up(hw), ids));
          for (let i = 0; i < got.length; i++) {
            const e = expected.data[i];
            if (!(Math.abs(got[i] - e) <= tol * Math.abs(e) + Math.pow(2, -126))) {
              assert.fail(`${f.format}: element [${Math.floor(i / hw.cols)}, ${i % hw.cols}] decodes to ${got[i]}, expected ${e}`);
            }
          }
        }));
      }

      it('decodes every finite f16, bf16 and e4m3 code (per-element relative tolerance)', whenSupported([FORMATS[1], FORMATS[2], FORMATS[3]], async () => {
        // Decoding is exact in float32 (fp8: one rounding of code * scale); f16 subnormals are
        // normal float32 numbers and must not be flushed. Only float32 denormals (bf16 codes with
        // a zero exponent) may flush to zero.
        const FLT_MIN = Math.pow(2, -126);
        async function decodeAll(hw: HostWeight, what: string): Promise<void> {
          const ids = Int32Array.from({ length: hw.rows }, (_, i) => i);
          const expected = ref.refEmbedding(hw, ids);
          const got = await b.read(b.embedding(up(hw), ids));
          assert.equal(got.length, expected.data.length, `${what}: length`);
          for (let i = 0; i < got.length; i++) {
            const e = expected.data[i];
            if (!(Math.abs(got[i] - e) <= tol * Math.abs(e) + FLT_MIN)) {
              assert.fail(`${what}: code at [${Math.floor(i / hw.cols)}, ${i % hw.cols}] decodes to ${got[i]}, expected ${e}`);
            }
          }
        }
        // f16: row = sign * 31 + exponent (0..30), column = mantissa.
        const f16 = new Uint16Array(62 * 1024);
        for (let r = 0; r < 62; r++) for (let m = 0; m < 1024; m++) f16[r * 1024 + m] = (r >= 31 ? 0x8000 : 0) | ((r % 31) << 10) | m;
        await decodeAll({ name: 'f16.codes', format: 'f16', rows: 62, cols: 1024, data: f16 }, 'f16');
        // bf16: row = sign * 255 + exponent (0..254), column = mantissa.
        const bf = new Uint16Array(510 * 128);
        for (let r = 0; r < 510; r++) for (let m = 0; m < 128; m++) bf[r * 128 + m] = (r >= 255 ? 0x8000 : 0) | ((r % 255) << 7) | m;
        await decodeAll({ name: 'bf16.codes', format: 'bf16', rows: 510, cols: 128, data: bf }, 'bf16');
        // e4m3: two rows of the 127 finite codes per sign, blocks [1, 64], four different scales.
        const f8 = new Uint8Array(2 * 127);
        for (let c = 0; c < 127; c++) { f8[c] = c; f8[127 + c] = 0x80 | c; }
        await decodeAll({
          name: 'e4m3.codes', format: 'fp8_e4m3_block', rows: 2, cols: 127, data: f8,
          scales: Float32Array.from([1, 0.5, 3, 1 / 448]), blockRows: 1, blockCols: 64,
        }, 'e4m3');
      }));

      it('a single id (decode)', whenSupported([FORMATS[2]], async () => {
        const rng = rngFor('embedding.single');
        const hw = randomWeight(rng, { format: 'bf16' }, 50, 24);
        await expectClose(b.embedding(up(hw), Int32Array.of(49)), ref.refEmbedding(hw, [49]), 'id 49');
        await expectClose(b.embedding(up(hw), Int32Array.of(-1)), ref.refEmbedding(hw, [-1]), 'id -1');
      }));
    });

    // ---- elementwise ----------------------------------------------------------------

    describe('rmsNorm', () => {
      for (const f of [FORMATS[0], FORMATS[1], FORMATS[2], ...BLOCK_FORMATS]) {
        it(`${formatName(f)} weight, rows of different scales, a zero row`, whenSupported([f], async () => {
          const rng = rngFor(`rmsnorm ${formatName(f)}`);
          const d = blockValues(f.format) > 1 ? blockValues(f.format) : 37;
          const x = randMat(rng, 5, d);
          for (let c = 0; c < d; c++) {
            x.data[1 * d + c] *= 100;
            x.data[2 * d + c] *= 1e-3; // mean square ~ eps: eps must sit inside the sqrt
            x.data[3 * d + c] = 0;
          }
          const hw = randomWeight(rng, f, 1, d, 2);
          await expectClose(b.rmsNorm(host(x), up(hw), 1e-6), ref.refRmsNorm(x, hw, 1e-6), 'eps 1e-6');
          await expectClose(b.rmsNorm(host(x), up(hw), 1e-2), ref.refRmsNorm(x, hw, 1e-2), 'eps 1e-2');
        }));
      }

      it('one wide row (decode)', whenSupported([FORMATS[2]], async () => {
        const rng = rngFor('rmsnorm.wide');
        const x = randMat(rng, 1, 1031, -3, 3);
        const hw = randomWeight(rng, { format: 'bf16' }, 1, 1031);
        await expectClose(b.rmsNorm(host(x), up(hw), 1e-6), ref.refRmsNorm(x, hw, 1e-6), 'rmsNorm [1, 1031]');
      }));
    });

    describe('add and swiglu', () => {
      it('add', async () => {
        const rng = rngFor('add');
        const a = randMat(rng, 6, 45, -10, 10), c = randMat(rng, 6, 45, -10, 10);
        await expectClose(b.add(host(a), host(c)), ref.refAdd(a, c), 'add');
      });

      it('swiglu, including saturated gates', async () => {
        const rng = rngFor('swiglu');
        const g = randMat(rng, 6, 45, -30, 30), u = randMat(rng, 6, 45, -3, 3);
        g.data[0] = 90; g.data[1] = -90; g.data[2] = 0; g.data[3] = -1e-3; g.data[4] = 15.5;
        await expectClose(b.swiglu(host(g), host(u)), ref.refSwiglu(g, u), 'swiglu');
        const g1 = randMat(rng, 1, 10, -5, 5), u1 = randMat(rng, 1, 10);
        await expectClose(b.swiglu(host(g1), host(u1)), ref.refSwiglu(g1, u1), 'swiglu n=1');
      });
    });

    // ---- data movement --------------------------------------------------------------

    describe('sliceCols, concatCols, gatherRows (exact)', () => {
      it('sliceCols: start, middle, end, whole', async () => {
        const rng = rngFor('slice');
        const x = randMat(rng, 5, 23);
        const tx = host(x);
        for (const [s, n] of [[0, 7], [7, 9], [22, 1], [0, 23], [11, 12]]) {
          await expectExact(b.sliceCols(tx, s, n), ref.refSliceCols(x, s, n), `sliceCols(${s}, ${n})`);
        }
      });

      it('concatCols, including one-column sides', async () => {
        const rng = rngFor('concat');
        for (const [ca, cb] of [[10, 4], [1, 9], [9, 1], [64, 64]]) {
          const a = randMat(rng, 4, ca), c = randMat(rng, 4, cb);
          await expectExact(b.concatCols(host(a), host(c)), ref.refConcatCols(a, c), `concat ${ca}|${cb}`);
        }
      });

      it('gatherRows: repeats, reversal, a single row', async () => {
        const rng = rngFor('gather');
        const x = randMat(rng, 6, 11);
        const tx = host(x);
        for (const rows of [[5, 0, 5, 2], [5, 4, 3, 2, 1, 0], [3]]) {
          await expectExact(b.gatherRows(tx, Int32Array.from(rows)), ref.refGatherRows(x, rows), `gather [${rows}]`);
        }
      });
    });

    // ---- rope -------------------------------------------------------------------------

    describe('rope (adjacent pairs)', () => {
      /** Allowed extra error: forming the angle in float32 (DeepSeek's reference does). */
      function angleSlack(x: Mat, positions: ArrayLike<number>, invFreq: ArrayLike<number>, heads: number, stride: number, offset: number): Float64Array {
        const slack = new Float64Array(x.data.length);
        for (let r = 0; r < x.rows; r++) {
          for (let h = 0; h < heads; h++) {
            for (let i = 0; i < invFreq.length; i++) {
              const c = r * x.cols + h * stride + offset + 2 * i;
              const norm = Math.hypot(x.data[c], x.data[c + 1]);
              const err = 4 * Math.pow(2, -24) * Math.abs(positions[r] * invFreq[i]) * norm;
              slack[c] = slack[c + 1] = err;
            }
          }
        }
        return slack;
      }

      const cases: { name: string; heads: number; stride: number; offset: number; invFreq: Float32Array; n: number }[] = [
        { name: 'q layout: 3 heads, [nope 4 | rope 6]', heads: 3, stride: 10, offset: 4, invFreq: plainInvFreq(6, 10000), n: 7 },
        { name: 'shared rope key: 1 head, offset 0', heads: 1, stride: 8, offset: 0, invFreq: plainInvFreq(8, 10000), n: 5 },
        { name: '5 heads, odd stride 7, offset 1, trailing column copied', heads: 5, stride: 7, offset: 1, invFreq: plainInvFreq(4, 500), n: 4 },
        { name: 'YaRN frequencies (factor 40), 3 heads, [nope 5 | rope 8]', heads: 3, stride: 13, offset: 5, invFreq: yarnInvFreq(8, 10000, 40, 4096, 32, 1), n: 6 },
        { name: 'decode: one row at position 4999', heads: 3, stride: 10, offset: 4, invFreq: plainInvFreq(6, 10000), n: 1 },
      ];
      for (const c of cases) {
        it(c.name, async () => {
          const rng = rngFor(`rope ${c.name}`);
          const x = randMat(rng, c.n, c.heads * c.stride, -2, 2);
          const pos = new Int32Array(c.n);
          const fixed = [0, 1, 2, 4999, 5000, 37, 1024];
          for (let i = 0; i < c.n; i++) pos[i] = c.n === 1 ? 4999 : i < fixed.length ? fixed[i] : rng.int(5001);
          const tx = host(x);
          const expected = ref.refRope(x, pos, c.invFreq, c.heads, c.stride, c.offset);
          await expectClose(b.rope(tx, pos, c.invFreq, c.heads, c.stride, c.offset), expected, 'rope', {
            slack: angleSlack(x, pos, c.invFreq, c.heads, c.stride, c.offset),
          });
          // (Columns outside the rotated slice are part of the comparison above.) The input is not modified.
          compareExact(await b.read(tx), x.data, 'rope input after the op', x.cols);
        });
      }
    });

    // ---- latent cache and attention ---------------------------------------------------

    describe('writeKV + mlaAttention (paged, absorbed vs expanded)', () => {
      interface Step {
        /** Per token: [sequence, position]. */
        tokens: [number, number][];
      }

      /**
       * Drives the backend and the reference through the same steps: the pool is first filled
       * with junk everywhere, then each step writes its tokens' rows (in every layer) and runs
       * attention in every layer, comparing outputs.
       */
      async function scenario(name: string, shape: MlaShape, kvBSpec: FormatSpec, o: {
        layers: number; numBlocks: number; blockSize: number; tables: number[][]; steps: Step[];
        /** Between steps: copy blocks (copy-on-write), then use new tables. */
        copies?: { afterStep: number; src: number[]; dst: number[]; tables: number[][] }[];
      }): Promise<void> {
        const rng = rngFor(`mla ${name}`);
        const width = shape.kvRank + shape.ropeDim;
        const pool = b.createKVPool(o.layers, o.numBlocks, o.blockSize, width);
        const rp = new ref.RefKVPool(o.layers, o.numBlocks, o.blockSize, width);
        const kvB: HostWeight[] = [];
        const kvBDev: DeviceWeight[] = [];
        for (let l = 0; l < o.layers; l++) {
          kvB.push(randomWeight(rng, kvBSpec, shape.heads * (shape.nopeDim + shape.vDim), shape.kvRank, 0.5, `kv_b.${l}`));
          kvBDev.push(up(kvB[l]));
        }
        // Junk in every slot of every layer: attending outside the causal extent or the block table shows.
        const all = Int32Array.from({ length: o.numBlocks }, (_, i) => i);
        const junkBatch: AttentionBatch = {
          positions: Int32Array.from({ length: o.numBlocks * o.blockSize }, (_, i) => i),
          seqIndex: new Int32Array(o.numBlocks * o.blockSize),
          blockTables: [all],
        };
        for (let l = 0; l < o.layers; l++) {
          const junk = randMat(rng, o.numBlocks * o.blockSize, width, -4, 4);
          b.writeKV(pool, l, host(junk), junkBatch);
          ref.refWriteKV(rp, l, junk, junkBatch);
        }
        let tables = o.tables.map((t) => Int32Array.from(t));
        for (let s = 0; s < o.steps.length; s++) {
          const step = o.steps[s];
          const batch: AttentionBatch = {
            positions: Int32Array.from(step.tokens.map((t) => t[1])),
            seqIndex: Int32Array.from(step.tokens.map((t) => t[0])),
            blockTables: tables,
          };
          const n = step.tokens.length;
          for (let l = 0; l < o.layers; l++) {
            const kv = randMat(rng, n, width);
            b.writeKV(pool, l, host(kv), batch);
            ref.refWriteKV(rp, l, kv, batch);
          }
          // Tokens whose sequence the backend attends through q8-quantized latents (mlaQ8Latents).
          const perSeq = new Map<number, number>(), lengthOf = new Map<number, number>();
          for (const [seq, p] of step.tokens) {
            perSeq.set(seq, (perSeq.get(seq) ?? 0) + 1);
            lengthOf.set(seq, Math.max(lengthOf.get(seq) ?? 0, p + 1));
          }
          const q8Of = step.tokens.map(([seq]) => opts.mlaQ8Latents?.(kvBSpec.format, perSeq.get(seq)!, lengthOf.get(seq)!, shape) ?? 0);
          const q8Block = Math.max(0, ...q8Of);
          for (let l = 0; l < o.layers; l++) {
            const q = randMat(rng, n, shape.heads * (shape.nopeDim + shape.ropeDim), -1.5, 1.5);
            const expected = ref.refMlaAttention(q, kvB[l], rp, l, batch, shape);
            if (q8Block > 0) {
              const fromQ8 = ref.refMlaAttention(q, kvB[l], quantizedLatents(rp, shape.kvRank, q8Block), l, batch, shape);
              const w = expected.cols;
              q8Of.forEach((blk, t) => { if (blk > 0) expected.data.set(fromQ8.data.subarray(t * w, (t + 1) * w), t * w); });
            }
            await expectClose(b.mlaAttention(host(q), kvBDev[l], pool, l, batch, shape), expected, `step ${s}, layer ${l}`);
          }
          for (const cp of o.copies ?? []) {
            if (cp.afterStep !== s) continue;
            b.copyBlocks(pool, Int32Array.from(cp.src), Int32Array.from(cp.dst));
            ref.refCopyBlocks(rp, cp.src, cp.dst);
            tables = cp.tables.map((t) => Int32Array.from(t));
          }
        }
      }

      const small: MlaShape = { heads: 3, nopeDim: 6, ropeDim: 4, vDim: 5, kvRank: 10, softmaxScale: 0.59 };
      const range = (seq: number, from: number, to: number): [number, number][] =>
        Array.from({ length: to - from }, (_, i) => [seq, from + i] as [number, number]);

      /**
       * Block size 4, non-contiguous tables. Sequence 0: [7, 2, 5]; 1: [3, 10, 1]; 2: [11, 4]
       * (allocated ahead). Step 0: prefill of 0 (9 tokens) and 1 (5 tokens), interleaved in one
       * batch (causal within the batch). Step 1: decode of 0 at 9, a prefill chunk of 1 at 5..7,
       * a new sequence 2 at 0. Step 2: decode everyone.
       */
      const mixedSteps: Step[] = [
        { tokens: [...range(1, 0, 2), ...range(0, 0, 5), ...range(1, 2, 5), ...range(0, 5, 9)] },
        { tokens: [[0, 9], ...range(1, 5, 8), [2, 0]] },
        { tokens: [[2, 1], [0, 10], [1, 8]] },
      ];
      const mixedTables = [[7, 2, 5], [3, 10, 1], [11, 4]];

      for (const f of [FORMATS[0], FORMATS[2], FORMATS[1], FORMATS[4], FORMATS[3], ...BLOCK_FORMATS]) {
        // Block formats need the latent rank (kv_b's columns) to be whole blocks.
        const shape = blockValues(f.format) > 1 ? { ...small, kvRank: blockValues(f.format) } : small;
        it(`kv_b ${formatName(f)}: mixed prefill/decode batches, 2 layers, block size 4, tables [7,2,5] [3,10,1] [11,4]`, whenSupported([f], async () => {
          await scenario(`mixed ${formatName(f)}`, shape, f, { layers: 2, numBlocks: 12, blockSize: 4, tables: mixedTables, steps: mixedSteps });
        }));
      }

      it('a single token at position 0 (attends only to itself)', whenSupported([FORMATS[0]], async () => {
        await scenario('single', small, FORMATS[0], { layers: 1, numBlocks: 3, blockSize: 4, tables: [[2]], steps: [{ tokens: [[0, 0]] }] });
      }));

      it('copyBlocks: a forked sequence sees copies in every layer, the source is untouched', whenSupported([FORMATS[2]], async () => {
        // Sequence 0 fills blocks [7, 2] and half of 5; blocks 7 and 2 are copied to 0 and 6 for
        // sequence 1 = [0, 6, 8], which then diverges at position 8 while 0 goes on at 9.
        await scenario('copy', small, FORMATS[2], {
          layers: 3, numBlocks: 12, blockSize: 4, tables: [[7, 2, 5]],
          steps: [{ tokens: range(0, 0, 9) }, { tokens: [[1, 8], [0, 9]] }, { tokens: [[0, 10], [1, 9], [1, 10]] }],
          copies: [{ afterStep: 0, src: [7, 2], dst: [0, 6], tables: [[7, 2, 5], [0, 6, 8]] }],
        });
      }));

      it('larger: 4 heads, rank 64, block size 16, 133-token prefill in chunks, shuffled blocks', whenSupported([FORMATS[3]], async () => {
        const shape: MlaShape = { heads: 4, nopeDim: 16, ropeDim: 8, vDim: 12, kvRank: 64, softmaxScale: 1 / Math.sqrt(24) };
        const perm = [9, 3, 14, 0, 11, 6, 1, 12, 5, 15];
        await scenario('large', shape, FORMATS[3], {
          layers: 1, numBlocks: 16, blockSize: 16, tables: [perm, [2, 8, 13, 4, 10, 7]],
          steps: [
            { tokens: [...range(0, 0, 100), ...range(1, 0, 37)] },
            { tokens: [...range(1, 37, 41), ...range(0, 100, 133)] },
            { tokens: [[0, 133], [1, 41]] },
          ],
        });
      }));
    });

    // ---- routing ----------------------------------------------------------------------

    describe('route + readRouting', () => {
      /** Compares per token as sets of (id, weight): the order of a token's K entries is free. */
      async function expectRouting(logits: Mat, bias: HostWeight | null, cfg: RouterConfig, what: string): Promise<ref.RefRouting> {
        const expected = ref.refRoute(logits, bias, cfg);
        const r = b.route(host(logits), bias ? up(bias) : null, cfg);
        assert.equal(r.tokens, logits.rows, `${what}: tokens`);
        assert.equal(r.topK, cfg.topK, `${what}: topK`);
        const got = await b.readRouting(r);
        const K = cfg.topK;
        assert.equal(got.ids.length, logits.rows * K, `${what}: ids length`);
        assert.equal(got.weights.length, logits.rows * K, `${what}: weights length`);
        for (let t = 0; t < logits.rows; t++) {
          const pairs = (ids: ArrayLike<number>, ws: ArrayLike<number>) =>
            Array.from({ length: K }, (_, k) => ({ id: ids[t * K + k], w: ws[t * K + k] })).sort((x, y) => x.id - y.id);
          const g = pairs(got.ids, got.weights), e = pairs(expected.ids, expected.weights);
          assert.deepEqual(g.map((p) => p.id), e.map((p) => p.id), `${what}: experts of token ${t}`);
          const wm = toMat(1, K, e.map((p) => p.w));
          compare(Float32Array.from(g.map((p) => p.w)), wm, `${what}: weights of token ${t}`, { tol });
        }
        return expected;
      }

      /** Random logits whose choice is decided by at least `minGap` at every boundary. */
      function clearLogits(rng: Prng, n: number, E: number, bias: HostWeight | null, cfg: RouterConfig, spread: number): Mat {
        const rows: number[] = [];
        for (let t = 0; t < n; t++) {
          for (let attempt = 0; ; attempt++) {
            if (attempt === 1000) throw new Error('cannot draw logits with a clear routing decision');
            const row = randMat(rng, 1, E, -spread, spread);
            if (ref.refRoute(row, bias, cfg).margin > 1e-3) { rows.push(...row.data); break; }
          }
        }
        return toMat(n, E, rows);
      }

      const variants: { name: string; E: number; n: number; bias: boolean; cfg: RouterConfig }[] = [
        { name: 'softmax greedy (V2-Lite: 64 experts, top 6)', E: 64, n: 7, bias: false,
          cfg: { topK: 6, scoring: 'softmax', nGroup: 1, topkGroup: 1, groupScore: 'max', normalize: false, scale: 1 } },
        { name: 'softmax greedy, normalized, top 4 of 16, n=1', E: 16, n: 1, bias: false,
          cfg: { topK: 4, scoring: 'softmax', nGroup: 1, topkGroup: 1, groupScore: 'max', normalize: true, scale: 1 } },
        { name: 'softmax group max (nGroup 4, topkGroup 2), scale 16', E: 16, n: 9, bias: false,
          cfg: { topK: 3, scoring: 'softmax', nGroup: 4, topkGroup: 2, groupScore: 'max', normalize: false, scale: 16 } },
        { name: 'sigmoid + bias, top2sum (nGroup 4, topkGroup 2), normalized, scale 2.5', E: 32, n: 8, bias: true,
          cfg: { topK: 4, scoring: 'sigmoid', nGroup: 4, topkGroup: 2, groupScore: 'top2sum', normalize: true, scale: 2.5 } },
        { name: 'V3 shape: sigmoid + bias, 256 experts, 8 groups keep 4, top 8', E: 256, n: 5, bias: true,
          cfg: { topK: 8, scoring: 'sigmoid', nGroup: 8, topkGroup: 4, groupScore: 'top2sum', normalize: true, scale: 2.5 } },
        { name: 'sigmoid + bias, no groups, not normalized', E: 12, n: 4, bias: true,
          cfg: { topK: 2, scoring: 'sigmoid', nGroup: 1, topkGroup: 1, groupScore: 'top2sum', normalize: false, scale: 1 } },
      ];
      for (const v of variants) {
        it(v.name, async () => {
          const rng = rngFor(`route ${v.name}`);
          const bias = v.bias ? f32Weight('bias', 1, v.E, rng.floats(v.E, -0.3, 0.3)) : null;
          const logits = clearLogits(rng, v.n, v.E, bias, v.cfg, v.cfg.scoring === 'softmax' ? 3 : 4);
          await expectRouting(logits, bias, v.cfg, v.name);
        });
      }

      it('readRouting returns copies: mutating them changes neither the routing nor moe', whenSupported([FORMATS[0]], async () => {
        const rng = rngFor('route.copy');
        const cfg: RouterConfig = { topK: 2, scoring: 'softmax', nGroup: 1, topkGroup: 1, groupScore: 'max', normalize: true, scale: 1 };
        const logits = clearLogits(rng, 3, 4, null, cfg, 3);
        const ex: ref.RefExpert[] = Array.from({ length: 4 }, (_, e) => ({
          gate: randomWeight(rng, FORMATS[0], 5, 6, 1, `e${e}.gate`),
          up: randomWeight(rng, FORMATS[0], 5, 6, 1, `e${e}.up`),
          down: randomWeight(rng, FORMATS[0], 6, 5, 1, `e${e}.down`),
        }));
        const x = randMat(rng, 3, 6);
        const routing = b.route(host(logits), null, cfg);
        const first = await b.readRouting(routing);
        const ids = Int32Array.from(first.ids), weights = Float32Array.from(first.weights);
        first.ids.fill(3);
        first.weights.fill(100);
        const again = await b.readRouting(routing);
        assert.deepEqual([...again.ids], [...ids], 'ids read after mutating an earlier read');
        assert.deepEqual([...again.weights], [...weights], 'weights read after mutating an earlier read');
        const dev: ExpertWeights[] = ex.map((e) => ({ gate: up(e.gate), up: up(e.up), down: up(e.down) }));
        await expectClose(b.moe(host(x), routing, dev), ref.refMoe(x, { topK: 2, ids, weights }, ex), 'moe after mutating readRouting output');
      }));

      it('bias only selects: a biased-in expert keeps its unbiased weight', whenSupported([FORMATS[0], FORMATS[2]], async () => {
        const cfg: RouterConfig = { topK: 2, scoring: 'sigmoid', nGroup: 1, topkGroup: 1, groupScore: 'top2sum', normalize: false, scale: 1 };
        const logits = toMat(1, 6, [2, 1, 0, -3, 0.5, -1]);
        const bias = f32Weight('bias', 1, 6, [0, 0, 0, 5, 0, 0]); // expert 3: sigmoid(-3) ~ 0.047, chosen anyway
        const e = await expectRouting(logits, bias, cfg, 'biased');
        assert.deepEqual([...e.ids].sort(), [0, 3]);
        const withBf16Bias: HostWeight = { name: 'bias.bf16', format: 'bf16', rows: 1, cols: 6, data: Uint16Array.from([0, 0, 0, 5, 0, 0].map(bf16Truncate)) };
        await expectRouting(logits, withBf16Bias, cfg, 'bf16 bias');
      }));

      it('ties go to the lower expert id', async () => {
        const greedy = (topK: number): RouterConfig => ({ topK, scoring: 'softmax', nGroup: 1, topkGroup: 1, groupScore: 'max', normalize: false, scale: 1 });
        let e = await expectRouting(toMat(1, 8, [0, 0, 0, 0, 0, 0, 0, 0]), null, greedy(3), 'all equal');
        assert.deepEqual([...e.ids].sort(), [0, 1, 2]);
        e = await expectRouting(toMat(2, 8, [0, 2, 1, 2, 2, -1, 0, 2, 5, 1, 1, 1, 1, 1, 1, 1]), null, greedy(2), 'partial ties');
        assert.deepEqual([...e.ids.slice(0, 2)].sort(), [1, 3]);
        assert.deepEqual([...e.ids.slice(2, 4)].sort(), [0, 1]);
        const sig: RouterConfig = { topK: 3, scoring: 'sigmoid', nGroup: 1, topkGroup: 1, groupScore: 'top2sum', normalize: true, scale: 2.5 };
        e = await expectRouting(toMat(1, 8, [0, 0, 0, 0, 0, 0, 0, 0]), f32Weight('bias', 1, 8, [0, 0, 0.125, 0, 0.125, 0, 0, 0.125]), sig, 'tied biased');
        assert.deepEqual([...e.ids].sort(), [2, 4, 7]);
      });

      it('group ties go to the lower group id; masked groups are never chosen', async () => {
        const cfg: RouterConfig = { topK: 2, scoring: 'softmax', nGroup: 4, topkGroup: 2, groupScore: 'max', normalize: true, scale: 1 };
        // Groups of 2: max = [0, 3, 3, 3] -> keep groups 1 and 2; expert 6 (3, in group 3) is masked.
        let e = await expectRouting(toMat(1, 8, [0, -1, 3, 0, 0, 3, 3, 1]), null, cfg, 'group max ties');
        assert.deepEqual([...e.ids].sort(), [2, 5]);
        const v3: RouterConfig = { topK: 2, scoring: 'sigmoid', nGroup: 4, topkGroup: 1, groupScore: 'top2sum', normalize: true, scale: 2.5 };
        // sigmoid(0) = 0.5; top2sum per group with these (dyadic) biases: [1.125, 1.25, 1.25, 1.0] -> group 1 only.
        e = await expectRouting(toMat(1, 8, [0, 0, 0, 0, 0, 0, 0, 0]), f32Weight('bias', 1, 8, [0.5, -0.375, 0.125, 0.125, 0.25, 0, 0.75, -0.75]), v3, 'top2sum ties');
        assert.deepEqual([...e.ids].sort(), [2, 3]);
      });
    });

    // ---- moe --------------------------------------------------------------------------

    describe('moe', () => {
      function experts(rng: Prng, count: number, d: number, inter: number, specs: [FormatSpec, FormatSpec, FormatSpec]): ref.RefExpert[] {
        return Array.from({ length: count }, (_, e) => ({
          gate: randomWeight(rng, specs[0], inter, d, 0.5, `e${e}.gate`),
          up: randomWeight(rng, specs[1], inter, d, 0.5, `e${e}.up`),
          down: randomWeight(rng, specs[2], d, inter, 0.5, `e${e}.down`),
        }));
      }

      async function check(name: string, n: number, d: number, inter: number, E: number, cfg: RouterConfig, specs: [FormatSpec, FormatSpec, FormatSpec], unused: number[], opt: { bias?: boolean; sameExpert?: number } = {}): Promise<void> {
        const rng = rngFor(`moe ${name}`);
        const ex = experts(rng, E, d, inter, specs);
        const dev: ExpertWeights[] = ex.map((x) => ({ gate: up(x.gate), up: up(x.up), down: up(x.down) }));
        const logits = randMat(rng, n, E, -2, 2);
        for (let t = 0; t < n; t++) {
          for (const u of unused) logits.data[t * E + u] = -50;
          if (opt.sameExpert !== undefined) logits.data[t * E + opt.sameExpert] = 30;
        }
        const bias = opt.bias ? f32Weight('bias', 1, E, rng.floats(E, -0.1, 0.1)) : null;
        const x = randMat(rng, n, d, -2, 2);
        const routing = b.route(host(logits), bias ? up(bias) : null, cfg);
        const got = await b.readRouting(routing);
        for (const id of got.ids) assert.ok(!unused.includes(id), `expert ${id} should be unused`);
        // The moe op is checked against the routing the backend itself chose (route has its own tests).
        const r = { topK: cfg.topK, ids: got.ids, weights: got.weights };
        const expected = opts.q8Activations ? refMoeQ8(x, r, ex, q8Block) : ref.refMoe(x, r, ex);
        await expectClose(b.moe(host(x), routing, dev), expected, name);
      }

      const softmax = (topK: number): RouterConfig => ({ topK, scoring: 'softmax', nGroup: 1, topkGroup: 1, groupScore: 'max', normalize: true, scale: 1 });
      const f32: FormatSpec = FORMATS[0], bf16: FormatSpec = FORMATS[2], f16: FormatSpec = FORMATS[1], fp8: FormatSpec = FORMATS[4];

      const moeCase = (name: string, specs: [FormatSpec, FormatSpec, FormatSpec], run: () => Promise<void>) => it(name, whenSupported(specs, run));
      moeCase('f32 experts: 6 experts, top 2, experts 1 and 4 unused, 5 tokens', [f32, f32, f32], () =>
        check('f32', 5, 24, 10, 6, softmax(2), [f32, f32, f32], [1, 4]));
      moeCase('bf16 experts, decode (1 token)', [bf16, bf16, bf16], () => check('bf16 decode', 1, 24, 10, 6, softmax(2), [bf16, bf16, bf16], [0]));
      moeCase('fp8 [4x8] experts (partial blocks), 7 tokens, top 3 of 8', [fp8, fp8, fp8], () =>
        check('fp8', 7, 19, 13, 8, softmax(3), [fp8, fp8, fp8], [2, 5, 7]));
      moeCase('fp8 [128x128] experts, 3 tokens, 130 wide', [FORMATS[3], FORMATS[3], FORMATS[3]], () => check('fp8-128', 3, 130, 129, 4, softmax(2), [FORMATS[3], FORMATS[3], FORMATS[3]], [3]));
      moeCase('mixed formats per projection (bf16 gate, f16 up, fp8 down)', [bf16, f16, fp8], () =>
        check('mixed', 4, 16, 9, 5, softmax(2), [bf16, f16, fp8], [4]));
      moeCase('every token picks the same expert', [f32, bf16, f32], () => check('same', 6, 12, 8, 5, softmax(2), [f32, bf16, f32], [], { sameExpert: 3 }));
      moeCase('sigmoid + bias routing with groups, weights scaled by 2.5', [bf16, bf16, bf16], () =>
        check('sigmoid', 6, 20, 7, 16, { topK: 4, scoring: 'sigmoid', nGroup: 4, topkGroup: 2, groupScore: 'top2sum', normalize: true, scale: 2.5 }, [bf16, bf16, bf16], [0, 9], { bias: true }));
      const [q8, q4, q4k, q6k] = BLOCK_FORMATS;
      moeCase('q8_0 experts, 5 tokens, top 2 of 6', [q8, q8, q8], () => check('q8_0', 5, 64, 32, 6, softmax(2), [q8, q8, q8], [1]));
      moeCase('k-quant experts (q4_k gate/up, q6_k down, as llama.cpp\'s Q4_K_M mixes them), 4 tokens', [q4k, q4k, q6k], () =>
        check('k-quants', 4, 256, 256, 5, softmax(2), [q4k, q4k, q6k], [2]));
      moeCase('mixed block and element formats (q4_0 gate, bf16 up, q8_0 down)', [q4, bf16, q8], () =>
        check('mixed blocks', 3, 64, 32, 4, softmax(2), [q4, bf16, q8], [0]));
      // Decode (1 token) with widths of whole 32-value blocks: the kernels' one-token paths.
      moeCase('q8_0 experts, decode (1 token), 3 blocks a row', [q8, q8, q8], () => check('q8_0 decode', 1, 96, 64, 6, softmax(2), [q8, q8, q8], [1]));
      moeCase('k-quant experts, decode (1 token)', [q4k, q4k, q6k], () => check('k-quants decode', 1, 256, 256, 5, softmax(2), [q4k, q4k, q6k], [2]));
      moeCase('mixed block and element formats, decode (1 token)', [q4, bf16, q8], () => check('mixed blocks decode', 1, 64, 32, 4, softmax(2), [q4, bf16, q8], [0]));
    });

    // ---- argmaxRows -------------------------------------------------------------------

    describe('argmaxRows', () => {
      it('ties go to the lowest index; negative rows; -Infinity', async () => {
        const rows = [
          [1, 3, 3, 2, 3],
          [7, 7, 7, 7, 7],
          [-5, -2, -9, -2, -3],
          [-Infinity, -Infinity, -1e30, -Infinity, -Infinity],
          [0, 0, 0, 0, 1],
          [-0, 0, -0, 0, -0],
        ];
        const x = toMat(rows.length, 5, rows.flat());
        assert.deepEqual([...(await b.argmaxRows(host(x)))], [...ref.refArgmaxRows(x)]);
        assert.deepEqual([...ref.refArgmaxRows(x)], [1, 0, 1, 2, 4, 0]);
      });

      it('random rows, and a vocabulary-sized row with a far tie', async () => {
        const rng = rngFor('argmax');
        const x = randMat(rng, 9, 1001, -10, 10);
        assert.deepEqual([...(await b.argmaxRows(host(x)))], [...ref.refArgmaxRows(x)]);
        const V = 129280;
        const big = randMat(rng, 2, V, -10, 10);
        big.data[V + 5] = 20; big.data[V + 120000] = 20; big.data[V - 1] = 11;
        assert.deepEqual([...(await b.argmaxRows(host(big)))], [V - 1, 5]);
      });
    });

    // ---- composition --------------------------------------------------------------

    describe('composition', () => {
      it('ops consume other ops\' outputs (slices, concat, gather) and leave their inputs alone', whenSupported([FORMATS[4], FORMATS[2]], async () => {
        const rng = rngFor('composition');
        const x = randMat(rng, 5, 30);
        const hw = randomWeight(rng, FORMATS[4], 14, 12);
        const norm = randomWeight(rng, FORMATS[2], 1, 14);
        const invFreq = plainInvFreq(4, 10000);
        const pos = Int32Array.from([3, 0, 17, 4000, 9]);
        const tx = host(x);
        // slice -> matmul -> rmsNorm -> rope -> concat with another slice -> gather -> add -> argmax
        const s1 = b.sliceCols(tx, 9, 12);
        const y = b.rmsNorm(b.matmul(s1, up(hw)), up(norm), 1e-6);
        const r = b.rope(y, pos, invFreq, 2, 7, 3);
        const cat = b.concatCols(r, b.sliceCols(tx, 0, 16));
        const g = b.gatherRows(cat, Int32Array.from([4, 1, 1]));
        const out = b.add(g, b.swiglu(g, g));
        const ry = ref.refRmsNorm(ref.refMatmul(ref.refSliceCols(x, 9, 12), hw), norm, 1e-6);
        const rr = ref.refRope(ry, pos, invFreq, 2, 7, 3);
        const rg = ref.refGatherRows(ref.refConcatCols(rr, ref.refSliceCols(x, 0, 16)), [4, 1, 1]);
        const expected = ref.refAdd(rg, ref.refSwiglu(rg, rg));
        await expectClose(out, expected, 'chain', { tol: tol * 10 });
        assert.deepEqual([...(await b.argmaxRows(out))], [...ref.refArgmaxRows(toMat(3, 30, await b.read(out)))]);
        compareExact(await b.read(tx), x.data, 'chain input after the ops', x.cols);
      }));
    });
  });
}
