/**
 * The contract between the continuous-batching scheduler (engine/scheduler.ts) and its
 * users (the HTTP server, `shoal run`, benchmarks).
 */
import type { SamplingParams, TokenLogprob } from './sampling.js';

export interface RequestOptions {
  /** Prompt token ids (already templated and tokenized). */
  prompt: number[];
  sampling?: Partial<SamplingParams>;
  maxTokens: number;
  /** Stop strings: generation ends before them and they are not emitted. */
  stop?: string[];
  /** Extra token ids that end generation (besides EOS unless ignoreEos). */
  stopTokenIds?: number[];
  ignoreEos?: boolean;
  /** Return the chosen token's logprob and this many alternatives (0 = chosen only); undefined = none. */
  logprobs?: number;
  /** Count which experts each MoE layer routes this request's generated tokens to. */
  collectRouting?: boolean;
  /** Aborting cancels the request at the next step boundary and frees its cache blocks. */
  signal?: AbortSignal;
}

export interface GeneratedToken {
  id: number;
  /** Set when logprobs were requested. */
  logprob?: number;
  top?: TokenLogprob[];
}

export type FinishReason = 'stop' | 'length' | 'abort';

export type RequestEvent =
  | {
      type: 'token';
      token: GeneratedToken;
      /** Text completed by this token ('' while held back: partial UTF-8 or a possible stop string). */
      text: string;
    }
  | {
      type: 'done';
      finishReason: FinishReason;
      /** Remaining text released at the end (may be ''). */
      text: string;
      usage: { promptTokens: number; completionTokens: number; cachedTokens: number };
      /** Milliseconds from submit to the first token, and to the end. */
      ttftMs: number;
      totalMs: number;
      /** Speculative decoding: drafted and accepted token counts for this request. */
      draftTokens: number;
      acceptedTokens: number;
      /** With collectRouting: per MoE layer, how many generated tokens chose each routed expert. */
      routing?: ExpertCounts;
    };

export interface ExpertCounts {
  /** Decoder layer index of each row of `counts`. */
  layers: number[];
  /** counts[i][e]: tokens routed to expert e in layers[i]. */
  counts: number[][];
}

export interface SchedulerStats {
  running: number;
  waiting: number;
  kvBlocksTotal: number;
  kvBlocksUsed: number;
  /** Blocks held only by the prefix cache (reusable, evictable). */
  kvBlocksCached: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  preemptions: number;
  promptTokens: number;
  generationTokens: number;
  draftTokens: number;
  acceptedTokens: number;
}

/** Thrown by submit() when the waiting queue is full (HTTP 429). */
export class QueueFullError extends Error {
  override name = 'QueueFullError';
}
