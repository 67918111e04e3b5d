import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  Rng,
  Sampler,
  StopStringMatcher,
  defaultSamplingParams,
  logSumExp,
  tokenLogprob,
  topLogprobs,
  validateSamplingParams,
  type SamplingParams,
} from '../src/engine/sampling.js';
import { UserError } from '../src/errors.js';

function params(p: Partial<SamplingParams> = {}): SamplingParams {
  return validateSamplingParams(p);
}

function softmax(xs: ArrayLike<number>): number[] {
  const max = Math.max(...Array.from(xs));
  const e = Array.from(xs, (x) => Math.exp(x - max));
  const z = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / z);
}

/** Brute-force reference of the final distribution (vLLM semantics), with a full sort. */
function referenceProbs(
  logits: ArrayLike<number>,
  p: SamplingParams,
  prompt: number[] = [],
  output: number[] = [],
): number[] {
  const n = logits.length;
  const w = Array.from(logits);
  const seen = new Set([...prompt, ...output]);
  if (p.repetitionPenalty !== 1) {
    for (const t of seen) w[t] = w[t]! > 0 ? w[t]! / p.repetitionPenalty : w[t]! * p.repetitionPenalty;
  }
  const counts = new Map<number, number>();
  for (const t of output) counts.set(t, (counts.get(t) ?? 0) + 1);
  for (const [t, c] of counts) w[t] = w[t]! - p.frequencyPenalty * c - p.presencePenalty;
  const scaled = w.map((v) => v / p.temperature);
  const order = scaled.map((_, i) => i).sort((a, b) => scaled[b]! - scaled[a]! || a - b);
  let keep = new Set(order);
  if (p.topK > 0 && p.topK < n) keep = new Set(order.slice(0, p.topK));
  let probs = softmax(scaled.map((v, i) => (keep.has(i) ? v : -Infinity)));
  if (p.topP < 1) {
    let before = 0;
    const k2 = new Set<number>();
    for (const t of order) {
      if (!keep.has(t)) continue;
      if (before < p.topP) k2.add(t);
      before += probs[t]!;
    }
    keep = k2;
    probs = softmax(scaled.map((v, i) => (keep.has(i) ? v : -Infinity)));
  }
  if (p.minP > 0) {
    const pmax = Math.max(...probs);
    keep = new Set([...keep].filter((t) => probs[t]! >= p.minP * pmax));
    probs = softmax(scaled.map((v, i) => (keep.has(i) ? v : -Infinity)));
  }
  return probs;
}

function histogram(s: Sampler, logits: Float32Array, draws: number): number[] {
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[s.sample(logits)]!++;
  return counts.map((c) => c / draws);
}

function entropy(ps: number[]): number {
  return -ps.reduce((a, p) => (p > 0 ? a + p * Math.log(p) : a), 0);
}

function randomLogits(n: number, seed: number, scale = 3): Float32Array {
  const r = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r.next() * 2 - 1) * scale;
  return out;
}

describe('Rng', () => {
  test('same seed gives the same sequence, different seeds differ, values in [0,1)', () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const c = new Rng(43);
    const xs: number[] = [];
    let differ = 0;
    for (let i = 0; i < 1000; i++) {
      const x = a.next();
      assert.equal(x, b.next());
      if (x !== c.next()) differ++;
      assert.ok(x >= 0 && x < 1);
      xs.push(x);
    }
    assert.ok(differ > 990);
    const mean = xs.reduce((s, v) => s + v, 0) / xs.length;
    assert.ok(Math.abs(mean - 0.5) < 0.05, `mean ${mean}`);
  });

  test('known first outputs are stable (cross-platform determinism)', () => {
    const r = new Rng(0);
    const first = [r.nextUint32(), r.nextUint32(), r.nextUint32()];
    const again = new Rng(0);
    assert.deepEqual([again.nextUint32(), again.nextUint32(), again.nextUint32()], first);
    for (const v of first) assert.ok(Number.isInteger(v) && v >= 0 && v < 2 ** 32);
  });

  test('large and negative seeds are distinct and deterministic; unseeded differ', () => {
    const seeds = [0, 1, -1, 2 ** 32, 2 ** 32 + 1, Number.MAX_SAFE_INTEGER, -Number.MAX_SAFE_INTEGER];
    const firsts = seeds.map((s) => new Rng(s).next());
    assert.equal(new Set(firsts).size, seeds.length);
    assert.deepEqual(seeds.map((s) => new Rng(s).next()), firsts);
    assert.notEqual(new Rng().next(), new Rng().next());
  });
});

describe('validateSamplingParams', () => {
  test('fills defaults', () => {
    assert.deepEqual(validateSamplingParams({}), defaultSamplingParams());
    const p = validateSamplingParams({ temperature: 0, topK: 5, seed: 7 });
    assert.equal(p.temperature, 0);
    assert.equal(p.topK, 5);
    assert.equal(p.seed, 7);
    assert.equal(p.topP, 1);
    assert.equal(validateSamplingParams({ topK: -1 }).topK, -1);
    assert.equal(validateSamplingParams({ topK: 0 }).topK, 0);
    assert.equal(validateSamplingParams({ minP: 1, topP: 1, presencePenalty: -2, frequencyPenalty: 2 }).minP, 1);
  });

  const bad: [Partial<SamplingParams>, string][] = [
    [{ temperature: -0.1 }, 'temperature'],
    [{ temperature: NaN }, 'temperature'],
    [{ temperature: Infinity }, 'temperature'],
    [{ topP: 0 }, 'top_p'],
    [{ topP: 1.5 }, 'top_p'],
    [{ topK: -2 }, 'top_k'],
    [{ topK: 2.5 }, 'top_k'],
    [{ minP: -0.1 }, 'min_p'],
    [{ minP: 1.1 }, 'min_p'],
    [{ repetitionPenalty: 0 }, 'repetition_penalty'],
    [{ repetitionPenalty: -1 }, 'repetition_penalty'],
    [{ presencePenalty: 2.1 }, 'presence_penalty'],
    [{ frequencyPenalty: -2.5 }, 'frequency_penalty'],
    [{ seed: 1.5 }, 'seed'],
    [{ temperature: '1' as unknown as number }, 'temperature'],
  ];
  for (const [input, field] of bad) {
    const label = Object.entries(input).map(([k, v]) => `${k}=${typeof v === 'string' ? JSON.stringify(v) : String(v)}`).join(',');
    test(`rejects ${label} naming ${field}`, () => {
      assert.throws(
        () => validateSamplingParams(input),
        (e: unknown) => e instanceof UserError && e.message.includes(field) && e.where === field,
      );
    });
  }
});

describe('Sampler', () => {
  const logits5 = new Float32Array([1, 0.5, 0, -0.5, 2]);

  test('greedy picks argmax, ties go to the lowest id', () => {
    const s = new Sampler(params({ temperature: 0 }), 5);
    assert.equal(s.sample(logits5), 4);
    assert.equal(s.sample(new Float32Array([0, 3, 1, 3, 2])), 1);
    assert.equal(s.sample(new Float32Array([NaN, -Infinity, -1, NaN, -2])), 2);
  });

  test("never modifies the caller's logits", () => {
    const logits = randomLogits(100, 1);
    const copy = logits.slice();
    const s = new Sampler(
      params({ temperature: 0.7, topK: 10, topP: 0.9, minP: 0.05, repetitionPenalty: 1.3, presencePenalty: 0.5, frequencyPenalty: 0.5, seed: 1 }),
      100,
      [1, 2, 3],
    );
    for (let i = 0; i < 20; i++) s.accept(s.sample(logits));
    assert.deepEqual(logits, copy);
    const g = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), 100, [5]);
    g.sample(logits);
    assert.deepEqual(logits, copy);
  });

  test('same seed gives identical sequences over 200 draws; different seeds differ', () => {
    const logits = randomLogits(1000, 2, 2);
    const run = (seed: number) => {
      const s = new Sampler(params({ temperature: 1, seed, presencePenalty: 0.3 }), 1000);
      const out: number[] = [];
      for (let i = 0; i < 200; i++) {
        const t = s.sample(logits);
        s.accept(t);
        out.push(t);
      }
      return out;
    };
    const a = run(123);
    assert.deepEqual(run(123), a);
    const b = run(124);
    assert.notDeepEqual(b, a);
    assert.ok(a.filter((t, i) => t !== b[i]).length > 100);
  });

  test('sampled frequencies match softmax over 20k draws (5-token vocab)', () => {
    const s = new Sampler(params({ seed: 9 }), 5);
    const draws = 20000;
    const freq = histogram(s, logits5, draws);
    const expected = softmax(logits5);
    let chi2 = 0;
    for (let i = 0; i < 5; i++) {
      assert.ok(Math.abs(freq[i]! - expected[i]!) < 0.015, `token ${i}: ${freq[i]} vs ${expected[i]}`);
      chi2 += (draws * (freq[i]! - expected[i]!)) ** 2 / (draws * expected[i]!);
    }
    assert.ok(chi2 < 18.47, `chi2 ${chi2} (df 4, p=0.001)`);
  });

  test('top_k=1 equals greedy', () => {
    const logits = randomLogits(500, 3);
    const g = new Sampler(params({ temperature: 0 }), 500);
    const k = new Sampler(params({ temperature: 1.5, topK: 1, seed: 5 }), 500);
    for (let i = 0; i < 50; i++) assert.equal(k.sample(logits), g.sample(logits));
    const ties = new Float32Array([0, 2, 2, 1]);
    const k1 = new Sampler(params({ topK: 1, seed: 1 }), 4);
    for (let i = 0; i < 20; i++) assert.equal(k1.sample(ties), 1);
  });

  test('top_k keeps the k best with renormalised probabilities', () => {
    const p = params({ topK: 3, seed: 11 });
    const s = new Sampler(p, 5);
    const freq = histogram(s, logits5, 20000);
    const ref = referenceProbs(logits5, p);
    assert.equal(freq[2], 0);
    assert.equal(freq[3], 0);
    for (let i = 0; i < 5; i++) assert.ok(Math.abs(freq[i]! - ref[i]!) < 0.015, `token ${i}`);
  });

  test('small top_p keeps only the top token', () => {
    const s = new Sampler(params({ topP: 0.01, seed: 4 }), 5);
    for (let i = 0; i < 200; i++) assert.equal(s.sample(logits5), 4);
    const big = randomLogits(5000, 4);
    const g = new Sampler(params({ temperature: 0 }), 5000).sample(big);
    const s2 = new Sampler(params({ topP: 1e-6, seed: 4 }), 5000);
    for (let i = 0; i < 50; i++) assert.equal(s2.sample(big), g);
  });

  test('top_p nucleus matches the reference (with and without top_k)', () => {
    for (const extra of [{}, { topK: 4 }]) {
      const p = params({ topP: 0.8, seed: 21, ...extra });
      const s = new Sampler(p, 5);
      const freq = histogram(s, logits5, 20000);
      const ref = referenceProbs(logits5, p);
      for (let i = 0; i < 5; i++) {
        if (ref[i] === 0) assert.equal(freq[i], 0, `token ${i} should be cut`);
        assert.ok(Math.abs(freq[i]! - ref[i]!) < 0.015, `token ${i}: ${freq[i]} vs ${ref[i]}`);
      }
    }
  });

  test('top_p: ties at the cutoff are broken by lowest id', () => {
    // uniform over 4: token 0 (mass before 0), token 1 (0.25) kept; token 2 (0.5) is not
    const s = new Sampler(params({ topP: 0.5, seed: 2 }), 4);
    const f = histogram(s, new Float32Array([1, 1, 1, 1]), 4000);
    assert.equal(f[2], 0);
    assert.equal(f[3], 0);
    assert.ok(Math.abs(f[0]! - 0.5) < 0.05);
  });

  test('top_p (+ min_p, temperature) on a 60-token vocab matches the reference distribution', () => {
    const logits = randomLogits(60, 31, 2.5);
    for (const extra of [{ topP: 0.7 }, { topP: 0.9, minP: 0.15, temperature: 0.8 }, { topP: 0.6, temperature: 1.7 }]) {
      const p = params({ seed: 5, ...extra });
      const ref = referenceProbs(logits, p);
      const freq = histogram(new Sampler(p, 60), logits, 20000);
      for (let i = 0; i < 60; i++) {
        if (ref[i] === 0) assert.equal(freq[i], 0, `token ${i} should be cut (${JSON.stringify(extra)})`);
        else assert.ok(Math.abs(freq[i]! - ref[i]!) < 0.015, `token ${i}: ${freq[i]} vs ${ref[i]}`);
      }
    }
  });

  test('top_p over a 20k vocab only draws from the nucleus', () => {
    const n = 20000;
    for (const [topP, scale] of [[0.5, 8], [0.95, 1], [0.999, 0.01]] as const) {
      const logits = randomLogits(n, 17, scale);
      const p = params({ topP, seed: 3 });
      const ref = referenceProbs(logits, p);
      const s = new Sampler(p, n);
      for (let i = 0; i < 300; i++) {
        const t = s.sample(logits);
        assert.ok(ref[t]! > 0, `token ${t} outside nucleus (top_p ${topP})`);
      }
    }
  });

  test('min_p filters tokens below min_p * max prob', () => {
    // probs ∝ exp([1,0.5,0,-0.5,2]); relative to max: e^-1=0.37, e^-1.5=0.22, e^-2=0.14, e^-2.5=0.08
    const p = params({ minP: 0.2, seed: 8 });
    const s = new Sampler(p, 5);
    const freq = histogram(s, logits5, 20000);
    const ref = referenceProbs(logits5, p);
    assert.equal(freq[2], 0);
    assert.equal(freq[3], 0);
    assert.ok(freq[1]! > 0);
    for (let i = 0; i < 5; i++) assert.ok(Math.abs(freq[i]! - ref[i]!) < 0.015, `token ${i}`);
    // with top_k as well
    const s2 = new Sampler(params({ minP: 0.3, topK: 4, seed: 8 }), 5);
    const f2 = histogram(s2, logits5, 5000);
    assert.deepEqual(f2.map((f) => f > 0), [true, false, false, false, true]);
  });

  test('temperature: lower → lower entropy, higher → higher entropy', () => {
    const h = (t: number) => entropy(histogram(new Sampler(params({ temperature: t, seed: 1 }), 5), logits5, 20000));
    const [low, mid, high] = [h(0.5), h(1), h(2)];
    assert.ok(low < mid && mid < high, `${low} ${mid} ${high}`);
    const hr = (t: number) => entropy(referenceProbs(logits5, params({ temperature: t })));
    assert.ok(Math.abs(low - hr(0.5)) < 0.03 && Math.abs(high - hr(2)) < 0.03);
  });

  test('repetition penalty divides positive logits and multiplies negative ones (prompt and output)', () => {
    // positive: token 0 (2 → 1) loses to token 1 (1.5)
    const g = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), 3, [0]);
    assert.equal(g.sample(new Float32Array([2, 1.5, 0])), 1);
    // negative: token 0 (-1 → -2) loses to token 1 (-1.5); dividing would have made it win
    const g2 = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), 3, [0]);
    assert.equal(g2.sample(new Float32Array([-1, -1.5, -5])), 1);
    // output tokens are penalised too
    const g3 = new Sampler(params({ temperature: 0, repetitionPenalty: 2 }), 3);
    const l = new Float32Array([2, 1.5, 0]);
    assert.equal(g3.sample(l), 0);
    g3.accept(0);
    assert.equal(g3.sample(l), 1);
    // sampled probability drops
    const base = histogram(new Sampler(params({ seed: 2 }), 5), logits5, 20000)[4]!;
    const pen = histogram(new Sampler(params({ seed: 2, repetitionPenalty: 1.5 }), 5, [4, 4]), logits5, 20000)[4]!;
    assert.ok(pen < base - 0.1, `${pen} vs ${base}`);
    const ref = referenceProbs(logits5, params({ repetitionPenalty: 1.5 }), [4]);
    assert.ok(Math.abs(pen - ref[4]!) < 0.015);
  });

  test('presence and frequency penalties apply to output tokens only', () => {
    const l = new Float32Array([1, 0.5]);
    const s = new Sampler(params({ temperature: 0, presencePenalty: 2 }), 2, [0, 0, 0]);
    assert.equal(s.sample(l), 0); // prompt occurrences don't count
    s.accept(0);
    assert.equal(s.sample(l), 1); // 1 - 2 < 0.5

    const f = new Sampler(params({ temperature: 0, frequencyPenalty: 1 }), 2, [0]);
    const l2 = new Float32Array([3, 0]);
    const picks: number[] = [];
    for (let i = 0; i < 5; i++) {
      picks.push(f.sample(l2));
      f.accept(0);
    }
    // 3, 2, 1, 0 (tie → lowest id), -1
    assert.deepEqual(picks, [0, 0, 0, 0, 1]);
    assert.equal(f.outputTokenCount, 5);

    // negative presence penalty encourages repetition
    const n = new Sampler(params({ temperature: 0, presencePenalty: -2 }), 2);
    n.accept(1);
    assert.equal(n.sample(l), 1);

    // sampled distribution matches the reference with both penalties
    const p = params({ presencePenalty: 0.5, frequencyPenalty: 0.4, seed: 6 });
    const out = [4, 4, 0];
    const s2 = new Sampler(p, 5, [1, 1, 1]);
    for (const t of out) s2.accept(t);
    const freq = histogram(s2, logits5, 20000);
    const ref = referenceProbs(logits5, p, [1, 1, 1], out);
    for (let i = 0; i < 5; i++) assert.ok(Math.abs(freq[i]! - ref[i]!) < 0.015, `token ${i}`);
  });

  test('large vocab (131072) with top_k=50 draws only from the top 50', () => {
    const n = 131072;
    const logits = randomLogits(n, 99, 5);
    const top = new Set(topLogprobs(logits, 50).map((x) => x.token));
    const s = new Sampler(params({ temperature: 0.8, topK: 50, topP: 0.95, seed: 1 }), n);
    for (let i = 0; i < 100; i++) assert.ok(top.has(s.sample(logits)));
  });

  test('rejects logits of the wrong length and out-of-range tokens', () => {
    const s = new Sampler(params(), 5);
    assert.throws(() => s.sample(new Float32Array(4)), RangeError);
    assert.throws(() => s.accept(5), RangeError);
    assert.throws(() => new Sampler(params(), 5, [7]), RangeError);
  });

  test('logprobs() reports raw-logit logprobs', () => {
    const s = new Sampler(params({ temperature: 0.2, repetitionPenalty: 3 }), 5, [4]);
    const r = s.logprobs(logits5, 4, 2);
    const sm = softmax(logits5);
    assert.ok(Math.abs(r.logprob - Math.log(sm[4]!)) < 1e-6);
    assert.deepEqual(r.top.map((x) => x.token), [4, 0]);
  });
});

describe('logprob helpers', () => {
  test('topLogprobs is sorted, matches log-softmax, exp-sum ≤ 1', () => {
    const logits = randomLogits(1000, 5);
    const top = topLogprobs(logits, 20);
    assert.equal(top.length, 20);
    const sm = softmax(logits);
    const order = sm.map((p, i) => [p, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    let sum = 0;
    for (let i = 0; i < top.length; i++) {
      assert.equal(top[i]!.token, order[i]![1]);
      assert.ok(Math.abs(top[i]!.logprob - Math.log(order[i]![0])) < 1e-6);
      if (i > 0) assert.ok(top[i]!.logprob <= top[i - 1]!.logprob);
      assert.ok(top[i]!.logprob <= 0);
      sum += Math.exp(top[i]!.logprob);
    }
    assert.ok(sum <= 1 + 1e-9);
    const all = topLogprobs(logits5small(), 10);
    assert.equal(all.length, 3);
    assert.ok(Math.abs(all.reduce((a, x) => a + Math.exp(x.logprob), 0) - 1) < 1e-9);
    assert.deepEqual(topLogprobs(logits, 0), []);
  });

  test('ties are ordered by lowest id', () => {
    assert.deepEqual(topLogprobs(new Float32Array([1, 3, 3, 2, 3]), 3).map((x) => x.token), [1, 2, 4]);
  });

  test('numerically stable for huge logits', () => {
    const l = new Float32Array([10000, 9999, -10000]);
    const lp = tokenLogprob(l, 1);
    assert.ok(Number.isFinite(lp));
    assert.ok(Math.abs(lp - (-1 - Math.log(1 + Math.exp(-1)))) < 1e-9);
    assert.ok(Number.isFinite(logSumExp(l)));
    assert.equal(tokenLogprob(new Float32Array([0, -Infinity]), 1), -Infinity);
    assert.throws(() => tokenLogprob(l, 3), RangeError);
  });
});

function logits5small(): Float32Array {
  return new Float32Array([0.1, -3, 2]);
}

describe('StopStringMatcher', () => {
  test('stop string split across pushes', () => {
    const m = new StopStringMatcher([' STOP']);
    const a = m.push('Hel');
    assert.deepEqual(a, { emit: 'Hel', stopped: false });
    const b = m.push('lo STOP');
    assert.equal(b.emit, 'lo');
    assert.equal(b.stopped, true);
    assert.equal(b.matched, ' STOP');
    assert.equal(m.flush(), '');
    assert.deepEqual(m.push('more'), { emit: '', stopped: true });
  });

  test('holds back a partial stop string across several pushes', () => {
    const m = new StopStringMatcher([' STOP']);
    const out: string[] = [];
    for (const piece of ['Hello', ' S', 'T', 'O']) {
      const r = m.push(piece);
      assert.equal(r.stopped, false);
      out.push(r.emit);
    }
    assert.equal(out.join(''), 'Hello');
    const r = m.push('P and more');
    assert.deepEqual([r.emit, r.stopped], ['', true]);
  });

  test('multiple stop strings: the earliest one wins', () => {
    const m = new StopStringMatcher(['\n\n', 'END', 'Q:']);
    assert.deepEqual(m.push('answer is 4'), { emit: 'answer is 4', stopped: false });
    const r = m.push('2.Q: next END');
    assert.equal(r.emit, '2.');
    assert.equal(r.matched, 'Q:');
    const m2 = new StopStringMatcher(['abc', 'b']);
    assert.equal(m2.push('xab').emit, 'xa');
  });

  test('text that looks like a prefix then diverges is emitted in full', () => {
    const m = new StopStringMatcher([' STOP']);
    const parts = [m.push('a ST'), m.push('OX and'), m.push(' more')];
    assert.ok(parts.every((p) => !p.stopped));
    assert.equal(parts[0]!.emit, 'a');
    assert.equal(parts.map((p) => p.emit).join('') + m.flush(), 'a STOX and more');
  });

  test('flush returns held-back text when no stop completes', () => {
    const m = new StopStringMatcher(['</s>', 'User:']);
    const r = m.push('Bye Us');
    assert.deepEqual(r, { emit: 'Bye ', stopped: false });
    assert.equal(m.flush(), 'Us');
    assert.equal(m.flush(), '');
  });

  test('empty stop list passes text straight through', () => {
    const m = new StopStringMatcher([]);
    assert.deepEqual(m.push('a STOP'), { emit: 'a STOP', stopped: false });
    assert.equal(m.flush(), '');
    const m2 = new StopStringMatcher(['']);
    assert.deepEqual(m2.push('xyz'), { emit: 'xyz', stopped: false });
  });

  test('stop at the very start emits nothing', () => {
    const m = new StopStringMatcher(['###']);
    assert.deepEqual(m.push('##'), { emit: '', stopped: false });
    const r = m.push('#tail');
    assert.deepEqual([r.emit, r.stopped], ['', true]);
  });
});
