/**
 * CPU kernel benchmark: the fast CPU backend (WebAssembly SIMD, all cores) against the
 * TypeScript reference backend, side by side in one run.
 *
 *  1. matmul on DeepSeek-V2-Lite shapes (an expert's gate/up [1408, 2048] and down [2048, 1408],
 *     the attention output [2048, 2048]) in bf16 and fp8 (128x128 blocks, quantized from
 *     Gaussian values as a checkpoint is), at n = 1 (decode)
 *     and n = 16 (a batch): ms per call, GFLOP/s (2·n·m·k per call) and GB/s (weight bytes
 *     streamed per call).
 *  2. Prefill matmul in llama.cpp's q8_0 and q4_k (the same shapes, n = 4..128): the integer
 *     path (q8 activations) against the float path (int8MinTokens: Infinity), both on N threads,
 *     and the TypeScript reference at n = 16: ms per call and GFLOP/s.
 *     Then decode from memory: one token through a q8_0 / q4_k weight [16384, 2048] (far larger
 *     than the caches), float against integer path, on 1 and N threads: GB/s of weights.
 *  3. End-to-end greedy decode on models/demo through the engine (scheduler included): tok/s.
 *
 *   node dist/bench/cpu-kernels.js [--threads N] [--seconds 1] [--model models/demo] [--tokens 200] [--skip-model] [--prefill-only]
 */
import { availableParallelism, cpus } from 'node:os';
import { Command } from 'commander';
import type { Backend, HostWeight, WeightFormat } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { SimdCpuBackend } from '../src/backends/cpu-simd/simd-backend.js';
import { Engine } from '../src/engine/engine.js';
import { packedRowBytes, quantizeRow, type PackedFormat } from '../src/formats/quant.js';

interface Opts { threads: number; seconds: number; model: string; tokens: number; skipModel: boolean; prefillOnly: boolean }

/** Gaussian values like a trained layer's (std 0.02). */
function gaussian(n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - Math.random())) * 0.02, t = 2 * Math.PI * Math.random();
    out[i] = r * Math.cos(t);
    if (i + 1 < n) out[i + 1] = r * Math.sin(t);
  }
  return out;
}

/** Positive e4m3fn values by code (0..126), for nearest-code quantization. */
const E4M3: number[] = Array.from({ length: 127 }, (_, c) => {
  const e = c >> 3, m = c & 7;
  return e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
});
function e4m3Code(v: number): number {
  const a = Math.abs(v);
  let lo = 0, hi = 126;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (E4M3[mid] < a) lo = mid + 1; else hi = mid; }
  if (lo > 0 && a - E4M3[lo - 1] <= E4M3[lo] - a) lo--;
  return (v < 0 ? 0x80 : 0) | lo;
}

/** A weight as a checkpoint would hold it: bf16, or fp8 with 128x128 blocks scaled to their maximum (as DeepSeek V3's). */
function checkpointWeight(format: WeightFormat, rows: number, cols: number): HostWeight {
  const v = gaussian(rows * cols);
  if (format === 'bf16') return { name: 'w', format, rows, cols, data: new Uint16Array(v.buffer).filter((_, i) => i % 2 === 1) };
  const sr = Math.ceil(rows / 128), sc = Math.ceil(cols / 128);
  const scales = new Float32Array(sr * sc);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
    const b = Math.floor(r / 128) * sc + Math.floor(c / 128);
    scales[b] = Math.max(scales[b], Math.abs(v[r * cols + c]) / 448);
  }
  const data = new Uint8Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) data[r * cols + c] = e4m3Code(v[r * cols + c] / scales[Math.floor(r / 128) * sc + Math.floor(c / 128)]);
  return { name: 'w', format, rows, cols, data, scales, blockRows: 128, blockCols: 128 };
}

/** A Gaussian weight quantized to one of llama.cpp's block formats, as a GGUF conversion would. */
function blockWeight(format: PackedFormat, rows: number, cols: number): HostWeight {
  const v = gaussian(rows * cols);
  const rb = packedRowBytes(format, cols)!;
  const data = new Uint8Array(rows * rb);
  for (let r = 0; r < rows; r++) quantizeRow(format, v, r * cols, cols, data, r * rb);
  return { name: 'w', format, rows, cols, data };
}

/** Mean ms per call: runs `fn` until `seconds` have passed (after a warm-up). */
async function time(fn: () => Promise<void>, seconds: number): Promise<number> {
  for (let i = 0; i < 3; i++) await fn();
  let calls = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000 || calls < 5) {
    await fn();
    calls++;
  }
  return (performance.now() - t0) / calls;
}

async function matmulRow(b: Backend, format: WeightFormat, m: number, k: number, n: number, seconds: number, hw = checkpointWeight(format, m, k)) {
  const w = b.uploadWeight(hw);
  const x = b.fromHost(Float32Array.from({ length: n * k }, () => Math.random() - 0.5), n, k);
  const ms = await time(async () => { await b.read(b.matmul(x, w)); }, seconds);
  return { ms, gflops: (2 * n * m * k) / ms / 1e6, gbs: w.bytes / ms / 1e6 };
}

async function decodeTokPerS(backend: Backend, model: string, tokens: number): Promise<number> {
  const engine = await Engine.load(model, { backend, maxContext: 1024 });
  try {
    const prompt = [0, ...Array.from({ length: 31 }, (_, i) => 3 + ((i * 37) % 1500))];
    const run = async (maxTokens: number) => {
      const gen = engine.generate(prompt, { maxTokens, ignoreEos: true, sampling: { temperature: 0 } });
      let r = await gen.next();
      while (!r.done) r = await gen.next();
      return r.value;
    };
    await run(16); // warm-up (JIT, allocator)
    let best = 0;
    for (let rep = 0; rep < 3; rep++) {
      const s = await run(tokens);
      best = Math.max(best, ((s.completionTokens - 1) / s.decodeMs) * 1000);
    }
    return best;
  } finally {
    await engine.close();
  }
}

async function main(o: Opts): Promise<void> {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  console.log(`# CPU kernels: ${cpu}, ${availableParallelism()} cores, Node ${process.versions.node}; SIMD backend with ${o.threads} threads\n`);
  const ref = new CpuBackend();
  const simd = await SimdCpuBackend.create({ threads: o.threads });
  const simd1 = await SimdCpuBackend.create({ threads: 1 });

  const shapes: [string, number, number][] = [['expert gate/up', 1408, 2048], ['expert down', 2048, 1408], ['attn o_proj', 2048, 2048]];
  const fmt = (r: { ms: number; gflops: number; gbs: number }) => `${r.ms.toFixed(3)} · ${r.gflops.toFixed(1)} · ${r.gbs.toFixed(1)}`;
  if (!o.prefillOnly) console.log(`| weight [m, k] | format | n | TS reference ms · GFLOP/s · GB/s | SIMD 1 thread ms · GFLOP/s · GB/s | SIMD ${o.threads} threads ms · GFLOP/s · GB/s | SIMD / reference (1 · ${o.threads} threads) |`);
  if (!o.prefillOnly) console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const format of o.prefillOnly ? [] : ['bf16', 'fp8_e4m3_block'] as WeightFormat[]) {
    for (const [label, m, k] of shapes) {
      for (const n of [1, 16]) {
        const r = await matmulRow(ref, format, m, k, n, o.seconds);
        const s1 = await matmulRow(simd1, format, m, k, n, o.seconds);
        const s = await matmulRow(simd, format, m, k, n, o.seconds);
        const f = format === 'bf16' ? 'bf16' : 'fp8 128x128';
        console.log(`| ${label} [${m}, ${k}] | ${f} | ${n} | ${fmt(r)} | ${fmt(s1)} | ${fmt(s)} | ${(r.ms / s1.ms).toFixed(1)}x · ${(r.ms / s.ms).toFixed(1)}x |`);
      }
    }
  }
  simd1.dispose();

  // Prefill: the same weight and activations through the integer and the float path, side by side.
  const simdF = await SimdCpuBackend.create({ threads: o.threads, int8MinTokens: Infinity });
  const fmt2 = (r: { ms: number; gflops: number }) => `${r.ms.toFixed(3)} · ${r.gflops.toFixed(1)}`;
  console.log(`\n| weight [m, k] | format | n | TS reference ms · GFLOP/s | SIMD float path ms · GFLOP/s | SIMD integer path ms · GFLOP/s | integer / float |`);
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const format of ['q8_0', 'q4_k'] as PackedFormat[]) {
    // k-quant rows are whole 256-blocks: the expert down projection is 1536 wide there.
    for (const [label, m, k0] of shapes) {
      const k = format === 'q8_0' ? k0 : Math.ceil(k0 / 256) * 256;
      const hw = blockWeight(format, m, k);
      for (const n of [4, 16, 32, 64, 128]) {
        const r = n === 16 ? fmt2(await matmulRow(ref, format, m, k, n, o.seconds, hw)) : '—';
        const f = await matmulRow(simdF, format, m, k, n, o.seconds, hw);
        const i = await matmulRow(simd, format, m, k, n, o.seconds, hw);
        console.log(`| ${label} [${m}, ${k}] | ${format} | ${n} | ${r} | ${fmt2(f)} | ${fmt2(i)} | ${(f.ms / i.ms).toFixed(2)}x |`);
      }
    }
  }

  // Decode: one token through a weight far larger than the caches (an LM head's share), so the
  // figure is the rate the kernel streams weights from memory, on 1 and on N threads.
  const simd1i = await SimdCpuBackend.create({ threads: 1 }), simd1f = await SimdCpuBackend.create({ threads: 1, int8MinTokens: Infinity });
  console.log(`\n| one token, weight [m, k] from memory | format | float path GB/s (1 · ${o.threads} threads) | integer path GB/s (1 · ${o.threads} threads) | integer / float (1 · ${o.threads}) |`);
  console.log('| --- | --- | --- | --- | --- |');
  for (const format of ['q8_0', 'q4_k'] as PackedFormat[]) {
    const [m, k] = [16384, 2048];
    const hw = blockWeight(format, m, k);
    const [f1, fN, i1, iN] = [
      await matmulRow(simd1f, format, m, k, 1, o.seconds, hw), await matmulRow(simdF, format, m, k, 1, o.seconds, hw),
      await matmulRow(simd1i, format, m, k, 1, o.seconds, hw), await matmulRow(simd, format, m, k, 1, o.seconds, hw),
    ];
    console.log(`| [${m}, ${k}] | ${format} | ${f1.gbs.toFixed(1)} · ${fN.gbs.toFixed(1)} | ${i1.gbs.toFixed(1)} · ${iN.gbs.toFixed(1)} | ${(f1.ms / i1.ms).toFixed(2)}x · ${(fN.ms / iN.ms).toFixed(2)}x |`);
  }
  simd1i.dispose();
  simd1f.dispose();
  simd.dispose();
  simdF.dispose();

  if (!o.skipModel && !o.prefillOnly) {
    console.log(`\n| ${o.model}, greedy decode of ${o.tokens} tokens after a 32-token prompt | tok/s (best of 3) | vs reference |`);
    console.log('| --- | --- | --- |');
    const refTps = await decodeTokPerS(new CpuBackend(), o.model, o.tokens);
    console.log(`| TS reference (1 thread) | ${refTps.toFixed(1)} | 1.0x |`);
    for (const threads of [1, o.threads]) {
      const tps = await decodeTokPerS(await SimdCpuBackend.create({ threads }), o.model, o.tokens);
      console.log(`| SIMD, ${threads} thread${threads > 1 ? 's' : ''} | ${tps.toFixed(1)} | ${(tps / refTps).toFixed(1)}x |`);
    }
  }
}

const program = new Command('bench-cpu-kernels')
  .option('--threads <n>', 'threads of the SIMD backend', String(availableParallelism()))
  .option('--seconds <s>', 'time per matmul measurement', '1')
  .option('--model <dir>', 'model for the decode benchmark', 'models/demo')
  .option('--tokens <n>', 'tokens to decode', '200')
  .option('--skip-model', 'matmul only')
  .option('--prefill-only', 'only the block-format matmuls (integer against float path: prefill, and one token from memory)')
  .action(async (raw) => {
    await main({ threads: Number(raw.threads), seconds: Number(raw.seconds), model: raw.model, tokens: Number(raw.tokens), skipModel: !!raw.skipModel, prefillOnly: !!raw.prefillOnly });
  });
await program.parseAsync();
