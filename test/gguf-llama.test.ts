/**
 * Dense GGUF architectures (llama.cpp's `llama` and `qwen2`): tiny random-weight files written
 * here, with GQA, an embedded byte-level BPE tokenizer, Qwen2's biases, Llama 3.1's
 * rope_freqs, tied embeddings, and f32 or q8_0 weights.
 * - shoal's logits (prefill, two sequences batched, step-by-step decode through the paged
 *   cache) match a plain reference forward written here from the file's dequantized tensors
 *   (standard GQA; NEOX RoPE for qwen2, adjacent pairs for llama), on every backend available,
 *   and split over two backends;
 * - the engine's greedy tokens are the reference's;
 * - llama.cpp (node-llama-cpp, when installed) loads the files, tokenizes like shoal, and its
 *   logits and greedy tokens agree with shoal's;
 * - bad files give one `shoal: ...` line through the CLI.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GGML, kv, openGguf, writeGguf, type GgufMetadata, type GgufTensorToWrite } from '../src/formats/gguf.js';
import { quantizeRow } from '../src/formats/quant.js';
import { loadOpenedModel, openModelPath } from '../src/models/open.js';
import { Engine } from '../src/engine/engine.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { SimdCpuBackend } from '../src/backends/cpu-simd/simd-backend.js';
import { WebGpuBackend } from '../src/backends/webgpu/webgpu-backend.js';
import { webgpuUnavailable } from '../src/backends/webgpu/dawn.js';
import type { Backend } from '../src/backends/backend.js';
import { Placement } from '../src/engine/placement.js';
import { tokenizerFromGguf, TOKEN_TYPE } from '../src/tokenizer/gguf-tokenizer.js';
import { assertUserError, shoal } from './helpers.js';

// ---- a tiny byte-level BPE vocabulary ----------------------------------------------------------

/** GPT-2's byte -> printable character map (byte-level BPE's alphabet). */
function byteAlphabet(): string[] {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  let extra = 0;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : 256 + extra++));
}

const TRAINING_TEXT = 'the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs away! '
  + 'then the other dog thinks: 123 and 123 and 2024 are numbers, aren\'t they? they\'re there. 123!';

/**
 * 256 byte tokens, then 48 merges learned greedily from TRAINING_TEXT (split like Llama 3, so
 * digit runs merge: Qwen2's single-digit split tokenizes them differently), " zebra", then three
 * special tokens.
 */
function tinyVocab(): { tokens: string[]; types: number[]; merges: string[] } {
  const alphabet = byteAlphabet();
  const words = TRAINING_TEXT.match(/ ?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+|\s+/gu)!.map((w) => [...Buffer.from(w)].map((b) => alphabet[b]));
  const tokens = [...alphabet];
  const merges: string[] = [];
  for (let m = 0; m < 48; m++) {
    const counts = new Map<string, number>();
    for (const w of words) for (let i = 0; i + 1 < w.length; i++) counts.set(`${w[i]} ${w[i + 1]}`, (counts.get(`${w[i]} ${w[i + 1]}`) ?? 0) + 1);
    let best = '', n = 0;
    for (const [pair, c] of counts) if (c > n) { best = pair; n = c; }
    if (!best) break;
    const [a, b] = best.split(' ');
    merges.push(best);
    if (!tokens.includes(a + b)) tokens.push(a + b);
    for (const w of words) {
      for (let i = 0; i + 1 < w.length; i++) if (w[i] === a && w[i + 1] === b) w.splice(i, 2, a + b);
    }
  }
  // A word no merge makes: Llama 3's tokenizer takes it whole (ignore_merges), Qwen2's merges bytes.
  tokens.push(alphabet[32] + 'zebra');
  const types: number[] = tokens.map(() => TOKEN_TYPE.NORMAL);
  for (const s of ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>']) { tokens.push(s); types.push(TOKEN_TYPE.CONTROL); }
  return { tokens, types, merges };
}

const VOCAB = tinyVocab();
const V = VOCAB.tokens.length;
const BOS = V - 3, EOS = V - 2;
assert.equal(V, 256 + 48 + 1 + 3, 'every merge makes a new token');

// ---- tiny model files -------------------------------------------------------------------------

interface Spec {
  name: string;
  arch: 'llama' | 'qwen2';
  /** Format of the matrices (vectors are always F32). */
  type: 'f32' | 'q8_0';
  tied: boolean;
  ropeFreqs: boolean;
}

const D = 64, HEADS = 4, KV_HEADS = 2, HEAD_DIM = 16, FFN = 128, LAYERS = 2, CONTEXT = 256;

const SPECS: Spec[] = [
  { name: 'llama-f32-rope-freqs', arch: 'llama', type: 'f32', tied: false, ropeFreqs: true },
  { name: 'llama-q8_0-tied', arch: 'llama', type: 'q8_0', tied: true, ropeFreqs: false },
  { name: 'qwen2-f32', arch: 'qwen2', type: 'f32', tied: false, ropeFreqs: false },
  { name: 'qwen2-q8_0-tied', arch: 'qwen2', type: 'q8_0', tied: true, ropeFreqs: false },
];

/** Deterministic uniform values in [-scale, scale). */
function random(n: number, seed: number, scale: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 * 2 - 1) * scale;
  });
}

function tensor(name: string, shape: number[], values: Float32Array, type: 'f32' | 'q8_0'): GgufTensorToWrite {
  const ne = [...shape].reverse();
  if (type === 'f32') return { name, type: GGML.F32, ne, write: (emit) => emit(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)) };
  const cols = shape[shape.length - 1], rows = values.length / cols, rowBytes = (cols / 32) * 34;
  const bytes = new Uint8Array(rows * rowBytes);
  for (let r = 0; r < rows; r++) quantizeRow('q8_0', values, r * cols, cols, bytes, r * rowBytes);
  return { name, type: GGML.Q8_0, ne, write: (emit) => emit(bytes) };
}

/** Writes a tiny model; `edit` may change its metadata and tensors (to make bad files). */
function writeTinyModel(path: string, spec: Spec, edit?: (md: GgufMetadata, ts: GgufTensorToWrite[]) => void): void {
  const a = spec.arch;
  const md: GgufMetadata = [
    ['general.architecture', kv.str(a)],
    ['general.name', kv.str(spec.name)],
    [`${a}.block_count`, kv.u32(LAYERS)],
    [`${a}.context_length`, kv.u32(CONTEXT)],
    [`${a}.embedding_length`, kv.u32(D)],
    [`${a}.feed_forward_length`, kv.u32(FFN)],
    [`${a}.attention.head_count`, kv.u32(HEADS)],
    [`${a}.attention.head_count_kv`, kv.u32(KV_HEADS)],
    [`${a}.attention.layer_norm_rms_epsilon`, kv.f32(1e-5)],
    [`${a}.rope.freq_base`, kv.f32(a === 'llama' ? 500000 : 10000)],
    [`${a}.rope.dimension_count`, kv.u32(HEAD_DIM)],
    ['tokenizer.ggml.model', kv.str('gpt2')],
    ['tokenizer.ggml.pre', kv.str(a === 'llama' ? 'llama-bpe' : 'qwen2')],
    ['tokenizer.ggml.tokens', kv.strs(VOCAB.tokens)],
    ['tokenizer.ggml.token_type', kv.i32s(VOCAB.types)],
    ['tokenizer.ggml.merges', kv.strs(VOCAB.merges)],
    ['tokenizer.ggml.bos_token_id', kv.u32(BOS)],
    ['tokenizer.ggml.eos_token_id', kv.u32(EOS)],
    // llama-bpe adds BOS by default; qwen2 files say they do not.
    ...(a === 'qwen2' ? [['tokenizer.ggml.add_bos_token', kv.bool(false)] as GgufMetadata[number]] : []),
  ];
  if (a === 'llama') md.push([`${a}.vocab_size`, kv.u32(V)]);
  let seed = 1;
  const matrix = (name: string, rows: number, cols: number, scale = 1.5 / Math.sqrt(cols)) => tensor(name, [rows, cols], random(rows * cols, seed++, scale), spec.type);
  const vector = (name: string, n: number, base: number, scale: number) => tensor(name, [n], random(n, seed++, scale).map((v) => base + v), 'f32');
  const ts: GgufTensorToWrite[] = [matrix('token_embd.weight', V, D, 1)];
  if (spec.ropeFreqs) ts.push(tensor('rope_freqs.weight', [HEAD_DIM / 2], Float32Array.from({ length: HEAD_DIM / 2 }, (_, i) => 1 + i * 0.75), 'f32'));
  for (let i = 0; i < LAYERS; i++) {
    const p = `blk.${i}`;
    ts.push(
      vector(`${p}.attn_norm.weight`, D, 1, 0.2),
      matrix(`${p}.attn_q.weight`, HEADS * HEAD_DIM, D, 4 / Math.sqrt(D)),
      matrix(`${p}.attn_k.weight`, KV_HEADS * HEAD_DIM, D, 4 / Math.sqrt(D)),
      matrix(`${p}.attn_v.weight`, KV_HEADS * HEAD_DIM, D),
      matrix(`${p}.attn_output.weight`, D, HEADS * HEAD_DIM),
      vector(`${p}.ffn_norm.weight`, D, 1, 0.2),
      matrix(`${p}.ffn_gate.weight`, FFN, D),
      matrix(`${p}.ffn_up.weight`, FFN, D),
      matrix(`${p}.ffn_down.weight`, D, FFN),
    );
    if (a === 'qwen2') {
      ts.push(
        vector(`${p}.attn_q.bias`, HEADS * HEAD_DIM, 0, 0.5),
        vector(`${p}.attn_k.bias`, KV_HEADS * HEAD_DIM, 0, 0.5),
        vector(`${p}.attn_v.bias`, KV_HEADS * HEAD_DIM, 0, 0.5),
      );
    }
  }
  ts.push(vector('output_norm.weight', D, 1, 0.2));
  if (!spec.tied) ts.push(matrix('output.weight', V, D, 3 / Math.sqrt(D)));
  edit?.(md, ts);
  writeGguf(path, md, ts);
}

// ---- the reference forward ----------------------------------------------------------------------

function halfToFloat(h: number): number {
  const e = (h >> 10) & 0x1f, m = h & 0x3ff, s = h >> 15 ? -1 : 1;
  if (e === 0) return s * m * 2 ** -24;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Every tensor of a GGUF file as float64 (f32 or q8_0), and its metadata. */
function readModelFile(path: string) {
  const f = openGguf(path);
  try {
    const tensors = new Map<string, Float64Array>();
    for (const [name, info] of f.tensors) {
      const bytes = f.read(name);
      const n = info.ne.reduce((x, y) => x * y, 1);
      const out = new Float64Array(n);
      if (info.type === GGML.F32) out.set(new Float32Array(bytes.buffer, bytes.byteOffset, n));
      else {
        assert.equal(info.type, GGML.Q8_0);
        const dv = new DataView(bytes.buffer, bytes.byteOffset);
        for (let blk = 0; blk < n / 32; blk++) {
          const d = halfToFloat(dv.getUint16(blk * 34, true));
          for (let j = 0; j < 32; j++) out[blk * 32 + j] = d * dv.getInt8(blk * 34 + 2 + j);
        }
      }
      tensors.set(name, out);
    }
    const arch = f.string('general.architecture', true);
    return { arch, tensors, eps: f.number(`${arch}.attention.layer_norm_rms_epsilon`, true), base: f.number(`${arch}.rope.freq_base`, true) };
  } finally {
    f.close();
  }
}

/**
 * Logits after each token of `tokens`, the textbook way: full causal attention over the whole
 * sequence, each query head h reading KV head floor(h / (HEADS / KV_HEADS)).
 */
function referenceLogits(path: string, tokens: number[]): Float64Array[] {
  const { arch, tensors: t, eps, base } = readModelFile(path);
  const w = (name: string) => t.get(name)!;
  const matVec = (m: Float64Array, x: Float64Array, rows: number) => {
    const cols = x.length, out = new Float64Array(rows);
    for (let r = 0; r < rows; r++) { let s = 0; for (let c = 0; c < cols; c++) s += m[r * cols + c] * x[c]; out[r] = s; }
    return out;
  };
  const rmsNorm = (x: Float64Array, g: Float64Array) => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const inv = 1 / Math.sqrt(ss / x.length + eps);
    return x.map((v, i) => v * inv * g[i]);
  };
  const addBias = (x: Float64Array, name: string) => (t.has(name) ? x.map((v, i) => v + w(name)[i]) : x);
  const factors = t.get('rope_freqs.weight');
  const rope = (x: Float64Array, heads: number, pos: number) => {
    const half = HEAD_DIM / 2;
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < half; i++) {
        const angle = pos * Math.pow(base, (-2 * i) / HEAD_DIM) / (factors ? factors[i] : 1);
        // llama: adjacent pairs (llama.cpp's converter stores q/k that way); qwen2: NEOX pairs (i, i + d/2).
        const [a, b] = arch === 'qwen2' ? [h * HEAD_DIM + i, h * HEAD_DIM + i + half] : [h * HEAD_DIM + 2 * i, h * HEAD_DIM + 2 * i + 1];
        const x0 = x[a], x1 = x[b];
        x[a] = x0 * Math.cos(angle) - x1 * Math.sin(angle);
        x[b] = x0 * Math.sin(angle) + x1 * Math.cos(angle);
      }
    }
    return x;
  };
  const embed = w('token_embd.weight');
  let xs = tokens.map((id) => embed.slice(id * D, (id + 1) * D));
  for (let l = 0; l < LAYERS; l++) {
    const p = `blk.${l}`;
    const hs = xs.map((x) => rmsNorm(x, w(`${p}.attn_norm.weight`)));
    const q = hs.map((h, pos) => rope(addBias(matVec(w(`${p}.attn_q.weight`), h, HEADS * HEAD_DIM), `${p}.attn_q.bias`), HEADS, pos));
    const k = hs.map((h, pos) => rope(addBias(matVec(w(`${p}.attn_k.weight`), h, KV_HEADS * HEAD_DIM), `${p}.attn_k.bias`), KV_HEADS, pos));
    const v = hs.map((h) => addBias(matVec(w(`${p}.attn_v.weight`), h, KV_HEADS * HEAD_DIM), `${p}.attn_v.bias`));
    xs = xs.map((x, i) => {
      const attn = new Float64Array(HEADS * HEAD_DIM);
      for (let h = 0; h < HEADS; h++) {
        const g = Math.floor(h / (HEADS / KV_HEADS));
        const scores = Array.from({ length: i + 1 }, (_, j) => {
          let s = 0;
          for (let c = 0; c < HEAD_DIM; c++) s += q[i][h * HEAD_DIM + c] * k[j][g * HEAD_DIM + c];
          return s / Math.sqrt(HEAD_DIM);
        });
        const max = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - max));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= i; j++) for (let c = 0; c < HEAD_DIM; c++) attn[h * HEAD_DIM + c] += (e[j] / sum) * v[j][g * HEAD_DIM + c];
      }
      const o = matVec(w(`${p}.attn_output.weight`), attn, D);
      const h1 = x.map((xv, c) => xv + o[c]);
      const n = rmsNorm(h1, w(`${p}.ffn_norm.weight`));
      const gate = matVec(w(`${p}.ffn_gate.weight`), n, FFN), up = matVec(w(`${p}.ffn_up.weight`), n, FFN);
      const act = gate.map((gv, c) => (gv / (1 + Math.exp(-gv))) * up[c]);
      const down = matVec(w(`${p}.ffn_down.weight`), act, D);
      return h1.map((hv, c) => hv + down[c]);
    });
  }
  const head = t.get('output.weight') ?? embed;
  return xs.map((x) => matVec(head, rmsNorm(x, w('output_norm.weight')), V));
}

function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < v.length; j++) if (v[j] > v[best]) best = j;
  return best;
}

/**
 * Asserts each row within `tol` of the reference (relative to the row's largest logit) and the
 * argmax equal, except where the reference's best two logits lie within twice that bound (a
 * tie the allowed error may flip; only possible with the looser bound of q8 activations).
 */
function assertClose(ours: Float32Array[], ref: Float64Array[], what: string, tol = 1e-4): void {
  assert.equal(ours.length, ref.length, what);
  ours.forEach((row, r) => {
    const scale = Math.max(1, ...Array.from(ref[r], Math.abs));
    let worst = 0;
    for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(row[j] - ref[r][j]));
    assert.ok(worst <= tol * scale, `${what}, row ${r}: max |diff| ${worst} (scale ${scale})`);
    const best = argmax(ref[r]);
    const margin = Math.min(...Array.from(ref[r], (v, j) => (j === best ? Infinity : ref[r][best] - v)));
    if (margin > 2 * tol * scale) assert.equal(argmax(row), best, `${what}, row ${r}: argmax`);
  });
}

// ---- shoal on the files ---------------------------------------------------------------------------

const PROMPT = [BOS, 300, 17, 45, 260, 72, 101, 33, 9];
const OTHER = [BOS, 280, 281, 64];
const DECODE = [12, 270, 5, 99, 271];

function rows(logits: Float32Array): Float32Array[] {
  return Array.from({ length: logits.length / V }, (_, r) => logits.subarray(r * V, (r + 1) * V));
}

/**
 * shoal's logits for PROMPT then DECODE (prefilled in one pass together with OTHER as a second
 * sequence, then decoded one token per pass), with blocks of 4 tokens in a scrambled order.
 */
async function shoalLogits(path: string, backend: Backend, placement?: Placement): Promise<{ main: Float32Array[]; other: Float32Array[] }> {
  const opened = openModelPath(path);
  try {
    const m = loadOpenedModel(opened, backend, { placement });
    const cache = m.createCache(8, 4);
    const tables = [Int32Array.of(5, 0, 7, 2), Int32Array.of(3, 6)];
    const L = PROMPT.length;
    const both = [...PROMPT, ...OTHER];
    const prefill = await m.forward({
      tokens: Int32Array.from(both),
      positions: Int32Array.from([...PROMPT.keys(), ...OTHER.keys()]),
      seqIndex: Int32Array.from(both.map((_, i) => (i < L ? 0 : 1))),
      blockTables: tables,
    }, cache);
    const b = m.placement.backendFor(m.cfg.numHiddenLayers - 1);
    const all = rows(await b.read(m.logits(prefill)));
    const main = all.slice(0, L);
    for (let k = 0; k < DECODE.length; k++) {
      const h = await m.forward({ tokens: Int32Array.of(DECODE[k]), positions: Int32Array.of(L + k), seqIndex: Int32Array.of(0), blockTables: [tables[0]] }, cache);
      main.push(rows(await b.read(m.logits(h)))[0]);
    }
    return { main, other: all.slice(L) };
  } finally {
    opened.close();
  }
}

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'shoal-gguf-llama-'));
  for (const s of SPECS) writeTinyModel(join(tmp, `${s.name}.gguf`), s);
});
after(() => rmSync(tmp, { recursive: true, force: true }));
const fileOf = (s: Spec) => join(tmp, `${s.name}.gguf`);

const webgpuSkip = await webgpuUnavailable();
/**
 * Backends, and the bound each is held to. The fast CPU backend's integer path
 * quantizes activations to q8 for block-format weights (about 1e-3 relative per matmul,
 * docs/backends.md), compounded over the layers of these random-weight models, so its logits
 * get the bound llama.cpp's (same kind of activations) get below: 4% of the largest logit. Its
 * float path is held to the exact bound.
 */
const backends: [string, () => Promise<Backend>, string | undefined, number][] = [
  ['cpu-ref', async () => new CpuBackend(), undefined, 1e-4],
  ['cpu-simd (float path)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0, int8MinTokens: Infinity }), undefined, 1e-4],
  ['cpu-simd (integer path)', () => SimdCpuBackend.create({ threads: 2, minParallelWork: 0 }), undefined, 4e-2],
  ['webgpu', () => WebGpuBackend.create(), webgpuSkip || undefined, 1e-4],
];

describe('llama/qwen2 GGUF: shoal matches a plain reference forward', () => {
  for (const spec of SPECS) {
    for (const [label, create, skip, tol] of backends) {
      it(`${spec.name} on ${label}: prefill (two sequences batched) and decode through the paged cache`, { skip }, async () => {
        const ref = referenceLogits(fileOf(spec), [...PROMPT, ...DECODE]);
        const refOther = referenceLogits(fileOf(spec), OTHER);
        const backend = await create();
        try {
          const { main, other } = await shoalLogits(fileOf(spec), backend);
          assertClose(main, ref, 'prompt + decode', tol);
          assertClose(other, refOther, 'second sequence', tol);
        } finally {
          backend.dispose();
        }
      });
    }
  }

  it('a pipeline over two backends (a cache pool on each) gives the single-backend logits', async () => {
    const a = new CpuBackend(), b = new CpuBackend();
    const split = await shoalLogits(fileOf(SPECS[2]), a, Placement.pipeline([a, b], [1, 1]));
    assert.deepEqual(split, await shoalLogits(fileOf(SPECS[2]), new CpuBackend()));
  });

  it('the engine generates the reference greedy tokens (scheduler, prefix cache, sampling)', async () => {
    const spec = SPECS[2];
    const expected: number[] = [];
    for (let i = 0; i < 6; i++) {
      const logits = referenceLogits(fileOf(spec), [...PROMPT, ...expected]);
      expected.push(argmax(logits[logits.length - 1]));
    }
    const e = await Engine.load(fileOf(spec), { backend: new CpuBackend(), maxContext: 64 });
    try {
      const it = e.generate(PROMPT, { maxTokens: 6, sampling: { temperature: 0 }, ignoreEos: true });
      let r = await it.next();
      while (!r.done) r = await it.next();
      assert.deepEqual(r.value.tokenIds, expected);
    } finally {
      await e.close();
    }
  });

  it('the reference itself depends on what the test varies (RoPE layout, rope_freqs, biases)', () => {
    // Guards against a reference blind to the features: each changes the logits.
    const moved = (spec: Spec, edit: (md: GgufMetadata, ts: GgufTensorToWrite[]) => void) => {
      const p = join(tmp, `${spec.name}-edited.gguf`);
      writeTinyModel(p, spec, edit);
      return referenceLogits(p, PROMPT);
    };
    const differ = (a: Float64Array[], b: Float64Array[]) => a.some((row, r) => row.some((v, j) => Math.abs(v - b[r][j]) > 1e-3));
    const llama = SPECS[0], qwen = SPECS[2];
    assert.ok(differ(referenceLogits(fileOf(llama), PROMPT), moved(llama, (_, ts) => ts.splice(ts.findIndex((t) => t.name === 'rope_freqs.weight'), 1))));
    assert.ok(differ(referenceLogits(fileOf(qwen), PROMPT), moved(qwen, (md) => { md[0] = ['general.architecture', kv.str('llama')]; for (const e of md) e[0] = e[0].replace(/^qwen2\./, 'llama.'); })));
  });
});

// ---- llama.cpp ------------------------------------------------------------------------------------

// node-llama-cpp is optional (not a dependency), so it is imported by name and used untyped.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;
const PACKAGE = 'node-llama-cpp';
let lib: Any = null;
let llamaSkip: string | undefined;
try {
  lib = await import(PACKAGE);
} catch {
  llamaSkip = `${PACKAGE} is not installed (npm install --no-save ${PACKAGE}@3.22.1)`;
}

describe('llama.cpp (node-llama-cpp) on the same files', { skip: llamaSkip }, () => {
  let llama: Any;
  before(async () => {
    llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'error' });
  });
  after(async () => {
    await llama?.dispose?.();
  });

  // llama.cpp keeps K/V in f16 and, for q8_0 weights, rounds activations to q8_0 before each dot
  // product; shoal does neither. Hence a bound per row (absolute for f32, relative to the row's
  // largest logit for q8_0), and where shoal's two best logits are closer than that bound (a near
  // tie such rounding may flip), llama.cpp's choice only has to be one of them.
  const bound = (spec: Spec, row: ArrayLike<number>) => (spec.type === 'f32' ? 0.02 : 0.04 * Math.max(...Array.from(row, Math.abs)));

  for (const spec of SPECS) {
    it(`${spec.name}: same tokenization, logits within bounds with the same argmax, same greedy tokens`, async () => {
      const model = await llama.loadModel({ modelPath: fileOf(spec) });
      const ctx = await model.createContext({ contextSize: 64, threads: 1 });
      try {
        const f = openGguf(fileOf(spec));
        const tok = tokenizerFromGguf(f);
        f.close();
        for (const text of ['the quick brown fox', 'THEY\'RE there, aren\'t they? 12345 dogs!\n\n  ok', 'then 7 dog-thinks 2024123', 'a zebra thinks']) {
          assert.deepEqual(tok.encode(text, { addSpecialTokens: false }), Array.from(model.tokenize(text)), text);
        }
        assert.equal(tok.encode('hi')[0] === BOS, model.tokens.shouldPrependBosToken, 'BOS added as llama.cpp adds it');
        const seq = ctx.getSequence();
        const out = await seq.controlledEvaluate(PROMPT.map((t) => [t, { generateNext: { logits: true } }]));
        const theirs = PROMPT.map((_, i) => {
          const m: Map<number, number> = out[i].next.logits;
          return Float32Array.from({ length: V }, (_, j) => m.get(j) ?? NaN);
        });
        const backend = new CpuBackend();
        const ours = (await shoalLogits(fileOf(spec), backend)).main.slice(0, PROMPT.length);
        ours.forEach((row, r) => {
          const tol = bound(spec, row);
          let worst = 0;
          for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(row[j] - theirs[r][j]));
          assert.ok(worst <= tol, `row ${r}: max |diff| ${worst} > ${tol}`);
          const best = argmax(row), second = argmax(row.map((v, j) => (j === best ? -Infinity : v)));
          if (row[best] - row[second] > tol) assert.equal(argmax(theirs[r]), best, `row ${r}: argmax`);
          else assert.ok([best, second].includes(argmax(theirs[r])), `row ${r}: argmax ${argmax(theirs[r])}, not one of the near tie ${best}, ${second}`);
        });
        await seq.clearHistory();
        const greedy: number[] = [];
        for await (const t of seq.evaluate(PROMPT, { temperature: 0 })) {
          greedy.push(t);
          if (greedy.length === 8) break;
        }
        const e = await Engine.load(fileOf(spec), { backend: new CpuBackend(), maxContext: 64 });
        try {
          const it = e.generate(PROMPT, { maxTokens: 8, sampling: { temperature: 0 }, ignoreEos: true });
          let r = await it.next();
          while (!r.done) r = await it.next();
          assert.deepEqual(r.value.tokenIds, greedy);
        } finally {
          await e.close();
        }
      } finally {
        await ctx.dispose();
        await model.dispose();
      }
    });
  }
});

// ---- the command line -----------------------------------------------------------------------------


describe('shoal CLI on llama/qwen2 GGUF files', () => {
  it('inspect describes a dense GQA model; run generates', () => {
    const i = shoal('inspect', '--model', fileOf(SPECS[1]));
    assert.equal(i.code, 0, i.stderr);
    assert.match(i.stdout, /LlamaForCausalLM/);
    assert.match(i.stdout, /none \(dense MLP\)/);
    // 2 layers x 2 KV heads x (16 + 16) values x 2 bytes, and HEADS / KV_HEADS = 2x less than MHA.
    assert.match(i.stdout, /KV cache \/ token\s+256 B K\/V, GQA \(bf16\) vs 512 B for full MHA \(2\.0x\)/);
    const r = shoal('run', '--model', fileOf(SPECS[3]), '--prompt', 'the dog', '--max-tokens', '4', '--ignore-eos', '--device', 'cpu');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /generated tokens: 4/);
  });

  const bad = (name: string, spec: Spec, edit: (md: GgufMetadata, ts: GgufTensorToWrite[]) => void) => {
    const p = join(tmp, `${name}.gguf`);
    writeTinyModel(p, spec, edit);
    return p;
  };
  const dropKey = (key: string) => (md: GgufMetadata) => md.splice(md.findIndex(([k]) => k === key), 1);

  it('missing metadata key', () => {
    const p = bad('no-eps', SPECS[0], dropKey('llama.attention.layer_norm_rms_epsilon'));
    assertUserError(shoal('run', '--model', p, '--prompt', 'hi'), /no-eps\.gguf: missing metadata "llama\.attention\.layer_norm_rms_epsilon"/);
  });

  it('inconsistent head counts', () => {
    const p = bad('kv-heads', SPECS[2], (md) => { md[md.findIndex(([k]) => k === 'qwen2.attention.head_count_kv')][1] = kv.u32(3); });
    assertUserError(shoal('run', '--model', p, '--prompt', 'hi'), /kv-heads\.gguf: metadata "qwen2\.attention\.head_count_kv" \(3\) must divide attention\.head_count \(4\)/);
  });

  it('tensor of the wrong shape', () => {
    const p = bad('short-k', SPECS[0], (_, ts) => {
      const i = ts.findIndex((t) => t.name === 'blk.1.attn_k.weight');
      ts[i] = tensor('blk.1.attn_k.weight', [HEAD_DIM, D], random(HEAD_DIM * D, 9, 0.1), 'f32');
    });
    assertUserError(shoal('run', '--model', p, '--prompt', 'hi'), /short-k\.gguf: tensor "blk\.1\.attn_k\.weight": has shape \[16,64\] \(ggml ne \[64,16\]\), expected \[32,64\]/);
  });

  it('qwen2 without its biases', () => {
    const p = bad('no-bias', SPECS[2], (_, ts) => ts.splice(ts.findIndex((t) => t.name === 'blk.0.attn_v.bias'), 1));
    assertUserError(shoal('inspect', '--model', p), /no-bias\.gguf: missing tensor "blk\.0\.attn_v\.bias"/);
  });

  it('unsupported architecture lists the supported ones', () => {
    const p = bad('gemma', SPECS[0], (md) => { md[0] = ['general.architecture', kv.str('gemma')]; });
    assertUserError(shoal('run', '--model', p, '--prompt', 'hi'), /gemma\.gguf: architecture "gemma" is not supported \(supported: deepseek2, llama, qwen2\)/);
  });

  it('MTP speculation on a model without MTP', () => {
    assertUserError(shoal('run', '--model', fileOf(SPECS[0]), '--prompt', 'hi', '--speculative', 'mtp'), /--speculative: this checkpoint has no MTP layer/);
  });
});
