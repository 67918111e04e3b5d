/**
 * Batch-1 decode on a GPU: shoal's WebGPU backend against llama.cpp's Vulkan build (node-llama-cpp)
 * on the same synthetic GGUF, and both against the adapter's memory-bandwidth roofline.
 *
 *   node dist/bench/webgpu-decode.js [--arch llama|deepseek2] [--rounds 3] [--prompt-tokens 16]
 *        [--gen-tokens 128] [--bandwidth-gbs 3350] [--with-cpu] [--tiny] [--dir /tmp/shoal-webgpu-bench]
 *
 * 1. Writes (once; kept in --dir) a synthetic GGUF, random q8_0 blocks written directly (random
 *    int8 codes, one f16 scale per block), tensor by tensor, with a byte-level BPE tokenizer
 *    embedded (256 byte tokens, a few merges, [PADn] fillers, Llama 3's special tokens last):
 *    - llama: Llama-3.2-1B's shapes (hidden 2048, 16 layers, 32 heads, 8 KV heads of 64, FFN 8192,
 *      vocab 128256, tied embeddings): 1.24 B parameters, 1255 MiB;
 *    - deepseek2: DeepSeek-V2-Lite's layers (MLA rank 512, 64 experts of 1408, top-6, 2 shared,
 *      vocab 102400), 6 of them (1 dense): 3.4 B parameters, 0.75 B read per token, 3474 MiB.
 * 2. Measures the adapter's memory bandwidth with WebGPU: a kernel summing a large buffer, and
 *    copyBufferToBuffer (best of several runs each).
 * 3. Alternates, --rounds times, each round of each engine a fresh process: shoal (--device webgpu) and llama.cpp
 *    (Vulkan, every layer offloaded; and its CPU build with --with-cpu): greedy decode tokens/s
 *    after a --prompt-tokens prompt.
 * 4. Roofline: the bytes one decode step must read (every weight byte of the file but the
 *    embedding rows not looked up, the tied embedding counted once as the LM head; routed experts
 *    at top-k / n-experts; plus the f16 KV cache at the mean decode context) into the bandwidth.
 *    Prints each round and a markdown table for docs/benchmarks.md.
 */
import { Command } from 'commander';
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GGML, ggmlTensorBytes, kv, openGguf, writeGguf, type GgufMetadata, type GgufTensorToWrite } from '../src/formats/gguf.js';
import { TOKEN_TYPE } from '../src/tokenizer/gguf-tokenizer.js';
import { archMetadata } from '../src/models/gguf-deepseek.js';
import { parseDeepseekConfig } from '../src/models/config.js';
import { listAdapters, requestAdapter, summarizeAdapter, type AdapterSummary } from '../src/backends/webgpu/dawn.js';
import { formatAdapter } from '../src/cli/devices.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;
const here = dirname(fileURLToPath(import.meta.url));
/** The folder holding dist/ (the repository, or a bundle made by scripts/gpu-bundle.sh). */
const root = resolve(here, '../..');

// ---- the synthetic model ------------------------------------------------------------------------

export interface DenseShape {
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
}

/** Llama-3.2-1B (tied embeddings). */
export const LLAMA_32_1B: DenseShape = { layers: 16, hidden: 2048, heads: 32, kvHeads: 8, headDim: 64, ffn: 8192, vocab: 128256 };
/** Small enough for a software adapter and a test. */
export const TINY: DenseShape = { layers: 2, hidden: 256, heads: 4, kvHeads: 2, headDim: 64, ffn: 512, vocab: 1024 };

/** Parameters of a tied-embedding llama model of this shape. */
export function denseParameters(s: DenseShape): number {
  const attn = s.hidden * s.heads * s.headDim * 2 + s.hidden * s.kvHeads * s.headDim * 2;
  return s.vocab * s.hidden + s.layers * (attn + 3 * s.hidden * s.ffn + 2 * s.hidden) + s.hidden;
}

const SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>'];
/** Byte pairs merged by the tokenizer (in GPT-2's byte alphabet, 'Ġ' is the space). */
const MERGES = ['Ġ t', 'h e', 'i n', 'e r', 'a n', 'Ġ a', 'r e', 'o n', 'Ġt he'];

/** GPT-2's byte -> printable character map (byte-level BPE's alphabet). */
function byteAlphabet(): string[] {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let extra = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
}

/** A byte-level BPE vocabulary of exactly `vocab` tokens: bytes, merges, [PADn] fillers, specials last. */
export function syntheticVocab(vocab: number): { tokens: string[]; types: number[]; merges: string[] } {
  const tokens = byteAlphabet();
  for (const m of MERGES) tokens.push(m.replace(' ', ''));
  const fixed = tokens.length + SPECIALS.length;
  if (vocab < fixed) throw new Error(`--vocab must be at least ${fixed}`);
  const types = tokens.map(() => TOKEN_TYPE.NORMAL as number);
  while (tokens.length < vocab - SPECIALS.length) { types.push(TOKEN_TYPE.UNUSED); tokens.push(`[PAD${tokens.length}]`); }
  for (const s of SPECIALS) { tokens.push(s); types.push(TOKEN_TYPE.CONTROL); }
  return { tokens, types, merges: MERGES };
}

/** The GGUF tokenizer metadata of syntheticVocab(vocab) (llama.cpp's Llama 3 pre-tokenizer; BOS and EOS among the specials). */
function syntheticTokenizer(vocab: number): GgufMetadata {
  const { tokens, types, merges } = syntheticVocab(vocab);
  return [
    ['tokenizer.ggml.model', kv.str('gpt2')],
    ['tokenizer.ggml.pre', kv.str('llama-bpe')],
    ['tokenizer.ggml.tokens', kv.strs(tokens)],
    ['tokenizer.ggml.token_type', kv.i32s(types)],
    ['tokenizer.ggml.merges', kv.strs(merges)],
    ['tokenizer.ggml.bos_token_id', kv.u32(vocab - 3)],
    ['tokenizer.ggml.eos_token_id', kv.u32(vocab - 2)],
  ];
}

/**
 * Random q8_0 rows: uniform int8 codes and one f16 scale per 32 values, so that a row times a
 * unit-variance vector is about unit variance (scale 1.7 / sqrt(cols) / 128).
 */
function randomQ8_0(name: string, rows: number, cols: number): GgufTensorToWrite {
  const blockBytes = 34, blocks = (rows * cols) / 32;
  const scale = f16Bits(1.7 / Math.sqrt(cols) / 128);
  return {
    name, type: GGML.Q8_0, ne: [cols, rows],
    write: (emit) => {
      const chunkBlocks = 1 << 16; // 2.2 MB per piece
      const buf = Buffer.alloc(chunkBlocks * blockBytes);
      for (let done = 0; done < blocks; done += chunkBlocks) {
        const n = Math.min(chunkBlocks, blocks - done);
        const piece = buf.subarray(0, n * blockBytes);
        randomFillSync(piece);
        for (let b = 0; b < n; b++) piece.writeUInt16LE(scale, b * blockBytes);
        emit(piece);
      }
    },
  };
}

function ones(name: string, n: number): GgufTensorToWrite {
  return { name, type: GGML.F32, ne: [n], write: (emit) => emit(new Uint8Array(new Float32Array(n).fill(1).buffer)) };
}

/** IEEE half bits of a positive normal value. */
function f16Bits(v: number): number {
  const e = Math.floor(Math.log2(v));
  return ((e + 15) << 10) | Math.round((v / 2 ** e - 1) * 1024);
}

/** Writes the llama GGUF (tied embeddings, q8_0 matrices) unless `path` exists; streams tensor by tensor. */
export function writeSyntheticLlama(path: string, s: DenseShape, onTensor?: (done: number, total: number) => void): void {
  if (existsSync(path)) return;
  if (s.heads % s.kvHeads) throw new Error('heads must be a multiple of kv heads');
  for (const [k, v] of Object.entries({ hidden: s.hidden, ffn: s.ffn, 'heads x head dim': s.heads * s.headDim })) {
    if (v % 32) throw new Error(`${k} (${v}) must be a multiple of 32 (q8_0 blocks)`);
  }
  const a = 'llama';
  const md: GgufMetadata = [
    ['general.architecture', kv.str(a)],
    ['general.name', kv.str(`synthetic llama ${s.layers}x${s.hidden}`)],
    ['general.file_type', kv.u32(7)], // MOSTLY_Q8_0
    [`${a}.vocab_size`, kv.u32(s.vocab)],
    [`${a}.block_count`, kv.u32(s.layers)],
    [`${a}.context_length`, kv.u32(8192)],
    [`${a}.embedding_length`, kv.u32(s.hidden)],
    [`${a}.feed_forward_length`, kv.u32(s.ffn)],
    [`${a}.attention.head_count`, kv.u32(s.heads)],
    [`${a}.attention.head_count_kv`, kv.u32(s.kvHeads)],
    [`${a}.attention.layer_norm_rms_epsilon`, kv.f32(1e-5)],
    [`${a}.rope.freq_base`, kv.f32(500000)],
    [`${a}.rope.dimension_count`, kv.u32(s.headDim)],
    ...syntheticTokenizer(s.vocab),
  ];
  const q = s.heads * s.headDim, k = s.kvHeads * s.headDim;
  const ts: GgufTensorToWrite[] = [randomQ8_0('token_embd.weight', s.vocab, s.hidden)];
  for (let i = 0; i < s.layers; i++) {
    const p = `blk.${i}`;
    ts.push(
      ones(`${p}.attn_norm.weight`, s.hidden),
      randomQ8_0(`${p}.attn_q.weight`, q, s.hidden),
      randomQ8_0(`${p}.attn_k.weight`, k, s.hidden),
      randomQ8_0(`${p}.attn_v.weight`, k, s.hidden),
      randomQ8_0(`${p}.attn_output.weight`, s.hidden, q),
      ones(`${p}.ffn_norm.weight`, s.hidden),
      randomQ8_0(`${p}.ffn_gate.weight`, s.ffn, s.hidden),
      randomQ8_0(`${p}.ffn_up.weight`, s.ffn, s.hidden),
      randomQ8_0(`${p}.ffn_down.weight`, s.hidden, s.ffn),
    );
  }
  ts.push(ones('output_norm.weight', s.hidden));
  writeWhole(path, md, ts, onTensor);
}

/** Writes the GGUF under a temporary name and renames it, so a cached model is never half written. */
function writeWhole(path: string, md: Parameters<typeof writeGguf>[1], ts: Parameters<typeof writeGguf>[2], onTensor: Parameters<typeof writeGguf>[3]): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.partial`;
  writeGguf(tmp, md, ts, onTensor);
  renameSync(tmp, path);
}

/** A DeepSeek-V2-style MoE (MLA attention, no q LoRA, the first layer dense). */
export interface MoeShape {
  layers: number;
  hidden: number;
  heads: number;
  kvLoraRank: number;
  ropeDim: number;
  nopeDim: number;
  vDim: number;
  experts: number;
  expertsUsed: number;
  sharedExperts: number;
  expertFfn: number;
  denseFfn: number;
  vocab: number;
}

/**
 * DeepSeek-V2-Lite's layer shapes (bench/vs-llama-cpp.ts) with 6 layers, 1 dense and 5 MoE:
 * 3.4 B parameters, of which a token reads 0.75 B (6 of 64 experts + 2 shared).
 */
export const DEEPSEEK_V2_LITE_6L: MoeShape = {
  layers: 6, hidden: 2048, heads: 16, kvLoraRank: 512, ropeDim: 64, nopeDim: 128, vDim: 128,
  experts: 64, expertsUsed: 6, sharedExperts: 2, expertFfn: 1408, denseFfn: 10944, vocab: 102400,
};
export const TINY_MOE: MoeShape = {
  layers: 2, hidden: 256, heads: 4, kvLoraRank: 64, ropeDim: 32, nopeDim: 32, vDim: 32,
  experts: 8, expertsUsed: 2, sharedExperts: 1, expertFfn: 128, denseFfn: 512, vocab: 1024,
};

/** Random f32 values uniform in ±a (the router: llama.cpp's converter keeps it f32). */
function randomF32(name: string, ne: number[], a: number): GgufTensorToWrite {
  const n = ne.reduce((x, y) => x * y, 1);
  return {
    name, type: GGML.F32, ne,
    write: (emit) => {
      const u = new Uint32Array(n);
      randomFillSync(u);
      emit(new Uint8Array(Float32Array.from(u, (v) => (v / 2 ** 32 * 2 - 1) * a).buffer));
    },
  };
}

/** Writes the deepseek2 GGUF (q8_0 matrices, untied head) unless `path` exists; streams tensor by tensor. */
export function writeSyntheticDeepseek2(path: string, s: MoeShape, onTensor?: (done: number, total: number) => void): void {
  if (existsSync(path)) return;
  const H = s.heads, d = s.hidden, R = s.kvLoraRank;
  const cfg = parseDeepseekConfig({
    architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2',
    vocab_size: s.vocab, hidden_size: d, intermediate_size: s.denseFfn, moe_intermediate_size: s.expertFfn,
    num_hidden_layers: s.layers, num_attention_heads: H, num_key_value_heads: H,
    n_shared_experts: s.sharedExperts, n_routed_experts: s.experts, ep_size: 1, routed_scaling_factor: 1.0,
    kv_lora_rank: R, q_lora_rank: null, qk_rope_head_dim: s.ropeDim, v_head_dim: s.vDim, qk_nope_head_dim: s.nopeDim,
    topk_method: 'greedy', n_group: 1, topk_group: 1, num_experts_per_tok: s.expertsUsed, moe_layer_freq: 1,
    first_k_dense_replace: 1, norm_topk_prob: false, scoring_func: 'softmax',
    hidden_act: 'silu', max_position_embeddings: 8192, rms_norm_eps: 1e-6,
    bos_token_id: s.vocab - 3, eos_token_id: s.vocab - 2, tie_word_embeddings: false, rope_theta: 10000,
  }, 'synthetic config');
  const md: GgufMetadata = [
    ...archMetadata(cfg, `synthetic deepseek2 ${s.layers}x${d}`, 'q8_0'),
    ...syntheticTokenizer(s.vocab),
  ];
  const experts = (name: string, rows: number, cols: number): GgufTensorToWrite => {
    const one = randomQ8_0(name, rows * s.experts, cols);
    return { ...one, ne: [cols, rows, s.experts] };
  };
  const ts: GgufTensorToWrite[] = [randomQ8_0('token_embd.weight', s.vocab, d)];
  for (let i = 0; i < s.layers; i++) {
    const p = `blk.${i}`;
    ts.push(
      ones(`${p}.attn_norm.weight`, d),
      randomQ8_0(`${p}.attn_q.weight`, H * (s.nopeDim + s.ropeDim), d),
      randomQ8_0(`${p}.attn_kv_a_mqa.weight`, R + s.ropeDim, d),
      ones(`${p}.attn_kv_a_norm.weight`, R),
      // kv_b split per head as llama.cpp's converter writes it: k_b [H, R, nope], v_b [H, v, R].
      { ...randomQ8_0(`${p}.attn_k_b.weight`, H * R, s.nopeDim), ne: [s.nopeDim, R, H] },
      { ...randomQ8_0(`${p}.attn_v_b.weight`, H * s.vDim, R), ne: [R, s.vDim, H] },
      randomQ8_0(`${p}.attn_output.weight`, d, H * s.vDim),
      ones(`${p}.ffn_norm.weight`, d),
    );
    if (i === 0) {
      ts.push(randomQ8_0(`${p}.ffn_gate.weight`, s.denseFfn, d), randomQ8_0(`${p}.ffn_up.weight`, s.denseFfn, d), randomQ8_0(`${p}.ffn_down.weight`, d, s.denseFfn));
      continue;
    }
    const shared = s.expertFfn * s.sharedExperts;
    ts.push(
      randomF32(`${p}.ffn_gate_inp.weight`, [d, s.experts], 1.7 / Math.sqrt(d)),
      experts(`${p}.ffn_gate_exps.weight`, s.expertFfn, d),
      experts(`${p}.ffn_up_exps.weight`, s.expertFfn, d),
      experts(`${p}.ffn_down_exps.weight`, d, s.expertFfn),
    );
    if (shared) ts.push(randomQ8_0(`${p}.ffn_gate_shexp.weight`, shared, d), randomQ8_0(`${p}.ffn_up_shexp.weight`, shared, d), randomQ8_0(`${p}.ffn_down_shexp.weight`, d, shared));
  }
  ts.push(ones('output_norm.weight', d), randomQ8_0('output.weight', s.vocab, d));
  writeWhole(path, md, ts, onTensor);
}

// ---- the roofline -------------------------------------------------------------------------------

export interface StepBytes {
  /** Weight bytes one decode step reads. */
  weights: number;
  /** KV cache bytes (f16 K and V) one step reads at the given context. */
  kvCache: number;
  /** Parameters in the file. */
  parameters: number;
}

/**
 * What one batch-1 decode step of the GGUF at `path` reads: every tensor, but of the token
 * embedding only one row unless it doubles as the LM head (no output.weight), and of routed
 * expert tensors (*_exps) the top-k / n-experts share; plus the KV cache at `context` positions.
 */
export function stepBytes(path: string, context: number): StepBytes {
  const f = openGguf(path);
  try {
    const arch = f.string('general.architecture', true);
    const num = (k: string) => f.number(`${arch}.${k}`, false);
    const used = num('expert_used_count'), experts = num('expert_count');
    const tied = !f.tensors.has('output.weight');
    let weights = 0, parameters = 0;
    for (const [name, t] of f.tensors) {
      const bytes = ggmlTensorBytes(t.type, t.ne);
      if (bytes === null) throw new Error(`${name}: unknown ggml type ${t.type}`);
      parameters += t.ne.reduce((x, y) => x * y, 1);
      if (name === 'token_embd.weight' && !tied) weights += bytes / t.ne[1];
      else if (/_exps\.weight$/.test(name) && used && experts) weights += (bytes * used) / experts;
      else weights += bytes;
    }
    const layers = num('block_count') ?? 0;
    // MLA (deepseek2) caches the compressed latent and the RoPE key; others K and V per KV head.
    const latent = num('attention.kv_lora_rank');
    const perToken = latent
      ? latent + (num('rope.dimension_count') ?? 0)
      : 2 * (num('attention.head_count_kv') ?? 0) * (num('attention.key_length') ?? (num('embedding_length') ?? 0) / (num('attention.head_count') ?? 1));
    return { weights, kvCache: context * layers * perToken * 2, parameters };
  } finally {
    f.close();
  }
}

// ---- memory bandwidth through WebGPU ------------------------------------------------------------

export interface Bandwidth {
  adapter: AdapterSummary;
  bytes: number;
  /** A kernel reading (summing) the buffer, GB/s (1e9 bytes). */
  readGBs: number;
  /** copyBufferToBuffer, bytes read + written per second, GB/s. */
  copyGBs: number;
}

const READ_KERNEL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * 256u;
  let n = arrayLength(&src);
  var acc = vec4<u32>(0u);
  for (var i = gid.x; i < n; i += threads) { acc += src[i]; }
  dst[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}`;

/**
 * Best-of-`trials` bandwidth on the default adapter for a buffer of up to `bytes` (capped by
 * the adapter's binding and buffer limits). Each trial runs enough passes to last ~0.2 s.
 */
export async function measureBandwidth(bytes: number, trials = 5): Promise<Bandwidth> {
  const h = await requestAdapter({ powerPreference: 'high-performance' });
  if (h.why !== undefined) throw new Error(h.why);
  const { adapter } = h;
  const lim = adapter.limits;
  const size = Math.floor(Math.min(bytes, lim.maxStorageBufferBindingSize, lim.maxBufferSize) / 4096) * 4096;
  const device = await adapter.requestDevice({
    requiredLimits: { maxStorageBufferBindingSize: lim.maxStorageBufferBindingSize, maxBufferSize: lim.maxBufferSize },
  });
  const COPY_SRC = 4, COPY_DST = 8, STORAGE = 128; // GPUBufferUsage (the globals are not installed in Node)
  const src = device.createBuffer({ size, usage: STORAGE | COPY_SRC | COPY_DST });
  const copyDst = device.createBuffer({ size, usage: COPY_DST });
  const workgroups = Math.min(lim.maxComputeWorkgroupsPerDimension, 8192);
  const out = device.createBuffer({ size: workgroups * 256 * 4, usage: STORAGE });
  try {
    const chunk = Buffer.alloc(Math.min(size, 1 << 24));
    for (let off = 0; off < size; off += chunk.length) {
      const n = Math.min(chunk.length, size - off);
      randomFillSync(chunk, 0, n);
      device.queue.writeBuffer(src, off, chunk, 0, n);
    }
    await device.queue.onSubmittedWorkDone();
    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: READ_KERNEL }), entryPoint: 'main' } });
    const group = device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: src } }, { binding: 1, resource: { buffer: out } }] });
    const read = (enc: GPUCommandEncoder) => {
      const pass = enc.beginComputePass();
      pass.setPipeline(pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(workgroups);
      pass.end();
    };
    const copy = (enc: GPUCommandEncoder) => enc.copyBufferToBuffer(src, 0, copyDst, 0, size);
    /** Seconds per pass, best of `trials`. */
    const time = async (record: (e: GPUCommandEncoder) => void): Promise<number> => {
      const run = async (passes: number) => {
        const enc = device.createCommandEncoder();
        for (let i = 0; i < passes; i++) record(enc);
        const t0 = performance.now();
        device.queue.submit([enc.finish()]);
        await device.queue.onSubmittedWorkDone();
        return (performance.now() - t0) / 1000;
      };
      const once = await run(1); // warm-up, and how many passes make ~0.2 s
      const passes = Math.max(1, Math.min(200, Math.ceil(0.2 / once)));
      let best = Infinity;
      for (let t = 0; t < trials; t++) best = Math.min(best, (await run(passes)) / passes);
      return best;
    };
    const readS = await time(read);
    const copyS = await time(copy);
    return { adapter: summarizeAdapter(adapter), bytes: size, readGBs: size / readS / 1e9, copyGBs: (2 * size) / copyS / 1e9 };
  } finally {
    src.destroy(); copyDst.destroy(); out.destroy();
    device.destroy();
  }
}

// ---- the engines --------------------------------------------------------------------------------

export interface DecodeFigures {
  /** Decode tokens/s after the first generated token. */
  decode: number;
  /** What ran it (shoal's backend name, llama.cpp's GPU device names). */
  device: string;
}

/**
 * Runs an ES module script in a fresh Node process and parses the JSON it prints. Each engine's
 * round runs alone in its process and loads the model afresh: no Vulkan instance, GPU memory or
 * threads shared between the engines or carried over between rounds.
 */
function inChild<T>(what: string, script: string): T {
  // A file, not `node -e`: node-llama-cpp tests its binary in a process started with our execArgv.
  const dir = mkdtempSync(join(tmpdir(), 'shoal-bench-'));
  const path = join(dir, 'round.mjs');
  writeFileSync(path, `${script}\nprocess.exit(0);\n`);
  try {
    const out = execFileSync(process.execPath, [path], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 24 });
    return JSON.parse(out) as T;
  } catch (e) {
    // Dawn's driver warnings and the load progress go to stderr: shown only when the round fails.
    throw new Error(`${what} failed: ${String((e as { stderr?: string }).stderr || e).trim().split('\n').slice(-5).join('\n')}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** shoal on --device webgpu in a fresh process: the first token comes with the prefill, decode is the rest. */
export function shoalRound(file: string, promptTokens: number, genTokens: number): DecodeFigures {
  const r = inChild<{ decodeTokPerS: number; device: string }>('shoal round', `import { runBench } from ${JSON.stringify(join(root, 'dist/src/cli/bench.js'))};
const r = await runBench({ model: ${JSON.stringify(file)}, promptTokens: ${promptTokens}, genTokens: ${genTokens}, device: 'webgpu', seed: 1 });
process.stdout.write(JSON.stringify(r));`);
  return { decode: r.decodeTokPerS, device: r.device };
}

/**
 * llama.cpp in a fresh process on runBench's prompt (`vocab` bounds its ids): its `gpu` build
 * with every layer offloaded, or its CPU build (false); the reason when that build cannot run.
 */
export function llamaCppRound(file: string, vocab: number, promptTokens: number, genTokens: number, gpu: string | false, threads: number): DecodeFigures | { why: string } {
  return inChild(`llama.cpp ${gpu || 'cpu'} round`, `import { loadLlamaCpp, llamaRound } from ${JSON.stringify(fileURLToPath(import.meta.url))};
import { benchPrompt } from ${JSON.stringify(join(root, 'dist/src/cli/bench.js'))};
const l = await loadLlamaCpp(${JSON.stringify(gpu)});
if ('why' in l) process.stdout.write(JSON.stringify(l));
else {
  const prompt = benchPrompt(${promptTokens}, Math.min(16, ${vocab} - 1), ${vocab}, 1);
  process.stdout.write(JSON.stringify(await llamaRound(l.llama, ${JSON.stringify(file)}, prompt, ${genTokens}, ${threads})));
  await l.llama.dispose();
}`);
}

/** node-llama-cpp with the given GPU ('vulkan', 'cuda') or none (false), or the reason it cannot load. */
export async function loadLlamaCpp(gpu: string | false): Promise<{ llama: Any } | { why: string }> {
  let lib: Any;
  try {
    lib = await import('node-llama-cpp' as string);
  } catch (e) {
    return { why: `node-llama-cpp is not installed (${(e as Error).message.split('\n')[0]})` };
  }
  try {
    const llama = await lib.getLlama({ gpu, build: 'never', logLevel: 'error' });
    if (gpu && llama.gpu !== gpu) { await llama.dispose(); return { why: `node-llama-cpp gave gpu=${llama.gpu} for ${gpu}` }; }
    if (gpu && !(await llama.getGpuDeviceNames()).length) {
      await llama.dispose();
      const hint = gpu === 'vulkan' ? ' (llama.cpp skips CPU Vulkan devices such as lavapipe unless GGML_VK_VISIBLE_DEVICES names them, e.g. =0)' : '';
      return { why: `node-llama-cpp's ${gpu} build sees no device${hint}` };
    }
    return { llama };
  } catch (e) {
    return { why: `node-llama-cpp ${gpu || 'cpu'}: ${(e as Error).message.split('\n')[0]}` };
  }
}

/**
 * llama.cpp: prefill the prompt but its last token, then decode greedily; decode tokens/s over
 * the tokens after the first (as shoal's figure). `gpuLayers` 'max' offloads every layer.
 */
export async function llamaRound(llama: Any, file: string, prompt: number[], genTokens: number, threads: number): Promise<DecodeFigures> {
  const model = await llama.loadModel({ modelPath: file, gpuLayers: llama.gpu ? 'max' : 0 });
  const ctx = await model.createContext({ contextSize: prompt.length + genTokens + 16, threads, batchSize: Math.max(prompt.length, 32) });
  try {
    const seq = ctx.getSequence();
    await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, -1));
    let n = 0, first = 0;
    for await (const _t of seq.evaluate(prompt.slice(-1), { temperature: 0 })) {
      if (++n === 1) first = performance.now();
      if (n === genTokens) break;
    }
    const seconds = (performance.now() - first) / 1000;
    const names: string[] = llama.gpu ? await llama.getGpuDeviceNames() : [];
    const where = llama.gpu ? `${llama.gpu}: ${names.join(', ')}, ${model.gpuLayers} layers offloaded` : `cpu, ${threads} threads`;
    return { decode: (genTokens - 1) / seconds, device: where };
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

// ---- the report ---------------------------------------------------------------------------------

export const median = (xs: number[]): number => {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b), h = v.length >> 1;
  return !v.length ? NaN : v.length % 2 ? v[h] : (v[h - 1] + v[h]) / 2;
};
const fmt = (v: number, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : '–');
const pct = (v: number) => (Number.isFinite(v) ? `${(v * 100).toFixed(0)}%` : '–');

interface Options {
  dir: string; rounds: number; promptTokens: number; genTokens: number; threads: number;
  arch: 'llama' | 'deepseek2'; tiny: boolean; layers?: number; hidden?: number; heads?: number; kvHeads?: number; headDim?: number; ffn?: number; vocab?: number; experts?: number; expertsUsed?: number;
  bandwidthGbs?: number; bandwidthMib: number; withCpu: boolean; llamaGpu: string; llamaCpp: boolean;
}

function denseShape(o: Options): DenseShape {
  const b = o.tiny ? TINY : LLAMA_32_1B;
  return {
    layers: o.layers ?? b.layers, hidden: o.hidden ?? b.hidden, heads: o.heads ?? b.heads, kvHeads: o.kvHeads ?? b.kvHeads,
    headDim: o.headDim ?? b.headDim, ffn: o.ffn ?? b.ffn, vocab: o.vocab ?? b.vocab,
  };
}

function moeShape(o: Options): MoeShape {
  const b = o.tiny ? TINY_MOE : DEEPSEEK_V2_LITE_6L;
  return {
    ...b, layers: o.layers ?? b.layers, hidden: o.hidden ?? b.hidden, heads: o.heads ?? b.heads, vocab: o.vocab ?? b.vocab,
    experts: o.experts ?? b.experts, expertsUsed: o.expertsUsed ?? b.expertsUsed,
  };
}

/** The cached file for the options' architecture and shape, and how the report names it. */
function syntheticModel(o: Options): { file: string; label: string; vocab: number } {
  if (o.arch === 'deepseek2') {
    const s = moeShape(o);
    return {
      file: join(o.dir, `deepseek2-${s.layers}x${s.hidden}-h${s.heads}-r${s.kvLoraRank}-e${s.experts}k${s.expertsUsed}s${s.sharedExperts}-f${s.expertFfn}-v${s.vocab}-q8_0.gguf`),
      label: `synthetic deepseek2 ${s.layers} layers x ${s.hidden} (1 dense; MoE ${s.experts} experts of ${s.expertFfn}, top-${s.expertsUsed}, ${s.sharedExperts} shared; MLA rank ${s.kvLoraRank})`,
      vocab: s.vocab,
    };
  }
  if (o.arch !== 'llama') throw new Error(`--arch ${o.arch}: llama or deepseek2`);
  const s = denseShape(o);
  return {
    file: join(o.dir, `llama-${s.layers}x${s.hidden}-h${s.heads}-kv${s.kvHeads}-d${s.headDim}-f${s.ffn}-v${s.vocab}-q8_0.gguf`),
    label: `synthetic llama ${s.layers} layers x ${s.hidden} (${s.heads} heads, ${s.kvHeads} KV heads of ${s.headDim}, FFN ${s.ffn}, vocab ${s.vocab}, tied embeddings)`,
    vocab: s.vocab,
  };
}

async function main(): Promise<void> {
  const int = (v: string) => parseInt(v, 10);
  const o = new Command('webgpu-decode')
    .option('--dir <path>', 'work folder (models are kept there and reused)', '/tmp/shoal-webgpu-bench')
    .option('--rounds <n>', 'alternating rounds per engine', int, 3)
    .option('--prompt-tokens <n>', 'prompt length before decoding', int, 16)
    .option('--gen-tokens <n>', 'tokens to decode', int, 128)
    .option('--threads <n>', 'llama.cpp CPU threads', int, cpus().length)
    .option('--arch <name>', 'llama (Llama-3.2-1B shapes) | deepseek2 (DeepSeek-V2-Lite layers, 6 of them)', 'llama')
    .option('--tiny', 'a 2-layer model of hidden 256 (software adapters, tests)', false)
    .option('--layers <n>', 'override the layer count', int)
    .option('--hidden <n>', 'override the hidden size', int)
    .option('--heads <n>', 'override the attention heads', int)
    .option('--kv-heads <n>', 'llama: override the KV heads', int)
    .option('--head-dim <n>', 'llama: override the head dimension', int)
    .option('--ffn <n>', 'llama: override the FFN width', int)
    .option('--experts <n>', 'deepseek2: override the routed experts', int)
    .option('--experts-used <n>', 'deepseek2: override the experts per token', int)
    .option('--vocab <n>', 'override the vocabulary size', int)
    .option('--bandwidth-gbs <x>', "the card's spec-sheet bandwidth, GB/s (H100 SXM: 3350, H100 PCIe: 2000, H200: 4800)", parseFloat)
    .option('--bandwidth-mib <n>', 'buffer size for the measured bandwidth, MiB', int, 1024)
    .option('--with-cpu', 'also llama.cpp on the CPU', false)
    .option('--llama-gpu <name>', "node-llama-cpp's GPU build: vulkan | cuda", 'vulkan')
    .option('--no-llama-cpp', 'shoal only')
    .parse().opts() as Options;

  const { file, label, vocab } = syntheticModel(o);
  if (!existsSync(file)) {
    const t0 = performance.now();
    console.log(`# writing ${file}`);
    if (o.arch === 'deepseek2') writeSyntheticDeepseek2(file, moeShape(o)); else writeSyntheticLlama(file, denseShape(o));
    console.log(`# wrote ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }

  console.log('\n## adapters');
  const { adapters, why } = await listAdapters();
  if (!adapters.length) throw new Error(`no WebGPU adapter: ${why}`);
  for (const a of adapters) console.log(formatAdapter(a));

  const bw = await measureBandwidth(o.bandwidthMib * 2 ** 20);
  const measured = Math.max(bw.readGBs, bw.copyGBs);
  console.log(`\n## bandwidth on ${bw.adapter.description || bw.adapter.vendor} (${(bw.bytes / 2 ** 20).toFixed(0)} MiB buffer, best of 5)`);
  console.log(`read kernel ${fmt(bw.readGBs, 1)} GB/s, copyBufferToBuffer ${fmt(bw.copyGBs, 1)} GB/s (read + write)${o.bandwidthGbs ? `, spec sheet ${o.bandwidthGbs} GB/s` : ''}`);

  const context = o.promptTokens + o.genTokens / 2;
  const step = stepBytes(file, context);
  const perToken = step.weights + step.kvCache;
  const roofMeasured = (measured * 1e9) / perToken;
  const roofSpec = o.bandwidthGbs ? (o.bandwidthGbs * 1e9) / perToken : NaN;
  console.log(`\n## model: ${(step.parameters / 1e9).toFixed(3)} B parameters, ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB; a decode step reads ${(step.weights / 2 ** 20).toFixed(1)} MiB of weights + ${(step.kvCache / 2 ** 20).toFixed(2)} MiB of KV cache (f16, context ${context})`);
  console.log(`roofline: ${fmt(roofMeasured, 1)} tok/s at the measured ${fmt(measured, 1)} GB/s${o.bandwidthGbs ? `, ${fmt(roofSpec, 1)} tok/s at the spec ${o.bandwidthGbs} GB/s` : ''}`);

  // llama.cpp builds to run: the GPU one, and the CPU one with --with-cpu or when the GPU one cannot run.
  const llamaBuilds = new Map<string | false, boolean>();
  if (o.llamaCpp) { llamaBuilds.set(o.llamaGpu, true); if (o.withCpu) llamaBuilds.set(false, true); }
  const llama = (gpu: string | false): DecodeFigures | null => {
    if (!llamaBuilds.get(gpu)) return null;
    const r = llamaCppRound(file, vocab, o.promptTokens, o.genTokens, gpu, o.threads);
    if (!('why' in r)) return r;
    console.log(`# llama.cpp ${gpu || 'cpu'}: unavailable (${r.why})`);
    llamaBuilds.set(gpu, false);
    if (gpu && !llamaBuilds.has(false)) { console.log('# falling back to llama.cpp on the CPU'); llamaBuilds.set(false, true); }
    return null;
  };

  console.log(`\n## decode, batch 1, prompt ${o.promptTokens}, ${o.genTokens} greedy tokens, each round a fresh process per engine`);
  console.log('round | shoal webgpu tok/s | llama.cpp gpu tok/s | shoal / llama.cpp | shoal / roofline (measured) | shoal / roofline (spec) | llama.cpp cpu tok/s');
  const S: number[] = [], G: number[] = [], C: number[] = [];
  const devices = new Set<string>();
  for (let r = 0; r < o.rounds; r++) {
    const s = shoalRound(file, o.promptTokens, o.genTokens);
    devices.add(`shoal: ${s.device}`);
    const g = o.llamaCpp ? llama(o.llamaGpu) : null;
    if (g) devices.add(`llama.cpp ${g.device}`);
    const c = llama(false);
    if (c) devices.add(`llama.cpp ${c.device}`);
    S.push(s.decode); G.push(g?.decode ?? NaN); C.push(c?.decode ?? NaN);
    console.log(`${r + 1} | ${fmt(s.decode)} | ${fmt(G[r])} | ${fmt(s.decode / G[r])} | ${pct(s.decode / roofMeasured)} | ${pct(s.decode / roofSpec)} | ${fmt(C[r])}`);
  }
  const s = median(S), g = median(G), c = median(C);
  for (const d of devices) console.log(`# ${d}`);

  const a = bw.adapter;
  console.log(`\n## for docs/benchmarks.md\n`);
  console.log(`Batch-1 greedy decode on ${a.description || a.device || '?'} (WebGPU: vendor ${a.vendor || '?'}, architecture ${a.architecture || '?'}, `
    + `shader-f16 ${a.features.includes('shader-f16') ? 'yes' : 'no'}, subgroups ${a.features.includes('subgroups') ? 'yes' : 'no'}), `
    + `${label} (${(step.parameters / 1e9).toFixed(2)} B parameters, q8_0, ${(statSync(file).size / 2 ** 20).toFixed(0)} MiB), `
    + `prompt ${o.promptTokens}, ${o.genTokens} tokens, median of ${o.rounds} alternating rounds. A step reads ${(perToken / 2 ** 20).toFixed(1)} MiB; `
    + `bandwidth measured with WebGPU ${fmt(measured, 0)} GB/s${o.bandwidthGbs ? `, spec sheet ${o.bandwidthGbs} GB/s` : ''}.\n`);
  console.log('| engine | decode tok/s | vs llama.cpp GPU | of roofline (measured bandwidth) | of roofline (spec sheet) |');
  console.log('|---|---:|---:|---:|---:|');
  console.log(`| roofline at the measured ${fmt(measured, 0)} GB/s | ${fmt(roofMeasured, 1)} | | 100% | ${pct(roofMeasured / roofSpec)} |`);
  if (o.bandwidthGbs) console.log(`| roofline at the spec sheet's ${o.bandwidthGbs} GB/s | ${fmt(roofSpec, 1)} | | ${pct(roofSpec / roofMeasured)} | 100% |`);
  console.log(`| shoal webgpu | ${fmt(s)} | ${fmt(s / g)} | ${pct(s / roofMeasured)} | ${pct(s / roofSpec)} |`);
  if (Number.isFinite(g)) console.log(`| llama.cpp ${o.llamaGpu} (all layers offloaded) | ${fmt(g)} | 1.00 | ${pct(g / roofMeasured)} | ${pct(g / roofSpec)} |`);
  if (Number.isFinite(c)) console.log(`| llama.cpp cpu (${o.threads} threads) | ${fmt(c)} | ${fmt(c / g)} | | |`);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await main();
  process.exit(0); // Dawn's instance keeps the event loop alive
}
