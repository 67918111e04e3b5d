/**
 * Does WebAssembly relaxed SIMD make shoal's CPU kernels faster on this Node and CPU?
 *
 *   node dist/bench/relaxed-simd.js [--seconds 1]
 *
 * Compiles two small AssemblyScript kernels (bench/relaxed-simd.as) with relaxed SIMD enabled and
 * times, on one thread, over data that sits in L1:
 *   - int8 dot products as the SIMD128 kernels do them (int16 lanes, i32x4.dot_i16x8_s) against
 *     i32x4.relaxed_dot_i8x16_i7x16_add_s, and against i16x8.relaxed_dot_i8x16_i7x16_s (what
 *     the backend's relaxed k-quant kernels use); 4-bit weights are valid 7-bit operands, so
 *     every result must be exact;
 *   - a float32 dot product with f32x4.mul + f32x4.add against f32x4.relaxed_madd.
 * Node 20 needs `--experimental-wasm-relaxed-simd`; it is set at run time here (V8 flags are
 * process-wide, so this must happen before any module using it is compiled).
 * Prints GMAC/s for each, the ratio, and whether each integer result is right on its first call
 * (V8's baseline compiler, Liftoff) and after the timing (optimized by TurboFan): Node 20.20's
 * V8 11.3 gets the accumulating form wrong in Liftoff on x86-64; docs/benchmarks.md records it.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { Command } from 'commander';

interface Kernels {
  memory: WebAssembly.Memory;
  dotI16(w: number, x: number, n: number, reps: number): number;
  dotRelaxed(w: number, x: number, n: number, reps: number): number;
  dotRelaxed16(w: number, x: number, n: number, reps: number): number;
  dotF32(a: number, b: number, n: number, reps: number): number;
  dotFma(a: number, b: number, n: number, reps: number): number;
}

async function compile(): Promise<Kernels> {
  const asc = (await import('assemblyscript/asc')).default;
  const source = readFileSync(fileURLToPath(new URL('../../bench/relaxed-simd.as', import.meta.url)), 'utf8');
  const out: Record<string, Uint8Array> = {};
  const { error, stderr } = await asc.main(
    ['k.ts', '-o', 'k.wasm', '-O3', '--noAssert', '--runtime', 'stub', '--initialMemory', '8', '--enable', 'simd,relaxed-simd'],
    { readFile: (n: string) => (n === 'k.ts' ? source : null), writeFile: (n: string, c: string | Uint8Array) => { out[n] = typeof c === 'string' ? new TextEncoder().encode(c) : c; }, listFiles: () => [] },
  );
  if (error) throw new Error(`${error.message}\n${stderr.toString()}`);
  const bytes = new Uint8Array(out['k.wasm']);
  if (!WebAssembly.validate(bytes)) v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  if (!WebAssembly.validate(bytes)) throw new Error('this Node cannot run relaxed SIMD, even with --experimental-wasm-relaxed-simd');
  const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { abort() { throw new Error('abort'); } } });
  return instance.exports as unknown as Kernels;
}

/** GMAC/s of fn over `macs` multiply-adds per call, best of three timed stretches. */
function rate(fn: () => number, macs: number, seconds: number): number {
  fn(); // compile (Liftoff, then TurboFan)
  let best = 0;
  for (let rep = 0; rep < 3; rep++) {
    let calls = 0;
    const t0 = performance.now();
    while (performance.now() - t0 < (seconds * 1000) / 3) { fn(); calls++; }
    best = Math.max(best, (calls * macs) / ((performance.now() - t0) / 1000) / 1e9);
  }
  return best;
}

async function main(seconds: number): Promise<void> {
  const k = await compile();
  // Layout: 8 KB of packed 4-bit weights (16384 values) at W; their codes as int16 at X16 and as
  // int8 at X8; two float32 vectors of 8192 at FA and FB. All of it fits in L1/L2.
  const W = 0, X16 = 16384, X8 = 65536, FA = 131072, FB = 163840, N = 8192, REPS = 64;
  const mem = k.memory.buffer;
  const wBytes = new Uint8Array(mem, W, N), x16 = new Int16Array(mem, X16, 2 * N), x8 = new Int8Array(mem, X8, 2 * N);
  for (let i = 0; i < N; i++) wBytes[i] = (i * 7919) & 0xff;
  for (let i = 0; i < 2 * N; i++) x16[i] = x8[i] = ((i * 104729) % 255) - 127;
  const fa = new Float32Array(mem, FA, 8192), fb = new Float32Array(mem, FB, 8192);
  for (let i = 0; i < 8192; i++) { fa[i] = ((i % 13) - 6) / 8; fb[i] = ((i % 7) - 3) / 4; }
  // Both integer kernels must give the exact Σ nibble · code (computed here in plain JS);
  // the float ones the same sum up to rounding.
  let exact = 0;
  for (let i = 0; i < N; i += 32) {
    for (let j = 0; j < 32; j++) exact += (wBytes[i + j] & 15) * x8[2 * i + j] + (wBytes[i + j] >> 4) * x8[2 * i + 32 + j];
  }
  // Each integer kernel's result on its first call (Liftoff) and after being timed (TurboFan).
  const kernels = { i16: () => k.dotI16(W, X16, N, 1), add: () => k.dotRelaxed(W, X8, N, 1), r16: () => k.dotRelaxed16(W, X8, N, 1) };
  const first = { i16: kernels.i16(), add: kernels.add(), r16: kernels.r16() };
  const f = k.dotF32(FA, FB, 8192, 1), ff = k.dotFma(FA, FB, 8192, 1);
  const base = rate(() => k.dotI16(W, X16, N, REPS), 2 * N * REPS, seconds);
  const addRate = rate(() => k.dotRelaxed(W, X8, N, REPS), 2 * N * REPS, seconds);
  const r16Rate = rate(() => k.dotRelaxed16(W, X8, N, REPS), 2 * N * REPS, seconds);
  const verdict = (v: number) => (v === exact ? 'right' : `WRONG ${v}, ${(v / exact).toFixed(2)}x`);
  const check = (name: keyof typeof kernels) => {
    const later = kernels[name]();
    return `exact ${exact}; SIMD128 ${verdict(first.i16)}; relaxed, first call: ${verdict(first[name])}, optimized: ${verdict(later)}`;
  };
  const rows: [string, number, number, string][] = [
    ['int8 · 4-bit: i32x4.dot_i16x8_s on int16 lanes vs i32x4.relaxed_dot_i8x16_i7x16_add_s', base, addRate, check('add')],
    ['int8 · 4-bit: i32x4.dot_i16x8_s on int16 lanes vs i16x8.relaxed_dot_i8x16_i7x16_s (the kernels\' form)', base, r16Rate, check('r16')],
    ['float32: f32x4.mul + f32x4.add vs f32x4.relaxed_madd',
      rate(() => k.dotF32(FA, FB, 8192, REPS), 8192 * REPS, seconds), rate(() => k.dotFma(FA, FB, 8192, REPS), 8192 * REPS, seconds),
      `sums differ by ${Math.abs(f - ff).toExponential(1)}`],
  ];
  console.log(`Node ${process.version} (V8 ${process.versions.v8}), one thread, data in L1\n`);
  console.log('| kernel | SIMD128 GMAC/s | relaxed SIMD GMAC/s | relaxed / SIMD128 | check |');
  console.log('| --- | --- | --- | --- | --- |');
  for (const [name, base, relaxed, check] of rows) console.log(`| ${name} | ${base.toFixed(1)} | ${relaxed.toFixed(1)} | ${(relaxed / base).toFixed(2)}x | ${check} |`);
}

const program = new Command('bench-relaxed-simd')
  .description('time relaxed-SIMD dot products against the SIMD128 ones the CPU kernels use')
  .option('--seconds <s>', 'seconds per measurement', '1')
  .action(async (o: { seconds: string }) => { await main(Number(o.seconds)); });
await program.parseAsync();
