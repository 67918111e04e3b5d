/**
 * shoal against llama.cpp (node-llama-cpp, CPU build, no GPU) on the same GGUF files.
 *
 *   node dist/bench/vs-llama-cpp.js [--threads 2] [--prompt-tokens 512] [--gen-tokens 128]
 *                                   [--rounds 3] [--types q8_0,q4_k] [--dir /tmp/shoal-vs-llama]
 *
 * 1. Writes a synthetic model with DeepSeek-V2-Lite's layer shapes (hidden 2048, 16 heads, no
 *    q_lora, kv_lora 512, 64 routed experts of width 1408, top-6, 2 shared, dense width 10944,
 *    vocab 102400) and 4 layers (1 dense, 3 MoE), random bf16 weights, as a Hugging Face folder
 *    (models/demo's tokenizer: its ids are < 2048, the GGUF pads the vocabulary with [PADn]).
 * 2. Converts it with shoal's converter (convertToGguf, what `shoal convert` runs) to each type.
 * 3. For each file, alternates llama.cpp and shoal (each shoal round a fresh child process, so its
 *    peak RSS is its own), `--rounds` times: prefill tok/s, decode tok/s, and the ratio.
 * 4. Greedy continuations of three prompts on both engines: agreement, and at the first
 *    divergence llama.cpp's logit margin between its pick and shoal's.
 */
import { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { writeSafetensors, type TensorToWrite } from '../src/formats/safetensors.js';
import { convertToGguf, type GgufOutType } from '../src/models/gguf-deepseek.js';
import { parseDeepseekConfig } from '../src/models/config.js';
import { expectedTensors } from '../src/models/deepseek.js';
import { Engine } from '../src/engine/engine.js';
import { createBackend } from '../src/backends/index.js';
import { benchPrompt } from '../src/cli/bench.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;
const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '../..');

const CONFIG = {
  architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2',
  vocab_size: 102400, hidden_size: 2048, intermediate_size: 10944, moe_intermediate_size: 1408,
  num_hidden_layers: 4, num_attention_heads: 16, num_key_value_heads: 16,
  n_shared_experts: 2, n_routed_experts: 64, ep_size: 1, routed_scaling_factor: 1.0,
  kv_lora_rank: 512, q_lora_rank: null, qk_rope_head_dim: 64, v_head_dim: 128, qk_nope_head_dim: 128,
  topk_method: 'greedy', n_group: 1, topk_group: 1, num_experts_per_tok: 6, moe_layer_freq: 1,
  first_k_dense_replace: 1, norm_topk_prob: false, scoring_func: 'softmax', aux_loss_alpha: 0.001, seq_aux: true,
  hidden_act: 'silu', max_position_embeddings: 4096, initializer_range: 0.02, rms_norm_eps: 1e-6,
  use_cache: true, bos_token_id: 0, eos_token_id: 1, tie_word_embeddings: false, rope_theta: 10000,
  attention_bias: false, attention_dropout: 0.0, torch_dtype: 'bfloat16',
};

/** Random bf16 values, uniform in ±a (xorshift; bf16 by truncation), or a constant for norms. */
function bf16Tensor(name: string, shape: number[], seed: number): TensorToWrite {
  const n = shape.reduce((a, b) => a * b, 1);
  const out = new Uint16Array(n);
  if (name.endsWith('norm.weight')) out.fill(0x3f80); // 1.0
  else {
    const a = 1.7 / Math.sqrt(shape[shape.length - 1]); // ~unit-variance outputs for unit inputs
    const f = new Float32Array(1), u = new Uint32Array(f.buffer);
    let s = (seed * 2654435761) >>> 0 || 1;
    for (let i = 0; i < n; i++) {
      s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
      f[0] = ((s / 4294967296) * 2 - 1) * a;
      out[i] = u[0] >>> 16;
    }
  }
  return { name, dtype: 'BF16', shape, data: out };
}

function makeModel(dir: string): void {
  if (existsSync(join(dir, 'config.json'))) return;
  mkdirSync(dir, { recursive: true });
  const cfg = parseDeepseekConfig(CONFIG as Any, 'config.json');
  const all = expectedTensors(cfg, false);
  const groups = new Map<string, [string, number[]][]>();
  for (const t of all) {
    const m = /^model\.layers\.(\d+)\./.exec(t[0]);
    const g = m ? `layer${m[1]}` : 'top';
    if (!groups.has(g)) groups.set(g, []);
    groups.get(g)!.push(t);
  }
  let seed = 1, shard = 0;
  for (const [g, ts] of groups) {
    const t0 = performance.now();
    writeSafetensors(join(dir, `model-${String(shard++).padStart(2, '0')}-${g}.safetensors`), ts.map(([n, s]) => bf16Tensor(n, s, seed++)));
    console.error(`  wrote ${g} (${ts.length} tensors) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(CONFIG, null, 2));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(repoRoot, 'models/demo', f), join(dir, f));
}

interface Figures { prefill: number; decode: number; rss?: number }

async function llamaRound(llama: Any, file: string, prompt: number[], gen: number, threads: number): Promise<Figures> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: prompt.length + gen + 16, threads, batchSize: Math.max(prompt.length, 32) });
  try {
    const seq = ctx.getSequence();
    let t0 = performance.now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
    const prefillMs = performance.now() - t0;
    t0 = performance.now();
    let n = 0;
    for await (const _t of seq.evaluate(prompt.slice(-1), { temperature: 0 })) if (++n === gen) break;
    const decodeMs = performance.now() - t0;
    return { prefill: (prompt.length - 1) / (prefillMs / 1000), decode: gen / (decodeMs / 1000) };
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

/** A shoal round in a fresh process (its own peak RSS; no sharing of cores with llama.cpp's idle threads). */
function shoalRound(file: string, p: number, g: number, threads: number): Figures {
  const script = `import { runBench } from ${JSON.stringify(join(repoRoot, 'dist/src/cli/bench.js'))};
const r = await runBench({ model: ${JSON.stringify(file)}, promptTokens: ${p}, genTokens: ${g}, threads: ${threads}, device: 'cpu', seed: 1 });
process.stdout.write(JSON.stringify(r));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 1 << 20 });
  const r = JSON.parse(out);
  // A figure from fewer threads than llama.cpp had would not be a comparison.
  if (r.threads !== threads) throw new Error(`shoal ran on ${r.threads} thread(s), not ${threads}`);
  return { prefill: r.prefillTokPerS, decode: r.decodeTokPerS, rss: r.peakRssBytes };
}

async function llamaGreedy(llama: Any, file: string, prompt: number[], n: number, threads: number): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: prompt.length + n + 16, threads });
  try {
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(prompt, { temperature: 0 })) { out.push(t); if (out.length === n) break; }
    return out;
  } finally { await ctx.dispose(); await model.dispose(); }
}

/** llama.cpp's logits for the next token after `tokens`. */
async function llamaLogits(llama: Any, file: string, tokens: number[], threads: number): Promise<Map<number, number>> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: tokens.length + 16, threads });
  try {
    const out = await ctx.getSequence().controlledEvaluate(tokens.map((t, i) => (i === tokens.length - 1 ? [t, { generateNext: { logits: true } }] : t)));
    return out[tokens.length - 1].next.logits;
  } finally { await ctx.dispose(); await model.dispose(); }
}

async function shoalGreedy(file: string, prompts: number[][], n: number, threads: number): Promise<number[][]> {
  const e = await Engine.load(file, { backend: await createBackend('cpu', { threads }), maxContext: 256 });
  try {
    const res: number[][] = [];
    for (const p of prompts) {
      const it = e.generate(p, { maxTokens: n, sampling: { temperature: 0 }, ignoreEos: true });
      let r = await it.next();
      while (!r.done) r = await it.next();
      res.push(r.value.tokenIds);
    }
    return res;
  } finally { await e.close(); }
}

const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(2) : String(v));

async function main(): Promise<void> {
  const o = new Command('vs-llama-cpp')
    .option('--threads <n>', 'threads for both engines', (v) => parseInt(v, 10), 2)
    .option('--prompt-tokens <n>', 'prompt length', (v) => parseInt(v, 10), 512)
    .option('--gen-tokens <n>', 'tokens to decode', (v) => parseInt(v, 10), 128)
    .option('--rounds <n>', 'alternating rounds per engine', (v) => parseInt(v, 10), 3)
    .option('--types <list>', 'GGUF types', 'q8_0,q4_k')
    .option('--continuation-tokens <n>', 'greedy tokens compared per prompt', (v) => parseInt(v, 10), 16)
    .option('--dir <path>', 'work folder (the model and GGUFs are kept there and reused)', '/tmp/shoal-vs-llama')
    .parse().opts();
  const lib: Any = await import('node-llama-cpp' as string);
  const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'error' });
  const hf = join(o.dir, 'hf');
  console.log(`# synthetic DeepSeek-V2-Lite-shaped model, 4 layers, in ${hf}`);
  makeModel(hf);
  const prompt = benchPrompt(o.promptTokens, 16, 2048, 1);
  const prompts = [[0, 100, 200, 300, 400], [0, 7, 77, 777, 1777, 42], [0, 1500, 1400, 1300]];
  for (const type of (o.types as string).split(',') as GgufOutType[]) {
    const file = join(o.dir, `model-${type}.gguf`);
    if (!existsSync(file)) {
      const t0 = performance.now();
      convertToGguf(hf, file, type);
      console.log(`# converted to ${type} in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
    }
    console.log(`\n## ${type}: ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB, threads ${o.threads}, prompt ${o.promptTokens}, gen ${o.genTokens}`);
    console.log('round | llama.cpp prefill | shoal prefill | ratio | llama.cpp decode | shoal decode | ratio | shoal peak RSS');
    const L: Figures[] = [], S: Figures[] = [];
    for (let r = 0; r < o.rounds; r++) {
      const l = await llamaRound(llama, file, prompt, o.genTokens, o.threads);
      const s = shoalRound(file, o.promptTokens, o.genTokens, o.threads);
      L.push(l); S.push(s);
      console.log(`${r + 1} | ${fmt(l.prefill)} | ${fmt(s.prefill)} | ${fmt(s.prefill / l.prefill)} | ${fmt(l.decode)} | ${fmt(s.decode)} | ${fmt(s.decode / l.decode)} | ${(s.rss! / 2 ** 20).toFixed(0)} MiB`);
    }
    const med = (xs: number[]) => { const v = [...xs].sort((a, b) => a - b), h = v.length >> 1; return v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2; };
    const lp = med(L.map((x) => x.prefill)), sp = med(S.map((x) => x.prefill)), ld = med(L.map((x) => x.decode)), sd = med(S.map((x) => x.decode));
    console.log(`median | ${fmt(lp)} | ${fmt(sp)} | ${fmt(sp / lp)} | ${fmt(ld)} | ${fmt(sd)} | ${fmt(sd / ld)} | ${(Math.max(...S.map((x) => x.rss!)) / 2 ** 20).toFixed(0)} MiB`);

    const n = o.continuationTokens;
    if (n < 1) continue; // --continuation-tokens 0: speed only
    const mine = await shoalGreedy(file, prompts, n, o.threads);
    for (let i = 0; i < prompts.length; i++) {
      const theirs = await llamaGreedy(llama, file, prompts[i], n, o.threads);
      let j = 0;
      while (j < n && theirs[j] === mine[i][j]) j++;
      if (j === n) { console.log(`prompt ${i + 1}: ${n}/${n} greedy tokens agree`); continue; }
      const logits = await llamaLogits(llama, file, [...prompts[i], ...theirs.slice(0, j)], o.threads);
      const a = logits.get(theirs[j]) ?? NaN, b = logits.get(mine[i][j]) ?? NaN;
      console.log(`prompt ${i + 1}: first ${j}/${n} agree; at step ${j + 1} llama.cpp picks ${theirs[j]}, shoal ${mine[i][j]}; llama.cpp's logit margin ${fmt(a - b)} (of logits ~${fmt(a)})`);
    }
  }
  await llama.dispose();
}

await main();
