/**
 * The conformance suite on the WebGPU backend (Dawn through the `webgpu` package). Without
 * the package or a WebGPU adapter (on Linux: a Vulkan driver, e.g. Mesa's lavapipe) the
 * suite is registered as skipped, with the reason.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { backendConformance, FORMATS, formatName, randomWeight, rngFor } from './conformance.js';
import * as ref from './reference-ops.js';
import { WebGpuBackend } from '../src/backends/webgpu/webgpu-backend.js';
import { webgpuUnavailable } from '../src/backends/webgpu/dawn.js';

const skip = await webgpuUnavailable();

backendConformance('webgpu', () => WebGpuBackend.create(), { skip });

// Again with a submit before every op that follows 3 or more dispatches and a 1 KiB staging
// arena: buffers are recycled between ops all the time, batches span several arenas, and most
// inputs take the own-buffer path. Results must not change.
backendConformance('webgpu (frequent submits, 1 KiB arena)', () => WebGpuBackend.create({ flushEvery: 3, arenaBytes: 1024 }), { skip });

describe('webgpu: paths the shared suite does not reach', { skip }, () => {
  // Weights larger than one storage binding are split by rows: force small parts to check that path.
  it('matmul and embedding over weights split into many parts, every format', async () => {
    const b = await WebGpuBackend.create({ maxWeightPartBytes: 17000 });
    try {
      for (const f of FORMATS) {
        const rng = rngFor(`parts ${formatName(f)}`);
        const hw = randomWeight(rng, f, 300, 131, 0.5);
        const w = b.uploadWeight(hw);
        for (const n of [1, 9]) {
          const x = ref.mat(n, 131, rng.floats(n * 131, -2, 2));
          const got = await b.read(b.matmul(b.fromHost(Float32Array.from(x.data), n, 131), w));
          const want = ref.refMatmul(x, hw);
          let mag = 0, diff = 0;
          for (let i = 0; i < got.length; i++) { mag = Math.max(mag, Math.abs(want.data[i])); diff = Math.max(diff, Math.abs(got[i] - want.data[i])); }
          assert.ok(diff <= 1e-4 * Math.max(1, mag), `${formatName(f)} n=${n}: max |diff| ${diff}`);
          if (hw.format !== 'fp8_e4m3_block') {
            // Filled in place: too large for one part, so through a host buffer, split as above.
            const filled = b.uploadWeightFrom({ name: 'filled', format: hw.format, rows: 300, cols: 131 }, (dst) => dst.set(new Uint8Array(hw.data.buffer, hw.data.byteOffset, hw.data.byteLength)));
            assert.deepEqual(await b.read(b.matmul(b.fromHost(Float32Array.from(x.data), n, 131), filled)), got, `${formatName(f)} filled`);
          }
        }
        const ids = Int32Array.from([299, -1, 0, 150, 7, 299]);
        const got = await b.read(b.embedding(w, ids));
        const want = ref.refEmbedding(hw, ids);
        for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - want.data[i]) <= 1e-6 * Math.abs(want.data[i]) + 1e-38, `${formatName(f)} embedding [${i}]`);
      }
    } finally {
      b.dispose();
    }
  });

  it('inputs too large for the staging arena get buffers of their own (exact)', async () => {
    const b = await WebGpuBackend.create();
    try {
      const x = Float32Array.from({ length: 3 * 5 }, (_, i) => i * 1.5 - 7);
      const rows = Int32Array.from({ length: 70000 }, (_, i) => (i * 7919) % 3);
      const got = await b.read(b.gatherRows(b.fromHost(x, 3, 5), rows));
      for (let i = 0; i < rows.length; i++) {
        for (let c = 0; c < 5; c++) if (got[i * 5 + c] !== x[rows[i] * 5 + c]) assert.fail(`row ${i}, column ${c}`);
      }
    } finally {
      b.dispose();
    }
  });
});
