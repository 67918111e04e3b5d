/**
 * WGSL for the WebGPU backend: a small builder that declares a kernel's parameters and
 * buffers (so the WGSL and the JavaScript bindings cannot drift apart), the decoders of
 * the packed weight formats, and one body per op.
 *
 * Conventions shared by every kernel:
 * - binding 0 is the uniform `P` (the kernel's scalar parameters, in declaration order);
 *   bindings 1.. are storage buffers in the order `buf`/`weight` were called;
 * - workgroup counts above 65535 are split over x and y: a kernel's linear workgroup
 *   index is `wid.x + wid.y * nwg.x` (see `linear` below);
 * - activations are `array<f32>`; data-movement kernels use `array<u32>` so copies are
 *   bit-exact (no float canonicalization);
 * - a weight `w` is read through `w_at(row, col) -> f32`, which decodes its format:
 *   f32 as is, bf16/f16 from u32 pairs, fp8 e4m3 from bytes packed four to a u32 times
 *   the block's f32 scale; GGUF q8_0 / q4_0 / q4_k / q6_k blocks as stored (bytes read with shifts
 *   from u32 words). Weights are never expanded on the device.
 */
/// <reference types="@webgpu/types" />
import type { WeightFormat } from '../backend.js';

export type ElemType = 'f32' | 'u32' | 'i32';

/** A storage or uniform buffer range for a bind group entry. */
export interface BufferRef {
  buffer: GPUBuffer;
  offset?: number;
  size?: number;
}

/** One GPU-resident slice of a weight (whole weights are one part; huge ones are split by rows). */
export interface WeightPart {
  /** First row of the weight this part holds, and how many. */
  row0: number;
  rows: number;
  /** Packed data: f32 as is; bf16/f16 two per u32; fp8 four bytes per u32 (little-endian); q8_0/q4_0/q4_k/q6_k the GGUF block bytes. */
  data: GPUBuffer;
  /** fp8 only: this part's block scales, [rows / blockRows (rounded up), ceil(cols / blockCols)]. */
  scales: GPUBuffer | null;
}

export interface WeightRef {
  format: WeightFormat;
  cols: number;
  blockRows: number;
  blockCols: number;
}

const HELPERS = /* wgsl */ `
fn f16_to_f32(h: u32) -> f32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    let v = f32(m) * 5.9604644775390625e-8; // subnormal: m * 2^-24, a normal f32
    return select(v, -v, s != 0u);
  }
  if (e == 31u) { return bitcast<f32>(s | 0x7f800000u | (m << 13u)); }
  return bitcast<f32>(s | ((e + 112u) << 23u) | (m << 13u));
}

fn e4m3_to_f32(b: u32) -> f32 {
  let s = (b & 0x80u) << 24u;
  let e = (b >> 3u) & 0xfu;
  let m = b & 7u;
  if (e == 0u) {
    let v = f32(m) * 0.001953125; // subnormal: m/8 * 2^-6
    return select(v, -v, s != 0u);
  }
  if (e == 15u && m == 7u) { return bitcast<f32>(s | 0x7fc00000u); } // NaN
  return bitcast<f32>(s | ((e + 120u) << 23u) | (m << 20u));
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(min(-v, 88.0))); // exp clamped: no inf, so no NaN for any gate
}
`;

/** Four signed bytes of a word as f32 (byte b of `v` at lane b). */
const I8X4 = /* wgsl */ `
fn i8x4(v: u32) -> vec4f {
  return vec4f(f32(bitcast<i32>(v << 24u) >> 24u), f32(bitcast<i32>(v << 16u) >> 24u), f32(bitcast<i32>(v << 8u) >> 24u), f32(bitcast<i32>(v) >> 24u));
}`;

/** x[o .. o + 3] as a vector. */
const X4 = 'fn x4(o: u32) -> vec4f { return vec4f(x[o], x[o + 1u], x[o + 2u], x[o + 3u]); }';

/**
 * WGSL of `name_dot32` (see Shader.weight). q8_0 and q4_0 blocks (34 and 18 bytes) start on
 * an even byte, so their codes begin on a word or half a word: a misaligned word is put
 * together from two. q4_k sub-blocks are word-aligned; q6_k and the float formats go value
 * by value through name_at.
 */
function dot32Fn(name: string, format: WeightFormat): string {
  const d = `${name}_d`, cols = `P.${name}_cols`;
  const head = `fn ${name}_dot32(r: u32, c0: u32, xo: u32) -> f32 {`;
  // Word i of the bytes from byte offset b (b even), put together when b is not word-aligned.
  const word = `fn ${name}_word(b: u32, i: u32) -> u32 {
  let q = (b >> 2u) + i;
  if ((b & 2u) == 0u) { return ${d}[q]; }
  return (${d}[q] >> 16u) | (${d}[q + 1u] << 16u);
}`;
  const scale = (p: string) => `f16_to_f32((${d}[${p} >> 2u] >> ((${p} & 2u) * 8u)) & 0xffffu)`;
  switch (format) {
    case 'q8_0':
      return `${word}\n${head}
  let p = (r * (${cols} / 32u) + c0 / 32u) * 34u;
  var s = 0.0;
  for (var i = 0u; i < 8u; i++) { s += dot(i8x4(${name}_word(p + 2u, i)), x4(xo + c0 + i * 4u)); }
  return s * ${scale('p')};
}`;
    case 'q4_0':
      // Byte j holds value j (low nibble) and value j + 16 (high nibble).
      return `${word}\n${head}
  let p = (r * (${cols} / 32u) + c0 / 32u) * 18u;
  var s = 0.0;
  for (var i = 0u; i < 4u; i++) {
    let v = ${name}_word(p + 2u, i);
    let lo = vec4f(vec4u(v & 15u, (v >> 8u) & 15u, (v >> 16u) & 15u, (v >> 24u) & 15u)) - 8.0;
    let hi = vec4f(vec4u((v >> 4u) & 15u, (v >> 12u) & 15u, (v >> 20u) & 15u, v >> 28u)) - 8.0;
    s += dot(lo, x4(xo + c0 + i * 4u)) + dot(hi, x4(xo + c0 + 16u + i * 4u));
  }
  return s * ${scale('p')};
}`;
    case 'q4_k':
      // Sub-block j of a super-block: 32 nibbles (low for even j, high for odd) times d·sc, minus dmin·mn.
      return `${head}
  let p = (r * (${cols} / 256u) + c0 / 256u) * 144u;
  let j = (c0 % 256u) >> 5u;
  let dd = ${d}[p >> 2u];
  let k = p + 4u;
  var sc: u32;
  var mn: u32;
  if (j < 4u) { sc = ${name}_byte(k + j) & 63u; mn = ${name}_byte(k + j + 4u) & 63u; }
  else {
    sc = (${name}_byte(k + j + 4u) & 0xfu) | ((${name}_byte(k + j - 4u) >> 6u) << 4u);
    mn = (${name}_byte(k + j + 4u) >> 4u) | ((${name}_byte(k + j) >> 6u) << 4u);
  }
  let base = (p + 16u + (j >> 1u) * 32u) >> 2u;
  let sh = (j & 1u) * 4u;
  var sq = 0.0;
  var sx = 0.0;
  for (var i = 0u; i < 8u; i++) {
    let v = ${d}[base + i] >> sh;
    let xv = x4(xo + c0 + i * 4u);
    sq += dot(vec4f(vec4u(v & 15u, (v >> 8u) & 15u, (v >> 16u) & 15u, (v >> 24u) & 15u)), xv);
    sx += xv.x + xv.y + xv.z + xv.w;
  }
  return f16_to_f32(dd & 0xffffu) * f32(sc) * sq - f16_to_f32(dd >> 16u) * f32(mn) * sx;
}`;
    default:
      return `${head}
  var s = 0.0;
  for (var j = 0u; j < 32u; j++) { s += ${name}_at(r, c0 + j) * x[xo + c0 + j]; }
  return s;
}`;
  }
}

/** Builds one kernel: parameters, bindings and the WGSL around a body. */
export class Shader {
  readonly params: { name: string; type: 'u32' | 'f32'; value: number }[] = [];
  readonly bindings: BufferRef[] = [];
  private readonly decls: string[] = [];
  private readonly fns: string[] = [];

  u32(name: string, value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`webgpu: parameter ${name} = ${value} is not a u32`);
    this.params.push({ name, type: 'u32', value });
    return this;
  }

  f32(name: string, value: number): this {
    this.params.push({ name, type: 'f32', value });
    return this;
  }

  buf(name: string, type: ElemType, access: 'read' | 'read_write', ref: BufferRef): this {
    this.decls.push(`@group(0) @binding(${this.bindings.length + 1}) var<storage, ${access}> ${name}: array<${type}>;`);
    this.bindings.push(ref);
    return this;
  }

  /**
   * Declares weight `name` (one part of it) and its decoder `name_at(r, c)`; r is relative to
   * the part. With `dot32`, also `name_dot32(r, c0, xo)` = Σ_{j<32} w(r, c0 + j) · x[xo + c0 + j]
   * for c0 a multiple of 32, reading the activations from the kernel's buffer `x`: the block
   * formats decode a whole block (or sub-block) with its scales read once and its codes a word
   * at a time, the others call name_at.
   */
  weight(name: string, w: WeightRef, part: WeightPart, dot32 = false): this {
    const d = `${name}_d`;
    if (dot32) {
      // i8x4 and x4 are shared by the weights of a kernel (declared once).
      const helpers = w.format === 'q8_0' ? [I8X4, X4] : w.format === 'q4_0' || w.format === 'q4_k' ? [X4] : [];
      for (const h of helpers) if (!this.fns.includes(h)) this.fns.push(h);
      this.fns.push(dot32Fn(name, w.format));
    }
    this.u32(`${name}_cols`, w.cols);
    const idx = `let i = r * P.${name}_cols + c;`;
    switch (w.format) {
      case 'f32':
        this.buf(d, 'f32', 'read', { buffer: part.data });
        this.fns.push(`fn ${name}_at(r: u32, c: u32) -> f32 { return ${d}[r * P.${name}_cols + c]; }`);
        break;
      case 'bf16':
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(`fn ${name}_at(r: u32, c: u32) -> f32 { ${idx} return bitcast<f32>(((${d}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu) << 16u); }`);
        break;
      case 'f16':
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(`fn ${name}_at(r: u32, c: u32) -> f32 { ${idx} return f16_to_f32((${d}[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu); }`);
        break;
      case 'fp8_e4m3_block': {
        const s = `${name}_s`;
        this.u32(`${name}_br`, w.blockRows).u32(`${name}_bc`, w.blockCols).u32(`${name}_sc`, Math.ceil(w.cols / w.blockCols));
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.buf(s, 'f32', 'read', { buffer: part.scales! });
        this.fns.push(
          `fn ${name}_at(r: u32, c: u32) -> f32 { ${idx} ` +
            `return e4m3_to_f32((${d}[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu) * ${s}[(r / P.${name}_br) * P.${name}_sc + c / P.${name}_bc]; }`,
        );
        break;
      }
      case 'q8_0': {
        // GGUF blocks as uploaded: 34 bytes (f16 d | 32 x int8), not word-aligned; bytes are
        // read with shifts. d * q is exact in f32 (11-bit by 8-bit), as on the CPU.
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(
          `fn ${name}_byte(o: u32) -> u32 { return (${d}[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu; }\n` +
            `fn ${name}_at(r: u32, c: u32) -> f32 {\n` +
            `  let p = (r * (P.${name}_cols / 32u) + c / 32u) * 34u;\n` +
            `  let h = (${d}[p >> 2u] >> ((p & 2u) * 8u)) & 0xffffu;\n` +
            `  let q = bitcast<i32>(${name}_byte(p + 2u + c % 32u) << 24u) >> 24u;\n` +
            `  return f32(q) * f16_to_f32(h);\n}`,
        );
        break;
      }
      case 'q4_0': {
        // 18-byte blocks (f16 d | 16 bytes of nibbles), not word-aligned: byte j holds value j
        // in its low nibble and value j + 16 in its high one. (nibble - 8) * d is exact in f32.
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(
          `fn ${name}_byte(o: u32) -> u32 { return (${d}[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu; }\n` +
            `fn ${name}_at(r: u32, c: u32) -> f32 {\n` +
            `  let p = (r * (P.${name}_cols / 32u) + c / 32u) * 18u;\n` +
            `  let h = ${name}_byte(p) | (${name}_byte(p + 1u) << 8u);\n` +
            `  let e = c % 32u;\n` +
            `  let nib = (${name}_byte(p + 2u + (e & 15u)) >> ((e >> 4u) * 4u)) & 0xfu;\n` +
            `  return f32(i32(nib) - 8) * f16_to_f32(h);\n}`,
        );
        break;
      }
      case 'q6_k': {
        // 210-byte super-blocks (not word-aligned): ql[128] | qh[64] | 16 x int8 scales | f16 d.
        // Each half of 128 values uses 64 bytes of ql, 32 of qh and 8 scales; its quarter t
        // (32 values) takes ql's low (t < 2) or high nibbles, at +32 for odd t, and qh's bits
        // 2t..2t+1. Same float32 steps as dequantize_row_q6_K: (d * scale) * (q - 32).
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(
          `fn ${name}_byte(o: u32) -> u32 { return (${d}[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu; }\n` +
            `fn ${name}_at(r: u32, c: u32) -> f32 {\n` +
            `  let p = (r * (P.${name}_cols / 256u) + c / 256u) * 210u;\n` +
            `  let e = c % 256u;\n` +
            `  let n = e >> 7u;\n` +
            `  let t = (e >> 5u) & 3u;\n` +
            `  let l = e & 31u;\n` +
            `  let lo = (${name}_byte(p + n * 64u + l + (t & 1u) * 32u) >> ((t >> 1u) * 4u)) & 0xfu;\n` +
            `  let hb = (${name}_byte(p + 128u + n * 32u + l) >> (t * 2u)) & 3u;\n` +
            `  let q = i32(lo | (hb << 4u)) - 32;\n` +
            `  let s = bitcast<i32>(${name}_byte(p + 192u + n * 8u + (l >> 4u) + t * 2u) << 24u) >> 24u;\n` +
            `  let h = ${name}_byte(p + 208u) | (${name}_byte(p + 209u) << 8u);\n` +
            `  let ds = f16_to_f32(h) * f32(s);\n` +
            `  return ds * f32(q);\n}`,
        );
        break;
      }
      case 'q4_k': {
        // 144-byte super-blocks (word-aligned): f16 d, f16 dmin | 12 bytes of 6-bit scales and
        // mins (get_scale_min_k4) | 128 bytes of nibbles; 64 values per 32 bytes of nibbles,
        // low nibbles first. Same float32 steps as dequantize_row_q4_K.
        this.buf(d, 'u32', 'read', { buffer: part.data });
        this.fns.push(
          `fn ${name}_byte(o: u32) -> u32 { return (${d}[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu; }\n` +
            `fn ${name}_at(r: u32, c: u32) -> f32 {\n` +
            `  let p = (r * (P.${name}_cols / 256u) + c / 256u) * 144u;\n` +
            `  let dd = ${d}[p >> 2u];\n` +
            `  let e = c % 256u;\n` +
            `  let hi = (e >> 5u) & 1u;\n` +
            `  let j = e >> 5u;\n` +
            `  let k = p + 4u;\n` +
            `  var sc: u32;\n  var mn: u32;\n` +
            `  if (j < 4u) { sc = ${name}_byte(k + j) & 63u; mn = ${name}_byte(k + j + 4u) & 63u; }\n` +
            `  else {\n` +
            `    sc = (${name}_byte(k + j + 4u) & 0xfu) | ((${name}_byte(k + j - 4u) >> 6u) << 4u);\n` +
            `    mn = (${name}_byte(k + j + 4u) >> 4u) | ((${name}_byte(k + j) >> 6u) << 4u);\n  }\n` +
            `  let nib = (${name}_byte(p + 16u + (e >> 6u) * 32u + (e & 31u)) >> (hi * 4u)) & 0xfu;\n` +
            `  let d1 = f16_to_f32(dd & 0xffffu) * f32(sc);\n` +
            `  let m1 = f16_to_f32(dd >> 16u) * f32(mn);\n` +
            `  return d1 * f32(nib) - m1;\n}`,
        );
        break;
      }
      default:
        throw new Error(`webgpu: no decoder for weight format ${w.format}`);
    }
    return this;
  }

  /** The complete WGSL module around `body` (which defines `main`). */
  wgsl(body: string): string {
    const fields = this.params.length ? this.params.map((p) => `  ${p.name}: ${p.type},`) : ['  _unused: u32,'];
    return [
      `struct Params {\n${fields.join('\n')}\n}`,
      '@group(0) @binding(0) var<uniform> P: Params;',
      ...this.decls,
      HELPERS,
      ...this.fns,
      body,
    ].join('\n');
  }
}

/** Entry point signature and the linear workgroup index over a (x, y) split grid. */
const ENTRY = '@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) tid: u32';
const linear = 'let wg = wid.x + wid.y * nwg.x;';

/** Threads per workgroup of element-wise kernels. */
export const EW = 256;

/** An element-wise kernel over `P.total` elements: `stmt` sees the element index `g`. */
export function elementwise(stmt: string): string {
  return `@compute @workgroup_size(${EW})
fn main(${ENTRY}) {
  ${linear}
  let g = wg * ${EW}u + tid;
  if (g >= P.total) { return; }
  ${stmt}
}`;
}

// ---- matmul ------------------------------------------------------------------------------

/** Rows of x (tokens) a matmul workgroup handles at once: each weight element is decoded once per tile. */
export const MM_TOKENS = 8;
const MM_WG = 64;

/**
 * out[r, col0 + row] = Σ_c x[xrow(r), c] · w(row, c), one workgroup per (weight row, tile of
 * MM_TOKENS rows of x); its 64 threads split the dot products over c, then thread t sums the
 * 64 partials of row t from shared memory (a tree reduction here makes lavapipe's shader
 * compile 10x slower). Workgroups: x·y cover the weight rows (P.m), z the tiles.
 *
 * - plain: rows r = 0 .. P.n of x and out.
 * - expert: rows r = idx[P.e] .. idx[P.e + 1] (one expert's slice of the routed rows sorted by
 *   expert, see moeIndex); with `gather`, x row = token of sorted entry r = idx[P.list + r] / P.topk.
 * - dual: two weights g and u, output silu(g·x) * (u·x) (the MoE gate/up projections).
 */
export function matmulBody(o: { expert: boolean; gather: boolean; dual: boolean; tokens?: number; dot32?: boolean }): string {
  const T = o.tokens ?? MM_TOKENS, W = MM_WG;
  const range = o.expert ? 'let base = idx[P.e];\n  let count = idx[P.e + 1u] - base;' : 'let base = 0u;\n  let count = P.n;';
  const xrow = o.gather ? 'idx[P.list + r] / P.topk' : 'r';
  const accs = o.dual ? ['a', 'b'] : ['a'];
  const decode = o.dual ? 'let wa = g_at(row, c);\n    let wb = u_at(row, c);' : 'let wa = w_at(row, c);';
  return `
var<workgroup> red: array<f32, ${T * W * accs.length}>;

@compute @workgroup_size(${W})
fn main(${ENTRY}) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= P.m) { return; }
  ${range}
  let t0 = wid.z * ${T}u;
  let cnt = min(${T}u, count - t0);
  var xo: array<u32, ${T}>;
  for (var t = 0u; t < ${T}u; t++) {
    let r = base + t0 + min(t, cnt - 1u); // rows past the tile's end repeat its last row, unused
    xo[t] = (${xrow}) * P.k;
  }
  ${accs.map((a) => `var ${a}: array<f32, ${T}>;`).join('\n  ')}
  ${o.dot32 ? `for (var c = tid * 32u; c < P.k; c += ${W * 32}u) {
    ${(o.dual ? ['g', 'u'] : ['w']).map((w, j) => `${accs[j]}[0] += ${w}_dot32(row, c, xo[0]);`).join('\n    ')}
  }` : `for (var c = tid; c < P.k; c += ${W}u) {
    ${decode}
    for (var t = 0u; t < ${T}u; t++) {
      let xv = x[xo[t] + c];
      ${accs.map((a) => `${a}[t] += w${a} * xv;`).join('\n      ')}
    }
  }`}
  for (var t = 0u; t < ${T}u; t++) {
    ${accs.map((a, j) => `red[${j * T * W}u + t * ${W}u + tid] = ${a}[t];`).join('\n    ')}
  }
  workgroupBarrier();
  // Thread t sums the partial sums of token t.
  if (tid < cnt) {
    ${accs.map((a) => `var s${a} = 0.0;`).join('\n    ')}
    for (var j = 0u; j < ${W}u; j++) {
      ${accs.map((a, i) => `s${a} += red[${i * T * W}u + tid * ${W}u + j];`).join('\n      ')}
    }
    out[(base + t0 + tid) * P.ostride + P.col0 + row] = ${o.dual ? 'silu(sa) * sb' : 'sa'};
  }
}`;
}

// ---- row-wise kernels -----------------------------------------------------------------------

/** out = x / sqrt(mean(x²) + eps) · w, one workgroup of 64 per row. */
export const RMSNORM = `
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(${ENTRY}) {
  ${linear}
  if (wg >= P.n) { return; }
  let o = wg * P.d;
  var ss = 0.0;
  for (var c = tid; c < P.d; c += 64u) { let v = x[o + c]; ss += v * v; }
  red[tid] = ss;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (tid < s) { red[tid] += red[tid + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / sqrt(red[0] / f32(P.d) + P.eps);
  for (var c = tid; c < P.d; c += 64u) { out[o + c] = x[o + c] * inv * w_at(0u, c); }
}`;

/** Index of each row's largest value, ties to the lowest index; one workgroup of 64 per row. */
export const ARGMAX = `
var<workgroup> rv: array<f32, 64>;
var<workgroup> ri: array<u32, 64>;
const NONE = 0xffffffffu;

@compute @workgroup_size(64)
fn main(${ENTRY}) {
  ${linear}
  if (wg >= P.n) { return; }
  var bv = 0.0;
  var bi = NONE;
  for (var c = tid; c < P.cols; c += 64u) {
    let v = x[wg * P.cols + c];
    if (bi == NONE || v > bv) { bv = v; bi = c; }
  }
  rv[tid] = bv;
  ri[tid] = bi;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (tid < s) {
      let ov = rv[tid + s];
      let oi = ri[tid + s];
      if (oi != NONE && (ri[tid] == NONE || ov > rv[tid] || (ov == rv[tid] && oi < ri[tid]))) {
        rv[tid] = ov;
        ri[tid] = oi;
      }
    }
    workgroupBarrier();
  }
  if (tid == 0u) { out[wg] = ri[0]; }
}`;

// ---- attention ------------------------------------------------------------------------------

/**
 * Absorbed MLA, pass 2 of 3: one workgroup per (token, head) runs online softmax over the
 * token's cached positions 0..pos in chunks of 64 (one position per thread for the score,
 * then each thread updates its own latent components). Shared memory holds the absorbed
 * query [q_abs | q_rope] (R + P floats) and the running latent sum (R floats).
 * tabs = [positions (n) | start of each token's block table in tabs (n) | the tables].
 */
export function attendBody(R: number, P: number): string {
  return `
var<workgroup> qs: array<f32, ${R + P}>;
var<workgroup> acc: array<f32, ${R}>;
var<workgroup> sc: array<f32, 64>;
var<workgroup> sl: array<u32, 64>;
var<workgroup> wlen: u32;

@compute @workgroup_size(64)
fn main(${ENTRY}) {
  ${linear}
  if (wg >= P.n * P.heads) { return; }
  let i = wg / P.heads;
  let h = wg % P.heads;
  for (var c = tid; c < P.rank; c += 64u) { qs[c] = qa[wg * P.rank + c]; acc[c] = 0.0; }
  for (var c = tid; c < P.rope; c += 64u) { qs[P.rank + c] = q[i * P.qcols + h * P.qstride + P.nope + c]; }
  if (tid == 0u) { wlen = tabs[i] + 1u; }
  let len = workgroupUniformLoad(&wlen);
  let tab = tabs[P.n + i];
  let qw = P.rank + P.rope;
  var m = -3.0e38;
  var l = 0.0;
  for (var start = 0u; start < len; start += 64u) {
    let p = start + tid;
    if (p < len) {
      let slot = tabs[tab + p / P.block] * P.block + p % P.block;
      let kb = slot * P.width;
      var s = 0.0;
      for (var c = 0u; c < qw; c++) { s += qs[c] * cache[kb + c]; }
      sc[tid] = s * P.scale;
      sl[tid] = slot;
    }
    workgroupBarrier();
    let cn = min(64u, len - start);
    var cmax = m;
    for (var j = 0u; j < cn; j++) { cmax = max(cmax, sc[j]); }
    workgroupBarrier();
    if (tid < cn) { sc[tid] = exp(sc[tid] - cmax); }
    workgroupBarrier();
    let alpha = exp(m - cmax);
    var csum = 0.0;
    for (var j = 0u; j < cn; j++) { csum += sc[j]; }
    l = l * alpha + csum;
    for (var c = tid; c < P.rank; c += 64u) {
      var a = acc[c] * alpha;
      for (var j = 0u; j < cn; j++) { a += sc[j] * cache[sl[j] * P.width + c]; }
      acc[c] = a;
    }
    m = cmax;
    workgroupBarrier();
  }
  for (var c = tid; c < P.rank; c += 64u) { lat[wg * P.rank + c] = acc[c] / l; }
}`;
}

// ---- routing ----------------------------------------------------------------------------------

/**
 * One thread per token, following docs/backends.md step by step. Scratch per token:
 * [scores s (E) | choice u (E) | group score (G) | group kept flag (G)].
 * Masked experts (outside the kept groups) rank below every unmasked one and tie among
 * themselves (they are -inf on the CPU); ties go to the lower index throughout.
 */
export function routeBody(bias: boolean): string {
  return `
const NONE = 0xffffffffu;

@compute @workgroup_size(64)
fn main(${ENTRY}) {
  ${linear}
  let t = wg * 64u + tid;
  if (t >= P.n) { return; }
  let E = P.experts;
  let o = t * E;
  let so = t * (2u * E + 2u * P.groups);
  let su = so + E;
  let sg = su + E;
  let sk = sg + P.groups;
  if (P.softmax == 1u) {
    var mx = lg[o];
    for (var e = 1u; e < E; e++) { mx = max(mx, lg[o + e]); }
    var sum = 0.0;
    for (var e = 0u; e < E; e++) { let v = exp(lg[o + e] - mx); sc[so + e] = v; sum += v; }
    for (var e = 0u; e < E; e++) { sc[so + e] = sc[so + e] / sum; }
  } else {
    for (var e = 0u; e < E; e++) { sc[so + e] = 1.0 / (1.0 + exp(-lg[o + e])); }
  }
  for (var e = 0u; e < E; e++) { sc[su + e] = sc[so + e]${bias ? ' + b_at(0u, e)' : ''}; }
  let per = E / P.groups;
  for (var g = 0u; g < P.groups; g++) { sc[sk + g] = 1.0; }
  if (P.groups > 1u) {
    for (var g = 0u; g < P.groups; g++) {
      var best = -3.0e38;
      var second = -3.0e38;
      for (var e = g * per; e < (g + 1u) * per; e++) {
        let v = sc[su + e];
        if (v > best) { second = best; best = v; } else if (v > second) { second = v; }
      }
      sc[sg + g] = select(best, best + select(0.0, second, per > 1u), P.top2 == 1u);
      sc[sk + g] = 0.0;
    }
    for (var k = 0u; k < P.keep; k++) {
      var bg = NONE;
      for (var g = 0u; g < P.groups; g++) {
        if (sc[sk + g] == 0.0 && (bg == NONE || sc[sg + g] > sc[sg + bg])) { bg = g; }
      }
      sc[sk + bg] = 1.0;
    }
  }
  var sum = 0.0;
  for (var k = 0u; k < P.topk; k++) {
    var best = NONE;
    var bv = 0.0;
    var bvalid = false;
    for (var e = 0u; e < E; e++) {
      var taken = false;
      for (var k2 = 0u; k2 < k; k2++) { if (ids[t * P.topk + k2] == e) { taken = true; } }
      if (taken) { continue; }
      let valid = sc[sk + e / per] == 1.0;
      let v = sc[su + e];
      if (best == NONE || (valid && !bvalid) || (valid && bvalid && v > bv)) { best = e; bv = v; bvalid = valid; }
    }
    ids[t * P.topk + k] = best;
    let s = sc[so + best];
    wts[t * P.topk + k] = s;
    sum += s;
  }
  let f = select(1.0, 1.0 / sum, P.normalize == 1u) * P.scale;
  for (var k = 0u; k < P.topk; k++) { wts[t * P.topk + k] = wts[t * P.topk + k] * f; }
}`;
}

// ---- moe -------------------------------------------------------------------------------------

/**
 * Groups the routed (token, k) entries by expert, on the device, in one workgroup:
 * idx = [offsets (E + 1) | sorted entries j = t·topk + k (nk) | position of entry j in the
 * sorted list (nk)], sorted by expert then by j (deterministic). args gets, per expert, the
 * indirect dispatch sizes of its gate/up and down matmuls: zero tiles for an unused expert.
 */
export const MOE_INDEX = `
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32) {
  let E = P.experts;
  for (var e = tid; e < E; e += 64u) {
    var c = 0u;
    for (var j = 0u; j < P.nk; j++) { if (ids[j] == e) { c++; } }
    idx[e + 1u] = c;
  }
  storageBarrier();
  if (tid == 0u) {
    idx[0] = 0u;
    for (var e = 0u; e < E; e++) { idx[e + 1u] += idx[e]; }
  }
  storageBarrier();
  for (var e = tid; e < E; e += 64u) {
    var pos = idx[e];
    for (var j = 0u; j < P.nk; j++) {
      if (ids[j] == e) { idx[E + 1u + pos] = j; idx[E + 1u + P.nk + j] = pos; pos++; }
    }
    let tiles = (idx[e + 1u] - idx[e] + ${MM_TOKENS - 1}u) / ${MM_TOKENS}u;
    args[e * 6u] = P.inter; args[e * 6u + 1u] = 1u; args[e * 6u + 2u] = tiles;
    args[e * 6u + 3u] = P.d; args[e * 6u + 4u] = 1u; args[e * 6u + 5u] = tiles;
  }
}`;
