/**
 * GGUF: writer -> reader round trips, a UserError naming the file (and tensor) for every kind
 * of bad file, `shoal convert` of every fixture (bf16: golden at the normal tolerance; q8_0:
 * within the documented tolerance), the llama.cpp tensor layout (attn_k_b/attn_v_b split, or
 * the older attn_kv_b), stacked experts served as views, the embedded tokenizer, and
 * `--quantize` on load.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { GGML, GgufType, kv, openGguf, writeGguf, type GgufMetadata, type GgufTensorToWrite } from '../src/formats/gguf.js';
import { convertToGguf, GgufWeights, openGgufModel, type GgufOutType } from '../src/models/gguf-deepseek.js';
import { DeepseekModel } from '../src/models/deepseek.js';
import { openModelPath } from '../src/models/open.js';
import { runGolden, GOLDEN_TOLERANCE, type GoldenReport } from '../src/engine/golden.js';
import { Engine } from '../src/engine/engine.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import type { WeightFormat } from '../src/backends/backend.js';
import { loadTokenizer } from '../src/tokenizer/tokenizer.js';
import { tokenizerFromGguf } from '../src/tokenizer/gguf-tokenizer.js';
import { openCheckpoint } from '../src/formats/checkpoint.js';
import { isUserError } from '../src/errors.js';
import { fixture, listFixtures, repoRoot } from './helpers.js';
import { Command } from 'commander';
import { registerConvert } from '../src/cli/convert.js';

/**
 * The documented q8_0 tolerance (docs/backends.md, "Packed formats"). The fixtures have random
 * weights, so a token whose expert choice sits near a tie can flip experts under 8-bit noise:
 * per comparison, max |diff| <= 1.5 and at most one argmax differs. The trained demo model
 * keeps every argmax and stays within 0.15.
 */
const Q8_TOLERANCE = { random: { maxAbsDiff: 1.5, argmaxMisses: 1 }, trained: { maxAbsDiff: 0.15, argmaxMisses: 0 } };

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'shoal-gguf-'));
});
after(() => {
  rmSync(tmp, { recursive: true, force: true });
});

/** Runs `fn` and returns the UserError it throws (failing when it throws something else or nothing). */
function userError(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    assert.ok(isUserError(e), `expected a UserError, got ${(e as Error).stack}`);
    return e as Error;
  }
  assert.fail('expected a UserError');
}

function bytesTensor(name: string, type: number, ne: number[], bytes: Uint8Array): GgufTensorToWrite {
  return { name, type, ne, write: (emit) => emit(bytes) };
}

function fill(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + seed * 17) & 0xff;
  return b;
}

/** A fixture folder whose checkpoint is a GGUF converted from the fixture's (golden files copied). */
function ggufFixture(src: string, type: GgufOutType): { dir: string; file: string } {
  const dir = join(tmp, `${basename(src)}-${type}`);
  mkdirSync(dir, { recursive: true });
  for (const f of ['golden.json', 'golden.safetensors']) copyFileSync(join(src, f), join(dir, f));
  const file = join(dir, 'model.gguf');
  convertToGguf(src, file, type);
  return { dir, file };
}

function summary(r: GoldenReport): string {
  return r.comparisons.map((c) => `${c.name} ${c.maxAbsDiff.toExponential(2)} ${c.argmaxAgree}/${c.rows}`).join(', ');
}

const fixtures = [...listFixtures(), join(repoRoot, 'models/demo')];
const bf16Fixtures = fixtures.filter((d) => !d.endsWith('-fp8'));

describe('GGUF reader and writer', () => {
  const metadata: GgufMetadata = [
    ['general.architecture', kv.str('test')],
    ['general.alignment', kv.u32(64)],
    ['t.u8', { type: GgufType.U8, value: 250 }],
    ['t.i8', { type: GgufType.I8, value: -100 }],
    ['t.u16', { type: GgufType.U16, value: 65000 }],
    ['t.i16', { type: GgufType.I16, value: -30000 }],
    ['t.u32', kv.u32(4000000000)],
    ['t.i32', kv.i32(-2000000000)],
    ['t.f32', kv.f32(0.25)],
    ['t.f64', { type: GgufType.F64, value: 1 / 3 }],
    ['t.u64', { type: GgufType.U64, value: 2 ** 40 + 3 }],
    ['t.i64', { type: GgufType.I64, value: -(2 ** 40) }],
    ['t.bool', kv.bool(true)],
    ['t.str', kv.str('héllo ｜ wörld')],
    ['t.empty', kv.str('')],
    ['t.strs', kv.strs(['a', '', 'Ġthe', '<｜User｜>'])],
    ['t.i32s', kv.i32s([1, -2, 3])],
    ['t.f32s', kv.f32s([0.5, -1.5])],
  ];
  const tensors = [
    bytesTensor('a.f32', GGML.F32, [3, 5], fill(60, 1)),
    bytesTensor('b.bf16', GGML.BF16, [7], fill(14, 2)),
    bytesTensor('c.q8_0', GGML.Q8_0, [64, 3, 2], fill(34 * 2 * 6, 3)),
    bytesTensor('d.q4_k', GGML.Q4_K, [256, 2], fill(288, 4)),
    bytesTensor('e.f16', GGML.F16, [1], fill(2, 5)),
  ];

  it('round-trips metadata of every type and tensors of several types, aligned', () => {
    const path = join(tmp, 'roundtrip.gguf');
    const progress: number[] = [];
    writeGguf(path, metadata, tensors, (d) => progress.push(d));
    assert.deepEqual(progress, [1, 2, 3, 4, 5]);
    const f = openGguf(path);
    try {
      assert.equal(f.version, 3);
      assert.equal(f.alignment, 64);
      assert.deepEqual([...f.metadata.keys()], metadata.map(([k]) => k));
      for (const [k, v] of metadata) {
        const got = f.get(k)!;
        if (v.type === GgufType.F32) assert.equal(got.value, Math.fround(v.value as number));
        else assert.deepEqual(got, v, k);
      }
      assert.equal(f.string('t.str'), 'héllo ｜ wörld');
      assert.deepEqual(f.array('t.strs'), ['a', '', 'Ġthe', '<｜User｜>']);
      assert.throws(() => f.number('t.str'), /must be a number/);
      assert.equal(f.dataStart % 64, 0);
      for (const t of tensors) {
        const info = f.info(t.name);
        assert.equal(info.type, t.type);
        assert.deepEqual(info.ne, t.ne);
        assert.deepEqual(info.shape, [...t.ne].reverse());
        assert.equal((info.offset - f.dataStart) % 64, 0, `${t.name} aligned`);
        let want: Uint8Array | undefined;
        t.write((b) => { want = b; });
        assert.deepEqual(f.read(t.name), want, t.name);
      }
      assert.equal(f.info('c.q8_0').byteLength, 34 * 12);
    } finally {
      f.close();
    }
  });

  it('writes metadata arrays of Llama 3 size (128256 strings and ints)', () => {
    const path = join(tmp, 'big-vocab.gguf');
    const tokens = Array.from({ length: 128256 }, (_, i) => `t${i}`);
    writeGguf(path, [['tokenizer.ggml.tokens', kv.strs(tokens)], ['tokenizer.ggml.token_type', kv.i32s(tokens.map((_, i) => i % 7))]], []);
    const f = openGguf(path);
    try {
      const got = f.array('tokenizer.ggml.tokens')!;
      assert.equal(got.length, 128256);
      assert.equal(got[128255], 't128255');
      assert.equal(f.array('tokenizer.ggml.token_type')![128255], 128255 % 7);
    } finally {
      f.close();
    }
  });

  it('the writer refuses a tensor whose bytes do not match its dims', () => {
    assert.throws(() => writeGguf(join(tmp, 'bad.gguf'), [], [bytesTensor('x', GGML.F32, [4], new Uint8Array(8))]), /wrote 8 bytes, expected 16/);
    assert.throws(() => writeGguf(join(tmp, 'bad.gguf'), [], [bytesTensor('x', GGML.Q8_0, [33], new Uint8Array(34))]), /cannot hold/);
  });

  describe('bad files give a UserError naming the file (and tensor)', () => {
    let good: Buffer;
    let path: string;
    before(() => {
      path = join(tmp, 'good.gguf');
      writeGguf(path, metadata.slice(0, 4), tensors);
      good = readFileSync(path);
    });
    /** Byte offset of a tensor's info record (just past its name). */
    const infoAt = (b: Buffer, name: string) => b.indexOf(Buffer.from(name)) + name.length;
    const check = (label: string, mutate: (b: Buffer) => Buffer, pattern: RegExp, tensor?: string) => {
      it(label, () => {
        const p = join(tmp, `bad-${label.replace(/\W+/g, '-')}.gguf`);
        writeFileSync(p, mutate(Buffer.from(good)));
        const e = userError(() => openGguf(p).close());
        assert.ok(e.message.includes(p), `names the file: ${e.message}`);
        if (tensor) assert.ok(e.message.includes(tensor), `names the tensor: ${e.message}`);
        assert.match(e.message, pattern);
      });
    };
    check('bad magic', (b) => { b.write('GGUX', 0); return b; }, /not a GGUF file: magic "GGUX"/);
    check('empty file', () => Buffer.alloc(0), /shorter than the 24-byte header/);
    check('version 1', (b) => { b.writeUInt32LE(1, 4); return b; }, /unsupported GGUF version 1/);
    check('big-endian', (b) => { b.writeUInt32BE(3, 4); return b; }, /big-endian/);
    check('truncated in the header', (b) => b.subarray(0, 60), /truncated/);
    check('truncated in the data', (b) => b.subarray(0, b.length - 100), /runs past the end of the file/, 'd.q4_k');
    check('tensor offset out of range', (b) => { const o = infoAt(b, 'd.q4_k'); b.writeBigUInt64LE(BigInt(b.length), o + 4 + 16 + 4); return b; }, /runs past the end/, 'd.q4_k');
    check('misaligned tensor offset', (b) => { const o = infoAt(b, 'c.q8_0'); b.writeBigUInt64LE(b.readBigUInt64LE(o + 4 + 24 + 4) + 1n, o + 4 + 24 + 4); return b; }, /not a multiple of the alignment/, 'c.q8_0');
    check('unknown ggml type', (b) => { const o = infoAt(b, 'b.bf16'); b.writeUInt32LE(99, o + 4 + 8); return b; }, /unknown ggml type 99/, 'b.bf16');
    check('rows not whole blocks', (b) => { const o = infoAt(b, 'c.q8_0'); b.writeBigUInt64LE(40n, o + 4); return b; }, /whole 32-value blocks/, 'c.q8_0');
    check('zero dimension', (b) => { const o = infoAt(b, 'a.f32'); b.writeBigUInt64LE(0n, o + 4); return b; }, /dimension 0 is 0/, 'a.f32');
    check('too many dimensions', (b) => { const o = infoAt(b, 'a.f32'); b.writeUInt32LE(9, o); return b; }, /9 dimensions/, 'a.f32');
    check('overlapping tensors', (b) => { const o = infoAt(b, 'b.bf16'); b.writeBigUInt64LE(0n, o + 4 + 8 + 4); return b; }, /overlap/);
    check('huge string length', (b) => { b.writeBigUInt64LE(2n ** 50n, 24); return b; }, /length is \d+, more than/);
    check('huge tensor count', (b) => { b.writeBigUInt64LE(2n ** 40n, 8); return b; }, /tensor count is/);
    check('unknown value type', (b) => { const o = b.indexOf(Buffer.from('general.architecture')) + 20; b.writeUInt32LE(77, o); return b; }, /unknown value type 77/);
    check('duplicate key', (b) => { b.write('t.u8', b.indexOf(Buffer.from('t.i8'))); return b; }, /metadata key "t.u8" appears twice/);
    it('a missing file and a folder', () => {
      assert.match(userError(() => openGguf(join(tmp, 'nope.gguf'))).message, /file not found/);
      assert.match(userError(() => openGguf(tmp)).message, /directory/);
    });
  });
});

describe('shoal convert: fixtures as deepseek2 GGUF', () => {
  for (const src of bf16Fixtures) {
    it(`${basename(src)}: bf16 GGUF passes golden at the normal tolerance (${GOLDEN_TOLERANCE})`, async () => {
      const { dir } = ggufFixture(src, 'bf16');
      const r = await runGolden(dir, new CpuBackend());
      assert.ok(r.pass, summary(r));
      assert.deepEqual(r.comparisons.map((c) => c.name), ['prefill', 'decode'], 'the MTP layers are left out, as llama.cpp does');
    });
  }

  it('an FP8 checkpoint as bf16 GGUF computes exactly what the FP8 checkpoint does in bf16', async () => {
    // bf16 cannot hold e4m3 x block scale exactly, so this checks the file against the same
    // rounding done on load (a backend without fp8 gets bf16), not against the golden logits.
    const src = fixture('deepseek-v3-tiny-fp8');
    const { file } = ggufFixture(src, 'bf16');
    class Bf16Only extends CpuBackend {
      override supportsFormat(f: WeightFormat): boolean {
        return f === 'bf16' || f === 'f32';
      }
    }
    const notes: string[] = [];
    const ckpt = openCheckpoint(src);
    const g = openGgufModel(file);
    try {
      const a = DeepseekModel.load(ckpt, new Bf16Only(), { log: (l) => notes.push(l) });
      const b = DeepseekModel.load(g, new CpuBackend());
      assert.equal(notes.length, 1);
      assert.match(notes[0], /does not compute on fp8_e4m3_block weights; converting them to bf16/);
      const tokens = Int32Array.from([5, 17, 300, 42, 9]);
      const logits = async (m: DeepseekModel) => {
        const cache = m.createCache(4, 16);
        const h = await m.forward({ tokens, positions: Int32Array.from([0, 1, 2, 3, 4]), seqIndex: new Int32Array(5), blockTables: [Int32Array.from([0, 1])] }, cache);
        return m.placement.backendFor(0).read(m.logits(h));
      };
      const [la, lb] = [await logits(a), await logits(b)];
      let d = 0;
      for (let i = 0; i < la.length; i++) d = Math.max(d, Math.abs(la[i] - lb[i]));
      assert.ok(d <= 1e-5, `max |diff| ${d}`);
    } finally {
      ckpt.tensors.close();
      g.close();
    }
  });

  for (const src of fixtures) {
    it(`${basename(src)}: q8_0 GGUF and --quantize q8_0 stay within the documented tolerance`, async () => {
      const tol = src.endsWith('demo') ? Q8_TOLERANCE.trained : Q8_TOLERANCE.random;
      const { dir } = ggufFixture(src, 'q8_0');
      for (const r of [await runGolden(dir, new CpuBackend(), 10), await runGolden(src, new CpuBackend(), 10, { quantize: 'q8_0' })]) {
        for (const c of r.comparisons) {
          assert.ok(c.maxAbsDiff <= tol.maxAbsDiff && c.rows - c.argmaxAgree <= tol.argmaxMisses, `${r.dir}: ${summary(r)}`);
        }
      }
    });
  }

  it('writes the tensors and metadata current llama.cpp loads for deepseek2', () => {
    const { file } = ggufFixture(fixture('deepseek-v3-tiny'), 'q8_0');
    const f = openGguf(file);
    try {
      assert.equal(f.string('general.architecture'), 'deepseek2');
      assert.equal(f.number('general.file_type'), 7);
      assert.equal(f.number('deepseek2.attention.head_count_kv'), 1);
      assert.equal(f.number('deepseek2.attention.key_length'), 64 + 16);
      assert.equal(f.number('deepseek2.attention.value_length'), 64);
      assert.equal(f.number('deepseek2.attention.key_length_mla'), 48);
      assert.equal(f.number('deepseek2.attention.value_length_mla'), 32);
      assert.equal(f.number('deepseek2.expert_gating_func'), 2);
      assert.equal(f.number('deepseek2.expert_group_count'), 4);
      assert.ok(Math.abs(f.number('deepseek2.rope.scaling.yarn_log_multiplier', true) - 0.1) < 1e-7);
      assert.equal(f.string('tokenizer.ggml.pre'), 'deepseek-v3');
      assert.deepEqual(f.info('blk.1.attn_k_b.weight').ne, [32, 64, 4]);
      assert.deepEqual(f.info('blk.1.attn_v_b.weight').ne, [64, 32, 4]);
      assert.deepEqual(f.info('blk.1.ffn_gate_exps.weight').ne, [256, 128, 16]);
      assert.equal(f.info('blk.1.ffn_gate_exps.weight').typeName, 'Q8_0');
      assert.equal(f.info('blk.1.ffn_gate_inp.weight').typeName, 'F32');
      assert.equal(f.info('blk.1.exp_probs_b.bias').typeName, 'F32');
      assert.equal(f.info('blk.0.attn_norm.weight').typeName, 'F32');
      assert.ok(!f.has('blk.3.attn_norm.weight') && !f.has('blk.1.attn_kv_b.weight'));
      assert.equal(f.number('deepseek2.block_count'), 3);
    } finally {
      f.close();
    }
  });

  it('reads the older layout (attn_kv_b, head sizes in key_length/value_length)', async () => {
    const { file } = ggufFixture(fixture('deepseek-v3-tiny'), 'bf16');
    const g = openGgufModel(file);
    const legacyDir = join(tmp, 'legacy');
    mkdirSync(legacyDir, { recursive: true });
    for (const n of ['golden.json', 'golden.safetensors']) copyFileSync(fixture(`deepseek-v3-tiny/${n}`), join(legacyDir, n));
    try {
      const cfg = g.cfg;
      const md: GgufMetadata = [...g.file.metadata.entries()].filter(([k]) => !k.endsWith('_mla'));
      for (const e of md) {
        if (e[0] === 'deepseek2.attention.key_length') e[1] = kv.u32(cfg.qkNopeHeadDim + cfg.qkRopeHeadDim);
        if (e[0] === 'deepseek2.attention.value_length') e[1] = kv.u32(cfg.vHeadDim);
      }
      const out: GgufTensorToWrite[] = [];
      for (const t of g.file.tensors.values()) {
        const m = /^blk\.(\d+)\.attn_k_b\.weight$/.exec(t.name);
        if (m) {
          const kvb = g.weights.read(`model.layers.${m[1]}.self_attn.kv_b_proj.weight`, [cfg.numAttentionHeads * (cfg.qkNopeHeadDim + cfg.vHeadDim), cfg.kvLoraRank]);
          assert.equal(kvb.format, 'bf16', 'bf16 halves are joined without decoding');
          out.push(bytesTensor(`blk.${m[1]}.attn_kv_b.weight`, GGML.BF16, [kvb.cols, kvb.rows], new Uint8Array(kvb.data.buffer, kvb.data.byteOffset, kvb.data.byteLength)));
        } else if (!t.name.endsWith('attn_v_b.weight')) out.push(bytesTensor(t.name, t.type, t.ne, g.file.read(t.name)));
      }
      writeGguf(join(legacyDir, 'model.gguf'), md, out);
    } finally {
      g.close();
    }
    const r = await runGolden(legacyDir, new CpuBackend());
    assert.ok(r.pass, summary(r));
  });

  it('q8_0 attn_k_b/attn_v_b are joined into an exact f32 kv_b; an expert is its slice of the stacked tensor, read alone', () => {
    const { file } = ggufFixture(fixture('deepseek-v3-tiny'), 'q8_0');
    const g = openGgufModel(file);
    try {
      const w = g.weights as GgufWeights;
      const kvbName = 'model.layers.1.self_attn.kv_b_proj.weight';
      const kvb = w.read(kvbName, [4 * 64, 64]);
      assert.equal(kvb.format, 'f32');
      assert.equal(w.storedFormat(kvbName, [4 * 64, 64]), null, 'built from k_b and v_b: no bytes to copy as they are');
      const name = 'model.layers.1.mlp.experts.5.gate_proj.weight';
      const per = 128 * 8 * 34;
      const e5 = w.read(name, [128, 256]);
      assert.equal(e5.format, 'q8_0');
      assert.equal(e5.data.buffer.byteLength, per, 'nothing but its own packed bytes');
      const stacked = g.file.read('blk.1.ffn_gate_exps.weight');
      assert.deepEqual(e5.data, stacked.subarray(5 * per, 6 * per));
      // readInto: any range of it, into memory the caller holds.
      assert.equal(w.storedFormat(name, [128, 256]), 'q8_0');
      const rows = new Uint8Array(2 * 8 * 34);
      w.readInto(name, [128, 256], rows, 3 * 8 * 34);
      assert.deepEqual(rows, stacked.subarray(5 * per + 3 * 8 * 34, 5 * per + 5 * 8 * 34));
      assert.throws(() => w.readInto(name, [128, 256], rows, per - 8 * 34), /outside/);
    } finally {
      g.close();
    }
  });

  it('a tensor type shoal cannot compute on is named', () => {
    const { file } = ggufFixture(fixture('deepseek-v3-tiny'), 'bf16');
    const b = readFileSync(file);
    const name = 'token_embd.weight';
    const o = b.indexOf(Buffer.from(name)) + name.length;
    b.writeUInt32LE(13, o + 4 + 16); // Q5_K: 176 bytes per 256 values fits in the bf16 tensor's place
    const bad = join(tmp, 'q5k.gguf');
    writeFileSync(bad, b);
    const g = openGgufModel(bad);
    try {
      const e = userError(() => DeepseekModel.load(g, new CpuBackend()));
      assert.match(e.message, /tensor "token_embd.weight": type Q5_K is not one shoal computes on/);
      assert.ok(e.message.includes(bad));
    } finally {
      g.close();
    }
  });

  it('metadata of another architecture is refused by name', () => {
    const p = join(tmp, 'llama.gguf');
    writeGguf(p, [['general.architecture', kv.str('llama')]], []);
    assert.match(userError(() => openGgufModel(p)).message, /architecture "llama" is not deepseek2/);
    const q = join(tmp, 'gemma.gguf');
    writeGguf(q, [['general.architecture', kv.str('gemma')]], []);
    assert.match(userError(() => openModelPath(q)).message, /architecture "gemma" is not supported \(supported: deepseek2, llama, qwen2\)/);
  });
});

describe('shoal convert (command line)', () => {
  const cli = async (...args: string[]) => {
    const program = new Command().exitOverride();
    registerConvert(program);
    const out: string[] = [];
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string) => { out.push(String(chunk)); return true; }) as typeof process.stdout.write;
    try {
      await program.parseAsync(['node', 'shoal', 'convert', ...args]);
    } finally {
      process.stdout.write = write;
    }
    return out.join('');
  };

  it('writes the file and says what it wrote', async () => {
    const file = join(tmp, 'cli-q8.gguf');
    const text = await cli('--model', fixture('deepseek-v2-lite-tiny'), '--out', file, '--type', 'q8_0');
    assert.match(text, /cli-q8\.gguf: 44 tensors \(29 q8_0, 12 f32, 3 bf16\), 1\.91 MiB/);
    const g = openGgufModel(file);
    assert.equal(g.cfg.architecture, 'DeepseekV2ForCausalLM');
    g.close();
  });

  it('bad input is a UserError naming the flag or folder', async () => {
    await assert.rejects(cli('--model', fixture('deepseek-v2-lite-tiny'), '--out', join(tmp, 'x.gguf'), '--type', 'q5_k'), (e: Error) => isUserError(e) && /--type: unknown type "q5_k"/.test(e.message));
    await assert.rejects(cli('--model', join(tmp, 'nowhere'), '--out', join(tmp, 'x.gguf')), (e: Error) => isUserError(e) && /model folder not found/.test(e.message));
    await assert.rejects(cli('--model', fixture('deepseek-v2-lite-tiny'), '--out', join(tmp, 'no-such-dir', 'x.gguf')), (e: Error) => isUserError(e) && /cannot write/.test(e.message));
  });
});

describe('the tokenizer inside a GGUF', () => {
  for (const src of [fixture('deepseek-v3-tiny'), join(repoRoot, 'models/demo')]) {
    it(`${basename(src)}: same ids, text and chat template as tokenizer.json`, async () => {
      const { file } = ggufFixture(src, 'bf16');
      const hf = await loadTokenizer(src);
      const f = openGguf(file);
      const gg = tokenizerFromGguf(f);
      f.close();
      const texts = ['Hello world', 'The Lord is my shepherd; I shall not want. 1234567', '  spaces\n\nnew\tlines  ', '中文テスト and émojis 🚀',
        '<｜User｜>hi<｜Assistant｜><think>ok</think>', 'x<｜end▁of▁sentence｜>y'];
      for (const t of texts) {
        assert.deepEqual(gg.encode(t), hf.encode(t), t);
        assert.deepEqual(gg.encode(t, { addSpecialTokens: false }), hf.encode(t, { addSpecialTokens: false }), t);
        const ids = hf.encode(t);
        assert.equal(gg.decode(ids), hf.decode(ids), `decode ${t}`);
      }
      assert.equal(gg.bosTokenId, hf.bosTokenId);
      assert.equal(gg.eosTokenId, hf.eosTokenId);
      const chat = [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }];
      assert.equal(gg.applyChatTemplate(chat, { addGenerationPrompt: true }), hf.applyChatTemplate(chat, { addGenerationPrompt: true }));
    });
  }
});

describe('engine on a GGUF file', () => {
  it('generates the same greedy tokens from a bf16 GGUF as from the checkpoint', async () => {
    const src = fixture('deepseek-v3-tiny');
    const { file } = ggufFixture(src, 'bf16');
    const run = async (path: string) => {
      const e = await Engine.load(path, { backend: new CpuBackend(), maxContext: 64 });
      try {
        const it = e.generate(e.tokenizer.encode('The Lord is'), { maxTokens: 8, sampling: { temperature: 0 }, ignoreEos: true });
        let r = await it.next();
        while (!r.done) r = await it.next();
        return r.value.tokenIds;
      } finally {
        await e.close();
      }
    };
    const a = await run(src), b = await run(file);
    assert.equal(a.length, 8);
    assert.deepEqual(b, a);
  });

  it('--quantize q4_k packs on load (q4_k projections, q6_k head, q8_0 embedding)', async () => {
    const e = await Engine.load(fixture('deepseek-v3-tiny'), { backend: new CpuBackend(), maxContext: 64, quantize: 'q4_k' });
    try {
      const formats = new Set<string>();
      for (const l of (e.model as DeepseekModel).layers) if (l.mlp.kind === 'moe') for (const x of l.mlp.experts) formats.add(x.gate.format);
      assert.deepEqual([...formats], ['q4_k']);
      assert.equal((e.model as unknown as { lmHead: { format: string } }).lmHead.format, 'q6_k');
      assert.equal((e.model as unknown as { embed: { format: string } }).embed.format, 'q8_0');
    } finally {
      await e.close();
    }
  });
});
