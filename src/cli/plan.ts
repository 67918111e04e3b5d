/**
 * `shoal plan`: how many of which chips serve a model, at what speed and cost.
 * Offline: a hardware catalog, a model analysis and a performance model (src/planner/).
 */
import { writeFileSync } from 'node:fs';
import type { Command } from 'commander';
import { UserError } from '../errors.js';
import { CHIPS, getChip, localChip, type ChipSpec, type Precision } from '../planner/hardware.js';
import { analyzeModel, describeModel, kvBytesPerToken, MODEL_CATALOG, resolveModel } from '../planner/models.js';
import {
  CALIBRATION_DEPLOYMENT, DEFAULT_EFFICIENCY, EXTRA_MEASUREMENTS, MEASUREMENTS, validate, type Validation,
} from '../planner/perf.js';
import { renderPlot } from '../planner/plot.js';
import { candidateJson, searchPlans, type SearchResult } from '../planner/search.js';

interface PlanOptions {
  model?: string;
  hardware?: string;
  chips?: string;
  precision?: string;
  promptTokens: string;
  outputTokens: string;
  sloTpotMs: string;
  sloTtftMs?: string;
  pricePerHour?: string;
  cacheHitRate: string;
  mtpAcceptance?: string;
  top: string;
  json?: boolean;
  plot?: string;
  list?: boolean;
  validate?: boolean;
}

function num(v: string | undefined, flag: string, opts: { int?: boolean; min?: number; max?: number; minExclusive?: boolean } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  const kind = opts.int ? 'an integer' : 'a number';
  if (v.trim() === '' || !Number.isFinite(n) || (opts.int && !Number.isInteger(n))) throw new UserError(`expected ${kind}, got "${v}"`, flag);
  if (opts.min !== undefined && (opts.minExclusive ? n <= opts.min : n < opts.min)) {
    throw new UserError(`must be ${opts.minExclusive ? 'greater than' : 'at least'} ${opts.min}, got ${v}`, flag);
  }
  if (opts.max !== undefined && n > opts.max) throw new UserError(`must be at most ${opts.max}, got ${v}`, flag);
  return n;
}

const PRECISIONS: Precision[] = ['bf16', 'fp8', 'int8', 'fp4'];

const f0 = (v: number) => Math.round(v).toLocaleString('en-US');
const fig = (v: number) => (v > 0 && v < 10 ? v.toPrecision(2) : f0(v));
const f1 = (v: number) => v.toFixed(1);
const money = (v: number) => (v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));

function table(head: string[], rows: string[][], right: boolean[]): string {
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (right[i] ? c.padStart(w[i]) : c.padEnd(w[i]))).join('  ').trimEnd();
  return [line(head), line(w.map((n) => '-'.repeat(n))), ...rows.map(line)].join('\n');
}


function chipRow(c: ChipSpec): string[] {
  const t = (p: Precision) => (c.tflops[p] ? fig(c.tflops[p]!.value) : '-');
  const est = [c.memoryBandwidthGBs, c.memoryGB, c.scaleUpGBs, ...Object.values(c.tflops)].some((f) => f?.note) ? '*' : '';
  return [
    c.name, c.vendor, c.status + est, t('bf16'), t('fp8'), t('int8'), t('fp4'), f0(c.memoryGB.value), fig(c.memoryBandwidthGBs.value),
    f0(c.scaleUpGBs.value), f0(c.scaleUpDomain.value), fig(c.scaleOutGBs.value), f0(c.powerW.value), c.pricePerHour.value.toFixed(2),
  ];
}

function printList(json: boolean): void {
  const chips = [...CHIPS, localChip()];
  const models = MODEL_CATALOG.map((m) => ({ m, an: analyzeModel(resolveModel(m.name)) }));
  if (json) {
    process.stdout.write(JSON.stringify({
      hardware: chips,
      models: models.map(({ m, an }) => ({
        name: m.name, hf_id: m.hfId, total_params: an.params.total, active_params: an.params.active,
        kv_bytes_per_token_bf16: kvBytesPerToken(an.spec), native_format: an.spec.nativeFormat,
      })),
    }, null, 2) + '\n');
    return;
  }
  const out: string[] = [];
  out.push('Hardware (dense peak per chip; links one direction; * = some figures are estimates or announcements, see src/planner/hardware-data.ts)');
  out.push(table(
    ['name', 'vendor', 'status', 'BF16 TF', 'FP8 TF', 'INT8 TOPS', 'FP4 TF', 'mem GB', 'mem GB/s', 'scale-up GB/s', 'domain', 'scale-out GB/s', 'W', '$/h'],
    chips.map(chipRow),
    [false, false, false, true, true, true, true, true, true, true, true, true, true, true],
  ));
  out.push('');
  out.push('Models (--model also takes a config.json path or a folder holding one)');
  out.push(table(['name', 'Hugging Face id', 'summary'], models.map(({ m, an }) => [m.name, m.hfId, describeModel(an)]), [false, false, false]));
  process.stdout.write(out.join('\n') + '\n');
}

function printValidation(json: boolean): void {
  const rows = [...validate(DEFAULT_EFFICIENCY), ...validate(DEFAULT_EFFICIENCY, EXTRA_MEASUREMENTS)];
  if (json) {
    process.stdout.write(JSON.stringify({
      calibrated_on: CALIBRATION_DEPLOYMENT,
      efficiency: DEFAULT_EFFICIENCY,
      predictions: rows.map((v: Validation) => ({
        id: v.measurement.id, label: v.measurement.label, published: v.measurement.published, predicted: v.predicted,
        error: v.error, unit: v.measurement.unit, held_out: v.heldOut, in_test: MEASUREMENTS.includes(v.measurement),
      })),
    }, null, 2) + '\n');
    return;
  }
  const body = table(
    ['id', 'published', 'predicted', 'error', 'unit', 'role'],
    rows.map((v) => [
      v.measurement.id, f0(v.measurement.published), f0(v.predicted), `${v.error >= 0 ? '+' : ''}${(v.error * 100).toFixed(1)}%`, v.measurement.unit,
      !v.heldOut ? 'calibration' : MEASUREMENTS.includes(v.measurement) ? 'held out' : 'held out (extra)',
    ]),
    [false, true, true, true, false, false],
  );
  process.stdout.write(`Efficiency factors calibrated on ${CALIBRATION_DEPLOYMENT} only (docs/planner.md):\n` +
    `  mfu ${DEFAULT_EFFICIENCY.mfu}, decodeMfu ${DEFAULT_EFFICIENCY.decodeMfu}, overlap ${DEFAULT_EFFICIENCY.overlap}; fixed: memory bw ${DEFAULT_EFFICIENCY.memoryBandwidth}, link ${DEFAULT_EFFICIENCY.link}, layer overhead ${DEFAULT_EFFICIENCY.layerOverhead * 1e6} us\n\n${body}\n`);
}

function printResult(res: SearchResult): void {
  const an = res.scenario.model;
  const r = res.request;
  const mtp = res.scenario.mtp ? `, MTP ${Math.round(res.scenario.mtp.acceptance * 100)}% acceptance` : '';
  const out: string[] = [];
  out.push(`${an.spec.name} on ${res.chip.name} (${res.precision.toUpperCase()} weights, BF16 KV): prompt ${r.promptTokens} + output ${r.outputTokens} tokens, TPOT <= ${r.sloTpotMs} ms${mtp}` +
    (r.chips ? `, at most ${r.chips} chips` : ''));
  out.push(`model: ${describeModel(an)}`);
  out.push(`chip:  ${res.chip.description}; $${res.chip.pricePerHour.value.toFixed(2)}/chip-hour, ${res.chip.powerW.value} W`);
  out.push('');
  const rows = res.candidates.map((c, i) => [
    String(i + 1), f0(c.chips), c.parallelismText, f0(c.prefillTokensPerSecPerChip), f0(c.decodeTokensPerSecPerChip), f1(c.tpotMs), f0(c.ttftMs),
    f0(c.users), money(c.usdPerMillionInput), money(c.usdPerMillionOutput), c.joulesPerOutputToken.toFixed(2),
  ]);
  out.push(table(
    ['#', 'chips', 'parallelism', 'prefill tok/s/chip', 'decode tok/s/chip', 'TPOT ms', 'TTFT ms', 'users', '$/M in', '$/M out', 'J/tok out'],
    rows,
    [true, true, false, true, true, true, true, true, true, true, true],
  ));
  out.push('');
  out.push(`Ranked by ${r.chips ? 'requests/s within the chip budget' : 'cost per request'}; costs assume full utilisation at the listed price. ` +
    `Efficiency factors calibrated on one published deployment (${CALIBRATION_DEPLOYMENT}); see docs/planner.md.`);
  process.stdout.write(out.join('\n') + '\n');
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('estimate how many of which chips serve a model, at what speed and cost (offline model of hardware and serving)')
    .option('--model <name|config>', 'catalog model name, HF id, or path to a config.json (or its folder)')
    .option('--hardware <name>', 'chip from the catalog (see --list), or "local" for this machine')
    .option('--chips <n>', 'total chips available (default: explore sizes)')
    .option('--precision <p>', `weight/GEMM precision: ${PRECISIONS.join('|')} (default: the checkpoint format if the chip runs it, else int8)`)
    .option('--prompt-tokens <n>', 'prompt length', '4096')
    .option('--output-tokens <n>', 'output length', '512')
    .option('--slo-tpot-ms <ms>', 'time-per-output-token target', '50')
    .option('--slo-ttft-ms <ms>', 'time-to-first-token target (optional)')
    .option('--price-per-hour <usd>', 'override the chip rental price, USD per chip-hour')
    .option('--cache-hit-rate <f>', 'fraction of prompt tokens served from a prefix cache', '0')
    .option('--mtp-acceptance <p>', 'enable one MTP draft token with this acceptance rate (models with an MTP module)')
    .option('--top <n>', 'configurations to show', '8')
    .option('--json', 'print JSON (best configuration in "best")')
    .option('--plot <file.svg>', 'write an SVG: decode throughput vs TPOT, and cost per million tokens')
    .option('--list', 'list catalog chips and models')
    .option('--validate', 'print the model\'s predictions next to the published deployments')
    .action((o: PlanOptions) => {
      if (o.list) return printList(Boolean(o.json));
      if (o.validate) return printValidation(Boolean(o.json));
      if (!o.model) throw new UserError('missing --model (a catalog name, see --list, or a config.json path)');
      if (!o.hardware) throw new UserError('missing --hardware (a catalog chip, see --list, or "local")');
      const precision = o.precision?.toLowerCase();
      if (precision !== undefined && !PRECISIONS.includes(precision as Precision)) {
        throw new UserError(`unknown precision "${o.precision}" (expected ${PRECISIONS.join(', ')})`, '--precision');
      }
      const chip = getChip(o.hardware);
      const model = analyzeModel(resolveModel(o.model));
      const mtpAcc = num(o.mtpAcceptance, '--mtp-acceptance', { min: 0, max: 1 });
      if (mtpAcc !== undefined && model.spec.mtpLayers < 1) {
        throw new UserError(`${model.spec.name} has no MTP module (num_nextn_predict_layers is 0)`, '--mtp-acceptance');
      }
      const prompt = num(o.promptTokens, '--prompt-tokens', { int: true, min: 1 })!;
      const output = num(o.outputTokens, '--output-tokens', { int: true, min: 1 })!;
      if (prompt + output > model.spec.maxContext) {
        throw new UserError(`prompt + output (${prompt + output}) exceeds ${model.spec.name}'s context of ${model.spec.maxContext} tokens`, '--prompt-tokens');
      }
      const res = searchPlans({
        model,
        chip,
        precision: precision as Precision | undefined,
        chips: num(o.chips, '--chips', { int: true, min: 1, max: 100000 }),
        promptTokens: prompt,
        outputTokens: output,
        sloTpotMs: num(o.sloTpotMs, '--slo-tpot-ms', { min: 0, minExclusive: true })!,
        sloTtftMs: num(o.sloTtftMs, '--slo-ttft-ms', { min: 0, minExclusive: true }),
        pricePerHour: num(o.pricePerHour, '--price-per-hour', { min: 0, minExclusive: true }),
        cacheHitRate: num(o.cacheHitRate, '--cache-hit-rate', { min: 0, max: 0.99 }),
        mtp: mtpAcc !== undefined && mtpAcc > 0 ? { draftTokens: 1, acceptance: mtpAcc } : null,
        top: num(o.top, '--top', { int: true, min: 1, max: 100 }),
      });
      if (o.plot) {
        try {
          writeFileSync(o.plot, renderPlot(res));
        } catch (e) {
          throw new UserError(`cannot write the plot (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, o.plot);
        }
      }
      if (o.json) {
        process.stdout.write(JSON.stringify({
          model: { name: model.spec.name, total_params: model.params.total, active_params: model.params.active, kv_bytes_per_token: kvBytesPerToken(model.spec) },
          hardware: { name: res.chip.name, price_per_hour: res.chip.pricePerHour.value, power_w: res.chip.powerW.value },
          precision: res.precision,
          workload: { prompt_tokens: prompt, output_tokens: output, slo_tpot_ms: res.request.sloTpotMs, chips: res.request.chips ?? null, cache_hit_rate: res.scenario.cacheHitRate },
          efficiency: { ...res.scenario.eff, calibrated_on: CALIBRATION_DEPLOYMENT },
          best: candidateJson(res.best),
          candidates: res.candidates.map(candidateJson),
          plot: o.plot ?? null,
        }, null, 2) + '\n');
      } else {
        printResult(res);
        if (o.plot) process.stdout.write(`plot written to ${o.plot}\n`);
      }
    });
}
