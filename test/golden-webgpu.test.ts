/**
 * Golden logits on the WebGPU backend: every fixture must match DeepSeek's reference
 * (prefill, decode through the paged cache, MTP) within the same bound as the CPU backend.
 * Skipped, with the reason, without the `webgpu` package or a WebGPU adapter.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { basename } from 'node:path';
import { runGolden } from '../src/engine/golden.js';
import { WebGpuBackend } from '../src/backends/webgpu/webgpu-backend.js';
import { webgpuUnavailable } from '../src/backends/webgpu/dawn.js';
import { assertGoldenPass, listFixtures } from './helpers.js';

const skip = await webgpuUnavailable();
const fixtures = listFixtures();

describe('golden fixtures on the WebGPU backend', { skip }, () => {
  it('finds fixtures to check', () => {
    assert.ok(fixtures.length > 0, 'no fixture folders found: set SHOAL_FIXTURES or provide ../shared/fixtures');
  });
  for (const dir of fixtures) {
    it(basename(dir), async () => {
      const backend = await WebGpuBackend.create();
      try {
        const report = await runGolden(dir, backend);
        assertGoldenPass(report);
      } finally {
        backend.dispose();
      }
    });
  }
});
