/**
 * Token sampling: sampling parameters and their validation, a small seeded PRNG,
 * the per-request Sampler (penalties, greedy / temperature / top-k / top-p / min-p),
 * logprob helpers computed on raw model logits, and a streaming stop-string matcher.
 *
 * Order of operations follows vLLM: penalties (repetition, then frequency and
 * presence) on a working copy of the logits, then greedy argmax when the temperature
 * is (effectively) zero, otherwise temperature scaling, top-k, top-p, min-p,
 * softmax and a draw from the request's Rng.
 */
import { getRandomValues } from 'node:crypto';
import { UserError } from '../errors.js';

// ---------------------------------------------------------------------------
// Parameters

export interface SamplingParams {
  /** 0 = greedy. Values below 1e-5 are treated as greedy (as vLLM does). */
  temperature: number;
  /** 0 or -1 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 0 = off. Keeps tokens whose probability is at least minP times the top one's. */
  minP: number;
  /** 1 = off. HF/vLLM semantics over prompt and output tokens: positive logits divided, others multiplied. */
  repetitionPenalty: number;
  /** OpenAI semantics over output tokens: logit -= presencePenalty if the token occurred. */
  presencePenalty: number;
  /** OpenAI semantics over output tokens: logit -= frequencyPenalty * count. */
  frequencyPenalty: number;
  /** Seed for the request's Rng; without one the Rng is seeded from crypto randomness. */
  seed?: number;
}

/** Histogram resolution for top-p without top-k. */
const TOP_P_BUCKETS = 1024;

/** Temperatures below this are treated as greedy (vLLM's _SAMPLING_EPS). */
export const GREEDY_TEMPERATURE_EPS = 1e-5;

export function defaultSamplingParams(): SamplingParams {
  return {
    temperature: 1,
    topK: -1,
    topP: 1,
    minP: 0,
    repetitionPenalty: 1,
    presencePenalty: 0,
    frequencyPenalty: 0,
  };
}

function num(v: unknown, field: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new UserError(`must be a finite number, got ${JSON.stringify(v) ?? String(v)}`, field);
  }
  return v;
}

/**
 * Fills in defaults and checks ranges (vLLM/OpenAI): temperature >= 0, top_p in (0, 1],
 * top_k -1 or an integer >= 0, min_p in [0, 1], repetition_penalty > 0,
 * presence_penalty and frequency_penalty in [-2, 2], seed a safe integer.
 * Throws UserError naming the (snake_case, API-visible) field.
 */
export function validateSamplingParams(p: Partial<SamplingParams>): SamplingParams {
  const d = defaultSamplingParams();
  const out: SamplingParams = { ...d };

  const temperature = num(p.temperature, 'temperature');
  if (temperature !== undefined) {
    if (temperature < 0) throw new UserError(`must be >= 0, got ${temperature}`, 'temperature');
    out.temperature = temperature;
  }

  const topK = num(p.topK, 'top_k');
  if (topK !== undefined) {
    if (!Number.isInteger(topK) || topK < -1) {
      throw new UserError(`must be -1 (off) or an integer >= 0, got ${topK}`, 'top_k');
    }
    out.topK = topK;
  }

  const topP = num(p.topP, 'top_p');
  if (topP !== undefined) {
    if (!(topP > 0 && topP <= 1)) throw new UserError(`must be in (0, 1], got ${topP}`, 'top_p');
    out.topP = topP;
  }

  const minP = num(p.minP, 'min_p');
  if (minP !== undefined) {
    if (!(minP >= 0 && minP <= 1)) throw new UserError(`must be in [0, 1], got ${minP}`, 'min_p');
    out.minP = minP;
  }

  const rep = num(p.repetitionPenalty, 'repetition_penalty');
  if (rep !== undefined) {
    if (!(rep > 0)) throw new UserError(`must be > 0, got ${rep}`, 'repetition_penalty');
    out.repetitionPenalty = rep;
  }

  const presence = num(p.presencePenalty, 'presence_penalty');
  if (presence !== undefined) {
    if (!(presence >= -2 && presence <= 2)) {
      throw new UserError(`must be in [-2, 2], got ${presence}`, 'presence_penalty');
    }
    out.presencePenalty = presence;
  }

  const frequency = num(p.frequencyPenalty, 'frequency_penalty');
  if (frequency !== undefined) {
    if (!(frequency >= -2 && frequency <= 2)) {
      throw new UserError(`must be in [-2, 2], got ${frequency}`, 'frequency_penalty');
    }
    out.frequencyPenalty = frequency;
  }

  const seed = num(p.seed, 'seed');
  if (seed !== undefined) {
    if (!Number.isSafeInteger(seed)) throw new UserError(`must be an integer, got ${seed}`, 'seed');
    out.seed = seed;
  }

  return out;
}

// ---------------------------------------------------------------------------
// PRNG: xoshiro128** seeded through splitmix32. Pure 32-bit integer arithmetic,
// so a given seed yields the same sequence on every run and platform.

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

export class Rng {
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;

  /** Any safe integer (negative too) seeds deterministically; without one, crypto randomness is used. */
  constructor(seed?: number) {
    let words: [number, number, number, number];
    if (seed === undefined) {
      const buf = new Uint32Array(4);
      getRandomValues(buf);
      words = [buf[0]!, buf[1]!, buf[2]!, buf[3]!];
    } else {
      if (!Number.isFinite(seed)) throw new RangeError(`Rng seed must be finite, got ${seed}`);
      const n = Math.trunc(seed);
      const lo = n >>> 0; // ToUint32: n mod 2^32
      const hi = Math.floor(n / 4294967296) >>> 0;
      const a = { s: lo };
      const b = { s: hi ^ 0x5bd1e995 };
      words = [
        splitmix32(a) ^ splitmix32(b),
        splitmix32(a) ^ splitmix32(b),
        splitmix32(a) ^ splitmix32(b),
        splitmix32(a) ^ splitmix32(b),
      ];
    }
    this.s0 = words[0] | 0;
    this.s1 = words[1] | 0;
    this.s2 = words[2] | 0;
    this.s3 = words[3] | 0;
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1; // all-zero state is a fixed point
  }

  /** Next raw 32-bit output (unsigned). */
  nextUint32(): number {
    const s1 = this.s1;
    const x = Math.imul(s1, 5);
    const result = Math.imul((x << 7) | (x >>> 25), 9);
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= this.s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = (this.s3 << 11) | (this.s3 >>> 21);
    return result >>> 0;
  }

  /** Uniform double in [0, 1) with 53 random bits. */
  next(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }
}

// ---------------------------------------------------------------------------
// Logprob helpers (on raw model logits)

export interface TokenLogprob {
  token: number;
  logprob: number;
}

/** log(sum(exp(logits))), numerically stable; NaN entries count as -Infinity. */
export function logSumExp(logits: ArrayLike<number>): number {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (v > max) max = v;
  }
  if (max === -Infinity) return -Infinity;
  if (max === Infinity) return Infinity;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = logits[i]!;
    if (v === v) sum += Math.exp(v - max);
  }
  return max + Math.log(sum);
}

/** log-softmax of one token, on the raw logits (what OpenAI reports as `logprob`). */
export function tokenLogprob(logits: ArrayLike<number>, token: number, lse = logSumExp(logits)): number {
  if (!Number.isInteger(token) || token < 0 || token >= logits.length) {
    throw new RangeError(`token ${token} out of range [0, ${logits.length})`);
  }
  const v = logits[token]!;
  return v === v ? v - lse : -Infinity;
}

/** The k most likely tokens under log-softmax of the raw logits, most likely first (ties: lowest id first). */
export function topLogprobs(logits: ArrayLike<number>, k: number, lse = logSumExp(logits)): TokenLogprob[] {
  const n = logits.length;
  const m = Math.max(0, Math.min(Math.floor(k), n));
  if (m === 0) return [];
  const idx = new Int32Array(m);
  const count = selectTop(logits, n, m, idx);
  const out: TokenLogprob[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const t = idx[i]!;
    const v = logits[t]!;
    out[i] = { token: t, logprob: v === v ? v - lse : -Infinity };
  }
  return out;
}

// ---------------------------------------------------------------------------
// Partial selection: a bounded min-heap ("worst kept element at the root") over
// token ids ordered by value descending, ties by id ascending. O(n log m), and
// for small m most elements cost one comparison against the root.

/** Writes the top m ids of values[0..n) into out[0..m), best first; returns m. NaN sorts last. */
function selectTop(values: ArrayLike<number>, n: number, m: number, out: Int32Array): number {
  if (m <= 0) return 0;
  // a is worse than b: lower value, or equal value and higher id. NaN is worst.
  const val = (i: number): number => {
    const v = values[i]!;
    return v === v ? v : -Infinity;
  };
  let size = 0;
  const siftDown = (start: number, end: number): void => {
    let pos = start;
    const id = out[pos]!;
    const v = val(id);
    for (;;) {
      let child = 2 * pos + 1;
      if (child >= end) break;
      let cid = out[child]!;
      let cv = val(cid);
      const r = child + 1;
      if (r < end) {
        const rid = out[r]!;
        const rv = val(rid);
        // pick the worse child
        if (rv < cv || (rv === cv && rid > cid)) {
          child = r;
          cid = rid;
          cv = rv;
        }
      }
      // stop once the element is worse than the worse child (the root holds the worst)
      if (v < cv || (v === cv && id > cid)) break;
      out[pos] = cid;
      pos = child;
    }
    out[pos] = id;
  };
  const siftUp = (start: number): void => {
    let pos = start;
    const id = out[pos]!;
    const v = val(id);
    while (pos > 0) {
      const parent = (pos - 1) >> 1;
      const pid = out[parent]!;
      const pv = val(pid);
      // move up while the element is worse than its parent
      if (v < pv || (v === pv && id > pid)) {
        out[pos] = pid;
        pos = parent;
      } else break;
    }
    out[pos] = id;
  };

  for (let i = 0; i < n; i++) {
    if (size < m) {
      out[size] = i;
      siftUp(size);
      size++;
      continue;
    }
    const raw = values[i]!;
    const v = raw === raw ? raw : -Infinity;
    const rootId = out[0]!;
    const rv = val(rootId);
    // i is better than the root iff v > rv (ids ascend, so an equal value is never better)
    if (v > rv) {
      out[0] = i;
      siftDown(0, size);
    }
  }
  // Heap-sort in place: repeatedly move the worst (root) to the end.
  for (let end = size - 1; end > 0; end--) {
    const t = out[0]!;
    out[0] = out[end]!;
    out[end] = t;
    siftDown(0, end);
  }
  return size;
}

// ---------------------------------------------------------------------------
// Sampler

export interface SampledLogprobs {
  /** Logprob of the chosen token under the raw logits. */
  logprob: number;
  /** The k most likely tokens under the raw logits, most likely first. */
  top: TokenLogprob[];
}

/**
 * Per-request sampler. `vocabSize` is the length of the logits rows passed to sample().
 * sample() does not record the token; call accept() with each generated token so the
 * presence/frequency/repetition penalties see it.
 */
export class Sampler {
  readonly params: SamplingParams;
  readonly vocabSize: number;
  readonly rng: Rng;

  /** Token occurs in prompt or output (repetition penalty). */
  private readonly seen: Uint8Array;
  private readonly seenList: number[] = [];
  /** Occurrences in the output (presence/frequency penalties). */
  private readonly outCounts: Int32Array;
  private readonly outList: number[] = [];
  private outputLength = 0;

  // Scratch buffers, reused across calls.
  private readonly work: Float32Array;
  private probs: Float64Array | null = null;
  private cand: Int32Array | null = null;
  private bucketMass: Float64Array | null = null;
  private bucketCount: Int32Array | null = null;
  private bucketOf: Uint16Array | null = null;

  constructor(params: SamplingParams, vocabSize: number, promptTokens?: ArrayLike<number>) {
    if (!Number.isInteger(vocabSize) || vocabSize <= 0) throw new RangeError(`bad vocabSize ${vocabSize}`);
    this.params = { ...params };
    this.vocabSize = vocabSize;
    this.rng = new Rng(params.seed);
    this.seen = new Uint8Array(vocabSize);
    this.outCounts = new Int32Array(vocabSize);
    this.work = new Float32Array(vocabSize);
    if (promptTokens) {
      for (let i = 0; i < promptTokens.length; i++) this.markSeen(this.checkToken(promptTokens[i]!));
    }
  }

  /** Number of output tokens recorded via accept(). */
  get outputTokenCount(): number {
    return this.outputLength;
  }

  private checkToken(t: number): number {
    if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) {
      throw new RangeError(`token ${t} out of range [0, ${this.vocabSize})`);
    }
    return t;
  }

  private markSeen(t: number): void {
    if (this.seen[t] === 0) {
      this.seen[t] = 1;
      this.seenList.push(t);
    }
  }

  /** Records a generated token for the penalties. */
  accept(token: number): void {
    const t = this.checkToken(token);
    if (this.outCounts[t]! === 0) this.outList.push(t);
    this.outCounts[t]!++;
    this.outputLength++;
    this.markSeen(t);
  }

  /** Logprob of `token` and the top-k alternatives, on the raw (unpenalised, unscaled) logits. */
  logprobs(logits: Float32Array, token: number, k = 0): SampledLogprobs {
    const lse = logSumExp(logits);
    return { logprob: tokenLogprob(logits, token, lse), top: topLogprobs(logits, k, lse) };
  }

  /** Picks the next token. Never modifies `logits`. */
  sample(logits: Float32Array): number {
    const n = this.vocabSize;
    if (logits.length !== n) throw new RangeError(`logits length ${logits.length} != vocabSize ${n}`);
    const p = this.params;
    const w = this.work;

    // Working copy, NaN -> -Infinity.
    for (let i = 0; i < n; i++) {
      const v = logits[i]!;
      w[i] = v === v ? v : -Infinity;
    }

    // Penalties, in vLLM's order: repetition, frequency, presence.
    const rep = p.repetitionPenalty;
    if (rep !== 1) {
      for (const t of this.seenList) {
        const v = w[t]!;
        w[t] = v > 0 ? v / rep : v * rep;
      }
    }
    const freq = p.frequencyPenalty;
    const pres = p.presencePenalty;
    if (freq !== 0 || pres !== 0) {
      for (const t of this.outList) w[t] = w[t]! - freq * this.outCounts[t]! - pres;
    }

    // Max (and greedy argmax: first maximum, i.e. lowest id on ties).
    let maxV = -Infinity;
    let argmax = -1;
    for (let i = 0; i < n; i++) {
      const v = w[i]!;
      if (v > maxV) {
        maxV = v;
        argmax = i;
      }
    }
    if (argmax < 0) throw new Error('sampler: every logit is -Infinity or NaN');
    if (p.temperature < GREEDY_TEMPERATURE_EPS || maxV === Infinity) return argmax;

    const invT = 1 / p.temperature;
    const topK = p.topK > 0 && p.topK < n ? p.topK : 0;
    const topP = p.topP;
    const minP = p.minP;

    if (topK > 0) {
      const cand = this.candBuffer(topK);
      const count = selectTop(w, n, topK, cand);
      const probs = this.probsBuffer();
      let z = 0;
      for (let j = 0; j < count; j++) {
        const e = Math.exp((w[cand[j]!]! - maxV) * invT);
        probs[j] = e;
        z += e;
      }
      return this.drawSorted(cand, probs, count, z, topP, minP);
    }

    // No top-k: unnormalised probabilities over the whole vocab, relative to the max (= 1).
    const probs = this.probsBuffer();
    let z = 0;
    for (let i = 0; i < n; i++) {
      const e = Math.exp((w[i]! - maxV) * invT);
      probs[i] = e;
      z += e;
    }

    if (topP < 1) return this.drawTopP(probs, z, maxV, invT, topP, minP);

    // Only min-p (or nothing): scan the vocab.
    if (minP > 0) {
      z = 0;
      for (let i = 0; i < n; i++) {
        if (probs[i]! < minP) probs[i] = 0;
        else z += probs[i]!;
      }
    }
    const u = this.rng.next() * z;
    let cum = 0;
    let last = argmax;
    for (let i = 0; i < n; i++) {
      const e = probs[i]!;
      if (e === 0) continue;
      cum += e;
      last = i;
      if (u < cum) return i;
    }
    return last;
  }

  /**
   * Candidates cand[0..count) sorted best first, with unnormalised masses probs[0..count)
   * (probs[0] = 1 is the maximum). Applies top-p, then min-p, then draws.
   */
  private drawSorted(cand: Int32Array, probs: Float64Array, count: number, z: number, topP: number, minP: number): number {
    let keep = count;
    if (topP < 1) {
      const target = topP * z;
      let cum = 0;
      for (let j = 0; j < count; j++) {
        cum += probs[j]!;
        if (cum >= target) {
          keep = j + 1;
          break;
        }
      }
    }
    if (minP > 0) {
      // probs are relative to the maximum (probs[0] === 1); ratios survive renormalisation.
      let j = 1;
      while (j < keep && probs[j]! >= minP) j++;
      keep = j;
    }
    let total = 0;
    for (let j = 0; j < keep; j++) total += probs[j]!;
    const u = this.rng.next() * total;
    let cum = 0;
    let last = cand[0]!;
    for (let j = 0; j < keep; j++) {
      const e = probs[j]!;
      if (e === 0) continue;
      cum += e;
      last = cand[j]!;
      if (u < cum) return last;
    }
    return last;
  }

  /**
   * Top-p over the whole vocab without sorting it: bucket tokens by scaled distance from the
   * max logit, find the bucket where the cumulative mass crosses topP, and sort only that
   * bucket. The nucleus is then every token ordered (value desc, id asc) up to and including
   * the crossing token c, i.e. w > w[c] or (w == w[c] and id <= c). Linear time.
   * probs[i] holds exp((w[i] - maxV) / T), z their sum.
   */
  private drawTopP(probs: Float64Array, z: number, maxV: number, invT: number, topP: number, minP: number): number {
    const n = this.vocabSize;
    const w = this.work;
    const B = TOP_P_BUCKETS;
    const mass = (this.bucketMass ??= new Float64Array(B));
    const cnt = (this.bucketCount ??= new Int32Array(B));
    const bucket = (this.bucketOf ??= new Uint16Array(n));
    mass.fill(0);
    cnt.fill(0);

    let minV = maxV;
    for (let i = 0; i < n; i++) {
      const v = w[i]!;
      if (v < minV && v !== -Infinity) minV = v;
    }
    // Spread the finite range (capped at 64 nats; anything further is ~0 mass) over the buckets.
    const range = Math.min((maxV - minV) * invT, 64);
    const scale = range > 0 ? (B - 1) / range : 0;
    const k = invT * scale;
    for (let i = 0; i < n; i++) {
      const d = (maxV - w[i]!) * k; // monotone in w; NaN for -Infinity when scale is 0
      const b = d < B - 1 ? Math.floor(d) : B - 1;
      bucket[i] = b;
      mass[b] += probs[i]!;
      cnt[b]!++;
    }

    const target = topP * z;
    let cum = 0;
    let before = 0;
    let cross = 0;
    for (let b = 0; b < B; b++) {
      if (cnt[b] === 0) continue;
      cross = b;
      before = cum;
      cum += mass[b]!;
      if (cum >= target) break;
    }

    const cand = this.candBuffer(cnt[cross]!);
    let m = 0;
    for (let i = 0; i < n; i++) if (bucket[i] === cross) cand[m++] = i;
    const sorted = cand.subarray(0, m);
    sorted.sort((a, b) => w[b]! - w[a]! || a - b);
    let c = sorted[m - 1]!;
    let acc = before;
    for (let j = 0; j < m; j++) {
      acc += probs[sorted[j]!]!;
      if (acc >= target) {
        c = sorted[j]!;
        break;
      }
    }
    const wc = w[c]!;

    // probs are relative to the max (= 1), so min-p is a plain threshold.
    let total = 0;
    for (let i = 0; i < n; i++) {
      const v = w[i]!;
      if ((v > wc || (v === wc && i <= c)) && probs[i]! >= minP) total += probs[i]!;
    }
    const u = this.rng.next() * total;
    let run = 0;
    let last = c;
    for (let i = 0; i < n; i++) {
      const v = w[i]!;
      const e = probs[i]!;
      if (e === 0 || !(v > wc || (v === wc && i <= c)) || e < minP) continue;
      run += e;
      last = i;
      if (u < run) return i;
    }
    return last;
  }

  private probsBuffer(): Float64Array {
    return (this.probs ??= new Float64Array(this.vocabSize));
  }

  private candBuffer(m: number): Int32Array {
    if (!this.cand || this.cand.length < m) {
      // Grow geometrically, capped at the vocab size.
      const size = Math.min(this.vocabSize, Math.max(m, (this.cand?.length ?? 0) * 2, 64));
      this.cand = new Int32Array(size);
    }
    return this.cand;
  }
}

// ---------------------------------------------------------------------------
// Stop strings

export interface StopPush {
  /** Text safe to send to the client now. */
  emit: string;
  /** A stop string completed; nothing more will be emitted. */
  stopped: boolean;
  /** The stop string that matched, when stopped by this push. */
  matched?: string;
}

/**
 * Streaming stop-string detection. Holds back the longest suffix of the pending text that
 * could still be the start of a stop string and emits the rest; when a stop string
 * completes, emits the text before it (the stop string itself is not emitted, as in
 * OpenAI's API) and reports stopped.
 */
export class StopStringMatcher {
  private readonly stops: string[];
  private readonly maxStopLen: number;
  private pending = '';
  private done = false;

  constructor(stops: string[]) {
    this.stops = [...new Set(stops.filter((s) => s.length > 0))];
    this.maxStopLen = this.stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  get stopped(): boolean {
    return this.done;
  }

  push(text: string): StopPush {
    if (this.done) return { emit: '', stopped: true };
    if (this.stops.length === 0) return { emit: text, stopped: false };
    const pending = this.pending + text;

    // Earliest completed stop string (longest one on equal start).
    let at = -1;
    let matched = '';
    // Only the held-back part plus the new text can contain a match.
    for (const s of this.stops) {
      const i = pending.indexOf(s);
      if (i >= 0 && (at < 0 || i < at || (i === at && s.length > matched.length))) {
        at = i;
        matched = s;
      }
    }
    if (at >= 0) {
      this.done = true;
      this.pending = '';
      return { emit: pending.slice(0, at), stopped: true, matched };
    }

    // Longest suffix that is a proper prefix of some stop string.
    let hold = 0;
    const limit = Math.min(this.maxStopLen - 1, pending.length);
    for (const s of this.stops) {
      for (let len = Math.min(s.length - 1, limit); len > hold; len--) {
        if (pending.endsWith(s.slice(0, len))) {
          hold = len;
          break;
        }
      }
    }
    const cut = pending.length - hold;
    this.pending = pending.slice(cut);
    return { emit: pending.slice(0, cut), stopped: false };
  }

  /** End of generation without a stop: returns any held-back text. */
  flush(): string {
    const rest = this.done ? '' : this.pending;
    this.pending = '';
    return rest;
  }
}
