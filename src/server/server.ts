/**
 * The OpenAI-compatible HTTP server (node:http, no framework: five routes, SSE and a body
 * limit are a few lines each, and owning them keeps the error shapes exact).
 *
 *   GET  /health               200 once the model is loaded, 503 before (and while shutting down)
 *   GET  /metrics              Prometheus text (metrics.ts)
 *   GET  /v1/models[/ID]       the served model
 *   POST /v1/chat/completions  chat, streamed (SSE) or not; tools; DeepSeek reasoning split
 *   POST /v1/completions       raw prompt (text or token ids)
 *   GET  /api/stats            scheduler figures and model shape as JSON (the playground's panel)
 *   GET  /api/plan             the planner's catalog (models, chips, precisions, defaults)
 *   POST /api/plan             `shoal plan` in-process: best configurations and the SVG plot
 *   GET  /api/model/files/NAME the served model folder's config, tokenizer and weights, read-only
 *                              (the playground's in-tab WebGPU mode; same key as /v1 when one is set)
 *   GET  /, /app.js, ...       the web playground (static.ts; built into dist/web)
 *
 * Every failure answers an OpenAI-style error object `{"error": {message, type, param, code}}`.
 * Requests run on the continuous-batching Scheduler; a client that goes away aborts its
 * request (the scheduler frees its cache blocks at the next step).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { z } from 'zod';
import type { AddressInfo } from 'node:net';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { basename, resolve } from 'node:path';
import { createBackend } from '../backends/index.js';
import { loadModel, type LoadedModel } from '../engine/engine.js';
export type { LoadedModel } from '../engine/engine.js';
import { validateSamplingParams, type SamplingParams, type TokenLogprob } from '../engine/sampling.js';
import { Scheduler, type SchedulerOptions } from '../engine/scheduler.js';
import { QueueFullError, type GeneratedToken, type RequestEvent, type RequestOptions, type SchedulerStats } from '../engine/scheduler-types.js';
import type { ShoalTokenizer } from '../tokenizer/tokenizer.js';
import { isUserError } from '../errors.js';
import { OutputParser, buildChatPrompt, newToolCallId, parseOutput, type OutputDelta } from './chat.js';
import { ServerMetrics } from './metrics.js';
import { DEFAULT_WEB_ROOT, MODEL_FILE_TYPES, playgroundBuilt, serveModelFile, serveStatic } from './static.js';
import { CHIPS, getChip, supportedPrecisions, type Precision } from '../planner/hardware.js';
import { analyzeModel, describeModel, MODEL_CATALOG, resolveModel } from '../planner/models.js';
import { renderPlot } from '../planner/plot.js';
import { candidateJson, searchPlans } from '../planner/search.js';
import {
  ChatCompletionRequestSchema, CompletionRequestSchema, HttpError, zodError,
  type ChatCompletion, type ChatCompletionChunk, type ChatDelta, type ChatLogprobEntry, type ChatLogprobs,
  type Completion, type CompletionLogprobs, type FinishReasonOut, type ShoalRouting, type ToolCallOut, type Usage,
} from './openai-types.js';

export const DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024;
const SYSTEM_FINGERPRINT = 'shoal-0.1.0';

/** What the server needs of a scheduler (engine/scheduler.ts's Scheduler). */
export interface ServingScheduler {
  submit(req: RequestOptions): AsyncIterable<RequestEvent>;
  stats(): SchedulerStats;
  readonly maxContext: number;
  shutdown(): Promise<void>;
}

export interface ServerOptions {
  /** Hugging Face model folder. */
  model: string;
  host?: string;
  /** 0 = a free port. Default 8000. */
  port?: number;
  /** When set, /v1/* requires `Authorization: Bearer KEY`. */
  apiKey?: string;
  maxRunning?: number;
  maxQueue?: number;
  kvCacheMb?: number;
  blockSize?: number;
  maxBatchTokens?: number;
  maxContext?: number;
  speculative?: 'mtp' | null;
  /** cpu | auto. */
  device?: string;
  /** Name clients pass as `model` (default: the model folder's name). */
  servedModelName?: string;
  /** Largest accepted request body (default 10 MiB). */
  maxBodyBytes?: number;
  /** Weight-loading progress. */
  onProgress?: (done: number, total: number) => void;
  /** Replaces loading `model` from disk (tests: to gate or share loading). */
  load?: () => Promise<LoadedModel>;
  /** Replaces the continuous-batching Scheduler (tests: scripted output). */
  createScheduler?: (loaded: LoadedModel, opts: SchedulerOptions) => ServingScheduler;
  /** Resolve startServer() once listening, without waiting for the model (see `ready`). Default false. */
  noWait?: boolean;
  /** Folder of the web playground's files (default dist/web); null turns the playground off. */
  webRoot?: string | null;
}

export interface RunningServer {
  /** http://HOST:PORT */
  url: string;
  host: string;
  port: number;
  modelName: string;
  /** Settles when the model is loaded (rejects when loading fails). */
  ready: Promise<void>;
  /** The scheduler, once the model is loaded. */
  readonly scheduler: ServingScheduler | undefined;
  /**
   * Stops taking connections; waits up to graceMs for running requests to finish, then
   * aborts the rest, stops the scheduler and frees the model.
   */
  close(opts?: { graceMs?: number }): Promise<void>;
}

/** Loads a model folder onto a device. */
export async function loadModelOn(dir: string, device = 'auto', onProgress?: (done: number, total: number) => void): Promise<LoadedModel> {
  return loadModel(dir, await createBackend(device), onProgress);
}

// ---------------------------------------------------------------------------
// Small helpers

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: ServerResponse, e: HttpError): void {
  sendJson(res, e.status, e.body(), e.headers);
}

/** Reads the body up to `limit` bytes; past it rejects with 413 and discards the rest. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolvePromise, reject) => {
    const tooLarge = () => new HttpError(413, `request body is larger than ${limit} bytes`, null, 'request_too_large');
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit) {
      req.resume();
      reject(tooLarge());
      return;
    }
    const chunks: Buffer[] = [];
    let total = 0;
    let failed = false;
    req.on('data', (c: Buffer) => {
      if (failed) return;
      total += c.length;
      if (total > limit) {
        failed = true;
        chunks.length = 0;
        reject(tooLarge());
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => { if (!failed) resolvePromise(Buffer.concat(chunks)); });
    // A client that goes away mid-body: nobody is left to answer, so no internal-error report.
    req.on('error', (e) => {
      if (failed) return;
      failed = true;
      reject(new HttpError(400, `the request body was cut off (${e.message})`));
    });
  });
}

function parseJsonBody(body: Buffer): unknown {
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (e) {
    throw new HttpError(400, `the body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new HttpError(400, 'the body must be a JSON object');
  return value;
}

/** Any thrown value as an HttpError (UserErrors are the client's fault: 400 naming the field). */
function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof QueueFullError) {
    return new HttpError(429, `the server is busy: ${e.message}; retry later`, null, 'queue_full', 'rate_limit_error', { 'Retry-After': '1' });
  }
  if (isUserError(e)) return new HttpError(400, e.message, e.where ?? null);
  const err = e as Error;
  process.stderr.write(`shoal: internal error: ${err?.stack ?? String(e)}\n`);
  return new HttpError(500, `internal error: ${err?.message ?? String(e)}`, null, null, 'server_error');
}

/** GPT-2 byte-level alphabet: unicode char → byte. */
const BYTE_OF_CHAR: Map<string, number> = (() => {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  return new Map(bs.map((b, i) => [String.fromCharCode(cs[i]!), b]));
})();

/** Text and raw bytes of single tokens, for logprobs. */
class TokenStrings {
  private readonly cache = new Map<number, { text: string; bytes: number[] }>();
  constructor(private readonly tok: ShoalTokenizer) {}

  get(id: number): { text: string; bytes: number[] } {
    let e = this.cache.get(id);
    if (!e) {
      const text = this.tok.decode([id]);
      const piece = this.tok.idToToken(id);
      let bytes: number[] | null = null;
      if (piece !== undefined && !this.tok.specialTokenIds.has(id) && text.includes('\uFFFD')) {
        // A piece of a multi-byte character: its bytes come from the byte-level alphabet.
        const bs = [...piece].map((c) => BYTE_OF_CHAR.get(c));
        if (bs.every((b) => b !== undefined)) bytes = bs as number[];
      }
      e = { text, bytes: bytes ?? [...Buffer.from(text, 'utf8')] };
      if (this.cache.size < 65536) this.cache.set(id, e);
    }
    return e;
  }
}

/** JSON has no -Infinity: clamp as vLLM does. */
function lp(v: number): number {
  return Number.isFinite(v) ? v : -9999;
}

function usageOf(u: { promptTokens: number; completionTokens: number; cachedTokens: number }): Usage {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    prompt_tokens_details: { cached_tokens: u.cachedTokens },
    prompt_cache_hit_tokens: u.cachedTokens,
    prompt_cache_miss_tokens: u.promptTokens - u.cachedTokens,
  };
}

type DoneEvent = Extract<RequestEvent, { type: 'done' }>;

// ---------------------------------------------------------------------------
// /api/plan: `shoal plan` for the playground

const PRECISIONS = ['bf16', 'fp8', 'int8', 'fp4'] as const;
const PLAN_DEFAULTS = { prompt_tokens: 4096, output_tokens: 512, slo_tpot_ms: 50, cache_hit_rate: 0, top: 8 };

const positive = () => z.number().positive({ error: 'must be greater than 0' });
const PlanRequestSchema = z.object({
  model: z.string().min(1, { error: 'pick a model (GET /api/plan lists them)' }),
  hardware: z.string().min(1, { error: 'pick a chip (GET /api/plan lists them)' }),
  precision: z.enum(PRECISIONS, { error: `must be one of ${PRECISIONS.join(', ')}` }).nullish(),
  chips: z.number().int().min(1).max(100000).nullish(),
  prompt_tokens: z.number().int().min(1).nullish(),
  output_tokens: z.number().int().min(1).nullish(),
  slo_tpot_ms: positive().nullish(),
  slo_ttft_ms: positive().nullish(),
  price_per_hour: positive().nullish(),
  cache_hit_rate: z.number().min(0).max(0.99).nullish(),
  mtp_acceptance: z.number().min(0).max(1).nullish(),
  top: z.number().int().min(1).max(100).nullish(),
});

let catalog: object | undefined;

/** GET /api/plan: what the plan form offers (built once; `local` is listed without probing this machine). */
function planCatalog(): object {
  catalog ??= {
    object: 'shoal.plan_catalog',
    models: MODEL_CATALOG.map((m) => {
      const an = analyzeModel(resolveModel(m.name));
      return { name: m.name, hf_id: m.hfId, summary: describeModel(an), mtp: an.spec.mtpLayers > 0, max_context: an.spec.maxContext };
    }),
    hardware: [
      ...CHIPS.map((c) => ({ name: c.name, vendor: c.vendor, description: c.description, precisions: supportedPrecisions(c) })),
      { name: 'local', vendor: 'this machine', description: 'the machine running this server (memory bandwidth measured on first use)', precisions: ['int8', 'bf16'] },
    ],
    precisions: PRECISIONS,
    defaults: PLAN_DEFAULTS,
  };
  return catalog;
}


/** A planner UserError's flag (`--slo-tpot-ms`) as the request field (`slo_tpot_ms`). */
function planParam(where: string | undefined): string | null {
  return where?.startsWith('--') ? where.slice(2).replace(/-/g, '_') : null;
}

/** POST /api/plan: the planner's search in-process. Bad input is a 400 naming the field. */
function runPlan(body: unknown) {
  const parsed = PlanRequestSchema.safeParse(body);
  if (!parsed.success) throw zodError(parsed.error);
  const r = parsed.data;
  // Catalog models only: the CLI's config.json paths would let a client probe the server's files.
  const key = r.model.trim().toLowerCase();
  if (!MODEL_CATALOG.some((m) => m.name === key || m.hfId.toLowerCase() === key || m.hfId.split('/')[1]!.toLowerCase() === key)) {
    throw new HttpError(400, `unknown model "${r.model}" (known: ${MODEL_CATALOG.map((m) => m.name).join(', ')})`, 'model');
  }
  try {
    const chip = getChip(r.hardware);
    const model = analyzeModel(resolveModel(key));
    const prompt = r.prompt_tokens ?? PLAN_DEFAULTS.prompt_tokens;
    const output = r.output_tokens ?? PLAN_DEFAULTS.output_tokens;
    if (prompt + output > model.spec.maxContext) {
      throw new HttpError(400, `prompt_tokens + output_tokens (${prompt + output}) exceeds ${model.spec.name}'s context of ${model.spec.maxContext} tokens`, 'prompt_tokens');
    }
    if (r.mtp_acceptance != null && model.spec.mtpLayers < 1) {
      throw new HttpError(400, `${model.spec.name} has no MTP module (num_nextn_predict_layers is 0)`, 'mtp_acceptance');
    }
    const res = searchPlans({
      model,
      chip,
      precision: (r.precision ?? undefined) as Precision | undefined,
      chips: r.chips ?? undefined,
      promptTokens: prompt,
      outputTokens: output,
      sloTpotMs: r.slo_tpot_ms ?? PLAN_DEFAULTS.slo_tpot_ms,
      sloTtftMs: r.slo_ttft_ms ?? undefined,
      pricePerHour: r.price_per_hour ?? undefined,
      cacheHitRate: r.cache_hit_rate ?? PLAN_DEFAULTS.cache_hit_rate,
      mtp: r.mtp_acceptance ? { draftTokens: 1, acceptance: r.mtp_acceptance } : null,
      top: r.top ?? PLAN_DEFAULTS.top,
    });
    return {
      object: 'shoal.plan',
      model: { name: model.spec.name, summary: describeModel(model), total_params: model.params.total, active_params: model.params.active },
      hardware: { name: res.chip.name, description: res.chip.description, price_per_hour: res.chip.pricePerHour.value, power_w: res.chip.powerW.value },
      precision: res.precision,
      workload: {
        prompt_tokens: prompt, output_tokens: output, slo_tpot_ms: res.request.sloTpotMs, slo_ttft_ms: r.slo_ttft_ms ?? null,
        chips: res.request.chips ?? null, cache_hit_rate: res.scenario.cacheHitRate, mtp_acceptance: res.scenario.mtp?.acceptance ?? null,
      },
      ranked_by: res.request.chips ? 'requests_per_s' : 'usd_per_request',
      best: candidateJson(res.best),
      candidates: res.candidates.map(candidateJson),
      svg: renderPlot(res),
    };
  } catch (e) {
    if (isUserError(e)) {
      const param = planParam(e.where);
      // The CLI's message names the flag; name the request field instead.
      const message = param && e.where ? `${param}: ${e.message.slice(e.where.length + 2)}` : e.message;
      throw new HttpError(400, message, param);
    }
    throw e;
  }
}

// ---------------------------------------------------------------------------
// The server

const ROUTES: Record<string, string[]> = {
  '/health': ['GET', 'HEAD'],
  '/metrics': ['GET'],
  '/v1/models': ['GET'],
  '/v1/chat/completions': ['POST'],
  '/v1/completions': ['POST'],
  '/api/stats': ['GET'],
  '/api/plan': ['GET', 'POST'],
};

class ShoalServer {
  readonly http: Server;
  readonly metrics: ServerMetrics;
  readonly modelName: string;
  scheduler: ServingScheduler | undefined;
  loaded: LoadedModel | undefined;
  private closing = false;
  private readonly inflight = new Set<AbortController>();
  private readonly maxBody: number;
  private strings: TokenStrings | undefined;
  private readonly created = nowSeconds();

  constructor(private readonly opts: ServerOptions) {
    this.modelName = opts.servedModelName ?? basename(resolve(opts.model));
    this.maxBody = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
    this.metrics = new ServerMetrics(this.modelName);
    this.metrics.setSource(() => this.scheduler?.stats());
    this.http = createServer((req, res) => {
      this.handle(req, res).catch((e) => {
        const he = toHttpError(e);
        if (!res.headersSent) sendError(res, he);
        else res.destroy();
      });
    });
    // Streams may be long; Node's default request timeout (5 min) counts the whole response.
    this.http.requestTimeout = 0;
  }

  /** Loads the model and starts the scheduler. */
  async load(): Promise<void> {
    const o = this.opts;
    const loaded = await (o.load ? o.load() : loadModelOn(o.model, o.device ?? 'auto', o.onProgress));
    if (this.closing) {
      loaded.close?.();
      return;
    }
    try {
      const so: SchedulerOptions = {
        maxRunning: o.maxRunning ?? 32,
        maxQueue: o.maxQueue ?? 256,
        kvCacheMb: o.kvCacheMb,
        blockSize: o.blockSize,
        maxBatchTokens: o.maxBatchTokens,
        maxContext: o.maxContext,
        speculative: o.speculative ?? null,
        defaultSampling: loaded.defaultSampling,
      };
      this.scheduler = o.createScheduler ? o.createScheduler(loaded, so) : new Scheduler(loaded.model, loaded.tokenizer, loaded.backend, so);
    } catch (e) {
      loaded.close?.();
      throw e;
    }
    this.loaded = loaded;
    this.strings = new TokenStrings(loaded.tokenizer);
  }

  async close(graceMs: number): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((r) => this.http.close(() => r()));
    this.http.closeIdleConnections();
    if (graceMs > 0 && this.inflight.size) {
      const deadline = Date.now() + graceMs;
      while (this.inflight.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    }
    for (const ac of this.inflight) ac.abort();
    await this.scheduler?.shutdown();
    // Let aborted handlers write their last bytes, then drop whatever is left.
    await new Promise((r) => setImmediate(r));
    this.http.closeAllConnections();
    await closed;
    this.loaded?.close?.();
    this.loaded = undefined;
    this.scheduler = undefined;
  }

  // ---- routing -------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '') || '/';
    } catch {
      throw new HttpError(400, 'malformed request URL');
    }
    const route = path.startsWith('/v1/models/') ? '/v1/models/:id' : path;
    const methods = route === '/v1/models/:id' ? ['GET'] : ROUTES[route];
    const isStatic = !methods && (req.method === 'GET' || req.method === 'HEAD') && !/^\/(v1|api)(\/|$)/.test(path);
    res.on('finish', () => this.metrics.httpRequests.inc({ endpoint: methods ? route : isStatic ? 'static' : 'other', status: String(res.statusCode) }));
    if (isStatic) {
      await this.staticFile(req, res);
      return;
    }
    if (path.startsWith('/api/model/files/')) {
      await this.modelFile(req, res, path.slice('/api/model/files/'.length));
      return;
    }
    if (!methods) throw new HttpError(404, `no route ${req.method} ${path}`, null, 'not_found');
    if (!methods.includes(req.method ?? '')) {
      throw new HttpError(405, `${req.method} is not allowed on ${path} (use ${methods.join(' or ')})`, null, 'method_not_allowed', 'invalid_request_error', { Allow: methods.join(', ') });
    }
    if (route === '/health') {
      const ok = this.scheduler !== undefined && !this.closing;
      sendJson(res, ok ? 200 : 503, { status: ok ? 'ok' : this.closing ? 'shutting down' : 'loading' });
      return;
    }
    if (route === '/metrics') {
      const text = await this.metrics.render();
      res.writeHead(200, { 'Content-Type': this.metrics.contentType });
      res.end(text);
      return;
    }
    // The playground's API: no key needed (as /metrics), nothing here reaches the model.
    if (route === '/api/stats') {
      sendJson(res, 200, this.statsJson(), { 'Cache-Control': 'no-store' });
      return;
    }
    if (route === '/api/plan') {
      if (req.method === 'GET') sendJson(res, 200, planCatalog(), { 'Cache-Control': 'no-store' });
      else sendJson(res, 200, runPlan(parseJsonBody(await readBody(req, this.maxBody))), { 'Cache-Control': 'no-store' });
      return;
    }
    // /v1/*
    this.checkAuth(req);
    if (route === '/v1/models') {
      sendJson(res, 200, { object: 'list', data: [this.modelCard()] });
      return;
    }
    if (route === '/v1/models/:id') {
      const id = decodeURIComponent(path.slice('/v1/models/'.length));
      if (id !== this.modelName) throw this.modelNotFound(id);
      sendJson(res, 200, this.modelCard());
      return;
    }
    const scheduler = this.scheduler;
    if (!scheduler || this.closing) {
      throw new HttpError(503, this.closing ? 'the server is shutting down' : 'the model is still loading', null, 'model_not_ready', 'server_error', { 'Retry-After': '5' });
    }
    const body = parseJsonBody(await readBody(req, this.maxBody));
    if (route === '/v1/chat/completions') await this.chat(scheduler, body, res);
    else await this.completions(scheduler, body, res);
  }

  private checkAuth(req: IncomingMessage): void {
    const key = this.opts.apiKey;
    if (!key) return;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    const given = Buffer.from(m ? m[1]!.trim() : '');
    const want = Buffer.from(key);
    if (!m || given.length !== want.length || !timingSafeEqual(given, want)) {
      throw new HttpError(401, m ? 'incorrect API key' : 'missing API key: send Authorization: Bearer KEY', null, 'invalid_api_key', 'invalid_request_error', { 'WWW-Authenticate': 'Bearer' });
    }
  }

  /** GET/HEAD /api/model/files/NAME: one of the served model folder's files (MODEL_FILE_TYPES). */
  private async modelFile(req: IncomingMessage, res: ServerResponse, name: string): Promise<void> {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      throw new HttpError(405, `${req.method} is not allowed on /api/model/files/ (use GET or HEAD)`, null, 'method_not_allowed', 'invalid_request_error', { Allow: 'GET, HEAD' });
    }
    // The weights are the model: behind the API key when the server has one.
    this.checkAuth(req);
    const known = Object.keys(MODEL_FILE_TYPES);
    if (!known.includes(name)) throw new HttpError(404, `no model file "${name}" (served: ${known.join(', ')})`, null, 'not_found');
    const result = await serveModelFile(req, res, this.opts.model, name);
    if (result !== 'served') throw new HttpError(404, `the served model has no ${name} (only a Hugging Face model folder's files are served)`, null, 'not_found');
  }

  /** A playground file (GET/HEAD of any path outside /v1 and /api). */
  private async staticFile(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const root = this.opts.webRoot === undefined ? DEFAULT_WEB_ROOT : this.opts.webRoot;
    // The path as sent (still percent-encoded): static.ts decodes it once and refuses `..`
    // segments itself, rather than relying on URL normalization. Absolute-form targets
    // (`GET http://host/x`) use their path.
    const target = req.url ?? '/';
    const pathname = target.startsWith('/') ? target.split(/[?#]/, 1)[0]! : new URL(target, 'http://localhost').pathname;
    if (root === null) throw new HttpError(404, `no route ${req.method} ${pathname} (the playground is off)`, null, 'not_found');
    const result = await serveStatic(req, res, pathname, root);
    if (result === 'served') return;
    if (result === 'bad-path') throw new HttpError(400, `refusing the path ${JSON.stringify(pathname)}: it leaves the playground's folder or is malformed`, null, 'invalid_path');
    if ((pathname === '/' || pathname === '/index.html') && !playgroundBuilt(root)) {
      throw new HttpError(404, `the web playground is not built (no ${root}index.html): run \`npm run build\``, null, 'not_found');
    }
    throw new HttpError(404, `no route ${req.method} ${pathname}`, null, 'not_found');
  }

  /** GET /api/stats: the scheduler's figures (as scheduler.stats()), rates derived from them, and the model's shape. */
  private statsJson() {
    const stats = this.scheduler?.stats() ?? null;
    const cfg = this.loaded?.model.cfg;
    const ratio = (a: number, b: number) => (b > 0 ? a / b : null);
    const moeLayers: number[] = [];
    if (cfg && cfg.nRoutedExperts > 0) {
      for (let i = 0; i < cfg.numHiddenLayers; i++) if (i >= cfg.firstKDenseReplace && i % cfg.moeLayerFreq === 0) moeLayers.push(i);
    }
    return {
      object: 'shoal.stats',
      status: this.closing ? 'shutting down' : this.scheduler ? 'ok' : 'loading',
      model: {
        name: this.modelName,
        architecture: cfg?.architecture ?? null,
        layers: cfg?.numHiddenLayers ?? null,
        moe_layers: cfg ? moeLayers : null,
        experts: cfg?.nRoutedExperts ?? null,
        experts_per_token: cfg?.numExpertsPerTok ?? null,
        shared_experts: cfg?.nSharedExperts ?? null,
        hidden_size: cfg?.hiddenSize ?? null,
        vocab_size: cfg?.vocabSize ?? null,
        mtp_layers: cfg?.numNextnPredictLayers ?? null,
        max_context: this.scheduler?.maxContext ?? null,
        speculative: this.opts.speculative ?? null,
        backend: this.loaded?.backend.info.name ?? null,
      },
      scheduler: stats,
      rates: {
        kv_cache_usage: stats ? ratio(stats.kvBlocksUsed, stats.kvBlocksTotal) : null,
        prefix_cache_hit_rate: stats ? ratio(stats.prefixHitTokens, stats.prefixQueryTokens) : null,
        spec_acceptance_rate: stats ? ratio(stats.acceptedTokens, stats.draftTokens) : null,
      },
    };
  }

  private modelCard() {
    return {
      id: this.modelName,
      object: 'model',
      created: this.created,
      owned_by: 'shoal',
      root: this.opts.model,
      max_model_len: this.scheduler?.maxContext ?? null,
    };
  }

  private modelNotFound(name: string): HttpError {
    return new HttpError(404, `the model "${name}" does not exist (this server serves "${this.modelName}")`, 'model', 'model_not_found');
  }

  private checkModel(name: string | null | undefined): void {
    // The served name, or the model folder as given (vLLM's default name).
    if (name !== undefined && name !== null && name !== this.modelName && name !== this.opts.model) throw this.modelNotFound(name);
  }

  // ---- shared request plumbing ---------------------------------------------------------

  /** Sampling fields of a request, validated (only the given ones, so model defaults apply). */
  private sampling(r: {
    temperature?: number | null; top_p?: number | null; top_k?: number | null; min_p?: number | null; seed?: number | null;
    repetition_penalty?: number | null; presence_penalty?: number | null; frequency_penalty?: number | null;
  }): Partial<SamplingParams> {
    const given: Partial<SamplingParams> = {
      temperature: r.temperature ?? undefined, topP: r.top_p ?? undefined, topK: r.top_k ?? undefined, minP: r.min_p ?? undefined,
      repetitionPenalty: r.repetition_penalty ?? undefined, presencePenalty: r.presence_penalty ?? undefined,
      frequencyPenalty: r.frequency_penalty ?? undefined, seed: r.seed ?? undefined,
    };
    validateSamplingParams(given); // UserError naming the snake_case field → 400
    return Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as Partial<SamplingParams>;
  }

  private commonChecks(r: { n?: number | null; logit_bias?: Record<string, number> | null; model?: string | null }): void {
    this.checkModel(r.model);
    if (r.n !== undefined && r.n !== null && r.n !== 1) throw new HttpError(400, `only n = 1 is supported, got ${r.n}`, 'n');
    if (r.logit_bias && Object.keys(r.logit_bias).length) throw new HttpError(400, 'logit_bias is not supported', 'logit_bias');
  }

  /** max_tokens against the context: the default fills it; over it is a 400. */
  private maxTokens(scheduler: ServingScheduler, promptLength: number, requested: number | null | undefined, promptParam: string, field: string): number {
    const ctx = scheduler.maxContext;
    if (promptLength >= ctx) {
      throw new HttpError(400, `the prompt is ${promptLength} tokens; this model's context holds ${ctx} (prompt plus max_tokens must fit)`, promptParam, 'context_length_exceeded');
    }
    if (requested === undefined || requested === null) return ctx - promptLength;
    if (promptLength + requested > ctx) {
      throw new HttpError(400, `the prompt (${promptLength} tokens) plus ${field} (${requested}) exceeds this model's context of ${ctx} tokens`, field, 'context_length_exceeded');
    }
    return requested;
  }

  /** Submits, wiring the client's disconnect to an abort. Throws HttpError for a full queue or bad input. */
  private submit(scheduler: ServingScheduler, req: IncomingMessage, res: ServerResponse, opts: Omit<RequestOptions, 'signal'>): { events: AsyncIterable<RequestEvent>; ac: AbortController } {
    const ac = new AbortController();
    let events: AsyncIterable<RequestEvent>;
    try {
      events = scheduler.submit({ ...opts, signal: ac.signal });
    } catch (e) {
      throw toHttpError(e);
    }
    this.inflight.add(ac);
    const onClose = () => {
      if (!res.writableFinished) ac.abort();
    };
    res.on('close', onClose);
    if (res.destroyed) ac.abort();
    return { events, ac };
  }

  /** Iterates a request's events, recording latency metrics; always unregisters the request. */
  private async *track(events: AsyncIterable<RequestEvent>, ac: AbortController): AsyncGenerator<RequestEvent> {
    let last = 0;
    try {
      for await (const ev of events) {
        const now = performance.now();
        if (ev.type === 'token') {
          if (last) this.metrics.itl.observe((now - last) / 1000);
          last = now;
        } else {
          this.metrics.ttft.observe(ev.ttftMs / 1000);
          this.metrics.e2e.observe(ev.totalMs / 1000);
          this.metrics.promptTokensPerRequest.observe(ev.usage.promptTokens);
          this.metrics.generationTokensPerRequest.observe(ev.usage.completionTokens);
          this.metrics.requestSuccess.inc({ finished_reason: ev.finishReason });
        }
        yield ev;
      }
    } finally {
      this.inflight.delete(ac);
    }
  }

  private startStream(res: ServerResponse): (data: unknown) => void {
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', 'Cache-Control': 'no-cache', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    res.flushHeaders();
    return (data) => {
      if (!res.destroyed && !res.writableEnded) res.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    };
  }

  private endStream(res: ServerResponse, send: (d: unknown) => void): void {
    send('[DONE]');
    if (!res.destroyed && !res.writableEnded) res.end();
  }

  /** An error after a stream began: sent as an SSE error object, then [DONE]. */
  private streamError(res: ServerResponse, send: (d: unknown) => void, e: unknown): void {
    send(toHttpError(e).body());
    this.endStream(res, send);
  }

  private finishReason(done: DoneEvent, toolCalls: number): FinishReasonOut {
    if (toolCalls > 0 && done.finishReason !== 'abort') return 'tool_calls';
    return done.finishReason;
  }

  private chatLogprob(t: GeneratedToken): ChatLogprobEntry {
    const s = this.strings!;
    const one = (id: number, v: number) => {
      const e = s.get(id);
      return { token: e.text, logprob: lp(v), bytes: e.bytes };
    };
    return { ...one(t.id, t.logprob!), top_logprobs: (t.top ?? []).map((x: TokenLogprob) => one(x.token, x.logprob)) };
  }

  // ---- /v1/chat/completions ------------------------------------------------------------

  private async chat(scheduler: ServingScheduler, body: unknown, res: ServerResponse): Promise<void> {
    const req = res.req;
    const parsed = ChatCompletionRequestSchema.safeParse(body);
    if (!parsed.success) throw zodError(parsed.error);
    const r = parsed.data;
    this.commonChecks(r);
    if (r.top_logprobs !== undefined && r.top_logprobs !== null && !r.logprobs) throw new HttpError(400, 'top_logprobs needs logprobs: true', 'top_logprobs');
    if (r.response_format && r.response_format.type !== 'text') throw new HttpError(400, `response_format type "${r.response_format.type}" is not supported`, 'response_format.type');
    const sampling = this.sampling(r);
    let prompt;
    try {
      prompt = buildChatPrompt(this.loaded!.tokenizer, r);
    } catch (e) {
      if (isUserError(e)) throw new HttpError(400, e.message, 'messages');
      throw e;
    }
    const field = r.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens';
    const maxTokens = this.maxTokens(scheduler, prompt.ids.length, r.max_completion_tokens ?? r.max_tokens, 'messages', field);
    const { events, ac } = this.submit(scheduler, req, res, {
      prompt: prompt.ids,
      sampling,
      maxTokens,
      stop: r.stop == null ? undefined : typeof r.stop === 'string' ? [r.stop] : r.stop,
      stopTokenIds: r.stop_token_ids ?? undefined,
      ignoreEos: r.ignore_eos ?? undefined,
      logprobs: r.logprobs ? (r.top_logprobs ?? 0) : undefined,
      collectRouting: r.shoal?.routing ? true : undefined,
    });
    const wantRouting = Boolean(r.shoal?.routing);
    const routingOf = (done: DoneEvent): ShoalRouting => done.routing ?? { layers: [], counts: [] };
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`;
    const created = nowSeconds();
    const parserOpts = { reasoningOpen: prompt.reasoningOpen, parseTools: prompt.parseTools, prefix: prompt.forcedPrefix };
    const wantLogprobs = Boolean(r.logprobs);

    if (!r.stream) {
      let text = '';
      const lps: ChatLogprobEntry[] = [];
      let done: DoneEvent | undefined;
      for await (const ev of this.track(events, ac)) {
        text += ev.text;
        if (ev.type === 'token') {
          if (wantLogprobs && ev.token.logprob !== undefined) lps.push(this.chatLogprob(ev.token));
        } else done = ev;
      }
      if (!done || res.destroyed) return;
      const out = parseOutput(text, parserOpts);
      const toolCalls: ToolCallOut[] = out.toolCalls.map((c) => ({ id: newToolCallId(), type: 'function', function: c }));
      const message: ChatCompletion['choices'][number]['message'] = {
        role: 'assistant',
        content: out.content || (toolCalls.length ? null : ''),
        refusal: null,
      };
      if (out.reasoning || prompt.reasoningOpen) message.reasoning_content = out.reasoning;
      if (toolCalls.length) message.tool_calls = toolCalls;
      const resp: ChatCompletion = {
        id, object: 'chat.completion', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT,
        choices: [{ index: 0, message, logprobs: wantLogprobs ? { content: lps, refusal: null } : null, finish_reason: this.finishReason(done, toolCalls.length) }],
        usage: usageOf(done.usage),
      };
      if (wantRouting) resp.shoal_routing = routingOf(done);
      sendJson(res, 200, resp);
      return;
    }

    // Streaming.
    const includeUsage = Boolean(r.stream_options?.include_usage);
    const continuousUsage = Boolean(r.stream_options?.continuous_usage_stats);
    const send = this.startStream(res);
    const chunk = (delta: ChatDelta, logprobs: ChatLogprobs | null, finish: FinishReasonOut | null, usage?: Usage): ChatCompletionChunk => ({
      id, object: 'chat.completion.chunk', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT,
      choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
      ...(includeUsage ? { usage: usage ?? null } : {}),
    });
    send(chunk({ role: 'assistant', content: '' }, null, null));
    const parser = new OutputParser(parserOpts);
    let pending: ChatLogprobEntry[] = [];
    let toolIndex = 0;
    let generated = 0;
    const takeLogprobs = (): ChatLogprobs | null => {
      if (!wantLogprobs || !pending.length) return null;
      const content = pending;
      pending = [];
      return { content, refusal: null };
    };
    const runningUsage = (promptTokens: number) => continuousUsage ? usageOf({ promptTokens, completionTokens: generated, cachedTokens: 0 }) : undefined;
    const emit = (d: OutputDelta) => {
      if (d.reasoning) send(chunk({ reasoning_content: d.reasoning }, takeLogprobs(), null, runningUsage(prompt.ids.length)));
      if (d.content) send(chunk({ content: d.content }, takeLogprobs(), null, runningUsage(prompt.ids.length)));
      if (d.toolCalls.length) {
        const calls = d.toolCalls.map((c) => ({ index: toolIndex++, id: newToolCallId(), type: 'function' as const, function: c }));
        send(chunk({ tool_calls: calls }, takeLogprobs(), null, runningUsage(prompt.ids.length)));
      }
    };
    try {
      for await (const ev of this.track(events, ac)) {
        if (ev.type === 'token') {
          generated++;
          if (wantLogprobs && ev.token.logprob !== undefined) pending.push(this.chatLogprob(ev.token));
          emit(parser.push(ev.text));
          continue;
        }
        const a = parser.push(ev.text);
        const b = parser.finish();
        emit({ reasoning: a.reasoning + b.reasoning, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] });
        // shoal_routing rides on the last chunk: the usage chunk when there is one, else the finish chunk.
        const routing = wantRouting ? { shoal_routing: routingOf(ev) } : {};
        send({ ...chunk({}, takeLogprobs(), this.finishReason(ev, toolIndex)), ...(includeUsage ? {} : routing) });
        if (includeUsage) send({ id, object: 'chat.completion.chunk', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT, choices: [], usage: usageOf(ev.usage), ...routing });
      }
    } catch (e) {
      ac.abort();
      this.streamError(res, send, e);
      return;
    }
    this.endStream(res, send);
  }

  // ---- /v1/completions -----------------------------------------------------------------

  private async completions(scheduler: ServingScheduler, body: unknown, res: ServerResponse): Promise<void> {
    const req = res.req;
    const parsed = CompletionRequestSchema.safeParse(body);
    if (!parsed.success) throw zodError(parsed.error);
    const r = parsed.data;
    this.commonChecks(r);
    if (r.suffix) throw new HttpError(400, 'suffix is not supported', 'suffix');
    if (r.best_of !== undefined && r.best_of !== null && r.best_of !== 1) throw new HttpError(400, `only best_of = 1 is supported, got ${r.best_of}`, 'best_of');
    if (r.echo && r.logprobs != null) throw new HttpError(400, 'echo with logprobs is not supported', 'echo');
    const sampling = this.sampling(r);
    const tok = this.loaded!.tokenizer;
    const p = r.prompt;
    let ids: number[];
    let promptText: string;
    if (typeof p === 'string' || typeof p[0] === 'string') {
      promptText = typeof p === 'string' ? p : (p[0] as string);
      if (!promptText) throw new HttpError(400, 'the prompt is empty', 'prompt');
      ids = tok.encode(promptText);
    } else {
      ids = (Array.isArray(p[0]) ? p[0] : p) as number[];
      const V = this.loaded!.model.cfg.vocabSize;
      const bad = ids.findIndex((t) => t >= V);
      if (bad >= 0) throw new HttpError(400, `token id ${ids[bad]} is outside the vocabulary (${V})`, 'prompt');
      promptText = r.echo ? tok.decode(ids) : '';
    }
    const maxTokens = this.maxTokens(scheduler, ids.length, r.max_tokens ?? 16, 'prompt', 'max_tokens');
    const logprobsK = r.logprobs ?? undefined;
    const { events, ac } = this.submit(scheduler, req, res, {
      prompt: ids,
      sampling,
      maxTokens,
      stop: r.stop == null ? undefined : typeof r.stop === 'string' ? [r.stop] : r.stop,
      stopTokenIds: r.stop_token_ids ?? undefined,
      ignoreEos: r.ignore_eos ?? undefined,
      logprobs: logprobsK,
    });
    const id = `cmpl-${randomBytes(12).toString('hex')}`;
    const created = nowSeconds();
    const s = this.strings!;
    let offset = r.echo ? promptText.length : 0;
    const addLogprobs = (acc: CompletionLogprobs, t: GeneratedToken) => {
      const e = s.get(t.id);
      acc.tokens.push(e.text);
      acc.token_logprobs.push(lp(t.logprob!));
      acc.text_offset.push(offset);
      offset += e.text.length;
      if (acc.top_logprobs) {
        const top: Record<string, number> = {};
        for (const x of t.top ?? []) top[s.get(x.token).text] = lp(x.logprob);
        acc.top_logprobs.push(top);
      }
    };
    const emptyLogprobs = (): CompletionLogprobs => ({ tokens: [], token_logprobs: [], top_logprobs: [], text_offset: [] });

    if (!r.stream) {
      let text = r.echo ? promptText : '';
      const acc = emptyLogprobs();
      let done: DoneEvent | undefined;
      for await (const ev of this.track(events, ac)) {
        text += ev.text;
        if (ev.type === 'token') {
          if (logprobsK !== undefined && ev.token.logprob !== undefined) addLogprobs(acc, ev.token);
        } else done = ev;
      }
      if (!done || res.destroyed) return;
      const resp: Completion = {
        id, object: 'text_completion', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT,
        choices: [{ index: 0, text, logprobs: logprobsK !== undefined ? acc : null, finish_reason: this.finishReason(done, 0) }],
        usage: usageOf(done.usage),
      };
      sendJson(res, 200, resp);
      return;
    }

    const includeUsage = Boolean(r.stream_options?.include_usage);
    const send = this.startStream(res);
    const chunk = (text: string, logprobs: CompletionLogprobs | null, finish: FinishReasonOut | null): Completion => ({
      id, object: 'text_completion', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT,
      choices: [{ index: 0, text, logprobs, finish_reason: finish }],
      ...(includeUsage ? { usage: null } : {}),
    });
    let acc = emptyLogprobs();
    const take = (): CompletionLogprobs | null => {
      if (logprobsK === undefined || !acc.tokens.length) return null;
      const out = acc;
      acc = emptyLogprobs();
      return out;
    };
    try {
      if (r.echo && promptText) send(chunk(promptText, null, null));
      for await (const ev of this.track(events, ac)) {
        if (ev.type === 'token') {
          if (logprobsK !== undefined && ev.token.logprob !== undefined) addLogprobs(acc, ev.token);
          if (ev.text) send(chunk(ev.text, take(), null));
          continue;
        }
        if (ev.text) send(chunk(ev.text, take(), null));
        send(chunk('', take(), this.finishReason(ev, 0)));
        if (includeUsage) send({ id, object: 'text_completion', created, model: this.modelName, system_fingerprint: SYSTEM_FINGERPRINT, choices: [], usage: usageOf(ev.usage) });
      }
    } catch (e) {
      ac.abort();
      this.streamError(res, send, e);
      return;
    }
    this.endStream(res, send);
  }
}

/**
 * Starts the server: listens first (so /health can answer 503 while loading), then loads the
 * model. Resolves once both are done, or right after listening with `noWait`.
 */
export async function startServer(opts: ServerOptions): Promise<RunningServer> {
  const s = new ShoalServer(opts);
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolveListen, reject) => {
    s.http.once('error', reject);
    s.http.listen(opts.port ?? 8000, host, () => {
      s.http.off('error', reject);
      resolveListen();
    });
  });
  const port = (s.http.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${urlHost}:${port}`;
  let closing: Promise<void> | undefined;
  const handle: RunningServer = {
    url,
    host,
    port,
    modelName: s.modelName,
    ready: s.load(),
    get scheduler() {
      return s.scheduler;
    },
    close(o = {}) {
      closing ??= s.close(o.graceMs ?? 0);
      return closing;
    },
  };
  if (opts.noWait) {
    handle.ready.catch(() => {}); // the caller observes it through `ready`
    return handle;
  }
  try {
    await handle.ready;
  } catch (e) {
    await s.close(0).catch(() => {});
    throw e;
  }
  return handle;
}
