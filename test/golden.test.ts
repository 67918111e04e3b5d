/**
 * Golden logits: every fixture folder (../shared/fixtures, or $SHOAL_FIXTURES) must match
 * DeepSeek's reference implementation in prefill, decode through the cache, and MTP.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { runGolden } from '../src/engine/golden.js';
import { join } from 'node:path';
import { assertGoldenPass, listFixtures, repoRoot } from './helpers.js';

// The shared fixtures, plus the bundled demo model, whose golden logits come from its
// training code (a second, independent implementation of the architecture).
const fixtures = [...listFixtures(), join(repoRoot, 'models/demo')];

describe('golden fixtures on the CPU backend', () => {
  it('finds fixtures to check', () => {
    assert.ok(fixtures.length > 0, 'no fixture folders found: set SHOAL_FIXTURES or provide ../shared/fixtures');
  });
  for (const dir of fixtures) {
    it(basename(dir), async () => {
      const report = await runGolden(dir, new CpuBackend());
      assertGoldenPass(report);
    });
  }
});
