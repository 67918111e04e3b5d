/**
 * Backend.release on the fast CPU backend frees a tensor's shared memory at once. Without it a
 * synchronous pass (a prefill chunk through every layer) keeps every intermediate until V8
 * collects the handles between tasks, which is what made peak RSS grow by a chunk's activations.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SimdCpuBackend } from '../src/backends/cpu-simd/simd-backend.js';

interface ShardView { used: number }

describe('fast CPU backend: release', () => {
  it('a synchronous loop that releases what it allocates does not grow its shard', async () => {
    const b = await SimdCpuBackend.create({ threads: 1, gcBudgetBytes: 0 });
    try {
      const shard = (b as unknown as { shards: ShardView[] }).shards[0];
      const x = b.fromHost(new Float32Array(256 * 1024).fill(1), 256, 1024); // 1 MiB
      const before = shard.used;
      for (let i = 0; i < 100; i++) {
        const t = b.add(x, x);
        const u = b.add(t, x);
        b.release(t);
        b.release(u);
      }
      assert.ok(shard.used - before <= 2 << 20, `shard grew by ${shard.used - before} bytes over 100 released rounds`);
      // Without release the same loop keeps all 200 MiB (no finalizer runs inside it).
      const kept = [];
      for (let i = 0; i < 20; i++) kept.push(b.add(x, x));
      assert.ok(shard.used - before >= 20 << 20, 'tensors still referenced are not freed');
      assert.deepEqual(Array.from((await b.read(kept[19])).subarray(0, 3)), [2, 2, 2]);
    } finally {
      b.dispose();
    }
  });
});
