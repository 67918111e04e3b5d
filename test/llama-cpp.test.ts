/**
 * The real llama.cpp on the files we write. With node-llama-cpp installed (its npm packages ship
 * prebuilt CPU builds of llama.cpp; `npm install --no-save node-llama-cpp@3.22.1`):
 * - llama.cpp loads `shoal convert` output (deepseek2) and its prefill logits match DeepSeek's
 *   reference (the golden logits) and shoal's on the same file; greedy generation is the same;
 * - our reference quantizers write the bytes libggml's quantize_row_*_ref write (through a tiny C
 *   program that dlopens the libggml-base shipped with node-llama-cpp; needs a C compiler).
 * Without node-llama-cpp every test here is skipped, saying why.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { convertToGguf, type GgufOutType } from '../src/models/gguf-deepseek.js';
import { loadOpenedModel, openModelPath } from '../src/models/open.js';
import { Engine } from '../src/engine/engine.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { openSafetensors, toFloat32 } from '../src/formats/safetensors.js';
import { PACKED_FORMATS, quantizeRow, type PackedFormat } from '../src/formats/quant.js';
import { fixture, repoRoot } from './helpers.js';

// node-llama-cpp is optional (not a dependency), so it is imported by name and used untyped.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Any = any;
const PACKAGE = 'node-llama-cpp';
let lib: Any = null;
let skip: string | undefined;
try {
  lib = await import(PACKAGE);
} catch {
  skip = `${PACKAGE} is not installed (npm install --no-save ${PACKAGE}@3.22.1)`;
}

let tmp: string;
let llama: Any;
before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'shoal-llamacpp-'));
  if (!skip) llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'error' });
});
after(async () => {
  try {
    await llama?.dispose?.();
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});

function convert(src: string, type: GgufOutType): string {
  const dir = join(tmp, `${basename(src)}-${type}`);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'model.gguf');
  convertToGguf(src, file, type);
  return file;
}

function promptOf(src: string): number[] {
  return JSON.parse(readFileSync(join(src, 'golden.json'), 'utf8')).prompt_token_ids;
}

/** llama.cpp's logits after each prompt token, [L * V]. */
async function llamaPrefill(file: string, tokens: number[], vocab: number): Promise<Float32Array> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: 64, threads: 1 });
  try {
    const out = await ctx.getSequence().controlledEvaluate(tokens.map((t) => [t, { generateNext: { logits: true } }]));
    const logits = new Float32Array(tokens.length * vocab);
    for (let i = 0; i < tokens.length; i++) {
      const m: Map<number, number> = out[i].next.logits;
      for (let j = 0; j < vocab; j++) logits[i * vocab + j] = m.get(j) ?? NaN;
    }
    return logits;
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

async function llamaGreedy(file: string, tokens: number[], n: number): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: 64, threads: 1 });
  try {
    const out: number[] = [];
    for await (const t of ctx.getSequence().evaluate(tokens, { temperature: 0 })) {
      out.push(t);
      if (out.length === n) break;
    }
    return out;
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

async function shoalPrefill(file: string, tokens: number[]): Promise<Float32Array> {
  const o = openModelPath(file);
  try {
    const m = loadOpenedModel(o, new CpuBackend());
    const L = tokens.length;
    const cache = m.createCache(8, 16);
    const h = await m.forward({ tokens: Int32Array.from(tokens), positions: Int32Array.from({ length: L }, (_, i) => i), seqIndex: new Int32Array(L), blockTables: [Int32Array.from([0, 1, 2, 3])] }, cache);
    return m.placement.backendFor(0).read(m.logits(h));
  } finally {
    o.close();
  }
}

async function shoalGreedy(file: string, tokens: number[], n: number): Promise<number[]> {
  const e = await Engine.load(file, { backend: new CpuBackend(), maxContext: 64 });
  try {
    const it = e.generate(tokens, { maxTokens: n, sampling: { temperature: 0 }, ignoreEos: true });
    let r = await it.next();
    while (!r.done) r = await it.next();
    return r.value.tokenIds;
  } finally {
    await e.close();
  }
}

function compare(a: Float32Array, b: Float32Array, vocab: number): { maxAbsDiff: number; argmaxAgree: number; rows: number } {
  let maxAbsDiff = 0, argmaxAgree = 0;
  const rows = a.length / vocab;
  for (let r = 0; r < rows; r++) {
    let ia = 0, ib = 0;
    for (let j = 0; j < vocab; j++) {
      const d = Math.abs(a[r * vocab + j] - b[r * vocab + j]);
      if (!(d <= maxAbsDiff)) maxAbsDiff = Number.isNaN(d) ? Infinity : d;
      if (a[r * vocab + j] > a[r * vocab + ia]) ia = j;
      if (b[r * vocab + j] > b[r * vocab + ib]) ib = j;
    }
    if (ia === ib) argmaxAgree++;
  }
  return { maxAbsDiff, argmaxAgree, rows };
}

describe('llama.cpp (node-llama-cpp) on GGUF files shoal writes', { skip }, () => {
  // llama.cpp's CPU kernels round activations to bf16 (bf16 weights) or q8_0 (q8_0 weights)
  // before each dot product, which shoal does not: hence 0.1 here rather than 1e-3.
  for (const src of [fixture('deepseek-v3-tiny'), fixture('deepseek-v2-lite-tiny'), join(repoRoot, 'models/demo')]) {
    it(`${basename(src)} (bf16 GGUF): llama.cpp's prefill logits match the golden ones and shoal's; greedy tokens are the same`, async () => {
      const file = convert(src, 'bf16');
      const tokens = promptOf(src);
      const ref = openSafetensors(join(src, 'golden.safetensors'));
      const golden = toFloat32(ref.info('prefill_logits'), ref.read('prefill_logits'));
      ref.close();
      const vocab = golden.length / tokens.length;
      const theirs = await llamaPrefill(file, tokens, vocab);
      const vsGolden = compare(theirs, golden, vocab);
      const vsShoal = compare(theirs, await shoalPrefill(file, tokens), vocab);
      for (const [what, c] of [['golden', vsGolden], ['shoal', vsShoal]] as const) {
        assert.ok(c.maxAbsDiff <= 0.1 && c.argmaxAgree === c.rows, `llama.cpp vs ${what}: max |diff| ${c.maxAbsDiff}, argmax ${c.argmaxAgree}/${c.rows}`);
      }
      assert.deepEqual(await llamaGreedy(file, tokens, 16), await shoalGreedy(file, tokens, 16));
    });
  }

  it('demo (q8_0 GGUF): llama.cpp and shoal agree on every argmax and on 16 greedy tokens', async () => {
    const src = join(repoRoot, 'models/demo');
    const file = convert(src, 'q8_0');
    const tokens = promptOf(src);
    const ours = await shoalPrefill(file, tokens);
    const c = compare(await llamaPrefill(file, tokens, ours.length / tokens.length), ours, ours.length / tokens.length);
    assert.ok(c.maxAbsDiff <= 0.3 && c.argmaxAgree === c.rows, `max |diff| ${c.maxAbsDiff}, argmax ${c.argmaxAgree}/${c.rows}`);
    assert.deepEqual(await llamaGreedy(file, tokens, 16), await shoalGreedy(file, tokens, 16));
  });
});

/** libggml-base shipped inside node-llama-cpp's prebuilt package for this platform, if any. */
function findLibggml(): string | null {
  if (skip) return null;
  try {
    const require = createRequire(import.meta.url);
    const platform = `${process.platform}-${process.arch}`;
    const pkgDir = dirname(dirname(require.resolve(PACKAGE))); // .../node-llama-cpp (dist/index.js)
    const bins = join(dirname(dirname(require.resolve(`@node-llama-cpp/${platform}`, { paths: [pkgDir] }))), 'bins', platform);
    const lib = readdirSync(bins).find((f) => /^libggml-base\.(so|dylib)$/.test(f));
    return lib ? join(bins, lib) : null;
  } catch {
    return null;
  }
}

const HARNESS = `
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
typedef void (*qfn)(const float *, void *, int64_t);
int main(int argc, char **argv) {
  void *h = dlopen(argv[1], RTLD_NOW); if (!h) { fprintf(stderr, "%s\\n", dlerror()); return 2; }
  qfn f = (qfn)dlsym(h, argv[2]); if (!f) { fprintf(stderr, "no %s\\n", argv[2]); return 3; }
  long n = atol(argv[3]), bytes = atol(argv[4]);
  float *x = malloc(n * 4); if (fread(x, 4, n, stdin) != (size_t)n) return 4;
  unsigned char *y = calloc(bytes, 1); f(x, y, n); fwrite(y, 1, bytes, stdout); return 0;
}`;

describe('reference quantizers against libggml (the library llama.cpp quantizes with)', () => {
  const libggml = findLibggml();
  const cc = spawnSync('cc', ['--version']).status === 0;
  const why = skip ?? (!libggml ? 'no libggml-base in the node-llama-cpp package for this platform' : !cc ? 'no C compiler (cc) to build the harness' : undefined);
  let exe = '';
  before(() => {
    if (why) return;
    const srcFile = join(tmp, 'harness.c');
    writeFileSync(srcFile, HARNESS);
    exe = join(tmp, 'harness');
    execFileSync('cc', ['-O1', '-o', exe, srcFile, '-ldl']);
  });
  const fns: Record<PackedFormat, string> = { q8_0: 'quantize_row_q8_0_ref', q4_0: 'quantize_row_q4_0_ref', q4_k: 'quantize_row_q4_K_ref', q6_k: 'quantize_row_q6_K_ref' };
  for (const f of Object.keys(fns) as PackedFormat[]) {
    it(`${f}: byte for byte on 8 kinds of rows`, { skip: why }, () => {
      let seed = 42;
      const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 4294967296);
      const gauss = () => Math.sqrt(-2 * Math.log(rnd() + 1e-12)) * Math.cos(2 * Math.PI * rnd());
      const kinds: ((i: number) => number)[] = [
        () => gauss(), () => rnd() * 2 - 1, () => (rnd() < 0.7 ? 0 : gauss() * 0.02), () => gauss() * 1e-3 + 0.01,
        () => gauss() ** 3 * 5, (i) => (i % 64 < 32 ? 0 : gauss()), () => gauss() * 1e-6, () => -Math.abs(gauss()) - 0.5,
      ];
      const n = 256 * 32;
      for (let k = 0; k < kinds.length; k++) {
        const x = Float32Array.from({ length: n }, (_, i) => kinds[k](i));
        const bytes = (n / PACKED_FORMATS[f].block) * PACKED_FORMATS[f].bytes;
        const ours = new Uint8Array(bytes);
        quantizeRow(f, x, 0, n, ours);
        const theirs = execFileSync(exe, [libggml!, fns[f], String(n), String(bytes)], { input: Buffer.from(x.buffer), maxBuffer: 1 << 24 });
        const first = ours.findIndex((v, i) => v !== theirs[i]);
        assert.equal(first, -1, `${f}, rows of kind ${k}: first different byte ${first} (block ${Math.floor(first / PACKED_FORMATS[f].bytes)})`);
      }
    });
  }
});
