/**
 * The CLI as a user runs it: `node bin/shoal.js ...` in a child process.
 * Bad input must give exactly one line `shoal: ...` naming the file/tensor/field,
 * exit code 1, and no stack trace.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../src/formats/safetensors.js';
import { assertUserError, fixture, listFixtures, repoRoot, shoal } from './helpers.js';

/** Every folder these tests write lives under one temporary folder, removed when the file's tests end (pass or fail). */
const tmp = mkdtempSync(join(tmpdir(), 'shoal-cli-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A writable copy of a fixture folder. */
function copyFixture(name: string): string {
  const dir = mkdtempSync(join(tmp, `${name}-`));
  cpSync(fixture(name), dir, { recursive: true });
  for (const f of readdirSync(dir)) chmodSync(join(dir, f), 0o644);
  return dir;
}

/** Rewrites a single-file checkpoint with `edit` applied to its tensors. */
function rewriteTensors(dir: string, edit: (ts: TensorToWrite[]) => TensorToWrite[]) {
  const path = join(dir, 'model.safetensors');
  const f = openSafetensors(path);
  const ts: TensorToWrite[] = f.infos().map((i) => ({ name: i.name, dtype: i.dtype, shape: i.shape, data: f.read(i.name) }));
  f.close();
  writeSafetensors(path, edit(ts));
}

function editConfig(dir: string, edit: (c: Record<string, unknown>) => void) {
  const p = join(dir, 'config.json');
  const c = JSON.parse(readFileSync(p, 'utf8'));
  edit(c);
  writeFileSync(p, JSON.stringify(c));
}

describe('shoal golden', () => {
  for (const dir of listFixtures()) {
    it(`passes on ${dir.split('/').pop()}`, () => {
      const r = shoal('golden', dir);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /prefill .* ok/);
      assert.match(r.stdout, /decode .* ok/);
      assert.match(r.stdout, /^pass/m);
    });
  }

  it('fails (exit 1) when one golden logit is off by 0.01', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    const g = openSafetensors(join(dir, 'golden.safetensors'));
    const ts: TensorToWrite[] = g.infos().map((i) => ({ name: i.name, dtype: i.dtype, shape: i.shape, data: g.read(i.name) }));
    g.close();
    const pre = ts.find((t) => t.name === 'decode_logits')!;
    const v = new Float32Array((pre.data as Uint8Array).buffer.slice(0));
    v[5] += 0.01;
    pre.data = v;
    writeSafetensors(join(dir, 'golden.safetensors'), ts);
    const r = shoal('golden', dir);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /decode .* FAIL/);
  });
});

describe('shoal inspect / tokenize / run', () => {
  it('inspect reports architecture, experts, parameters, KV bytes and dtypes', () => {
    const r = shoal('inspect', '--model', fixture('deepseek-v3-tiny-fp8'));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /DeepseekV3ForCausalLM/);
    assert.match(r.stdout, /16 routed, 1 shared, 4 per token/);
    assert.match(r.stdout, /active per token/);
    assert.match(r.stdout, /KV cache \/ token\s+480 B latent/);
    assert.match(r.stdout, /F8_E4M3/);
  });

  it('tokenize prints ids as JSON, BOS first', () => {
    const r = shoal('tokenize', '--model', fixture('deepseek-v3-tiny'), '--text', 'hello world');
    assert.equal(r.code, 0, r.stderr);
    const ids = JSON.parse(r.stdout);
    assert.ok(Array.isArray(ids) && ids[0] === 0 && ids.length > 1);
  });

  it('tokenize reads the tokenizer embedded in a .gguf: same ids as the folder it was converted from', () => {
    const out = join(mkdtempSync(join(tmp, 'tok-')), 'tiny.gguf');
    const c = shoal('convert', '--model', fixture('deepseek-v3-tiny'), '--out', out, '--type', 'bf16');
    assert.equal(c.code, 0, c.stderr);
    for (const args of [['--text', 'hello world, 123'], ['--text', 'hi', '--chat']]) {
      const fromDir = shoal('tokenize', '--model', fixture('deepseek-v3-tiny'), ...args);
      const fromGguf = shoal('tokenize', '--model', out, ...args);
      assert.equal(fromGguf.code, 0, fromGguf.stderr);
      assert.deepEqual(JSON.parse(fromGguf.stdout), JSON.parse(fromDir.stdout), args.join(' '));
    }
  });

  it('run --speculative mtp on the demo model: same greedy text, acceptance above zero', () => {
    const demo = join(repoRoot, 'models/demo');
    const args = ['run', '--model', demo, '--prompt', 'And God said', '--max-tokens', '30', '--temperature', '0', '--ignore-eos'];
    const plain = shoal(...args);
    const spec = shoal(...args, '--speculative', 'mtp');
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(spec.code, 0, spec.stderr);
    assert.equal(spec.stdout, plain.stdout);
    assert.match(plain.stdout, /[a-z]+ [a-z]+/i, 'the demo model writes words');
    const m = /MTP acceptance: ([\d.]+)%/.exec(spec.stderr);
    assert.ok(m && Number(m[1]) > 0, spec.stderr);
  });

  it('run streams text and prints token counts and speeds', () => {
    const r = shoal('run', '--model', fixture('deepseek-v3-tiny'), '--prompt', 'hello world', '--max-tokens', '5', '--ignore-eos');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /prompt tokens: \d+, generated tokens: 5 \(length\), prefill: [\d.]+ tok\/s, decode: [\d.]+ tok\/s/);
  });
});

describe('bad input: one clear error line, exit 1, no stack trace', () => {
  it('missing model folder', () => {
    assertUserError(shoal('inspect', '--model', '/nonexistent/model'), /\/nonexistent\/model/);
  });

  it('missing config.json field', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    editConfig(dir, (c) => { delete c.kv_lora_rank; });
    assertUserError(shoal('inspect', '--model', dir), /kv_lora_rank/);
  });

  it('unsupported architecture', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    editConfig(dir, (c) => { c.architectures = ['LlamaForCausalLM']; });
    assertUserError(shoal('inspect', '--model', dir), /unsupported architecture "LlamaForCausalLM"/);
  });

  it('truncated safetensors', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    const p = join(dir, 'model.safetensors');
    truncateSync(p, Math.floor(statSync(p).size / 2));
    assertUserError(shoal('run', '--model', dir, '--prompt', 'hi'), /model\.safetensors/);
  });

  it('header offsets out of range', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    const p = join(dir, 'model.safetensors');
    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    const first = Object.keys(header).find((k) => k !== '__metadata__')!;
    header[first].data_offsets = [buf.length, buf.length + 4];
    writeRawSafetensors(p, header, buf.subarray(8 + n));
    assertUserError(shoal('inspect', '--model', dir), /model\.safetensors/);
  });

  it('overlapping tensors', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    const p = join(dir, 'model.safetensors');
    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    const names = Object.keys(header).filter((k) => k !== '__metadata__' && header[k].shape.length === 1);
    header[names[1]].data_offsets = header[names[0]].data_offsets;
    header[names[1]].shape = header[names[0]].shape;
    writeRawSafetensors(p, header, buf.subarray(8 + n));
    assertUserError(shoal('inspect', '--model', dir), /overlap/);
  });

  it('unknown dtype', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    const p = join(dir, 'model.safetensors');
    const buf = readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
    header['model.norm.weight'].dtype = 'Q7_WEIRD';
    writeRawSafetensors(p, header, buf.subarray(8 + n));
    assertUserError(shoal('inspect', '--model', dir), /Q7_WEIRD/);
  });

  it('wrong tensor shape', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    rewriteTensors(dir, (ts) => ts.map((t) => (t.name === 'model.layers.1.self_attn.o_proj.weight'
      ? { ...t, shape: [96, 192] } : t)));
    assertUserError(shoal('run', '--model', dir, '--prompt', 'hi'), /model\.layers\.1\.self_attn\.o_proj\.weight has shape \[96,192\], expected \[192,96\]/);
  });

  it('missing tensor', () => {
    const dir = copyFixture('deepseek-v2-lite-tiny');
    rewriteTensors(dir, (ts) => ts.filter((t) => t.name !== 'model.layers.2.mlp.experts.7.up_proj.weight'));
    assertUserError(shoal('golden', dir), /model\.layers\.2\.mlp\.experts\.7\.up_proj\.weight/);
  });

  it('prompt longer than the context', () => {
    assertUserError(shoal('run', '--model', fixture('deepseek-v2-lite-tiny'), '--max-context', '8', '--prompt', 'one two three four five six seven eight nine ten'), /context/);
  });

  it('bad sampling value names the flag', () => {
    assertUserError(shoal('run', '--model', fixture('deepseek-v2-lite-tiny'), '--prompt', 'x', '--top-p', '1.5'), /top_p/);
  });

  it('unknown device', () => {
    assertUserError(shoal('run', '--model', fixture('deepseek-v2-lite-tiny'), '--prompt', 'x', '--device', 'tpu'), /tpu/);
  });
});

/** Writes a safetensors file from a header object and data bytes, as given (no validation). */
function writeRawSafetensors(path: string, header: unknown, data: Uint8Array) {
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, json, data]));
}
