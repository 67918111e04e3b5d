/**
 * `shoal bench`: load a model, prefill N seeded random tokens, decode M tokens greedily
 * (past end-of-sequence), and print prefill and decode tokens/s and the peak resident set.
 */
import type { Command } from 'commander';
import { UserError } from '../errors.js';
import type { QuantizeType } from '../models/weights.js';
import { intOption, loadEngine } from './common.js';
import { quantizeOption } from './run.js';

export interface BenchOptions {
  model: string;
  promptTokens: number;
  genTokens: number;
  threads?: number;
  device: string;
  quantize?: QuantizeType;
  seed: number;
}

export interface BenchResult {
  device: string;
  promptTokens: number;
  genTokens: number;
  prefillTokPerS: number;
  decodeTokPerS: number;
  peakRssBytes: number;
  loadMs: number;
  /** CPU backends: the threads that actually ran the kernels, and the threads the backend was
   * created with (more than ran if a worker thread failed to start). */
  threads?: number;
  threadsWanted?: number;
}

/** Seeded token ids in [lo, hi). */
export function benchPrompt(n: number, lo: number, hi: number, seed: number): number[] {
  let st = seed >>> 0; // mulberry32
  const next = () => {
    st = (st + 0x6d2b79f5) >>> 0;
    let t = Math.imul(st ^ (st >>> 15), st | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return Array.from({ length: n }, () => lo + Math.floor(next() * (hi - lo)));
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const t0 = performance.now();
  const engine = await loadEngine(o.model, o.device, {
    quantize: o.quantize ?? null,
    maxContext: o.promptTokens + o.genTokens + 1,
  }, { threads: o.threads });
  const loadMs = performance.now() - t0;
  try {
    const vocab = Math.min(engine.tokenizer.vocabSize, engine.model.cfg.vocabSize);
    // Skip the first ids (BOS/EOS and other specials usually sit there).
    const prompt = benchPrompt(o.promptTokens, Math.min(16, vocab - 1), vocab, o.seed);
    const gen = engine.generate(prompt, { maxTokens: o.genTokens, ignoreEos: true, sampling: { temperature: 0 } });
    let r = await gen.next();
    while (!r.done) r = await gen.next();
    const s = r.value;
    const cpu = engine.backend as { activeThreads?: number; threads?: number };
    return {
      ...(cpu.activeThreads !== undefined ? { threads: cpu.activeThreads, threadsWanted: cpu.threads } : {}),
      device: engine.backend.info.name,
      promptTokens: s.promptTokens,
      genTokens: s.completionTokens,
      prefillTokPerS: s.promptTokens / (s.prefillMs / 1000),
      // The first token comes with the prefill; decode covers the ones after it.
      decodeTokPerS: s.completionTokens > 1 ? (s.completionTokens - 1) / (s.decodeMs / 1000) : NaN,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
      loadMs,
    };
  } finally {
    await engine.close();
  }
}

/** `print` receives the report (stdout by default). */
export function registerBench(program: Command, print: (text: string) => void = (t) => { process.stdout.write(t); }): void {
  program
    .command('bench')
    .description('measure prefill and decode speed (tokens/s) and peak memory on a model')
    .requiredOption('--model <path>', 'Hugging Face model folder or a .gguf file')
    .option('--prompt-tokens <n>', 'prompt length (seeded random tokens)', intOption(1), 512)
    .option('--gen-tokens <n>', 'tokens to decode (greedy, past end-of-sequence)', intOption(1), 128)
    .option('--threads <n>', 'CPU threads, the main one included (default: every core)', intOption(1, 64))
    .option('--device <name>', 'cpu | cpu-ref | webgpu | auto', 'cpu')
    .option('--quantize <type>', 'pack projection weights on load: q8_0 | q4_k', quantizeOption)
    .option('--seed <n>', 'seed of the random prompt', intOption(0), 1)
    .action(async (o: BenchOptions) => {
      if (o.genTokens < 2) throw new UserError('needs at least 2 generated tokens to time decoding', '--gen-tokens');
      const r = await runBench(o);
      const mib = (b: number) => (b / 1048576).toFixed(0);
      if (r.threads !== undefined && r.threadsWanted !== undefined && r.threads < r.threadsWanted) {
        process.stderr.write(`shoal: warning: only ${r.threads} of ${r.threadsWanted} threads ran (a worker thread failed to start)\n`);
      }
      print(
        `device: ${r.device}\n` +
        `load: ${(r.loadMs / 1000).toFixed(2)} s\n` +
        `prefill: ${r.promptTokens} tokens, ${r.prefillTokPerS.toFixed(2)} tok/s\n` +
        `decode: ${r.genTokens} tokens, ${r.decodeTokPerS.toFixed(2)} tok/s\n` +
        `peak RSS: ${mib(r.peakRssBytes)} MiB\n`,
      );
    });
}
