/**
 * Performance model of one serving phase (prefill or decode) of one model on one kind of chip.
 *
 * The unit of work is a RANK (a chip, or a die for chips that expose each die as its own NPU).
 * An INSTANCE is `pp` pipeline stages of `ep` ranks each. Inside a stage, attention and dense
 * layers run as `ep / tp` data-parallel groups of `tp` tensor-parallel ranks ("DP attention"),
 * and the routed experts are spread over all `ep` ranks (expert parallelism). For dense models
 * `ep == tp`: one TP group per stage.
 *
 * Each phase is priced from first principles:
 *   compute  = FLOPs / (peak x mfu)          per kernel class, in its own precision
 *   memory   = bytes / (HBM bw x bwFraction) weights touched + KV read, per kernel class
 *   kernel   = max(compute, memory)           (roofline, applied separately to attention and GEMMs)
 *   comm     = bytes / (link x linkFraction) + latency per collective
 *              TP all-reduce over scale-up (or scale-out if the group spans domains),
 *              EP dispatch/combine split between scale-up and scale-out by where experts live
 *   stage    = kernel + comm - overlap x min(kernel, comm)
 *   + a fixed per-layer overhead (launch gaps, small kernels) on the compute side
 * Prefill is compute-bound (16k-token batches amortize the weights), decode is bandwidth-bound
 * until the batch is large; the same equations cover both.
 */
import type { ChipSpec, Precision } from './hardware-data.js';
import { getChip, rankSpec, type RankSpec } from './hardware.js';
import {
  analyzeModel, resolveModel, attentionFlopsPerToken, bytesPerWeight, dispatchBytesPerElement, kvBytesPerToken,
  kvReadBytesPerToken, linearFlopsPerToken, lmHeadFlops, type ModelAnalysis, type ModelSpec,
} from './models.js';

/**
 * Efficiency factors. All are dimensionless fractions of a hardware peak, the same for every
 * chip and every deployment (no per-deployment or per-vendor fudge). See docs/planner.md for
 * where each value comes from; `mfu`, `overlap` and `decodeMfu` are calibrated, the rest fixed.
 */
export interface Efficiency {
  /** Fraction of peak dense tensor throughput reached by prefill GEMMs and attention (calibrated). */
  mfu: number;
  /**
   * Fraction of peak reached by decode GEMMs and attention (small per-expert batches, imbalance
   * across EP ranks, non-GEMM kernels); calibrated separately from prefill's `mfu`.
   */
  decodeMfu: number;
  /** Fraction of the shorter of compute / communication hidden under the other (calibrated). */
  overlap: number;
  /** Fraction of peak HBM bandwidth reached streaming weights and KV. */
  memoryBandwidth: number;
  /** Fraction of link bandwidth reached by all-to-all and all-reduce kernels. */
  link: number;
  /** Fixed cost of one collective (dispatch, combine, all-reduce, p2p), seconds. */
  latencyScaleUp: number;
  latencyScaleOut: number;
  /** Fraction of device memory usable for weights + KV (runtime, activations, fragmentation). */
  memoryUsable: number;
  /**
   * Fixed time per layer per forward pass that no roofline term covers: kernel launch and
   * inter-kernel gaps, norms/RoPE/quantize/top-k kernels, stream synchronisation (seconds).
   * Dominates decode at small batch, negligible in 16k-token prefill batches.
   */
  layerOverhead: number;
}

/**
 * Factors NOT calibrated, from microbenchmarks (see docs/planner.md):
 *  memoryBandwidth 0.85 - FlashMLA reaches ~3,000 of 3,350 GB/s on H800 (0.90) in memory-bound
 *    decode; DeepGEMM's memory-bound grouped GEMMs reach ~2.6-2.9 TB/s (0.8-0.87).
 *  link 0.85 - DeepEP normal kernels reach 43-47 GB/s of a 50 GB/s CX7 NIC and ~155 GB/s over
 *    H800 NVLink; low-latency kernels 39-46 GB/s.
 *  latencies - ~5 us per collective inside a scale-up domain, ~15 us across RDMA (NIC + sync).
 *  layerOverhead 100 us - ~25 kernels per decoder layer x 2 micro-batches x ~2 us of launch gap
 *    and tail each (CUDA-graph / graph-mode execution).
 *  memoryUsable 0.9 - runtime, activation buffers and fragmentation.
 */
export const FIXED_EFFICIENCY: Omit<Efficiency, 'mfu' | 'decodeMfu' | 'overlap'> = {
  memoryBandwidth: 0.85,
  link: 0.85,
  latencyScaleUp: 5e-6,
  latencyScaleOut: 15e-6,
  memoryUsable: 0.9,
  layerOverhead: 100e-6,
};

/**
 * Calibrated on ONE deployment: SGLang's 96xH100 deployment (LMSYS, 2025-05-05). Its prefill
 * figure (52.3k tokens/s per node, 2k prompts) and its two-batch-overlap ablation (+27-35%) fix
 * `mfu` and `overlap`; its decode figure (22.3k tokens/s per node, 256 sequences per GPU at 2k
 * KV) fixes `decodeMfu`. `calibrate()` re-derives these three from that deployment alone and
 * test/planner.test.ts checks they match; DeepSeek's H800 service and CloudMatrix384 are held out.
 */
export const DEFAULT_EFFICIENCY: Efficiency = {
  ...FIXED_EFFICIENCY,
  mfu: 0.344,
  decodeMfu: 0.287,
  overlap: 0.589,
};

export interface Mtp {
  /** Draft tokens proposed per step (1 for DeepSeek-V3's single MTP module). */
  draftTokens: number;
  /** Probability each draft token is accepted. */
  acceptance: number;
}

export interface Scenario {
  model: ModelAnalysis;
  chip: ChipSpec;
  /** Weight format and GEMM precision (attention core runs in BF16). */
  precision: Precision;
  kvFormat: Precision;
  promptTokens: number;
  outputTokens: number;
  /** Fraction of prompt tokens served from a prefix cache (not recomputed). */
  cacheHitRate: number;
  /** Average KV length during decode; defaults to prompt + output / 2. */
  decodeContext?: number;
  /** Prefill batch per attention-DP group, tokens (DeepSeek and SGLang both use 16,384). */
  prefillBatchTokens: number;
  mtp: Mtp | null;
  eff: Efficiency;
}

export function makeScenario(model: ModelSpec | ModelAnalysis, chip: ChipSpec, over: Partial<Omit<Scenario, 'model' | 'chip'>> = {}): Scenario {
  const an = 'params' in model ? model : analyzeModel(model);
  return {
    model: an,
    chip,
    precision: over.precision ?? an.spec.nativeFormat,
    kvFormat: over.kvFormat ?? 'bf16',
    promptTokens: over.promptTokens ?? 4096,
    outputTokens: over.outputTokens ?? 512,
    cacheHitRate: over.cacheHitRate ?? 0,
    decodeContext: over.decodeContext,
    prefillBatchTokens: over.prefillBatchTokens ?? 16384,
    mtp: over.mtp ?? null,
    eff: over.eff ?? DEFAULT_EFFICIENCY,
  };
}

export interface Plan {
  /** Tensor parallel size of attention / dense layers (ranks). */
  tp: number;
  /** Ranks per pipeline stage; experts spread over all of them. */
  ep: number;
  /** Pipeline stages. */
  pp: number;
}

export function planRanks(p: Plan): number {
  return p.ep * p.pp;
}

export function planChips(p: Plan, chip: ChipSpec): number {
  return planRanks(p) / chip.ranksPerChip;
}

export function describePlan(p: Plan, model: ModelAnalysis): string {
  const parts = [`TP${p.tp}`];
  if (model.spec.moe) parts.push(`EP${p.ep}`, `DP${p.ep / p.tp}`);
  if (p.pp > 1) parts.push(`PP${p.pp}`);
  return parts.join('·');
}

/** Pieces of a stage time, seconds. */
export interface Breakdown {
  attention: number;
  gemm: number;
  tpComm: number;
  epComm: number;
  ppComm: number;
  compute: number;
  comm: number;
  stage: number;
  /** What bounds the GEMMs: 'compute' or 'memory'. */
  gemmBound: 'compute' | 'memory';
  attentionBound: 'compute' | 'memory';
}

interface Sizes {
  rank: RankSpec;
  /** Bytes of weights resident on one rank. */
  weightBytes: number;
  /** Non-expert weight bytes per rank streamed once per step (embedding table excluded). */
  denseBytes: number;
  /** Routed-expert weight bytes per rank per MoE layer, per expert. */
  expertBytes: number;
  /** Routed experts hosted per rank per layer. */
  expertsPerRank: number;
  layersPerStage: number;
  moeLayersPerStage: number;
  /** Layer-wise work multiplier from the MTP module (1 + mtp layers / layers). */
  mtpFactor: number;
}

function sizes(sc: Scenario, p: Plan): Sizes {
  const an = sc.model;
  const spec = an.spec;
  const rank = rankSpec(sc.chip);
  const wq = bytesPerWeight(sc.precision);
  const P = an.params;
  const mtpFactor = sc.mtp ? 1 + Math.min(sc.mtp.draftTokens, Math.max(spec.mtpLayers, 1)) / spec.layers : 1;
  // Embedding, LM head, router and norms stay BF16; everything else in the chosen format.
  const layerDense = ((P.attention + P.denseMlp + P.sharedExperts) * wq + (P.router + P.norms) * 2) * mtpFactor / (p.tp * p.pp);
  // The LM head (vocab-parallel over TP) is streamed every step by the last stage; the embedding
  // table is only gathered from. With PP the first stage holds the embedding, the last the head.
  const headBytes = (spec.tieEmbeddings ? P.embedding : P.lmHead) * 2 / p.tp;
  const embedBytes = spec.tieEmbeddings ? 0 : (P.embedding * 2) / p.tp;
  const denseBytes = layerDense + headBytes;
  const residentDense = layerDense + (p.pp > 1 ? Math.max(headBytes, embedBytes) : headBytes + embedBytes);
  const E = spec.moe?.routedExperts ?? 0;
  const expertsPerRank = E ? Math.max(E / p.ep, 1) : 0;
  const expertBytes = P.oneExpert * wq;
  const layersPerStage = spec.layers / p.pp;
  const moeLayersPerStage = an.moeLayers / p.pp;
  const weightBytes = residentDense + expertsPerRank * expertBytes * moeLayersPerStage * mtpFactor;
  return { rank, weightBytes, denseBytes, expertBytes, expertsPerRank, layersPerStage, moeLayersPerStage, mtpFactor };
}

/** Checks divisibility and scale-up constraints of a plan; returns a reason when invalid. */
export function planProblem(sc: Scenario, p: Plan): string | null {
  const spec = sc.model.spec;
  const rank = rankSpec(sc.chip);
  if (p.tp < 1 || p.ep < 1 || p.pp < 1) return 'sizes must be positive';
  if (p.ep % p.tp !== 0) return 'EP must be a multiple of TP';
  if (!spec.moe && p.ep !== p.tp) return 'dense models have no experts (EP = TP)';
  if (p.tp > rank.domainRanks) return `TP${p.tp} exceeds the ${rank.domainRanks}-rank scale-up domain`;
  const heads = spec.attention.heads;
  if (heads % p.tp !== 0) return `${heads} attention heads do not split over TP${p.tp}`;
  if (p.pp > spec.layers) return 'more stages than layers';
  if ((p.ep * p.pp) % sc.chip.ranksPerChip !== 0) return `ranks must fill whole chips (${sc.chip.ranksPerChip} per chip)`;
  return null;
}

/** Probability that a rank hosting `e` of `E` experts receives at least one of a token's k picks. */
function pRankHit(E: number, k: number, e: number): number {
  if (e >= E) return 1;
  let none = 1;
  for (let i = 0; i < k; i++) none *= Math.max(0, (E - e - i) / (E - i));
  return 1 - none;
}

interface EpTraffic {
  /** Bytes one rank sends over scale-up and scale-out for one token in one MoE layer. */
  upBytesPerToken: number;
  outBytesPerToken: number;
  crossesDomains: boolean;
}

/**
 * Dispatch (tokens to experts) + combine (expert outputs back) traffic per token per MoE layer.
 * Decode uses per-rank messages (DeepEP low-latency style); prefill sends one copy per remote
 * scale-up domain and forwards inside it (DeepEP normal style).
 */
function epTraffic(sc: Scenario, p: Plan, phase: 'prefill' | 'decode'): EpTraffic {
  const moe = sc.model.spec.moe;
  if (!moe || p.ep <= 1) return { upBytesPerToken: 0, outBytesPerToken: 0, crossesDomains: false };
  const rank = rankSpec(sc.chip);
  const h = sc.model.spec.hiddenSize;
  const msg = h * dispatchBytesPerElement(sc.precision) + h * 2; // dispatch + BF16 combine
  const E = moe.routedExperts;
  const k = moe.topK;
  const e = E / p.ep;
  const ranksHit = p.ep >= E ? k : p.ep * pRankHit(E, k, e);
  const remoteRanks = (ranksHit * (p.ep - 1)) / p.ep;
  const domain = Math.min(rank.domainRanks, p.ep);
  if (domain >= p.ep) return { upBytesPerToken: remoteRanks * msg, outBytesPerToken: 0, crossesDomains: false };
  const inFrac = (domain - 1) / (p.ep - 1);
  if (phase === 'decode') {
    return { upBytesPerToken: remoteRanks * inFrac * msg, outBytesPerToken: remoteRanks * (1 - inFrac) * msg, crossesDomains: true };
  }
  const domains = p.ep / domain;
  const domainsHit = domains * pRankHit(E, k, E / domains);
  const remoteDomains = (domainsHit * (domains - 1)) / domains;
  return { upBytesPerToken: remoteRanks * msg, outBytesPerToken: remoteDomains * msg, crossesDomains: true };
}

function tpAllReduceTime(sc: Scenario, p: Plan, tokens: number, layers: number, denseLayers: number): number {
  if (p.tp <= 1) return 0;
  const rank = rankSpec(sc.chip);
  const h = sc.model.spec.hiddenSize;
  const bw = (p.tp <= rank.domainRanks ? rank.scaleUp : rank.scaleOut) * sc.eff.link;
  const lat = p.tp <= rank.domainRanks ? sc.eff.latencyScaleUp : sc.eff.latencyScaleOut;
  // One all-reduce after attention in every layer, one after every dense MLP (TP experts are
  // not modelled: experts always use EP). Ring all-reduce moves 2(tp-1)/tp of the buffer.
  const perReduce = (tokens * h * 2 * 2 * (p.tp - 1)) / p.tp;
  const n = layers + (sc.model.spec.moe ? denseLayers : layers);
  return n * (perReduce / bw + lat);
}

function epTime(sc: Scenario, p: Plan, tokensPerRank: number, moeLayers: number, phase: 'prefill' | 'decode'): number {
  const t = epTraffic(sc, p, phase);
  if (!t.upBytesPerToken && !t.outBytesPerToken) return 0;
  const rank = rankSpec(sc.chip);
  const up = rank.scaleUp > 0 ? (tokensPerRank * t.upBytesPerToken) / (rank.scaleUp * sc.eff.link) : 0;
  const out = (tokensPerRank * t.outBytesPerToken) / (rank.scaleOut * sc.eff.link);
  const lat = 2 * (t.crossesDomains ? sc.eff.latencyScaleOut : sc.eff.latencyScaleUp);
  return moeLayers * (Math.max(up, out) + lat);
}

function combine(compute: number, comm: number, overlap: number): number {
  return compute + comm - overlap * Math.min(compute, comm);
}

function peak(rank: RankSpec, prec: Precision): number {
  const v = rank.peakTflops[prec] ?? rank.peakTflops.bf16 ?? 0;
  return v * 1e12;
}

/** Attention core precision: BF16 where the chip has it (FlashMLA / FlashAttention practice). */
function attnPeak(rank: RankSpec): number {
  return peak(rank, rank.peakTflops.bf16 ? 'bf16' : 'int8');
}

export interface MemoryUse {
  weightBytes: number;
  kvBytes: number;
  capacity: number;
  fits: boolean;
}

/** Memory on one rank with `seqs` sequences of `ctx` tokens per attention-DP group. */
export function memoryUse(sc: Scenario, p: Plan, seqsPerGroup: number, ctx: number): MemoryUse {
  const s = sizes(sc, p);
  const spec = sc.model.spec;
  const a = spec.attention;
  const kvShard = a.kind === 'mla' ? 1 : Math.min(p.tp, a.kvHeads);
  const kvBytes = (seqsPerGroup * ctx * kvBytesPerToken(spec, sc.kvFormat) * s.mtpFactor) / p.pp / kvShard;
  const capacity = s.rank.memoryBytes * sc.eff.memoryUsable;
  return { weightBytes: s.weightBytes, kvBytes, capacity, fits: s.weightBytes + kvBytes <= capacity };
}

export interface PrefillResult {
  plan: Plan;
  chips: number;
  /** Prompt tokens per second per chip, cache hits included (the way DeepSeek reports it). */
  tokensPerSecPerChip: number;
  /** Tokens actually computed per second per chip (cache hits excluded). */
  computedTokensPerSecPerChip: number;
  /** Time to first token for a request in a full batch, seconds. */
  ttft: number;
  breakdown: Breakdown;
  memory: MemoryUse;
}

export function prefillPerf(sc: Scenario, p: Plan): PrefillResult {
  const s = sizes(sc, p);
  const an = sc.model;
  const spec = an.spec;
  const e = sc.eff;
  const dpGroups = p.ep / p.tp;
  const P = sc.promptTokens;
  const h = Math.min(Math.max(sc.cacheHitRate, 0), 0.99);
  const computedPerReq = P * (1 - h);
  const batch = Math.max(sc.prefillBatchTokens, computedPerReq); // computed tokens per DP group
  const tokRank = batch / p.tp; // TP ranks split the work of their group's tokens
  // Causal attention: the computed positions run from hP to P, mean position P(1+h)/2.
  const meanPos = (P * (1 + h)) / 2;
  const attnFlops = (batch * attentionFlopsPerToken(spec, meanPos, 'prefill') * s.mtpFactor) / p.pp / p.tp;
  const gemmFlops = (batch * linearFlopsPerToken(an) * s.mtpFactor) / p.pp / p.tp + ((batch / computedPerReq) * lmHeadFlops(an)) / p.tp / p.pp;
  const attention = attnFlops / (attnPeak(s.rank) * e.mfu);
  const gemmCompute = gemmFlops / (peak(s.rank, sc.precision) * e.mfu);
  const gemmMemory = s.weightBytes / (s.rank.memoryBandwidth * e.memoryBandwidth);
  const gemm = Math.max(gemmCompute, gemmMemory);
  const tpComm = tpAllReduceTime(sc, p, batch, s.layersPerStage * s.mtpFactor, an.denseLayers / p.pp);
  const epComm = epTime(sc, p, tokRank, s.moeLayersPerStage * s.mtpFactor, 'prefill');
  const ppComm = p.pp > 1 ? (batch * spec.hiddenSize * 2) / (s.rank.scaleUp * e.link || s.rank.scaleOut * e.link) + e.latencyScaleUp : 0;
  const compute = attention + gemm + s.layersPerStage * s.mtpFactor * e.layerOverhead;
  const comm = tpComm + epComm + ppComm;
  const stage = combine(compute, comm, e.overlap);
  // Pipeline bubble: a batch is cut into 4 chunks per stage (chunked pipelined prefill), so a
  // fraction (pp-1)/(m+pp-1) of stage time idles at m = 4 pp.
  const m = 4 * p.pp;
  const bubble = p.pp > 1 ? (p.pp - 1) / (m + p.pp - 1) : 0;
  const chips = planChips(p, sc.chip);
  const computedPerInstance = (batch * dpGroups) / (stage / (1 - bubble));
  const computedPerChip = computedPerInstance / chips;
  return {
    plan: p,
    chips,
    tokensPerSecPerChip: computedPerChip / (1 - h),
    computedTokensPerSecPerChip: computedPerChip,
    ttft: stage * p.pp,
    breakdown: {
      attention, gemm, tpComm, epComm, ppComm, compute, comm, stage,
      gemmBound: gemmCompute >= gemmMemory ? 'compute' : 'memory',
      attentionBound: 'compute',
    },
    memory: memoryUse(sc, p, Math.max(1, batch / P), P),
  };
}

export interface DecodeResult {
  plan: Plan;
  chips: number;
  /** Sequences per attention-DP group. */
  batchPerGroup: number;
  /** Concurrent sequences per instance. */
  users: number;
  /** Output tokens per second per chip. */
  tokensPerSecPerChip: number;
  /** Time per output token seen by one user, seconds. */
  tpot: number;
  /** Time of one decode iteration (all stages), seconds. */
  stepTime: number;
  context: number;
  breakdown: Breakdown;
  memory: MemoryUse;
}

/** Expected tokens emitted per sequence per step with MTP (1 + a + a^2 + ... for d drafts). */
export function tokensPerStep(mtp: Mtp | null): number {
  if (!mtp || mtp.draftTokens <= 0) return 1;
  let t = 1;
  let pAll = 1;
  for (let i = 0; i < mtp.draftTokens; i++) {
    pAll *= mtp.acceptance;
    t += pAll;
  }
  return t;
}

export function decodeContext(sc: Scenario): number {
  return sc.decodeContext ?? sc.promptTokens + sc.outputTokens / 2;
}

/** One decode step with `seqs` sequences per attention-DP group. */
export function decodePerf(sc: Scenario, p: Plan, seqs: number): DecodeResult {
  const s = sizes(sc, p);
  const an = sc.model;
  const spec = an.spec;
  const e = sc.eff;
  const ctx = decodeContext(sc);
  const dpGroups = p.ep / p.tp;
  const draft = sc.mtp ? sc.mtp.draftTokens : 0;
  const n = seqs * (1 + draft); // tokens processed per group per step
  const bw = s.rank.memoryBandwidth * e.memoryBandwidth;
  const a = spec.attention;
  const kvShard = a.kind === 'mla' ? 1 : Math.min(p.tp, a.kvHeads);
  // Attention: every sequence's KV is read once per step (draft tokens share the read).
  const kvBytes = (seqs * kvReadBytesPerToken(spec, ctx, sc.kvFormat) * s.mtpFactor) / p.pp / kvShard;
  const attnFlops = (n * attentionFlopsPerToken(spec, ctx, 'decode') * s.mtpFactor) / p.pp / p.tp;
  const attnCompute = attnFlops / (attnPeak(s.rank) * e.decodeMfu);
  const attnMemory = kvBytes / bw;
  const attention = Math.max(attnCompute, attnMemory);
  // GEMMs: all non-expert weights are read every step; an expert's weights are read when at
  // least one of the stage's tokens is routed to it.
  const moe = spec.moe;
  let expertBytesRead = 0;
  if (moe) {
    const routedTokens = n * dpGroups; // tokens entering each MoE layer of the stage
    const pTouched = 1 - Math.pow(1 - moe.topK / moe.routedExperts, routedTokens);
    expertBytesRead = s.expertsPerRank * pTouched * s.expertBytes * s.moeLayersPerStage * s.mtpFactor;
  }
  const gemmBytes = s.denseBytes + expertBytesRead;
  // Main-model logits for every processed token, plus the MTP module's logits for each draft.
  const gemmFlops = (n * linearFlopsPerToken(an) * s.mtpFactor + (n + seqs * draft) * lmHeadFlops(an)) / p.pp / p.tp;
  const gemmCompute = gemmFlops / (peak(s.rank, sc.precision) * e.decodeMfu);
  const gemmMemory = gemmBytes / bw;
  const gemm = Math.max(gemmCompute, gemmMemory);
  const tpComm = tpAllReduceTime(sc, p, n, s.layersPerStage * s.mtpFactor, an.denseLayers / p.pp);
  const epComm = epTime(sc, p, n / p.tp, s.moeLayersPerStage * s.mtpFactor, 'decode');
  const ppComm = p.pp > 1 ? (n * spec.hiddenSize * 2) / ((s.rank.scaleUp || s.rank.scaleOut) * e.link) + e.latencyScaleUp : 0;
  const compute = attention + gemm + s.layersPerStage * s.mtpFactor * e.layerOverhead;
  const comm = tpComm + epComm + ppComm;
  const stage = combine(compute, comm, e.overlap);
  // With pp stages, pp micro-batches circulate; a sequence advances once per pp stage-times.
  const stepTime = stage * p.pp;
  const tps = tokensPerStep(sc.mtp);
  const users = seqs * dpGroups * p.pp;
  const chips = planChips(p, sc.chip);
  return {
    plan: p,
    chips,
    batchPerGroup: seqs,
    users,
    tokensPerSecPerChip: (users * tps) / stepTime / chips,
    tpot: stepTime / tps,
    stepTime,
    context: ctx,
    breakdown: {
      attention, gemm, tpComm, epComm, ppComm, compute, comm, stage,
      gemmBound: gemmCompute >= gemmMemory ? 'compute' : 'memory',
      attentionBound: attnCompute >= attnMemory ? 'compute' : 'memory',
    },
    memory: memoryUse(sc, p, seqs * p.pp, sc.promptTokens + sc.outputTokens),
  };
}

/** Largest batch per DP group whose KV cache fits (0 when the weights alone do not fit). */
export function maxBatchByMemory(sc: Scenario, p: Plan): number {
  const ctxMax = Math.max(sc.promptTokens + sc.outputTokens, 1);
  const m = memoryUse(sc, p, 1, ctxMax);
  const free = m.capacity - m.weightBytes;
  if (free <= 0) return 0;
  return Math.floor(free / m.kvBytes / p.pp);
}

/**
 * The decode operating point with the most throughput whose TPOT meets `sloSeconds`, or null
 * when even one sequence per group misses it or the weights do not fit.
 */
export function decodeAtSlo(sc: Scenario, p: Plan, sloSeconds: number, maxBatch = 4096): DecodeResult | null {
  const cap = Math.min(maxBatchByMemory(sc, p), maxBatch);
  if (cap < 1) return null;
  if (decodePerf(sc, p, 1).tpot > sloSeconds) return null;
  let lo = 1;
  let hi = cap;
  if (decodePerf(sc, p, hi).tpot <= sloSeconds) lo = hi;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (decodePerf(sc, p, mid).tpot <= sloSeconds) lo = mid;
    else hi = mid;
  }
  return decodePerf(sc, p, lo);
}

/** Energy per token in joules for a per-chip throughput (chips at full board power). */
export function joulesPerToken(chip: ChipSpec, tokensPerSecPerChip: number): number {
  return chip.powerW.value / tokensPerSecPerChip;
}

/** USD per million tokens for a per-chip throughput. */
export function usdPerMillion(chip: ChipSpec, tokensPerSecPerChip: number): number {
  return (chip.pricePerHour.value / 3600 / tokensPerSecPerChip) * 1e6;
}

// ---------------------------------------------------------------------------------------------
// Published deployments, calibration and validation
// ---------------------------------------------------------------------------------------------

/** One published throughput figure and how the model predicts it. */
export interface Measurement {
  id: string;
  deployment: 'deepseek-h800' | 'sglang-h100' | 'cloudmatrix-910c';
  phase: 'prefill' | 'decode';
  /** What was measured, in words, with the operating point. */
  label: string;
  published: number;
  unit: string;
  source: string;
  /** Workload facts the prediction uses, and where each comes from. */
  inputs: string;
  predict(eff: Efficiency): number;
}

/** DeepSeek-R1 (all three deployments serve it, or V3 with the same architecture). */
let r1Cache: ModelAnalysis | undefined;
function R1(): ModelAnalysis {
  if (!r1Cache) r1Cache = analyzeModel(resolveModel('deepseek-r1'));
  return r1Cache;
}

const DS_SRC = 'DeepSeek, "Day 6: DeepSeek-V3/R1 Inference System Overview", github.com/deepseek-ai/open-infra-index (2025-03-01)';
const SG_SRC = 'LMSYS/SGLang team, "Deploying DeepSeek with PD Disaggregation and Large-scale Expert Parallelism on 96 H100 GPUs", lmsys.org/blog/2025-05-05-large-scale-ep';
const CM_SRC = 'Zuo et al., "Serving Large Language Models on Huawei CloudMatrix384", arXiv:2506.12708 (2025)';
/** DeepSeek-V3 technical report: the second (MTP) token is accepted 85-90% of the time. */
export const MTP_PUBLISHED: Mtp = { draftTokens: 1, acceptance: 0.85 };
/** DeepSeek's averages: 608B input and 168B output tokens per day, KV length 4,989 per output token. */
const DS_PROMPT = Math.round(4989 / (1 + 0.5 * (168 / 608)));

export const MEASUREMENTS: Measurement[] = [
  {
    id: 'sglang-prefill', deployment: 'sglang-h100', phase: 'prefill',
    label: 'SGLang, 4x8 H100 prefill (EP32), 2k-token prompts: input tokens/s per node',
    published: 52300, unit: 'tokens/s/node', source: SG_SRC,
    inputs: 'FP8 GEMMs, DP32 attention + EP32, 16,384 tokens per GPU, no prefix-cache hits',
    predict: (eff) => prefillPerf(makeScenario(R1(), getChip('h100'), { precision: 'fp8', promptTokens: 2000, eff }), { tp: 1, ep: 32, pp: 1 }).tokensPerSecPerChip * 8,
  },
  {
    id: 'sglang-decode', deployment: 'sglang-h100', phase: 'decode',
    label: 'SGLang, 9x8 H100 decode (EP72), 256 sequences/GPU at 2k KV length: output tokens/s per node',
    published: 22300, unit: 'tokens/s/node', source: SG_SRC,
    inputs: 'FP8 GEMMs, BF16 KV cache, DP72 attention + EP72, 256 sequences per GPU, KV length 2,000, no MTP',
    predict: (eff) => decodePerf(makeScenario(R1(), getChip('h100'), { precision: 'fp8', promptTokens: 2000, outputTokens: 0, decodeContext: 2000, eff }), { tp: 1, ep: 72, pp: 1 }, 256).tokensPerSecPerChip * 8,
  },
  {
    id: 'deepseek-prefill', deployment: 'deepseek-h800', phase: 'prefill',
    label: 'DeepSeek online service, H800 prefill (EP32): input tokens/s per node incl. cache hits, 24 h average',
    published: 73700, unit: 'tokens/s/node', source: DS_SRC,
    inputs: `FP8 GEMMs, DP32 attention + EP32, 56.3% prefix-cache hits (published), mean prompt ${DS_PROMPT} tokens (derived from the published 4,989-token mean KV length and 608B:168B input:output tokens), 16,384 tokens per GPU`,
    predict: (eff) => prefillPerf(makeScenario(R1(), getChip('h800'), { precision: 'fp8', promptTokens: DS_PROMPT, cacheHitRate: 0.563, eff }), { tp: 1, ep: 32, pp: 1 }).tokensPerSecPerChip * 8,
  },
  {
    id: 'deepseek-decode', deployment: 'deepseek-h800', phase: 'decode',
    label: 'DeepSeek online service, H800 decode (EP144) at 20-22 tokens/s per user: output tokens/s per node',
    published: 14800, unit: 'tokens/s/node', source: DS_SRC,
    inputs: 'FP8 GEMMs, BF16 KV, DP144 attention + EP144, KV length 4,989, TPOT target 1/21 s, MTP with 85% acceptance (DeepSeek-V3 report), batch chosen by the model to meet the TPOT target',
    predict: (eff) => (decodeAtSlo(makeScenario(R1(), getChip('h800'), { precision: 'fp8', promptTokens: 4989, outputTokens: 0, decodeContext: 4989, mtp: MTP_PUBLISHED, eff }), { tp: 1, ep: 144, pp: 1 }, 1 / 21)?.tokensPerSecPerChip ?? 0) * 8,
  },
  {
    id: 'cloudmatrix-prefill', deployment: 'cloudmatrix-910c', phase: 'prefill',
    label: 'CloudMatrix384, Ascend 910C prefill, INT8, 4k-token prompts: tokens/s per NPU',
    published: 6688, unit: 'tokens/s/NPU', source: CM_SRC,
    inputs: 'INT8 (W8A8) GEMMs, 16 NPUs = 32 dies, DP32 attention + EP32 over the UB fabric, 16,384 tokens per die',
    predict: (eff) => prefillPerf(makeScenario(R1(), getChip('ascend-910c'), { precision: 'int8', promptTokens: 4096, eff }), { tp: 1, ep: 32, pp: 1 }).tokensPerSecPerChip,
  },
  {
    id: 'cloudmatrix-decode', deployment: 'cloudmatrix-910c', phase: 'decode',
    label: 'CloudMatrix384, Ascend 910C decode (EP320), INT8, TPOT < 50 ms at 4k KV: tokens/s per NPU',
    published: 1943, unit: 'tokens/s/NPU', source: CM_SRC,
    inputs: 'INT8 GEMMs, BF16 KV, 160 NPUs = 320 dies, DP320 attention + EP320, KV length 4,096, TPOT target 50 ms, MTP with 85% acceptance, batch chosen by the model (published: 96 per NPU)',
    predict: (eff) => decodeAtSlo(makeScenario(R1(), getChip('ascend-910c'), { precision: 'int8', promptTokens: 4096, outputTokens: 0, decodeContext: 4096, mtp: MTP_PUBLISHED, eff }), { tp: 1, ep: 320, pp: 1 }, 0.05)?.tokensPerSecPerChip ?? 0,
  },
];

/** Extra published points reported in docs/planner.md but not used by the pass/fail test. */
export const EXTRA_MEASUREMENTS: Measurement[] = [
  {
    id: 'deepseek-profile-prefill', deployment: 'deepseek-h800', phase: 'prefill',
    label: 'DeepSeek profile data, H800 prefill EP32, 4k prompts, 16k tokens/GPU, no cache: tokens/s per node',
    published: 62713, unit: 'tokens/s/node', source: 'github.com/deepseek-ai/profile-data, as tabulated in ' + SG_SRC,
    inputs: 'as deepseek-prefill but 4,096-token prompts and no cache hits',
    predict: (eff) => prefillPerf(makeScenario(R1(), getChip('h800'), { precision: 'fp8', promptTokens: 4096, eff }), { tp: 1, ep: 32, pp: 1 }).tokensPerSecPerChip * 8,
  },
  {
    id: 'deepseek-profile-decode', deployment: 'deepseek-h800', phase: 'decode',
    label: 'DeepSeek profile data, H800 decode EP128, 128 requests/GPU, 4k KV, 2 tokens/request/step: tokens/s per node',
    published: 18598, unit: 'tokens/s/node', source: 'github.com/deepseek-ai/profile-data, as tabulated in ' + SG_SRC,
    inputs: 'EP128, 128 sequences per GPU, KV 4,096, MTP counted as 2 tokens per step (as SGLang\'s comparison does)',
    predict: (eff) => decodePerf(makeScenario(R1(), getChip('h800'), { precision: 'fp8', promptTokens: 4096, outputTokens: 0, decodeContext: 4096, mtp: { draftTokens: 1, acceptance: 1 }, eff }), { tp: 1, ep: 128, pp: 1 }, 128).tokensPerSecPerChip * 8,
  },
  {
    id: 'cloudmatrix-decode-96', deployment: 'cloudmatrix-910c', phase: 'decode',
    label: 'CloudMatrix384 decode at the published batch (96 per NPU, 4k KV): tokens/s per NPU',
    published: 1943, unit: 'tokens/s/NPU', source: CM_SRC,
    inputs: 'as cloudmatrix-decode with the batch fixed at 48 per die',
    predict: (eff) => decodePerf(makeScenario(R1(), getChip('ascend-910c'), { precision: 'int8', promptTokens: 4096, outputTokens: 0, decodeContext: 4096, mtp: MTP_PUBLISHED, eff }), { tp: 1, ep: 320, pp: 1 }, 48).tokensPerSecPerChip,
  },
  {
    id: 'cloudmatrix-decode-15ms', deployment: 'cloudmatrix-910c', phase: 'decode',
    label: 'CloudMatrix384 decode under a 15 ms TPOT target: tokens/s per NPU',
    published: 538, unit: 'tokens/s/NPU', source: CM_SRC,
    inputs: 'as cloudmatrix-decode with TPOT target 15 ms (latency-bound: dominated by fixed per-layer costs)',
    predict: (eff) => decodeAtSlo(makeScenario(R1(), getChip('ascend-910c'), { precision: 'int8', promptTokens: 4096, outputTokens: 0, decodeContext: 4096, mtp: MTP_PUBLISHED, eff }), { tp: 1, ep: 320, pp: 1 }, 0.015)?.tokensPerSecPerChip ?? 0,
  },
];

/** The deployment the efficiency factors are calibrated on; all others are held out. */
export const CALIBRATION_DEPLOYMENT = 'sglang-h100' as const;

/**
 * SGLang's two-batch-overlap ablation on the same deployment: TBO raised prefill throughput by
 * 27-35% at equal tokens per device (we use the midpoint). This fixes `overlap`.
 */
export const SGLANG_PREFILL_TBO_GAIN = 1.31;

function solve(f: (x: number) => number, target: number, lo: number, hi: number): number {
  const inc = f(hi) > f(lo);
  for (let i = 0; i < 60; i++) {
    const mid = (lo + hi) / 2;
    if ((f(mid) < target) === inc) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

/**
 * Re-derives the three calibrated factors from the SGLang 96xH100 deployment alone:
 * `mfu` and `overlap` from its prefill throughput and TBO gain, then `decodeMfu` from its decode
 * throughput. Everything else stays at FIXED_EFFICIENCY.
 */
export function calibrate(): Efficiency {
  const byId = (id: string) => MEASUREMENTS.find((m) => m.id === id)!;
  const pre = byId('sglang-prefill');
  const dec = byId('sglang-decode');
  const eff: Efficiency = { ...FIXED_EFFICIENCY, mfu: 0.3, decodeMfu: 0.3, overlap: 0.5 };
  for (let it = 0; it < 30; it++) {
    eff.mfu = solve((m) => pre.predict({ ...eff, mfu: m }), pre.published, 0.02, 1);
    eff.overlap = solve((o) => pre.predict({ ...eff, overlap: o }) / pre.predict({ ...eff, overlap: 0 }), SGLANG_PREFILL_TBO_GAIN, 0, 1);
  }
  eff.decodeMfu = solve((m) => dec.predict({ ...eff, decodeMfu: m }), dec.published, 0.02, 1);
  return eff;
}

export interface Validation {
  measurement: Measurement;
  predicted: number;
  /** (predicted - published) / published */
  error: number;
  heldOut: boolean;
}

export function validate(eff: Efficiency = DEFAULT_EFFICIENCY, list: Measurement[] = MEASUREMENTS): Validation[] {
  return list.map((m) => {
    const predicted = m.predict(eff);
    return { measurement: m, predicted, error: (predicted - m.published) / m.published, heldOut: m.deployment !== CALIBRATION_DEPLOYMENT };
  });
}
