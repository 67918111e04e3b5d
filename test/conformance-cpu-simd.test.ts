/**
 * The whole conformance suite on the fast CPU backend (WebAssembly SIMD over shared memory):
 * with two threads (jobs split between the main thread and a worker; minParallelWork 0 so even
 * the smallest op takes the threaded path), with one thread, and with tiny shards so that
 * weights, caches and activations spread over several shared memories.
 *
 * The suite's random f16 and fp8 weights are rich in subnormal codes, so they run on the
 * subnormal-safe decoders; the tests at the end check the fast decoders (picked for weights with
 * few subnormals, like real checkpoints) and that the choice is made as documented.
 */
import { after, before, describe, it } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import type { HostWeight, MlaShape } from '../src/backends/backend.js';
import { kernelsFor } from '../src/backends/cpu-simd/formats.js';
import { INT8_MIN_TOKENS, SimdCpuBackend, mlaExpandPays, relaxedSimdUsable } from '../src/backends/cpu-simd/simd-backend.js';
import { backendConformance, q8Slack, quantizeQ8Rows, randomWeight, rngFor, type FormatSpec } from './conformance.js';
import * as ref from './reference-ops.js';

/** Block-format matmuls of INT8_MIN_TOKENS tokens or more quantize their activations (q8_0 / q8_K blocks). */
function q8Activations(format: string, n: number): number {
  if (n < INT8_MIN_TOKENS) return 0;
  return format === 'q8_0' || format === 'q4_0' ? 32 : format === 'q4_k' || format === 'q6_k' ? 256 : 0;
}

/**
 * A sequence's tokens attend without absorption where mlaExpandPays (or always), their cached
 * latents decompressed by a matmul with kv_b: on q8 activations for a block-format kv_b.
 */
function mlaQ8Latents(always: boolean): (format: string, tokens: number, length: number, shape: MlaShape) => number {
  return (format, tokens, length, shape) => (always || mlaExpandPays(shape, tokens, length) ? q8Activations(format, length) : 0);
}

backendConformance('cpu-simd (2 threads)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0 }), { q8Activations, mlaQ8Latents: mlaQ8Latents(false) });
backendConformance('cpu-simd (1 thread)', () => SimdCpuBackend.create({ threads: 1 }), { q8Activations, mlaQ8Latents: mlaQ8Latents(false) });
// Block formats on the float path too (its kernels still serve int8MinTokens: Infinity and MLA's kv_b).
backendConformance('cpu-simd (2 threads, float path only)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, int8MinTokens: Infinity }));
// The SIMD128 build (the default uses the relaxed-SIMD one where it runs exactly: its k-quant kernels differ).
backendConformance('cpu-simd (2 threads, SIMD128 build)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, relaxedSimd: false }), { q8Activations, mlaQ8Latents: mlaQ8Latents(false) });
// Latent attention without absorption for every token (by default only where it pays: the
// larger scenario's prefill chunks, which run both paths in one call).
backendConformance('cpu-simd (2 threads, attention always expanded)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, mlaExpand: 'always' }), { q8Activations, mlaQ8Latents: mlaQ8Latents(true) });
// No scratch allowed for the expanded path: every sequence falls back to the absorbed kernel.
backendConformance('cpu-simd (2 threads, expanded attention without scratch)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, mlaExpand: 'always', mlaExpandMaxBytes: 0 }), { q8Activations });
backendConformance('cpu-simd (2 threads, 4 MiB shards)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, shardBytes: 4 << 20, gcBudgetBytes: 1 << 20 }), { q8Activations, mlaQ8Latents: mlaQ8Latents(false) });

/** The same weight with every subnormal code replaced by the smallest normal one of its sign. */
function withoutSubnormals(w: HostWeight): HostWeight {
  if (w.format === 'f16') {
    const d = Uint16Array.from(w.data as Uint16Array, (h) => ((h & 0x7c00) === 0 && (h & 0x3ff) !== 0 ? (h & 0x8000) | 0x0400 : h));
    return { ...w, data: d };
  }
  const d = Uint8Array.from(w.data as Uint8Array, (b) => ((b & 0x78) === 0 && (b & 7) !== 0 ? (b & 0x80) | 0x08 : b));
  return { ...w, data: d };
}

describe('cpu-simd: fast and subnormal-safe decoders', () => {
  let b: SimdCpuBackend, fl: SimdCpuBackend, s128: SimdCpuBackend;
  before(async () => {
    b = await SimdCpuBackend.create({ threads: 2, minParallelWork: 0 });
    fl = await SimdCpuBackend.create({ threads: 2, minParallelWork: 0, int8MinTokens: Infinity });
    s128 = await SimdCpuBackend.create({ threads: 2, minParallelWork: 0, relaxedSimd: false });
  });
  after(() => { b?.dispose(); fl?.dispose(); s128?.dispose(); });

  it('latent attention expands prefill chunks (mlaExpandPays), not decode or short chunks over a long cache', () => {
    const v2lite: MlaShape = { heads: 16, nopeDim: 128, ropeDim: 64, vDim: 128, kvRank: 512, softmaxScale: 0.1 };
    assert.equal(mlaExpandPays(v2lite, 256, 256), true, 'first chunk of a prompt');
    assert.equal(mlaExpandPays(v2lite, 256, 512), true, 'second chunk');
    assert.equal(mlaExpandPays(v2lite, 1, 512), false, 'decode');
    assert.equal(mlaExpandPays(v2lite, 4, 8), false, 'a few tokens');
    assert.equal(mlaExpandPays(v2lite, 32, 4000), false, 'a short chunk after a long prefix');
  });

  it('uses the relaxed-SIMD build where it runs exactly (Node 20: behind a V8 flag the backend sets), SIMD128 when told', () => {
    assert.equal(b.relaxed, relaxedSimdUsable());
    assert.equal(s128.relaxed, false);
    assert.match(b.info.name, b.relaxed ? /\+ relaxed/ : /^cpu \(WebAssembly SIMD, /);
    assert.doesNotMatch(s128.info.name, /relaxed/);
    // SHOAL_RELAXED_SIMD=0 keeps the SIMD128 build for the whole process.
    const mod = new URL('../src/backends/cpu-simd/simd-backend.js', import.meta.url).href;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e',
      `const m = await import(${JSON.stringify(mod)}); const b = await m.SimdCpuBackend.create({ threads: 1 }); console.log(m.relaxedSimdUsable(), b.relaxed); b.dispose();`],
    { encoding: 'utf8', env: { ...process.env, SHOAL_RELAXED_SIMD: '0' }, timeout: 60000 });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(child.stdout.trim(), 'false false');
    const major = Number(process.versions.node.split('.')[0]);
    // Every Node this project supports (>= 20) on x86-64 or Arm64 runs it.
    if (major >= 20 && (process.arch === 'x64' || process.arch === 'arm64')) assert.equal(b.relaxed, true, 'relaxed SIMD usable here');
  });

  const specs: FormatSpec[] = [{ format: 'f16' }, { format: 'fp8_e4m3_block', block: [128, 128] }, { format: 'fp8_e4m3_block', block: [3, 5] }];
  for (const spec of specs) {
    const name = spec.block ? `fp8[${spec.block[0]}x${spec.block[1]}]` : spec.format;
    it(`${name}: subnormal-rich weights pick the safe kernel, others the fast one; both match the reference`, async () => {
      const rng = rngFor(`simd decoders ${name}`);
      for (const [n, m, k] of [[1, 67, 300], [6, 130, 129]] as const) {
        const rich = randomWeight(rng, spec, m, k, 0.5);
        const clean = withoutSubnormals(rich);
        assert.match(kernelsFor(rich)!.matmul, /s$/, 'subnormal-rich weight: safe kernel');
        assert.doesNotMatch(kernelsFor(clean)!.matmul, /s$/, 'weight without subnormals: fast kernel');
        const x = ref.mat(n, k, rng.floats(n * k, -2, 2));
        for (const w of [rich, clean]) {
          const got = await b.read(b.matmul(b.fromHost(Float32Array.from(x.data), n, k), b.uploadWeight(w)));
          const want = ref.refMatmul(x, w);
          let mag = 0, worst = 0;
          for (let i = 0; i < got.length; i++) { mag = Math.max(mag, Math.abs(want.data[i])); worst = Math.max(worst, Math.abs(got[i] - want.data[i])); }
          assert.ok(worst <= 1e-4 * Math.max(1, mag), `${name} [${n}, ${m}, ${k}]: max |diff| ${worst} (max |expected| ${mag})`);
        }
      }
    });
  }

  for (const format of ['q8_0', 'q4_0', 'q4_k', 'q6_k'] as const) {
    it(`${format}: computed by its own kernels on the packed blocks (integer path (one token, token tiles of 8 and 4, leftover tokens, row edges) and float path)`, async () => {
      const rng = rngFor(`simd blocks ${format}`);
      const per = format === 'q8_0' || format === 'q4_0' ? 32 : 256;
      const maxDiff = (got: Float32Array, want: ref.Mat, slack?: Float64Array) => {
        let mag = 0, worst = 0;
        for (let i = 0; i < got.length; i++) {
          mag = Math.max(mag, Math.abs(want.data[i]));
          worst = Math.max(worst, Math.abs(got[i] - want.data[i]) - (slack ? slack[i] : 0));
        }
        return { mag, worst };
      };
      for (const be of [b, s128]) {
        for (const [n, m, k] of [[1, 67, 4 * per], [2, 9, per], [3, 9, per], [6, 130, 2 * per], [12, 6, per], [33, 5, per], [17, 3, per]] as const) {
          const w = randomWeight(rng, { format }, m, k, 0.5);
          const kernels = kernelsFor(w, be.relaxed);
          assert.equal(kernels?.matmul, `matmul_${format}`);
          const relaxedKernel = be.relaxed && (format === 'q4_k' || format === 'q6_k');
          assert.equal(kernels?.int8?.matmul, relaxedKernel ? `imatmulr_${format}` : `imatmul_${format}`);
          const dw = be.uploadWeight(w);
          assert.equal((dw as unknown as { kernels: unknown }).kernels !== null, true);
          const x = ref.mat(n, k, rng.floats(n * k, -2, 2));
          const got = await be.read(be.matmul(be.fromHost(Float32Array.from(x.data), n, k), dw));
          const what = `${format} [${n}, ${m}, ${k}] (${be.info.name})`;
          assert.equal(q8Activations(format, n), per, `${what}: the integer path applies`);
          // Integer path: exact up to float32 rounding on the same q8 activations, and within the
          // quantization bound of the exact result.
          const { q, step } = quantizeQ8Rows(x, per);
          const same = maxDiff(got, ref.refMatmul(q, w));
          assert.ok(same.worst <= 1e-4 * Math.max(1, same.mag), `${what}, integer path vs q8 reference: max |diff| ${same.worst} (max |expected| ${same.mag})`);
          const exact = maxDiff(got, ref.refMatmul(x, w), q8Slack(ref.dequantize(w), step, n));
          assert.ok(exact.worst <= 1e-4 * Math.max(1, exact.mag), `${what}, integer path vs exact: max |diff| beyond the q8 bound ${exact.worst}`);
          // The float path (int8MinTokens: Infinity) is exact.
          const f = maxDiff(await fl.read(fl.matmul(fl.fromHost(Float32Array.from(x.data), n, k), fl.uploadWeight(w))), ref.refMatmul(x, w));
          assert.ok(f.worst <= 1e-4 * Math.max(1, f.mag), `${what}, float path: max |diff| ${f.worst} (max |expected| ${f.mag})`);
        }
      }
    });
  }

  it('weights with codes the kernels do not decode (f16 inf/NaN, e4m3 NaN) use the reference and still compute', async () => {
    const f16: HostWeight = { name: 'inf', format: 'f16', rows: 2, cols: 3, data: Uint16Array.from([0x3c00, 0x7c00, 0, 0x4000, 0x3c00, 0x3c00]) };
    assert.equal(kernelsFor(f16), null);
    const got = await b.read(b.matmul(b.fromHost(Float32Array.from([1, 0.5, 2]), 1, 3), b.uploadWeight(f16)));
    assert.deepEqual([...got], [Infinity, 4.5]);
    const fp8: HostWeight = { name: 'nan', format: 'fp8_e4m3_block', rows: 1, cols: 2, data: Uint8Array.from([0x7f, 0x38]), scales: Float32Array.of(1), blockRows: 1, blockCols: 2 };
    assert.equal(kernelsFor(fp8), null);
    assert.ok(Number.isNaN((await b.read(b.matmul(b.fromHost(Float32Array.from([1, 1]), 1, 2), b.uploadWeight(fp8))))[0]));
  });

  it('uploadWeightFrom fills a weight in place in a shard; a failing fill keeps nothing', async () => {
    let before = b.sharedBytes;
    b.uploadWeightFrom({ name: 'w', format: 'q8_0', rows: 5, cols: 256 }, (dst) => dst.fill(1));
    assert.ok(b.sharedBytes >= before + 5 * 8 * 34, 'the bytes live in a shard');
    before = b.sharedBytes;
    assert.throws(() => b.uploadWeightFrom({ name: 'w', format: 'q8_0', rows: 4, cols: 64 }, () => { throw new Error('disk gone'); }), /disk gone/);
    assert.equal(b.sharedBytes, before, 'the block of a failed fill is released');
    // Values the kernels do not decode: moved to the host (the shard block released), still computed.
    const inf = b.uploadWeightFrom({ name: 'inf', format: 'f16', rows: 2, cols: 3 }, (dst) => dst.set(new Uint8Array(Uint16Array.from([0x3c00, 0x7c00, 0, 0x4000, 0x3c00, 0x3c00]).buffer)));
    assert.equal(b.sharedBytes, before);
    assert.deepEqual([...(await b.read(b.matmul(b.fromHost(Float32Array.from([1, 0.5, 2]), 1, 3), inf)))], [Infinity, 4.5]);
  });

  it('an op on a disposed backend fails clearly; dispose twice is harmless', async () => {
    const c = await SimdCpuBackend.create({ threads: 2 });
    const w = c.uploadWeight({ name: 'w', format: 'f32', rows: 1, cols: 1, data: Float32Array.of(2) });
    assert.deepEqual([...(await c.read(c.matmul(c.fromHost(Float32Array.of(3), 1, 1), w)))], [6]);
    c.dispose();
    c.dispose();
    assert.throws(() => c.uploadWeight({ name: 'w', format: 'f32', rows: 1, cols: 1, data: Float32Array.of(2) }), /disposed/);
  });
});
