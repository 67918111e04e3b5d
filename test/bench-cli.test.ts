/**
 * `shoal bench` on the demo model with tiny numbers: the output lines, and that --threads
 * reaches the fast CPU backend. (Registered on its own program here; src/cli/main.ts adds it to
 * the real one.)
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { Command } from 'commander';
import { fileURLToPath } from 'node:url';
import { registerBench, benchPrompt } from '../src/cli/bench.js';

const demo = fileURLToPath(new URL('../../models/demo', import.meta.url));

async function bench(args: string[]): Promise<string> {
  const program = new Command('shoal').exitOverride();
  let out = '';
  registerBench(program, (t) => { out += t; });
  await program.parseAsync(['node', 'shoal', 'bench', ...args]);
  return out;
}

it('prints prefill and decode tokens/s and peak RSS; --threads reaches the backend', async () => {
  const out = await bench(['--model', demo, '--prompt-tokens', '8', '--gen-tokens', '4', '--threads', '2', '--device', 'cpu']);
  assert.match(out, /^device: cpu \(WebAssembly SIMD( \+ relaxed)?, 2 threads\)$/m);
  assert.match(out, /^prefill: 8 tokens, \d+(\.\d+)? tok\/s$/m);
  assert.match(out, /^decode: 4 tokens, \d+(\.\d+)? tok\/s$/m);
  assert.match(out, /^peak RSS: \d+ MiB$/m);
});

it('--quantize q8_0 and the reference device work too', async () => {
  const out = await bench(['--model', demo, '--prompt-tokens', '4', '--gen-tokens', '2', '--device', 'cpu-ref', '--quantize', 'q8_0']);
  assert.match(out, /^prefill: 4 tokens, /m);
  assert.match(out, /^decode: 2 tokens, /m);
});

it('the random prompt is seeded and inside its range', () => {
  const a = benchPrompt(100, 16, 2048, 1);
  assert.deepEqual(a, benchPrompt(100, 16, 2048, 1));
  assert.notDeepEqual(a, benchPrompt(100, 16, 2048, 2));
  assert.ok(a.every((t) => t >= 16 && t < 2048));
});
