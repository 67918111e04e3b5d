/**
 * The demo model run entirely in a browser tab on WebGPU: `shoal serve` on models/demo, Debian's
 * Chromium (headless, driven by playwright-core) loads the page, which downloads the model's
 * files from /api/model/files/ and runs src/models/deepseek.ts on src/backends/webgpu/ against
 * the browser's navigator.gpu (bundled into dist/web/inbrowser.js). Greedy token ids must be
 * identical to the Node engine's on the CPU backend; the playground's "Run in this tab" toggle
 * must give the same reply as the server. Also checks the model-files route itself and the
 * HTTP tensor source against it (no browser needed).
 *
 * Headless Chromium offers an adapter only with --enable-unsafe-webgpu (then SwiftShader's
 * Vulkan, a CPU implementation; see docs/backends.md, "In the browser"). Without Chromium, or
 * when it offers no adapter, the browser tests skip and say why.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { startServer, type RunningServer } from '../src/server/server.js';
import { playgroundBuilt } from '../src/server/static.js';
import { HttpModelFolder } from '../src/formats/http-safetensors.js';
import { openSafetensors } from '../src/formats/safetensors.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';
import { Engine } from '../src/engine/engine.js';
import { repoRoot } from './helpers.js';

const CHROMIUM = process.env['SHOAL_CHROMIUM'] ?? '/usr/bin/chromium';
const DEMO = join(repoRoot, 'models/demo');
const haveBrowser = existsSync(CHROMIUM);
const noBrowser = haveBrowser ? false : `${CHROMIUM} is missing (install Debian's chromium: apt-get install -y chromium)`;
if (noBrowser) process.stderr.write(`browser-webgpu-e2e: skipped: ${noBrowser}\n`);

// --enable-unsafe-webgpu: headless Chromium on Linux gives no adapter without it. No --disable-gpu.
const ARGS = [
  '--headless', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

const PROMPT = 'Once upon a time, in a quiet harbour,';
const N = 24;

describe('model files over HTTP', () => {
  let srv: RunningServer;
  before(async () => {
    srv = await startServer({ model: DEMO, port: 0, device: 'cpu', maxContext: 1024, webRoot: null });
  });
  after(async () => {
    await srv?.close();
  });

  it('serves only the listed files of the model folder, with their types and sizes', async () => {
    const base = srv.url + '/api/model/files/';
    const st = await fetch(base + 'model.safetensors', { method: 'HEAD' });
    assert.equal(st.status, 200);
    assert.equal(st.headers.get('content-type'), 'application/octet-stream');
    assert.equal(Number(st.headers.get('content-length')), statSync(join(DEMO, 'model.safetensors')).size);
    const cfg = await fetch(base + 'config.json');
    assert.equal(cfg.status, 200);
    assert.match(cfg.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await cfg.json(), JSON.parse(readFileSync(join(DEMO, 'config.json'), 'utf8')));
    for (const bad of ['golden.safetensors', 'README.md', '..%2Fconfig.json', '%2e%2e/package.json', 'LICENSE', '']) {
      const r = await fetch(base + bad);
      assert.equal(r.status, 404, bad);
      await r.arrayBuffer();
    }
    const post = await fetch(base + 'config.json', { method: 'POST' });
    assert.equal(post.status, 405);
    await post.arrayBuffer();
  });

  it('the HTTP tensor source reads the same tensors as the file reader', async () => {
    const folder = new HttpModelFolder(srv.url + '/api/model/files/');
    const ck = await folder.checkpoint();
    const local = openSafetensors(join(DEMO, 'model.safetensors'));
    try {
      assert.deepEqual(ck.tensors.names(), local.names());
      for (const name of local.names()) {
        const a = ck.tensors.info(name), b = local.info(name);
        assert.deepEqual([a.dtype, a.shape, a.offset, a.byteLength], [b.dtype, b.shape, b.offset, b.byteLength], name);
        assert.deepEqual(ck.tensors.read(name), local.read(name), name);
      }
      assert.equal((ck.config as { architectures: string[] }).architectures[0], 'DeepseekV3ForCausalLM');
      assert.equal(await folder.json('generation_config.json', true) !== undefined, existsSync(join(DEMO, 'generation_config.json')));
    } finally {
      local.close();
      ck.tensors.close();
    }
  });

  it('asks for the API key when the server has one', async () => {
    const keyed = await startServer({ model: DEMO, port: 0, device: 'cpu', maxContext: 256, webRoot: null, apiKey: 'k1' });
    try {
      const r = await fetch(keyed.url + '/api/model/files/config.json');
      assert.equal(r.status, 401);
      await r.arrayBuffer();
      const ok = await fetch(keyed.url + '/api/model/files/config.json', { headers: { Authorization: 'Bearer k1' } });
      assert.equal(ok.status, 200);
      await ok.arrayBuffer();
    } finally {
      await keyed.close();
    }
  });
});

describe('the demo model in a browser tab on WebGPU', () => {
  let srv: RunningServer;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  /** Why the tab cannot run WebGPU here (set in before), or false. */
  let noAdapter: string | false = false;
  const pageErrors: string[] = [];

  before(async () => {
    if (noBrowser) return;
    assert.ok(playgroundBuilt(), 'the playground is not built into dist/web: run `npm run build`');
    assert.ok(existsSync(join(repoRoot, 'dist/web/inbrowser.js')), 'dist/web/inbrowser.js is missing: run `npm run build`');
    srv = await startServer({ model: DEMO, port: 0, device: 'cpu', maxContext: 1024 });
    const { chromium } = await import('playwright-core');
    profile = mkdtempSync(join(tmpdir(), 'shoal-chromium-'));
    context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, timeout: 20_000, viewport: { width: 1280, height: 860 } });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
    // Nothing but the server: any other request fails the test.
    const foreign: string[] = [];
    await context.route('**/*', (route) => {
      const u = route.request().url();
      if (u.startsWith(srv.url + '/')) return route.continue();
      foreign.push(u);
      return route.abort();
    });
    (globalThis as { __foreign?: string[] }).__foreign = foreign;
    await page.goto(srv.url + '/', { waitUntil: 'load' });
    await page.waitForSelector('body.ready');
    const probe = await page.evaluate(async () => {
      const gpu = (navigator as unknown as { gpu?: { requestAdapter(): Promise<{ info?: { architecture?: string; vendor?: string } } | null> } }).gpu;
      if (!gpu) return { why: 'navigator.gpu is missing' };
      const a = await gpu.requestAdapter();
      if (!a) return { why: 'navigator.gpu.requestAdapter() gave no adapter' };
      return { adapter: `${a.info?.vendor ?? '?'} ${a.info?.architecture ?? '?'}` };
    });
    if (probe.why) {
      noAdapter = `headless Chromium here offers no WebGPU adapter (${probe.why}); see docs/backends.md, "In the browser"`;
      process.stderr.write(`browser-webgpu-e2e: skipped: ${noAdapter}\n`);
    } else process.stderr.write(`browser-webgpu-e2e: adapter ${probe.adapter}\n`);
  });

  after(async () => {
    try {
      await context?.close();
      await srv?.close();
    } finally {
      if (profile) rmSync(profile, { recursive: true, force: true });
    }
  });

  it('greedy token ids in the tab equal the Node engine on the CPU backend', { skip: noBrowser, timeout: 120_000 }, async (t) => {
    if (noAdapter) return t.skip(noAdapter);
    const engine = await Engine.load(DEMO, { backend: new CpuBackend(), maxContext: 1024 });
    let want: number[], prompt: number[];
    try {
      prompt = engine.tokenizer.encode(PROMPT);
      const gen = engine.generate(prompt, { sampling: { temperature: 0 }, maxTokens: N, ignoreEos: true });
      let r = await gen.next();
      while (!r.done) r = await gen.next();
      want = r.value.tokenIds;
    } finally {
      await engine.close();
    }
    assert.equal(want.length, N);

    const got = await page.evaluate(async ({ prompt, text, n }) => {
      const m = (await import('/inbrowser.js' as string)) as {
        loadInTab(): Promise<{
          backend: { info: { name: string } };
          tokenizer: { encode(t: string): number[] };
          generate(p: number[], o: object): AsyncGenerator<{ id: number }, { tokenIds: number[]; prefillMs: number; decodeMs: number }>;
          close(): void;
        }>;
      };
      const tab = await m.loadInTab();
      try {
        const gen = tab.generate(prompt, { sampling: { temperature: 0 }, maxTokens: n, ignoreEos: true });
        let r = await gen.next();
        while (!r.done) r = await gen.next();
        return { ids: r.value.tokenIds, encoded: tab.tokenizer.encode(text), backend: tab.backend.info.name, prefillMs: r.value.prefillMs, decodeMs: r.value.decodeMs };
      } finally {
        tab.close();
      }
    }, { prompt, text: PROMPT, n: N });
    process.stderr.write(`browser-webgpu-e2e: ${N} tokens on ${got.backend}: first token ${got.prefillMs.toFixed(0)} ms, then ${(got.decodeMs / (N - 1)).toFixed(0)} ms/token; ids ${got.ids.join(' ')}\n`);
    assert.match(got.backend, /^webgpu/);
    assert.deepEqual(got.encoded, prompt, 'the tab tokenizes the prompt as Node does');
    assert.deepEqual(got.ids, want);
    assert.deepEqual((globalThis as { __foreign?: string[] }).__foreign, [], 'no request leaves the server');
    assert.deepEqual(pageErrors, []);
  });

  it('the playground toggle generates the same reply in the tab as the server', { skip: noBrowser, timeout: 120_000 }, async (t) => {
    if (noAdapter) return t.skip(noAdapter);
    const msg = 'Tell me a story';
    const res = await fetch(srv.url + '/v1/chat/completions', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: msg }], temperature: 0, max_tokens: 20 }),
    });
    const server = ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content;
    assert.ok(server.length > 0);

    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector('body.ready');
    await page.check('#in-tab');
    await page.waitForFunction(() => document.querySelector('#in-tab-status')?.getAttribute('data-state') === 'ready', undefined, { timeout: 60_000 });
    assert.match((await page.textContent('#in-tab-status')) ?? '', /Ready: generating in this tab on webgpu/);
    await page.fill('input[name="temperature"]', '0');
    await page.fill('input[name="max_tokens"]', '20');
    await page.fill('#input', msg);
    await page.click('#send');
    await page.waitForSelector('.msg.assistant.streaming', { state: 'detached', timeout: 60_000 });
    const reply = (await page.textContent('.msg.assistant .answer')) ?? '';
    const figures = (await page.textContent('#reply-stats')) ?? '';
    assert.match(figures, /[\d.]+ tok\/s/);
    assert.match(figures, /in this tab/);
    assert.equal(reply, server);
    assert.deepEqual((globalThis as { __foreign?: string[] }).__foreign, []);
    assert.deepEqual(pageErrors, []);
  });
});
