/** Placement: a model split over two backends (pipeline) computes what one backend does. */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { openCheckpoint } from '../src/formats/checkpoint.js';
import { DeepseekModel } from '../src/models/deepseek.js';
import { Placement } from '../src/engine/placement.js';
import { fixture } from './helpers.js';

async function prefillLogits(placement: Placement): Promise<Float32Array> {
  const ckpt = openCheckpoint(fixture('deepseek-v3-tiny'));
  try {
    const model = DeepseekModel.load(ckpt, { placement });
    const cache = model.createCache(4, 16);
    const tokens = Int32Array.of(0, 474, 512, 755, 950, 36);
    const batch = { tokens, positions: Int32Array.from(tokens, (_, i) => i), seqIndex: new Int32Array(tokens.length), blockTables: [Int32Array.of(0)] };
    const hidden = await model.forward(batch, cache);
    const last = placement.backendFor(model.cfg.numHiddenLayers - 1);
    return last.read(model.logits(hidden));
  } finally {
    ckpt.tensors.close();
  }
}

it('a pipeline over two backends gives the logits of a single backend', async () => {
  const a = new CpuBackend(), b = new CpuBackend();
  const split = Placement.pipeline([a, b], [2, 1]);
  assert.equal(split.backendFor(0), a);
  assert.equal(split.backendFor(2), b);
  assert.equal(split.backendFor(3), b, 'the MTP layer stays on the last backend');
  const one = await prefillLogits(Placement.single(new CpuBackend()));
  const two = await prefillLogits(split);
  assert.deepEqual(two, one);
});
