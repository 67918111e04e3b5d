/**
 * `shoal plan`: hardware catalog, model analysis, performance model, search, CLI, and the
 * validation against published deployments (calibrated on one, the others held out).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { UserError } from '../src/errors.js';
import { CHIPS, getChip, localChip, probeMemoryBandwidth, rankSpec } from '../src/planner/hardware.js';
import {
  analyzeModel, attentionFlopsPerToken, kvBytesPerToken, kvReadBytesPerToken, MODEL_CATALOG, parseModelConfig, resolveModel,
} from '../src/planner/models.js';
import {
  CALIBRATION_DEPLOYMENT, calibrate, decodeAtSlo, decodePerf, DEFAULT_EFFICIENCY, makeScenario, maxBatchByMemory, MEASUREMENTS,
  prefillPerf, tokensPerStep, validate,
} from '../src/planner/perf.js';
import { renderPlot } from '../src/planner/plot.js';
import { searchPlans } from '../src/planner/search.js';
import { registerPlan } from '../src/cli/plan.js';

const near = (actual: number, expected: number, rel: number, what: string) =>
  assert.ok(Math.abs(actual - expected) <= rel * Math.abs(expected), `${what}: ${actual} not within ${rel * 100}% of ${expected}`);

describe('hardware catalog', () => {
  it('has every chip the planner promises, with sourced figures', () => {
    const names = CHIPS.map((c) => c.name);
    for (const n of ['ascend-910b', 'ascend-910c', 'ascend-950pr', 'ascend-950dt', 'h20', 'h800', 'h100', 'h200', 'b200', 'mi300x']) {
      assert.ok(names.includes(n), `missing ${n}`);
    }
    for (const c of CHIPS) {
      const figs = [c.memoryGB, c.memoryBandwidthGBs, c.scaleUpGBs, c.scaleUpDomain, c.scaleOutGBs, c.powerW, c.pricePerHour, ...Object.values(c.tflops)];
      for (const f of figs) {
        assert.ok(f && f.value >= 0 && Number.isFinite(f.value), `${c.name}: bad figure`);
        assert.ok(f.source.length > 5, `${c.name}: figure without a source`);
      }
      assert.ok(c.tflops.bf16 || c.tflops.int8, `${c.name}: no tensor rate`);
      // Prices are never vendor facts: each must say it is an estimate unless a publication fixed it.
      if (!/DeepSeek|LMSYS/.test(c.pricePerHour.source)) assert.ok(c.pricePerHour.note, `${c.name}: price not marked as estimate`);
      // Announced chips must say so on their headline figures.
      if (c.status === 'announced') assert.match(c.tflops.fp8?.note ?? '', /announce/);
    }
  });

  it('knows precision support and resolves aliases', () => {
    assert.equal(getChip('910C').name, 'ascend-910c');
    assert.equal(getChip('H100-SXM').name, 'h100');
    assert.equal(getChip('ascend-910c').tflops.fp8, undefined);
    assert.ok(getChip('b200').tflops.fp4);
    assert.throws(() => getChip('tpu-v5'), (e: unknown) => e instanceof UserError && /unknown hardware "tpu-v5"/.test((e as Error).message));
  });

  it('splits a two-die 910C into two ranks', () => {
    const r = rankSpec(getChip('ascend-910c'));
    assert.equal(r.memoryBytes, 64e9);
    assert.equal(r.memoryBandwidth, 1.6e12);
    assert.equal(r.domainRanks, 768);
    assert.equal(r.peakTflops.int8, 752);
  });

  it('measures the local machine', () => {
    const p = probeMemoryBandwidth(8, 0.02);
    assert.ok(p.gbPerS > 0.1 && p.gbPerS < 2000, `bandwidth ${p.gbPerS}`);
    const l = localChip();
    assert.equal(l.status, 'measured');
    assert.ok(l.memoryBandwidthGBs.value > 0);
    assert.ok(l.memoryGB.value > 0);
    assert.match(l.description, /CPU cores/);
  });
});

describe('model analysis', () => {
  it('counts DeepSeek-V3 parameters (671B total, ~37B active, 14B MTP)', () => {
    const an = analyzeModel(resolveModel('deepseek-v3'));
    near(an.params.total, 671e9, 0.005, 'total');
    near(an.params.active, 37e9, 0.03, 'active');
    near(an.params.mtp, 11.6e9, 0.05, 'MTP module (excl. shared embedding/head)');
    assert.equal(an.moeLayers, 58);
    assert.equal(an.denseLayers, 3);
  });

  it('counts the rest of the catalog against published sizes', () => {
    const expect: Record<string, [number, number]> = {
      'deepseek-v2': [236e9, 21e9],
      'deepseek-v2-lite': [15.7e9, 2.4e9],
      'kimi-k2': [1.03e12, 32e9],
      moonlight: [16e9, 2.7e9],
      'r1-distill-llama-8b': [8.03e9, 0],
      'r1-distill-qwen-7b': [7.6e9, 0],
      'r1-distill-qwen-32b': [32.8e9, 0],
      'r1-distill-llama-70b': [70.6e9, 0],
    };
    for (const [name, [total, active]] of Object.entries(expect)) {
      const an = analyzeModel(resolveModel(name));
      near(an.params.total, total, 0.03, `${name} total`);
      if (active) near(an.params.active, active, 0.12, `${name} active`);
    }
    assert.equal(MODEL_CATALOG.length, 13);
  });

  it('computes KV bytes per token: MLA latent vs GQA heads', () => {
    assert.equal(kvBytesPerToken(resolveModel('deepseek-r1')), (512 + 64) * 61 * 2);
    assert.equal(kvBytesPerToken(resolveModel('r1-distill-llama-8b')), 2 * 8 * 128 * 32 * 2);
    assert.equal(kvBytesPerToken(resolveModel('r1-distill-llama-8b'), 'fp8'), 2 * 8 * 128 * 32);
  });

  it('counts attention FLOPs by phase and caps DSA at index_topk', () => {
    const v3 = resolveModel('deepseek-v3');
    assert.equal(attentionFlopsPerToken(v3, 1000, 'prefill'), 2 * 128 * 1000 * (128 + 64 + 128) * 61);
    assert.equal(attentionFlopsPerToken(v3, 1000, 'decode'), 2 * 128 * 1000 * (512 + 64 + 512) * 61);
    const v32 = resolveModel('deepseek-v3.2');
    const long = attentionFlopsPerToken(v32, 64000, 'decode');
    assert.ok(long < attentionFlopsPerToken(v3, 64000, 'decode') / 10, 'sparse attention must be far cheaper at 64k');
    assert.ok(kvReadBytesPerToken(v32, 64000) < kvReadBytesPerToken(v3, 64000) / 5);
  });

  it('reads config.json files and names missing fields', (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-plan-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const good = join(dir, 'config.json');
    writeFileSync(good, JSON.stringify(MODEL_CATALOG.find((m) => m.name === 'deepseek-v2-lite')!.config));
    assert.equal(analyzeModel(resolveModel(dir)).params.total, analyzeModel(resolveModel('deepseek-v2-lite')).params.total);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, JSON.stringify({ hidden_size: 4096, num_hidden_layers: 32, num_attention_heads: 32 }));
    assert.throws(() => resolveModel(bad), (e: unknown) => e instanceof UserError && /missing "vocab_size"/.test((e as Error).message) && (e as Error).message.includes(bad));
    writeFileSync(bad, '{ not json');
    assert.throws(() => resolveModel(bad), (e: unknown) => e instanceof UserError && /not valid JSON/.test((e as Error).message));
    assert.throws(() => parseModelConfig({ ...MODEL_CATALOG[0].config, hidden_size: 'big' }, 'x'), /hidden_size/);
    assert.throws(() => resolveModel('gpt-17'), (e: unknown) => e instanceof UserError && /unknown model/.test((e as Error).message));
  });
});

describe('performance model', () => {
  const r1 = analyzeModel(resolveModel('deepseek-r1'));

  it('makes prefill compute-bound and decode TPOT grow with batch', () => {
    const sc = makeScenario(r1, getChip('h100'), { precision: 'fp8', promptTokens: 2000 });
    const plan = { tp: 1, ep: 32, pp: 1 };
    const base = prefillPerf(sc, plan);
    assert.equal(base.breakdown.gemmBound, 'compute');
    const faster = prefillPerf({ ...sc, eff: { ...sc.eff, mfu: sc.eff.mfu * 2 } }, plan);
    assert.ok(faster.tokensPerSecPerChip > base.tokensPerSecPerChip * 1.3);
    let last = 0;
    for (const b of [1, 8, 32, 128, 256]) {
      const d = decodePerf(sc, { tp: 1, ep: 72, pp: 1 }, b);
      assert.ok(d.tpot > last, `TPOT must grow with batch (b=${b})`);
      last = d.tpot;
    }
    // At batch 1 decode is bandwidth/latency bound: GEMMs limited by weight reads.
    assert.equal(decodePerf(sc, { tp: 1, ep: 72, pp: 1 }, 1).breakdown.gemmBound, 'memory');
  });

  it('limits the batch by KV-cache memory and meets the SLO it is given', () => {
    const sc = makeScenario(r1, getChip('h800'), { precision: 'fp8', promptTokens: 4096, outputTokens: 1024 });
    const plan = { tp: 1, ep: 144, pp: 1 };
    const cap = maxBatchByMemory(sc, plan);
    assert.ok(cap > 50 && cap < 400, `cap ${cap}`);
    const d = decodeAtSlo(sc, plan, 0.05)!;
    assert.ok(d.tpot <= 0.05 && d.batchPerGroup <= cap);
    assert.ok(decodePerf(sc, plan, d.batchPerGroup + 1).tpot > 0.05 || d.batchPerGroup === cap);
    assert.equal(decodeAtSlo(sc, plan, 0.001), null);
    assert.equal(maxBatchByMemory(sc, { tp: 1, ep: 4, pp: 1 }), 0, 'R1 does not fit on 4 H800');
  });

  it('credits MTP with 1 + a + a^2 ... tokens per step', () => {
    assert.equal(tokensPerStep(null), 1);
    assert.equal(tokensPerStep({ draftTokens: 1, acceptance: 0.85 }), 1.85);
    near(tokensPerStep({ draftTokens: 2, acceptance: 0.5 }), 1.75, 1e-12, 'two drafts');
  });

  it('sends EP traffic over the fabric the experts sit behind', () => {
    const h = decodePerf(makeScenario(r1, getChip('h800'), { precision: 'fp8' }), { tp: 1, ep: 144, pp: 1 }, 64);
    const c = decodePerf(makeScenario(r1, getChip('ascend-910c'), { precision: 'int8' }), { tp: 1, ep: 144, pp: 1 }, 64);
    // 50 GB/s of InfiniBand per GPU vs 196 GB/s of UB per die, plus RDMA vs. UB latencies.
    assert.ok(h.breakdown.epComm > 3 * c.breakdown.epComm, 'IB-bound H800 EP144 must pay far more for dispatch than UB-connected 910C');
  });
});

describe('validation against published deployments', () => {
  it('calibrates on one deployment only and reproduces the shipped factors', () => {
    const cal = MEASUREMENTS.filter((m) => m.deployment === CALIBRATION_DEPLOYMENT);
    assert.equal(new Set(cal.map((m) => m.deployment)).size, 1);
    assert.equal(cal.length, 2);
    const eff = calibrate();
    for (const k of ['mfu', 'decodeMfu', 'overlap'] as const) near(eff[k], DEFAULT_EFFICIENCY[k], 0.01, k);
    for (const k of ['memoryBandwidth', 'link', 'layerOverhead', 'memoryUsable'] as const) assert.equal(eff[k], DEFAULT_EFFICIENCY[k]);
    for (const v of validate(eff).filter((v) => !v.heldOut)) near(v.predicted, v.measurement.published, 0.005, v.measurement.id);
  });

  it('predicts every held-out deployment within 35%', () => {
    const held = validate(DEFAULT_EFFICIENCY).filter((v) => v.heldOut);
    assert.deepEqual(held.map((v) => v.measurement.id).sort(), ['cloudmatrix-decode', 'cloudmatrix-prefill', 'deepseek-decode', 'deepseek-prefill']);
    for (const v of held) {
      assert.ok(Math.abs(v.error) <= 0.35, `${v.measurement.id}: predicted ${v.predicted.toFixed(0)} vs published ${v.measurement.published} (${(v.error * 100).toFixed(1)}%)`);
    }
  });

  it('is able to fail: wrong physics misses the held-out deployments', () => {
    // The 35% bound has teeth: a model that ignored communication, or a prefill MFU off by 2x,
    // misses at least one held-out deployment.
    const noComm = { ...DEFAULT_EFFICIENCY, link: 1e6, latencyScaleOut: 0, latencyScaleUp: 0 };
    const errs = validate(noComm).filter((v) => v.heldOut).map((v) => Math.abs(v.error));
    assert.ok(Math.max(...errs) > 0.35, 'ignoring communication should break at least one prediction');
    const halfMfu = validate({ ...DEFAULT_EFFICIENCY, mfu: DEFAULT_EFFICIENCY.mfu / 2 }).filter((v) => v.heldOut && v.measurement.phase === 'prefill');
    assert.ok(halfMfu.some((v) => Math.abs(v.error) > 0.35));
  });
});

describe('search', () => {
  const r1 = analyzeModel(resolveModel('deepseek-r1'));

  it('finds a disaggregated deployment for R1 on H800 and honours a chip budget', () => {
    const res = searchPlans({ model: r1, chip: getChip('h800'), promptTokens: 4096, outputTokens: 512, sloTpotMs: 50 });
    assert.equal(res.precision, 'fp8');
    assert.ok(res.best.tpotMs <= 50);
    assert.ok(res.best.decodeTokensPerSecPerChip > 500 && res.best.prefillTokensPerSecPerChip > 1000);
    const budget = searchPlans({ model: r1, chip: getChip('h200'), chips: 16, promptTokens: 4096, outputTokens: 512, sloTpotMs: 50 });
    for (const c of budget.candidates) assert.ok(c.chips <= 16);
    assert.equal(searchPlans({ model: r1, chip: getChip('ascend-910c'), promptTokens: 4096, outputTokens: 512, sloTpotMs: 50 }).precision, 'int8');
  });

  it('rejects impossible requests with one clear line', () => {
    const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof UserError && re.test((e as Error).message) && !(e as Error).message.includes('\n'));
    bad(() => searchPlans({ model: r1, chip: getChip('h100'), promptTokens: 4096, outputTokens: 512, sloTpotMs: 1 }), /no configuration .* TPOT of 1 ms/);
    bad(() => searchPlans({ model: r1, chip: getChip('h100'), chips: 4, promptTokens: 4096, outputTokens: 512, sloTpotMs: 50 }), /does not fit on 4x h100/);
    bad(() => searchPlans({ model: r1, chip: getChip('ascend-910c'), precision: 'fp8', promptTokens: 4096, outputTokens: 512, sloTpotMs: 50 }), /no FP8/);
  });

  it('draws an SVG with curves and bars', () => {
    const res = searchPlans({ model: analyzeModel(resolveModel('deepseek-v2-lite')), chip: getChip('h100'), promptTokens: 2048, outputTokens: 256, sloTpotMs: 40 });
    const svg = renderPlot(res);
    assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.ok((svg.match(/<path /g) ?? []).length >= 1);
    assert.match(svg, /Cost per million tokens/);
    assert.match(svg, /<\/svg>\n$/);
    assert.ok(!/NaN|Infinity/.test(svg));
  });
});

describe('shoal plan CLI', () => {
  async function run(args: string[]): Promise<string> {
    const program = new Command('shoal').exitOverride();
    registerPlan(program);
    for (const c of program.commands) c.exitOverride();
    let out = '';
    const write = process.stdout.write;
    process.stdout.write = ((chunk: string | Uint8Array) => {
      out += String(chunk);
      return true;
    }) as typeof process.stdout.write;
    try {
      await program.parseAsync(['node', 'shoal', 'plan', ...args]);
    } finally {
      process.stdout.write = write;
    }
    return out;
  }

  it('prints the best configuration as JSON', async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-plan-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const svg = join(dir, 'plan.svg');
    const out = await run(['--model', 'deepseek-r1', '--hardware', 'h100', '--chips', '96', '--prompt-tokens', '2000', '--output-tokens', '500', '--json', '--plot', svg]);
    const j = JSON.parse(out);
    for (const k of ['chips', 'parallelism', 'prefill_tokens_per_s_per_chip', 'decode_tokens_per_s_per_chip', 'tpot_ms', 'ttft_ms', 'usd_per_million_output_tokens']) {
      assert.ok(k in j.best, `best.${k}`);
    }
    assert.ok(j.best.chips <= 96 && j.best.tpot_ms <= 50 && j.best.usd_per_million_output_tokens > 0);
    assert.match(readFileSync(svg, 'utf8'), /<svg/);
  });

  it('prints a table, the catalog and the validation', async () => {
    const table = await run(['--model', 'deepseek-v2-lite', '--hardware', '910b', '--precision', 'int8']);
    assert.match(table, /prefill tok\/s\/chip/);
    assert.match(table, /\$\/M out/);
    const list = await run(['--list']);
    for (const n of ['ascend-950dt', 'mi300x', 'local', 'kimi-k2', 'r1-distill-llama-70b']) assert.ok(list.includes(n), n);
    const val = await run(['--validate']);
    assert.match(val, /deepseek-decode/);
    assert.match(val, /held out/);
  });

  it('turns bad input into UserError', async () => {
    await assert.rejects(run(['--model', 'deepseek-r1', '--hardware', 'nope']), UserError);
    await assert.rejects(run(['--model', 'nope', '--hardware', 'h100']), UserError);
    await assert.rejects(run(['--hardware', 'h100']), /missing --model/);
    await assert.rejects(run(['--model', 'deepseek-r1', '--hardware', 'h100', '--chips', 'x']), /--chips/);
    await assert.rejects(run(['--model', 'deepseek-r1', '--hardware', 'h100', '--slo-tpot-ms', '0.5']), /TPOT/);
    await assert.rejects(run(['--model', 'deepseek-r1', '--hardware', 'h100', '--precision', 'fp16']), /unknown precision/);
  });

  it('answers in well under a few seconds for catalog models and chips', async () => {
    const models = ['deepseek-v3', 'deepseek-v3.2', 'kimi-k2', 'deepseek-v2', 'moonlight', 'r1-distill-llama-70b', 'r1-distill-qwen-1.5b'];
    const chips = ['ascend-910b', 'ascend-910c', 'ascend-950pr', 'ascend-950dt', 'h20', 'h800', 'h100', 'h200', 'b200', 'mi300x'];
    for (const [i, m] of models.entries()) {
      for (const h of [chips[i % chips.length], chips[(i + 3) % chips.length]]) {
        const t0 = performance.now();
        const j = JSON.parse(await run(['--model', m, '--hardware', h, '--json']));
        const ms = performance.now() - t0;
        assert.ok(ms < 3000, `${m} on ${h} took ${ms.toFixed(0)} ms`);
        assert.ok(j.best.decode_tokens_per_s_per_chip > 0);
      }
    }
  });
});
