/**
 * The OpenAI-compatible server: a real server on 127.0.0.1 (random port) serving the
 * deepseek-v3-tiny fixture through the real Scheduler, driven by the official `openai` client
 * (raw fetch for malformed input). Output parsing (tool calls, reasoning) is unit-tested on
 * synthetic text, since a random model never writes DeepSeek's markers on purpose.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import OpenAI from 'openai';
import { loadTokenizer, type ShoalTokenizer } from '../src/tokenizer/tokenizer.js';
import {
  OutputParser, buildChatPrompt, parseOutput, parseToolCallBody,
  TOOL_CALLS_BEGIN, TOOL_CALLS_END, TOOL_CALL_BEGIN, TOOL_CALL_END, TOOL_SEP,
} from '../src/server/chat.js';
import { loadModelOn, startServer, type RunningServer, type ServingScheduler } from '../src/server/server.js';
import type { RequestEvent, RequestOptions } from '../src/engine/scheduler-types.js';
import { fixture, repoRoot } from './helpers.js';

const MODEL_DIR = fixture('deepseek-v3-tiny');
const MODEL = 'deepseek-v3-tiny';

// ---------------------------------------------------------------------------
// Output parsing (no server)

function v3Call(name: string, args: string): string {
  return `${TOOL_CALL_BEGIN}function${TOOL_SEP}${name}\n\`\`\`json\n${args}\n\`\`\`${TOOL_CALL_END}`;
}

/** Feeds text in chunks of `size` characters and merges the deltas. */
function parseChunked(text: string, size: number, opts: ConstructorParameters<typeof OutputParser>[0]) {
  const p = new OutputParser(opts);
  const out = { reasoning: '', content: '', calls: [] as { name: string; arguments: string }[] };
  const add = (d: ReturnType<OutputParser['push']>) => {
    out.reasoning += d.reasoning;
    out.content += d.content;
    out.calls.push(...d.toolCalls);
  };
  for (let i = 0; i < text.length; i += size) add(p.push(text.slice(i, i + size)));
  add(p.finish());
  return out;
}

describe('server: tool-call and reasoning parsing', () => {
  it('parses DeepSeek V3 tool calls out of generated text', () => {
    const text = `Let me check.${TOOL_CALLS_BEGIN}${v3Call('get_weather', '{"city": "Paris"}')}\n${v3Call('get_time', '{"tz": "CET"}')}${TOOL_CALLS_END}`;
    const out = parseOutput(text, { parseTools: true });
    assert.equal(out.content, 'Let me check.');
    assert.deepEqual(out.toolCalls, [
      { name: 'get_weather', arguments: '{"city": "Paris"}' },
      { name: 'get_time', arguments: '{"tz": "CET"}' },
    ]);
    // Any chunking gives the same result.
    for (const size of [1, 2, 3, 7, 50]) {
      const c = parseChunked(text, size, { parseTools: true });
      assert.equal(c.content, 'Let me check.', `chunk ${size}`);
      assert.deepEqual(c.calls, out.toolCalls, `chunk ${size}`);
    }
  });

  it('parses the V3.1 format and single call bodies', () => {
    assert.deepEqual(parseToolCallBody(`function${TOOL_SEP}f\n\`\`\`json\n{"a": [1, 2]}\n\`\`\``), { name: 'f', arguments: '{"a": [1, 2]}' });
    assert.deepEqual(parseToolCallBody(`search${TOOL_SEP}{"q": "x"}`), { name: 'search', arguments: '{"q": "x"}' });
    assert.equal(parseToolCallBody('no separator'), null);
    const out = parseOutput(`${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}search${TOOL_SEP}{"q": "x"}${TOOL_CALL_END}${TOOL_CALLS_END}`, { parseTools: true });
    assert.deepEqual(out.toolCalls, [{ name: 'search', arguments: '{"q": "x"}' }]);
    assert.equal(out.content, '');
  });

  it('continues a forced tool-call opening, and falls back to content on garbage', () => {
    const prefix = `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}f\n\`\`\`json\n`;
    const out = parseOutput(`{"x": 1}\n\`\`\`${TOOL_CALL_END}${TOOL_CALLS_END}`, { parseTools: true, prefix });
    assert.deepEqual(out.toolCalls, [{ name: 'f', arguments: '{"x": 1}' }]);
    // A call cut off by max_tokens still counts when its arguments are complete JSON.
    assert.deepEqual(parseOutput(`${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}g${TOOL_SEP}{"y": 2}`, { parseTools: true }).toolCalls, [{ name: 'g', arguments: '{"y": 2}' }]);
    const garbage = `hi ${TOOL_CALLS_BEGIN}nonsense`;
    const g = parseOutput(garbage, { parseTools: true });
    assert.deepEqual(g.toolCalls, []);
    assert.equal(g.content, garbage);
    // Without tools in the request the markers are plain content.
    const text = `a${TOOL_CALLS_BEGIN}${v3Call('f', '{}')}${TOOL_CALLS_END}`;
    assert.equal(parseOutput(text, { parseTools: false }).content, text);
  });

  it('splits <think> reasoning from the answer, streamed or not', () => {
    const cases: [string, { reasoningOpen?: boolean }, string, string][] = [
      ['<think>\nLet me think.\nOK.\n</think>\n\nThe answer is 4.', {}, 'Let me think.\nOK.', 'The answer is 4.'],
      ['Step one.\n</think>\n\nDone.', { reasoningOpen: true }, 'Step one.', 'Done.'],
      ['Plain answer <think> not at start', {}, '', 'Plain answer <think> not at start'],
      ['<think>cut off by the length limit', {}, 'cut off by the length limit', ''],
      ['  <think>a</think>b', {}, 'a', 'b'],
    ];
    for (const [text, opts, reasoning, content] of cases) {
      const whole = parseOutput(text, opts);
      assert.equal(whole.reasoning, reasoning, text);
      assert.equal(whole.content, content, text);
      for (const size of [1, 2, 5]) {
        const c = parseChunked(text, size, opts);
        assert.equal(c.reasoning, reasoning, `${text} / ${size}`);
        assert.equal(c.content, content, `${text} / ${size}`);
      }
    }
    // Reasoning then a tool call.
    const out = parseOutput(`<think>need weather</think>${TOOL_CALLS_BEGIN}${v3Call('w', '{}')}${TOOL_CALLS_END}`, { parseTools: true });
    assert.equal(out.reasoning, 'need weather');
    assert.deepEqual(out.toolCalls, [{ name: 'w', arguments: '{}' }]);
  });
});

// ---------------------------------------------------------------------------
// A live server

interface Raw {
  status: number;
  headers: Headers;
  body: any;
}

async function raw(url: string, init: RequestInit = {}): Promise<Raw> {
  const r = await fetch(url, init);
  const text = await r.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, headers: r.headers, body };
}

function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Raw> {
  return raw(url, { method: 'POST', headers: { 'Content-Type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
}

function assertError(r: Raw, status: number, param: string | null, code?: string) {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.equal(typeof r.body?.error?.message, 'string', JSON.stringify(r.body));
  assert.equal(typeof r.body.error.type, 'string');
  assert.equal(r.body.error.param, param, JSON.stringify(r.body));
  if (status === 400 || status === 404 || status === 413) assert.equal(r.body.error.type, 'invalid_request_error');
  if (code !== undefined) assert.equal(r.body.error.code, code);
  else assert.ok('code' in r.body.error);
}

/** Prometheus sample value (summed over label sets). */
function metric(text: string, name: string): number {
  let sum = 0;
  let found = false;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([^\s{]+)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) {
      sum += Number(m[3]);
      found = true;
    }
  }
  assert.ok(found, `metric ${name} missing`);
  return sum;
}

const greedy = { temperature: 0, ignore_eos: true } as const;
/** Context of the main test server. */
const CTX = 1024;

describe('server (deepseek-v3-tiny)', () => {
  let srv: RunningServer;
  let client: OpenAI;
  let tok: ShoalTokenizer;
  const chat = (content: string, extra: Record<string, unknown> = {}) =>
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 6, ...greedy, ...extra } as any) as Promise<OpenAI.ChatCompletion>;

  before(async () => {
    tok = await loadTokenizer(MODEL_DIR);
    srv = await startServer({ model: MODEL_DIR, port: 0, device: 'cpu', maxContext: CTX, maxRunning: 32, maxQueue: 64 });
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  after(async () => {
    await srv?.close();
  });

  it('/health, /v1/models', async () => {
    const h = await raw(`${srv.url}/health`);
    assert.equal(h.status, 200);
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
    assert.equal(models.data[0]!.object, 'model');
    assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
    assertError(await raw(`${srv.url}/v1/models/nope`), 404, 'model', 'model_not_found');
  });

  it('chat completion: message, usage with DeepSeek cache fields', async () => {
    const messages = [{ role: 'system' as const, content: 'Be brief.' }, { role: 'user' as const, content: 'Hello there' }];
    const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 5, temperature: 0, ignore_eos: true } as any);
    assert.equal(r.object, 'chat.completion');
    assert.match(r.id, /^chatcmpl-/);
    assert.equal(r.model, MODEL);
    assert.equal(r.choices.length, 1);
    const c = r.choices[0]!;
    assert.equal(c.index, 0);
    assert.equal(c.message.role, 'assistant');
    assert.equal(typeof c.message.content, 'string');
    assert.equal(c.finish_reason, 'length');
    const expectedPrompt = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
    const u = r.usage as any;
    assert.equal(u.prompt_tokens, expectedPrompt.length);
    assert.equal(u.completion_tokens, 5);
    assert.equal(u.total_tokens, expectedPrompt.length + 5);
    assert.equal(typeof u.prompt_tokens_details.cached_tokens, 'number');
    assert.equal(u.prompt_cache_hit_tokens, u.prompt_tokens_details.cached_tokens);
    assert.equal(u.prompt_cache_hit_tokens + u.prompt_cache_miss_tokens, u.prompt_tokens);
  });

  it('streamed chat equals the non-streamed one; usage chunk when asked', async () => {
    const full = await chat('Tell me a story', { max_tokens: 8 });
    const stream = await client.chat.completions.create({
      model: MODEL, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 8, ...greedy, stream: true, stream_options: { include_usage: true },
    } as any) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
    let text = '';
    let finish: string | null = null;
    let usage: any = null;
    let first = true;
    for await (const ch of stream) {
      assert.equal(ch.object, 'chat.completion.chunk');
      if (ch.usage) usage = ch.usage;
      if (!ch.choices.length) continue;
      if (first) assert.equal(ch.choices[0]!.delta.role, 'assistant');
      first = false;
      text += ch.choices[0]!.delta.content ?? '';
      if (ch.choices[0]!.finish_reason) finish = ch.choices[0]!.finish_reason;
    }
    assert.equal(text, full.choices[0]!.message.content);
    assert.equal(finish, 'length');
    assert.equal(usage.completion_tokens, 8);
    assert.equal(usage.prompt_tokens, full.usage!.prompt_tokens);
    assert.ok('prompt_cache_hit_tokens' in usage);
  });

  it('completions: text prompt and token ids, streamed and not', async () => {
    const a = await client.completions.create({ model: MODEL, prompt: 'The capital of France', max_tokens: 6, ...greedy } as any);
    assert.equal(a.object, 'text_completion');
    assert.equal(a.usage!.prompt_tokens, tok.encode('The capital of France').length);
    assert.equal(a.usage!.completion_tokens, 6);
    const ids = tok.encode('The capital of France');
    const b = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 6, ...greedy } as any);
    assert.equal(b.choices[0]!.text, a.choices[0]!.text);
    assert.equal(b.usage!.prompt_tokens, ids.length);
    const s = await client.completions.create({ model: MODEL, prompt: ids, max_tokens: 6, ...greedy, stream: true } as any) as unknown as AsyncIterable<OpenAI.Completion>;
    let text = '';
    let finish = null;
    for await (const ch of s) {
      text += ch.choices[0]?.text ?? '';
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, a.choices[0]!.text);
    assert.equal(finish, 'length');
    // A prompt the tokenizer knows nothing about is a 400, not a crash.
    assertError(await post(`${srv.url}/v1/completions`, { prompt: [5, 999999], max_tokens: 2 }), 400, 'prompt');
  });

  it('stop strings end generation before them', async () => {
    const full = (await chat('Count with me', { max_tokens: 12 })).choices[0]!.message.content!;
    assert.ok(full.length >= 4, `output too short to pick a stop string: ${JSON.stringify(full)}`);
    const stop = full.slice(2, 4);
    const cut = full.slice(0, full.indexOf(stop));
    const r = await chat('Count with me', { max_tokens: 12, stop });
    assert.equal(r.choices[0]!.message.content, cut);
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    const r2 = await chat('Count with me', { max_tokens: 12, stop: ['\u0000never', stop] });
    assert.equal(r2.choices[0]!.message.content, cut);
  });

  it('the same seed gives the same sample', async () => {
    const opts = { max_tokens: 8, temperature: 1, top_p: 0.95, seed: 1234 };
    const a = await chat('Random words please', opts);
    const b = await chat('Random words please', opts);
    assert.equal(a.choices[0]!.message.content, b.choices[0]!.message.content);
    const outs = new Set<string>();
    for (const seed of [1, 2, 3]) outs.add((await chat('Random words please', { ...opts, seed })).choices[0]!.message.content!);
    assert.ok(outs.size > 1, 'different seeds give different samples');
  });

  it('logprobs and top_logprobs (chat and completions)', async () => {
    const r = await chat('Hi', { max_tokens: 4, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0]!.logprobs!.content!;
    assert.equal(content.length, 4);
    for (const e of content) {
      assert.ok(e.logprob <= 0);
      assert.ok(Array.isArray(e.bytes));
      assert.equal(e.top_logprobs.length, 3);
      // Greedy: the chosen token is the most likely one.
      assert.equal(e.top_logprobs[0]!.token, e.token);
      assert.ok(Math.abs(e.top_logprobs[0]!.logprob - e.logprob) < 1e-6);
      assert.ok(e.top_logprobs[0]!.logprob >= e.top_logprobs[1]!.logprob);
    }
    const plain = await chat('Hi', { max_tokens: 4 });
    assert.equal(plain.choices[0]!.logprobs, null);
    const c = await client.completions.create({ model: MODEL, prompt: 'Hi', max_tokens: 3, logprobs: 2, ...greedy } as any);
    const lp = c.choices[0]!.logprobs!;
    assert.equal(lp.tokens!.length, 3);
    assert.equal(lp.token_logprobs!.length, 3);
    assert.equal(lp.top_logprobs!.length, 3);
    assert.equal(Object.keys(lp.top_logprobs![0]!).length, 2);
    assert.deepEqual(lp.text_offset!.slice(0, 1), [0]);
    assertError(await post(`${srv.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }), 400, 'top_logprobs');
    assertError(await post(`${srv.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 50 }), 400, 'top_logprobs');
  });

  it('tools: a tool-call conversation renders through the template; tool_choice forces a call', async () => {
    const tools = [{ type: 'function' as const, function: { name: 'get_weather', description: 'Weather of a city', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
    const messages: any[] = [
      { role: 'user', content: 'Weather in Paris?' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: '22 degrees and sunny' },
    ];
    const prompt = buildChatPrompt(tok, { messages, tools });
    assert.ok(prompt.text.includes('<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>22 degrees and sunny<｜tool▁output▁end｜>'));
    assert.ok(prompt.text.includes(`${TOOL_CALL_BEGIN}function${TOOL_SEP}get_weather\n\`\`\`json\n{"city": "Paris"}\n\`\`\`${TOOL_CALL_END}`));
    assert.ok(prompt.text.includes('"name":"get_weather"'), 'tool schema described in the system prompt');
    const r = await client.chat.completions.create({ model: MODEL, messages, tools, max_tokens: 3, ...greedy } as any);
    assert.equal(r.usage!.prompt_tokens, prompt.ids.length);

    // tool_choice naming a function: the prompt is continued by that call's opening.
    const ask = [{ role: 'user', content: 'Weather in Paris?' }] as any[];
    const auto = buildChatPrompt(tok, { messages: ask, tools });
    const named = buildChatPrompt(tok, { messages: ask, tools, tool_choice: { type: 'function', function: { name: 'get_weather' } } });
    assert.equal(named.forcedPrefix, `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}get_weather\n\`\`\`json\n`);
    assert.ok(named.text.endsWith(named.forcedPrefix));
    assert.deepEqual(named.ids.slice(0, auto.ids.length), auto.ids);
    const f = await client.chat.completions.create({ model: MODEL, messages: ask, tools, tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 3, ...greedy } as any);
    assert.equal(f.usage!.prompt_tokens, named.ids.length);
    assertError(await post(`${srv.url}/v1/chat/completions`, { messages: ask, tools, tool_choice: { type: 'function', function: { name: 'nope' } } }), 400, 'tool_choice');
    assertError(await post(`${srv.url}/v1/chat/completions`, { messages: ask, tools: [{ type: 'retrieval' }] }), 400, 'tools[0].type');
  });

  it('bad input answers OpenAI-style errors and leaves a running stream alone', async () => {
    const url = `${srv.url}/v1/chat/completions`;
    const msg = [{ role: 'user', content: 'hi' }];
    // A stream running throughout must come out exactly as when run alone.
    const expected = (await chat('A long answer', { max_tokens: 24 })).choices[0]!.message.content;
    const streamDone = (async () => {
      const s = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'A long answer' }], max_tokens: 24, ...greedy, stream: true } as any) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
      let text = '';
      for await (const ch of s) text += ch.choices[0]?.delta.content ?? '';
      return text;
    })();

    assertError(await post(url, '{"messages": [', {}), 400, null);
    assertError(await post(url, '[1, 2]'), 400, null);
    assertError(await post(url, { messages: msg, temperature: 'hot' }), 400, 'temperature');
    assertError(await post(url, { messages: msg, temperature: -1 }), 400, 'temperature');
    assertError(await post(url, { messages: msg, top_p: 1.5 }), 400, 'top_p');
    assertError(await post(url, { messages: msg, max_tokens: 0 }), 400, 'max_tokens');
    assertError(await post(url, { messages: msg, max_tokens: 2.5 }), 400, 'max_tokens');
    assertError(await post(url, { messages: msg, stop: 5 }), 400, 'stop');
    assertError(await post(url, { messages: msg, n: 2 }), 400, 'n');
    assertError(await post(url, { messages: msg, seed: 'x' }), 400, 'seed');
    assertError(await post(url, { messages: [{ role: 'wizard', content: 'x' }] }), 400, 'messages[0].role');
    assertError(await post(url, { messages: [{ role: 'user', content: 5 }] }), 400, 'messages[0].content');
    assertError(await post(url, { messages: [] }), 400, 'messages');
    assertError(await post(url, {}), 400, 'messages');
    assertError(await post(`${srv.url}/v1/completions`, { prompt: 7 }), 400, 'prompt');
    // Prompt plus max_tokens over the context.
    assertError(await post(url, { messages: msg, max_tokens: CTX }), 400, 'max_tokens', 'context_length_exceeded');
    assertError(await post(url, { messages: msg, max_completion_tokens: CTX - 1 }), 400, 'max_completion_tokens', 'context_length_exceeded');
    const long = Array.from({ length: CTX }, (_, i) => `w${i}`).join(' ');
    assert.ok(tok.encode(long).length > CTX);
    assertError(await post(url, { messages: [{ role: 'user', content: long }], max_tokens: 1 }), 400, 'messages', 'context_length_exceeded');
    assertError(await post(`${srv.url}/v1/completions`, { prompt: Array(CTX).fill(5), max_tokens: 1 }), 400, 'prompt', 'context_length_exceeded');
    // Body over the default 10 MiB limit.
    assertError(await post(url, JSON.stringify({ messages: msg, pad: 'x'.repeat(11 * 2 ** 20) })), 413, null);
    // Unknown model, route, method.
    assertError(await post(url, { model: 'gpt-17', messages: msg }), 404, 'model', 'model_not_found');
    assertError(await raw(`${srv.url}/v2/everything`), 404, null);
    const m = await raw(url);
    assertError(m, 405, null);
    assert.equal(m.headers.get('allow'), 'POST');
    // The openai client surfaces these as typed errors.
    await assert.rejects(client.chat.completions.create({ model: MODEL, messages: msg as any, n: 3 }), (e: any) => e instanceof OpenAI.BadRequestError && e.status === 400);

    assert.equal(await streamDone, expected);
    assert.equal((await raw(`${srv.url}/health`)).status, 200);
  });

  it('32 concurrent streaming greedy requests each equal their own sequential run', async () => {
    const prompts = Array.from({ length: 32 }, (_, i) => `Request number ${i}: ${'abcdefghij'.slice(0, 1 + (i % 10))}`);
    const sequential: string[] = [];
    for (const p of prompts) sequential.push((await chat(p, { max_tokens: 5 })).choices[0]!.message.content!);
    const streamed = await Promise.all(prompts.map(async (p) => {
      const s = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: p }], max_tokens: 5, ...greedy, stream: true } as any) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
      let text = '';
      let finish = null;
      for await (const ch of s) {
        text += ch.choices[0]?.delta.content ?? '';
        finish = ch.choices[0]?.finish_reason ?? finish;
      }
      assert.equal(finish, 'length');
      return text;
    }));
    streamed.forEach((t, i) => assert.equal(t, sequential[i], `request ${i}`));
  });

  it('clients that disconnect mid-stream abort their requests; KV usage returns to its baseline', async () => {
    const scrape = async () => (await raw(`${srv.url}/metrics`)).body as string;
    const waitIdle = async () => {
      for (let i = 0; i < 200; i++) {
        const m = await scrape();
        if (metric(m, 'shoal:num_requests_running') === 0 && metric(m, 'shoal:num_requests_waiting') === 0) return m;
        await new Promise((r) => setTimeout(r, 25));
      }
      throw new Error('server never went idle');
    };
    const base = await waitIdle();
    const baseUsage = metric(base, 'shoal:kv_cache_usage_perc');
    const baseGen = metric(base, 'shoal:generation_tokens_total');
    const ctrls = Array.from({ length: 8 }, () => new AbortController());
    let busyUsage = 0;
    const runs = ctrls.map(async (ac, i) => {
      const s = await client.chat.completions.create(
        { model: MODEL, messages: [{ role: 'user', content: `Abort test ${i}` }], max_tokens: i % 2 ? 6 : 200, ...greedy, stream: true } as any,
        { signal: ac.signal },
      ) as unknown as AsyncIterable<OpenAI.ChatCompletionChunk>;
      let chunks = 0;
      let finish = null;
      try {
        for await (const ch of s) {
          finish = ch.choices[0]?.finish_reason ?? finish;
          if (++chunks === 3 && i % 2 === 0) {
            busyUsage = Math.max(busyUsage, metric(await scrape(), 'shoal:kv_cache_usage_perc'));
            ac.abort();
          }
        }
      } catch (e) {
        if (!ac.signal.aborted) throw e;
      }
      // (the openai client ends an aborted stream quietly)
      return ac.signal.aborted ? 'aborted' : finish;
    });
    const results = await Promise.all(runs);
    assert.deepEqual(results, ctrls.map((_, i) => (i % 2 ? 'length' : 'aborted')));
    assert.ok(busyUsage > baseUsage, 'requests held cache blocks while running');
    const end = await waitIdle();
    assert.equal(metric(end, 'shoal:kv_cache_usage_perc'), baseUsage);
    assert.equal(srv.scheduler!.stats().kvBlocksUsed, 0);
    // The aborted ones stopped early instead of generating their 200 tokens.
    assert.ok(metric(end, 'shoal:generation_tokens_total') - baseGen < 4 * 6 + 4 * 40, 'aborted requests stopped generating');
    assert.ok(metric(end, 'shoal:request_success_total') > 0);
    assert.match(end, /shoal:request_success_total\{[^}]*finished_reason="abort"[^}]*\} [1-9]/);
  });

  it('a repeated long system prompt hits the prefix cache', async () => {
    const system = 'You are a meticulous assistant. '.repeat(12);
    const ask = (q: string) => client.chat.completions.create({ model: MODEL, messages: [{ role: 'system', content: system }, { role: 'user', content: q }], max_tokens: 2, ...greedy } as any);
    const before = (await raw(`${srv.url}/metrics`)).body as string;
    await ask('First question');
    const second = await ask('Second question');
    const u = second.usage as any;
    assert.ok(u.prompt_cache_hit_tokens > 32, `hit tokens ${u.prompt_cache_hit_tokens}`);
    assert.equal(u.prompt_tokens_details.cached_tokens, u.prompt_cache_hit_tokens);
    assert.equal(u.prompt_cache_miss_tokens, u.prompt_tokens - u.prompt_cache_hit_tokens);
    const after = (await raw(`${srv.url}/metrics`)).body as string;
    assert.ok(metric(after, 'shoal:prefix_cache_hits_total') - metric(before, 'shoal:prefix_cache_hits_total') >= u.prompt_cache_hit_tokens);
    assert.ok(metric(after, 'shoal:prefix_cache_queries_total') > metric(before, 'shoal:prefix_cache_queries_total'));
  });

  it('/metrics speaks Prometheus with vLLM-style names', async () => {
    const r = await raw(`${srv.url}/metrics`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type')!, /^text\/plain/);
    const m = r.body as string;
    for (const name of [
      'shoal:num_requests_running', 'shoal:num_requests_waiting', 'shoal:kv_cache_usage_perc',
      'shoal:prefix_cache_queries_total', 'shoal:prefix_cache_hits_total', 'shoal:prompt_tokens_total',
      'shoal:generation_tokens_total', 'shoal:num_preemptions_total', 'shoal:spec_decode_draft_acceptance_rate',
      'shoal:time_to_first_token_seconds_count', 'shoal:inter_token_latency_seconds_count', 'shoal:e2e_request_latency_seconds_count',
    ]) metric(m, name);
    assert.match(m, /# TYPE shoal:time_to_first_token_seconds histogram/);
    assert.match(m, /# TYPE shoal:prompt_tokens_total counter/);
    assert.match(m, /model_name="deepseek-v3-tiny"/);
    assert.ok(metric(m, 'shoal:time_to_first_token_seconds_count') > 0);
    assert.ok(metric(m, 'shoal:inter_token_latency_seconds_count') > 0);
    assert.ok(metric(m, 'shoal:prompt_tokens_total') > 0);
    assert.ok(metric(m, 'shoal:generation_tokens_total') > 0);
  });
});

/** A stand-in scheduler that "generates" a scripted text, a few characters per token. */
class ScriptedScheduler implements ServingScheduler {
  readonly maxContext = 4096;
  script = '';
  lastRequest: RequestOptions | undefined;
  submit(req: RequestOptions): AsyncIterable<RequestEvent> {
    this.lastRequest = req;
    const script = this.script;
    return (async function* () {
      let n = 0;
      for (let i = 0; i < script.length; i += 3) {
        n++;
        yield { type: 'token', token: { id: 5 }, text: script.slice(i, i + 3) } as RequestEvent;
        await new Promise((r) => setImmediate(r));
      }
      yield {
        type: 'done', finishReason: 'stop', text: '', ttftMs: 1, totalMs: 2, draftTokens: 0, acceptedTokens: 0,
        usage: { promptTokens: req.prompt.length, completionTokens: n, cachedTokens: 0 },
      } as RequestEvent;
    })();
  }
  stats() {
    return { running: 0, waiting: 0, kvBlocksTotal: 1, kvBlocksUsed: 0, kvBlocksCached: 0, prefixQueryTokens: 0, prefixHitTokens: 0, preemptions: 0, promptTokens: 0, generationTokens: 0, draftTokens: 0, acceptedTokens: 0 };
  }
  async shutdown() {}
}

describe('server: tool calls and reasoning in responses (scripted output)', () => {
  let srv: RunningServer;
  let client: OpenAI;
  const fake = new ScriptedScheduler();
  const tools = [{ type: 'function' as const, function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } }];
  const messages = [{ role: 'user' as const, content: 'Weather in Paris and Rome?' }];
  const callsText = `Let me check.${TOOL_CALLS_BEGIN}${v3Call('get_weather', '{"city": "Paris"}')}\n${v3Call('get_weather', '{"city": "Rome"}')}${TOOL_CALLS_END}`;

  before(async () => {
    srv = await startServer({ model: MODEL_DIR, port: 0, device: 'cpu', createScheduler: () => fake });
    client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'x', maxRetries: 0 });
  });
  after(async () => {
    await srv?.close();
  });

  it('tool calls come back parsed, streamed or not', async () => {
    fake.script = callsText;
    const r = await client.chat.completions.create({ model: MODEL, messages, tools });
    const m = r.choices[0]!.message;
    assert.equal(r.choices[0]!.finish_reason, 'tool_calls');
    assert.equal(m.content, 'Let me check.');
    assert.equal(m.tool_calls!.length, 2);
    const calls = m.tool_calls! as OpenAI.ChatCompletionMessageFunctionToolCall[];
    assert.deepEqual(calls.map((c) => [c.type, c.function.name, JSON.parse(c.function.arguments).city]), [['function', 'get_weather', 'Paris'], ['function', 'get_weather', 'Rome']]);
    assert.ok(calls.every((c) => /^call_/.test(c.id)) && calls[0]!.id !== calls[1]!.id);

    // The client's stream helper accumulates our deltas into the same message.
    const stream = client.chat.completions.stream({ model: MODEL, messages, tools });
    const final = await stream.finalChatCompletion();
    assert.equal(final.choices[0]!.finish_reason, 'tool_calls');
    assert.equal(final.choices[0]!.message.content, 'Let me check.');
    const sc = final.choices[0]!.message.tool_calls! as OpenAI.ChatCompletionMessageFunctionToolCall[];
    assert.deepEqual(sc.map((c) => c.function), calls.map((c) => c.function));

    // Without tools in the request the markers stay text.
    const plain = await client.chat.completions.create({ model: MODEL, messages });
    assert.equal(plain.choices[0]!.message.content, callsText);
    assert.equal(plain.choices[0]!.finish_reason, 'stop');
    // tool_choice "none" neither describes the tools nor parses calls.
    const none = await client.chat.completions.create({ model: MODEL, messages, tools, tool_choice: 'none' });
    assert.equal(none.choices[0]!.message.content, callsText);
  });

  it('reasoning goes to reasoning_content, streamed as deltas too', async () => {
    fake.script = '<think>\nThe user wants a number.\n</think>\n\nIt is 4.';
    const r = await client.chat.completions.create({ model: MODEL, messages });
    const m = r.choices[0]!.message as any;
    assert.equal(m.reasoning_content, 'The user wants a number.');
    assert.equal(m.content, 'It is 4.');
    const s = await client.chat.completions.create({ model: MODEL, messages, stream: true });
    let reasoning = '';
    let content = '';
    for await (const ch of s) {
      const d = ch.choices[0]?.delta as any;
      reasoning += d?.reasoning_content ?? '';
      content += d?.content ?? '';
    }
    assert.equal(reasoning, 'The user wants a number.');
    assert.equal(content, 'It is 4.');
  });

  it('passes sampling fields and extensions to the scheduler', async () => {
    fake.script = 'ok';
    await client.chat.completions.create({
      model: MODEL, messages, max_completion_tokens: 7, temperature: 0.5, top_p: 0.9, seed: 3, presence_penalty: 0.5, frequency_penalty: -0.5,
      stop: 'END', logprobs: true, top_logprobs: 2, top_k: 20, min_p: 0.05, repetition_penalty: 1.1, ignore_eos: true, stop_token_ids: [7],
    } as any);
    const q = fake.lastRequest!;
    assert.equal(q.maxTokens, 7);
    assert.deepEqual(q.sampling, { temperature: 0.5, topP: 0.9, topK: 20, minP: 0.05, repetitionPenalty: 1.1, presencePenalty: 0.5, frequencyPenalty: -0.5, seed: 3 });
    assert.deepEqual(q.stop, ['END']);
    assert.deepEqual(q.stopTokenIds, [7]);
    assert.equal(q.ignoreEos, true);
    assert.equal(q.logprobs, 2);
    assert.ok(q.signal instanceof AbortSignal);
    await client.chat.completions.create({ model: MODEL, messages });
    assert.deepEqual(fake.lastRequest!.sampling, {}, 'unset fields are left to the model defaults');
    assert.equal(fake.lastRequest!.logprobs, undefined);
  });
});

describe('server limits: API key, queue, body size, loading', () => {
  let srv: RunningServer;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));

  before(async () => {
    srv = await startServer({
      model: MODEL_DIR, port: 0, apiKey: 'sekret', maxRunning: 1, maxQueue: 1, maxContext: 256, maxBodyBytes: 4096, noWait: true,
      load: async () => {
        await gate;
        return loadModelOn(MODEL_DIR, 'cpu');
      },
    });
  });
  after(async () => {
    release();
    await srv?.close();
  });

  it('/health is 503 until the model is loaded, then 200', async () => {
    const h = await raw(`${srv.url}/health`);
    assert.equal(h.status, 503);
    const c = await post(`${srv.url}/v1/completions`, { prompt: 'x' }, { Authorization: 'Bearer sekret' });
    assert.equal(c.status, 503);
    release();
    await srv.ready;
    assert.equal((await raw(`${srv.url}/health`)).status, 200);
  });

  it('API key: missing or wrong is 401, right is 200', async () => {
    await srv.ready;
    const body = { messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 };
    assertError(await post(`${srv.url}/v1/chat/completions`, body), 401, null, 'invalid_api_key');
    assertError(await post(`${srv.url}/v1/chat/completions`, body, { Authorization: 'Bearer nope' }), 401, null, 'invalid_api_key');
    assertError(await raw(`${srv.url}/v1/models`), 401, null, 'invalid_api_key');
    const bad = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await assert.rejects(bad.models.list(), (e: any) => e instanceof OpenAI.AuthenticationError);
    const good = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sekret', maxRetries: 0 });
    const r = await good.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 1 });
    assert.equal(r.usage!.completion_tokens, 1);
    // Health and metrics stay open for probes.
    assert.equal((await raw(`${srv.url}/health`)).status, 200);
    assert.equal((await raw(`${srv.url}/metrics`)).status, 200);
  });

  it('a configured body limit answers 413', async () => {
    await srv.ready;
    const r = await post(`${srv.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'x'.repeat(5000) }] }, { Authorization: 'Bearer sekret' });
    assertError(r, 413, null, 'request_too_large');
    // Also without a Content-Length (chunked upload).
    const body = new ReadableStream({ start(c) { for (let i = 0; i < 50; i++) c.enqueue(new TextEncoder().encode('x'.repeat(1000))); c.close(); } });
    const chunked = await raw(`${srv.url}/v1/chat/completions`, { method: 'POST', body, duplex: 'half', headers: { Authorization: 'Bearer sekret' } } as RequestInit);
    assertError(chunked, 413, null, 'request_too_large');
  });

  it('a full queue answers 429 with Retry-After', async () => {
    await srv.ready;
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sekret', maxRetries: 0 });
    const acs = [new AbortController(), new AbortController()];
    const long = (i: number) => client.chat.completions.create(
      { model: MODEL, messages: [{ role: 'user', content: `long ${i}` }], max_tokens: 200, ...greedy, stream: true } as any,
      { signal: acs[i]!.signal },
    ) as unknown as Promise<AsyncIterable<OpenAI.ChatCompletionChunk>>;
    // One running (its first chunk arrived), one waiting behind it (max-running 1, max-queue 1).
    const until = async (cond: () => boolean) => {
      for (let i = 0; i < 500 && !cond(); i++) await new Promise((res) => setTimeout(res, 10));
      assert.ok(cond());
    };
    const first = await long(0);
    const it0 = first[Symbol.asyncIterator]();
    await it0.next();
    await until(() => srv.scheduler!.stats().running === 1);
    await long(1);
    await until(() => srv.scheduler!.stats().waiting === 1);
    const r = await post(`${srv.url}/v1/chat/completions`, { messages: [{ role: 'user', content: 'third' }], max_tokens: 2 }, { Authorization: 'Bearer sekret' });
    assertError(r, 429, null);
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
    acs.forEach((a) => a.abort());
    await it0.next().catch(() => {});
    // Once they are gone the server takes requests again.
    for (let i = 0; i < 100 && srv.scheduler!.stats().running + srv.scheduler!.stats().waiting > 0; i++) await new Promise((res) => setTimeout(res, 20));
    const ok = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'again' }], max_tokens: 1 });
    assert.equal(ok.choices.length, 1);
  });
});

describe('server with speculative MTP', () => {
  it('greedy output equals the output without speculation', async () => {
    const plain = await startServer({ model: MODEL_DIR, port: 0, device: 'cpu', maxContext: 128 });
    const spec = await startServer({ model: MODEL_DIR, port: 0, device: 'cpu', maxContext: 128, speculative: 'mtp' });
    try {
      for (const content of ['Speculate about this', 'And this one too']) {
        const ask = (s: RunningServer) =>
          new OpenAI({ baseURL: `${s.url}/v1`, apiKey: 'x', maxRetries: 0 }).chat.completions.create({ model: MODEL, messages: [{ role: 'user', content }], max_tokens: 10, ...greedy } as any);
        const [a, b] = await Promise.all([ask(plain), ask(spec)]);
        assert.equal(b.choices[0]!.message.content, a.choices[0]!.message.content);
      }
      const m = (await raw(`${spec.url}/metrics`)).body as string;
      assert.ok(metric(m, 'shoal:spec_decode_num_draft_tokens_total') > 0);
      const rate = metric(m, 'shoal:spec_decode_draft_acceptance_rate');
      assert.ok(rate >= 0 && rate <= 1);
    } finally {
      await plain.close();
      await spec.close();
    }
  });
});

describe('shoal serve (CLI)', () => {
  it('takes the port from $PORT, prints the URL once ready, and stops on SIGTERM', async () => {
    // main.ts registers the command; here it is registered on a bare program so this test
    // depends only on serve.ts.
    const script = `
      import { Command } from 'commander';
      import { registerServe } from ${JSON.stringify(join(repoRoot, 'dist/src/cli/serve.js'))};
      const p = new Command('shoal'); registerServe(p); await p.parseAsync(process.argv.slice(1), { from: 'user' });`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, '--', 'serve', '--model', MODEL_DIR, '--device', 'cpu', '--max-context', '64', '--served-model-name', 'tiny'], {
      env: { ...process.env, PORT: '0' },
      cwd: repoRoot,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    const url = await new Promise<string>((res, rej) => {
      child.stdout.on('data', (d) => {
        stdout += d;
        const m = /shoal: serving tiny at (http:\/\/127\.0\.0\.1:\d+)\n/.exec(stdout);
        if (m) res(m[1]!);
      });
      child.on('exit', () => rej(new Error(`serve exited early: ${stderr}`)));
    });
    try {
      assert.equal((await raw(`${url}/health`)).status, 200);
      const models = (await raw(`${url}/v1/models`)).body;
      assert.equal(models.data[0].id, 'tiny');
    } finally {
      child.kill('SIGTERM');
    }
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /SIGTERM, shutting down/);
  });
});
