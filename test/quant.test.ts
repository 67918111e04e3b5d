/**
 * llama.cpp block formats: the reference quantizers produce ggml's bytes for blocks worked
 * out by hand from ggml-quants.c, decoders invert them, round trips stay within each format's
 * error, and the loader packs (--quantize) or converts (formats a backend lacks) weights.
 * test/llama-cpp.test.ts compares random rows against libggml itself when node-llama-cpp is there.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  dequantizeRow, f32ToF16, halfTable32, packedRowBytes, PACKED_FORMATS, quantizeRow, type PackedFormat,
} from '../src/formats/quant.js';
import { convertWeight, f32ToBf16, quantizeTarget, weightRole, WeightPreparer } from '../src/models/weights.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import type { HostWeight, WeightFormat } from '../src/backends/backend.js';
import { decodeBlockElement } from './reference-ops.js';
import { Prng } from './conformance.js';

const hex = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');

function quantize(f: PackedFormat, x: number[] | Float32Array): Uint8Array {
  const v = Float32Array.from(x);
  const out = new Uint8Array((v.length / PACKED_FORMATS[f].block) * PACKED_FORMATS[f].bytes);
  quantizeRow(f, v, 0, v.length, out);
  return out;
}

function decode(f: PackedFormat, bytes: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  dequantizeRow(f, bytes, 0, n, out);
  return out;
}

function gaussian(rng: Prng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * Math.sqrt(-2 * Math.log(rng.next() + 1e-12)) * Math.cos(2 * Math.PI * rng.next());
  return out;
}

describe('float16 conversion (round to nearest even, as F16C)', () => {
  it('normal, boundary, subnormal, tie and special values', () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [0.5, 0x3800], [65504, 0x7bff], [65519.99, 0x7bff], [65520, 0x7c00], [1e9, 0x7c00], [-Infinity, 0xfc00],
      [2 ** -14, 0x0400], [2 ** -24, 0x0001], [2 ** -25, 0x0000], [3 * 2 ** -25, 0x0002], [2 ** -26, 0], [-0, 0x8000],
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], [1 + 2 ** -10, 0x3c01], [0.1, 0x2e66], [0.0013227513, 0x156b],
    ];
    for (const [v, h] of cases) assert.equal(f32ToF16(v), h, `f32ToF16(${v})`);
    assert.equal(f32ToF16(NaN) & 0x7e00, 0x7e00, 'NaN stays NaN');
  });

  it('every finite half survives f16 -> f32 -> f16', () => {
    const t = halfTable32();
    for (let h = 0; h < 65536; h++) if (((h >> 10) & 31) !== 31) assert.equal(f32ToF16(t[h]), h, `half 0x${h.toString(16)}`);
  });

  it('bfloat16 rounds to nearest even', () => {
    assert.equal(f32ToBf16(1), 0x3f80);
    assert.equal(f32ToBf16(1 + 2 ** -8), 0x3f80); // tie -> even
    assert.equal(f32ToBf16(1 + 3 * 2 ** -8), 0x3f82); // tie -> even (up)
    assert.equal(f32ToBf16(1 + 2 ** -8 + 2 ** -20), 0x3f81);
    assert.equal(f32ToBf16(-3.5), 0xc060);
  });
});

describe('known blocks (worked out by hand from ggml-quants.c, checked against libggml)', () => {
  it('q8_0: d = amax / 127, q = roundf(x / d) (halves away from zero)', () => {
    // amax 127 -> d = 1 (f16 0x3c00); 63.5 -> 64, -0.5 -> -1, 2.4 -> 2.
    const x = [127, -127, 63.5, -63.5, 0.5, -0.5, 2.4, 0, ...Array.from({ length: 24 }, (_, i) => i - 12)];
    const b = quantize('q8_0', x);
    assert.equal(hex(b), '003c7f8140c001ff0200f4f5f6f7f8f9fafbfcfdfeff000102030405060708090a0b');
    assert.deepEqual([...decode('q8_0', b, 32)].slice(0, 8), [127, -127, 64, -64, 1, -1, 2, 0]);
  });

  it('q4_0: d = max / -8 (the signed value of largest magnitude), nibble = min(15, trunc(x / d + 8.5))', () => {
    // max -8 -> d = 1. Byte j: element j low, element j + 16 high.
    const x = [-8, 7, 7.4, 0, -0.5, 0.49, 0.5, -3, ...Array.from({ length: 24 }, (_, i) => (i % 16) - 7.5)];
    const b = quantize('q4_0', x);
    assert.equal(hex(b), '003c90afbfc8d8e8f9f51122334455667788');
    const y = decode('q4_0', b, 32);
    assert.deepEqual([...y].slice(0, 8), [-8, 7, 7, 0, 0, 0, 1, -3]);
  });

  it('q4_k: a constant block: one scale of 63, no min, every nibble 15', () => {
    // make_qkx2_quants on 32 x 1.25: min clamps to 0, scale 1/12; d = f16(scale / 63) = 0x156b.
    // 6-bit scales: bytes 0-3 = 63 | high bits of scales 4-7 (3 << 6), bytes 8-11 = low nibbles 15.
    const b = quantize('q4_k', new Array(256).fill(1.25));
    assert.equal(hex(b.subarray(0, 16)), '6b150000ffffffff000000000f0f0f0f');
    assert.ok(b.subarray(16).every((v) => v === 0xff));
    const y = decode('q4_k', b, 256);
    for (const v of y) assert.ok(Math.abs(v - 1.25) < 1e-3, `decoded ${v}`);
  });

  it('q4_k and q6_k: a ramp, byte for byte as ggml writes it', () => {
    const ramp = Array.from({ length: 256 }, (_, i) => (i - 128) / 64);
    assert.equal(hex(quantize('q4_k', ramp)),
      '32180c284f4fcfcf3f2f1f10000f000f0000111122223333444455556666777788889999aaaabbbbccccddddeeeeffff00101021213232434354546565767687879899a9aababbcbccdcddedeefeffff80808191929293a3a4a4a5b5b6b6b7c7c8c8c9d9dadadaebebececfdfdfefeffcacacacbcbcbcbcbdbdcdcdcdcdcdcddedededededeeeeeefefefefeffffffff');
    assert.equal(hex(quantize('q6_k', ramp)),
      '00001011212131324242525363637374001010213131425252627373839494a400102131415262728393a3b4c4d4e5f50020416181a2c2e30323446485a5c5e6606e5c5a474543313f2d2b1816140200505f4e4d4c3b3a3928272615141302014b4a4a3938382726262514141302020148373736362525242413131212010100000000000000000000000000000000000000000000000000404040404040404002010101010101010000000000000000010000000000000000000000000000008090a0b0c0d0e0f00f2031404f5f6f7ff78f');
  });

  it('all-zero blocks are all-zero bytes', () => {
    for (const f of ['q8_0', 'q4_0', 'q4_k', 'q6_k'] as PackedFormat[]) {
      const n = PACKED_FORMATS[f].block;
      const b = quantize(f, new Array(n).fill(0));
      // q4_0: d = 0 / -8 is -0 (f16 0x8000), and every nibble is trunc(0 + 8.5) = 8.
      if (f === 'q4_0') assert.ok(b.subarray(2).every((v) => v === 0x88) && b[0] === 0 && b[1] === 0x80, `q4_0 zero: ${hex(b)}`);
      else assert.ok(b.every((v) => v === 0), `${f}: ${hex(b)}`);
      assert.ok(decode(f, b, n).every((v) => v === 0));
    }
  });

  it('q6_k: a block built by hand decodes as the layout says', () => {
    // d = 1; scale of sub-block s = s + 1; element j = 16 s + i has q = 32 + (s - 8) + (i % 4), stored
    // low 4 bits in ql, high 2 bits in qh, laid out as ggml's quantize_row_q6_K_ref packs them.
    const q = Array.from({ length: 256 }, (_, j) => 32 + (Math.floor(j / 16) - 8) + (j % 4));
    const b = new Uint8Array(210);
    for (let h = 0; h < 2; h++) {
      for (let l = 0; l < 32; l++) {
        const [a, bb, c, e] = [0, 32, 64, 96].map((o) => q[128 * h + l + o]);
        b[64 * h + l] = (a & 15) | ((c & 15) << 4);
        b[64 * h + l + 32] = (bb & 15) | ((e & 15) << 4);
        b[128 + 32 * h + l] = (a >> 4) | ((bb >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
    }
    for (let s = 0; s < 16; s++) b[192 + s] = s + 1;
    b[208] = 0x00; b[209] = 0x3c;
    const y = decode('q6_k', b, 256);
    for (let j = 0; j < 256; j++) assert.equal(y[j], (Math.floor(j / 16) + 1) * (q[j] - 32), `element ${j}`);
    const w: HostWeight = { name: 'q6', format: 'q6_k', rows: 1, cols: 256, data: b };
    for (let j = 0; j < 256; j++) assert.equal(decodeBlockElement(w, 0, j), y[j], `reference decoder, element ${j}`);
  });
});

describe('round trips', () => {
  // Relative rms error bounds per format for Gaussian rows with two outliers (which coarsen their blocks).
  const bounds: Record<PackedFormat, number> = { q8_0: 0.012, q4_0: 0.12, q4_k: 0.1, q6_k: 0.04 };
  for (const f of ['q8_0', 'q4_0', 'q4_k', 'q6_k'] as PackedFormat[]) {
    it(`${f}: quantize -> dequantize stays within its error; the reference decoder agrees with the row decoder`, () => {
      const rng = new Prng(1234);
      const n = 256 * 16;
      const x = gaussian(rng, n);
      x[5] = 40; x[300] = -25; // outliers
      const b = quantize(f, x);
      assert.equal(b.length, packedRowBytes(f, n));
      const y = decode(f, b, n);
      let se = 0, ss = 0;
      for (let i = 0; i < n; i++) { se += (y[i] - x[i]) ** 2; ss += x[i] ** 2; }
      assert.ok(Math.sqrt(se / ss) < bounds[f], `${f}: relative rms error ${Math.sqrt(se / ss)}`);
      const w: HostWeight = { name: f, format: f, rows: 1, cols: n, data: b };
      for (let i = 0; i < n; i += 7) assert.ok(Math.abs(decodeBlockElement(w, 0, i) - y[i]) <= 1e-6 * Math.abs(y[i]), `element ${i}`);
    });
  }

  it('q8_0 is idempotent: re-quantizing decoded values gives the same bytes', () => {
    const x = gaussian(new Prng(7), 32 * 40, 0.02);
    const b = quantize('q8_0', x);
    assert.equal(hex(quantize('q8_0', decode('q8_0', b, x.length))), hex(b));
  });

  it('a row quantized at an offset lands at the right bytes', () => {
    const x = gaussian(new Prng(9), 512);
    const whole = quantize('q6_k', x);
    const parts = new Uint8Array(420);
    quantizeRow('q6_k', x, 256, 256, parts, 210);
    quantizeRow('q6_k', x, 0, 256, parts, 0);
    assert.equal(hex(parts), hex(whole));
    assert.throws(() => quantizeRow('q4_k', x, 0, 100, parts), /whole number of blocks/);
  });
});

describe('packing and converting weights on load', () => {
  const bf16Weight = (rows: number, cols: number, seed = 3): HostWeight => {
    const x = gaussian(new Prng(seed), rows * cols, 0.05);
    return { name: 'w', format: 'bf16', rows, cols, data: Uint16Array.from(x, (v) => f32ToBf16(v)) };
  };

  it('roles and targets: projections take the type, embeddings q8_0, the head q6_k under q4_k, the rest stay', () => {
    assert.equal(weightRole('model.embed_tokens.weight', [10, 256]), 'embedding');
    assert.equal(weightRole('lm_head.weight', [10, 256]), 'head');
    assert.equal(weightRole('model.layers.3.shared_head.head.weight', [10, 256]), 'head');
    assert.equal(weightRole('model.layers.1.mlp.gate.weight', [16, 256]), 'router');
    assert.equal(weightRole('model.layers.1.input_layernorm.weight', [256]), 'vector');
    assert.equal(weightRole('model.layers.1.self_attn.kv_b_proj.weight', [64, 512]), 'projection');
    assert.equal(quantizeTarget('q4_k', 'projection', 512), 'q4_k');
    assert.equal(quantizeTarget('q4_k', 'projection', 192), 'q8_0', 'not whole 256-blocks: q8_0');
    assert.equal(quantizeTarget('q4_k', 'head', 10944), 'q8_0', 'not whole 256-blocks: q8_0');
    assert.equal(quantizeTarget('q4_k', 'projection', 100), null, 'not whole 32-blocks either: stays');
    assert.equal(quantizeTarget('q4_k', 'head', 256), 'q6_k');
    assert.equal(quantizeTarget('q4_k', 'embedding', 96), 'q8_0');
    assert.equal(quantizeTarget('q8_0', 'projection', 48), null);
    assert.equal(quantizeTarget('q8_0', 'router', 256), null);
  });

  it('convertWeight re-encodes row by row: q8_0 bytes equal quantizing the decoded rows; bf16 round trip is exact', () => {
    const w = bf16Weight(5, 64);
    const q = convertWeight(w, 'q8_0');
    assert.equal(q.format, 'q8_0');
    const rows = new Float32Array(5 * 64);
    for (let i = 0; i < rows.length; i++) rows[i] = new Float32Array(new Uint32Array([(w.data as Uint16Array)[i] << 16]).buffer)[0];
    assert.equal(hex(q.data as Uint8Array), hex(quantize('q8_0', rows)));
    const back = convertWeight(convertWeight(w, 'f32'), 'bf16');
    assert.deepEqual([...(back.data as Uint16Array)], [...(w.data as Uint16Array)]);
  });

  it('a backend without a format gets bf16, and the loader says so once per format', () => {
    class Bf16Only extends CpuBackend {
      override supportsFormat(f: WeightFormat): boolean {
        return f === 'bf16' || f === 'f32';
      }
    }
    const lines: string[] = [];
    const prep = new WeightPreparer({ quantize: 'q8_0', log: (l) => lines.push(l) });
    const b = new Bf16Only();
    const a = prep.prepare(b, 'model.layers.0.mlp.up_proj.weight', [4, 64], bf16Weight(4, 64, 1));
    const c = prep.prepare(b, 'model.layers.0.mlp.down_proj.weight', [4, 64], bf16Weight(4, 64, 2));
    assert.equal(a.format, 'bf16');
    assert.equal(c.format, 'bf16');
    assert.equal(lines.length, 1, lines.join('\n'));
    assert.match(lines[0], /does not compute on q8_0 weights; converting them to bf16/);
    assert.equal(prep.quantized, 2);
    assert.equal(prep.converted, 2);
    // The CPU backend takes every format: nothing converted, nothing said.
    const quiet = new WeightPreparer({ quantize: 'q4_k', log: (l) => lines.push(l) });
    assert.equal(quiet.prepare(new CpuBackend(), 'model.layers.0.mlp.up_proj.weight', [4, 256], bf16Weight(4, 256)).format, 'q4_k');
    assert.equal(lines.length, 1);
  });
});
