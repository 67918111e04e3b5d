import { z } from 'zod';
import { UserError } from '../errors.js';

/** Typed view of a DeepSeek V2/V3-family config.json, after validation. */
export interface RopeScaling {
  type: 'yarn';
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export type ScoringFunc = 'softmax' | 'sigmoid';
export type TopkMethod = 'greedy' | 'group_limited_greedy' | 'noaux_tc';

export interface DeepseekConfig {
  architecture: 'DeepseekV2ForCausalLM' | 'DeepseekV3ForCausalLM';
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  moeIntermediateSize: number;
  numHiddenLayers: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  numAttentionHeads: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  numExpertsPerTok: number;
  nGroup: number;
  topkGroup: number;
  topkMethod: TopkMethod;
  scoringFunc: ScoringFunc;
  normTopkProb: boolean;
  routedScalingFactor: number;
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  maxPositionEmbeddings: number;
  numNextnPredictLayers: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  /** One or more end-of-sequence ids (config may give a number or a list). */
  eosTokenIds: number[];
  /** FP8 block size [rows, cols] when quantization_config says fp8. */
  weightBlockSize: [number, number] | null;
}

// ---------------------------------------------------------------------------------------
// Parsing and validation of config.json

export const SUPPORTED_ARCHITECTURES = ['DeepseekV2ForCausalLM', 'DeepseekV3ForCausalLM'] as const;
const TOPK_METHODS = ['greedy', 'group_limited_greedy', 'noaux_tc'] as const;
/** rope_scaling types we implement; DeepSeek's own code calls YaRN "deepseek_yarn". */
const ROPE_TYPES = ['yarn', 'deepseek_yarn'] as const;

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const posNum = z.number().positive();

/**
 * config.json fields we read. The nine dimensions without `.nullish()` are required: there
 * is no sensible default for the shape of a model. Everything else is optional (absent or
 * null) and gets its default in parseDeepseekConfig, where defaults can depend on the
 * architecture. Unknown fields are ignored (HF configs carry many we have no use for).
 */
const configSchema = z.object({
  vocab_size: posInt,
  hidden_size: posInt,
  intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  kv_lora_rank: posInt,
  qk_nope_head_dim: posInt,
  qk_rope_head_dim: posInt,
  v_head_dim: posInt,
  moe_intermediate_size: posInt.nullish(),
  first_k_dense_replace: nonNegInt.nullish(),
  moe_layer_freq: posInt.nullish(),
  n_routed_experts: nonNegInt.nullish(),
  n_shared_experts: nonNegInt.nullish(),
  num_experts_per_tok: posInt.nullish(),
  n_group: posInt.nullish(),
  topk_group: posInt.nullish(),
  topk_method: z.enum(TOPK_METHODS).nullish(),
  scoring_func: z.enum(['softmax', 'sigmoid']).nullish(),
  norm_topk_prob: z.boolean().nullish(),
  routed_scaling_factor: posNum.nullish(),
  q_lora_rank: posInt.nullish(),
  rms_norm_eps: posNum.nullish(),
  rope_theta: posNum.nullish(),
  // Checked separately (below) so an unsupported type is reported before its fields.
  rope_scaling: z.record(z.string(), z.unknown()).nullish(),
  max_position_embeddings: posInt.nullish(),
  num_nextn_predict_layers: nonNegInt.nullish(),
  tie_word_embeddings: z.boolean().nullish(),
  bos_token_id: nonNegInt.nullish(),
  eos_token_id: z.union([nonNegInt, z.array(nonNegInt)], { error: 'a token id or a list of token ids' }).nullish(),
  quantization_config: z.record(z.string(), z.unknown()).nullish(),
});

const yarnSchema = z.object({
  factor: posNum,
  original_max_position_embeddings: posInt,
  beta_fast: posNum.nullish(),
  beta_slow: posNum.nullish(),
  mscale: z.number().nullish(),
  mscale_all_dim: z.number().nullish(),
});

const fp8Schema = z.object({
  weight_block_size: z.tuple([posInt, posInt]).nullish(),
  scale_fmt: z.enum(['ue8m0']).nullish(),
  fmt: z.enum(['e4m3']).nullish(),
});

const EXPECTED_WORDS: Record<string, string> = {
  number: 'a number',
  int: 'an integer',
  boolean: 'true or false',
  string: 'a string',
  array: 'an array',
  tuple: 'an array',
  object: 'an object',
  record: 'an object',
};

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return `[${v.map((x) => JSON.stringify(x)).join(', ')}]`.slice(0, 60);
  if (typeof v === 'object') return 'an object';
  return JSON.stringify(v);
}

function valueAt(root: unknown, path: readonly PropertyKey[]): unknown {
  let v = root;
  for (const k of path) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

/** One zod issue as a sentence naming the config field, e.g. `missing required field "x"`. */
function formatIssue(issue: z.core.$ZodIssue, root: unknown, prefix: string): string {
  const field = prefix + issue.path.map(String).join('.');
  const value = valueAt(root, issue.path);
  switch (issue.code) {
    case 'invalid_type':
      if (value === undefined) return `missing required field "${field}"`;
      return `field "${field}" must be ${EXPECTED_WORDS[issue.expected] ?? issue.expected}, got ${describeValue(value)}`;
    case 'too_small':
      if (issue.origin === 'array') return `field "${field}" must have ${issue.exact ? '' : 'at least '}${issue.minimum} items`;
      return `field "${field}" must be ${issue.inclusive ? '>=' : '>'} ${issue.minimum}, got ${describeValue(value)}`;
    case 'too_big':
      if (issue.origin === 'array') return `field "${field}" must have ${issue.exact ? '' : 'at most '}${issue.maximum} items`;
      return `field "${field}" must be ${issue.inclusive ? '<=' : '<'} ${issue.maximum}, got ${describeValue(value)}`;
    case 'invalid_value':
      return `field "${field}" must be one of ${issue.values.map((x) => JSON.stringify(x)).join(', ')}, got ${describeValue(value)}`;
    case 'invalid_union':
      return `field "${field}" must be ${issue.message}, got ${describeValue(value)}`;
    default:
      return `field "${field}": ${issue.message}`;
  }
}

function parseWith<T extends z.ZodType>(schema: T, value: unknown, file: string, prefix = ''): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  throw new UserError(r.error.issues.map((i) => formatIssue(i, value, prefix)).join('; '), file);
}

function parseRopeScaling(rs: Record<string, unknown>, file: string): RopeScaling {
  const type = rs['type'] ?? rs['rope_type'];
  if (typeof type !== 'string' || !(ROPE_TYPES as readonly string[]).includes(type)) {
    const got = type === undefined ? 'no "type"' : `type ${JSON.stringify(type)}`;
    throw new UserError(`unsupported rope_scaling with ${got} (supported: ${ROPE_TYPES.join(', ')}, or null for none)`, file);
  }
  const y = parseWith(yarnSchema, rs, file, 'rope_scaling.');
  return {
    type: 'yarn',
    factor: y.factor,
    originalMaxPositionEmbeddings: y.original_max_position_embeddings,
    betaFast: y.beta_fast ?? 32,
    betaSlow: y.beta_slow ?? 1,
    mscale: y.mscale ?? 1,
    mscaleAllDim: y.mscale_all_dim ?? 0,
  };
}

/** Block size of FP8 weights, or null when the checkpoint is not quantized. */
function parseQuantization(qc: Record<string, unknown>, file: string): [number, number] {
  const method = qc['quant_method'];
  if (method === undefined || method === null) throw new UserError('missing required field "quantization_config.quant_method"', file);
  if (method !== 'fp8') {
    throw new UserError(`unsupported quantization_config.quant_method ${describeValue(method)} (supported: fp8)`, file);
  }
  const q = parseWith(fp8Schema, qc, file, 'quantization_config.');
  return q.weight_block_size ?? [128, 128];
}

/**
 * Validates a parsed config.json for a DeepSeek V2/V3-family model and fills defaults the
 * way Hugging Face's DeepseekV2Config/DeepseekV3Config do, with one deliberate exception:
 * fields that describe weights (experts, q_lora_rank) default to "absent" rather than to
 * the full-size model's values, so a config that omits them fails loudly on missing
 * tensors instead of inventing 256 experts. `file` names config.json in errors.
 */
export function parseDeepseekConfig(raw: Record<string, unknown>, file: string): DeepseekConfig {
  const archs = raw['architectures'];
  if (archs === undefined) throw new UserError('missing required field "architectures"', file);
  if (!Array.isArray(archs) || typeof archs[0] !== 'string') {
    throw new UserError(`field "architectures" must be a non-empty list of strings, got ${describeValue(archs)}`, file);
  }
  const arch = archs[0];
  if (!(SUPPORTED_ARCHITECTURES as readonly string[]).includes(arch)) {
    throw new UserError(`unsupported architecture "${arch}" (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`, file);
  }
  const architecture = arch as DeepseekConfig['architecture'];
  const v3 = architecture === 'DeepseekV3ForCausalLM';
  const c = parseWith(configSchema, raw, file);

  const nRoutedExperts = c.n_routed_experts ?? 0;
  const moe = nRoutedExperts > 0;
  if (moe && c.num_experts_per_tok == null) {
    throw new UserError('missing required field "num_experts_per_tok" (needed when n_routed_experts > 0)', file);
  }
  const eos = c.eos_token_id;

  const cfg: DeepseekConfig = {
    architecture,
    vocabSize: c.vocab_size,
    hiddenSize: c.hidden_size,
    intermediateSize: c.intermediate_size,
    moeIntermediateSize: c.moe_intermediate_size ?? c.intermediate_size,
    numHiddenLayers: c.num_hidden_layers,
    firstKDenseReplace: c.first_k_dense_replace ?? 0,
    moeLayerFreq: c.moe_layer_freq ?? 1,
    numAttentionHeads: c.num_attention_heads,
    nRoutedExperts,
    nSharedExperts: c.n_shared_experts ?? 0,
    numExpertsPerTok: moe ? c.num_experts_per_tok! : 0,
    nGroup: c.n_group ?? 1,
    topkGroup: c.topk_group ?? 1,
    topkMethod: c.topk_method ?? (v3 ? 'noaux_tc' : 'greedy'),
    scoringFunc: c.scoring_func ?? (v3 ? 'sigmoid' : 'softmax'),
    normTopkProb: c.norm_topk_prob ?? false,
    routedScalingFactor: c.routed_scaling_factor ?? 1,
    qLoraRank: c.q_lora_rank ?? null,
    kvLoraRank: c.kv_lora_rank,
    qkNopeHeadDim: c.qk_nope_head_dim,
    qkRopeHeadDim: c.qk_rope_head_dim,
    vHeadDim: c.v_head_dim,
    rmsNormEps: c.rms_norm_eps ?? 1e-6,
    ropeTheta: c.rope_theta ?? 10000,
    ropeScaling: c.rope_scaling ? parseRopeScaling(c.rope_scaling, file) : null,
    // HF defaults: 2048 for DeepseekV2Config, 4096 for DeepseekV3Config.
    maxPositionEmbeddings: c.max_position_embeddings ?? (v3 ? 4096 : 2048),
    numNextnPredictLayers: c.num_nextn_predict_layers ?? 0,
    tieWordEmbeddings: c.tie_word_embeddings ?? false,
    bosTokenId: c.bos_token_id ?? null,
    eosTokenIds: eos == null ? [] : typeof eos === 'number' ? [eos] : eos,
    weightBlockSize: c.quantization_config ? parseQuantization(c.quantization_config, file) : null,
  };
  checkConsistency(cfg, file);
  return cfg;
}

/** Cross-field rules the routing and attention code rely on. */
function checkConsistency(c: DeepseekConfig, file: string): void {
  const fail = (msg: string): never => {
    throw new UserError(msg, file);
  };
  if (c.topkGroup > c.nGroup) fail(`topk_group (${c.topkGroup}) must be <= n_group (${c.nGroup})`);
  if (c.firstKDenseReplace > c.numHiddenLayers) {
    fail(`first_k_dense_replace (${c.firstKDenseReplace}) must be <= num_hidden_layers (${c.numHiddenLayers})`);
  }
  // RoPE rotates pairs of the rope slice.
  if (c.qkRopeHeadDim % 2 !== 0) fail(`qk_rope_head_dim (${c.qkRopeHeadDim}) must be even`);
  if (c.nRoutedExperts > 0) {
    if (c.nRoutedExperts % c.nGroup !== 0) {
      fail(`n_routed_experts (${c.nRoutedExperts}) must be divisible by n_group (${c.nGroup})`);
    }
    if (c.numExpertsPerTok > c.nRoutedExperts) {
      fail(`num_experts_per_tok (${c.numExpertsPerTok}) must be <= n_routed_experts (${c.nRoutedExperts})`);
    }
    // Group-limited routing picks experts only from the top groups, which must hold enough.
    if (c.topkMethod !== 'greedy') {
      const available = c.topkGroup * (c.nRoutedExperts / c.nGroup);
      if (c.numExpertsPerTok > available) {
        fail(
          `num_experts_per_tok (${c.numExpertsPerTok}) exceeds the ${available} experts in topk_group (${c.topkGroup}) ` +
            `groups of ${c.nRoutedExperts / c.nGroup} (n_routed_experts / n_group)`,
        );
      }
    }
  }
}
