/** Continuous batching: batched results equal sequential ones; cache accounting; MTP speculation. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { Engine } from '../src/engine/engine.js';
import { Scheduler, type SchedulerOptions } from '../src/engine/scheduler.js';
import { QueueFullError, type RequestEvent, type RequestOptions } from '../src/engine/scheduler-types.js';
import { UserError } from '../src/errors.js';
import { fixture } from './helpers.js';

async function drain(events: AsyncIterable<RequestEvent>) {
  const ids: number[] = [];
  let text = '';
  for await (const e of events) {
    text += e.text;
    if (e.type === 'token') ids.push(e.token.id);
    else return { ids, text, done: e };
  }
  throw new Error('no done event');
}

/** Deterministic prompts of different lengths over the fixture vocabulary. */
function prompts(count: number): number[][] {
  return Array.from({ length: count }, (_, i) => [0, ...Array.from({ length: 3 + ((i * 7) % 23) }, (_, k) => 2 + ((i * 131 + k * 37) % 980))]);
}

describe('scheduler (deepseek-v3-tiny)', () => {
  let engine: Engine;
  const make = (o: Partial<SchedulerOptions> = {}) =>
    new Scheduler(engine.model, engine.tokenizer, engine.backend, { maxRunning: 32, maxQueue: 64, maxContext: 256, ...o });
  const greedy = (prompt: number[], maxTokens = 8): RequestOptions => ({ prompt, maxTokens, ignoreEos: true, sampling: { temperature: 0 } });

  before(async () => {
    engine = await Engine.load(fixture('deepseek-v3-tiny'), { backend: new CpuBackend(), maxContext: 256 });
  });
  after(() => engine.close());

  it('32 concurrent requests each equal their own sequential run', async () => {
    const ps = prompts(32);
    const seq = make({ maxRunning: 1 });
    const expected: number[][] = [];
    for (const p of ps) expected.push((await drain(seq.submit(greedy(p)))).ids);
    const batched = make({ maxBatchTokens: 64 });
    const got = await Promise.all(ps.map((p) => drain(batched.submit(greedy(p)))));
    got.forEach((g, i) => assert.deepEqual(g.ids, expected[i], `request ${i}`));
    // The engine's single-sequence loop agrees too.
    const it = engine.generate(ps[3], { maxTokens: 8, ignoreEos: true, sampling: { temperature: 0 } });
    let r = await it.next();
    while (!r.done) r = await it.next();
    assert.deepEqual(r.value.tokenIds, expected[3]);
    assert.equal(batched.stats().kvBlocksUsed, 0);
  });

  it('aborting requests mid-stream frees their blocks', async () => {
    const s = make();
    const ctrls = prompts(8).map(() => new AbortController());
    const runs = prompts(8).map((p, i) => drain(s.submit({ ...greedy(p, 40), signal: ctrls[i].signal })));
    await new Promise((r) => setTimeout(r, 30));
    ctrls.slice(0, 4).forEach((c) => c.abort());
    const res = await Promise.all(runs);
    assert.ok(res.slice(0, 4).every((r) => r.done.type === 'done' && r.done.finishReason === 'abort'));
    assert.ok(res.slice(4).every((r) => r.done.type === 'done' && r.done.finishReason === 'length' && r.ids.length === 40));
    assert.equal(s.stats().kvBlocksUsed, 0);
    assert.equal(s.stats().running, 0);
  });

  it('reuses cached prefix blocks for a repeated prompt prefix', async () => {
    const s = make({ blockSize: 4 });
    const system = Array.from({ length: 40 }, (_, k) => 3 + k * 11);
    const a = await drain(s.submit(greedy([0, ...system, 5, 6])));
    const b = await drain(s.submit(greedy([0, ...system, 7, 8, 9])));
    assert.equal(a.done.type === 'done' && a.done.usage.cachedTokens, 0);
    assert.ok(b.done.type === 'done' && b.done.usage.cachedTokens >= 36, `cached ${JSON.stringify(b.done)}`);
    assert.ok(s.stats().prefixHitTokens >= 36);
    // Same output as without the cache.
    const fresh = make({ blockSize: 4 });
    assert.deepEqual((await drain(fresh.submit(greedy([0, ...system, 7, 8, 9])))).ids, b.ids);
  });

  it('preempts and recomputes when the cache is short, with unchanged results', async () => {
    const ps = prompts(6).map((p) => [...p, ...p]);
    const roomy = make();
    const expected = await Promise.all(ps.map((p) => drain(roomy.submit(greedy(p, 24)))));
    // Room for about two and a half sequences: others must wait or be preempted.
    const bytesPerToken = engine.model.cacheBytesPerToken;
    const tight = make({ maxContext: 96, kvCacheMb: (130 * bytesPerToken) / 2 ** 20, blockSize: 4 });
    const got = await Promise.all(ps.map((p) => drain(tight.submit(greedy(p, 24)))));
    got.forEach((g, i) => assert.deepEqual(g.ids, expected[i].ids, `request ${i}`));
    assert.ok(tight.stats().preemptions > 0, 'expected preemptions');
    assert.equal(tight.stats().kvBlocksUsed, 0);
  });

  it('greedy output with MTP speculation equals output without, with drafts accepted', async () => {
    const ps = prompts(6);
    const plain = make();
    const spec = make({ speculative: 'mtp' });
    const a = await Promise.all(ps.map((p) => drain(plain.submit(greedy(p, 16)))));
    const b = await Promise.all(ps.map((p) => drain(spec.submit(greedy(p, 16)))));
    b.forEach((g, i) => assert.deepEqual(g.ids, a[i].ids, `request ${i}`));
    const st = spec.stats();
    assert.ok(st.draftTokens > 0);
    assert.equal(st.kvBlocksUsed, 0);
  });

  it('seeded sampling is reproducible, also under speculation', async () => {
    const p = prompts(1)[0];
    const req: RequestOptions = { prompt: p, maxTokens: 12, ignoreEos: true, sampling: { temperature: 1, seed: 42 } };
    const a = await drain(make().submit(req));
    const b = await drain(make({ speculative: 'mtp' }).submit(req));
    assert.deepEqual(a.ids, b.ids);
  });

  it('rejects over-long requests and a full queue', async () => {
    const s = make({ maxRunning: 1, maxQueue: 1 });
    assert.throws(() => s.submit(greedy([0, 1, 2], 300)), UserError);
    const first = drain(s.submit(greedy([0, 5, 6], 4)));
    s.submit(greedy([0, 5, 6], 4)); // waits
    assert.throws(() => s.submit(greedy([0, 5, 6], 4)), QueueFullError);
    await first;
    await s.shutdown();
  });

  it('logprobs come with each token when asked', async () => {
    const r = await drain(make().submit({ ...greedy([0, 9, 8, 7], 3), logprobs: 2 }));
    assert.equal(r.ids.length, 3);
  });
});
