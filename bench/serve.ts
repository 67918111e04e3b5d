/**
 * Serving benchmark: output tokens/s, TTFT and TPOT percentiles at several concurrency levels,
 * with continuous batching (--max-running = concurrency) against one request at a time
 * (--max-running 1), on the same model, machine and run. Talks HTTP to a real `shoal serve`.
 *
 *   node dist/bench/serve.js --model models/demo [--concurrency 1,4,16,32] [--prompt-tokens 64]
 *                            [--gen-tokens 64] [--requests-per-client 2] [--device cpu|cpu-ref|webgpu]
 */
import { Command } from 'commander';
import { startServer } from '../src/server/server.js';

interface Sample { ttftMs: number; tpotMs: number; tokens: number }

function pct(xs: number[], p: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

/** One streaming completion; times the first token and the gaps after it. */
async function streamOne(url: string, model: string, prompt: number[], genTokens: number): Promise<Sample> {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt, max_tokens: genTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const decoder = new TextDecoder();
  let buf = '', first = 0, last = 0, tokens = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 2);
      if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
      const ev = JSON.parse(line.slice(6));
      if (ev.usage) tokens = ev.usage.completion_tokens;
      if (ev.choices?.length) {
        const now = performance.now();
        if (!first) first = now;
        last = now;
      }
    }
  }
  return { ttftMs: first - t0, tpotMs: tokens > 1 ? (last - first) / (tokens - 1) : 0, tokens };
}

async function level(model: string, concurrency: number, maxRunning: number, o: Opts) {
  const server = await startServer({ model, port: 0, maxRunning, maxQueue: 1024, maxContext: o.promptTokens + o.genTokens + 16, device: o.device });
  try {
    // Warm-up request (JIT, caches).
    await streamOne(server.url, server.modelName, [0, 5, 6, 7], 4);
    const samples: Sample[] = [];
    const t0 = performance.now();
    await Promise.all(Array.from({ length: concurrency }, async (_, c) => {
      for (let r = 0; r < o.requestsPerClient; r++) {
        // Distinct prompts so the prefix cache does not help.
        const prompt = [0, ...Array.from({ length: o.promptTokens - 1 }, (_, k) => 3 + ((c * 977 + r * 331 + k * 13) % 1500))];
        samples.push(await streamOne(server.url, server.modelName, prompt, o.genTokens));
      }
    }));
    const secs = (performance.now() - t0) / 1000;
    const tokens = samples.reduce((a, s) => a + s.tokens, 0);
    return {
      tokPerS: tokens / secs,
      ttft: [50, 90, 99].map((p) => pct(samples.map((s) => s.ttftMs), p)),
      tpot: [50, 90, 99].map((p) => pct(samples.map((s) => s.tpotMs), p)),
    };
  } finally {
    await server.close();
  }
}

interface Opts { model: string; concurrency: string; promptTokens: number; genTokens: number; requestsPerClient: number; device: string }

const program = new Command('bench-serve')
  .requiredOption('--model <dir>')
  .option('--concurrency <list>', 'comma-separated client counts', '1,4,16,32')
  .option('--prompt-tokens <n>', 'prompt length', (v) => Number(v), 64)
  .option('--gen-tokens <n>', 'tokens generated per request', (v) => Number(v), 64)
  .option('--requests-per-client <n>', 'requests each client sends in turn', (v) => Number(v), 2)
  .option('--device <name>', 'backend (cpu, cpu-ref, webgpu, auto)', 'auto')
  .action(async (o: Opts) => {
    const f = (x: number) => x.toFixed(1);
    console.log(`model ${o.model}, device ${o.device}, prompt ${o.promptTokens} tokens, ${o.genTokens} generated per request, ${o.requestsPerClient} requests per client`);
    console.log('| clients | mode | output tok/s | TTFT p50/p90/p99 ms | TPOT p50/p90/p99 ms | batching / one-at-a-time |');
    console.log('| --- | --- | --- | --- | --- | --- |');
    for (const c of o.concurrency.split(',').map(Number)) {
      const one = await level(o.model, c, 1, o);
      const batched = c === 1 ? one : await level(o.model, c, c, o);
      console.log(`| ${c} | one at a time | ${f(one.tokPerS)} | ${one.ttft.map(f).join(' / ')} | ${one.tpot.map(f).join(' / ')} | |`);
      if (c > 1) console.log(`| ${c} | continuous batching | ${f(batched.tokPerS)} | ${batched.ttft.map(f).join(' / ')} | ${batched.tpot.map(f).join(' / ')} | ${(batched.tokPerS / one.tokPerS).toFixed(2)}x |`);
    }
  });

await program.parseAsync(process.argv);
