/**
 * The playground's side of the server, on the bundled demo model: static files (content types,
 * no caching, no way out of the web folder), GET /api/stats, /api/plan, and the
 * `"shoal": {"routing": true}` extension of /v1/chat/completions.
 * Needs the playground built into dist/web (`npm run build`).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../src/server/server.js';
import { DEFAULT_WEB_ROOT, playgroundBuilt, resolveStaticPath } from '../src/server/static.js';
import { repoRoot } from './helpers.js';

const DEMO = join(repoRoot, 'models/demo');

interface Raw {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: any;
}

/** A request with the path sent exactly as given (fetch would normalize `..` away). */
function rawRequest(url: string, path: string, method = 'GET', body?: string): Promise<Raw> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, path, method, headers: body ? { 'Content-Type': 'application/json' } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: any = null;
        try {
          json = JSON.parse(text);
        } catch {
          // not JSON
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const post = (url: string, path: string, body: unknown) => rawRequest(url, path, 'POST', typeof body === 'string' ? body : JSON.stringify(body));

function assertError(r: Raw, status: number, param: string | null) {
  assert.equal(r.status, status, r.text);
  assert.equal(typeof r.json?.error?.message, 'string', r.text);
  assert.equal(r.json.error.param, param, r.text);
  if (status === 400 || status === 404) assert.equal(r.json.error.type, 'invalid_request_error');
}

/** The data payloads of a server-sent-event stream. */
function sseData(text: string): string[] {
  return text.split('\n\n').map((e) => e.trim()).filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
}

describe('server: playground files and API (demo model)', () => {
  let srv: RunningServer;

  before(async () => {
    assert.ok(playgroundBuilt(), `the playground is not built into ${DEFAULT_WEB_ROOT}: run \`npm run build\``);
    srv = await startServer({ model: DEMO, port: 0, device: 'cpu', maxContext: 512, maxRunning: 4 });
  });
  after(async () => {
    await srv?.close();
  });

  it('serves the playground with the right content types and no caching', async () => {
    const cases: [string, RegExp, string][] = [
      ['/', /^text\/html; charset=utf-8$/, '<script type="module" src="app.js">'],
      ['/index.html', /^text\/html/, '<title>shoal playground</title>'],
      ['/app.js', /^text\/javascript; charset=utf-8$/, 'import'],
      ['/chat.js', /^text\/javascript/, 'streamChat'],
      ['/style.css', /^text\/css; charset=utf-8$/, '.heat-grid'],
      ['/?tab=plan', /^text\/html/, '<main>'],
    ];
    for (const [path, type, snippet] of cases) {
      const r = await rawRequest(srv.url, path);
      assert.equal(r.status, 200, path);
      assert.match(String(r.headers['content-type']), type, path);
      assert.equal(r.headers['cache-control'], 'no-store', path);
      assert.equal(r.headers['x-content-type-options'], 'nosniff', path);
      assert.match(String(r.headers['content-security-policy']), /default-src 'self'/, path);
      assert.ok(r.text.includes(snippet), `${path} lacks ${snippet}`);
      assert.equal(Number(r.headers['content-length']), Buffer.byteLength(r.text), path);
    }
    const head = await rawRequest(srv.url, '/', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.text, '');
    assert.ok(Number(head.headers['content-length']) > 100);
    // Missing files and other methods are OpenAI-style 404s.
    assertError(await rawRequest(srv.url, '/nope.js'), 404, null);
    assertError(await rawRequest(srv.url, '/app.ts'), 404, null); // sources are not shipped, and .ts has no type here
    assertError(await post(srv.url, '/', {}), 404, null);
    assertError(await rawRequest(srv.url, '/v1/nothing'), 404, null);
    assertError(await rawRequest(srv.url, '/api/nothing'), 404, null);
  });

  it('refuses every way out of the web folder', async () => {
    const attempts = [
      '/../package.json', '/../../package.json', '/..%2Fpackage.json', '/%2e%2e/package.json', '/%2E%2E%2F%2E%2E%2Fpackage.json',
      '/web/../../package.json', '/..%5Cpackage.json', '/%5C..%5Cpackage.json', '/app.js%00.html', '/.%2e/src/server/server.ts',
      '/%2fetc%2fpasswd', '//etc/passwd', '/.env', '/%', '/v1/../../package.json', '/api/%2e%2e/%2e%2e/tsconfig.json',
    ];
    for (const path of attempts) {
      const r = await rawRequest(srv.url, path);
      assert.ok(r.status === 400 || r.status === 404, `${path}: ${r.status}`);
      assert.ok(r.json?.error, `${path}: ${r.text.slice(0, 200)}`);
      assert.ok(!r.text.includes('"name": "shoal"') && !r.text.includes('root:') && !r.text.includes('compilerOptions'), `${path} leaked a file`);
    }
    const root = '/srv/web';
    assert.equal(resolveStaticPath(root, '/'), join(root, 'index.html'));
    assert.equal(resolveStaticPath(root, '/app.js'), join(root, 'app.js'));
    assert.equal(resolveStaticPath(root, '/a%20b.css'), join(root, 'a b.css'));
    for (const bad of ['/../x', '/a/../../x', '/%2e%2e/x', '/..%2fx', '/a\\..\\x', '/x%00', '/%E0%A4%A', '/.git/config', 'x']) {
      assert.equal(resolveStaticPath(root, bad), null, bad);
    }
  });

  it('webRoot: null turns the playground off; an unbuilt one says how to build it', async (t) => {
    const empty = mkdtempSync(join(tmpdir(), 'shoal-web-'));
    t.after(() => rmSync(empty, { recursive: true, force: true }));
    const off = await startServer({ model: DEMO, port: 0, device: 'cpu', webRoot: null, load: async () => { throw new Error('not needed'); }, noWait: true });
    const unbuilt = await startServer({ model: DEMO, port: 0, device: 'cpu', webRoot: empty, load: async () => { throw new Error('not needed'); }, noWait: true });
    try {
      assertError(await rawRequest(off.url, '/'), 404, null);
      const r = await rawRequest(unbuilt.url, '/');
      assertError(r, 404, null);
      assert.match(r.json.error.message, /npm run build/);
    } finally {
      await off.close();
      await unbuilt.close();
    }
  });

  it('GET /api/stats: scheduler figures, rates and the model shape', async () => {
    const r = await rawRequest(srv.url, '/api/stats');
    assert.equal(r.status, 200);
    assert.match(String(r.headers['content-type']), /^application\/json/);
    const s = r.json;
    assert.equal(s.object, 'shoal.stats');
    assert.equal(s.status, 'ok');
    assert.deepEqual(
      { ...s.model, backend: typeof s.model.backend },
      {
        name: 'demo', architecture: 'DeepseekV3ForCausalLM', layers: 4, moe_layers: [1, 2, 3], experts: 16, experts_per_token: 4,
        shared_experts: 1, hidden_size: 192, vocab_size: 2048, mtp_layers: 1, max_context: 512, speculative: null, backend: 'string',
      },
    );
    const keys = ['running', 'waiting', 'kvBlocksTotal', 'kvBlocksUsed', 'kvBlocksCached', 'prefixQueryTokens', 'prefixHitTokens', 'preemptions',
      'promptTokens', 'generationTokens', 'draftTokens', 'acceptedTokens'];
    assert.deepEqual(Object.keys(s.scheduler).sort(), [...keys].sort());
    for (const k of keys) assert.equal(typeof s.scheduler[k], 'number', k);
    assert.ok(s.scheduler.kvBlocksTotal > 0);
    assert.equal(typeof s.rates.kv_cache_usage, 'number');
    assert.equal(s.rates.spec_acceptance_rate, null); // nothing drafted

    // After a request the counters move and the prefix-cache rate exists.
    const body = { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, temperature: 0, ignore_eos: true };
    assert.equal((await post(srv.url, '/v1/chat/completions', body)).status, 200);
    assert.equal((await post(srv.url, '/v1/chat/completions', body)).status, 200);
    const after = (await rawRequest(srv.url, '/api/stats')).json;
    assert.ok(after.scheduler.generationTokens >= s.scheduler.generationTokens + 8);
    assert.ok(after.scheduler.promptTokens > s.scheduler.promptTokens);
    assert.equal(typeof after.rates.prefix_cache_hit_rate, 'number');
    assert.ok(after.rates.prefix_cache_hit_rate >= 0 && after.rates.prefix_cache_hit_rate <= 1);
    assertError(await post(srv.url, '/api/stats', {}), 405, null);
  });

  it('GET /api/plan lists the catalog; POST runs the planner', async () => {
    const cat = (await rawRequest(srv.url, '/api/plan')).json;
    assert.ok(cat.models.some((m: any) => m.name === 'deepseek-r1'));
    assert.ok(cat.hardware.some((h: any) => h.name === 'h100' && h.precisions.includes('fp8')));
    assert.deepEqual(cat.precisions, ['bf16', 'fp8', 'int8', 'fp4']);
    assert.equal(cat.defaults.slo_tpot_ms, 50);

    const t0 = performance.now();
    const r = await post(srv.url, '/api/plan', { model: 'deepseek-r1', hardware: 'ascend-910c', precision: 'int8', slo_tpot_ms: 50, top: 5 });
    assert.equal(r.status, 200, r.text);
    assert.ok(performance.now() - t0 < 10_000);
    const p = r.json;
    assert.equal(p.object, 'shoal.plan');
    assert.equal(p.model.name, 'deepseek-r1');
    assert.equal(p.hardware.name, 'ascend-910c');
    assert.equal(p.precision, 'int8');
    assert.ok(p.candidates.length >= 1 && p.candidates.length <= 5);
    assert.deepEqual(p.best, p.candidates[0]);
    for (const c of p.candidates) {
      assert.ok(c.chips >= 1);
      assert.ok(c.tpot_ms <= 50 + 1e-9, `TPOT ${c.tpot_ms}`);
      assert.ok(c.usd_per_million_output_tokens > 0);
      assert.equal(typeof c.parallelism.summary, 'string');
    }
    assert.match(p.svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.match(p.svg, /<\/svg>\s*$/);
    // A chip budget changes the ranking; HF ids work.
    const budget = (await post(srv.url, '/api/plan', { model: 'deepseek-ai/DeepSeek-V3', hardware: 'h100', chips: 16 })).json;
    assert.equal(budget.ranked_by, 'requests_per_s');
    assert.ok(budget.candidates.every((c: any) => c.chips <= 16));
  });

  it('POST /api/plan: bad input is a 400 naming the field', async () => {
    const ok = { model: 'deepseek-r1', hardware: 'h100' };
    assertError(await post(srv.url, '/api/plan', '{not json'), 400, null);
    assertError(await post(srv.url, '/api/plan', '[1]'), 400, null);
    assertError(await post(srv.url, '/api/plan', { hardware: 'h100' }), 400, 'model');
    assertError(await post(srv.url, '/api/plan', { model: 'deepseek-r1' }), 400, 'hardware');
    assertError(await post(srv.url, '/api/plan', { ...ok, model: 'gpt-5' }), 400, 'model');
    // Paths are not models here (the CLI takes config.json paths; a server must not read its disk for a client).
    assertError(await post(srv.url, '/api/plan', { ...ok, model: DEMO }), 400, 'model');
    assertError(await post(srv.url, '/api/plan', { ...ok, hardware: 'tpu-v9' }), 400, 'hardware');
    assertError(await post(srv.url, '/api/plan', { ...ok, precision: 'fp2' }), 400, 'precision');
    assertError(await post(srv.url, '/api/plan', { ...ok, hardware: 'h20', precision: 'fp4' }), 400, 'precision');
    assertError(await post(srv.url, '/api/plan', { ...ok, slo_tpot_ms: 0 }), 400, 'slo_tpot_ms');
    assertError(await post(srv.url, '/api/plan', { ...ok, slo_tpot_ms: '50' }), 400, 'slo_tpot_ms');
    assertError(await post(srv.url, '/api/plan', { ...ok, chips: 1.5 }), 400, 'chips');
    assertError(await post(srv.url, '/api/plan', { ...ok, cache_hit_rate: 1 }), 400, 'cache_hit_rate');
    assertError(await post(srv.url, '/api/plan', { ...ok, prompt_tokens: 200000 }), 400, 'prompt_tokens');
    assertError(await post(srv.url, '/api/plan', { model: 'kimi-k2', hardware: 'h100', mtp_acceptance: 0.8 }), 400, 'mtp_acceptance');
    assertError(await rawRequest(srv.url, '/api/plan', 'DELETE'), 405, null);
  });

  it('"shoal": {"routing": true} returns expert counts: each generated token picks K experts per MoE layer', async () => {
    const stats = (await rawRequest(srv.url, '/api/stats')).json;
    const K: number = stats.model.experts_per_token;
    const E: number = stats.model.experts;
    const check = (routing: any, completionTokens: number, where: string) => {
      assert.ok(routing, `${where}: no shoal_routing`);
      assert.deepEqual(routing.layers, stats.model.moe_layers, where);
      assert.equal(routing.counts.length, routing.layers.length, where);
      for (const row of routing.counts) {
        assert.equal(row.length, E, where);
        assert.ok(row.every((c: number) => Number.isInteger(c) && c >= 0), where);
        assert.equal(row.reduce((a: number, b: number) => a + b, 0), completionTokens * K, `${where}: per-layer sum vs completion_tokens * ${K}`);
      }
    };
    const base = { messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 12, temperature: 0, ignore_eos: true };

    const plain = await post(srv.url, '/v1/chat/completions', base);
    assert.equal(plain.status, 200);
    assert.ok(!('shoal_routing' in plain.json), 'no routing unless asked');

    const full = await post(srv.url, '/v1/chat/completions', { ...base, shoal: { routing: true } });
    assert.equal(full.status, 200, full.text);
    assert.equal(full.json.usage.completion_tokens, 12);
    assert.equal(full.json.choices[0].message.content, plain.json.choices[0].message.content);
    check(full.json.shoal_routing, 12, 'non-stream');

    // Streamed: on the last chunk (the finish chunk, or the usage chunk when there is one).
    for (const include_usage of [false, true]) {
      const s = await post(srv.url, '/v1/chat/completions', { ...base, stream: true, stream_options: { include_usage }, shoal: { routing: true } });
      assert.equal(s.status, 200);
      const data = sseData(s.text);
      assert.equal(data.at(-1), '[DONE]');
      const chunks = data.slice(0, -1).map((d) => JSON.parse(d));
      const last = chunks.at(-1);
      assert.equal(chunks.filter((c) => 'shoal_routing' in c).length, 1, 'routing comes once');
      if (include_usage) assert.deepEqual(last.choices, []);
      else assert.equal(last.choices[0].finish_reason, 'length');
      check(last.shoal_routing, 12, `stream, include_usage ${include_usage}`);
      assert.deepEqual(last.shoal_routing, full.json.shoal_routing, 'greedy: same tokens, same experts');
    }

    // The extension is validated.
    assertError(await post(srv.url, '/v1/chat/completions', { ...base, shoal: { routing: 'yes' } }), 400, 'shoal.routing');
    assertError(await post(srv.url, '/v1/chat/completions', { ...base, shoal: { routeing: true } }), 400, 'shoal');
    assertError(await post(srv.url, '/v1/chat/completions', { ...base, shoal: 1 }), 400, 'shoal');
    assert.equal((await post(srv.url, '/v1/chat/completions', { ...base, max_tokens: 2, shoal: { routing: false } })).json.shoal_routing, undefined);
  });
});
