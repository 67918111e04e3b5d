/**
 * The web playground end to end: a real server on the demo model, Debian's Chromium driven by
 * playwright-core (never a downloaded browser). Types a message, watches the reply stream in,
 * waits for the expert heatmap, checks the server panel and the Plan tab, and saves a
 * screenshot to test-output/playground.png. Skipped when /usr/bin/chromium is missing
 * (CI installs it: apt-get install -y chromium).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';
import { startServer, type RunningServer, type ServingScheduler } from '../src/server/server.js';
import type { RequestEvent, RequestOptions } from '../src/engine/scheduler-types.js';
import { playgroundBuilt } from '../src/server/static.js';
import { repoRoot } from './helpers.js';

const CHROMIUM = process.env['SHOAL_CHROMIUM'] ?? '/usr/bin/chromium';
const haveBrowser = existsSync(CHROMIUM);
const skip = haveBrowser ? false : `${CHROMIUM} is missing (install Debian's chromium: apt-get install -y chromium)`;
if (skip) process.stderr.write(`playground-e2e: skipped: ${skip}\n`);

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

/** A stand-in scheduler that "generates" a scripted text (the demo model never writes <think>). */
class ScriptedScheduler implements ServingScheduler {
  readonly maxContext = 1024;
  constructor(private readonly script: string) {}
  submit(req: RequestOptions): AsyncIterable<RequestEvent> {
    const script = this.script;
    return (async function* () {
      let n = 0;
      for (let i = 0; i < script.length; i += 4) {
        n++;
        yield { type: 'token', token: { id: 5 }, text: script.slice(i, i + 4) } as RequestEvent;
        await new Promise((r) => setTimeout(r, 2));
      }
      yield {
        type: 'done', finishReason: 'stop', text: '', ttftMs: 1, totalMs: 2, draftTokens: 0, acceptedTokens: 0,
        usage: { promptTokens: req.prompt.length, completionTokens: n, cachedTokens: 0 },
        // Each token picks 4 of 16 experts per layer: experts 0-3 in layer 1, 2-5 in layer 2.
        routing: req.collectRouting ? { layers: [1, 2], counts: [1, 2].map((l) => Array.from({ length: 16 }, (_, e) => (e >= 2 * (l - 1) && e < 2 * (l - 1) + 4 ? n : 0))) } : undefined,
      } as RequestEvent;
    })();
  }
  stats() {
    return { running: 0, waiting: 0, kvBlocksTotal: 1, kvBlocksUsed: 0, kvBlocksCached: 0, prefixQueryTokens: 0, prefixHitTokens: 0, preemptions: 0, promptTokens: 0, generationTokens: 0, draftTokens: 0, acceptedTokens: 0 };
  }
  async shutdown() {}
}

describe('web playground in Chromium', () => {
  let srv: RunningServer;
  let context: BrowserContext;
  let page: Page;
  let profile: string;
  const pageErrors: string[] = [];

  before(async () => {
    if (skip) return;
    assert.ok(playgroundBuilt(), 'the playground is not built into dist/web: run `npm run build`');
    srv = await startServer({ model: join(repoRoot, 'models/demo'), port: 0, device: 'cpu', maxContext: 1024 });
    const { chromium } = await import('playwright-core');
    profile = mkdtempSync(join(tmpdir(), 'shoal-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1280, height: 860 },
      timeout: 20_000,
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on('pageerror', (e) => pageErrors.push(e.message));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
  });

  after(async () => {
    try {
      await context?.close();
      await srv?.close();
    } finally {
      if (profile) rmSync(profile, { recursive: true, force: true });
    }
  });

  it('streams a reply, shows its speed, the expert heatmap and the server panel', { skip, timeout: 30_000 }, async () => {
    await page.goto(srv.url + '/', { waitUntil: 'load' });
    await page.waitForSelector('body.ready');
    // The server panel fills in from /api/stats.
    await page.waitForFunction(() => document.querySelector('#model-name')?.textContent === 'demo');
    await page.waitForFunction(() => (document.querySelector('#server-stats')?.textContent ?? '').includes('running'));
    const modelInfo = await page.textContent('#model-info');
    assert.match(modelInfo ?? '', /DeepseekV3ForCausalLM/);
    assert.match(modelInfo ?? '', /16 routed, 4 per token/);

    await page.fill('input[name="temperature"]', '0');
    await page.fill('input[name="max_tokens"]', '120');
    await page.fill('#input', 'Tell me a story');
    await page.click('#send');

    // The reply grows while it streams.
    const answer = '.msg.assistant .answer';
    await page.waitForFunction((sel) => (document.querySelector(sel)?.textContent ?? '').length > 0, answer);
    const early = (await page.textContent(answer)) ?? '';
    await page.waitForSelector('.msg.assistant.streaming', { state: 'detached', timeout: 20_000 });
    const reply = (await page.textContent(answer)) ?? '';
    assert.ok(reply.length >= 40, `a reply of some length: ${JSON.stringify(reply)}`);
    assert.ok(reply.length > early.length && reply.startsWith(early), `grew from ${early.length} to ${reply.length} characters`);
    const figures = (await page.textContent('#reply-stats')) ?? '';
    assert.match(figures, /time to first token \d+ ms/);
    assert.match(figures, /[\d.]+ tok\/s/);
    assert.match(figures, /\d+ tokens/);

    // The heatmap of the last reply: 3 MoE layers x 16 experts, counts summing to tokens x 4 per layer.
    await page.waitForSelector('#heatmap .heat-cell');
    const cells = await page.$$eval('#heatmap .heat-cell', (els) => els.map((e) => ({
      layer: Number(e.getAttribute('data-layer')), count: Number(e.getAttribute('data-count')), title: e.getAttribute('title') ?? '',
    })));
    assert.equal(cells.length, 3 * 16);
    const nonZero = cells.filter((c) => c.count > 0);
    assert.ok(nonZero.length > 3, `cells with counts: ${nonZero.length}`);
    assert.match(nonZero[0]!.title, /^layer \d+, expert \d+: \d+ of \d+ tokens/);
    for (const layer of [1, 2, 3]) {
      const sum = cells.filter((c) => c.layer === layer).reduce((a, c) => a + c.count, 0);
      assert.ok(sum > 0 && sum % 4 === 0, `layer ${layer}: ${sum}`);
    }
    await page.hover('#heatmap .heat-cell[data-count]:not([data-count="0"])');
    assert.match((await page.textContent('.heat-readout')) ?? '', /^layer \d+, expert \d+/);

    // The server panel caught up with the request.
    await page.waitForFunction(() => /\d+ prompt, [1-9][\d,]* generated/.test(document.querySelector('#server-stats')?.textContent ?? ''), undefined, { timeout: 5000 });

    mkdirSync(join(repoRoot, 'test-output'), { recursive: true });
    await page.screenshot({ path: join(repoRoot, 'test-output/playground.png'), fullPage: true });
  });

  it('Stop aborts the reply and the server cancels it', { skip, timeout: 30_000 }, async () => {
    await page.fill('input[name="max_tokens"]', '');
    await page.fill('#input', 'And God said');
    await page.click('#send');
    await page.waitForFunction(() => (document.querySelectorAll('.msg.assistant .answer')[1]?.textContent ?? '').length > 0);
    await page.click('#stop');
    await page.waitForSelector('.msg.assistant.streaming', { state: 'detached', timeout: 10_000 });
    assert.match((await page.textContent('#reply-stats')) ?? '', /finish: stopped/);
    assert.ok(await page.isEnabled('#send'));
    // Nothing keeps running on the server.
    const deadline = Date.now() + 5000;
    while (srv.scheduler!.stats().running > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.equal(srv.scheduler!.stats().running, 0);
  });

  it('Plan tab: runs the planner and shows the table and the plot', { skip, timeout: 30_000 }, async () => {
    await page.click('#tab-plan');
    await page.waitForSelector('#plan-form select[name="model"] option[value="deepseek-r1"]', { state: 'attached' });
    await page.selectOption('select[name="model"]', 'deepseek-r1');
    await page.selectOption('select[name="hardware"]', 'h100');
    await page.fill('input[name="slo_tpot_ms"]', '50');
    await page.click('#plan-run');
    await page.waitForSelector('.plan-table tbody tr');
    assert.ok((await page.$$('.plan-table tbody tr')).length >= 1);
    assert.match((await page.textContent('.plan-summary')) ?? '', /deepseek-r1 on h100/);
    await page.waitForFunction(() => {
      const img = document.querySelector<HTMLImageElement>('img.plan-plot');
      return Boolean(img && img.complete && img.naturalWidth > 0);
    });
    mkdirSync(join(repoRoot, 'test-output'), { recursive: true });
    await page.screenshot({ path: join(repoRoot, 'test-output/playground-plan.png'), fullPage: true });
    // A bad value is reported, not thrown.
    await page.fill('input[name="prompt_tokens"]', '99999999');
    await page.click('#plan-run');
    await page.waitForSelector('.error-box');
    assert.match((await page.textContent('.error-box')) ?? '', /prompt_tokens/);
    assert.deepEqual(pageErrors.filter((e) => !/status of 400/.test(e)), [], 'no script errors in the page');
  });

  it('folds reasoning apart from the answer', { skip, timeout: 15_000 }, async () => {
    const scripted = await startServer({
      model: join(repoRoot, 'models/demo'), port: 0, device: 'cpu',
      createScheduler: () => new ScriptedScheduler('<think>\nThe user wants a short story.\n</think>\n\nOnce upon a time there was a shoal of fish.'),
    });
    const p = await context.newPage();
    try {
      await p.goto(scripted.url + '/');
      await p.waitForSelector('body.ready');
      await p.fill('#input', 'A story, please');
      await p.press('#input', 'Enter');
      await p.waitForSelector('.msg.assistant.streaming', { state: 'detached' });
      assert.equal(await p.textContent('.msg.assistant .answer'), 'Once upon a time there was a shoal of fish.');
      assert.equal(await p.textContent('.msg.assistant details.reasoning .reasoning-text'), 'The user wants a short story.');
      assert.equal(await p.getAttribute('.msg.assistant details.reasoning', 'open'), null, 'folded');
      assert.match((await p.textContent('.msg.assistant details.reasoning summary')) ?? '', /^Reasoning/);
      assert.equal(await p.isVisible('.reasoning-text'), false);
      await p.click('.msg.assistant details.reasoning summary');
      assert.equal(await p.isVisible('.reasoning-text'), true);
      await p.waitForSelector('#heatmap .heat-cell');
      assert.equal((await p.$$('#heatmap .heat-cell')).length, 2 * 16);
      assert.match((await p.textContent('.heat-caption')) ?? '', /^\d+ generated tokens × 4 experts each/);
      mkdirSync(join(repoRoot, 'test-output'), { recursive: true });
      await p.screenshot({ path: join(repoRoot, 'test-output/playground-reasoning.png') });
    } finally {
      await p.close();
      await scripted.close();
    }
  });

  it('works in a narrow window', { skip, timeout: 15_000 }, async () => {
    await page.setViewportSize({ width: 390, height: 800 });
    await page.click('#tab-chat');
    await page.waitForSelector('#transcript', { state: 'visible' });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 1, `no sideways scrolling: ${overflow}px`);
    await page.screenshot({ path: join(repoRoot, 'test-output/playground-narrow.png'), fullPage: true });
  });
});
