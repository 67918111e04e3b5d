/**
 * Continuous batching over the paged latent cache.
 *
 * Every step builds one batch from all running sequences: one token for each decoding
 * sequence, then prompt chunks for sequences still in prefill, within a token budget
 * (chunked prefill, so a long prompt never stalls running streams). Requests join and
 * leave at step boundaries. Full cache blocks are registered in a prefix cache keyed by
 * the tokens they hold (chained hashes) and reused by later requests; unreferenced
 * cached blocks are evicted LRU. When blocks run out the newest running sequence is
 * preempted: its blocks are freed and it is recomputed later (its prefix usually still
 * cached). With speculative MTP, each decoding sequence's MTP head drafts one token that
 * the main model verifies in the same batched pass as the next step.
 */
import { createHash } from 'node:crypto';
import type { Backend, Tensor } from '../backends/backend.js';
import type { LanguageModel, LayerRouting, ModelCache } from '../models/model.js';
import type { ShoalTokenizer, StreamDecoder } from '../tokenizer/tokenizer.js';
import { UserError } from '../errors.js';
import { BlockAllocator } from './kv-cache.js';
import { Sampler, StopStringMatcher, defaultSamplingParams, type SamplingParams } from './sampling.js';
import {
  QueueFullError, type ExpertCounts, type FinishReason, type RequestEvent, type RequestOptions, type SchedulerStats,
} from './scheduler-types.js';

export interface SchedulerOptions {
  maxRunning: number;
  maxQueue: number;
  /** Memory for the latent cache; default: enough for maxRunning full contexts, at most 1 GiB. */
  kvCacheMb?: number;
  blockSize?: number;
  /** Tokens per step over all sequences (prefill chunks fill what decoding leaves). */
  maxBatchTokens?: number;
  maxContext?: number;
  speculative?: 'mtp' | null;
  /** Sampling defaults for fields a request leaves out. */
  defaultSampling?: SamplingParams;
}

/** A FIFO of events that one consumer iterates. */
class EventQueue implements AsyncIterableIterator<RequestEvent> {
  private items: RequestEvent[] = [];
  private waiter: ((r: IteratorResult<RequestEvent>) => void) | null = null;
  private closed = false;

  push(e: RequestEvent): void {
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w({ value: e, done: false });
    } else this.items.push(e);
    if (e.type === 'done') this.closed = true;
  }

  next(): Promise<IteratorResult<RequestEvent>> {
    const e = this.items.shift();
    if (e) return Promise.resolve({ value: e, done: false });
    if (this.closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<RequestEvent> {
    return this;
  }
}

class Sequence {
  /** Prompt followed by every generated token. */
  readonly tokens: number[];
  /** Tokens whose latents are in the cache. */
  computed = 0;
  readonly blocks: number[] = [];
  /** Blocks already registered in (or taken from) the prefix cache. */
  registeredBlocks = 0;
  /** Hash of the last registered block, chaining the next key. */
  lastKey = '';
  generated = 0;
  cachedTokens = 0;
  firstTokenAt = 0;
  draftTokens = 0;
  acceptedTokens = 0;
  /** MTP draft proposed after the last accepted token, verified in the next step. */
  draft: number | null = null;
  routing: ExpertCounts | undefined;
  readonly sampler: Sampler;
  readonly detok: StreamDecoder;
  readonly stops: StopStringMatcher;
  readonly stopIds: Set<number>;
  readonly events = new EventQueue();
  readonly submittedAt = performance.now();
  finished = false;

  constructor(readonly id: number, readonly req: RequestOptions, sampling: SamplingParams, vocab: number, tok: ShoalTokenizer, eos: number[]) {
    this.tokens = [...req.prompt];
    this.sampler = new Sampler(sampling, vocab, req.prompt);
    this.detok = tok.streamDecoder({ contextIds: req.prompt, skipSpecialTokens: true });
    this.stops = new StopStringMatcher(req.stop ?? []);
    this.stopIds = new Set([...(req.ignoreEos ? [] : eos), ...(req.stopTokenIds ?? [])]);
  }

  get promptLength(): number {
    return this.req.prompt.length;
  }
}

/** One MoE layer's expert ids for a step's rows (row-major, topK per row). */
interface StepRouting {
  layer: number;
  ids: ArrayLike<number>;
  topK: number;
}

export class Scheduler {
  readonly alloc: BlockAllocator;
  readonly cache: ModelCache;
  readonly maxContext: number;
  private readonly maxBatchTokens: number;
  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  /** Prefix cache: chained block hash -> block id, in LRU order (oldest first). */
  private readonly prefix = new Map<string, number>();
  private readonly blockKey = new Map<number, string>();
  private nextId = 1;
  private loopRunning = false;
  private stopped = false;
  private idle: Promise<void> = Promise.resolve();
  private readonly counters = { prefixQueryTokens: 0, prefixHitTokens: 0, preemptions: 0, promptTokens: 0, generationTokens: 0, draftTokens: 0, acceptedTokens: 0 };
  private readonly defaults: SamplingParams;
  private readonly eos: number[];
  readonly speculative: 'mtp' | null;

  constructor(readonly model: LanguageModel, readonly tokenizer: ShoalTokenizer, readonly backend: Backend, readonly opts: SchedulerOptions) {
    const cfg = model.cfg;
    this.maxContext = Math.min(opts.maxContext ?? 4096, cfg.maxPositionEmbeddings);
    const blockSize = opts.blockSize ?? 16;
    const bytesPerBlock = model.cacheBytesPerToken * blockSize;
    const mb = opts.kvCacheMb ?? Math.min(1024, Math.ceil((opts.maxRunning * (this.maxContext + blockSize) * model.cacheBytesPerToken) / 2 ** 20));
    const numBlocks = Math.floor((mb * 2 ** 20) / bytesPerBlock);
    if (numBlocks < Math.ceil(this.maxContext / blockSize)) {
      throw new UserError(`${mb} MiB of KV cache holds ${numBlocks * blockSize} tokens, less than one context of ${this.maxContext}`, '--kv-cache-mb');
    }
    this.alloc = new BlockAllocator(numBlocks, blockSize);
    this.cache = model.createCache(numBlocks, blockSize);
    this.maxBatchTokens = Math.max(opts.maxBatchTokens ?? 256, opts.maxRunning * 2);
    this.defaults = opts.defaultSampling ?? { ...defaultSamplingParams(), temperature: 0 };
    this.speculative = opts.speculative ?? null;
    if (this.speculative === 'mtp' && !(model.mtp.length && model.mtpForward)) throw new UserError('this checkpoint has no MTP layer (num_nextn_predict_layers is 0)', '--speculative');
    const eos = new Set(cfg.eosTokenIds);
    if (tokenizer.eosTokenId !== undefined) eos.add(tokenizer.eosTokenId);
    this.eos = [...eos];
  }

  /** Queues a request; events stream from the returned iterator. */
  submit(req: RequestOptions): AsyncIterableIterator<RequestEvent> {
    if (this.stopped) throw new QueueFullError('the server is shutting down');
    const V = this.model.cfg.vocabSize;
    if (!req.prompt.length) throw new UserError('the prompt is empty', 'prompt');
    for (const id of req.prompt) if (!Number.isInteger(id) || id < 0 || id >= V) throw new UserError(`token id ${id} outside the vocabulary (${V})`, 'prompt');
    if (!Number.isInteger(req.maxTokens) || req.maxTokens < 1) throw new UserError('must be a positive integer', 'max_tokens');
    if (req.prompt.length + req.maxTokens > this.maxContext) {
      throw new UserError(`prompt (${req.prompt.length} tokens) plus max_tokens (${req.maxTokens}) exceeds the context of ${this.maxContext} tokens`, 'max_tokens');
    }
    if (this.waiting.length >= this.opts.maxQueue) throw new QueueFullError(`${this.waiting.length} requests already waiting`);
    const sampling = { ...this.defaults, ...Object.fromEntries(Object.entries(req.sampling ?? {}).filter(([, v]) => v !== undefined)) } as SamplingParams;
    const seq = new Sequence(this.nextId++, req, sampling, V, this.tokenizer, this.eos);
    this.waiting.push(seq);
    this.kick();
    return seq.events;
  }

  stats(): SchedulerStats {
    let cached = 0;
    for (const b of this.prefix.values()) if (this.alloc.refCount(b) === 1) cached++;
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      kvBlocksTotal: this.alloc.numBlocks,
      kvBlocksUsed: this.alloc.usedBlocks - cached,
      kvBlocksCached: cached,
      ...this.counters,
    };
  }

  /** Stops taking requests, aborts what is queued or running, and waits for the loop to end. */
  async shutdown(): Promise<void> {
    this.stopped = true;
    for (const s of [...this.waiting, ...this.running]) this.finish(s, 'abort');
    this.waiting.length = 0;
    this.running.length = 0;
    await this.idle;
  }

  private kick(): void {
    if (this.loopRunning) return;
    this.loopRunning = true;
    this.idle = this.loop().finally(() => { this.loopRunning = false; });
  }

  private async loop(): Promise<void> {
    while (!this.stopped && (this.waiting.length || this.running.length)) {
      try {
        await this.step();
      } catch (e) {
        // A failed step must not take the server down: fail the sequences in it.
        const err = e as Error;
        process.stderr.write(`shoal: step failed: ${err.stack ?? err.message}\n`);
        for (const s of [...this.running]) this.finish(s, 'abort');
        this.running.length = 0;
      }
      // Let the event loop deliver events and accept requests between steps.
      await new Promise((r) => setImmediate(r));
    }
  }

  // ---- cache blocks --------------------------------------------------------------------

  private blockHash(parent: string, tokens: number[]): string {
    return createHash('sha1').update(parent).update(Int32Array.from(tokens)).digest('base64');
  }

  /** Takes cached full blocks matching the start of the sequence's tokens (leaving >= 1 to compute). */
  private matchPrefix(s: Sequence): void {
    const B = this.alloc.blockSize;
    this.counters.prefixQueryTokens += s.tokens.length;
    let parent = '';
    for (let j = 0; (j + 1) * B <= s.tokens.length - 1; j++) {
      const key = this.blockHash(parent, s.tokens.slice(j * B, (j + 1) * B));
      const b = this.prefix.get(key);
      if (b === undefined) break;
      this.prefix.delete(key); // move to the LRU end
      this.prefix.set(key, b);
      this.alloc.retain(b);
      s.blocks.push(b);
      s.computed += B;
      s.registeredBlocks++;
      s.lastKey = key;
      parent = key;
    }
    s.cachedTokens = s.computed;
    this.counters.prefixHitTokens += s.computed;
  }

  /** Registers the sequence's newly filled blocks in the prefix cache. */
  private registerBlocks(s: Sequence): void {
    const B = this.alloc.blockSize;
    while ((s.registeredBlocks + 1) * B <= s.computed) {
      const j = s.registeredBlocks;
      const key = this.blockHash(s.lastKey, s.tokens.slice(j * B, (j + 1) * B));
      if (!this.prefix.has(key)) {
        this.prefix.set(key, s.blocks[j]);
        this.blockKey.set(s.blocks[j], key);
        this.alloc.retain(s.blocks[j]);
      }
      s.lastKey = key;
      s.registeredBlocks++;
    }
  }

  /** Frees LRU prefix-cache blocks that no sequence uses, until `need` blocks are free. */
  private evict(need: number): void {
    for (const [key, b] of this.prefix) {
      if (this.alloc.freeBlocks >= need) return;
      if (this.alloc.refCount(b) !== 1) continue;
      this.prefix.delete(key);
      this.blockKey.delete(b);
      this.alloc.release(b);
    }
  }

  /** Grows the block table to hold `tokens` positions; false if memory is short even after eviction. */
  private reserve(s: Sequence, tokens: number): boolean {
    const need = this.alloc.blocksFor(tokens) - s.blocks.length;
    if (need <= 0) return true;
    if (this.alloc.freeBlocks < need) this.evict(need);
    if (this.alloc.freeBlocks < need) return false;
    for (let i = 0; i < need; i++) s.blocks.push(this.alloc.allocate()!);
    return true;
  }

  private releaseBlocks(s: Sequence): void {
    for (const b of s.blocks) this.alloc.release(b);
    s.blocks.length = 0;
    s.computed = 0;
    s.registeredBlocks = 0;
    s.lastKey = '';
  }

  /** Returns a running sequence to the front of the queue, to be recomputed later. */
  private preempt(s: Sequence): void {
    this.releaseBlocks(s);
    s.draft = null;
    this.running.splice(this.running.indexOf(s), 1);
    this.waiting.unshift(s);
    this.counters.preemptions++;
  }

  // ---- one step ------------------------------------------------------------------------

  private async step(): Promise<void> {
    for (const s of [...this.running, ...this.waiting]) if (s.req.signal?.aborted) this.finish(s, 'abort');
    this.dropFinished();

    // Admit waiting sequences while there is room.
    while (this.waiting.length && this.running.length < this.opts.maxRunning) {
      const s = this.waiting.shift()!;
      if (s.computed === 0) this.matchPrefix(s);
      this.running.push(s);
    }

    // Plan the batch: decoding sequences first (1 token, +1 with a draft), then prefill chunks.
    type Part = { s: Sequence; start: number; count: number };
    const parts: Part[] = [];
    let budget = this.maxBatchTokens;
    const order = [...this.running].sort((a, b) => Number(a.computed < a.tokens.length - 1) - Number(b.computed < b.tokens.length - 1));
    for (const s of order) {
      if (!this.running.includes(s)) continue; // preempted while planning
      const remaining = s.tokens.length - s.computed;
      let count = Math.min(remaining, budget);
      const withDraft = remaining === 1 && s.draft !== null;
      if (withDraft) count = Math.min(2, budget);
      if (count <= 0) break;
      // Find memory, preempting the newest other sequences if needed.
      while (!this.reserve(s, s.computed + count)) {
        const victim = [...this.running].reverse().find((v) => v !== s && !parts.some((p) => p.s === v));
        if (!victim) break;
        this.preempt(victim);
      }
      if (!this.reserve(s, s.computed + count)) {
        this.preempt(s);
        continue;
      }
      if (withDraft && count < 2) s.draft = null;
      parts.push({ s, start: s.computed, count });
      budget -= count;
    }
    if (!parts.length) return;

    // Assemble the batch.
    const n = parts.reduce((a, p) => a + p.count, 0);
    const tokens = new Int32Array(n), positions = new Int32Array(n), seqIndex = new Int32Array(n);
    const blockTables: Int32Array[] = [];
    const sampleRows: number[] = [];
    let row = 0;
    parts.forEach((p, i) => {
      blockTables.push(Int32Array.from(p.s.blocks));
      for (let k = 0; k < p.count; k++) {
        const pos = p.start + k;
        tokens[row] = pos < p.s.tokens.length ? p.s.tokens[pos] : p.s.draft!;
        positions[row] = pos;
        seqIndex[row] = i;
        row++;
      }
    });
    // Rows whose logits we need: the last known token of each sequence that reaches it, and its draft.
    const partRows: { p: Part; rows: number[] }[] = [];
    row = 0;
    for (const p of parts) {
      const reaches = p.start + p.count >= p.s.tokens.length;
      if (reaches) {
        const last = row + (p.s.tokens.length - 1 - p.start);
        const rows = [last];
        if (p.start + p.count > p.s.tokens.length) rows.push(last + 1); // the draft's own logits
        partRows.push({ p, rows });
        sampleRows.push(...rows);
      }
      row += p.count;
    }
    const batch = { tokens, positions, seqIndex, blockTables };
    const routings: LayerRouting[] | undefined = parts.some((p) => p.s.req.collectRouting) ? [] : undefined;
    const hidden = await this.model.forward(batch, this.cache, routings);
    const routed = routings ? await this.readRoutings(routings) : undefined;
    const lastBackend = this.model.placement.backendFor(this.model.cfg.numHiddenLayers - 1);
    const V = this.model.cfg.vocabSize;
    const logits = sampleRows.length ? await lastBackend.read(this.model.logits(hidden, Int32Array.from(sampleRows))) : new Float32Array(0);

    for (const p of parts) {
      p.s.computed = Math.min(p.s.tokens.length, p.start + p.count);
      this.counters.promptTokens += Math.max(0, Math.min(p.start + p.count, p.s.promptLength) - p.start);
    }

    // Sample, verify drafts, emit.
    let li = 0;
    for (const { p, rows } of partRows) {
      const s = p.s;
      const base = li;
      const rowLogits = (k: number) => logits.subarray((base + k) * V, (base + k + 1) * V);
      li += rows.length;
      let token = s.sampler.sample(rowLogits(0));
      let used = rowLogits(0);
      let from = rows[0]; // the batch row whose logits chose `token`
      if (rows.length === 2) {
        // Verify the draft: accepted exactly when it is the token the main model samples, so
        // outputs follow the main model's distribution (and greedy output is unchanged).
        s.draftTokens++;
        this.counters.draftTokens++;
        if (token === s.draft) {
          s.acceptedTokens++;
          this.counters.acceptedTokens++;
          s.tokens.push(token);
          s.computed++; // the draft's latent is already in the cache
          this.countExperts(s, routed, from);
          if (this.emitToken(s, token, used)) continue;
          used = rowLogits(1);
          from = rows[1];
          token = s.sampler.sample(used);
        }
        // A rejected draft's cache slot is overwritten when the right token is computed.
      }
      s.draft = null;
      s.tokens.push(token);
      this.countExperts(s, routed, from);
      this.emitToken(s, token, used);
    }

    if (this.speculative === 'mtp') await this.runMtp(parts, tokens, hidden);
    this.dropFinished();
  }

  private dropFinished(): void {
    for (const list of [this.running, this.waiting]) {
      const live = list.filter((s) => !s.finished);
      list.splice(0, list.length, ...live);
    }
  }

  /**
   * Runs the MTP head over every row of the step whose token was kept and whose next token is
   * known: this fills the MTP layer's own cache (it attends over all earlier positions) and,
   * at each live sequence's last position, drafts the token after the one just sampled.
   */
  private async runMtp(parts: { s: Sequence; start: number; count: number }[], tokens: Int32Array, hidden: Tensor): Promise<void> {
    const rows: number[] = [], next: number[] = [], positions: number[] = [], seqIndex: number[] = [];
    const blockTables: Int32Array[] = [];
    const drafting: { s: Sequence; i: number }[] = [];
    let row = 0;
    for (const p of parts) {
      const s = p.s;
      const si = blockTables.length;
      let used = false;
      for (let k = 0; k < p.count; k++, row++) {
        const pos = p.start + k;
        if (s.finished || pos + 1 >= s.tokens.length || s.tokens[pos] !== tokens[row]) continue;
        if (pos === s.tokens.length - 2) drafting.push({ s, i: rows.length });
        rows.push(row);
        positions.push(pos);
        // Position 0 sees a zeroed embedding (the convention vLLM and SGLang serve, and the fixtures use).
        next.push(pos === 0 ? -1 : s.tokens[pos + 1]);
        seqIndex.push(si);
        used = true;
      }
      if (used) blockTables.push(Int32Array.from(s.blocks));
    }
    if (!rows.length) return;
    const b = this.model.placement.backendFor(this.model.cfg.numHiddenLayers - 1);
    const h = b.gatherRows(hidden, Int32Array.from(rows));
    const batch = { positions: Int32Array.from(positions), seqIndex: Int32Array.from(seqIndex), blockTables };
    const { logits } = await this.model.mtpForward!(0, h, Int32Array.from(next), batch, this.cache);
    if (!drafting.length) return;
    const mb = this.model.mtp[0].decoder.backend;
    const best = await mb.argmaxRows(mb.gatherRows(logits, Int32Array.from(drafting.map((d) => d.i))));
    drafting.forEach((d, j) => { d.s.draft = best[j]; });
  }

  /** Every MoE layer's expert choices for this step's rows (when some sequence collects routing). */
  private async readRoutings(routings: LayerRouting[]): Promise<StepRouting[]> {
    const out: StepRouting[] = [];
    for (const { layer, backend, routing } of routings) out.push({ layer, ids: (await backend.readRouting(routing)).ids, topK: routing.topK });
    return out;
  }

  /**
   * Counts the experts that batch row `row` chose in each MoE layer, for the token its logits
   * produced: one row per generated token (the prompt's last row makes the first), so each
   * layer's counts sum to generated tokens x K. Recomputed rows after a preemption and
   * rejected drafts produce no token and are not counted.
   */
  private countExperts(s: Sequence, routed: StepRouting[] | undefined, row: number): void {
    if (!routed || !s.req.collectRouting) return;
    const E = this.model.cfg.nRoutedExperts;
    s.routing ??= { layers: [], counts: [] };
    for (const { layer, ids, topK: K } of routed) {
      let li = s.routing.layers.indexOf(layer);
      if (li < 0) { li = s.routing.layers.push(layer) - 1; s.routing.counts.push(new Array(E).fill(0)); }
      for (let j = 0; j < K; j++) s.routing.counts[li][ids[row * K + j]]++;
    }
  }

  /** Records and streams one generated token; returns true when the sequence finished. */
  private emitToken(s: Sequence, token: number, logits: Float32Array): boolean {
    s.sampler.accept(token);
    s.generated++;
    this.counters.generationTokens++;
    if (s.generated === 1) s.firstTokenAt = performance.now();
    const lp = s.req.logprobs !== undefined ? s.sampler.logprobs(logits, token, s.req.logprobs) : undefined;
    const tok = lp ? { id: token, logprob: lp.logprob, top: lp.top } : { id: token };
    if (s.stopIds.has(token)) {
      s.events.push({ type: 'token', token: tok, text: '' });
      this.finish(s, 'stop');
      return true;
    }
    const r = s.stops.push(s.detok.push(token));
    s.events.push({ type: 'token', token: tok, text: r.emit });
    if (r.stopped) { this.finish(s, 'stop'); return true; }
    if (s.generated >= s.req.maxTokens) { this.finish(s, 'length'); return true; }
    return false;
  }

  private finish(s: Sequence, reason: FinishReason): void {
    if (s.finished) return;
    s.finished = true;
    let text = '';
    if (reason !== 'abort' && !s.stops.stopped) {
      const tail = s.stops.push(s.detok.flush());
      text = tail.emit + (tail.stopped ? '' : s.stops.flush());
    }
    if (s.blocks.length) {
      this.registerBlocks(s);
      this.releaseBlocks(s);
    }
    const now = performance.now();
    s.events.push({
      type: 'done',
      finishReason: reason,
      text,
      usage: { promptTokens: s.promptLength, completionTokens: s.generated, cachedTokens: s.cachedTokens },
      ttftMs: s.firstTokenAt ? s.firstTokenAt - s.submittedAt : now - s.submittedAt,
      totalMs: now - s.submittedAt,
      draftTokens: s.draftTokens,
      acceptedTokens: s.acceptedTokens,
      routing: s.routing,
    });
  }
}
