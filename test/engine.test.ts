/** Generation loop: determinism, seeds, stops, limits, chunked prefill, cache reuse. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { Engine, type GenerateOptions, type GenerationStats } from '../src/engine/engine.js';
import { UserError } from '../src/errors.js';
import { fixture } from './helpers.js';

async function collect(engine: Engine, prompt: number[], opts: GenerateOptions): Promise<{ text: string; stats: GenerationStats }> {
  const it = engine.generate(prompt, opts);
  let text = '';
  for (let r = await it.next(); ; r = await it.next()) {
    if (r.done) return { text, stats: r.value };
    text += r.value;
  }
}

describe('engine generation (deepseek-v3-tiny)', () => {
  let engine: Engine;
  const prompt = [0, 474, 512, 755, 950, 36, 145];
  before(async () => {
    engine = await Engine.load(fixture('deepseek-v3-tiny'), { backend: new CpuBackend(), maxContext: 64 });
  });
  after(() => engine.close());

  it('greedy decoding is deterministic and reuses freed cache blocks', async () => {
    const a = await collect(engine, prompt, { maxTokens: 12, ignoreEos: true, sampling: { temperature: 0 } });
    const b = await collect(engine, prompt, { maxTokens: 12, ignoreEos: true, sampling: { temperature: 0 } });
    assert.equal(a.stats.completionTokens, 12);
    assert.deepEqual(a.stats.tokenIds, b.stats.tokenIds);
    assert.equal(engine.scheduler.stats().kvBlocksUsed, 0, 'blocks returned after generation');
  });

  it('greedy first token equals the argmax of the golden prefill logits', async () => {
    // golden.json: prefill argmax after the full 12-token prompt of this fixture is 643.
    const full = [474, 512, 755, 950, 36, 145, 823, 948, 250, 313, 869, 424];
    const r = await collect(engine, full, { maxTokens: 1, ignoreEos: true, sampling: { temperature: 0 } });
    assert.deepEqual(r.stats.tokenIds, [643]);
  });

  it('same seed gives the same sample, different seeds differ', async () => {
    const opts = (seed: number): GenerateOptions => ({ maxTokens: 16, ignoreEos: true, sampling: { temperature: 1, seed } });
    const a = await collect(engine, prompt, opts(7));
    const b = await collect(engine, prompt, opts(7));
    const c = await collect(engine, prompt, opts(8));
    assert.deepEqual(a.stats.tokenIds, b.stats.tokenIds);
    assert.notDeepEqual(a.stats.tokenIds, c.stats.tokenIds);
  });

  it('chunked prefill gives the same continuation as one pass', async () => {
    const chunked = await Engine.load(fixture('deepseek-v3-tiny'), { backend: new CpuBackend(), maxContext: 64, maxBatchTokens: 3 });
    try {
      const a = await collect(engine, prompt, { maxTokens: 8, ignoreEos: true, sampling: { temperature: 0 } });
      const b = await collect(chunked, prompt, { maxTokens: 8, ignoreEos: true, sampling: { temperature: 0 } });
      assert.deepEqual(a.stats.tokenIds, b.stats.tokenIds);
    } finally {
      await chunked.close();
    }
  });

  it('stops on a stop token id and on max tokens', async () => {
    const free = await collect(engine, prompt, { maxTokens: 6, ignoreEos: true, sampling: { temperature: 0 } });
    const third = free.stats.tokenIds[2];
    const r = await collect(engine, prompt, { maxTokens: 6, ignoreEos: true, stopTokenIds: [third], sampling: { temperature: 0 } });
    assert.equal(r.stats.finishReason, 'stop');
    assert.equal(r.stats.tokenIds.at(-1), third);
    assert.ok(r.stats.tokenIds.length <= 3);
    assert.equal(free.stats.finishReason, 'length');
  });

  it('stop strings cut the text before the stop string', async () => {
    const free = await collect(engine, prompt, { maxTokens: 10, ignoreEos: true, sampling: { temperature: 0 } });
    const text = free.text;
    assert.ok(text.length > 4, `generated "${text}"`);
    const stop = text.slice(2, 4);
    const r = await collect(engine, prompt, { maxTokens: 10, ignoreEos: true, stop: [stop], sampling: { temperature: 0 } });
    assert.equal(r.stats.finishReason, 'stop');
    assert.equal(r.text, text.slice(0, text.indexOf(stop)));
  });

  it('rejects a prompt longer than the context with a UserError', async () => {
    const long = new Array(64).fill(5);
    await assert.rejects(collect(engine, long, { maxTokens: 1 }), (e: unknown) => e instanceof UserError && /context/.test((e as Error).message));
  });

  it('rejects token ids outside the vocabulary', async () => {
    await assert.rejects(collect(engine, [1, 100000], { maxTokens: 1 }), UserError);
  });

  it('max tokens is capped by the context left', async () => {
    const r = await collect(engine, new Array(60).fill(7), { maxTokens: 100, ignoreEos: true, sampling: { temperature: 0 } });
    assert.equal(r.stats.completionTokens, 4);
    assert.equal(r.stats.finishReason, 'length');
  });
});
