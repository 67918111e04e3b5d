/**
 * Prometheus metrics for `GET /metrics`, named after vLLM's (`vllm:` → `shoal:`).
 *
 * Each server owns its Registry (never prom-client's global one, so several servers in one
 * process do not collide). Scheduler-wide figures are read from scheduler.stats() at scrape
 * time in collect(); per-request latencies are observed by the server as requests finish.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SchedulerStats } from '../engine/scheduler-types.js';

/** Latency buckets in seconds (vLLM's ranges, trimmed). */
const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];
const TOKEN_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

export class ServerMetrics {
  readonly registry = new Registry();
  private source: () => SchedulerStats | undefined = () => undefined;

  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly e2e: Histogram;
  readonly promptTokensPerRequest: Histogram;
  readonly generationTokensPerRequest: Histogram;
  readonly requestSuccess: Counter<'finished_reason'>;
  readonly httpRequests: Counter<'endpoint' | 'status'>;

  constructor(modelName: string) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    const stats = () => this.source();
    const gauge = (name: string, help: string, value: (s: SchedulerStats) => number) =>
      new Gauge({
        name, help, registers,
        collect() {
          const s = stats();
          this.set(s ? value(s) : 0);
        },
      });
    /** A counter mirroring a cumulative scheduler figure. */
    const mirror = (name: string, help: string, value: (s: SchedulerStats) => number) => {
      let last = 0;
      return new Counter({
        name, help, registers,
        collect() {
          const s = stats();
          if (!s) return;
          const v = value(s);
          if (v > last) this.inc(v - last);
          last = Math.max(last, v);
        },
      });
    };

    gauge('shoal:num_requests_running', 'Requests in the running batch.', (s) => s.running);
    gauge('shoal:num_requests_waiting', 'Requests waiting to be scheduled.', (s) => s.waiting);
    gauge('shoal:kv_cache_usage_perc', 'Fraction of KV-cache blocks held by requests (1 = full); blocks held only by the prefix cache are free to reuse and not counted.', (s) =>
      s.kvBlocksTotal ? s.kvBlocksUsed / s.kvBlocksTotal : 0);
    gauge('shoal:kv_cache_blocks_total', 'KV-cache blocks in the pool.', (s) => s.kvBlocksTotal);
    gauge('shoal:kv_cache_blocks_cached', 'KV-cache blocks held only by the prefix cache.', (s) => s.kvBlocksCached);
    mirror('shoal:prefix_cache_queries_total', 'Prompt tokens looked up in the prefix cache.', (s) => s.prefixQueryTokens);
    mirror('shoal:prefix_cache_hits_total', 'Prompt tokens found in the prefix cache.', (s) => s.prefixHitTokens);
    mirror('shoal:num_preemptions_total', 'Requests preempted (recomputed later) for lack of KV-cache blocks.', (s) => s.preemptions);
    mirror('shoal:prompt_tokens_total', 'Prompt tokens prefilled.', (s) => s.promptTokens);
    mirror('shoal:generation_tokens_total', 'Tokens generated.', (s) => s.generationTokens);
    mirror('shoal:spec_decode_num_draft_tokens_total', 'Speculative tokens drafted.', (s) => s.draftTokens);
    mirror('shoal:spec_decode_num_accepted_tokens_total', 'Speculative tokens accepted.', (s) => s.acceptedTokens);
    gauge('shoal:spec_decode_draft_acceptance_rate', 'Accepted over drafted speculative tokens (0 before any draft).', (s) =>
      s.draftTokens ? s.acceptedTokens / s.draftTokens : 0);

    this.ttft = new Histogram({ name: 'shoal:time_to_first_token_seconds', help: 'Time from request arrival to its first token.', buckets: TTFT_BUCKETS, registers });
    this.itl = new Histogram({ name: 'shoal:inter_token_latency_seconds', help: 'Time between consecutive tokens of a request.', buckets: ITL_BUCKETS, registers });
    this.e2e = new Histogram({ name: 'shoal:e2e_request_latency_seconds', help: 'Time from request arrival to its last token.', buckets: E2E_BUCKETS, registers });
    this.promptTokensPerRequest = new Histogram({ name: 'shoal:request_prompt_tokens', help: 'Prompt tokens per finished request.', buckets: TOKEN_BUCKETS, registers });
    this.generationTokensPerRequest = new Histogram({ name: 'shoal:request_generation_tokens', help: 'Generated tokens per finished request.', buckets: TOKEN_BUCKETS, registers });
    this.requestSuccess = new Counter({ name: 'shoal:request_success_total', help: 'Finished requests by finish reason.', labelNames: ['finished_reason'], registers });
    this.httpRequests = new Counter({ name: 'shoal:http_requests_total', help: 'HTTP requests answered, by endpoint and status code.', labelNames: ['endpoint', 'status'], registers });
  }

  /** Where scheduler figures come from (undefined while the model loads). */
  setSource(source: () => SchedulerStats | undefined): void {
    this.source = source;
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}
