/**
 * Loading holds no whole host copy of a tensor where it need not: bytes go from the file
 * straight into the backend's storage (Backend.uploadWeightFrom), and tensors re-encoded by
 * --quantize pass through one reused buffer a chunk of rows at a time. Counted here on the
 * fixtures (what the source reads whole, how large the scratch buffer gets), and checked
 * byte for byte against the whole-tensor path.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DeviceWeight, HostWeight, WeightSpec } from '../src/backends/backend.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { weightDataBytes } from '../src/backends/cpu/dequant.js';
import { openCheckpoint } from '../src/formats/checkpoint.js';
import { DeepseekModel } from '../src/models/deepseek.js';
import { convertToGguf, openGgufModel } from '../src/models/gguf-deepseek.js';
import { hostWeight, WeightPreparer, WeightReader, type WeightSource } from '../src/models/weights.js';
import { fixture } from './helpers.js';

/** A CPU backend that keeps what each upload path received. */
class Recording extends CpuBackend {
  readonly filled = new Map<string, HostWeight>();
  readonly handed = new Map<string, HostWeight>();
  uploadWeightFrom(spec: WeightSpec, fill: (dst: Uint8Array) => void): DeviceWeight {
    const data = new Uint8Array(weightDataBytes(spec.format, spec.rows, spec.cols));
    fill(data);
    const hw = hostWeight(spec.name, spec.format, spec.rows, spec.cols, data);
    this.filled.set(spec.name, hw);
    return super.uploadWeight(hw);
  }
  override uploadWeight(hw: HostWeight): DeviceWeight {
    this.handed.set(hw.name, hw);
    return super.uploadWeight(hw);
  }
}

/** `src`, noting the tensors it reads whole. */
function counting(src: WeightSource): { source: WeightSource; whole: string[] } {
  const whole: string[] = [];
  const source: WeightSource = {
    has: (n) => src.has(n),
    check: (n, s) => src.check(n, s),
    read: (n, s) => { whole.push(n); return src.read(n, s); },
    storedFormat: (n, s) => src.storedFormat!(n, s),
    readInto: (n, s, dst, offset) => src.readInto!(n, s, dst, offset),
  };
  return { source, whole };
}

function bytes(w: HostWeight): Uint8Array {
  return new Uint8Array(w.data.buffer, w.data.byteOffset, w.data.byteLength);
}

describe('loading weights without whole host copies', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-load-'));
  after(() => rmSync(tmp, { recursive: true, force: true }));

  it('HF checkpoint, --quantize q8_0: nothing read whole; packing reads through one chunk-sized buffer; same bytes as the whole-tensor path', () => {
    const ckpt = openCheckpoint(fixture('deepseek-v3-tiny'));
    try {
      const reader = new WeightReader(ckpt, null);
      const { source, whole } = counting(reader);
      const chunkBytes = 4096;
      const prep = new WeightPreparer({ quantize: 'q8_0', chunkBytes });
      const b = new Recording();
      let largest = 0;
      for (const name of ckpt.tensors.names()) {
        const shape = ckpt.tensors.info(name).shape;
        largest = Math.max(largest, ckpt.tensors.info(name).byteLength);
        prep.upload(b, name, shape, source);
        const want = new WeightPreparer({ quantize: 'q8_0' }).prepare(b, name, shape, reader.read(name, shape));
        const got = b.filled.get(name);
        assert.ok(got, `${name} was filled in place`);
        assert.equal(got.format, want.format, name);
        assert.deepEqual(bytes(got), bytes(want), name);
      }
      assert.deepEqual(whole, [], 'no tensor read whole');
      assert.ok(prep.quantized > 0);
      assert.ok(largest > 8 * chunkBytes, 'the fixture has tensors much larger than a chunk');
      assert.ok(prep.scratchBytes > 0 && prep.scratchBytes <= chunkBytes, `scratch of ${prep.scratchBytes} bytes`);
    } finally {
      ckpt.tensors.close();
    }
  });

  it('GGUF: only kv_b (rebuilt from attn_k_b and attn_v_b) is read whole; every other weight is read into the backend\'s storage', () => {
    const file = join(tmp, 'tiny-q8_0.gguf');
    convertToGguf(fixture('deepseek-v3-tiny'), file, 'q8_0');
    const g = openGgufModel(file);
    try {
      const { source, whole } = counting(g.weights);
      const b = new Recording();
      DeepseekModel.load({ label: g.label, cfg: g.cfg, weights: source }, b);
      const kvB = Array.from({ length: g.cfg.numHiddenLayers + g.cfg.numNextnPredictLayers }, (_, i) => `model.layers.${i}.self_attn.kv_b_proj.weight`);
      assert.deepEqual(whole, kvB);
      assert.deepEqual([...b.handed.keys()], kvB);
      assert.ok(b.filled.size > 10 * kvB.length);
      for (const [name, got] of b.filled) {
        const want = g.weights.read(name, got.rows === 1 ? [got.cols] : [got.rows, got.cols]);
        assert.equal(got.format, want.format, name);
        assert.deepEqual(bytes(got), bytes(want), name);
      }
    } finally {
      g.close();
    }
  });
});
