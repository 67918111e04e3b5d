/**
 * OpenAI-compatible request schemas (zod) and response shapes.
 *
 * Requests are validated field by field so a bad one answers 400 with an OpenAI-style error
 * naming the field (`param`). Unknown fields are ignored, as OpenAI clients send many optional
 * ones; `null` is accepted wherever a field is optional (the official clients send it).
 * Ranges of the sampling fields are checked by engine/sampling.ts's validateSamplingParams so
 * the CLI and the server agree.
 */
import { z } from 'zod';

// ---------------------------------------------------------------------------
// Errors

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

/** An error answered as an HTTP status with an OpenAI-style body. */
export class HttpError extends Error {
  override name = 'HttpError';
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly type: string = status >= 500 ? 'server_error' : 'invalid_request_error',
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  body(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** `messages[0].content` style name of a zod issue path. */
export function paramName(path: readonly PropertyKey[]): string | null {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else out += out ? `.${String(p)}` : String(p);
  }
  return out || null;
}

/** First issue of a failed parse as a 400. */
export function zodError(err: z.ZodError): HttpError {
  const issue = err.issues[0]!;
  const param = paramName(issue.path);
  return new HttpError(400, param ? `${param}: ${issue.message}` : issue.message, param);
}

// ---------------------------------------------------------------------------
// Request schemas

const int = () => z.number().int();

/** `stop`: a string or a list of strings (OpenAI allows up to 4; we take up to 16). */
const Stop = z.union([z.string(), z.array(z.string()).max(16)], { error: 'must be a string or an array of strings' });

const ContentPart = z.looseObject({
  type: z.string(),
  text: z.string().optional(),
});

const MessageContent = z.union([z.string(), z.array(ContentPart)], { error: 'must be a string or an array of content parts' });

const ToolCallIn = z.object({
  id: z.string().nullish(),
  type: z.string().nullish(),
  function: z.object({
    name: z.string(),
    arguments: z.union([z.string(), z.record(z.string(), z.unknown())], { error: 'must be a JSON string' }),
  }),
});

export const ChatMessageSchema = z.object({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool'], { error: 'must be one of system, developer, user, assistant, tool' }),
  content: MessageContent.nullish(),
  name: z.string().nullish(),
  tool_calls: z.array(ToolCallIn).nullish(),
  tool_call_id: z.string().nullish(),
  /** DeepSeek: earlier turns' reasoning; dropped from the prompt as DeepSeek's API does. */
  reasoning_content: z.string().nullish(),
});
export type ChatMessageIn = z.infer<typeof ChatMessageSchema>;

export const ToolSchema = z.object({
  type: z.literal('function', { error: 'only "function" tools are supported' }),
  function: z.looseObject({
    name: z.string().min(1),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(),
    strict: z.boolean().nullish(),
  }),
});
export type ToolIn = z.infer<typeof ToolSchema>;

export const ToolChoiceSchema = z.union(
  [
    z.enum(['none', 'auto', 'required']),
    z.object({ type: z.literal('function'), function: z.object({ name: z.string() }) }),
  ],
  { error: 'must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}' },
);
export type ToolChoice = z.infer<typeof ToolChoiceSchema>;

/** Fields shared by both endpoints: sampling, limits and shoal/vLLM extensions. */
const common = {
  model: z.string().nullish(),
  max_tokens: int().min(1).nullish(),
  temperature: z.number().nullish(),
  top_p: z.number().nullish(),
  n: int().nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() }).nullish(),
  stop: Stop.nullish(),
  seed: int().nullish(),
  presence_penalty: z.number().nullish(),
  frequency_penalty: z.number().nullish(),
  logit_bias: z.record(z.string(), z.number()).nullish(),
  user: z.string().nullish(),
  // Extensions (vLLM names).
  top_k: int().nullish(),
  min_p: z.number().nullish(),
  repetition_penalty: z.number().nullish(),
  ignore_eos: z.boolean().nullish(),
  stop_token_ids: z.array(int().min(0)).nullish(),
};

/**
 * `"shoal": {...}` on a chat request. `routing: true` returns, with the final response (or the
 * last stream chunk), `shoal_routing`: per MoE layer how many generated tokens chose each expert.
 */
export const ShoalExtensionSchema = z.strictObject({
  routing: z.boolean().nullish(),
});

export const ChatCompletionRequestSchema = z.object({
  ...common,
  messages: z.array(ChatMessageSchema).min(1, { error: 'at least one message is required' }),
  max_completion_tokens: int().min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: int().min(0).max(20).nullish(),
  tools: z.array(ToolSchema).nullish(),
  tool_choice: ToolChoiceSchema.nullish(),
  parallel_tool_calls: z.boolean().nullish(),
  response_format: z.looseObject({ type: z.string() }).nullish(),
  /** Extra chat-template variables (e.g. DeepSeek V3.1's `thinking`). */
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  /** shoal extensions; unknown keys inside are an error so a typo does not pass silently. */
  shoal: ShoalExtensionSchema.nullish(),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

export const CompletionRequestSchema = z.object({
  ...common,
  prompt: z.union(
    [z.string(), z.array(int().min(0)).min(1), z.array(z.string()).length(1), z.array(z.array(int().min(0)).min(1)).length(1)],
    { error: 'must be a string or an array of token ids (one prompt per request)' },
  ),
  logprobs: int().min(0).max(20).nullish(),
  echo: z.boolean().nullish(),
  suffix: z.string().nullish(),
  best_of: int().nullish(),
});
export type CompletionRequest = z.infer<typeof CompletionRequestSchema>;

// ---------------------------------------------------------------------------
// Response shapes

/** `shoal_routing` (the shoal.routing extension): counts[i][e] = generated tokens routed to expert e in layers[i]. */
export interface ShoalRouting {
  layers: number[];
  counts: number[][];
}

export type FinishReasonOut = 'stop' | 'length' | 'tool_calls' | 'abort';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  prompt_tokens_details: { cached_tokens: number };
  /** DeepSeek's API names for the cached / uncached split of prompt_tokens. */
  prompt_cache_hit_tokens: number;
  prompt_cache_miss_tokens: number;
}

export interface TopLogprobOut {
  token: string;
  logprob: number;
  bytes: number[] | null;
}

export interface ChatLogprobEntry extends TopLogprobOut {
  top_logprobs: TopLogprobOut[];
}

export interface ChatLogprobs {
  content: ChatLogprobEntry[] | null;
  refusal: null;
}

export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[] | null;
  text_offset: number[];
}

export interface ToolCallOut {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: {
    index: number;
    message: { role: 'assistant'; content: string | null; reasoning_content?: string | null; tool_calls?: ToolCallOut[]; refusal: null };
    logprobs: ChatLogprobs | null;
    finish_reason: FinishReasonOut;
  }[];
  usage: Usage;
  shoal_routing?: ShoalRouting;
}

export interface ChatDelta {
  role?: 'assistant';
  content?: string | null;
  reasoning_content?: string;
  tool_calls?: (ToolCallOut & { index: number })[];
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: { index: number; delta: ChatDelta; logprobs: ChatLogprobs | null; finish_reason: FinishReasonOut | null }[];
  usage?: Usage | null;
  shoal_routing?: ShoalRouting;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  system_fingerprint: string;
  choices: { index: number; text: string; logprobs: CompletionLogprobs | null; finish_reason: FinishReasonOut | null }[];
  usage?: Usage | null;
}
