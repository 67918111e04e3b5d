/**
 * Golden logits on the fast CPU backend: every fixture folder and the bundled demo model must
 * match DeepSeek's reference implementation (prefill, decode through the cache, MTP) within the
 * golden tolerance, with every argmax agreeing. Two threads (the threaded path even for small
 * ops), and one thread.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { basename, join } from 'node:path';
import { SimdCpuBackend, type SimdCpuOptions } from '../src/backends/cpu-simd/simd-backend.js';
import { runGolden } from '../src/engine/golden.js';
import { assertGoldenPass, listFixtures, repoRoot } from './helpers.js';

const fixtures = [...listFixtures(), join(repoRoot, 'models/demo')];

const configs: [string, SimdCpuOptions][] = [
  ['2 threads', { threads: 2, minParallelWork: 0 }],
  ['1 thread', { threads: 1 }],
];

for (const [label, opts] of configs) {
  describe(`golden fixtures on the fast CPU backend (${label})`, () => {
    it('finds fixtures to check', () => {
      assert.ok(fixtures.length > 1, 'no fixture folders found: set SHOAL_FIXTURES or provide ../shared/fixtures');
    });
    for (const dir of fixtures) {
      it(basename(dir), async () => {
        const backend = await SimdCpuBackend.create(opts);
        try {
          const report = await runGolden(dir, backend);
          assertGoldenPass(report);
        } finally {
          backend.dispose();
        }
      });
    }
  });
}
