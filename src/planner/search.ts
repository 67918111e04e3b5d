/**
 * Search over chip counts and parallelism for one model on one kind of chip.
 *
 * Phase plans: for each instance size, every (TP, PP) with EP filling the stage is priced with
 * the performance model (prefill: throughput and TTFT; decode: the largest batch whose TPOT
 * meets the SLO and whose KV cache fits). Deployments then combine them:
 *  - disaggregated: `a` prefill instances + `b` decode instances (DeepSeek/SGLang style),
 *  - colocated: one instance serves both phases (small deployments; chunked-prefill
 *    interference with TPOT is not modelled).
 * With `chips` given, deployments use at most that many chips and are ranked by requests/s;
 * without, each plan is sized to balance prefill and decode, ranked by cost per request.
 */
import { UserError } from '../errors.js';
import type { ChipSpec, Precision } from './hardware-data.js';
import { rankSpec, supportedPrecisions, withPrice } from './hardware.js';
import { bytesPerWeight, type ModelAnalysis } from './models.js';
import {
  DEFAULT_EFFICIENCY, decodeAtSlo, describePlan, makeScenario, memoryUse, planChips, planProblem,
  prefillPerf, type DecodeResult, type Efficiency, type Mtp, type Plan, type PrefillResult, type Scenario,
} from './perf.js';

export interface PlanRequest {
  model: ModelAnalysis;
  chip: ChipSpec;
  precision?: Precision;
  /** Total chips available; omitted = explore sizes. */
  chips?: number;
  promptTokens: number;
  outputTokens: number;
  sloTpotMs: number;
  /** Optional TTFT target for prefill, ms. */
  sloTtftMs?: number;
  pricePerHour?: number;
  cacheHitRate?: number;
  mtp?: Mtp | null;
  eff?: Efficiency;
  /** How many deployments to return. */
  top?: number;
}

export interface PhaseChoice<R> {
  plan: Plan;
  text: string;
  chipsPerInstance: number;
  instances: number;
  result: R;
}

export interface Candidate {
  mode: 'disaggregated' | 'colocated';
  chips: number;
  prefill: PhaseChoice<PrefillResult>;
  decode: PhaseChoice<DecodeResult>;
  /** Sustained requests per second of the whole deployment. */
  requestsPerSec: number;
  /** Concurrent decoding users. */
  users: number;
  prefillTokensPerSecPerChip: number;
  decodeTokensPerSecPerChip: number;
  tpotMs: number;
  ttftMs: number;
  /** Phase-attributed costs at full utilisation (chip-hours of the phase / its tokens). */
  usdPerMillionInput: number;
  usdPerMillionOutput: number;
  /** Whole deployment cost / requests served, including any idle share from integer sizing. */
  usdPerRequest: number;
  joulesPerInputToken: number;
  joulesPerOutputToken: number;
  parallelismText: string;
}

export interface SearchResult {
  request: Required<Pick<PlanRequest, 'promptTokens' | 'outputTokens' | 'sloTpotMs'>> & { chips?: number };
  precision: Precision;
  chip: ChipSpec;
  scenario: Scenario;
  candidates: Candidate[];
  best: Candidate;
  /** Decode plans that met the SLO (for plotting), best per instance size. */
  decodePlans: PhaseChoice<DecodeResult>[];
}

/** Default precision: the checkpoint's own format when the chip runs it, else INT8, else BF16. */
export function choosePrecision(model: ModelAnalysis, chip: ChipSpec, requested?: Precision): Precision {
  const supported = supportedPrecisions(chip);
  if (requested) {
    if (!supported.includes(requested)) {
      throw new UserError(`${chip.name} has no ${requested.toUpperCase()} tensor units (it supports ${supported.join(', ')})`, '--precision');
    }
    return requested;
  }
  const native = model.spec.nativeFormat;
  if (supported.includes(native)) return native;
  if (native !== 'bf16' && supported.includes('int8')) return 'int8';
  return supported.includes('bf16') ? 'bf16' : supported[supported.length - 1];
}

const SIZES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 72, 96, 128, 144, 160, 192, 256, 288, 320, 384];

function instanceSizes(sc: Scenario, maxChips: number | undefined): number[] {
  const local = sc.chip.name === 'local';
  const limit = maxChips ?? (local ? 1 : 384);
  const list = SIZES.filter((n) => n <= limit);
  if (maxChips && !list.includes(maxChips)) list.push(maxChips);
  return list;
}

function pow2UpTo(n: number): number[] {
  const out: number[] = [];
  for (let v = 1; v <= n; v *= 2) out.push(v);
  return out;
}

/** Every valid plan for an instance of `chips` chips. */
export function plansFor(sc: Scenario, chips: number): Plan[] {
  const ranks = chips * sc.chip.ranksPerChip;
  const dom = rankSpec(sc.chip).domainRanks;
  const plans: Plan[] = [];
  for (const pp of pow2UpTo(Math.min(16, ranks))) {
    if (ranks % pp) continue;
    const stage = ranks / pp;
    for (const tp of pow2UpTo(Math.min(stage, 64))) {
      if (stage % tp) continue;
      const p: Plan = sc.model.spec.moe ? { tp, ep: stage, pp } : { tp: stage, ep: stage, pp };
      if (!sc.model.spec.moe && tp !== stage) continue;
      if (tp > dom) continue;
      if (planProblem(sc, p)) continue;
      plans.push(p);
    }
  }
  return plans;
}

function fitsWeights(sc: Scenario, p: Plan): boolean {
  const m = memoryUse(sc, p, 1, sc.promptTokens + sc.outputTokens);
  return m.weightBytes + m.kvBytes <= m.capacity;
}

function bestPrefill(sc: Scenario, p: Plan, ttftSlo?: number): PrefillResult | null {
  let best: PrefillResult | null = null;
  const batches = [sc.promptTokens, 4096, 8192, 16384].filter((b) => b >= sc.promptTokens * (1 - sc.cacheHitRate));
  for (const b of [...new Set(batches)]) {
    const r = prefillPerf({ ...sc, prefillBatchTokens: b }, p);
    if (!r.memory.fits && b > sc.promptTokens) continue;
    if (ttftSlo !== undefined && r.ttft > ttftSlo) continue;
    if (!best || r.tokensPerSecPerChip > best.tokensPerSecPerChip) best = r;
  }
  return best;
}

function minWeightsGB(sc: Scenario): number {
  const P = sc.model.params;
  const q = bytesPerWeight(sc.precision);
  return ((P.total - P.embedding - P.lmHead - P.router - P.norms) * q + (P.embedding + P.lmHead + P.router + P.norms) * 2) / 1e9;
}

export function searchPlans(req: PlanRequest): SearchResult {
  const chip = req.pricePerHour !== undefined ? withPrice(req.chip, req.pricePerHour) : req.chip;
  const precision = choosePrecision(req.model, chip, req.precision);
  const sc = makeScenario(req.model, chip, {
    precision,
    promptTokens: req.promptTokens,
    outputTokens: req.outputTokens,
    cacheHitRate: req.cacheHitRate ?? 0,
    mtp: req.mtp ?? null,
    eff: req.eff ?? DEFAULT_EFFICIENCY,
  });
  const slo = req.sloTpotMs / 1000;
  const ttftSlo = req.sloTtftMs !== undefined ? req.sloTtftMs / 1000 : undefined;
  const sizes = instanceSizes(sc, req.chips);

  const prefills: PhaseChoice<PrefillResult>[] = [];
  const decodes: PhaseChoice<DecodeResult>[] = [];
  let anyFit = false;
  let fastestTpot = Infinity;
  let fastestText = '';
  for (const n of sizes) {
    for (const p of plansFor(sc, n)) {
      if (!fitsWeights(sc, p)) continue;
      anyFit = true;
      const chips = planChips(p, chip);
      const text = describePlan(p, req.model);
      const pf = bestPrefill(sc, p, ttftSlo);
      if (pf) prefills.push({ plan: p, text, chipsPerInstance: chips, instances: 1, result: pf });
      const d = decodeAtSlo(sc, p, slo);
      if (d) decodes.push({ plan: p, text, chipsPerInstance: chips, instances: 1, result: d });
      else {
        const d1 = decodeAtSlo(sc, p, 1e9, 1);
        if (d1 && d1.tpot < fastestTpot) {
          fastestTpot = d1.tpot;
          fastestText = `${chips}x ${chip.name} ${text}`;
        }
      }
    }
  }
  const where = req.chips ? `${req.chips}x ${chip.name}` : `up to ${sizes[sizes.length - 1]}x ${chip.name}`;
  if (!anyFit) {
    const cap = chip.memoryGB.value * (req.chips ?? sizes[sizes.length - 1]);
    throw new UserError(
      `${req.model.spec.name} does not fit on ${where}: its ${precision.toUpperCase()} weights need ~${minWeightsGB(sc).toFixed(0)} GB (plus KV cache), ` +
        `the chips hold ${cap.toFixed(0)} GB`,
    );
  }
  if (!decodes.length) {
    const hint = Number.isFinite(fastestTpot) ? ` (the fastest found is ${(fastestTpot * 1000).toFixed(1)} ms, on ${fastestText})` : '';
    throw new UserError(`no configuration on ${where} meets a TPOT of ${req.sloTpotMs} ms for ${req.model.spec.name}${hint}`, '--slo-tpot-ms');
  }
  if (!prefills.length) {
    throw new UserError(`no configuration on ${where} meets a TTFT of ${req.sloTtftMs} ms for ${req.model.spec.name}`, '--slo-ttft-ms');
  }

  // Best decode plan per instance size (for the plot) and shortlists for combination.
  const bestBySize = new Map<number, PhaseChoice<DecodeResult>>();
  for (const d of decodes) {
    const cur = bestBySize.get(d.chipsPerInstance);
    if (!cur || d.result.tokensPerSecPerChip > cur.result.tokensPerSecPerChip) bestBySize.set(d.chipsPerInstance, d);
  }
  const decodePlans = [...bestBySize.values()].sort((a, b) => a.chipsPerInstance - b.chipsPerInstance);
  const preBySize = new Map<number, PhaseChoice<PrefillResult>>();
  for (const p of prefills) {
    const cur = preBySize.get(p.chipsPerInstance);
    if (!cur || p.result.tokensPerSecPerChip > cur.result.tokensPerSecPerChip) preBySize.set(p.chipsPerInstance, p);
  }
  const prefillPlans = [...preBySize.values()];

  const P = req.promptTokens;
  const O = Math.max(req.outputTokens, 1);
  const candidates: Candidate[] = [];
  const make = (mode: Candidate['mode'], pre: PhaseChoice<PrefillResult>, dec: PhaseChoice<DecodeResult>, a: number, b: number): Candidate => {
    const pr = pre.result;
    const dr = dec.result;
    let chipsTotal: number;
    let rps: number;
    let users: number;
    if (mode === 'colocated') {
      // One instance alternates phases: chip-seconds per request = P/ptps + O/dtps.
      chipsTotal = dec.chipsPerInstance * b;
      const perChip = 1 / (P / pr.tokensPerSecPerChip + O / dr.tokensPerSecPerChip);
      rps = perChip * chipsTotal;
      users = dr.users * b; // sequences stay resident (and count as served) while prefill runs
    } else {
      chipsTotal = pre.chipsPerInstance * a + dec.chipsPerInstance * b;
      const prefillRps = (a * pre.chipsPerInstance * pr.tokensPerSecPerChip) / P;
      const decodeRps = (b * dec.chipsPerInstance * dr.tokensPerSecPerChip) / O;
      rps = Math.min(prefillRps, decodeRps);
      users = dr.users * b * Math.min(1, rps / decodeRps);
    }
    const price = chip.pricePerHour.value;
    const usd = (tps: number) => (price / 3600 / tps) * 1e6;
    const preChoice = { ...pre, instances: mode === 'colocated' ? b : a };
    const decChoice = { ...dec, instances: b };
    const parallelismText = mode === 'colocated'
      ? `colocated ${b}x[${dec.chipsPerInstance} chips ${dec.text}]`
      : `prefill ${a}x[${pre.chipsPerInstance} chips ${pre.text}] + decode ${b}x[${dec.chipsPerInstance} chips ${dec.text}]`;
    return {
      mode,
      chips: chipsTotal,
      prefill: preChoice,
      decode: decChoice,
      requestsPerSec: rps,
      users,
      prefillTokensPerSecPerChip: pr.tokensPerSecPerChip,
      decodeTokensPerSecPerChip: dr.tokensPerSecPerChip,
      tpotMs: dr.tpot * 1000,
      ttftMs: pr.ttft * 1000,
      usdPerMillionInput: usd(pr.tokensPerSecPerChip),
      usdPerMillionOutput: usd(dr.tokensPerSecPerChip),
      usdPerRequest: (chipsTotal * price) / 3600 / rps,
      joulesPerInputToken: chip.powerW.value / pr.tokensPerSecPerChip,
      joulesPerOutputToken: chip.powerW.value / dr.tokensPerSecPerChip,
      parallelismText,
    };
  };

  const topPrefill = [...prefillPlans].sort((x, y) => y.result.tokensPerSecPerChip - x.result.tokensPerSecPerChip).slice(0, 6);
  const topDecode = [...decodePlans].sort((x, y) => y.result.tokensPerSecPerChip - x.result.tokensPerSecPerChip).slice(0, 8);
  // Colocated: the same plan serves both phases, time-sharing the chips. While a fraction f of
  // the time goes to prefill, decode steps stretch by 1/(1-f), so decode must run at
  // TPOT <= SLO x (1-f) (fixed point over f, which depends on the decode throughput).
  for (const d0 of decodePlans) {
    const pre = prefills.find((p) => p.chipsPerInstance === d0.chipsPerInstance && samePlan(p.plan, d0.plan));
    if (!pre) continue;
    const b = req.chips ? Math.floor(req.chips / d0.chipsPerInstance) : 1;
    if (b < 1) continue;
    let dr: DecodeResult | null = d0.result;
    let f = 0;
    for (let it = 0; it < 6 && dr; it++) {
      const tp = P / pre.result.tokensPerSecPerChip;
      f = tp / (tp + O / dr.tokensPerSecPerChip);
      dr = decodeAtSlo(sc, d0.plan, slo * (1 - f));
    }
    if (!dr) continue;
    const c = make('colocated', pre, { ...d0, result: dr }, 1, b);
    c.tpotMs = (dr.tpot / (1 - f)) * 1000;
    if (c.tpotMs <= req.sloTpotMs * 1.001) candidates.push(c);
  }
  for (const pre of topPrefill) {
    for (const d of topDecode) {
      if (req.chips) {
        let bestC: Candidate | null = null;
        for (let a = 1; a * pre.chipsPerInstance + d.chipsPerInstance <= req.chips; a++) {
          const b = Math.floor((req.chips - a * pre.chipsPerInstance) / d.chipsPerInstance);
          const c = make('disaggregated', pre, d, a, b);
          if (!bestC || c.requestsPerSec > bestC.requestsPerSec) bestC = c;
        }
        if (bestC) candidates.push(bestC);
      } else {
        // Size prefill to the decode instance's demand (input tokens/s it consumes).
        const demand = (d.chipsPerInstance * d.result.tokensPerSecPerChip * P) / O;
        const supply = pre.chipsPerInstance * pre.result.tokensPerSecPerChip;
        const ratio = demand / supply;
        const [a, b] = ratio >= 1 ? [Math.ceil(ratio), 1] : [1, Math.max(1, Math.floor(1 / ratio))];
        candidates.push(make('disaggregated', pre, d, a, b));
      }
    }
  }
  // Rank by requests/s (fixed chip budget) or cost per request; candidates within 5% of the
  // best (below the model's resolution) come first, fewest chips first.
  const score = (c: Candidate) => (req.chips ? 1 / c.requestsPerSec : c.usdPerRequest);
  const top = Math.min(...candidates.map(score));
  const near = (c: Candidate) => score(c) <= top * 1.05;
  candidates.sort((x, y) => Number(near(y)) - Number(near(x)) || (near(x) ? x.chips - y.chips : 0) || score(x) - score(y));
  const seen = new Set<string>();
  const unique = candidates.filter((c) => (seen.has(c.parallelismText) ? false : (seen.add(c.parallelismText), true)));
  return {
    request: { promptTokens: P, outputTokens: req.outputTokens, sloTpotMs: req.sloTpotMs, chips: req.chips },
    precision,
    chip,
    scenario: sc,
    candidates: unique.slice(0, req.top ?? 8),
    best: unique[0],
    decodePlans,
  };
}

function samePlan(a: Plan, b: Plan): boolean {
  return a.tp === b.tp && a.ep === b.ep && a.pp === b.pp;
}

/** A candidate as JSON (snake_case, the shape `shoal plan --json` prints and the server returns). */
export function candidateJson(c: Candidate) {
  const phase = (p: Candidate['prefill'] | Candidate['decode']) => ({
    chips_per_instance: p.chipsPerInstance,
    instances: p.instances,
    tp: p.plan.tp,
    ep: p.plan.ep,
    pp: p.plan.pp,
    dp_attention: p.plan.ep / p.plan.tp,
    text: p.text,
  });
  return {
    chips: c.chips,
    mode: c.mode,
    parallelism: {
      mode: c.mode,
      summary: c.parallelismText,
      prefill: phase(c.prefill),
      decode: { ...phase(c.decode), batch_per_dp_group: c.decode.result.batchPerGroup },
    },
    prefill_tokens_per_s_per_chip: c.prefillTokensPerSecPerChip,
    decode_tokens_per_s_per_chip: c.decodeTokensPerSecPerChip,
    tpot_ms: c.tpotMs,
    ttft_ms: c.ttftMs,
    users_served: c.users,
    requests_per_s: c.requestsPerSec,
    usd_per_million_input_tokens: c.usdPerMillionInput,
    usd_per_million_output_tokens: c.usdPerMillionOutput,
    usd_per_request: c.usdPerRequest,
    joules_per_input_token: c.joulesPerInputToken,
    joules_per_output_token: c.joulesPerOutputToken,
  };
}
