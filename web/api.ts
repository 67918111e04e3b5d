/** The server's API as the playground uses it: /api/stats, /api/plan and streamed chat. */

export interface ModelInfo {
  name: string;
  architecture: string | null;
  layers: number | null;
  moe_layers: number[] | null;
  experts: number | null;
  experts_per_token: number | null;
  shared_experts: number | null;
  hidden_size: number | null;
  vocab_size: number | null;
  mtp_layers: number | null;
  max_context: number | null;
  speculative: string | null;
  backend: string | null;
}

export interface SchedulerStats {
  running: number;
  waiting: number;
  kvBlocksTotal: number;
  kvBlocksUsed: number;
  kvBlocksCached: number;
  prefixQueryTokens: number;
  prefixHitTokens: number;
  preemptions: number;
  promptTokens: number;
  generationTokens: number;
  draftTokens: number;
  acceptedTokens: number;
}

export interface Stats {
  status: 'ok' | 'loading' | 'shutting down';
  model: ModelInfo;
  scheduler: SchedulerStats | null;
  rates: { kv_cache_usage: number | null; prefix_cache_hit_rate: number | null; spec_acceptance_rate: number | null };
}

export interface Routing {
  layers: number[];
  counts: number[][];
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  prompt_cache_hit_tokens?: number;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** An error the server answered (OpenAI-style body) or a network failure. */
export class ApiError extends Error {
  constructor(message: string, readonly status: number | null, readonly param: string | null = null) {
    super(message);
  }
}

let apiKey = '';
export function setApiKey(key: string): void {
  apiKey = key.trim();
}

/** The Authorization header when an API key is set (the in-tab mode's file downloads). */
export function authHeaders(): Record<string, string> {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

function headers(json: boolean): Record<string, string> {
  const hs: Record<string, string> = {};
  if (json) hs['Content-Type'] = 'application/json';
  if (apiKey) hs['Authorization'] = `Bearer ${apiKey}`;
  return hs;
}

async function errorOf(r: Response): Promise<ApiError> {
  let message = `${r.status} ${r.statusText}`;
  let param: string | null = null;
  try {
    const body = await r.json();
    if (body?.error?.message) message = String(body.error.message);
    if (typeof body?.error?.param === 'string') param = body.error.param;
  } catch {
    // not JSON
  }
  if (r.status === 401) message += ' (set the API key under Connection)';
  return new ApiError(message, r.status, param);
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const r = await fetch(path, { headers: headers(false), signal, cache: 'no-store' });
  if (!r.ok) throw await errorOf(r);
  return (await r.json()) as T;
}

export async function postJson<T>(path: string, body: unknown, signal?: AbortSignal): Promise<T> {
  const r = await fetch(path, { method: 'POST', headers: headers(true), body: JSON.stringify(body), signal });
  if (!r.ok) throw await errorOf(r);
  return (await r.json()) as T;
}

export interface StreamHandlers {
  onContent(text: string): void;
  onReasoning(text: string): void;
  /** Running usage (continuous usage stats), then the final figures. */
  onUsage(u: Usage): void;
  onFinish(reason: string): void;
  onRouting(r: Routing): void;
}

/**
 * POSTs a streamed chat completion and feeds its server-sent events to the handlers.
 * Aborting the signal closes the connection; the server then cancels the request.
 */
export async function streamChat(body: Record<string, unknown>, h: StreamHandlers, signal: AbortSignal): Promise<void> {
  const r = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: headers(true),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } }),
    signal,
  });
  if (!r.ok || !r.body) throw await errorOf(r);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let cut: number;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
      const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
      if (!data) continue;
      if (data === '[DONE]') return;
      dispatch(JSON.parse(data), h);
    }
  }
}

function dispatch(chunk: any, h: StreamHandlers): void {
  if (chunk.error) throw new ApiError(String(chunk.error.message ?? 'stream error'), null);
  if (chunk.usage) h.onUsage(chunk.usage as Usage);
  for (const c of chunk.choices ?? []) {
    const d = c.delta ?? {};
    if (d.reasoning_content) h.onReasoning(String(d.reasoning_content));
    if (d.content) h.onContent(String(d.content));
    if (c.finish_reason) h.onFinish(String(c.finish_reason));
  }
  if (chunk.shoal_routing) h.onRouting(chunk.shoal_routing as Routing);
}
