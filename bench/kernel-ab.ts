/**
 * A/B of two builds of the fast CPU backend's kernels, in one process, calls alternating.
 *
 *   node dist/bench/kernel-ab.js --a /tmp/dist-before --b dist [--formats q8_0,q4_k,q6_k] (also f32, bf16) [--rows M] [--cols K]
 *     [--tokens 1,256] [--threads 2] [--rounds 7] [--seconds 0.3] [--rows M]
 *
 * `--a`/`--b` are `dist` folders (copy one aside with `cp -r dist /tmp/dist-before` before a
 * change, rebuild, compare). Each build gets its own backend and its own copy of the same
 * weight; per round each runs the same matmul for `--seconds`, A then B then B then A, so
 * drift of a noisy machine falls on both. For each format and token count it prints the
 * median over rounds of GB/s of weights (one token: a [16384, 2048] matvec, far larger than
 * the caches) or GFLOP/s (more tokens: [2816, 2048], a shared expert's gate/up), and the
 * median of the per-round ratios B / A, which is the figure to trust on a shared machine.
 * `--rows` overrides the weight's row count (small values for a quick check).
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command } from 'commander';
import type { Backend, DeviceWeight, HostWeight, Tensor } from '../src/backends/backend.js';
import type { PackedFormat } from '../src/formats/quant.js';
import { packedRowBytes, quantizeRow } from '../src/formats/quant.js';

interface Build {
  name: string;
  create(threads: number): Promise<Backend>;
}

async function loadBuild(name: string, dist: string): Promise<Build> {
  const url = pathToFileURL(resolve(dist, 'src/backends/cpu-simd/simd-backend.js')).href;
  const mod = (await import(url)) as { SimdCpuBackend: { create(o: { threads: number }): Promise<Backend> } };
  return { name, create: (threads) => mod.SimdCpuBackend.create({ threads }) };
}

function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Calls per second of `run` over about `seconds` (after one warm-up call). */
async function rate(run: () => Promise<unknown>, seconds: number): Promise<number> {
  await run();
  let calls = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    await run();
    calls++;
  }
  return calls / ((performance.now() - t0) / 1000);
}

async function main(): Promise<void> {
  const o = new Command()
    .requiredOption('--a <dist>', 'the build to compare against (a dist folder)')
    .requiredOption('--b <dist>', 'the build under test (a dist folder)')
    .option('--formats <list>', 'weight formats', 'q8_0,q4_k,q6_k')
    .option('--tokens <list>', 'token counts (1 = decode)', '1,256')
    .option('--threads <n>', 'threads per backend', (v) => parseInt(v, 10), 2)
    .option('--rounds <n>', 'alternating rounds', (v) => parseInt(v, 10), 7)
    .option('--seconds <s>', 'seconds per build per round', (v) => parseFloat(v), 0.3)
    .option('--rows <m>', 'weight rows (default 16384 for one token, 2816 for more)', (v) => parseInt(v, 10))
    .option('--cols <k>', 'weight columns', (v) => parseInt(v, 10), 2048)
    .parse()
    .opts<{ a: string; b: string; formats: string; tokens: string; threads: number; rounds: number; seconds: number; rows?: number; cols: number }>();

  const builds = [await loadBuild('A', o.a), await loadBuild('B', o.b)];
  const backends = await Promise.all(builds.map((b) => b.create(o.threads)));
  let seed = 1;
  const rnd = (): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 4294967296 - 0.5;
  };
  console.log(`A = ${o.a}, B = ${o.b}; ${o.threads} threads, ${o.rounds} rounds of ${o.seconds} s per build`);
  console.log('| format | tokens | weight | A | B | B / A (median of rounds) |');
  console.log('|---|---|---|---|---|---|');
  try {
    for (const format of o.formats.split(',') as (PackedFormat | 'f32' | 'bf16')[]) {
      for (const n of o.tokens.split(',').map(Number)) {
        const [m, k] = [o.rows ?? (n === 1 ? 16384 : 2816), o.cols];
        const values = Float32Array.from({ length: m * k }, rnd);
        let data: Uint8Array | Uint16Array | Float32Array;
        if ((format as string) === 'f32') data = values;
        else if ((format as string) === 'bf16') data = Uint16Array.from(new Uint32Array(values.buffer), (u) => u >>> 16);
        else {
          const packed = format as PackedFormat, rb = packedRowBytes(packed, k);
          if (rb === null) throw new Error(`${format}: ${k} columns are not whole blocks`);
          const bytes = new Uint8Array(m * rb);
          for (let r = 0; r < m; r++) quantizeRow(packed, values, r * k, k, bytes, r * rb);
          data = bytes;
        }
        const x = Float32Array.from({ length: n * k }, rnd);
        const setups = backends.map((be) => {
          const w: DeviceWeight = be.uploadWeight({ name: 'w', format, rows: m, cols: k, data: data.slice() } as HostWeight);
          const xt: Tensor = be.fromHost(x, n, k);
          return { be, w, xt };
        });
        const per = (i: number) => async (): Promise<void> => {
          const { be, w, xt } = setups[i];
          const y = be.matmul(xt, w);
          await be.read(y);
          (be as Partial<Backend>).release?.call(be, y); // builds before Backend.release lack it
        };
        const rates: number[][] = [[], []];
        for (let r = 0; r < o.rounds; r++) {
          for (const i of r % 2 ? [1, 0] : [0, 1]) rates[i].push(await rate(per(i), o.seconds));
        }
        // One token: weight GB/s; more: GFLOP/s (2·n·m·k per call).
        const unit = n === 1 ? data.byteLength / 1e9 : (2 * n * m * k) / 1e9;
        const [a, b] = rates.map((v) => median(v) * unit);
        const ratio = median(rates[1].map((v, r) => v / rates[0][r]));
        const what = n === 1 ? 'GB/s' : 'GFLOP/s';
        console.log(`| ${format} | ${n} | [${m}, ${k}] | ${a.toFixed(1)} ${what} | ${b.toFixed(1)} ${what} | ${ratio.toFixed(3)} |`);
      }
    }
  } finally {
    for (const be of backends) be.dispose();
  }
}

main().catch((e: unknown) => {
  console.error(`kernel-ab: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
