/**
 * shoal's fast CPU kernels: WebAssembly SIMD128, written in AssemblyScript.
 *
 * This file is AssemblyScript, not TypeScript (hence `.as`, so that tsc leaves it alone);
 * scripts/build-wasm.js compiles it into dist/src/backends/cpu-simd/kernels.wasm.
 * The host side is simd-backend.ts; docs/backends.md ("Fast CPU backend") explains the design.
 *
 * Conventions
 * - One shared WebAssembly.Memory is imported; every pointer is a byte offset into it.
 *   Strides are in elements (floats), not bytes.
 * - Every exported kernel ends with (part, parts): the op is cut into `parts` chunks that
 *   threads claim (protocol.ts), and a call computes only chunk `part` (shareLo/shareHi),
 *   writing outputs no other chunk writes. parts = 1 is the whole op.
 * - Weight formats are chosen at compile time by a marker type (see below). Generic kernels
 *   are instantiated once per format and exported as `<name>_<format>`.
 *   A new format (q8_0, q4_k, ...) adds its own decoder (or its own kernels) and exports;
 *   the host's per-format table (formats.ts) names them.
 * - No allocation, no runtime, no data segments: the host owns all memory.
 */

// ---- format markers and decoders ---------------------------------------------------------
//
// A marker is a type used only to pick code at compile time (predicates below):
//   f32  f32            u16  bf16           i16  f16 (fast)      i32  f16 (subnormal-safe)
//   u8   e4m3 (fast)    i8   e4m3 (subnormal-safe)
// The fast decoders place the code's bits into float32 fields and multiply by a power of two;
// for subnormal codes that multiplies a float32 denormal, which x86 cores handle in microcode
// (a hundred cycles or more). Weights with more than a few subnormal codes (formats.ts counts
// them at upload) use the safe decoders, which rebias the exponent in integer arithmetic and
// correct subnormals with one exact subtraction of normal numbers.

type BF16 = u16;
type F16 = i16;
type F16S = i32;
type FP8 = u8;
type FP8S = i8;

// @ts-ignore: decorator
@inline function isFp8<F>(): bool { return sizeof<F>() == 1; }
// @ts-ignore: decorator
@inline function isBf16<F>(): bool { return sizeof<F>() == 2 && !isSigned<F>(); }
// @ts-ignore: decorator
@inline function isF16<F>(): bool { return (sizeof<F>() == 2 && isSigned<F>()) || (sizeof<F>() == 4 && !isFloat<F>()); }
// @ts-ignore: decorator
@inline function isSafe<F>(): bool { return (sizeof<F>() == 4 && !isFloat<F>()) || (sizeof<F>() == 1 && isSigned<F>()); }
/** Bytes per packed element. */
// @ts-ignore: decorator
@inline function esize<F>(): usize { return isFloat<F>() ? 4 : isFp8<F>() ? 1 : 2; }

/** 2^112: moves an f16 exponent (bias 15) into float32's (bias 127). */
const F16_REBIAS: f32 = reinterpret<f32>(0x77800000);
/** 2^120: the same for e4m3 (bias 7). */
const FP8_REBIAS: f32 = reinterpret<f32>(0x7b800000);
/** Keeps sign (bit 31) and exponent|mantissa (bits 27..13) of a sign-extended f16 shifted left by 13. */
const F16_MASK: i32 = <i32>0x8fffe000;
/** Keeps sign (bit 31) and exponent|mantissa (bits 26..20) of a sign-extended e4m3 byte shifted left by 20. */
const FP8_MASK: i32 = <i32>0x87f00000;

/**
 * Safe decode of sign-extended codes c (i32 lanes) whose exponent|mantissa, shifted left by
 * `shift`, lands in float32's fields: rebias the exponent by `rebias`; a subnormal code (zero
 * exponent, `expMask`) is decoded as if its exponent were 1, then that implicit one (`one`, a
 * normal float) is subtracted: exact, and no denormal is ever touched.
 */
// @ts-ignore: decorator
@inline function safeDecode(c: v128, shift: i32, emMask: i32, expMask: i32, rebias: i32, one: i32): v128 {
  const t = v128.and(i32x4.shl(c, shift), i32x4.splat(emMask));
  const sub = i32x4.eq(v128.and(c, i32x4.splat(expMask)), i32x4.splat(0));
  const biased = i32x4.add(i32x4.add(t, i32x4.splat(rebias << 23)), v128.and(sub, i32x4.splat(1 << 23)));
  const mag = f32x4.sub(biased, v128.and(sub, i32x4.splat(one)));
  return v128.or(mag, v128.and(c, i32x4.splat(<i32>0x80000000)));
}

/**
 * Four consecutive weights starting at byte address p, decoded to float32 in registers.
 * bf16 is the top half of a float32; f16 and e4m3 are placed into float32's bit fields and
 * rebiased (exact). fp8 block scales are applied by the caller, per block.
 */
// @ts-ignore: decorator
@inline function w4<F>(p: usize): v128 {
  if (isFloat<F>()) return v128.load(p);
  if (isBf16<F>()) return i32x4.shl(v128.load16x4_u(p), 16);
  if (isF16<F>()) {
    const h = v128.load16x4_s(p);
    if (isSafe<F>()) return safeDecode(h, 13, 0x0fffe000, 0x7c00, 112, 0x38800000 /* 2^-14 */);
    return f32x4.mul(v128.and(i32x4.shl(h, 13), i32x4.splat(F16_MASK)), f32x4.splat(F16_REBIAS));
  }
  const b = i32x4.extend_low_i16x8_s(i16x8.extend_low_i8x16_s(v128.load32_zero(p)));
  if (isSafe<F>()) return safeDecode(b, 20, 0x07f00000, 0x78, 120, 0x3c800000 /* 2^-6 */);
  return f32x4.mul(v128.and(i32x4.shl(b, 20), i32x4.splat(FP8_MASK)), f32x4.splat(FP8_REBIAS));
}

/** One weight at byte address p (the scalar twin of w4, for row tails). */
// @ts-ignore: decorator
@inline function w1<F>(p: usize): f32 {
  if (isFloat<F>()) return load<f32>(p);
  if (isBf16<F>()) return reinterpret<f32>(<u32>load<u16>(p) << 16);
  if (isF16<F>()) return reinterpret<f32>((<i32>load<i16>(p) << 13) & F16_MASK) * F16_REBIAS;
  return reinterpret<f32>((<i32>load<i8>(p) << 20) & FP8_MASK) * FP8_REBIAS;
}

// ---- small helpers -------------------------------------------------------------------------

/** First index of this part's share of [lo, hi), shares rounded up to a multiple of `align`. */
// @ts-ignore: decorator
@inline function shareLo(lo: i32, hi: i32, align: i32, part: i32, parts: i32): i32 {
  const per = (((hi - lo + parts - 1) / parts + align - 1) / align) * align;
  return min(hi, lo + part * per);
}
// @ts-ignore: decorator
@inline function shareHi(lo: i32, hi: i32, align: i32, part: i32, parts: i32): i32 {
  const per = (((hi - lo + parts - 1) / parts + align - 1) / align) * align;
  return min(hi, lo + (part + 1) * per);
}

// @ts-ignore: decorator
@inline function hsum(v: v128): f32 {
  return f32x4.extract_lane(v, 0) + f32x4.extract_lane(v, 1) + f32x4.extract_lane(v, 2) + f32x4.extract_lane(v, 3);
}

// @ts-ignore: decorator
@inline function fptr(base: usize, i: i32): usize { return base + (<usize>i << 2); }

/** Σ a[i]·b[i] over float32 arrays. */
function dot(a: usize, b: usize, len: i32): f32 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  let i = 0;
  for (; i + 16 <= len; i += 16) {
    s0 = f32x4.add(s0, f32x4.mul(v128.load(fptr(a, i)), v128.load(fptr(b, i))));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(fptr(a, i + 4)), v128.load(fptr(b, i + 4))));
    s2 = f32x4.add(s2, f32x4.mul(v128.load(fptr(a, i + 8)), v128.load(fptr(b, i + 8))));
    s3 = f32x4.add(s3, f32x4.mul(v128.load(fptr(a, i + 12)), v128.load(fptr(b, i + 12))));
  }
  for (; i + 4 <= len; i += 4) s0 = f32x4.add(s0, f32x4.mul(v128.load(fptr(a, i)), v128.load(fptr(b, i))));
  let t: f32 = 0;
  for (; i < len; i++) t += load<f32>(fptr(a, i)) * load<f32>(fptr(b, i));
  return hsum(f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3))) + t;
}

/** y[i] += a · x[i]. */
function axpy(y: usize, a: f32, x: usize, len: i32): void {
  const av = f32x4.splat(a);
  let i = 0;
  for (; i + 4 <= len; i += 4) v128.store(fptr(y, i), f32x4.add(v128.load(fptr(y, i)), f32x4.mul(av, v128.load(fptr(x, i)))));
  for (; i < len; i++) store<f32>(fptr(y, i), load<f32>(fptr(y, i)) + a * load<f32>(fptr(x, i)));
}

function zero(p: usize, len: i32): void {
  memory.fill(p, 0, <usize>len << 2);
}

/**
 * e^x for four floats (Cephes expf: range reduction by ln 2, degree-6 polynomial, 2^n through
 * the exponent bits). Relative error about 2e-7. x is clamped to [-87.3, 88.4], so the result
 * never overflows to infinity nor falls into denormals.
 */
// @ts-ignore: decorator
@inline function vexp(x: v128): v128 {
  x = f32x4.max(f32x4.min(x, f32x4.splat(88.3762626647949)), f32x4.splat(-87.3365478515625));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(1.44269504088896341)));
  let r = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  r = f32x4.sub(r, f32x4.mul(n, f32x4.splat(-2.12194440e-4)));
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, r), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(f32x4.mul(y, r), r), r), f32x4.splat(1));
  const e = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  return f32x4.mul(y, e);
}

// @ts-ignore: decorator
@inline function exp1(x: f32): f32 { return f32x4.extract_lane(vexp(f32x4.splat(x)), 0); }

// ---- matmul --------------------------------------------------------------------------------
//
// out[i, r - r0] = Σ_c x[i, c] · w(r, c) for rows r in [r0, r1), tokens i < n.
// Weights are decoded in registers, four at a time (w4). fp8 rows are summed per column block
// and each block sum multiplied by its scale. Three register-blocked micro-kernels:
//   4 rows × 1 token  (decode, n = 1: one load of x serves four rows)
//   1 row  × 4 tokens (batches: one decoded weight serves four tokens)
//   1 row  × 1 token  (edges)
// Tokens are processed in panels so a panel of x stays in cache while the rows stream by;
// the 4 rows of a row block stay in L1 across the token blocks of a panel.

/** Tokens per panel: 32 rows of x of up to 2048 floats = 256 KiB, about an L2. */
const TOKEN_PANEL: i32 = 32;

/** Pointer to the scale row of weight row r (fp8), or 0. */
// @ts-ignore: decorator
@inline function scaleRow<F>(sc: usize, r: i32, br: i32, scaleCols: i32): usize {
  return isFp8<F>() ? sc + (<usize>((r / br) * scaleCols) << 2) : 0;
}

// @ts-ignore: decorator
@inline function blockScale<F>(srow: usize, c0: i32, bc: i32): f32 {
  return isFp8<F>() ? load<f32>(srow + (<usize>(c0 / bc) << 2)) : 1;
}

/** One row · one token. */
// @ts-ignore: decorator
@inline function dot1x1<F>(x: usize, w: usize, k: i32, srow: usize, bc: i32): f32 {
  const es = esize<F>();
  let acc = f32x4.splat(0);
  let tail: f32 = 0;
  for (let c0 = 0; c0 < k; c0 += bc) {
    const c1 = min(k, c0 + bc);
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let t: f32 = 0;
    let c = c0;
    for (; c + 16 <= c1; c += 16) {
      a0 = f32x4.add(a0, f32x4.mul(v128.load(fptr(x, c)), w4<F>(w + <usize>c * es)));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(fptr(x, c + 4)), w4<F>(w + <usize>(c + 4) * es)));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(fptr(x, c + 8)), w4<F>(w + <usize>(c + 8) * es)));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(fptr(x, c + 12)), w4<F>(w + <usize>(c + 12) * es)));
    }
    for (; c + 4 <= c1; c += 4) a0 = f32x4.add(a0, f32x4.mul(v128.load(fptr(x, c)), w4<F>(w + <usize>c * es)));
    for (; c < c1; c++) t += load<f32>(fptr(x, c)) * w1<F>(w + <usize>c * es);
    const blk = f32x4.add(f32x4.add(a0, a1), f32x4.add(a2, a3));
    if (isFp8<F>()) {
      const s = blockScale<F>(srow, c0, bc);
      acc = f32x4.add(acc, f32x4.mul(blk, f32x4.splat(s)));
      tail += t * s;
    } else {
      acc = f32x4.add(acc, blk);
      tail += t;
    }
  }
  return hsum(acc) + tail;
}

/** Four rows · one token; results to out[0..3]. */
// @ts-ignore: decorator
@inline function dot4x1<F>(x: usize, w: usize, rowBytes: usize, k: i32, s0: usize, s1: usize, s2: usize, s3: usize, bc: i32, out: usize): void {
  const es = esize<F>();
  const w0 = w, wr1 = w + rowBytes, wr2 = w + 2 * rowBytes, wr3 = w + 3 * rowBytes;
  let c0v = f32x4.splat(0), c1v = f32x4.splat(0), c2v = f32x4.splat(0), c3v = f32x4.splat(0);
  let t0: f32 = 0, t1: f32 = 0, t2: f32 = 0, t3: f32 = 0;
  for (let b0 = 0; b0 < k; b0 += bc) {
    const b1 = min(k, b0 + bc);
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let u0: f32 = 0, u1: f32 = 0, u2: f32 = 0, u3: f32 = 0;
    let c = b0;
    for (; c + 4 <= b1; c += 4) {
      const xv = v128.load(fptr(x, c));
      const o = <usize>c * es;
      a0 = f32x4.add(a0, f32x4.mul(xv, w4<F>(w0 + o)));
      a1 = f32x4.add(a1, f32x4.mul(xv, w4<F>(wr1 + o)));
      a2 = f32x4.add(a2, f32x4.mul(xv, w4<F>(wr2 + o)));
      a3 = f32x4.add(a3, f32x4.mul(xv, w4<F>(wr3 + o)));
    }
    for (; c < b1; c++) {
      const xs = load<f32>(fptr(x, c));
      const o = <usize>c * es;
      u0 += xs * w1<F>(w0 + o); u1 += xs * w1<F>(wr1 + o); u2 += xs * w1<F>(wr2 + o); u3 += xs * w1<F>(wr3 + o);
    }
    if (isFp8<F>()) {
      const q0 = blockScale<F>(s0, b0, bc), q1 = blockScale<F>(s1, b0, bc), q2 = blockScale<F>(s2, b0, bc), q3 = blockScale<F>(s3, b0, bc);
      c0v = f32x4.add(c0v, f32x4.mul(a0, f32x4.splat(q0))); t0 += u0 * q0;
      c1v = f32x4.add(c1v, f32x4.mul(a1, f32x4.splat(q1))); t1 += u1 * q1;
      c2v = f32x4.add(c2v, f32x4.mul(a2, f32x4.splat(q2))); t2 += u2 * q2;
      c3v = f32x4.add(c3v, f32x4.mul(a3, f32x4.splat(q3))); t3 += u3 * q3;
    } else {
      c0v = f32x4.add(c0v, a0); t0 += u0;
      c1v = f32x4.add(c1v, a1); t1 += u1;
      c2v = f32x4.add(c2v, a2); t2 += u2;
      c3v = f32x4.add(c3v, a3); t3 += u3;
    }
  }
  store<f32>(out, hsum(c0v) + t0);
  store<f32>(out + 4, hsum(c1v) + t1);
  store<f32>(out + 8, hsum(c2v) + t2);
  store<f32>(out + 12, hsum(c3v) + t3);
}

/** One row · four tokens (x rows xsb bytes apart); results to out + t·osb. */
// @ts-ignore: decorator
@inline function dot1x4<F>(x: usize, xsb: usize, w: usize, k: i32, srow: usize, bc: i32, out: usize, osb: usize): void {
  const es = esize<F>();
  const x0 = x, x1 = x + xsb, x2 = x + 2 * xsb, x3 = x + 3 * xsb;
  let c0v = f32x4.splat(0), c1v = f32x4.splat(0), c2v = f32x4.splat(0), c3v = f32x4.splat(0);
  let t0: f32 = 0, t1: f32 = 0, t2: f32 = 0, t3: f32 = 0;
  for (let b0 = 0; b0 < k; b0 += bc) {
    const b1 = min(k, b0 + bc);
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let u0: f32 = 0, u1: f32 = 0, u2: f32 = 0, u3: f32 = 0;
    let c = b0;
    for (; c + 4 <= b1; c += 4) {
      const wv = w4<F>(w + <usize>c * es);
      a0 = f32x4.add(a0, f32x4.mul(v128.load(fptr(x0, c)), wv));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(fptr(x1, c)), wv));
      a2 = f32x4.add(a2, f32x4.mul(v128.load(fptr(x2, c)), wv));
      a3 = f32x4.add(a3, f32x4.mul(v128.load(fptr(x3, c)), wv));
    }
    for (; c < b1; c++) {
      const ws = w1<F>(w + <usize>c * es);
      u0 += load<f32>(fptr(x0, c)) * ws; u1 += load<f32>(fptr(x1, c)) * ws;
      u2 += load<f32>(fptr(x2, c)) * ws; u3 += load<f32>(fptr(x3, c)) * ws;
    }
    if (isFp8<F>()) {
      const q = blockScale<F>(srow, b0, bc);
      const qv = f32x4.splat(q);
      c0v = f32x4.add(c0v, f32x4.mul(a0, qv)); t0 += u0 * q;
      c1v = f32x4.add(c1v, f32x4.mul(a1, qv)); t1 += u1 * q;
      c2v = f32x4.add(c2v, f32x4.mul(a2, qv)); t2 += u2 * q;
      c3v = f32x4.add(c3v, f32x4.mul(a3, qv)); t3 += u3 * q;
    } else {
      c0v = f32x4.add(c0v, a0); t0 += u0;
      c1v = f32x4.add(c1v, a1); t1 += u1;
      c2v = f32x4.add(c2v, a2); t2 += u2;
      c3v = f32x4.add(c3v, a3); t3 += u3;
    }
  }
  store<f32>(out, hsum(c0v) + t0);
  store<f32>(out + osb, hsum(c1v) + t1);
  store<f32>(out + 2 * osb, hsum(c2v) + t2);
  store<f32>(out + 3 * osb, hsum(c3v) + t3);
}

/**
 * Two rows · four tokens (x rows xsb bytes apart) for the formats without block scales: each
 * decoded weight serves four tokens and each activation load two rows (22 instructions per 32
 * multiply-adds for f32, against 26 for dot1x4). Row A's results to out + t·osb, row B's 4
 * bytes after.
 */
// @ts-ignore: decorator
@inline function dot2x4<F>(x: usize, xsb: usize, w: usize, rowBytes: usize, k: i32, out: usize, osb: usize): void {
  const es = esize<F>();
  const x0 = x, x1 = x + xsb, x2 = x + 2 * xsb, x3 = x + 3 * xsb, wb = w + rowBytes;
  let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  let c = 0;
  for (; c + 4 <= k; c += 4) {
    const o = <usize>c * es;
    const va = w4<F>(w + o), vb = w4<F>(wb + o);
    let xv = v128.load(fptr(x0, c));
    a0 = f32x4.add(a0, f32x4.mul(xv, va)); b0 = f32x4.add(b0, f32x4.mul(xv, vb));
    xv = v128.load(fptr(x1, c));
    a1 = f32x4.add(a1, f32x4.mul(xv, va)); b1 = f32x4.add(b1, f32x4.mul(xv, vb));
    xv = v128.load(fptr(x2, c));
    a2 = f32x4.add(a2, f32x4.mul(xv, va)); b2 = f32x4.add(b2, f32x4.mul(xv, vb));
    xv = v128.load(fptr(x3, c));
    a3 = f32x4.add(a3, f32x4.mul(xv, va)); b3 = f32x4.add(b3, f32x4.mul(xv, vb));
  }
  let ra = fhsum4(a0, a1, a2, a3), rb = fhsum4(b0, b1, b2, b3);
  for (; c < k; c++) {
    const o = <usize>c * es;
    const xv = f32x4.replace_lane(f32x4.replace_lane(f32x4.replace_lane(f32x4.splat(load<f32>(fptr(x0, c))), 1, load<f32>(fptr(x1, c))), 2, load<f32>(fptr(x2, c))), 3, load<f32>(fptr(x3, c)));
    ra = f32x4.add(ra, f32x4.mul(xv, f32x4.splat(w1<F>(w + o))));
    rb = f32x4.add(rb, f32x4.mul(xv, f32x4.splat(w1<F>(wb + o))));
  }
  store<f32>(out, f32x4.extract_lane(ra, 0)); store<f32>(out + 4, f32x4.extract_lane(rb, 0));
  store<f32>(out + osb, f32x4.extract_lane(ra, 1)); store<f32>(out + osb + 4, f32x4.extract_lane(rb, 1));
  store<f32>(out + 2 * osb, f32x4.extract_lane(ra, 2)); store<f32>(out + 2 * osb + 4, f32x4.extract_lane(rb, 2));
  store<f32>(out + 3 * osb, f32x4.extract_lane(ra, 3)); store<f32>(out + 3 * osb + 4, f32x4.extract_lane(rb, 3));
}

/**
 * x [n, k] (row stride xs) times rows [r0, r1) of w [*, k] transposed; out points at the output
 * column of row r0, row stride os. sc/br/bc: fp8 block scales and block shape (ignored otherwise).
 * This part computes rows shareLo..shareHi of [r0, r1) (multiples of 4) for every token.
 */
// @ts-ignore: decorator
@inline function matmul<F>(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32,
  sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  const a = shareLo(r0, r1, 4, part, parts), b = shareHi(r0, r1, 4, part, parts);
  if (a >= b || k <= 0) return;
  if (!isFp8<F>()) bc = k;
  const scaleCols = (k + bc - 1) / bc;
  const es = esize<F>();
  const rowBytes = <usize>k * es;
  const xsb = <usize>xs << 2, osb = <usize>os << 2;
  for (let p0 = 0; p0 < n; p0 += TOKEN_PANEL) {
    const p1 = min(n, p0 + TOKEN_PANEL);
    for (let r = a; r < b; r += 4) {
      const rn = min(4, b - r);
      const wr = w + <usize>r * rowBytes;
      const orow = out + (<usize>(r - r0) << 2);
      let i = p0;
      for (; i + 4 <= p1; i += 4) {
        let j = 0;
        // Pairs of rows where there are no block scales (fp8 keeps one row: its per-block sums take the registers).
        if (!isFp8<F>()) for (; j + 2 <= rn; j += 2) dot2x4<F>(x + <usize>i * xsb, xsb, wr + <usize>j * rowBytes, rowBytes, k, orow + <usize>i * osb + (<usize>j << 2), osb);
        for (; j < rn; j++) {
          dot1x4<F>(x + <usize>i * xsb, xsb, wr + <usize>j * rowBytes, k, scaleRow<F>(sc, r + j, br, scaleCols), bc,
            orow + <usize>i * osb + (<usize>j << 2), osb);
        }
      }
      for (; i < p1; i++) {
        const xi = x + <usize>i * xsb, oi = orow + <usize>i * osb;
        if (rn == 4) {
          dot4x1<F>(xi, wr, rowBytes, k, scaleRow<F>(sc, r, br, scaleCols), scaleRow<F>(sc, r + 1, br, scaleCols),
            scaleRow<F>(sc, r + 2, br, scaleCols), scaleRow<F>(sc, r + 3, br, scaleCols), bc, oi);
        } else {
          for (let j = 0; j < rn; j++) {
            store<f32>(oi + (<usize>j << 2), dot1x1<F>(xi, wr + <usize>j * rowBytes, k, scaleRow<F>(sc, r + j, br, scaleCols), bc));
          }
        }
      }
    }
  }
}

export function matmul_f32(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<f32>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}
export function matmul_bf16(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<BF16>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}
export function matmul_f16(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<F16>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}
export function matmul_f16s(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<F16S>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}
export function matmul_fp8(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<FP8>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}
export function matmul_fp8s(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmul<FP8S>(x, xs, n, w, k, r0, r1, out, os, sc, br, bc, part, parts);
}

// ---- row decode ------------------------------------------------------------------------------

/** Row r of w [*, k] as float32 into dst (fp8: code · block scale, one rounding). */
// @ts-ignore: decorator
@inline function decodeRow<F>(w: usize, r: i32, k: i32, sc: usize, br: i32, bc: i32, dst: usize): void {
  const es = esize<F>();
  const wr = w + <usize>r * <usize>k * es;
  if (!isFp8<F>()) bc = k;
  const srow = scaleRow<F>(sc, r, br, (k + bc - 1) / bc);
  for (let b0 = 0; b0 < k; b0 += bc) {
    const b1 = min(k, b0 + bc);
    const s = blockScale<F>(srow, b0, bc);
    const sv = f32x4.splat(s);
    let c = b0;
    for (; c + 4 <= b1; c += 4) {
      const v = w4<F>(wr + <usize>c * es);
      v128.store(fptr(dst, c), isFp8<F>() ? f32x4.mul(v, sv) : v);
    }
    for (; c < b1; c++) store<f32>(fptr(dst, c), isFp8<F>() ? w1<F>(wr + <usize>c * es) * s : w1<F>(wr + <usize>c * es));
  }
}

// ---- multi-head latent attention -----------------------------------------------------------

/**
 * Below this many tokens, MLA's steps 1 and 3 work token by token with the weights summed in
 * registers; from it on, each decoded weight is shared by the tokens (prefill).
 */
const FEW_TOKENS: i32 = 4;
//
// Step 2 (scores, softmax, weighted sum of latents) reads only float32 scratch and the float32
// cache, so one implementation serves every weight format (mla<F>, mlaq<F>). It walks the
// positions block by block of the paged cache: a block's rows are consecutive, so the `/ B`
// and `% B` of the block table happen once per block, and the block stays in cache while every
// head pair of the chunk uses it. Heads go in pairs so that each loaded row vector serves two
// heads (a lone head when the chunk's count is odd).

/** [Σ a, Σ b, Σ c, Σ d] over the lanes of four f32x4. */
// @ts-ignore: decorator
@inline function fhsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = f32x4.add(v128.shuffle<f32>(a, b, 0, 4, 1, 5), v128.shuffle<f32>(a, b, 2, 6, 3, 7));
  const cd = f32x4.add(v128.shuffle<f32>(c, d, 0, 4, 1, 5), v128.shuffle<f32>(c, d, 2, 6, 3, 7));
  return f32x4.add(v128.shuffle<f32>(ab, cd, 0, 1, 4, 5), v128.shuffle<f32>(ab, cd, 2, 3, 6, 7));
}

/** Σ a[c]·b[c] for c in [from, len): the scalar tail of a vector loop. */
function dotTail(a: usize, b: usize, from: i32, len: i32): f32 {
  let t: f32 = 0;
  for (let c = from; c < len; c++) t += load<f32>(fptr(a, c)) * load<f32>(fptr(b, c));
  return t;
}

/** The four dot products of q (W floats) with rows r0..r3 plus their vector parts a0..a3, scaled. */
// @ts-ignore: decorator
@inline function scores4(a0: v128, a1: v128, a2: v128, a3: v128, q: usize, r0: usize, rb: usize, W: i32, scale: v128): v128 {
  let s = fhsum4(a0, a1, a2, a3);
  const c = W & ~3;
  if (c < W) {
    s = f32x4.replace_lane(s, 0, f32x4.extract_lane(s, 0) + dotTail(q, r0, c, W));
    s = f32x4.replace_lane(s, 1, f32x4.extract_lane(s, 1) + dotTail(q, r0 + rb, c, W));
    s = f32x4.replace_lane(s, 2, f32x4.extract_lane(s, 2) + dotTail(q, r0 + 2 * rb, c, W));
    s = f32x4.replace_lane(s, 3, f32x4.extract_lane(s, 3) + dotTail(q, r0 + 3 * rb, c, W));
  }
  return f32x4.mul(s, scale);
}

/**
 * Scores of heads qa and qb (W floats each: absorbed query | rope query) against the four
 * consecutive cached rows r0, r0 + rb, ...; scaled, to sa[0..3] and sb[0..3].
 */
// @ts-ignore: decorator
@inline function scores2x4(qa: usize, qb: usize, r0: usize, rb: usize, W: i32, scale: v128, sa: usize, sb: usize): void {
  const r1 = r0 + rb, r2 = r1 + rb, r3 = r2 + rb;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
  for (let o: usize = 0, end = <usize>(W & ~3) << 2; o < end; o += 16) {
    const x = v128.load(qa + o), y = v128.load(qb + o);
    const v0 = v128.load(r0 + o), v1 = v128.load(r1 + o), v2 = v128.load(r2 + o), v3 = v128.load(r3 + o);
    a0 = f32x4.add(a0, f32x4.mul(x, v0)); b0 = f32x4.add(b0, f32x4.mul(y, v0));
    a1 = f32x4.add(a1, f32x4.mul(x, v1)); b1 = f32x4.add(b1, f32x4.mul(y, v1));
    a2 = f32x4.add(a2, f32x4.mul(x, v2)); b2 = f32x4.add(b2, f32x4.mul(y, v2));
    a3 = f32x4.add(a3, f32x4.mul(x, v3)); b3 = f32x4.add(b3, f32x4.mul(y, v3));
  }
  v128.store(sa, scores4(a0, a1, a2, a3, qa, r0, rb, W, scale));
  v128.store(sb, scores4(b0, b1, b2, b3, qb, r0, rb, W, scale));
}

/** scores2x4 for one head. */
// @ts-ignore: decorator
@inline function scores1x4(qa: usize, r0: usize, rb: usize, W: i32, scale: v128, sa: usize): void {
  const r1 = r0 + rb, r2 = r1 + rb, r3 = r2 + rb;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let o: usize = 0, end = <usize>(W & ~3) << 2; o < end; o += 16) {
    const x = v128.load(qa + o);
    a0 = f32x4.add(a0, f32x4.mul(x, v128.load(r0 + o)));
    a1 = f32x4.add(a1, f32x4.mul(x, v128.load(r1 + o)));
    a2 = f32x4.add(a2, f32x4.mul(x, v128.load(r2 + o)));
    a3 = f32x4.add(a3, f32x4.mul(x, v128.load(r3 + o)));
  }
  v128.store(sa, scores4(a0, a1, a2, a3, qa, r0, rb, W, scale));
}

/**
 * la[0..R) += Σ_j wa[j] · row_j[0..R) and lb += Σ_j wb[j] · row_j over cnt consecutive rows
 * (r0 + j·rb). A chunk of 16 columns of both sums stays in registers across the rows, so each
 * row chunk is loaded once for both heads and lat is read and written once per block.
 */
// @ts-ignore: decorator
@inline function accumulate2(la: usize, lb: usize, wa: usize, wb: usize, r0: usize, rb: usize, cnt: i32, R: i32): void {
  const wEnd = wa + (<usize>cnt << 2);
  let c = 0;
  for (; c + 16 <= R; c += 16) {
    const o = <usize>c << 2;
    let a0 = v128.load(la + o), a1 = v128.load(la + o, 16), a2 = v128.load(la + o, 32), a3 = v128.load(la + o, 48);
    let b0 = v128.load(lb + o), b1 = v128.load(lb + o, 16), b2 = v128.load(lb + o, 32), b3 = v128.load(lb + o, 48);
    let r = r0 + o, pb = wb;
    for (let pa = wa; pa < wEnd; pa += 4, pb += 4, r += rb) {
      const x = v128.load32_splat(pa), y = v128.load32_splat(pb);
      const v0 = v128.load(r), v1 = v128.load(r, 16), v2 = v128.load(r, 32), v3 = v128.load(r, 48);
      a0 = f32x4.add(a0, f32x4.mul(x, v0)); b0 = f32x4.add(b0, f32x4.mul(y, v0));
      a1 = f32x4.add(a1, f32x4.mul(x, v1)); b1 = f32x4.add(b1, f32x4.mul(y, v1));
      a2 = f32x4.add(a2, f32x4.mul(x, v2)); b2 = f32x4.add(b2, f32x4.mul(y, v2));
      a3 = f32x4.add(a3, f32x4.mul(x, v3)); b3 = f32x4.add(b3, f32x4.mul(y, v3));
    }
    v128.store(la + o, a0); v128.store(la + o, a1, 16); v128.store(la + o, a2, 32); v128.store(la + o, a3, 48);
    v128.store(lb + o, b0); v128.store(lb + o, b1, 16); v128.store(lb + o, b2, 32); v128.store(lb + o, b3, 48);
  }
  if (c < R) {
    accumulateCols(la, wa, r0, rb, cnt, c, R);
    accumulateCols(lb, wb, r0, rb, cnt, c, R);
  }
}

/** accumulate2 for one head: chunks of 32 columns. */
// @ts-ignore: decorator
@inline function accumulate1(la: usize, wa: usize, r0: usize, rb: usize, cnt: i32, R: i32): void {
  const wEnd = wa + (<usize>cnt << 2);
  let c = 0;
  for (; c + 32 <= R; c += 32) {
    const o = <usize>c << 2;
    let a0 = v128.load(la + o), a1 = v128.load(la + o, 16), a2 = v128.load(la + o, 32), a3 = v128.load(la + o, 48);
    let a4 = v128.load(la + o, 64), a5 = v128.load(la + o, 80), a6 = v128.load(la + o, 96), a7 = v128.load(la + o, 112);
    let r = r0 + o;
    for (let pa = wa; pa < wEnd; pa += 4, r += rb) {
      const x = v128.load32_splat(pa);
      a0 = f32x4.add(a0, f32x4.mul(x, v128.load(r))); a1 = f32x4.add(a1, f32x4.mul(x, v128.load(r, 16)));
      a2 = f32x4.add(a2, f32x4.mul(x, v128.load(r, 32))); a3 = f32x4.add(a3, f32x4.mul(x, v128.load(r, 48)));
      a4 = f32x4.add(a4, f32x4.mul(x, v128.load(r, 64))); a5 = f32x4.add(a5, f32x4.mul(x, v128.load(r, 80)));
      a6 = f32x4.add(a6, f32x4.mul(x, v128.load(r, 96))); a7 = f32x4.add(a7, f32x4.mul(x, v128.load(r, 112)));
    }
    v128.store(la + o, a0); v128.store(la + o, a1, 16); v128.store(la + o, a2, 32); v128.store(la + o, a3, 48);
    v128.store(la + o, a4, 64); v128.store(la + o, a5, 80); v128.store(la + o, a6, 96); v128.store(la + o, a7, 112);
  }
  if (c < R) accumulateCols(la, wa, r0, rb, cnt, c, R);
}

/** Columns [c0, R) of accumulate1, four at a time then one by one. */
function accumulateCols(la: usize, wa: usize, r0: usize, rb: usize, cnt: i32, c0: i32, R: i32): void {
  let c = c0;
  for (; c + 4 <= R; c += 4) {
    const o = <usize>c << 2;
    let a = v128.load(la + o), r = r0 + o;
    for (let j = 0; j < cnt; j++, r += rb) a = f32x4.add(a, f32x4.mul(v128.load32_splat(wa + (<usize>j << 2)), v128.load(r)));
    v128.store(la + o, a);
  }
  for (; c < R; c++) {
    const o = <usize>c << 2;
    let a = load<f32>(la + o), r = r0 + o;
    for (let j = 0; j < cnt; j++, r += rb) a += load<f32>(wa + (<usize>j << 2)) * load<f32>(r);
    store<f32>(la + o, a);
  }
}

/**
 * Step 2 of MLA for one token and heads [h0, h1): scores of the first len positions (block
 * table at `table`, B positions per block, rows of W floats = [latent R | rope key] at cache),
 * softmax, and the weighted sum of latents.
 * qa: the token's query rows [H, W] (absorbed query | rope query); scores [H, maxLen];
 * lat: the token's latent sums [H, R].
 */
function mlaAttend(qa: usize, len: i32, table: usize, cache: usize, W: i32, B: i32, R: i32, scale: f32,
  scores: usize, maxLen: i32, lat: usize, h0: i32, h1: i32): void {
  const rb = <usize>W << 2, blockBytes = <usize>B * rb;
  const sv = f32x4.splat(scale);
  for (let p0 = 0, blk = table; p0 < len; p0 += B, blk += 4) {
    const base = cache + <usize>load<i32>(blk) * blockBytes;
    const cnt = min(B, len - p0);
    let h = h0;
    for (; h + 2 <= h1; h += 2) {
      const q0 = fptr(qa, h * W), q1 = q0 + rb;
      const s0 = fptr(scores, h * maxLen + p0), s1 = s0 + (<usize>maxLen << 2);
      let j = 0;
      for (; j + 4 <= cnt; j += 4) scores2x4(q0, q1, base + <usize>j * rb, rb, W, sv, fptr(s0, j), fptr(s1, j));
      for (; j < cnt; j++) {
        const row = base + <usize>j * rb;
        store<f32>(fptr(s0, j), dot(q0, row, W) * scale);
        store<f32>(fptr(s1, j), dot(q1, row, W) * scale);
      }
    }
    if (h < h1) {
      const q0 = fptr(qa, h * W), s0 = fptr(scores, h * maxLen + p0);
      let j = 0;
      for (; j + 4 <= cnt; j += 4) scores1x4(q0, base + <usize>j * rb, rb, W, sv, fptr(s0, j));
      for (; j < cnt; j++) store<f32>(fptr(s0, j), dot(q0, base + <usize>j * rb, W) * scale);
    }
  }
  for (let h = h0; h < h1; h++) {
    softmax(fptr(scores, h * maxLen), len);
    zero(fptr(lat, h * R), R);
  }
  for (let p0 = 0, blk = table; p0 < len; p0 += B, blk += 4) {
    const base = cache + <usize>load<i32>(blk) * blockBytes;
    const cnt = min(B, len - p0);
    let h = h0;
    for (; h + 2 <= h1; h += 2) {
      const w0 = fptr(scores, h * maxLen + p0);
      accumulate2(fptr(lat, h * R), fptr(lat, (h + 1) * R), w0, w0 + (<usize>maxLen << 2), base, rb, cnt, R);
    }
    if (h < h1) accumulate1(fptr(lat, h * R), fptr(scores, h * maxLen + p0), base, rb, cnt, R);
  }
}

/** mlaAttend for each of n tokens (tok: per token its position and block table; qAbs [n, H, W], lat [n, H, R]). */
function mlaAttendTokens(n: i32, H: i32, tok: usize, qAbs: usize, cache: usize, W: i32, B: i32, R: i32, scale: f32,
  scores: usize, maxLen: i32, lat: usize, h0: i32, h1: i32): void {
  for (let i = 0; i < n; i++) {
    const len = load<i32>(tok + (<usize>i << 3)) + 1;
    const table = <usize>load<u32>(tok + (<usize>i << 3) + 4);
    mlaAttend(fptr(qAbs, i * H * W), len, table, cache, W, B, R, scale, scores, maxLen, fptr(lat, i * H * R), h0, h1);
  }
}

/**
 * Step 1 of mla for one token: qa[0..R) = Σ_d q[d] · row r0 + d of w [*, R] (format F), d < nope.
 * 32 columns at a time are summed in registers over the rows, q[d] and the row's fp8 block scale
 * folded into one factor: no decoded row goes through memory. (fp8 column blocks that are not
 * whole multiples of 32, or of 4, leave the chunks that would straddle them to narrower loops.)
 */
// @ts-ignore: decorator
@inline function absorb<F>(q: usize, w: usize, r0: i32, nope: i32, R: i32, sc: usize, br: i32, bc: i32, qa: usize): void {
  const es = esize<F>();
  const rowBytes = <usize>R * es;
  const w0 = w + <usize>r0 * rowBytes;
  if (!isFp8<F>()) bc = R;
  const scaleCols = (R + bc - 1) / bc;
  let c = 0;
  if (!isFp8<F>() || bc % 32 == 0) {
    for (; c + 32 <= R; c += 32) {
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
      let wr = w0 + <usize>c * es;
      for (let d = 0; d < nope; d++, wr += rowBytes) {
        let f = load<f32>(fptr(q, d));
        if (isFp8<F>()) f *= blockScale<F>(scaleRow<F>(sc, r0 + d, br, scaleCols), c, bc);
        const fv = f32x4.splat(f);
        a0 = f32x4.add(a0, f32x4.mul(w4<F>(wr), fv));
        a1 = f32x4.add(a1, f32x4.mul(w4<F>(wr + 4 * es), fv));
        a2 = f32x4.add(a2, f32x4.mul(w4<F>(wr + 8 * es), fv));
        a3 = f32x4.add(a3, f32x4.mul(w4<F>(wr + 12 * es), fv));
        a4 = f32x4.add(a4, f32x4.mul(w4<F>(wr + 16 * es), fv));
        a5 = f32x4.add(a5, f32x4.mul(w4<F>(wr + 20 * es), fv));
        a6 = f32x4.add(a6, f32x4.mul(w4<F>(wr + 24 * es), fv));
        a7 = f32x4.add(a7, f32x4.mul(w4<F>(wr + 28 * es), fv));
      }
      const o = fptr(qa, c);
      v128.store(o, a0); v128.store(o, a1, 16); v128.store(o, a2, 32); v128.store(o, a3, 48);
      v128.store(o, a4, 64); v128.store(o, a5, 80); v128.store(o, a6, 96); v128.store(o, a7, 112);
    }
  }
  if (!isFp8<F>() || bc % 4 == 0) {
    for (; c + 4 <= R; c += 4) {
      let a = f32x4.splat(0);
      let wr = w0 + <usize>c * es;
      for (let d = 0; d < nope; d++, wr += rowBytes) {
        let f = load<f32>(fptr(q, d));
        if (isFp8<F>()) f *= blockScale<F>(scaleRow<F>(sc, r0 + d, br, scaleCols), c, bc);
        a = f32x4.add(a, f32x4.mul(w4<F>(wr), f32x4.splat(f)));
      }
      v128.store(fptr(qa, c), a);
    }
  }
  for (; c < R; c++) {
    let a: f32 = 0;
    let wr = w0 + <usize>c * es;
    for (let d = 0; d < nope; d++, wr += rowBytes) {
      let f = load<f32>(fptr(q, d));
      if (isFp8<F>()) f *= blockScale<F>(scaleRow<F>(sc, r0 + d, br, scaleCols), c, bc);
      a += w1<F>(wr) * f;
    }
    store<f32>(fptr(qa, c), a);
  }
}

/**
 * Absorbed MLA over the paged latent cache (docs/backends.md, mlaAttention). A chunk is a
 * range of heads and does every step for them, so chunks are independent.
 *
 * q [n, H·(nope+rope)]; kvb [H·(nope+vDim), R] (format F); cache: this layer's slots of W floats
 * ([latent R | rope key], W = R + rope); tok: per token (i32 position, u32 pointer to its block
 * table of i32); scratch: qAbs [n, H, W], lat [n, H, R], scores [H, maxLen], rowTmp [H, R];
 * out [n, H·vDim].
 *   1. qAbs[i,h] = [Σ_d q_nope[i,h,d] · W_UK[h,d,:] | q_rope[i,h]]   (W_UK folded into the query)
 *   2. s_p = qAbs[i,h] · row_p · scale, p ≤ pos_i; softmax; lat[i,h] = Σ_p w_p c_p   (mlaAttend)
 *   3. out[i,h,:] = W_UV[h] · lat[i,h]                       (one matmul per head)
 * For fewer than FEW_TOKENS tokens (decode) step 1 sums W_UK in registers per token (absorb);
 * for more, each decoded W_UK row serves every token. With the rope query next to the absorbed
 * one, a score is one dot product over the whole cached row. Step 2 goes block by block through
 * the cache, heads in pairs (mlaAttend). Step 3 is matmul (four rows per load of lat for one
 * token, one decoded weight for four tokens in batches).
 */
// @ts-ignore: decorator
@inline function mla<F>(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32,
  kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32,
  qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  const h0 = shareLo(0, H, 1, part, parts), h1 = shareHi(0, H, 1, part, parts);
  if (h0 >= h1) return;
  const qs = nope + rope, qCols = H * qs, hs = nope + vDim;

  // 1. Absorb W_UK into the query.
  for (let h = h0; h < h1; h++) {
    for (let i = 0; i < n; i++) memory.copy(fptr(qAbs, (i * H + h) * W + R), fptr(q, i * qCols + h * qs + nope), <usize>rope << 2);
    if (n < FEW_TOKENS) {
      for (let i = 0; i < n; i++) absorb<F>(fptr(q, i * qCols + h * qs), kvb, h * hs, nope, R, sc, br, bc, fptr(qAbs, (i * H + h) * W));
      continue;
    }
    // Many tokens: each decoded row serves all of them.
    for (let i = 0; i < n; i++) zero(fptr(qAbs, (i * H + h) * W), R);
    const tmp = fptr(rowTmp, h * R);
    for (let d = 0; d < nope; d++) {
      decodeRow<F>(kvb, h * hs + d, R, sc, br, bc, tmp);
      for (let i = 0; i < n; i++) {
        const qv = load<f32>(fptr(q, i * qCols + h * qs + d));
        if (qv != 0) axpy(fptr(qAbs, (i * H + h) * W), qv, tmp, R);
      }
    }
  }

  // 2. Scores, softmax and the weighted sum of latents, token by token.
  mlaAttendTokens(n, H, tok, qAbs, cache, W, B, R, scale, scores, maxLen, lat, h0, h1);

  // 3. Up-project with W_UV: rows h·hs + nope .. + vDim of kv_b.
  for (let h = h0; h < h1; h++) {
    matmul<F>(fptr(lat, h * R), H * R, n, kvb, R, h * hs + nope, h * hs + nope + vDim, fptr(out, h * vDim), H * vDim, sc, br, bc, 0, 1);
  }
}

/** In place: p[0..len) = softmax(p[0..len)). */
function softmax(p: usize, len: i32): void {
  let mv = f32x4.splat(-Infinity);
  let m: f32 = -Infinity;
  let i = 0;
  for (; i + 4 <= len; i += 4) mv = f32x4.max(mv, v128.load(fptr(p, i)));
  for (; i < len; i++) m = max(m, load<f32>(fptr(p, i)));
  m = max(max(max(f32x4.extract_lane(mv, 0), f32x4.extract_lane(mv, 1)), max(f32x4.extract_lane(mv, 2), f32x4.extract_lane(mv, 3))), m);
  const mvv = f32x4.splat(m);
  let sv = f32x4.splat(0);
  let s: f32 = 0;
  i = 0;
  for (; i + 4 <= len; i += 4) {
    const e = vexp(f32x4.sub(v128.load(fptr(p, i)), mvv));
    v128.store(fptr(p, i), e);
    sv = f32x4.add(sv, e);
  }
  for (; i < len; i++) {
    const e = exp1(load<f32>(fptr(p, i)) - m);
    store<f32>(fptr(p, i), e);
    s += e;
  }
  const inv = f32x4.splat(1 / (hsum(sv) + s));
  i = 0;
  for (; i + 4 <= len; i += 4) v128.store(fptr(p, i), f32x4.mul(v128.load(fptr(p, i)), inv));
  for (; i < len; i++) store<f32>(fptr(p, i), load<f32>(fptr(p, i)) * f32x4.extract_lane(inv, 0));
}

export function mla_f32(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<f32>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_bf16(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<BF16>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_f16(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<F16>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_f16s(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<F16S>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_fp8(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<FP8>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_fp8s(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mla<FP8S>(q, n, H, nope, rope, vDim, R, scale, kvb, sc, br, bc, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}

// ---- element-wise ------------------------------------------------------------------------

/** Row-wise x / sqrt(mean(x²) + eps) · g, rows split between parts. g: one row of format F. */
// @ts-ignore: decorator
@inline function rmsnorm<F>(x: usize, out: usize, n: i32, d: i32, g: usize, eps: f32, part: i32, parts: i32): void {
  const a = shareLo(0, n, 1, part, parts), b = shareHi(0, n, 1, part, parts);
  const es = esize<F>();
  for (let i = a; i < b; i++) {
    const xi = fptr(x, i * d), oi = fptr(out, i * d);
    const inv: f32 = 1 / Mathf.sqrt(dot(xi, xi, d) / <f32>d + eps);
    const iv = f32x4.splat(inv);
    let c = 0;
    for (; c + 4 <= d; c += 4) v128.store(fptr(oi, c), f32x4.mul(f32x4.mul(v128.load(fptr(xi, c)), iv), w4<F>(g + <usize>c * es)));
    for (; c < d; c++) store<f32>(fptr(oi, c), load<f32>(fptr(xi, c)) * inv * w1<F>(g + <usize>c * es));
  }
}
export function rmsnorm_f32(x: usize, out: usize, n: i32, d: i32, g: usize, eps: f32, part: i32, parts: i32): void { rmsnorm<f32>(x, out, n, d, g, eps, part, parts); }
export function rmsnorm_bf16(x: usize, out: usize, n: i32, d: i32, g: usize, eps: f32, part: i32, parts: i32): void { rmsnorm<BF16>(x, out, n, d, g, eps, part, parts); }
export function rmsnorm_f16(x: usize, out: usize, n: i32, d: i32, g: usize, eps: f32, part: i32, parts: i32): void { rmsnorm<F16>(x, out, n, d, g, eps, part, parts); }
export function rmsnorm_f16s(x: usize, out: usize, n: i32, d: i32, g: usize, eps: f32, part: i32, parts: i32): void { rmsnorm<F16S>(x, out, n, d, g, eps, part, parts); }

/** out = a + b over len floats. */
export function add(a: usize, b: usize, out: usize, len: i32, part: i32, parts: i32): void {
  const lo = shareLo(0, len, 16, part, parts), hi = shareHi(0, len, 16, part, parts);
  let i = lo;
  for (; i + 4 <= hi; i += 4) v128.store(fptr(out, i), f32x4.add(v128.load(fptr(a, i)), v128.load(fptr(b, i))));
  for (; i < hi; i++) store<f32>(fptr(out, i), load<f32>(fptr(a, i)) + load<f32>(fptr(b, i)));
}

// @ts-ignore: decorator
@inline function silu4(g: v128): v128 {
  return f32x4.div(g, f32x4.add(f32x4.splat(1), vexp(f32x4.neg(g))));
}

/** out = silu(g) · u over len floats. */
export function swiglu(g: usize, u: usize, out: usize, len: i32, part: i32, parts: i32): void {
  const lo = shareLo(0, len, 16, part, parts), hi = shareHi(0, len, 16, part, parts);
  let i = lo;
  for (; i + 4 <= hi; i += 4) v128.store(fptr(out, i), f32x4.mul(silu4(v128.load(fptr(g, i))), v128.load(fptr(u, i))));
  for (; i < hi; i++) {
    const gv = load<f32>(fptr(g, i));
    store<f32>(fptr(out, i), (gv / (1 + exp1(-gv))) * load<f32>(fptr(u, i)));
  }
}

/**
 * out[r, c] = silu(g[r, c]) · u[r, c] for rows < rows and this part's share of columns [0, cols)
 * (the same share as matmul's rows [0, cols)): fuses with the gate/up matmuls of an expert.
 */
export function swiglu_cols(g: usize, u: usize, out: usize, rows: i32, cols: i32, part: i32, parts: i32): void {
  const lo = shareLo(0, cols, 4, part, parts), hi = shareHi(0, cols, 4, part, parts);
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let c = lo;
    for (; c + 4 <= hi; c += 4) v128.store(fptr(out, o + c), f32x4.mul(silu4(v128.load(fptr(g, o + c))), v128.load(fptr(u, o + c))));
    for (; c < hi; c++) {
      const gv = load<f32>(fptr(g, o + c));
      store<f32>(fptr(out, o + c), (gv / (1 + exp1(-gv))) * load<f32>(fptr(u, o + c)));
    }
  }
}

/**
 * out[rows[j], c] += wts[j] · y[j, c] for j < cnt and this part's share of columns [0, cols)
 * (the same share as matmul's rows [0, cols)): the weighted sum of an expert's outputs.
 */
export function scatter_add_cols(out: usize, y: usize, rows: usize, wts: usize, cnt: i32, cols: i32, part: i32, parts: i32): void {
  const lo = shareLo(0, cols, 4, part, parts), hi = shareHi(0, cols, 4, part, parts);
  for (let j = 0; j < cnt; j++) {
    const o = load<i32>(rows + (<usize>j << 2)) * cols, yo = j * cols;
    const wt = load<f32>(fptr(wts, j));
    const wv = f32x4.splat(wt);
    let c = lo;
    for (; c + 4 <= hi; c += 4) v128.store(fptr(out, o + c), f32x4.add(v128.load(fptr(out, o + c)), f32x4.mul(wv, v128.load(fptr(y, yo + c)))));
    for (; c < hi; c++) store<f32>(fptr(out, o + c), load<f32>(fptr(out, o + c)) + wt * load<f32>(fptr(y, yo + c)));
  }
}

// ---- llama.cpp block formats (GGUF): q8_0, q4_0, q4_k, q6_k ----------------------------------
//
// Rows are whole blocks, read in place (src/formats/quant.ts has the layouts). A block is walked
// in sub-blocks of 32 values; a sub-block's scale (and q4_k's min) is computed once, then its
// values are decoded four at a time into f32x4 in registers (wq) with exactly the operations of
// ggml's dequantize_row_* (so every decoded weight equals the reference's), and multiplied with
// float32 activations. Only the summation order differs from the reference: results are float32
// exact in the sense of the conformance suite (no activation quantization).
// Markers (used only here): u32 q4_0, u64 q8_0, i64 q4_k, f64 q6_k.

type Q4_0 = u32;
type Q8_0 = u64;
type Q4_K = i64;
type Q6_K = f64;

// @ts-ignore: decorator
@inline function isQ8_0<F>(): bool { return sizeof<F>() == 8 && !isSigned<F>() && !isFloat<F>(); }
// @ts-ignore: decorator
@inline function isQ4_0<F>(): bool { return sizeof<F>() == 4 && !isSigned<F>() && !isFloat<F>(); }
// @ts-ignore: decorator
@inline function isQ4_K<F>(): bool { return sizeof<F>() == 8 && isSigned<F>() && !isFloat<F>(); }
/** Values per block. */
// @ts-ignore: decorator
@inline function qValues<F>(): i32 { return isQ8_0<F>() || isQ4_0<F>() ? 32 : 256; }
/** Bytes per block. */
// @ts-ignore: decorator
@inline function qBytes<F>(): i32 { return isQ8_0<F>() ? 34 : isQ4_0<F>() ? 18 : isQ4_K<F>() ? 144 : 210; }

/** An IEEE half (bits h) as float32, exactly (subnormals, infinities and NaNs included). */
// @ts-ignore: decorator
@inline function half(h: u32): f32 {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff, s = (h & 0x8000) << 16;
  if (e == 0) return reinterpret<f32>(s | reinterpret<u32>(<f32>m * 5.9604644775390625e-8));
  if (e == 31) return reinterpret<f32>(s | 0x7f800000 | (m << 13));
  return reinterpret<f32>(s | ((e + 112) << 23) | (m << 13));
}

/** Four unsigned bytes at p as i32x4. */
// @ts-ignore: decorator
@inline function u8x4(p: usize): v128 {
  return i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(p)));
}

/**
 * Scale parameters of sub-block s (32 values) of the block at blk: ggml's per-element factor
 * for the first and second 16 values (they differ only for q6_k) and q4_k's min. Written to the
 * globals below (each thread has its own instance, so they are per-thread).
 */
let qd0: f32 = 0, qd1: f32 = 0, qm: f32 = 0;
// @ts-ignore: decorator
@inline function qParams<F>(blk: usize, s: i32): void {
  if (isQ8_0<F>() || isQ4_0<F>()) {
    qd0 = half(<u32>load<u16>(blk)); qd1 = qd0; qm = 0;
  } else if (isQ4_K<F>()) {
    const d = half(<u32>load<u16>(blk)), dmin = half(<u32>load<u16>(blk + 2));
    const q = blk + 4;
    let sc: u32, m: u32;
    if (s < 4) {
      sc = <u32>load<u8>(q + s) & 63; m = <u32>load<u8>(q + s + 4) & 63;
    } else {
      sc = (<u32>load<u8>(q + s + 4) & 0xf) | ((<u32>load<u8>(q + s - 4) >> 6) << 4);
      m = (<u32>load<u8>(q + s + 4) >> 4) | ((<u32>load<u8>(q + s) >> 6) << 4);
    }
    qd0 = d * <f32>sc; qd1 = qd0; qm = dmin * <f32>m;
  } else {
    const d = half(<u32>load<u16>(blk + 208));
    const i = 8 * (s >> 2) + 2 * (s & 3);
    qd0 = d * <f32>load<i8>(blk + 192 + i); qd1 = d * <f32>load<i8>(blk + 193 + i); qm = 0;
  }
}

/**
 * The codes of values 4g..4g+3 of sub-block s of the block at blk as float32, before the
 * sub-block's scale (and q4_k's min): q4_0's and q6_k's offsets are included. Exact.
 */
// @ts-ignore: decorator
@inline function wcode<F>(blk: usize, s: i32, g: i32): v128 {
  if (isQ8_0<F>()) return f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(i16x8.extend_low_i8x16_s(v128.load32_zero(blk + 2 + (<usize>g << 2)))));
  if (isQ4_0<F>()) {
    const b = u8x4(blk + 2 + (<usize>(g & 3) << 2));
    const q = g < 4 ? v128.and(b, i32x4.splat(15)) : i32x4.shr_u(b, 4);
    return f32x4.convert_i32x4_s(i32x4.sub(q, i32x4.splat(8)));
  }
  if (isQ4_K<F>()) {
    const b = u8x4(blk + 16 + (<usize>(s >> 1) << 5) + (<usize>g << 2));
    return f32x4.convert_i32x4_s((s & 1) ? i32x4.shr_u(b, 4) : v128.and(b, i32x4.splat(15)));
  }
  const h = s >> 2, qq = s & 3;
  const lo = u8x4(blk + (<usize>h << 6) + (<usize>(qq & 1) << 5) + (<usize>g << 2));
  const hi = u8x4(blk + 128 + (<usize>h << 5) + (<usize>g << 2));
  const l4 = qq >= 2 ? i32x4.shr_u(lo, 4) : v128.and(lo, i32x4.splat(15));
  const h2 = v128.and(i32x4.shr_u(hi, 2 * qq), i32x4.splat(3));
  return f32x4.convert_i32x4_s(i32x4.sub(v128.or(l4, i32x4.shl(h2, 4)), i32x4.splat(32)));
}

/** Values 4g..4g+3 of sub-block s of the block at blk, decoded (qParams of s must be current). */
// @ts-ignore: decorator
@inline function wq<F>(blk: usize, s: i32, g: i32): v128 {
  const v = f32x4.mul(wcode<F>(blk, s, g), f32x4.splat(g < 4 ? qd0 : qd1));
  return isQ4_K<F>() ? f32x4.sub(v, f32x4.splat(qm)) : v;
}

/** Row (whole blocks, k values) · one token. */
// @ts-ignore: decorator
@inline function qdot1<F>(x: usize, wr: usize, k: i32): f32 {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    for (let s = 0; s < subs; s++) {
      qParams<F>(blk, s);
      const xb = fptr(x, b * qValues<F>() + (s << 5));
      a0 = f32x4.add(a0, f32x4.mul(v128.load(xb), wq<F>(blk, s, 0)));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(xb + 16), wq<F>(blk, s, 1)));
      a0 = f32x4.add(a0, f32x4.mul(v128.load(xb + 32), wq<F>(blk, s, 2)));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(xb + 48), wq<F>(blk, s, 3)));
      a0 = f32x4.add(a0, f32x4.mul(v128.load(xb + 64), wq<F>(blk, s, 4)));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(xb + 80), wq<F>(blk, s, 5)));
      a0 = f32x4.add(a0, f32x4.mul(v128.load(xb + 96), wq<F>(blk, s, 6)));
      a1 = f32x4.add(a1, f32x4.mul(v128.load(xb + 112), wq<F>(blk, s, 7)));
    }
  }
  return hsum(f32x4.add(a0, a1));
}

/** Row · four tokens (x rows xsb bytes apart): each decoded group serves four tokens; results to out + t·osb. */
// @ts-ignore: decorator
@inline function qdot4<F>(x: usize, xsb: usize, wr: usize, k: i32, out: usize, osb: usize): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    for (let s = 0; s < subs; s++) {
      qParams<F>(blk, s);
      const xb = fptr(x, b * qValues<F>() + (s << 5));
      for (let g = 0; g < 8; g++) {
        const wv = wq<F>(blk, s, g);
        const o = xb + (<usize>g << 4);
        a0 = f32x4.add(a0, f32x4.mul(v128.load(o), wv));
        a1 = f32x4.add(a1, f32x4.mul(v128.load(o + xsb), wv));
        a2 = f32x4.add(a2, f32x4.mul(v128.load(o + 2 * xsb), wv));
        a3 = f32x4.add(a3, f32x4.mul(v128.load(o + 3 * xsb), wv));
      }
    }
  }
  store<f32>(out, hsum(a0));
  store<f32>(out + osb, hsum(a1));
  store<f32>(out + 2 * osb, hsum(a2));
  store<f32>(out + 3 * osb, hsum(a3));
}

/** q8_0: Σ of codes 0..3 at p times x0 and codes 4..7 times x1 (one 8-byte widening load for both). */
// @ts-ignore: decorator
@inline function q8dot8(p: usize, x0: v128, x1: v128): v128 {
  const c = v128.load8x8_s(p);
  return f32x4.add(f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(c)), x0), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(c)), x1));
}

/**
 * Four rows (wr, wr + rowBytes, ...; whole blocks, k values) · one token, to out[0..3]: one load
 * of x serves four rows. Codes are summed against x per half sub-block and the scale applied
 * once per half (q4_k's min once per sub-block, against Σ x).
 */
// @ts-ignore: decorator
@inline function qdot4r<F>(x: usize, wr: usize, rowBytes: usize, k: i32, out: usize): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const w1 = wr + rowBytes, w2 = w1 + rowBytes, w3 = w2 + rowBytes;
  let t0 = f32x4.splat(0), t1 = f32x4.splat(0), t2 = f32x4.splat(0), t3 = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const o = <usize>b * qBytes<F>();
    for (let s = 0; s < subs; s++) {
      const xb = fptr(x, b * qValues<F>() + (s << 5));
      let l0 = f32x4.splat(0), l1 = f32x4.splat(0), l2 = f32x4.splat(0), l3 = f32x4.splat(0);
      let u0 = f32x4.splat(0), u1 = f32x4.splat(0), u2 = f32x4.splat(0), u3 = f32x4.splat(0);
      let xs = f32x4.splat(0);
      if (isQ8_0<F>()) {
        // Eight codes per widening load; both halves share the block scale.
        for (let g = 0; g < 8; g += 2) {
          const x0 = v128.load(xb + (<usize>g << 4)), x1 = v128.load(xb + (<usize>g << 4), 16);
          const c = o + 2 + (<usize>g << 2);
          l0 = f32x4.add(l0, q8dot8(wr + c, x0, x1));
          l1 = f32x4.add(l1, q8dot8(w1 + c, x0, x1));
          l2 = f32x4.add(l2, q8dot8(w2 + c, x0, x1));
          l3 = f32x4.add(l3, q8dot8(w3 + c, x0, x1));
        }
      } else for (let g = 0; g < 4; g++) {
        const xv = v128.load(xb + (<usize>g << 4));
        if (isQ4_K<F>()) xs = f32x4.add(xs, xv);
        l0 = f32x4.add(l0, f32x4.mul(wcode<F>(wr + o, s, g), xv));
        l1 = f32x4.add(l1, f32x4.mul(wcode<F>(w1 + o, s, g), xv));
        l2 = f32x4.add(l2, f32x4.mul(wcode<F>(w2 + o, s, g), xv));
        l3 = f32x4.add(l3, f32x4.mul(wcode<F>(w3 + o, s, g), xv));
      }
      if (!isQ8_0<F>()) for (let g = 4; g < 8; g++) {
        const xv = v128.load(xb + (<usize>g << 4));
        if (isQ4_K<F>()) xs = f32x4.add(xs, xv);
        u0 = f32x4.add(u0, f32x4.mul(wcode<F>(wr + o, s, g), xv));
        u1 = f32x4.add(u1, f32x4.mul(wcode<F>(w1 + o, s, g), xv));
        u2 = f32x4.add(u2, f32x4.mul(wcode<F>(w2 + o, s, g), xv));
        u3 = f32x4.add(u3, f32x4.mul(wcode<F>(w3 + o, s, g), xv));
      }
      t0 = qscaled<F>(t0, l0, u0, xs, wr + o, s);
      t1 = qscaled<F>(t1, l1, u1, xs, w1 + o, s);
      t2 = qscaled<F>(t2, l2, u2, xs, w2 + o, s);
      t3 = qscaled<F>(t3, l3, u3, xs, w3 + o, s);
    }
  }
  v128.store(out, fhsum4(t0, t1, t2, t3));
}

/** t + the scaled code sums of sub-block s of the block at blk: lo (first 16 values), hi, and Σ x for q4_k's min. */
// @ts-ignore: decorator
@inline function qscaled<F>(t: v128, lo: v128, hi: v128, xs: v128, blk: usize, s: i32): v128 {
  qParams<F>(blk, s);
  if (isFloat<F>() /* q6_k */) return f32x4.add(t, f32x4.add(f32x4.mul(lo, f32x4.splat(qd0)), f32x4.mul(hi, f32x4.splat(qd1))));
  const v = f32x4.mul(f32x4.add(lo, hi), f32x4.splat(qd0));
  return f32x4.add(t, isQ4_K<F>() ? f32x4.sub(v, f32x4.mul(xs, f32x4.splat(qm))) : v);
}

/** matmul (same contract as matmul<F>) for a block-format weight; k is a whole number of blocks. */
// @ts-ignore: decorator
@inline function matmulq<F>(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  const a = shareLo(r0, r1, 4, part, parts), b = shareHi(r0, r1, 4, part, parts);
  if (a >= b || k <= 0) return;
  const rowBytes = <usize>(k / qValues<F>()) * qBytes<F>();
  const xsb = <usize>xs << 2, osb = <usize>os << 2;
  for (let p0 = 0; p0 < n; p0 += TOKEN_PANEL) {
    const p1 = min(n, p0 + TOKEN_PANEL);
    for (let r = a; r < b; r++) {
      const wr = w + <usize>r * rowBytes;
      const orow = out + (<usize>(r - r0) << 2);
      let i = p0;
      for (; i + 4 <= p1; i += 4) qdot4<F>(x + <usize>i * xsb, xsb, wr, k, orow + <usize>i * osb, osb);
      for (; i < p1; i++) store<f32>(orow + <usize>i * osb, qdot1<F>(x + <usize>i * xsb, wr, k));
    }
  }
}

/** Row r of a block-format weight [*, k] as float32 into dst. */
// @ts-ignore: decorator
@inline function decodeRowq<F>(w: usize, r: i32, k: i32, dst: usize): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const wr = w + <usize>r * <usize>nb * qBytes<F>();
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    for (let s = 0; s < subs; s++) {
      qParams<F>(blk, s);
      const o = fptr(dst, b * qValues<F>() + (s << 5));
      for (let g = 0; g < 8; g++) v128.store(o + (<usize>g << 4), wq<F>(blk, s, g));
    }
  }
}

/**
 * Step 1 of mlaq for one token: qa[0..R) = Σ_d q[d] · row_d (rows w + d·rowBytes, d < nope).
 * A sub-block's 32 columns are summed in registers over the rows, q[d] folded into the row's
 * sub-block scale (and q4_k's min): no decoded row goes through memory.
 */
// @ts-ignore: decorator
@inline function absorbq<F>(q: usize, w: usize, rowBytes: usize, nope: i32, R: i32, qa: usize): void {
  const nb = R / qValues<F>(), subs = qValues<F>() >> 5;
  for (let b = 0; b < nb; b++) {
    const w0 = w + <usize>b * qBytes<F>();
    for (let s = 0; s < subs; s++) {
      let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
      let a4 = f32x4.splat(0), a5 = f32x4.splat(0), a6 = f32x4.splat(0), a7 = f32x4.splat(0);
      let mins: f32 = 0;
      let blk = w0;
      for (let d = 0; d < nope; d++, blk += rowBytes) {
        const qv = load<f32>(fptr(q, d));
        qParams<F>(blk, s);
        const d0 = f32x4.splat(qd0 * qv), d1 = f32x4.splat(qd1 * qv);
        if (isQ4_K<F>()) mins += qm * qv;
        if (isQ8_0<F>()) {
          // Eight codes per widening load.
          const c0 = v128.load8x8_s(blk + 2), c1 = v128.load8x8_s(blk + 10), c2 = v128.load8x8_s(blk + 18), c3 = v128.load8x8_s(blk + 26);
          a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(c0)), d0));
          a1 = f32x4.add(a1, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(c0)), d0));
          a2 = f32x4.add(a2, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(c1)), d0));
          a3 = f32x4.add(a3, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(c1)), d0));
          a4 = f32x4.add(a4, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(c2)), d0));
          a5 = f32x4.add(a5, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(c2)), d0));
          a6 = f32x4.add(a6, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(c3)), d0));
          a7 = f32x4.add(a7, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(c3)), d0));
          continue;
        }
        a0 = f32x4.add(a0, f32x4.mul(wcode<F>(blk, s, 0), d0));
        a1 = f32x4.add(a1, f32x4.mul(wcode<F>(blk, s, 1), d0));
        a2 = f32x4.add(a2, f32x4.mul(wcode<F>(blk, s, 2), d0));
        a3 = f32x4.add(a3, f32x4.mul(wcode<F>(blk, s, 3), d0));
        a4 = f32x4.add(a4, f32x4.mul(wcode<F>(blk, s, 4), d1));
        a5 = f32x4.add(a5, f32x4.mul(wcode<F>(blk, s, 5), d1));
        a6 = f32x4.add(a6, f32x4.mul(wcode<F>(blk, s, 6), d1));
        a7 = f32x4.add(a7, f32x4.mul(wcode<F>(blk, s, 7), d1));
      }
      const m = f32x4.splat(mins);
      const o = fptr(qa, b * qValues<F>() + (s << 5));
      v128.store(o, f32x4.sub(a0, m)); v128.store(o, f32x4.sub(a1, m), 16);
      v128.store(o, f32x4.sub(a2, m), 32); v128.store(o, f32x4.sub(a3, m), 48);
      v128.store(o, f32x4.sub(a4, m), 64); v128.store(o, f32x4.sub(a5, m), 80);
      v128.store(o, f32x4.sub(a6, m), 96); v128.store(o, f32x4.sub(a7, m), 112);
    }
  }
}

/**
 * Absorbed MLA (as mla<F>) with kv_b in a block format. For fewer than FEW_TOKENS tokens
 * (decode), step 1 sums W_UK per token in registers (absorbq) and step 3 takes four W_UV rows
 * per load of lat (qdot4r), both applying each sub-block's scale once; for more, a decoded
 * W_UK row serves every token and step 3 is matmulq (one decoded weight, four tokens).
 */
// @ts-ignore: decorator
@inline function mlaq<F>(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32,
  kvb: usize, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32,
  qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  const h0 = shareLo(0, H, 1, part, parts), h1 = shareHi(0, H, 1, part, parts);
  if (h0 >= h1) return;
  const qs = nope + rope, qCols = H * qs, hs = nope + vDim;
  const qRow = <usize>(R / qValues<F>()) * qBytes<F>();
  for (let h = h0; h < h1; h++) {
    for (let i = 0; i < n; i++) memory.copy(fptr(qAbs, (i * H + h) * W + R), fptr(q, i * qCols + h * qs + nope), <usize>rope << 2);
    if (n < FEW_TOKENS) {
      for (let i = 0; i < n; i++) absorbq<F>(fptr(q, i * qCols + h * qs), kvb + <usize>(h * hs) * qRow, qRow, nope, R, fptr(qAbs, (i * H + h) * W));
      continue;
    }
    for (let i = 0; i < n; i++) zero(fptr(qAbs, (i * H + h) * W), R);
    const tmp = fptr(rowTmp, h * R);
    for (let d = 0; d < nope; d++) {
      decodeRowq<F>(kvb, h * hs + d, R, tmp);
      for (let i = 0; i < n; i++) {
        const qv = load<f32>(fptr(q, i * qCols + h * qs + d));
        if (qv != 0) axpy(fptr(qAbs, (i * H + h) * W), qv, tmp, R);
      }
    }
  }
  mlaAttendTokens(n, H, tok, qAbs, cache, W, B, R, scale, scores, maxLen, lat, h0, h1);
  for (let h = h0; h < h1; h++) {
    const r0 = h * hs + nope;
    if (n >= FEW_TOKENS) {
      matmulq<F>(fptr(lat, h * R), H * R, n, kvb, R, r0, r0 + vDim, fptr(out, h * vDim), H * vDim, 0, 1);
      continue;
    }
    for (let i = 0; i < n; i++) {
      const x = fptr(lat, (i * H + h) * R), o = fptr(out, i * H * vDim + h * vDim);
      let v = 0;
      for (; v + 4 <= vDim; v += 4) qdot4r<F>(x, kvb + <usize>(r0 + v) * qRow, qRow, R, fptr(o, v));
      for (; v < vDim; v++) store<f32>(fptr(o, v), qdot1<F>(x, kvb + <usize>(r0 + v) * qRow, R));
    }
  }
}

export function matmul_q8_0(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmulq<Q8_0>(x, xs, n, w, k, r0, r1, out, os, part, parts);
}
export function matmul_q4_0(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmulq<Q4_0>(x, xs, n, w, k, r0, r1, out, os, part, parts);
}
export function matmul_q4_k(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmulq<Q4_K>(x, xs, n, w, k, r0, r1, out, os, part, parts);
}
export function matmul_q6_k(x: usize, xs: i32, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, sc: usize, br: i32, bc: i32, part: i32, parts: i32): void {
  matmulq<Q6_K>(x, xs, n, w, k, r0, r1, out, os, part, parts);
}
export function mla_q8_0(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mlaq<Q8_0>(q, n, H, nope, rope, vDim, R, scale, kvb, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_q4_0(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mlaq<Q4_0>(q, n, H, nope, rope, vDim, R, scale, kvb, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_q4_k(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mlaq<Q4_K>(q, n, H, nope, rope, vDim, R, scale, kvb, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}
export function mla_q6_k(q: usize, n: i32, H: i32, nope: i32, rope: i32, vDim: i32, R: i32, scale: f32, kvb: usize, sc: usize, br: i32, bc: i32, cache: usize, W: i32, B: i32, tok: usize, maxLen: i32, qAbs: usize, lat: usize, scores: usize, rowTmp: usize, out: usize, part: i32, parts: i32): void {
  mlaq<Q6_K>(q, n, H, nope, rope, vDim, R, scale, kvb, cache, W, B, tok, maxLen, qAbs, lat, scores, rowTmp, out, part, parts);
}

// ---- prefill: integer dot products on q8 activations (as llama.cpp) -------------------------
//
// For a batch of tokens the float path above is compute-bound: every multiply-add is an f32
// mul + add, plus the load of x. Here each activation row is quantized once per matmul
// (quantize_q8: int8 codes, stored widened to int16, and one f32 scale per block), and a block
// of 32 weights times 32 activations costs four i32x4.dot_i16x8_s (eight multiply-adds each)
// in exact integer arithmetic; the float scales are applied once per block. Like ggml's
// vec_dot_*_q8 functions, the weight codes' scales go where integers allow it:
//   q8_0, q4_0  code · activation code, summed per 32-block, times d_w · d_x
//   q6_k        (code - 32) · sc (int8, per 16 values) folded into the int16 weight; per 256-block
//               times d_w · d_x
//   q4_k        code · sc (6 bits, per 32 values) folded into the int16 weight; the sub-block
//               mins use the activation's per-32 code sums: d_x · (d · Σ sc·q·x - dmin · Σ m·sum)
// Activation blocks are 32 values for q8_0/q4_0 and 256 (q8_K) for the k-quants.
// Bounds: |q6_k code · sc| <= 32·128 and |q4_k code · sc| <= 15·63 fit int16; a 256-block sum
// stays below 2^31 (256 · 4096 · 127).

/**
 * q8 scale of the `len` floats at p: d = max |x| / 127, stored at sp; returns 1 / d as a splat
 * (0 for an all-zero block, whose codes are then 0).
 */
// @ts-ignore: decorator
@inline function q8scale(p: usize, len: i32, sp: usize): v128 {
  let m = f32x4.splat(0);
  for (let c = 0; c < len; c += 4) m = f32x4.max(m, v128.and(v128.load(fptr(p, c)), i32x4.splat(0x7fffffff)));
  const amax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  const d: f32 = amax / 127;
  store<f32>(sp, d);
  return f32x4.splat(d != 0 ? <f32>1 / d : 0);
}

/** Codes round(x · id) (ties to even) of the four floats at p, as i32x4. */
// @ts-ignore: decorator
@inline function q8codes4(p: usize, id: v128): v128 {
  return i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v128.load(p), id)));
}

/**
 * Activation rows [0, n) of x (stride xs floats, k values) as q8 blocks of `bl` values: code
 * round(x / d) with d = max |x| / 127 per block, stored as int16 in codes [n, k]; scales d at
 * scales[b · np + i] (block-major, np = n rounded up to 4, so four tokens' scales are one load);
 * when sums != 0, the code sums of every 32 values as int16 at sums[i, c / 32]. For n < 4
 * (decode) the codes again follow ([n, k] int16 at codes + 2·n·k) for idot1q8: each 16 values
 * as the 8 even-indexed codes, then the 8 odd-indexed ones times 256 (|256 · code| <= 2^15).
 * For n >= 4 the matmul kernels read codes and sums of n rounded up to 8 rows, and four scales
 * past the last: the caller allocates them (the padding is left as it is; no result of it is
 * ever stored, and SIMD lanes keep it apart from the real tokens).
 * This part quantizes its share of the rows.
 */
export function quantize_q8(x: usize, xs: i32, n: i32, k: i32, bl: i32, codes: usize, scales: usize, sums: usize, part: i32, parts: i32): void {
  const lo = shareLo(0, n, 1, part, parts), hi = shareHi(0, n, 1, part, parts);
  const np = (n + 3) & ~3, nb = k / bl;
  for (let i = lo; i < hi; i++) {
    const xr = x + (<usize>i * <usize>xs << 2), cr = codes + (<usize>i * <usize>k << 1);
    const cd = cr + (<usize>n * <usize>k << 1);
    for (let b = 0; b < nb; b++) {
      const c0 = b * bl;
      const id = q8scale(fptr(xr, c0), bl, fptr(scales, b * np + i));
      for (let c = c0; c < c0 + bl; c += 8) {
        const q = i16x8.narrow_i32x4_s(q8codes4(fptr(xr, c), id), q8codes4(fptr(xr, c + 4), id));
        v128.store(cr + (<usize>c << 1), q);
        if (n < 4 && (c & 8)) {
          const qa = v128.load(cr + (<usize>(c - 8) << 1)), dp = cd + (<usize>(c - 8) << 1);
          v128.store(dp, v128.shuffle<i16>(qa, q, 0, 2, 4, 6, 8, 10, 12, 14));
          v128.store(dp, i16x8.shl(v128.shuffle<i16>(qa, q, 1, 3, 5, 7, 9, 11, 13, 15), 8), 16);
        }
        if (sums != 0) {
          // Pairwise sums, then the four lanes, accumulated per 32 values.
          const sp = sums + ((<usize>i * <usize>(k >> 5) + <usize>(c >> 5)) << 1);
          const s4 = i32x4.extadd_pairwise_i16x8_s(q);
          const t = <i16>(i32x4.extract_lane(s4, 0) + i32x4.extract_lane(s4, 1) + i32x4.extract_lane(s4, 2) + i32x4.extract_lane(s4, 3));
          store<i16>(sp, (c & 31) == 0 ? t : <i16>(load<i16>(sp) + t));
        }
      }
    }
  }
}

/** Σ of the four i32 lanes of a, b, c, d as one i32x4 [Σa, Σb, Σc, Σd]. */
// @ts-ignore: decorator
@inline function hsum4(a: v128, b: v128, c: v128, d: v128): v128 {
  const ab = i32x4.add(v128.shuffle<i32>(a, b, 0, 4, 1, 5), v128.shuffle<i32>(a, b, 2, 6, 3, 7));
  const cd = i32x4.add(v128.shuffle<i32>(c, d, 0, 4, 1, 5), v128.shuffle<i32>(c, d, 2, 6, 3, 7));
  return i32x4.add(v128.shuffle<i32>(ab, cd, 0, 1, 4, 5), v128.shuffle<i32>(ab, cd, 2, 3, 6, 7));
}

/** Σ over 32 values of int16 weights w0..w3 times int16 activation codes x0..x3 (i32x4 partial sums). */
// @ts-ignore: decorator
@inline function dot32(w0: v128, w1: v128, w2: v128, w3: v128, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  return i32x4.add(i32x4.add(i32x4.dot_i16x8_s(w0, x0), i32x4.dot_i16x8_s(w1, x1)), i32x4.add(i32x4.dot_i16x8_s(w2, x2), i32x4.dot_i16x8_s(w3, x3)));
}

/** dot32 with the activation codes at x. */
// @ts-ignore: decorator
@inline function idot32(w0: v128, w1: v128, w2: v128, w3: v128, x: usize): v128 {
  return dot32(w0, w1, w2, w3, v128.load(x), v128.load(x, 16), v128.load(x, 32), v128.load(x, 48));
}

/**
 * Integer sub-block scale of sub-block s (k-quants; 1 otherwise): q4_k's 6-bit scale, or q6_k's
 * two int8 scales (first and second 16 values). q4_k's min is isubMin.
 */
// @ts-ignore: decorator
@inline function isub0<F>(blk: usize, s: i32): i32 {
  if (isQ4_K<F>()) {
    const q = blk + 4;
    return s < 4 ? <i32>load<u8>(q + s) & 63 : (<i32>load<u8>(q + s + 4) & 0xf) | ((<i32>load<u8>(q + s - 4) >> 6) << 4);
  }
  if (isQ8_0<F>() || isQ4_0<F>()) return 1;
  return <i32>load<i8>(blk + 192 + 2 * s);
}
// @ts-ignore: decorator
@inline function isub1<F>(blk: usize, s: i32): i32 {
  return isQ8_0<F>() || isQ4_0<F>() || isQ4_K<F>() ? isub0<F>(blk, s) : <i32>load<i8>(blk + 193 + 2 * s);
}
// @ts-ignore: decorator
@inline function isubMin(blk: usize, s: i32): i32 {
  const q = blk + 4;
  return s < 4 ? <i32>load<u8>(q + s + 4) & 63 : (<i32>load<u8>(q + s + 4) >> 4) | ((<i32>load<u8>(q + s) >> 6) << 4);
}

/**
 * Values 8j..8j+7 (j < 4) of sub-block s (32 values) of the block at blk as int16, with the
 * sub-block's integer scale folded in for the k-quants (sc0 for values 0..15, sc1 for 16..31).
 */
// @ts-ignore: decorator
@inline function iw<F>(blk: usize, s: i32, j: i32, sc0: v128, sc1: v128): v128 {
  const hv = j >> 1; // which 16 values
  let q: v128;
  if (isQ8_0<F>()) q = v128.load(blk + 2 + (<usize>hv << 4));
  else if (isQ4_0<F>()) {
    const b = v128.load(blk + 2);
    q = i8x16.sub(hv ? i8x16.shr_u(b, 4) : v128.and(b, i8x16.splat(15)), i8x16.splat(8));
  } else if (isQ4_K<F>()) {
    const b = v128.load(blk + 16 + (<usize>(s >> 1) << 5) + (<usize>hv << 4));
    q = (s & 1) ? i8x16.shr_u(b, 4) : v128.and(b, i8x16.splat(15));
  } else {
    const h = s >> 2, qq = s & 3;
    const lo = v128.load(blk + (<usize>h << 6) + (<usize>(qq & 1) << 5) + (<usize>hv << 4));
    const hi = v128.load(blk + 128 + (<usize>h << 5) + (<usize>hv << 4));
    const l4 = qq >= 2 ? i8x16.shr_u(lo, 4) : v128.and(lo, i8x16.splat(15));
    const h2 = v128.and(i8x16.shr_u(hi, 2 * qq), i8x16.splat(3));
    q = i8x16.sub(v128.or(l4, i8x16.shl(h2, 4)), i8x16.splat(32));
  }
  const v = (j & 1) ? i16x8.extend_high_i8x16_s(q) : i16x8.extend_low_i8x16_s(q);
  if (isQ8_0<F>() || isQ4_0<F>()) return v;
  return i16x8.mul(v, hv ? sc1 : sc0);
}

/** q4_k: the eight sub-block mins of the block at blk as i16x8. */
// @ts-ignore: decorator
@inline function imins(blk: usize): v128 {
  let m = i16x8.splat(0);
  m = i16x8.replace_lane(m, 0, <i16>isubMin(blk, 0)); m = i16x8.replace_lane(m, 1, <i16>isubMin(blk, 1));
  m = i16x8.replace_lane(m, 2, <i16>isubMin(blk, 2)); m = i16x8.replace_lane(m, 3, <i16>isubMin(blk, 3));
  m = i16x8.replace_lane(m, 4, <i16>isubMin(blk, 4)); m = i16x8.replace_lane(m, 5, <i16>isubMin(blk, 5));
  m = i16x8.replace_lane(m, 6, <i16>isubMin(blk, 6)); m = i16x8.replace_lane(m, 7, <i16>isubMin(blk, 7));
  return m;
}

/** The block's f16 scale d (q6_k keeps it after the codes and scales). */
// @ts-ignore: decorator
@inline function dScale<F>(blk: usize): f32 {
  return half(<u32>load<u16>(isFloat<F>() /* q6_k */ ? blk + 208 : blk));
}

/** The f16 scales of the blocks at a and b converted together (half4): lanes [d(a), d(b), 0, 0]. */
// @ts-ignore: decorator
@inline function dScale2<F>(a: usize, b: usize): v128 {
  const o: usize = isFloat<F>() /* q6_k */ ? 208 : 0;
  return half4(v128.load16_lane(b + o, v128.load16_lane(a + o, i32x4.splat(0), 0), 2));
}

/**
 * A block's contribution for four tokens, before the activation scales: d · (the integer sums
 * a0..a3 reduced per token), less dmin · Σ m·(code sums) for q4_k (m: the block's eight mins,
 * imins; the four tokens' code sums of this block at sp, sp + ssb, ...). d, dmin: splat.
 */
// @ts-ignore: decorator
@inline function iblock4<F>(d: v128, dmin: v128, m: v128, a0: v128, a1: v128, a2: v128, a3: v128, sp: usize, ssb: usize): v128 {
  const v = f32x4.mul(f32x4.convert_i32x4_s(hsum4(a0, a1, a2, a3)), d);
  if (!isQ4_K<F>()) return v;
  const mins = hsum4(i32x4.dot_i16x8_s(m, v128.load(sp)), i32x4.dot_i16x8_s(m, v128.load(sp + ssb)),
    i32x4.dot_i16x8_s(m, v128.load(sp + 2 * ssb)), i32x4.dot_i16x8_s(m, v128.load(sp + 3 * ssb)));
  return f32x4.sub(v, f32x4.mul(f32x4.convert_i32x4_s(mins), dmin));
}

/** q4_k's dmin (splat) of the block at blk; zeros for the other formats (unused there). */
// @ts-ignore: decorator
@inline function idmin<F>(blk: usize): v128 {
  return isQ4_K<F>() ? f32x4.splat(half(<u32>load<u16>(blk + 2))) : f32x4.splat(0);
}

/** q4_k's eight sub-block mins (imins) of the block at blk; zeros for the other formats. */
// @ts-ignore: decorator
@inline function imins0<F>(blk: usize): v128 {
  return isQ4_K<F>() ? imins(blk) : i16x8.splat(0);
}

/** Results of tokens 0..cnt-1 (lanes of a, then b) to out + t·osb: the rest is padding. */
// @ts-ignore: decorator
@inline function store8(out: usize, osb: usize, a: v128, b: v128, cnt: i32): void {
  store<f32>(out, f32x4.extract_lane(a, 0));
  if (cnt > 1) store<f32>(out + osb, f32x4.extract_lane(a, 1));
  if (cnt > 2) store<f32>(out + 2 * osb, f32x4.extract_lane(a, 2));
  if (cnt > 3) store<f32>(out + 3 * osb, f32x4.extract_lane(a, 3));
  if (cnt > 4) store<f32>(out + 4 * osb, f32x4.extract_lane(b, 0));
  if (cnt > 5) store<f32>(out + 5 * osb, f32x4.extract_lane(b, 1));
  if (cnt > 6) store<f32>(out + 6 * osb, f32x4.extract_lane(b, 2));
  if (cnt > 7) store<f32>(out + 7 * osb, f32x4.extract_lane(b, 3));
}

// Per-thread (per-instance) accumulators of idot8. Writing each token's sum to one orders the
// code token by token: TurboFan keeps a block's loads in program order but computes pure values
// as late as possible, so with register accumulators all 32 activation loads of a block came
// first and most were spilled to the stack and reloaded.
let ia0: v128 = i32x4.splat(0), ia1: v128 = i32x4.splat(0), ia2: v128 = i32x4.splat(0), ia3: v128 = i32x4.splat(0);
let ia4: v128 = i32x4.splat(0), ia5: v128 = i32x4.splat(0), ia6: v128 = i32x4.splat(0), ia7: v128 = i32x4.splat(0);

/**
 * Row wr (whole blocks, k values) · tokens i..i+3 (int16 codes at xc, row stride k; scales as
 * quantize_q8 writes them, np per block; q4_k's code sums at sums): results to out + t·osb.
 * Each sub-block's weights are unpacked once for the four tokens; the four integer block sums
 * are reduced together (hsum4) and scaled in one f32x4 operation. Only the first cnt results
 * are stored: the tokens past n of the last group are the padding quantize_q8's callers
 * allocate (never stored, and SIMD lanes keep them apart from the real tokens).
 */
// @ts-ignore: decorator
@inline function idot4<F>(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32, out: usize, osb: usize, cnt: i32): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const xsb = <usize>k << 1, ssb = <usize>(k >> 5) << 1;
  const x0 = xc + <usize>i * xsb, x1 = x0 + xsb, x2 = x1 + xsb, x3 = x2 + xsb;
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    // Sub-block 0 starts the sums (no zero vectors to add to: q8_0/q4_0 have no other).
    {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, 0)), sc1 = i16x8.splat(<i16>isub1<F>(blk, 0));
      const w0 = iw<F>(blk, 0, 0, sc0, sc1), w1 = iw<F>(blk, 0, 1, sc0, sc1), w2 = iw<F>(blk, 0, 2, sc0, sc1), w3 = iw<F>(blk, 0, 3, sc0, sc1);
      const o = (<usize>(b * qValues<F>())) << 1;
      ia0 = idot32(w0, w1, w2, w3, x0 + o); ia1 = idot32(w0, w1, w2, w3, x1 + o);
      ia2 = idot32(w0, w1, w2, w3, x2 + o); ia3 = idot32(w0, w1, w2, w3, x3 + o);
    }
    for (let s = 1; s < subs; s++) {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, s)), sc1 = i16x8.splat(<i16>isub1<F>(blk, s));
      const w0 = iw<F>(blk, s, 0, sc0, sc1), w1 = iw<F>(blk, s, 1, sc0, sc1), w2 = iw<F>(blk, s, 2, sc0, sc1), w3 = iw<F>(blk, s, 3, sc0, sc1);
      const o = (<usize>(b * qValues<F>() + (s << 5))) << 1;
      ia0 = i32x4.add(ia0, idot32(w0, w1, w2, w3, x0 + o));
      ia1 = i32x4.add(ia1, idot32(w0, w1, w2, w3, x1 + o));
      ia2 = i32x4.add(ia2, idot32(w0, w1, w2, w3, x2 + o));
      ia3 = i32x4.add(ia3, idot32(w0, w1, w2, w3, x3 + o));
    }
    const sp = sums + (<usize>i * ssb) + (<usize>b << 4);
    acc = f32x4.add(acc, f32x4.mul(iblock4<F>(f32x4.splat(dScale<F>(blk)), idmin<F>(blk), imins0<F>(blk), ia0, ia1, ia2, ia3, sp, ssb), v128.load(fptr(sc, b * np + i))));
  }
  store8(out, osb, acc, acc, cnt); // cnt <= 4: only acc's lanes
}

/** Row wr · tokens i..i+7: idot4 for eight tokens (each unpacked weight serves eight). */
// @ts-ignore: decorator
@inline function idot8<F>(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32, out: usize, osb: usize, cnt: i32): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const xsb = <usize>k << 1, ssb = <usize>(k >> 5) << 1;
  const x0 = xc + <usize>i * xsb;
  let accA = f32x4.splat(0), accB = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, 0)), sc1 = i16x8.splat(<i16>isub1<F>(blk, 0));
      const w0 = iw<F>(blk, 0, 0, sc0, sc1), w1 = iw<F>(blk, 0, 1, sc0, sc1), w2 = iw<F>(blk, 0, 2, sc0, sc1), w3 = iw<F>(blk, 0, 3, sc0, sc1);
      const o = x0 + ((<usize>(b * qValues<F>())) << 1);
      ia0 = idot32(w0, w1, w2, w3, o); ia1 = idot32(w0, w1, w2, w3, o + xsb);
      ia2 = idot32(w0, w1, w2, w3, o + 2 * xsb); ia3 = idot32(w0, w1, w2, w3, o + 3 * xsb);
      ia4 = idot32(w0, w1, w2, w3, o + 4 * xsb); ia5 = idot32(w0, w1, w2, w3, o + 5 * xsb);
      ia6 = idot32(w0, w1, w2, w3, o + 6 * xsb); ia7 = idot32(w0, w1, w2, w3, o + 7 * xsb);
    }
    for (let s = 1; s < subs; s++) {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, s)), sc1 = i16x8.splat(<i16>isub1<F>(blk, s));
      const w0 = iw<F>(blk, s, 0, sc0, sc1), w1 = iw<F>(blk, s, 1, sc0, sc1), w2 = iw<F>(blk, s, 2, sc0, sc1), w3 = iw<F>(blk, s, 3, sc0, sc1);
      const o = x0 + ((<usize>(b * qValues<F>() + (s << 5))) << 1);
      ia0 = i32x4.add(ia0, idot32(w0, w1, w2, w3, o));
      ia1 = i32x4.add(ia1, idot32(w0, w1, w2, w3, o + xsb));
      ia2 = i32x4.add(ia2, idot32(w0, w1, w2, w3, o + 2 * xsb));
      ia3 = i32x4.add(ia3, idot32(w0, w1, w2, w3, o + 3 * xsb));
      ia4 = i32x4.add(ia4, idot32(w0, w1, w2, w3, o + 4 * xsb));
      ia5 = i32x4.add(ia5, idot32(w0, w1, w2, w3, o + 5 * xsb));
      ia6 = i32x4.add(ia6, idot32(w0, w1, w2, w3, o + 6 * xsb));
      ia7 = i32x4.add(ia7, idot32(w0, w1, w2, w3, o + 7 * xsb));
    }
    const sp = sums + (<usize>i * ssb) + (<usize>b << 4), d = f32x4.splat(dScale<F>(blk)), dmin = idmin<F>(blk), m = imins0<F>(blk);
    accA = f32x4.add(accA, f32x4.mul(iblock4<F>(d, dmin, m, ia0, ia1, ia2, ia3, sp, ssb), v128.load(fptr(sc, b * np + i))));
    accB = f32x4.add(accB, f32x4.mul(iblock4<F>(d, dmin, m, ia4, ia5, ia6, ia7, sp + 4 * ssb, ssb), v128.load(fptr(sc, b * np + i + 4))));
  }
  store8(out, osb, accA, accB, cnt);
}

let ib0: v128 = i32x4.splat(0), ib1: v128 = i32x4.splat(0), ib2: v128 = i32x4.splat(0), ib3: v128 = i32x4.splat(0);
let ib4: v128 = i32x4.splat(0), ib5: v128 = i32x4.splat(0), ib6: v128 = i32x4.splat(0), ib7: v128 = i32x4.splat(0);

/**
 * dot32 as a chain (((d0 + d1) + d2) + d3): one temporary fewer than the tree, which lets the
 * two-row tile keep both rows' weights in registers (eight tokens give the latency cover).
 */
// @ts-ignore: decorator
@inline function dot32c(w0: v128, w1: v128, w2: v128, w3: v128, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  return i32x4.add(i32x4.add(i32x4.add(i32x4.dot_i16x8_s(w0, x0), i32x4.dot_i16x8_s(w1, x1)), i32x4.dot_i16x8_s(w2, x2)), i32x4.dot_i16x8_s(w3, x3));
}

/** 32 values of rows A (w0..w3) and B (v0..v3) · tokens at p, p + xsb, ...: the sums start ia/ib. */
// @ts-ignore: decorator
@inline function x2set(p: usize, xsb: usize, w0: v128, w1: v128, w2: v128, w3: v128, v0: v128, v1: v128, v2: v128, v3: v128): void {
  let y0 = v128.load(p), y1 = v128.load(p, 16), y2 = v128.load(p, 32), y3 = v128.load(p, 48);
  ia0 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib0 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia1 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib1 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia2 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib2 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia3 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib3 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia4 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib4 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia5 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib5 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia6 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib6 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia7 = dot32c(w0, w1, w2, w3, y0, y1, y2, y3); ib7 = dot32c(v0, v1, v2, v3, y0, y1, y2, y3);
}

/** x2set, adding to the sums (later sub-blocks of a k-quant block). */
// @ts-ignore: decorator
@inline function x2add(p: usize, xsb: usize, w0: v128, w1: v128, w2: v128, w3: v128, v0: v128, v1: v128, v2: v128, v3: v128): void {
  let y0 = v128.load(p), y1 = v128.load(p, 16), y2 = v128.load(p, 32), y3 = v128.load(p, 48);
  ia0 = i32x4.add(ia0, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib0 = i32x4.add(ib0, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia1 = i32x4.add(ia1, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib1 = i32x4.add(ib1, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia2 = i32x4.add(ia2, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib2 = i32x4.add(ib2, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia3 = i32x4.add(ia3, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib3 = i32x4.add(ib3, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia4 = i32x4.add(ia4, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib4 = i32x4.add(ib4, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia5 = i32x4.add(ia5, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib5 = i32x4.add(ib5, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia6 = i32x4.add(ia6, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib6 = i32x4.add(ib6, dot32c(v0, v1, v2, v3, y0, y1, y2, y3)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16); y2 = v128.load(p, 32); y3 = v128.load(p, 48);
  ia7 = i32x4.add(ia7, dot32c(w0, w1, w2, w3, y0, y1, y2, y3)); ib7 = i32x4.add(ib7, dot32c(v0, v1, v2, v3, y0, y1, y2, y3));
}

// Per-thread float accumulators of the two-row tiles: each block's scaling of four tokens ends
// in a store to one, so it is done before the next four tokens' sums are loaded (as ia/ib do
// for the integer sums) instead of all sixteen sums loaded at once and most spilled.
let fa0: v128 = f32x4.splat(0), fa1: v128 = f32x4.splat(0), fa2: v128 = f32x4.splat(0), fa3: v128 = f32x4.splat(0);

/** Rows wr and wr + rowBytes · tokens i..i+7: idot8 for two rows, each activation load serving both. */
// @ts-ignore: decorator
@inline function idot8x2<F>(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, rowBytes: usize, k: i32, out: usize, osb: usize, cnt: i32): void {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const xsb = <usize>k << 1, ssb = <usize>(k >> 5) << 1;
  const x0 = xc + <usize>i * xsb;
  fa0 = f32x4.splat(0); fa1 = fa0; fa2 = fa0; fa3 = fa0;
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>(), blk2 = blk + rowBytes;
    // Sub-block 0 starts the sums; the loop over the others vanishes for q8_0/q4_0.
    {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, 0)), sc1 = i16x8.splat(<i16>isub1<F>(blk, 0));
      const tc0 = i16x8.splat(<i16>isub0<F>(blk2, 0)), tc1 = i16x8.splat(<i16>isub1<F>(blk2, 0));
      x2set(x0 + ((<usize>(b * qValues<F>())) << 1), xsb,
        iw<F>(blk, 0, 0, sc0, sc1), iw<F>(blk, 0, 1, sc0, sc1), iw<F>(blk, 0, 2, sc0, sc1), iw<F>(blk, 0, 3, sc0, sc1),
        iw<F>(blk2, 0, 0, tc0, tc1), iw<F>(blk2, 0, 1, tc0, tc1), iw<F>(blk2, 0, 2, tc0, tc1), iw<F>(blk2, 0, 3, tc0, tc1));
    }
    for (let s = 1; s < subs; s++) {
      const sc0 = i16x8.splat(<i16>isub0<F>(blk, s)), sc1 = i16x8.splat(<i16>isub1<F>(blk, s));
      const tc0 = i16x8.splat(<i16>isub0<F>(blk2, s)), tc1 = i16x8.splat(<i16>isub1<F>(blk2, s));
      x2add(x0 + ((<usize>(b * qValues<F>() + (s << 5))) << 1), xsb,
        iw<F>(blk, s, 0, sc0, sc1), iw<F>(blk, s, 1, sc0, sc1), iw<F>(blk, s, 2, sc0, sc1), iw<F>(blk, s, 3, sc0, sc1),
        iw<F>(blk2, s, 0, tc0, tc1), iw<F>(blk2, s, 1, tc0, tc1), iw<F>(blk2, s, 2, tc0, tc1), iw<F>(blk2, s, 3, tc0, tc1));
    }
    const dxA = v128.load(fptr(sc, b * np + i)), dxB = v128.load(fptr(sc, b * np + i + 4));
    const sp = sums + (<usize>i * ssb) + (<usize>b << 4), dd = dScale2<F>(blk, blk2);
    {
      const d = v128.shuffle<f32>(dd, dd, 0, 0, 0, 0), dmin = idmin<F>(blk), m = imins0<F>(blk);
      fa0 = f32x4.add(fa0, f32x4.mul(iblock4<F>(d, dmin, m, ia0, ia1, ia2, ia3, sp, ssb), dxA));
      fa1 = f32x4.add(fa1, f32x4.mul(iblock4<F>(d, dmin, m, ia4, ia5, ia6, ia7, sp + 4 * ssb, ssb), dxB));
    }
    {
      const d = v128.shuffle<f32>(dd, dd, 1, 1, 1, 1), dmin = idmin<F>(blk2), m = imins0<F>(blk2);
      fa2 = f32x4.add(fa2, f32x4.mul(iblock4<F>(d, dmin, m, ib0, ib1, ib2, ib3, sp, ssb), dxA));
      fa3 = f32x4.add(fa3, f32x4.mul(iblock4<F>(d, dmin, m, ib4, ib5, ib6, ib7, sp + 4 * ssb, ssb), dxB));
    }
  }
  store8(out, osb, fa0, fa1, cnt);
  store8(out + 4, osb, fa2, fa3, cnt);
}

// @ts-ignore: decorator
@inline function isum(v: v128): i32 {
  return i32x4.extract_lane(v, 0) + i32x4.extract_lane(v, 1) + i32x4.extract_lane(v, 2) + i32x4.extract_lane(v, 3);
}

/** Sub-block s of the block at blk (unpacked, scaled as iw) · activation codes x0..x3. */
// @ts-ignore: decorator
@inline function isub<F>(blk: usize, s: i32, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  const sc0 = i16x8.splat(<i16>isub0<F>(blk, s)), sc1 = i16x8.splat(<i16>isub1<F>(blk, s));
  return dot32(iw<F>(blk, s, 0, sc0, sc1), iw<F>(blk, s, 1, sc0, sc1), iw<F>(blk, s, 2, sc0, sc1), iw<F>(blk, s, 3, sc0, sc1), x0, x1, x2, x3);
}

/**
 * Four IEEE halves (u16 in the low half of each i32 lane of h) as f32x4, exactly as half():
 * the exponent and mantissa moved to f32 positions and rebased by 2^112 (exact, subnormals
 * included), infinities and NaNs (exponent 31) set to f32 exponent 255, then the sign.
 */
// @ts-ignore: decorator
@inline function half4(h: v128): v128 {
  const e = i32x4.shl(v128.and(h, i32x4.splat(0x7fff)), 13);
  const f = f32x4.mul(e, f32x4.splat(reinterpret<f32>(0x77800000)));
  const big = i32x4.gt_s(e, i32x4.splat(0x0f7fffff));
  return v128.or(v128.bitselect(v128.or(e, i32x4.splat(0x7f800000)), f, big), i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

/**
 * 256 × (one q8_0 block's 32 int8 weight codes at w · the activation codes at x, reordered as
 * quantize_q8 writes them for decode) as i32x4 partial sums: 16 weight bytes read as eight
 * int16 lanes, a shift left by 8 is 256 × the even codes and an arithmetic shift right by 8 the
 * odd ones, paired with the even codes and 256 × the odd ones (four ALU operations per 32
 * weights instead of six widening shuffles). Per lane |sum| <= 8 · 32768 · 127 < 2^31 / 64.
 */
// @ts-ignore: decorator
@inline function bdot(w: usize, x: usize): v128 {
  const w0 = v128.load(w), w1 = v128.load(w, 16);
  return i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(w0, 8), v128.load(x)), i32x4.dot_i16x8_s(i16x8.shr_s(w0, 8), v128.load(x, 16))),
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(w1, 8), v128.load(x, 32)), i32x4.dot_i16x8_s(i16x8.shr_s(w1, 8), v128.load(x, 48))));
}

/**
 * q8_0 row wr · token i (activation codes at xc reordered as bdot wants them): two blocks at a
 * time (as many loads as registers: V8 issues a loop body's loads first), their integer sums
 * folded into one vector (lanes 0, 2: the first block; 1, 3: the second), their f16 scales
 * converted together (half4) and applied in one f32x4 multiply-add.
 */
// @ts-ignore: decorator
@inline function idot1q8(xc: usize, sc: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k >> 5;
  const xr = xc + <usize>i * (<usize>k << 1);
  const ss = <usize>np << 2;
  let acc = f32x4.splat(0);
  let b = 0;
  for (; b + 2 <= nb; b += 2) {
    const blk = wr + <usize>b * 34, o = xr + (<usize>b << 6);
    ia0 = bdot(blk + 2, o); ia1 = bdot(blk + 36, o + 64); // in turn, as in idot8
    const a0 = ia0, a1 = ia1;
    const s = i32x4.shr_s(i32x4.add(v128.shuffle<i32>(a0, a1, 0, 4, 1, 5), v128.shuffle<i32>(a0, a1, 2, 6, 3, 7)), 8);
    let h = v128.load16_lane(blk, i32x4.splat(0), 0);
    h = v128.load16_lane(blk, h, 2, 34);
    const sp = fptr(sc, b * np + i);
    const xd = v128.load32_lane(sp + ss, v128.load32_zero(sp), 1);
    const d = v128.shuffle<i32>(f32x4.mul(half4(h), xd), xd, 0, 1, 0, 1);
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(s), d));
  }
  for (; b < nb; b++) {
    const blk = wr + <usize>b * 34;
    const a = bdot(blk + 2, xr + (<usize>b << 6));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.shr_s(a, 8)), f32x4.splat(half(<u32>load<u16>(blk)) * load<f32>(fptr(sc, b * np + i)))));
  }
  return hsum(acc);
}

/**
 * q4_k row wr · token i on the decode copy of the activation codes at xc (as for idot1q8: each
 * 16 values 8 even, then 8 odd times 256) and the code sums at sums. The 16 code bytes of a
 * sub-block half, read as int16 lanes, give 256 × the even nibble and 1 × the odd one with two
 * shifts and masks each (no widening shuffles, no int16 scale multiplies); each sub-block's sum
 * times its 6-bit scale is accumulated in int32 (per lane <= 8 · 8 · 256 · 15 · 128 · 63 < 2^31),
 * shifted right by 8 (exact) before the lanes are added.
 */
/**
 * Values 64p..64p+63 of a q4_k block (sub-blocks 2p, 2p + 1; scales as bytes in sw) · the
 * activation codes of its block at o0 (decode copy, times 256 on odd values: see idot1q8), int32
 * lanes. The two sub-block sums go through per-thread globals so they are computed in turn (idot8).
 */
// @ts-ignore: decorator
@inline function q4group(blk: usize, o0: usize, p: i32, sw: u64): v128 {
  const c0f = i16x8.splat(0x000f), cf00 = i16x8.splat(0x0f00);
  const q = blk + 16 + (<usize>p << 5), o = o0 + (<usize>p << 7);
  const b0 = v128.load(q), b1 = v128.load(q, 16);
  const sp2 = sw >> (<u64>p << 4);
  ia0 = i32x4.mul(i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(v128.and(b0, c0f), 8), v128.load(o)), i32x4.dot_i16x8_s(v128.and(i16x8.shr_u(b0, 8), c0f), v128.load(o, 16))),
    i32x4.add(i32x4.dot_i16x8_s(i16x8.shl(v128.and(b1, c0f), 8), v128.load(o, 32)), i32x4.dot_i16x8_s(v128.and(i16x8.shr_u(b1, 8), c0f), v128.load(o, 48)))),
    i32x4.splat(<i32>sp2 & 0xff));
  ia1 = i32x4.mul(i32x4.add(
    i32x4.add(i32x4.dot_i16x8_s(v128.and(i16x8.shl(b0, 4), cf00), v128.load(o, 64)), i32x4.dot_i16x8_s(i16x8.shr_u(b0, 12), v128.load(o, 80))),
    i32x4.add(i32x4.dot_i16x8_s(v128.and(i16x8.shl(b1, 4), cf00), v128.load(o, 96)), i32x4.dot_i16x8_s(i16x8.shr_u(b1, 12), v128.load(o, 112)))),
    i32x4.splat(<i32>(sp2 >> 8) & 0xff));
  return i32x4.add(ia0, ia1);
}

// @ts-ignore: decorator
@inline function idot1q4k(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k >> 8;
  const xr = xc + <usize>i * (<usize>k << 1);
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * 144;
    const o0 = xr + (<usize>b << 9);
    // The eight 6-bit scales and mins as bytes (ggml's utmp unpacking).
    const u0 = load<u32>(blk, 4), u1 = load<u32>(blk, 8), u2 = load<u32>(blk, 12);
    const sw = <u64>(u0 & 0x3f3f3f3f) | (<u64>((u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4)) << 32);
    // The block's four 64-value groups, unrolled.
    const ai = i32x4.add(i32x4.add(q4group(blk, o0, 0, sw), q4group(blk, o0, 1, sw)), i32x4.add(q4group(blk, o0, 2, sw), q4group(blk, o0, 3, sw)));
    const xd = load<f32>(fptr(sc, b * np + i));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.shr_s(ai, 8)), f32x4.splat(half(<u32>load<u16>(blk)) * xd)));
    const sp = sums + <usize>i * (<usize>(k >> 5) << 1) + (<usize>b << 4);
    const m = i16x8.extend_low_i8x16_u(i32x4.replace_lane(i32x4.splat(u1 & 0x3f3f3f3f), 1, ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4)));
    mins += <f32>isum(i32x4.dot_i16x8_s(m, v128.load(sp))) * half(<u32>load<u16>(blk + 2)) * xd;
  }
  return hsum(acc) - mins;
}

/**
 * q6_k: values of sub-block quarter qq (16 code bytes lo: ql, hi: qh) as 256 × (even - 32) and
 * odd - 32 int16 lanes, dotted with the decode activation codes at x, >> 8 (exact): i32x4.
 */
// @ts-ignore: decorator
@inline function q6dot(lo: v128, hi: v128, qq: i32, x: usize): v128 {
  const cf00 = i16x8.splat(0x0f00), c0f = i16x8.splat(0x000f);
  const l4e = qq < 2 ? v128.and(i16x8.shl(lo, 8), cf00) : v128.and(i16x8.shl(lo, 4), cf00);
  const l4o = qq < 2 ? v128.and(i16x8.shr_u(lo, 8), c0f) : i16x8.shr_u(lo, 12);
  const e = i16x8.sub(v128.or(l4e, v128.and(i16x8.shl(hi, 12 - 2 * qq), i16x8.splat(0x3000))), i16x8.splat(0x2000));
  const o = i16x8.sub(v128.or(l4o, v128.and(i16x8.shr_u(hi, 4 + 2 * qq), i16x8.splat(0x30))), i16x8.splat(0x20));
  return i32x4.shr_s(i32x4.add(i32x4.dot_i16x8_s(e, v128.load(x)), i32x4.dot_i16x8_s(o, v128.load(x, 16))), 8);
}

/**
 * q6_k row wr · token i on the decode copy of the activation codes at xc (as for idot1q8). Each
 * 16 values' sum is scaled by its int8 scale in int32 (per lane <= 16 · 4 · 32 · 128 · 128 < 2^31).
 */
// @ts-ignore: decorator
@inline function idot1q6k(xc: usize, sc: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k >> 8;
  const xr = xc + <usize>i * (<usize>k << 1);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * 210, o0 = xr + (<usize>b << 9);
    // The 16 int8 scales widened once (scale j in lane j & 3 of S[j >> 2]), then the block's
    // four quarters (half h of the block, half hv of its 16-byte rows), unrolled; quarter
    // (h, hv) takes scales 8h + hv + 2qq.
    const s8 = v128.load(blk + 192);
    const l16 = i16x8.extend_low_i8x16_s(s8), h16 = i16x8.extend_high_i8x16_s(s8);
    const S0 = i32x4.extend_low_i16x8_s(l16), S1 = i32x4.extend_high_i16x8_s(l16);
    const S2 = i32x4.extend_low_i16x8_s(h16), S3 = i32x4.extend_high_i16x8_s(h16);
    const ai = i32x4.add(
      i32x4.add(
        q6quarter(blk, o0, 0, 0, v128.shuffle<i32>(S0, S0, 0, 0, 0, 0), v128.shuffle<i32>(S0, S0, 2, 2, 2, 2), v128.shuffle<i32>(S1, S1, 0, 0, 0, 0), v128.shuffle<i32>(S1, S1, 2, 2, 2, 2)),
        q6quarter(blk, o0, 0, 1, v128.shuffle<i32>(S0, S0, 1, 1, 1, 1), v128.shuffle<i32>(S0, S0, 3, 3, 3, 3), v128.shuffle<i32>(S1, S1, 1, 1, 1, 1), v128.shuffle<i32>(S1, S1, 3, 3, 3, 3))),
      i32x4.add(
        q6quarter(blk, o0, 1, 0, v128.shuffle<i32>(S2, S2, 0, 0, 0, 0), v128.shuffle<i32>(S2, S2, 2, 2, 2, 2), v128.shuffle<i32>(S3, S3, 0, 0, 0, 0), v128.shuffle<i32>(S3, S3, 2, 2, 2, 2)),
        q6quarter(blk, o0, 1, 1, v128.shuffle<i32>(S2, S2, 1, 1, 1, 1), v128.shuffle<i32>(S2, S2, 3, 3, 3, 3), v128.shuffle<i32>(S3, S3, 1, 1, 1, 1), v128.shuffle<i32>(S3, S3, 3, 3, 3, 3))));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(ai), f32x4.splat(half(<u32>load<u16>(blk + 208)) * load<f32>(fptr(sc, b * np + i)))));
  }
  return hsum(acc);
}

/**
 * One quarter of a q6_k block (64 values) · the activation codes of its block at o0, scaled by
 * the sub-block scales s0..s3 (splat; int32 lanes). Each sub-block's sum goes through a
 * per-thread global (ia0..ia3) so the four are computed in turn, not after all loads (idot8).
 */
// @ts-ignore: decorator
@inline function q6quarter(blk: usize, o0: usize, h: i32, hv: i32, s0: v128, s1: v128, s2: v128, s3: v128): v128 {
  const ql = blk + (<usize>h << 6) + (<usize>hv << 4);
  const lo0 = v128.load(ql), lo1 = v128.load(ql, 32), hi = v128.load(blk + 128 + (<usize>h << 5) + (<usize>hv << 4));
  const xo = o0 + (<usize>h << 8) + (<usize>hv << 5); // sub-block h·4 + qq at xo + 64·qq, scaled by s<qq>
  ia0 = i32x4.mul(q6dot(lo0, hi, 0, xo), s0);
  ia1 = i32x4.mul(q6dot(lo1, hi, 1, xo + 64), s1);
  ia2 = i32x4.mul(q6dot(lo0, hi, 2, xo + 128), s2);
  ia3 = i32x4.mul(q6dot(lo1, hi, 3, xo + 192), s3);
  return i32x4.add(i32x4.add(ia0, ia1), i32x4.add(ia2, ia3));
}

/** Row wr · token i (single tokens, and rows left over when a share does not end on a multiple of four). */
// @ts-ignore: decorator
@inline function idot1<F>(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k / qValues<F>(), subs = qValues<F>() >> 5;
  const xr = xc + <usize>i * (<usize>k << 1);
  // Per-block integer sums are scaled as vectors and reduced once per row, not per block.
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>();
    const o0 = xr + ((<usize>(b * qValues<F>())) << 1);
    let a = isub<F>(blk, 0, v128.load(o0), v128.load(o0, 16), v128.load(o0, 32), v128.load(o0, 48));
    for (let s = 1; s < subs; s++) {
      const o = o0 + (<usize>s << 6);
      a = i32x4.add(a, isub<F>(blk, s, v128.load(o), v128.load(o, 16), v128.load(o, 32), v128.load(o, 48)));
    }
    const xd = load<f32>(fptr(sc, b * np + i));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(a), f32x4.splat(dScale<F>(blk) * xd)));
    if (isQ4_K<F>()) {
      const sp = sums + <usize>i * (<usize>(k >> 5) << 1) + (<usize>b << 4);
      mins += <f32>isum(i32x4.dot_i16x8_s(imins(blk), v128.load(sp))) * half(<u32>load<u16>(blk + 2)) * xd;
    }
  }
  return hsum(acc) - mins;
}

/**
 * matmul (the contract of matmulq) on activations quantized by quantize_q8 (codes, scales,
 * sums; n tokens, blocks of qValues<F>() values, or 256 for the k-quants). Same row shares.
 */
// @ts-ignore: decorator
@inline function imatmul<F>(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  const a = shareLo(r0, r1, 4, part, parts), b = shareHi(r0, r1, 4, part, parts);
  if (a >= b || k <= 0) return;
  const rowBytes = <usize>(k / qValues<F>()) * qBytes<F>();
  const np = (n + 3) & ~3, osb = <usize>os << 2;
  for (let p0 = 0; p0 < n; p0 += TOKEN_PANEL) {
    const p1 = min(n, p0 + TOKEN_PANEL);
    // Token tiles of 8 (two rows at a time) and 4; the last tile may be partly padding (n >= 4:
    // eight tokens when more than four are left, else four). Fewer than four tokens (decode) go row by row: one linear stream from
    // memory is read about twice as fast as four interleaved ones.
    const t1 = n < 4 ? p0 : p0 + ((p1 - p0 + 3) & ~3);
    for (let r = a; r < b; r += 4) {
      const rn = min(4, b - r);
      const wr = w + <usize>r * rowBytes;
      const orow = out + (<usize>(r - r0) << 2);
      let j = 0;
      for (; j + 2 <= rn; j += 2) {
        const wj = wr + <usize>j * rowBytes, oj = orow + (<usize>j << 2);
        let i = p0;
        for (; i + 8 <= p1; i += 8) idot8x2<F>(xc, sc, sums, np, i, wj, rowBytes, k, oj + <usize>i * osb, osb, 8);
        if (i + 4 < p1) { idot8x2<F>(xc, sc, sums, np, i, wj, rowBytes, k, oj + <usize>i * osb, osb, p1 - i); i += 8; }
        for (; i < t1; i += 4) {
          const cnt = min(4, p1 - i);
          idot4<F>(xc, sc, sums, np, i, wj, k, oj + <usize>i * osb, osb, cnt);
          idot4<F>(xc, sc, sums, np, i, wj + rowBytes, k, oj + 4 + <usize>i * osb, osb, cnt);
        }
      }
      for (; j < rn; j++) {
        const wj = wr + <usize>j * rowBytes, oj = orow + (<usize>j << 2);
        let i = p0;
        for (; i + 8 <= p1; i += 8) idot8<F>(xc, sc, sums, np, i, wj, k, oj + <usize>i * osb, osb, 8);
        if (i + 4 < p1) { idot8<F>(xc, sc, sums, np, i, wj, k, oj + <usize>i * osb, osb, p1 - i); i += 8; }
        for (; i < t1; i += 4) idot4<F>(xc, sc, sums, np, i, wj, k, oj + <usize>i * osb, osb, min(4, p1 - i));
      }
      for (let i = t1; i < p1; i++) {
        if (isQ4_K<F>() && n < 4) for (let j = 0; j < rn; j++) store<f32>(orow + <usize>i * osb + (<usize>j << 2), idot1q4k(xc + (<usize>n * <usize>k << 1), sc, sums, np, i, wr + <usize>j * rowBytes, k));
        else if (isFloat<F>() /* q6_k */ && n < 4) for (let j = 0; j < rn; j++) store<f32>(orow + <usize>i * osb + (<usize>j << 2), idot1q6k(xc + (<usize>n * <usize>k << 1), sc, np, i, wr + <usize>j * rowBytes, k));
        else if (isQ8_0<F>() && n < 4) for (let j = 0; j < rn; j++) store<f32>(orow + <usize>i * osb + (<usize>j << 2), idot1q8(xc + (<usize>n * <usize>k << 1), sc, np, i, wr + <usize>j * rowBytes, k));
        else for (let j = 0; j < rn; j++) store<f32>(orow + <usize>i * osb + (<usize>j << 2), idot1<F>(xc, sc, sums, np, i, wr + <usize>j * rowBytes, k));
      }
    }
  }
}

export function imatmul_q8_0(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmul<Q8_0>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}
export function imatmul_q4_0(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmul<Q4_0>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}
export function imatmul_q4_k(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmul<Q4_K>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}
export function imatmul_q6_k(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmul<Q6_K>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}

// ---- relaxed SIMD: k-quants on int8 activations ---------------------------------------------
//
// scripts/build-wasm.js builds this file twice: kernels.wasm (SIMD128) and kernels-relaxed.wasm
// (SIMD128 + relaxed SIMD, ASC_FEATURE_RELAXED_SIMD). The host uses the second where the engine
// runs it and a start-up check finds it exact (simd-backend.ts). Its only relaxed instruction is
// i16x8.relaxed_dot_i8x16_i7x16_s (x86: pmaddubsw; Arm: sdot/smull): the sum of two products of
// a signed byte with a byte whose top bit is clear, which is fully specified (no implementation
// choice) for such operands. The k-quants' codes are exactly that, before their offsets: q4_k
// nibbles 0..15 and q6_k's six bits 0..63, so a weight byte multiplies an int8 activation code
// directly (16 multiplies in one instruction, where the SIMD128 kernels widen both to int16).
// Bounds: a lane of one relaxed dot is <= 2·63·127 < 2^15 (no saturation), of two added
// (q4_k) <= 4·15·127; times the sub-block scale in i32x4.dot_i16x8_s, a 256-block stays far
// inside int32. q6_k's offset (code - 32) comes out as 32 · Σ scale · (code sum of 16 values),
// from the per-16 activation code sums quantize_q8r writes; q4_k's mins as in imatmul.
// In the SIMD128 build these kernels are traps (never called: the host picks imatmul there).

/**
 * Activation rows [0, n) of x (stride xs floats, k values, k a multiple of 256) as q8_K blocks:
 * int8 codes [n, k] at codes (code round(x / d), d = max |x| / 127 per 256 values), scales as
 * quantize_q8 writes them (np per block, np = n rounded up to 4), and the code sums of every
 * `sumBl` (16 or 32) values as int16 at sums[i, c / sumBl]. The matmul kernels read codes and
 * sums of n rounded up to 8 rows and four scales past the last (quantize_q8's padding contract).
 */
export function quantize_q8r(x: usize, xs: i32, n: i32, k: i32, codes: usize, scales: usize, sums: usize, sumBl: i32, part: i32, parts: i32): void {
  const lo = shareLo(0, n, 1, part, parts), hi = shareHi(0, n, 1, part, parts);
  const np = (n + 3) & ~3, nb = k >> 8;
  for (let i = lo; i < hi; i++) {
    const xr = x + (<usize>i * <usize>xs << 2), cr = codes + <usize>i * <usize>k;
    const sr = sums + ((<usize>i * <usize>(k / sumBl)) << 1);
    for (let b = 0; b < nb; b++) {
      const c0 = b << 8;
      const id = q8scale(fptr(xr, c0), 256, fptr(scales, b * np + i));
      for (let c = c0; c < c0 + 256; c += 16) {
        const w0 = i16x8.narrow_i32x4_s(q8codes4(fptr(xr, c), id), q8codes4(fptr(xr, c + 4), id));
        const w1 = i16x8.narrow_i32x4_s(q8codes4(fptr(xr, c + 8), id), q8codes4(fptr(xr, c + 12), id));
        v128.store(cr + <usize>c, i8x16.narrow_i16x8_s(w0, w1));
        const s4 = i32x4.add(i32x4.extadd_pairwise_i16x8_s(w0), i32x4.extadd_pairwise_i16x8_s(w1));
        const t = <i16>(i32x4.extract_lane(s4, 0) + i32x4.extract_lane(s4, 1) + i32x4.extract_lane(s4, 2) + i32x4.extract_lane(s4, 3));
        const sp = sr + (<usize>(c / sumBl) << 1);
        store<i16>(sp, sumBl == 16 || (c & 31) == 0 ? t : <i16>(load<i16>(sp) + t));
      }
    }
  }
}

/** Σ pairs of (int8 a) · (b, top bit clear) as i16x8: the one relaxed instruction. */
// @ts-ignore: decorator
@inline function rdot(a: v128, b: v128): v128 {
  if (ASC_FEATURE_RELAXED_SIMD) return i16x8.relaxed_dot_i8x16_i7x16_s(a, b);
  else return unreachable();
}

/** Codes of values 16hv..16hv+15 of sub-block s (32 values) of a q4_k or q6_k block, unsigned bytes (no offset). */
// @ts-ignore: decorator
@inline function rw<F>(blk: usize, s: i32, hv: i32): v128 {
  const c0f = i8x16.splat(15);
  if (isQ4_K<F>()) {
    const b = v128.load(blk + 16 + (<usize>(s >> 1) << 5) + (<usize>hv << 4));
    return (s & 1) ? v128.and(i16x8.shr_u(b, 4), c0f) : v128.and(b, c0f);
  }
  const h = s >> 2, qq = s & 3;
  const lo = v128.load(blk + (<usize>h << 6) + (<usize>(qq & 1) << 5) + (<usize>hv << 4));
  const hi = v128.load(blk + 128 + (<usize>h << 5) + (<usize>hv << 4));
  return v128.or(v128.and(qq >= 2 ? i16x8.shr_u(lo, 4) : lo, c0f), rhigh(hi, qq));
}

/** q6_k: bits 2qq, 2qq + 1 of each byte of hi moved to bits 4, 5 (16-bit shifts; the mask drops what crosses bytes). */
// @ts-ignore: decorator
@inline function rhigh(hi: v128, qq: i32): v128 {
  const c30 = i8x16.splat(0x30);
  if (qq == 0) return v128.and(i16x8.shl(hi, 4), c30);
  if (qq == 1) return v128.and(i16x8.shl(hi, 2), c30);
  if (qq == 2) return v128.and(hi, c30);
  return v128.and(i16x8.shr_u(hi, 2), c30);
}

/** One token's 32 activation codes (y0, y1) · a sub-block's codes (w0, w1) times its scale(s), i32x4. */
// @ts-ignore: decorator
@inline function rsub<F>(y0: v128, y1: v128, w0: v128, w1: v128, s0: v128, s1: v128): v128 {
  if (isQ4_K<F>()) return i32x4.dot_i16x8_s(i16x8.add(rdot(y0, w0), rdot(y1, w1)), s0);
  return i32x4.add(i32x4.dot_i16x8_s(rdot(y0, w0), s0), i32x4.dot_i16x8_s(rdot(y1, w1), s1));
}

/**
 * Sub-block (32 values) of rows A (w0, w1; scales s0, s1) and B (v0, v1; t0, t1) · tokens at p,
 * p + xsb, ... (int8 codes), added to the per-thread sums ia/ib (zeroed per block by the caller).
 */
// @ts-ignore: decorator
@inline function r2add<F>(p: usize, xsb: usize, w0: v128, w1: v128, s0: v128, s1: v128, v0: v128, v1: v128, t0: v128, t1: v128): void {
  let y0 = v128.load(p), y1 = v128.load(p, 16);
  ia0 = i32x4.add(ia0, rsub<F>(y0, y1, w0, w1, s0, s1)); ib0 = i32x4.add(ib0, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia1 = i32x4.add(ia1, rsub<F>(y0, y1, w0, w1, s0, s1)); ib1 = i32x4.add(ib1, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia2 = i32x4.add(ia2, rsub<F>(y0, y1, w0, w1, s0, s1)); ib2 = i32x4.add(ib2, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia3 = i32x4.add(ia3, rsub<F>(y0, y1, w0, w1, s0, s1)); ib3 = i32x4.add(ib3, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia4 = i32x4.add(ia4, rsub<F>(y0, y1, w0, w1, s0, s1)); ib4 = i32x4.add(ib4, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia5 = i32x4.add(ia5, rsub<F>(y0, y1, w0, w1, s0, s1)); ib5 = i32x4.add(ib5, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia6 = i32x4.add(ia6, rsub<F>(y0, y1, w0, w1, s0, s1)); ib6 = i32x4.add(ib6, rsub<F>(y0, y1, v0, v1, t0, t1)); p += xsb;
  y0 = v128.load(p); y1 = v128.load(p, 16);
  ia7 = i32x4.add(ia7, rsub<F>(y0, y1, w0, w1, s0, s1)); ib7 = i32x4.add(ib7, rsub<F>(y0, y1, v0, v1, t0, t1));
}

/** q6_k: the block's 16 int8 scales as int16, scales 0..7 (lo) or 8..15. */
// @ts-ignore: decorator
@inline function q6scales(blk: usize, hiHalf: bool): v128 {
  const s8 = v128.load(blk + 192);
  return hiHalf ? i16x8.extend_high_i8x16_s(s8) : i16x8.extend_low_i8x16_s(s8);
}

/** q6_k's offset for one token: 32 · Σ scale · (code sum of 16 values), sums at sp (i32x4 partial). */
// @ts-ignore: decorator
@inline function q6corr(slo: v128, shi: v128, sp: usize): v128 {
  return i32x4.shl(i32x4.add(i32x4.dot_i16x8_s(slo, v128.load(sp)), i32x4.dot_i16x8_s(shi, v128.load(sp, 16))), 5);
}

/**
 * A block's contribution for four tokens (integer sums a0..a3) before the activation scales:
 * d · (Σ - q6_k's offset terms) - q4_k's dmin · Σ m · (code sums); sums of the four tokens at
 * sp, sp + ssb, ... (per 32 values for q4_k, per 16 for q6_k: slo/shi its scales).
 */
// @ts-ignore: decorator
@inline function rblock4<F>(d: v128, dmin: v128, m: v128, slo: v128, shi: v128, a0: v128, a1: v128, a2: v128, a3: v128, sp: usize, ssb: usize): v128 {
  if (isQ4_K<F>()) return iblock4<F>(d, dmin, m, a0, a1, a2, a3, sp, ssb);
  const s = i32x4.sub(hsum4(a0, a1, a2, a3), hsum4(q6corr(slo, shi, sp), q6corr(slo, shi, sp + ssb), q6corr(slo, shi, sp + 2 * ssb), q6corr(slo, shi, sp + 3 * ssb)));
  return f32x4.mul(f32x4.convert_i32x4_s(s), d);
}

/**
 * Rows wr and wr + rowBytes (q4_k or q6_k) · tokens i..i+7 on int8 codes (quantize_q8r): each
 * activation load serves both rows, each unpacked weight eight tokens. Only the first cnt
 * results are stored, and row B's only when two.
 */
// @ts-ignore: decorator
@inline function rdot8x2<F>(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, rowBytes: usize, k: i32, out: usize, osb: usize, cnt: i32, two: bool): void {
  const nb = k >> 8, sumBl = isQ4_K<F>() ? 32 : 16;
  const xsb = <usize>k, ssb = <usize>(k / sumBl) << 1;
  const x0 = xc + <usize>i * xsb;
  const zero = i32x4.splat(0);
  fa0 = f32x4.splat(0); fa1 = fa0; fa2 = fa0; fa3 = fa0;
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * qBytes<F>(), blk2 = blk + rowBytes;
    ia0 = zero; ia1 = zero; ia2 = zero; ia3 = zero; ia4 = zero; ia5 = zero; ia6 = zero; ia7 = zero;
    ib0 = zero; ib1 = zero; ib2 = zero; ib3 = zero; ib4 = zero; ib5 = zero; ib6 = zero; ib7 = zero;
    for (let s = 0; s < 8; s++) {
      const s0 = i16x8.splat(<i16>isub0<F>(blk, s)), s1 = i16x8.splat(<i16>isub1<F>(blk, s));
      const t0 = i16x8.splat(<i16>isub0<F>(blk2, s)), t1 = i16x8.splat(<i16>isub1<F>(blk2, s));
      r2add<F>(x0 + (<usize>b << 8) + (<usize>s << 5), xsb, rw<F>(blk, s, 0), rw<F>(blk, s, 1), s0, s1, rw<F>(blk2, s, 0), rw<F>(blk2, s, 1), t0, t1);
    }
    const dxA = v128.load(fptr(sc, b * np + i)), dxB = v128.load(fptr(sc, b * np + i + 4));
    const sp = sums + <usize>i * ssb + (<usize>b * <usize>(256 / sumBl) << 1), dd = dScale2<F>(blk, blk2);
    {
      const d = v128.shuffle<f32>(dd, dd, 0, 0, 0, 0), dmin = idmin<F>(blk), m = imins0<F>(blk);
      const slo = isQ4_K<F>() ? zero : q6scales(blk, false), shi = isQ4_K<F>() ? zero : q6scales(blk, true);
      fa0 = f32x4.add(fa0, f32x4.mul(rblock4<F>(d, dmin, m, slo, shi, ia0, ia1, ia2, ia3, sp, ssb), dxA));
      fa1 = f32x4.add(fa1, f32x4.mul(rblock4<F>(d, dmin, m, slo, shi, ia4, ia5, ia6, ia7, sp + 4 * ssb, ssb), dxB));
    }
    {
      const d = v128.shuffle<f32>(dd, dd, 1, 1, 1, 1), dmin = idmin<F>(blk2), m = imins0<F>(blk2);
      const slo = isQ4_K<F>() ? zero : q6scales(blk2, false), shi = isQ4_K<F>() ? zero : q6scales(blk2, true);
      fa2 = f32x4.add(fa2, f32x4.mul(rblock4<F>(d, dmin, m, slo, shi, ib0, ib1, ib2, ib3, sp, ssb), dxA));
      fa3 = f32x4.add(fa3, f32x4.mul(rblock4<F>(d, dmin, m, slo, shi, ib4, ib5, ib6, ib7, sp + 4 * ssb, ssb), dxB));
    }
  }
  store8(out, osb, fa0, fa1, cnt);
  if (two) store8(out + 4, osb, fa2, fa3, cnt);
}

/**
 * q4_k values 64p..64p+63 (sub-blocks 2p, 2p + 1, scales s0, s1 splat) · int8 codes at o (that
 * group's), i32x4; the two sub-blocks go through per-thread globals (computed in turn: idot8).
 */
// @ts-ignore: decorator
@inline function r4group(blk: usize, o: usize, p: i32, s0: v128, s1: v128): v128 {
  const c0f = i8x16.splat(15);
  const q = blk + 16 + (<usize>p << 5);
  const b0 = v128.load(q), b1 = v128.load(q, 16);
  ia0 = i32x4.dot_i16x8_s(i16x8.add(rdot(v128.load(o), v128.and(b0, c0f)), rdot(v128.load(o, 16), v128.and(b1, c0f))), s0);
  ia1 = i32x4.dot_i16x8_s(i16x8.add(rdot(v128.load(o, 32), v128.and(i16x8.shr_u(b0, 4), c0f)), rdot(v128.load(o, 48), v128.and(i16x8.shr_u(b1, 4), c0f))), s1);
  return i32x4.add(ia0, ia1);
}

/** q4_k row wr · token i on int8 codes (quantize_q8r; code sums per 32 values at sums). */
// @ts-ignore: decorator
@inline function rdot1q4k(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k >> 8;
  const xr = xc + <usize>i * <usize>k;
  let acc = f32x4.splat(0);
  let mins: f32 = 0;
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * 144, o = xr + (<usize>b << 8);
    // The eight 6-bit scales and mins as bytes (ggml's utmp unpacking).
    const u0 = load<u32>(blk, 4), u1 = load<u32>(blk, 8), u2 = load<u32>(blk, 12);
    const S = i16x8.extend_low_i8x16_u(i32x4.replace_lane(i32x4.splat(u0 & 0x3f3f3f3f), 1, (u2 & 0x0f0f0f0f) | (((u0 >> 6) & 0x03030303) << 4)));
    const ai = i32x4.add(
      i32x4.add(r4group(blk, o, 0, v128.shuffle<i16>(S, S, 0, 0, 0, 0, 0, 0, 0, 0), v128.shuffle<i16>(S, S, 1, 1, 1, 1, 1, 1, 1, 1)),
        r4group(blk, o + 64, 1, v128.shuffle<i16>(S, S, 2, 2, 2, 2, 2, 2, 2, 2), v128.shuffle<i16>(S, S, 3, 3, 3, 3, 3, 3, 3, 3))),
      i32x4.add(r4group(blk, o + 128, 2, v128.shuffle<i16>(S, S, 4, 4, 4, 4, 4, 4, 4, 4), v128.shuffle<i16>(S, S, 5, 5, 5, 5, 5, 5, 5, 5)),
        r4group(blk, o + 192, 3, v128.shuffle<i16>(S, S, 6, 6, 6, 6, 6, 6, 6, 6), v128.shuffle<i16>(S, S, 7, 7, 7, 7, 7, 7, 7, 7))));
    const xd = load<f32>(fptr(sc, b * np + i));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(ai), f32x4.splat(half(<u32>load<u16>(blk)) * xd)));
    const sp = sums + <usize>i * (<usize>(k >> 5) << 1) + (<usize>b << 4);
    const m = i16x8.extend_low_i8x16_u(i32x4.replace_lane(i32x4.splat(u1 & 0x3f3f3f3f), 1, ((u2 >> 4) & 0x0f0f0f0f) | (((u1 >> 6) & 0x03030303) << 4)));
    mins += <f32>isum(i32x4.dot_i16x8_s(m, v128.load(sp))) * half(<u32>load<u16>(blk + 2)) * xd;
  }
  return hsum(acc) - mins;
}

/**
 * q6_k: the four 16-value groups that share the 16 code bytes of ql at lo0/lo1 and qh at hi
 * (half h of the block, half hv of its rows: values 128h + 32qq + 16hv, scales s0..s3 splat)
 * · int8 codes at x (values 128h + 16hv), i32x4, in turn through per-thread globals.
 */
// @ts-ignore: decorator
@inline function r6quarter(blk: usize, x: usize, h: i32, hv: i32, s0: v128, s1: v128, s2: v128, s3: v128): v128 {
  const c0f = i8x16.splat(15);
  const ql = blk + (<usize>h << 6) + (<usize>hv << 4);
  const lo0 = v128.load(ql), lo1 = v128.load(ql, 32), hi = v128.load(blk + 128 + (<usize>h << 5) + (<usize>hv << 4));
  ia0 = i32x4.dot_i16x8_s(rdot(v128.load(x), v128.or(v128.and(lo0, c0f), rhigh(hi, 0))), s0);
  ia1 = i32x4.dot_i16x8_s(rdot(v128.load(x, 32), v128.or(v128.and(lo1, c0f), rhigh(hi, 1))), s1);
  ia2 = i32x4.dot_i16x8_s(rdot(v128.load(x, 64), v128.or(v128.and(i16x8.shr_u(lo0, 4), c0f), rhigh(hi, 2))), s2);
  ia3 = i32x4.dot_i16x8_s(rdot(v128.load(x, 96), v128.or(v128.and(i16x8.shr_u(lo1, 4), c0f), rhigh(hi, 3))), s3);
  return i32x4.add(i32x4.add(ia0, ia1), i32x4.add(ia2, ia3));
}

/** q6_k row wr · token i on int8 codes (quantize_q8r; code sums per 16 values at sums). */
// @ts-ignore: decorator
@inline function rdot1q6k(xc: usize, sc: usize, sums: usize, np: i32, i: i32, wr: usize, k: i32): f32 {
  const nb = k >> 8;
  const xr = xc + <usize>i * <usize>k, sr = sums + <usize>i * (<usize>(k >> 4) << 1);
  let acc = f32x4.splat(0);
  for (let b = 0; b < nb; b++) {
    const blk = wr + <usize>b * 210, o = xr + (<usize>b << 8);
    // Group 16·j takes scale j: quarter (h, hv), group qq is j = 8h + 2qq + hv.
    const L = q6scales(blk, false), H = q6scales(blk, true);
    const ai = i32x4.add(
      i32x4.add(
        r6quarter(blk, o, 0, 0, v128.shuffle<i16>(L, L, 0, 0, 0, 0, 0, 0, 0, 0), v128.shuffle<i16>(L, L, 2, 2, 2, 2, 2, 2, 2, 2), v128.shuffle<i16>(L, L, 4, 4, 4, 4, 4, 4, 4, 4), v128.shuffle<i16>(L, L, 6, 6, 6, 6, 6, 6, 6, 6)),
        r6quarter(blk, o + 16, 0, 1, v128.shuffle<i16>(L, L, 1, 1, 1, 1, 1, 1, 1, 1), v128.shuffle<i16>(L, L, 3, 3, 3, 3, 3, 3, 3, 3), v128.shuffle<i16>(L, L, 5, 5, 5, 5, 5, 5, 5, 5), v128.shuffle<i16>(L, L, 7, 7, 7, 7, 7, 7, 7, 7))),
      i32x4.add(
        r6quarter(blk, o + 128, 1, 0, v128.shuffle<i16>(H, H, 0, 0, 0, 0, 0, 0, 0, 0), v128.shuffle<i16>(H, H, 2, 2, 2, 2, 2, 2, 2, 2), v128.shuffle<i16>(H, H, 4, 4, 4, 4, 4, 4, 4, 4), v128.shuffle<i16>(H, H, 6, 6, 6, 6, 6, 6, 6, 6)),
        r6quarter(blk, o + 144, 1, 1, v128.shuffle<i16>(H, H, 1, 1, 1, 1, 1, 1, 1, 1), v128.shuffle<i16>(H, H, 3, 3, 3, 3, 3, 3, 3, 3), v128.shuffle<i16>(H, H, 5, 5, 5, 5, 5, 5, 5, 5), v128.shuffle<i16>(H, H, 7, 7, 7, 7, 7, 7, 7, 7))));
    const s = i32x4.sub(ai, q6corr(L, H, sr + (<usize>b << 5)));
    acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(s), f32x4.splat(half(<u32>load<u16>(blk + 208)) * load<f32>(fptr(sc, b * np + i)))));
  }
  return hsum(acc);
}

/**
 * imatmul's contract for q4_k/q6_k on quantize_q8r's int8 codes: from four tokens on, tiles of
 * two rows × eight tokens (the last padded); fewer than four tokens row by row.
 */
// @ts-ignore: decorator
@inline function imatmulr<F>(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  const a = shareLo(r0, r1, 4, part, parts), b = shareHi(r0, r1, 4, part, parts);
  if (a >= b || k <= 0) return;
  const rowBytes = <usize>(k >> 8) * qBytes<F>();
  const np = (n + 3) & ~3, osb = <usize>os << 2;
  for (let p0 = 0; p0 < n; p0 += TOKEN_PANEL) {
    const p1 = min(n, p0 + TOKEN_PANEL);
    for (let r = a; r < b; r += 4) {
      const rn = min(4, b - r);
      const wr = w + <usize>r * rowBytes;
      const orow = out + (<usize>(r - r0) << 2);
      if (n < 4) {
        for (let i = p0; i < p1; i++) {
          for (let j = 0; j < rn; j++) {
            const wj = wr + <usize>j * rowBytes, o = orow + <usize>i * osb + (<usize>j << 2);
            store<f32>(o, isQ4_K<F>() ? rdot1q4k(xc, sc, sums, np, i, wj, k) : rdot1q6k(xc, sc, sums, np, i, wj, k));
          }
        }
        continue;
      }
      for (let j = 0; j < rn; j += 2) {
        const wj = wr + <usize>j * rowBytes, oj = orow + (<usize>j << 2), two = j + 1 < rn;
        // A last single row is paired with itself; only its own results are stored.
        const rb = two ? rowBytes : 0;
        for (let i = p0; i < p1; i += 8) rdot8x2<F>(xc, sc, sums, np, i, wj, rb, k, oj + <usize>i * osb, osb, min(8, p1 - i), two);
      }
    }
  }
}

export function imatmulr_q4_k(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmulr<Q4_K>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}
export function imatmulr_q6_k(xc: usize, sc: usize, sums: usize, n: i32, w: usize, k: i32, r0: i32, r1: i32, out: usize, os: i32, part: i32, parts: i32): void {
  imatmulr<Q6_K>(xc, sc, sums, n, w, k, r0, r1, out, os, part, parts);
}

/**
 * Start-up check of the relaxed dot product (simd-backend.ts): Σ over 64 bytes at a (int8) and
 * b (top bits clear) with rdot, as the kernels use it; 0x7fffffff in the SIMD128 build.
 */
export function relaxed_check(a: usize, b: usize): i32 {
  if (!ASC_FEATURE_RELAXED_SIMD) return 0x7fffffff;
  let s = i32x4.splat(0);
  for (let o: usize = 0; o < 64; o += 16) s = i32x4.add(s, i32x4.extadd_pairwise_i16x8_s(rdot(v128.load(a + o), v128.load(b + o))));
  return isum(s);
}

// ---- latent attention, not absorbed (prefill) ----------------------------------------------

/** [Σ a_t[c]·k[c]] for four token rows a0..a3 and one key row k over len values (f32x4 of the four sums). */
// @ts-ignore: decorator
@inline function dot4rows(a0: usize, a1: usize, a2: usize, a3: usize, k: usize, len: i32): v128 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  let c = 0;
  for (; c + 4 <= len; c += 4) {
    const o = <usize>c << 2, kv = v128.load(k + o);
    s0 = f32x4.add(s0, f32x4.mul(v128.load(a0 + o), kv));
    s1 = f32x4.add(s1, f32x4.mul(v128.load(a1 + o), kv));
    s2 = f32x4.add(s2, f32x4.mul(v128.load(a2 + o), kv));
    s3 = f32x4.add(s3, f32x4.mul(v128.load(a3 + o), kv));
  }
  let s = fhsum4(s0, s1, s2, s3);
  for (; c < len; c++) {
    const o = <usize>c << 2, kv = load<f32>(k + o);
    s = f32x4.add(s, f32x4.mul(f32x4.replace_lane(f32x4.replace_lane(f32x4.replace_lane(f32x4.splat(load<f32>(a0 + o)), 1, load<f32>(a1 + o)), 2, load<f32>(a2 + o)), 3, load<f32>(a3 + o)), f32x4.splat(kv)));
  }
  return s;
}

/**
 * Latent attention for the tokens of one sequence without absorbing kv_b (prefill): keys and
 * values decompressed beforehand into kv [L, H·(nope + vDim)] (per head: nope key values, then
 * vDim value values, as kv_b's rows), rope keys at kr (row j at kr + j·krs floats), queries q
 * [cnt, H·(nope + rope)], their positions at pos (int32, each < L; token t sees rows 0..pos[t]).
 * Output out [cnt, H·vDim] (row stride os floats). Chunks are heads; head h uses 4·L floats of
 * scratch at scores + 16·L·h bytes. Per token the scores cost nope + rope multiply-adds per
 * row and the sum vDim, where the absorbed kernel spends kvRank + rope and kvRank.
 */
export function mha_prefill(q: usize, cnt: i32, H: i32, nope: i32, rope: i32, vDim: i32, scale: f32, kv: usize, L: i32, kr: usize, krs: i32, pos: usize, scores: usize, out: usize, os: i32, part: i32, parts: i32): void {
  const h0 = shareLo(0, H, 1, part, parts), h1 = shareHi(0, H, 1, part, parts);
  const qs = H * (nope + rope), kvs = H * (nope + vDim);
  const rowBytes = <usize>L << 2;
  for (let h = h0; h < h1; h++) {
    const sc = scores + <usize>h * (rowBytes << 2);
    for (let t0 = 0; t0 < cnt; t0 += 4) {
      const T = min(4, cnt - t0);
      // Missing tokens of the last group repeat its last one (their results are not stored).
      const i1 = t0 + min(1, T - 1), i2 = t0 + min(2, T - 1), i3 = t0 + min(3, T - 1);
      const q0 = q + ((<usize>t0 * <usize>qs + <usize>(h * (nope + rope))) << 2);
      const q1 = q + ((<usize>i1 * <usize>qs + <usize>(h * (nope + rope))) << 2);
      const q2 = q + ((<usize>i2 * <usize>qs + <usize>(h * (nope + rope))) << 2);
      const q3 = q + ((<usize>i3 * <usize>qs + <usize>(h * (nope + rope))) << 2);
      const ro = <usize>nope << 2;
      const p0 = load<i32>(pos + (<usize>t0 << 2)), p1 = load<i32>(pos + (<usize>i1 << 2));
      const p2 = load<i32>(pos + (<usize>i2 << 2)), p3 = load<i32>(pos + (<usize>i3 << 2));
      const maxp = max(max(p0, p1), max(p2, p3));
      const vs = f32x4.splat(scale);
      for (let j = 0; j <= maxp; j++) {
        const kj = kv + ((<usize>j * <usize>kvs + <usize>(h * (nope + vDim))) << 2);
        const s = f32x4.mul(f32x4.add(dot4rows(q0, q1, q2, q3, kj, nope), dot4rows(q0 + ro, q1 + ro, q2 + ro, q3 + ro, kr + ((<usize>j * <usize>krs) << 2), rope)), vs);
        const o = sc + (<usize>j << 2);
        store<f32>(o, f32x4.extract_lane(s, 0));
        store<f32>(o + rowBytes, f32x4.extract_lane(s, 1));
        store<f32>(o + 2 * rowBytes, f32x4.extract_lane(s, 2));
        store<f32>(o + 3 * rowBytes, f32x4.extract_lane(s, 3));
      }
      // Probabilities over each token's own extent, zeros past it up to the group's.
      for (let t = 0; t < 4; t++) {
        const p = t == 0 ? p0 : t == 1 ? p1 : t == 2 ? p2 : p3;
        const row = sc + <usize>t * rowBytes;
        softmax(row, p + 1);
        for (let j = p + 1; j <= maxp; j++) store<f32>(row + (<usize>j << 2), 0);
      }
      // Values, tokens in pairs: 16 columns of both tokens' sums in registers per pass over the rows.
      for (let t = 0; t < T; t += 2) {
        const tb = t + 1 < T ? t + 1 : t;
        const pa = sc + <usize>t * rowBytes, pb = sc + <usize>tb * rowBytes;
        const oa = out + ((<usize>(t0 + t) * <usize>os + <usize>(h * vDim)) << 2);
        const ob = out + ((<usize>(t0 + tb) * <usize>os + <usize>(h * vDim)) << 2);
        const v0 = kv + <usize>(h * (nope + vDim) + nope) * 4;
        let c = 0;
        for (; c + 16 <= vDim; c += 16) {
          let a0 = f32x4.splat(0), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
          for (let j = 0; j <= maxp; j++) {
            const vj = v0 + ((<usize>j * <usize>kvs + <usize>c) << 2);
            const wa = f32x4.splat(load<f32>(pa + (<usize>j << 2))), wb = f32x4.splat(load<f32>(pb + (<usize>j << 2)));
            const x0 = v128.load(vj), x1 = v128.load(vj, 16), x2 = v128.load(vj, 32), x3 = v128.load(vj, 48);
            a0 = f32x4.add(a0, f32x4.mul(wa, x0)); b0 = f32x4.add(b0, f32x4.mul(wb, x0));
            a1 = f32x4.add(a1, f32x4.mul(wa, x1)); b1 = f32x4.add(b1, f32x4.mul(wb, x1));
            a2 = f32x4.add(a2, f32x4.mul(wa, x2)); b2 = f32x4.add(b2, f32x4.mul(wb, x2));
            a3 = f32x4.add(a3, f32x4.mul(wa, x3)); b3 = f32x4.add(b3, f32x4.mul(wb, x3));
          }
          const ca = oa + (<usize>c << 2), cb = ob + (<usize>c << 2);
          v128.store(ca, a0); v128.store(ca, a1, 16); v128.store(ca, a2, 32); v128.store(ca, a3, 48);
          v128.store(cb, b0); v128.store(cb, b1, 16); v128.store(cb, b2, 32); v128.store(cb, b3, 48);
        }
        for (; c < vDim; c++) {
          let sa: f32 = 0, sb: f32 = 0;
          for (let j = 0; j <= maxp; j++) {
            const v = load<f32>(v0 + ((<usize>j * <usize>kvs + <usize>c) << 2));
            sa += load<f32>(pa + (<usize>j << 2)) * v;
            sb += load<f32>(pb + (<usize>j << 2)) * v;
          }
          store<f32>(oa + (<usize>c << 2), sa);
          store<f32>(ob + (<usize>c << 2), sb);
        }
      }
    }
  }
}
