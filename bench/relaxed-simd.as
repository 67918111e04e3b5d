// Kernels for bench/relaxed-simd.ts (AssemblyScript, compiled at run time with relaxed SIMD on).
// w: packed 4-bit weights, 32 bytes = 64 values in the order: low nibbles of bytes 0..15, of
// 16..31, high nibbles of 0..15, of 16..31. Codes x in the same value order, int16 or int8.

/** Σ nibble · code with the codes as int16: nibbles widened to int16 lanes, i32x4.dot_i16x8_s. */
export function dotI16(w: usize, x: usize, n: i32, reps: i32): i32 {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0);
  const m = i8x16.splat(15);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < n; i += 32) {
      const b0 = v128.load(w + i), b1 = v128.load(w + i, 16), o = x + (<usize>i << 2);
      const l0 = v128.and(b0, m), l1 = v128.and(b1, m), h0 = i8x16.shr_u(b0, 4), h1 = i8x16.shr_u(b1, 4);
      a0 = i32x4.add(a0, i32x4.add(
        i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(l0), v128.load(o)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(l0), v128.load(o, 16))),
        i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(l1), v128.load(o, 32)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(l1), v128.load(o, 48)))));
      a1 = i32x4.add(a1, i32x4.add(
        i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(h0), v128.load(o, 64)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(h0), v128.load(o, 80))),
        i32x4.add(i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_u(h1), v128.load(o, 96)), i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_u(h1), v128.load(o, 112)))));
    }
  }
  const s = i32x4.add(a0, a1);
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3);
}

/** The same with int8 codes and i32x4.relaxed_dot_i8x16_i7x16_add_s (nibbles: the 7-bit operand). */
export function dotRelaxed(w: usize, x: usize, n: i32, reps: i32): i32 {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0), a2 = i32x4.splat(0), a3 = i32x4.splat(0);
  const m = i8x16.splat(15);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < n; i += 32) {
      const b0 = v128.load(w + i), b1 = v128.load(w + i, 16), o = x + (<usize>i << 1);
      // Four accumulators: each dot-add waits on its own previous result only.
      a0 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(o), v128.and(b0, m), a0);
      a1 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(o, 16), v128.and(b1, m), a1);
      a2 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(o, 32), i8x16.shr_u(b0, 4), a2);
      a3 = i32x4.relaxed_dot_i8x16_i7x16_add_s(v128.load(o, 48), i8x16.shr_u(b1, 4), a3);
    }
  }
  const s = i32x4.add(i32x4.add(a0, a1), i32x4.add(a2, a3));
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3);
}

/**
 * The same with i16x8.relaxed_dot_i8x16_i7x16_s (no accumulate), as the CPU backend's relaxed
 * k-quant kernels use it: pairs summed in int16, two such added, then widened pairwise.
 */
export function dotRelaxed16(w: usize, x: usize, n: i32, reps: i32): i32 {
  let a0 = i32x4.splat(0), a1 = i32x4.splat(0);
  const m = i8x16.splat(15);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < n; i += 32) {
      const b0 = v128.load(w + i), b1 = v128.load(w + i, 16), o = x + (<usize>i << 1);
      a0 = i32x4.add(a0, i32x4.extadd_pairwise_i16x8_s(i16x8.add(
        i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(o), v128.and(b0, m)), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(o, 16), v128.and(b1, m)))));
      a1 = i32x4.add(a1, i32x4.extadd_pairwise_i16x8_s(i16x8.add(
        i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(o, 32), i8x16.shr_u(b0, 4)), i16x8.relaxed_dot_i8x16_i7x16_s(v128.load(o, 48), i8x16.shr_u(b1, 4)))));
    }
  }
  const s = i32x4.add(a0, a1);
  return i32x4.extract_lane(s, 0) + i32x4.extract_lane(s, 1) + i32x4.extract_lane(s, 2) + i32x4.extract_lane(s, 3);
}

/** Σ a[i]·b[i] (float32) with f32x4.mul and f32x4.add, four accumulators. */
export function dotF32(a: usize, b: usize, n: i32, reps: i32): f32 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < n; i += 16) {
      const p = <usize>i << 2;
      s0 = f32x4.add(s0, f32x4.mul(v128.load(a + p), v128.load(b + p)));
      s1 = f32x4.add(s1, f32x4.mul(v128.load(a + p, 16), v128.load(b + p, 16)));
      s2 = f32x4.add(s2, f32x4.mul(v128.load(a + p, 32), v128.load(b + p, 32)));
      s3 = f32x4.add(s3, f32x4.mul(v128.load(a + p, 48), v128.load(b + p, 48)));
    }
  }
  const s = f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1) + f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3);
}

/** The same with f32x4.relaxed_madd (fused where the CPU has FMA). */
export function dotFma(a: usize, b: usize, n: i32, reps: i32): f32 {
  let s0 = f32x4.splat(0), s1 = f32x4.splat(0), s2 = f32x4.splat(0), s3 = f32x4.splat(0);
  for (let r = 0; r < reps; r++) {
    for (let i = 0; i < n; i += 16) {
      const p = <usize>i << 2;
      s0 = f32x4.relaxed_madd(v128.load(a + p), v128.load(b + p), s0);
      s1 = f32x4.relaxed_madd(v128.load(a + p, 16), v128.load(b + p, 16), s1);
      s2 = f32x4.relaxed_madd(v128.load(a + p, 32), v128.load(b + p, 32), s2);
      s3 = f32x4.relaxed_madd(v128.load(a + p, 48), v128.load(b + p, 48), s3);
    }
  }
  const s = f32x4.add(f32x4.add(s0, s1), f32x4.add(s2, s3));
  return f32x4.extract_lane(s, 0) + f32x4.extract_lane(s, 1) + f32x4.extract_lane(s, 2) + f32x4.extract_lane(s, 3);
}
