/**
 * Tests for src/formats (safetensors reader/writer, checkpoint folders) and
 * src/models/config.ts (config.json validation), against the golden fixtures and
 * hand-made bad files.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { UserError } from '../src/errors.js';
import { openCheckpoint } from '../src/formats/checkpoint.js';
import {
  e4m3Table32,
  f16Table32,
  openSafetensors,
  toFloat32,
  writeSafetensors,
  type TensorToWrite,
} from '../src/formats/safetensors.js';
import { DTYPE_BYTES } from '../src/formats/types.js';
import { parseDeepseekConfig } from '../src/models/config.js';
import { fixture, listFixtures } from './helpers.js';

const V3 = fixture('deepseek-v3-tiny');
const V3_FP8 = fixture('deepseek-v3-tiny-fp8');
const V2 = fixture('deepseek-v2-lite-tiny');

let tmp = '';
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'shoal-formats-'));
});
after(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

let counter = 0;
/** A fresh path (or folder, when mkdir) inside the test's temp dir. */
function tmpPath(name: string, mkdir = false): string {
  const p = join(tmp, `${counter++}-${name}`);
  if (mkdir) mkdirSync(p);
  return p;
}

/** Asserts fn throws a UserError whose message contains every needle. */
function expectUserError(fn: () => unknown, ...needles: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof UserError, `expected a UserError, got ${String(e)}`);
    for (const n of needles) {
      assert.ok(e.message.includes(n), `message ${JSON.stringify(e.message)} should mention ${JSON.stringify(n)}`);
    }
    return true;
  });
}

/**
 * Writes a safetensors-like file by hand: 8-byte length (headerLen overrides the real
 * one), the header (a JSON value or raw text) and `data` bytes of zeros (or given bytes).
 */
function rawFile(path: string, header: unknown, data: number | Uint8Array = 0, headerLen?: bigint): string {
  const text = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLen ?? BigInt(text.byteLength));
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  writeFileSync(path, Buffer.concat([len, text, body]));
  return path;
}

/** Bytes [offset, offset+len) of a file, read independently of the code under test. */
function fileBytes(path: string, offset: number, len: number): Uint8Array {
  const fd = openSync(path, 'r');
  try {
    const out = new Uint8Array(len);
    readSync(fd, out, 0, len, offset);
    return out;
  } finally {
    closeSync(fd);
  }
}

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
}

// ---------------------------------------------------------------------------------------

describe('fixtures', () => {
  test('listFixtures finds the three golden folders', () => {
    assert.deepEqual(listFixtures().map((d) => basename(d)), ['deepseek-v2-lite-tiny', 'deepseek-v3-tiny', 'deepseek-v3-tiny-fp8']);
  });

  test('single-file BF16 checkpoint (V2-Lite)', () => {
    const ck = openCheckpoint(V2);
    try {
      assert.equal(ck.indexFile, null);
      assert.equal(ck.files.length, 1);
      assert.equal(ck.tensors.names().length, 83);
      assert.equal(ck.totalBytes, 3665568);
      assert.equal(ck.config['model_type'], 'deepseek_v2');
      const emb = ck.tensors.info('model.embed_tokens.weight');
      assert.equal(emb.dtype, 'BF16');
      assert.deepEqual(emb.shape, [777, 192]);
      assert.equal(emb.byteLength, 777 * 192 * 2);
      assert.equal(emb.file, join(V2, 'model.safetensors'));
      assert.ok(ck.tensors.names().every((n) => ck.tensors.info(n).dtype === 'BF16'));
      assert.equal(ck.files[0]!.metadata['format'], 'pt');
      // Known values (decoded independently with numpy).
      const norm = toFloat32(ck.tensors.info('model.norm.weight'), ck.tensors.read('model.norm.weight'));
      assert.equal(norm.length, 192);
      assert.deepEqual([...norm.subarray(0, 4)], [1.046875, 1.0859375, 0.9296875, 0.96484375]);
      const gate = ck.tensors.read('model.layers.1.mlp.gate.weight');
      assert.deepEqual([...toFloat32({ dtype: 'BF16' }, gate).subarray(0, 4)], [-0.59375, -0.2333984375, -0.2119140625, 0.0113525390625]);
    } finally {
      ck.tensors.close();
    }
  });

  test('sharded checkpoint with model.safetensors.index.json (V3)', () => {
    const ck = openCheckpoint(V3);
    try {
      assert.equal(ck.indexFile, join(V3, 'model.safetensors.index.json'));
      assert.deepEqual(ck.files.map((f) => basename(f.path)), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
      assert.equal(ck.tensors.names().length, 207);
      const index = readJson(join(V3, 'model.safetensors.index.json'));
      const weightMap = index['weight_map'] as Record<string, string>;
      assert.equal(Object.keys(weightMap).length, 207);
      for (const [name, shard] of Object.entries(weightMap)) {
        assert.equal(basename(ck.tensors.info(name).file), shard, name);
      }
      assert.equal(ck.totalBytes, (index['metadata'] as { total_size: number }).total_size);
      assert.deepEqual(ck.tensors.info('lm_head.weight').shape, [1000, 256]);
      assert.equal(ck.tensors.info('model.layers.1.mlp.gate.e_score_correction_bias').dtype, 'F32');
      expectUserError(() => ck.tensors.info('no.such.tensor'), 'no.such.tensor');
    } finally {
      ck.tensors.close();
    }
  });

  test('FP8 checkpoint with weight_scale_inv (V3 FP8)', () => {
    const ck = openCheckpoint(V3_FP8);
    try {
      assert.equal(ck.tensors.names().length, 383);
      const w = ck.tensors.info('model.layers.0.mlp.down_proj.weight');
      const s = ck.tensors.info('model.layers.0.mlp.down_proj.weight_scale_inv');
      assert.equal(w.dtype, 'F8_E4M3');
      assert.deepEqual(w.shape, [256, 512]);
      assert.equal(s.dtype, 'F32');
      assert.deepEqual(s.shape, [2, 4]);
      const vals = toFloat32(w, ck.tensors.read(w.name));
      assert.equal(vals.length, 256 * 512);
      assert.ok(vals.every((v) => Number.isFinite(v) && Math.abs(v) <= 448));
      const scales = toFloat32(s, ck.tensors.read(s.name));
      assert.ok(scales.every((v) => Number.isFinite(v) && v > 0));
      const cfg = parseDeepseekConfig(ck.config, join(V3_FP8, 'config.json'));
      assert.deepEqual(cfg.weightBlockSize, [128, 128]);
    } finally {
      ck.tensors.close();
    }
  });

  test('every fixture config parses', () => {
    const v3 = parseDeepseekConfig(readJson(join(V3, 'config.json')), 'config.json');
    assert.equal(v3.architecture, 'DeepseekV3ForCausalLM');
    assert.equal(v3.qLoraRank, 192);
    assert.equal(v3.scoringFunc, 'sigmoid');
    assert.equal(v3.topkMethod, 'noaux_tc');
    assert.equal(v3.nGroup, 4);
    assert.equal(v3.topkGroup, 2);
    assert.equal(v3.normTopkProb, true);
    assert.equal(v3.routedScalingFactor, 2.5);
    assert.equal(v3.numNextnPredictLayers, 1);
    assert.equal(v3.weightBlockSize, null);
    assert.deepEqual(v3.eosTokenIds, [1]);
    assert.deepEqual(v3.ropeScaling, {
      type: 'yarn', factor: 40, originalMaxPositionEmbeddings: 128, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 1,
    });
    const v2 = parseDeepseekConfig(readJson(join(V2, 'config.json')), 'config.json');
    assert.equal(v2.architecture, 'DeepseekV2ForCausalLM');
    assert.equal(v2.qLoraRank, null);
    assert.equal(v2.scoringFunc, 'softmax');
    assert.equal(v2.topkMethod, 'greedy');
    assert.equal(v2.nSharedExperts, 2);
    assert.equal(v2.normTopkProb, false);
    assert.equal(v2.ropeScaling?.mscale, 0.707);
    assert.equal(v2.numNextnPredictLayers, 0);
  });
});

// ---------------------------------------------------------------------------------------

describe('safetensors reader and writer', () => {
  test('a 600 GB checkpoint opens at once: only headers are read (sparse file)', () => {
    // Header for a 600 GB F8 tensor plus a small one after it; the file is sparse, so no disk is used.
    const big = 600 * 2 ** 30;
    const header = Buffer.from(JSON.stringify({
      'model.layers.0.mlp.experts.0.up_proj.weight': { dtype: 'F8_E4M3', shape: [big / 2 ** 15, 2 ** 15], data_offsets: [0, big] },
      'model.norm.weight': { dtype: 'F32', shape: [4], data_offsets: [big, big + 16] },
    }).padEnd(256, ' '));
    const path = tmpPath('huge.safetensors');
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    writeFileSync(path, Buffer.concat([len, header]));
    const fd = openSync(path, 'r+');
    try {
      // The last 16 bytes hold the small tensor's values.
      const tail = Buffer.from(new Float32Array([1, 2, 3, 4]).buffer);
      ftruncateSync(fd, 8 + header.length + big);
      writeSync(fd, tail, 0, 16, 8 + header.length + big);
    } finally {
      closeSync(fd);
    }
    const rssBefore = process.memoryUsage().rss;
    const f = openSafetensors(path);
    try {
      assert.equal(f.info('model.layers.0.mlp.experts.0.up_proj.weight').byteLength, big);
      assert.deepEqual([...toFloat32(f.info('model.norm.weight'), f.read('model.norm.weight'))], [1, 2, 3, 4]);
      assert.ok(process.memoryUsage().rss - rssBefore < 64 * 2 ** 20, 'opening read no tensor data');
    } finally {
      f.close();
      rmSync(path);
    }
  });

  test('lazy reads return the exact bytes, aligned, and survive a write/read round trip', () => {
    const src = openSafetensors(join(V3_FP8, 'model.safetensors'));
    const out = tmpPath('roundtrip.safetensors');
    try {
      const names = src.names().filter((n) => /layers\.0\.|lm_head|norm\.weight$/.test(n));
      assert.ok(names.length > 5);
      const tensors: TensorToWrite[] = names.map((n) => {
        const t = src.info(n);
        const bytes = src.read(n);
        assert.equal(bytes.byteOffset, 0, n);
        assert.equal(bytes.buffer.byteLength, t.byteLength, n);
        assert.deepEqual(bytes, fileBytes(t.file, t.offset, t.byteLength), n);
        return { name: n, dtype: t.dtype, shape: t.shape, data: bytes };
      });
      writeSafetensors(out, tensors, { format: 'pt', note: 'round trip' });
      const back = openSafetensors(out);
      try {
        assert.deepEqual(back.metadata, { format: 'pt', note: 'round trip' });
        assert.equal(back.dataStart % 8, 0, 'header padded to 8 bytes');
        assert.deepEqual(back.names().sort(), [...names].sort());
        for (const t of tensors) {
          const info = back.info(t.name);
          assert.equal(info.dtype, t.dtype);
          assert.deepEqual(info.shape, t.shape);
          assert.equal((info.offset - back.dataStart) % DTYPE_BYTES[info.dtype], 0, 'naturally aligned');
          assert.deepEqual(back.read(t.name), t.data, t.name);
        }
      } finally {
        back.close();
      }
    } finally {
      src.close();
    }
  });

  test('writer accepts typed arrays, scalars and empty tensors', () => {
    const p = tmpPath('typed.safetensors');
    const f32 = new Float32Array([1.5, -2, 3.25, 0]);
    const i64 = new BigInt64Array([1n, -2n, 3n]);
    writeSafetensors(p, [
      { name: 'a', dtype: 'F32', shape: [2, 2], data: f32 },
      { name: 'b', dtype: 'I64', shape: [3], data: i64 },
      { name: 'scalar', dtype: 'U8', shape: [], data: new Uint8Array([7]) },
      { name: 'empty', dtype: 'BF16', shape: [0, 4], data: new Uint16Array(0) },
    ]);
    const f = openSafetensors(p);
    try {
      assert.deepEqual(f.metadata, {});
      assert.deepEqual(toFloat32(f.info('a'), f.read('a')), f32);
      assert.deepEqual([...toFloat32(f.info('b'), f.read('b'))], [1, -2, 3]);
      assert.deepEqual([...f.read('scalar')], [7]);
      assert.equal(f.read('empty').byteLength, 0);
    } finally {
      f.close();
    }
    assert.throws(() => writeSafetensors(tmpPath('x'), [{ name: 'a', dtype: 'F32', shape: [3], data: f32 }]), /needs 12/);
  });

  test('close() releases the file; reads afterwards are a bug, not a user error', () => {
    const f = openSafetensors(join(V2, 'model.safetensors'));
    f.close();
    f.close(); // idempotent
    assert.throws(() => f.read('model.norm.weight'), (e: unknown) => e instanceof Error && !(e instanceof UserError));
  });

  test('toFloat32 decodes F16, BF16, E4M3 (incl. subnormals and NaN) and unaligned input', () => {
    const h = f16Table32();
    assert.equal(h[0x3c00], 1);
    assert.equal(h[0xc000], -2);
    assert.equal(h[0x7bff], 65504);
    assert.equal(h[0x0001], 2 ** -24);
    assert.equal(h[0x03ff], 1023 * 2 ** -24);
    assert.equal(h[0x7c00], Infinity);
    assert.equal(h[0xfc00], -Infinity);
    assert.ok(Number.isNaN(h[0x7e00]!));
    assert.ok(Object.is(h[0x8000], -0));

    const e = e4m3Table32();
    assert.equal(e[0x38], 1);
    assert.equal(e[0x7e], 448);
    assert.equal(e[0xfe], -448);
    assert.equal(e[0x08], 2 ** -6); // smallest normal
    assert.equal(e[0x01], 2 ** -9); // smallest subnormal
    assert.equal(e[0x07], 7 * 2 ** -9); // largest subnormal
    assert.equal(e[0x40], 2);
    assert.equal(e[0x78], 256); // exponent 15 is finite in e4m3fn
    assert.ok(Number.isNaN(e[0x7f]!));
    assert.ok(Number.isNaN(e[0xff]!));
    assert.ok(Object.is(e[0x80], -0));
    for (let b = 1; b < 0x7f; b++) assert.ok(e[b]! > e[b - 1]!, `e4m3 monotonic at ${b}`);

    // Unaligned views must be copied, not rejected.
    const raw = new Uint8Array(9);
    new DataView(raw.buffer).setUint16(1, 0x3f80, true); // BF16 1.0 at odd offset
    new DataView(raw.buffer).setUint16(3, 0xc040, true); // BF16 -3.0
    assert.deepEqual([...toFloat32({ dtype: 'BF16' }, raw.subarray(1, 5))], [1, -3]);
    new DataView(raw.buffer).setFloat32(1, 6.5, true);
    new DataView(raw.buffer).setFloat32(5, -0.25, true);
    assert.deepEqual([...toFloat32({ dtype: 'F32' }, raw.subarray(1, 9))], [6.5, -0.25]);
    assert.deepEqual([...toFloat32({ dtype: 'F16' }, new Uint8Array([0x00, 0x3c, 0x00, 0xc0]))], [1, -2]);
    assert.deepEqual([...toFloat32({ dtype: 'F8_E4M3' }, new Uint8Array([0x38, 0xb8, 0x01]))], [1, -1, 2 ** -9]);
    assert.throws(() => toFloat32({ dtype: 'F32', name: 'x' }, new Uint8Array(6)), /x/);
  });
});

// ---------------------------------------------------------------------------------------

describe('bad safetensors files', () => {
  const t = (dtype: string, shape: number[], offs: number[]) => ({ dtype, shape, data_offsets: offs });

  test('missing file, directory, too short', () => {
    const missing = join(tmp, 'nope.safetensors');
    expectUserError(() => openSafetensors(missing), missing, 'not found');
    expectUserError(() => openSafetensors(tmp), tmp, 'directory');
    const short = tmpPath('short.safetensors');
    writeFileSync(short, Buffer.from([1, 2, 3]));
    expectUserError(() => openSafetensors(short), short, '3 bytes');
  });

  test('fixture cut in half', () => {
    const src = join(V2, 'model.safetensors');
    const half = tmpPath('half.safetensors');
    const size = statSync(src).size;
    writeFileSync(half, fileBytes(src, 0, Math.floor(size / 2)));
    expectUserError(() => openSafetensors(half), half, 'tensor "', 'past the end');
    // Cut inside the header: the header length itself runs past EOF.
    const tiny = tmpPath('tiny.safetensors');
    writeFileSync(tiny, fileBytes(src, 0, 100));
    expectUserError(() => openSafetensors(tiny), tiny, 'header length');
  });

  test('header length past EOF or absurd', () => {
    const p = rawFile(tmpPath('len.safetensors'), {}, 0, 1000n);
    expectUserError(() => openSafetensors(p), p, 'header length 1000', 'past the end');
    const q = rawFile(tmpPath('huge.safetensors'), {}, 0, 1n << 62n);
    expectUserError(() => openSafetensors(q), q, 'exceeds');
  });

  test('header not JSON, not an object, bad metadata', () => {
    const p = rawFile(tmpPath('badjson.safetensors'), '{"a": {"dtype": ');
    expectUserError(() => openSafetensors(p), p, 'not valid JSON');
    const q = rawFile(tmpPath('array.safetensors'), [1, 2]);
    expectUserError(() => openSafetensors(q), q, 'JSON object');
    const r = rawFile(tmpPath('meta.safetensors'), { __metadata__: { format: 5 } });
    expectUserError(() => openSafetensors(r), r, '__metadata__', 'format');
    const s = rawFile(tmpPath('utf8.safetensors'), Buffer.from([0x7b, 0xff, 0x7d]).toString('latin1'));
    expectUserError(() => openSafetensors(s), s, 'not valid JSON');
  });

  test('unknown dtype names the tensor', () => {
    const p = rawFile(tmpPath('dtype.safetensors'), { 'my.weight': t('F4', [2], [0, 1]) }, 1);
    expectUserError(() => openSafetensors(p), p, 'my.weight', 'unknown dtype "F4"');
    const q = rawFile(tmpPath('nodtype.safetensors'), { 'my.weight': { shape: [1], data_offsets: [0, 1] } }, 1);
    expectUserError(() => openSafetensors(q), q, 'my.weight', 'dtype');
  });

  test('bad shape and data_offsets', () => {
    const a = rawFile(tmpPath('shape.safetensors'), { w: t('U8', [-1], [0, 1]) }, 1);
    expectUserError(() => openSafetensors(a), a, 'tensor "w"', 'shape');
    const b = rawFile(tmpPath('shape2.safetensors'), { w: t('U8', [1.5] as number[], [0, 1]) }, 1);
    expectUserError(() => openSafetensors(b), b, 'tensor "w"', 'shape');
    const c = rawFile(tmpPath('offs.safetensors'), { w: t('U8', [1], [0]) }, 1);
    expectUserError(() => openSafetensors(c), c, 'tensor "w"', 'data_offsets');
    const d = rawFile(tmpPath('offs2.safetensors'), { w: t('U8', [0], [4, 2]) }, 4);
    expectUserError(() => openSafetensors(d), d, 'tensor "w"', 'begin > end');
  });

  test('offsets out of range', () => {
    const p = rawFile(tmpPath('range.safetensors'), { ok: t('F32', [2], [0, 8]), far: t('F32', [4], [8, 24]) }, 16);
    expectUserError(() => openSafetensors(p), p, 'tensor "far"', 'past the end of the data section (16 bytes)');
  });

  test('overlapping offsets', () => {
    const p = rawFile(tmpPath('overlap.safetensors'), { a: t('F32', [4], [0, 16]), b: t('F32', [2], [8, 16]) }, 16);
    expectUserError(() => openSafetensors(p), p, '"a"', '"b"', 'overlapping');
    // Touching ranges and empty tensors are fine.
    const q = rawFile(tmpPath('touch.safetensors'), { a: t('F32', [2], [0, 8]), b: t('F32', [2], [8, 16]), e: t('F32', [0], [4, 4]) }, 16);
    openSafetensors(q).close();
  });

  test('shape x dtype size differs from the byte range', () => {
    const p = rawFile(tmpPath('size.safetensors'), { 'x.weight': t('BF16', [3, 4], [0, 12]) }, 12);
    expectUserError(() => openSafetensors(p), p, 'x.weight', '12 bytes', 'needs 24');
  });
});

// ---------------------------------------------------------------------------------------

describe('bad checkpoint folders', () => {
  /** A folder with the V3 fixture's config, index and (symlinked) shards. */
  function shardedCopy(): string {
    const dir = tmpPath('ck', true);
    copyFileSync(join(V3, 'config.json'), join(dir, 'config.json'));
    copyFileSync(join(V3, 'model.safetensors.index.json'), join(dir, 'model.safetensors.index.json'));
    for (const s of ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) {
      symlinkSync(join(V3, s), join(dir, s));
    }
    return dir;
  }

  test('the sharded copy itself opens', () => {
    const ck = openCheckpoint(shardedCopy());
    assert.equal(ck.tensors.names().length, 207);
    ck.tensors.close();
  });

  test('folder missing or not a folder', () => {
    const missing = join(tmp, 'no-such-model');
    expectUserError(() => openCheckpoint(missing), missing, 'not found');
    const file = rawFile(tmpPath('afile'), {});
    expectUserError(() => openCheckpoint(file), file, 'not a directory');
  });

  test('missing or invalid config.json', () => {
    const dir = tmpPath('noconfig', true);
    expectUserError(() => openCheckpoint(dir), join(dir, 'config.json'), 'not found');
    writeFileSync(join(dir, 'config.json'), '{"architectures": [');
    expectUserError(() => openCheckpoint(dir), join(dir, 'config.json'), 'not valid JSON');
    writeFileSync(join(dir, 'config.json'), '[1]');
    expectUserError(() => openCheckpoint(dir), join(dir, 'config.json'), 'JSON object');
  });

  test('no weights at all; fallback to any *.safetensors', () => {
    const dir = tmpPath('noweights', true);
    writeFileSync(join(dir, 'config.json'), '{}');
    expectUserError(() => openCheckpoint(dir), 'no .safetensors weights found in', dir);
    writeSafetensors(join(dir, 'b.safetensors'), [{ name: 'y', dtype: 'U8', shape: [1], data: new Uint8Array(1) }]);
    writeSafetensors(join(dir, 'a.safetensors'), [{ name: 'x', dtype: 'U8', shape: [2], data: new Uint8Array(2) }]);
    const ck = openCheckpoint(dir);
    assert.deepEqual(ck.files.map((f) => basename(f.path)), ['a.safetensors', 'b.safetensors']);
    assert.equal(ck.totalBytes, 3);
    ck.tensors.close();
    // The same tensor in two files is ambiguous.
    writeSafetensors(join(dir, 'c.safetensors'), [{ name: 'x', dtype: 'U8', shape: [2], data: new Uint8Array(2) }]);
    expectUserError(() => openCheckpoint(dir), 'tensor "x"', 'a.safetensors', 'c.safetensors');
  });

  test('an invalid shard is reported with its file', () => {
    const dir = tmpPath('badshard', true);
    writeFileSync(join(dir, 'config.json'), '{}');
    const p = rawFile(join(dir, 'model.safetensors'), { w: t4() }, 0);
    expectUserError(() => openCheckpoint(dir), p, 'tensor "w"');
    function t4() {
      return { dtype: 'F32', shape: [1], data_offsets: [0, 4] };
    }
  });

  test('missing shard', () => {
    const dir = shardedCopy();
    rmSync(join(dir, 'model-00002-of-00002.safetensors'));
    expectUserError(() => openCheckpoint(dir), 'model-00002-of-00002.safetensors', 'not found');
  });

  test('index naming a tensor not in its shard', () => {
    const dir = shardedCopy();
    const indexPath = join(dir, 'model.safetensors.index.json');
    const index = readJson(indexPath);
    const wm = index['weight_map'] as Record<string, string>;
    wm['lm_head.weight'] = 'model-00002-of-00002.safetensors'; // really in shard 1
    writeFileSync(indexPath, JSON.stringify(index));
    expectUserError(() => openCheckpoint(dir), 'lm_head.weight', 'model-00002-of-00002.safetensors', 'no such tensor');
    wm['lm_head.weight'] = 'model-00001-of-00002.safetensors';
    wm['made.up.weight'] = 'model-00001-of-00002.safetensors';
    writeFileSync(indexPath, JSON.stringify(index));
    expectUserError(() => openCheckpoint(dir), 'made.up.weight', 'model-00001-of-00002.safetensors');
  });

  test('bad index files', () => {
    const dir = shardedCopy();
    const indexPath = join(dir, 'model.safetensors.index.json');
    writeFileSync(indexPath, '{"weight_map": {');
    expectUserError(() => openCheckpoint(dir), indexPath, 'not valid JSON');
    writeFileSync(indexPath, '{"metadata": {}}');
    expectUserError(() => openCheckpoint(dir), indexPath, 'weight_map');
    writeFileSync(indexPath, '{"weight_map": ["a"]}');
    expectUserError(() => openCheckpoint(dir), indexPath, 'weight_map');
    writeFileSync(indexPath, '{"weight_map": {"a": 3}}');
    expectUserError(() => openCheckpoint(dir), indexPath, 'tensor "a"');
    writeFileSync(indexPath, '{"weight_map": {"a": "../../etc/passwd"}}');
    expectUserError(() => openCheckpoint(dir), indexPath, 'outside the model folder');
  });
});

// ---------------------------------------------------------------------------------------

describe('parseDeepseekConfig', () => {
  const FILE = '/models/x/config.json';
  const v3 = () => readJson(join(V3, 'config.json'));
  const with_ = (over: Record<string, unknown>): Record<string, unknown> => {
    const c = v3();
    for (const [k, v] of Object.entries(over)) {
      if (v === undefined) delete c[k];
      else c[k] = v;
    }
    return c;
  };

  test('missing required field', () => {
    expectUserError(() => parseDeepseekConfig(with_({ kv_lora_rank: undefined }), FILE), FILE, 'missing required field "kv_lora_rank"');
    expectUserError(() => parseDeepseekConfig(with_({ architectures: undefined }), FILE), FILE, '"architectures"');
    expectUserError(
      () => parseDeepseekConfig(with_({ num_experts_per_tok: undefined }), FILE),
      FILE,
      'missing required field "num_experts_per_tok"',
    );
  });

  test('wrong types name the field and the expected type', () => {
    expectUserError(() => parseDeepseekConfig(with_({ hidden_size: '256' }), FILE), FILE, '"hidden_size"', 'must be a number', '"256"');
    expectUserError(() => parseDeepseekConfig(with_({ hidden_size: 2.5 }), FILE), FILE, '"hidden_size"', 'integer');
    expectUserError(() => parseDeepseekConfig(with_({ v_head_dim: 0 }), FILE), FILE, '"v_head_dim"', '> 0');
    expectUserError(() => parseDeepseekConfig(with_({ norm_topk_prob: 'yes' }), FILE), FILE, '"norm_topk_prob"', 'true or false');
    expectUserError(() => parseDeepseekConfig(with_({ scoring_func: 'relu' }), FILE), FILE, '"scoring_func"', '"softmax", "sigmoid"');
    expectUserError(() => parseDeepseekConfig(with_({ eos_token_id: 'x' }), FILE), FILE, '"eos_token_id"', 'token id');
  });

  test('unsupported architecture', () => {
    expectUserError(
      () => parseDeepseekConfig(with_({ architectures: ['LlamaForCausalLM'] }), FILE),
      FILE,
      'unsupported architecture "LlamaForCausalLM"',
      'DeepseekV3ForCausalLM',
    );
  });

  test('rope_scaling variants', () => {
    const rs = { type: 'yarn', factor: 40, original_max_position_embeddings: 4096 };
    const base = parseDeepseekConfig(with_({ rope_scaling: rs }), FILE).ropeScaling;
    assert.deepEqual(base, { type: 'yarn', factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 0 });
    const alt = { rope_type: 'deepseek_yarn', factor: 4, original_max_position_embeddings: 2048 };
    assert.equal(parseDeepseekConfig(with_({ rope_scaling: alt }), FILE).ropeScaling?.factor, 4);
    assert.equal(parseDeepseekConfig(with_({ rope_scaling: null }), FILE).ropeScaling, null);
    expectUserError(() => parseDeepseekConfig(with_({ rope_scaling: { type: 'linear', factor: 2 } }), FILE), FILE, '"linear"', 'supported: yarn');
    expectUserError(
      () => parseDeepseekConfig(with_({ rope_scaling: { type: 'yarn', original_max_position_embeddings: 8 } }), FILE),
      FILE,
      'missing required field "rope_scaling.factor"',
    );
  });

  test('quantization_config', () => {
    const fp8 = (extra: Record<string, unknown>) => with_({ quantization_config: { quant_method: 'fp8', ...extra } });
    assert.deepEqual(parseDeepseekConfig(fp8({}), FILE).weightBlockSize, [128, 128]);
    assert.deepEqual(parseDeepseekConfig(fp8({ weight_block_size: [64, 32], scale_fmt: 'ue8m0' }), FILE).weightBlockSize, [64, 32]);
    expectUserError(() => parseDeepseekConfig(fp8({ scale_fmt: 'e8m0fnu' }), FILE), FILE, 'quantization_config.scale_fmt');
    expectUserError(() => parseDeepseekConfig(fp8({ weight_block_size: [128] }), FILE), FILE, 'quantization_config.weight_block_size');
    expectUserError(
      () => parseDeepseekConfig(with_({ quantization_config: { quant_method: 'gptq' } }), FILE),
      FILE,
      'quant_method "gptq"',
      'supported: fp8',
    );
  });

  test('consistency checks', () => {
    expectUserError(() => parseDeepseekConfig(with_({ topk_group: 5 }), FILE), FILE, 'topk_group (5)', 'n_group (4)');
    expectUserError(() => parseDeepseekConfig(with_({ n_group: 3, topk_group: 1 }), FILE), FILE, 'divisible by n_group');
    expectUserError(() => parseDeepseekConfig(with_({ num_experts_per_tok: 17 }), FILE), FILE, 'num_experts_per_tok (17)');
    expectUserError(() => parseDeepseekConfig(with_({ topk_group: 1, num_experts_per_tok: 5 }), FILE), FILE, 'topk_group');
    expectUserError(() => parseDeepseekConfig(with_({ qk_rope_head_dim: 15 }), FILE), FILE, 'even');
  });

  test('defaults for a minimal config follow the architecture', () => {
    const dims = {
      vocab_size: 10, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 2, num_attention_heads: 2,
      kv_lora_rank: 4, qk_nope_head_dim: 4, qk_rope_head_dim: 2, v_head_dim: 4,
    };
    const v3min = parseDeepseekConfig({ architectures: ['DeepseekV3ForCausalLM'], ...dims, eos_token_id: [1, 2] }, FILE);
    assert.equal(v3min.nRoutedExperts, 0);
    assert.equal(v3min.numExpertsPerTok, 0);
    assert.equal(v3min.moeIntermediateSize, 16);
    assert.equal(v3min.topkMethod, 'noaux_tc');
    assert.equal(v3min.scoringFunc, 'sigmoid');
    assert.equal(v3min.qLoraRank, null);
    assert.equal(v3min.rmsNormEps, 1e-6);
    assert.equal(v3min.ropeTheta, 10000);
    assert.equal(v3min.ropeScaling, null);
    assert.equal(v3min.bosTokenId, null);
    assert.deepEqual(v3min.eosTokenIds, [1, 2]);
    assert.equal(v3min.weightBlockSize, null);
    assert.equal(v3min.tieWordEmbeddings, false);
    const v2min = parseDeepseekConfig({ architectures: ['DeepseekV2ForCausalLM'], ...dims, n_routed_experts: null, q_lora_rank: null }, FILE);
    assert.equal(v2min.topkMethod, 'greedy');
    assert.equal(v2min.scoringFunc, 'softmax');
    assert.equal(v2min.nGroup, 1);
    assert.equal(v2min.routedScalingFactor, 1);
    assert.deepEqual(v2min.eosTokenIds, []);
  });
});
