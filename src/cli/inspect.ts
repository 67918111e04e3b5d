/** `shoal inspect`: what a checkpoint is, from its config and headers alone (no weights read). */
import type { Command } from 'commander';
import { DeepseekModel, expectedTensors } from '../models/deepseek.js';
import type { DeepseekConfig } from '../models/config.js';
import type { Checkpoint } from '../formats/types.js';
import { openModelPath } from '../models/open.js';
import { expectedLlamaTensors, type LlamaConfig } from '../models/llama.js';
import type { GgufFile } from '../formats/gguf.js';

/** What summarize needs of a model's files: which tensors exist and the bytes per stored type. */
export interface StoredTensors {
  has(name: string): boolean;
  bytesByDtype: Record<string, number>;
  totalBytes: number;
}

function checkpointTensors(ckpt: Checkpoint): StoredTensors {
  const bytesByDtype: Record<string, number> = {};
  for (const name of ckpt.tensors.names()) {
    const info = ckpt.tensors.info(name);
    bytesByDtype[info.dtype] = (bytesByDtype[info.dtype] ?? 0) + info.byteLength;
  }
  return { has: (n) => ckpt.tensors.has(n), bytesByDtype, totalBytes: ckpt.totalBytes };
}

export interface ModelSummary {
  architecture: string;
  layers: number;
  denseLayers: number;
  moeLayers: number;
  mtpLayers: number;
  routedExperts: number;
  sharedExperts: number;
  expertsPerToken: number;
  hiddenSize: number;
  vocabSize: number;
  /** Parameters of the main model (embeddings and LM head included, MTP excluded). */
  params: number;
  /** Parameters the MTP module adds. */
  mtpParams: number;
  /** Parameters one token passes through in the main model. */
  activeParams: number;
  /** How attention caches keys and values: a compressed latent (MLA) or K/V per KV head (GQA). */
  attention: 'mla' | 'gqa';
  /** Cache per token over the main layers, stored as bf16 (what production engines store). */
  kvBytesPerTokenBf16: number;
  /** What standard multi-head attention would cache per token (bf16 K and V for every head). */
  mhaKvBytesPerTokenBf16: number;
  /** Bytes of tensor data per dtype as stored. */
  bytesByDtype: Record<string, number>;
  totalBytes: number;
}

export function summarize(ckptOrTensors: Checkpoint | StoredTensors, cfg: DeepseekConfig): ModelSummary {
  const st = 'tensors' in ckptOrTensors ? checkpointTensors(ckptOrTensors) : ckptOrTensors;
  let params = 0, mtpParams = 0, routed = 0;
  const layerOf = (name: string) => Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);
  for (const [name, shape] of expectedTensors(cfg, true, (n) => st.has(n))) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (layerOf(name) >= cfg.numHiddenLayers) mtpParams += n;
    else {
      params += n;
      if (name.includes('.mlp.experts.')) routed += n;
    }
  }
  const activeParams = params - routed + (cfg.nRoutedExperts ? (routed * cfg.numExpertsPerTok) / cfg.nRoutedExperts : 0);
  const bytesByDtype = st.bytesByDtype;
  const moeLayers = Array.from({ length: cfg.numHiddenLayers }, (_, i) => i)
    .filter((i) => cfg.nRoutedExperts > 0 && i >= cfg.firstKDenseReplace && i % cfg.moeLayerFreq === 0).length;
  return {
    architecture: cfg.architecture,
    layers: cfg.numHiddenLayers,
    denseLayers: cfg.numHiddenLayers - moeLayers,
    moeLayers,
    mtpLayers: cfg.numNextnPredictLayers,
    routedExperts: cfg.nRoutedExperts,
    sharedExperts: cfg.nSharedExperts,
    expertsPerToken: cfg.numExpertsPerTok,
    hiddenSize: cfg.hiddenSize,
    vocabSize: cfg.vocabSize,
    params,
    mtpParams,
    activeParams: Math.round(activeParams),
    attention: 'mla',
    kvBytesPerTokenBf16: cfg.numHiddenLayers * (cfg.kvLoraRank + cfg.qkRopeHeadDim) * 2,
    mhaKvBytesPerTokenBf16: cfg.numHiddenLayers * cfg.numAttentionHeads * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim + cfg.vHeadDim) * 2,
    bytesByDtype,
    totalBytes: st.totalBytes,
  };
}

/** The summary of a dense GQA model (llama/qwen2 GGUF): every parameter is active. */
export function summarizeLlama(st: StoredTensors, cfg: LlamaConfig): ModelSummary {
  let params = 0;
  for (const [, shape] of expectedLlamaTensors(cfg)) params += shape.reduce((a, b) => a * b, 1);
  const headBytes = (cfg.keyHeadDim + cfg.valueHeadDim) * 2;
  return {
    architecture: cfg.architecture,
    layers: cfg.numHiddenLayers,
    denseLayers: cfg.numHiddenLayers,
    moeLayers: 0,
    mtpLayers: 0,
    routedExperts: 0,
    sharedExperts: 0,
    expertsPerToken: 0,
    hiddenSize: cfg.hiddenSize,
    vocabSize: cfg.vocabSize,
    params,
    mtpParams: 0,
    activeParams: params,
    attention: 'gqa',
    kvBytesPerTokenBf16: cfg.numHiddenLayers * cfg.numKeyValueHeads * headBytes,
    mhaKvBytesPerTokenBf16: cfg.numHiddenLayers * cfg.numAttentionHeads * headBytes,
    bytesByDtype: st.bytesByDtype,
    totalBytes: st.totalBytes,
  };
}

/** Tensor bytes per ggml type of a GGUF file. */
function ggufTensors(file: GgufFile, has: (name: string) => boolean): StoredTensors {
  const bytesByDtype: Record<string, number> = {};
  let totalBytes = 0;
  for (const t of file.tensors.values()) {
    bytesByDtype[t.typeName] = (bytesByDtype[t.typeName] ?? 0) + t.byteLength;
    totalBytes += t.byteLength;
  }
  return { has, bytesByDtype, totalBytes };
}

function human(n: number): string {
  const units: [number, string][] = [[1e12, 'T'], [1e9, 'B'], [1e6, 'M'], [1e3, 'K']];
  for (const [v, u] of units) if (n >= v) return `${(n / v).toFixed(2)}${u}`;
  return String(n);
}

function bytes(n: number): string {
  const units: [number, string][] = [[2 ** 40, 'TiB'], [2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [v, u] of units) if (n >= v) return `${(n / v).toFixed(2)} ${u}`;
  return `${n} B`;
}

export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show architecture, parameters, KV-cache size and weight formats of a checkpoint')
    .requiredOption('--model <dir>', 'Hugging Face model folder or a .gguf file')
    .option('--json', 'print JSON')
    .action((o: { model: string; json?: boolean }) => {
      const opened = openModelPath(o.model);
      try {
        let s: ModelSummary;
        if (opened.family === 'llama') {
          // Every tensor checked against the config, as loading would.
          const { cfg, weights } = opened.source;
          for (const [name, shape] of expectedLlamaTensors(cfg)) weights.check(name, shape);
          s = summarizeLlama(ggufTensors(opened.ggufFile, (n) => weights.has(n)), cfg);
        } else if ('file' in opened.source) {
          const { cfg, weights, file } = opened.source;
          for (const [name, shape] of expectedTensors(cfg, true, (n) => weights.has(n))) weights.check(name, shape);
          s = summarize(ggufTensors(file, (n) => weights.has(n)), cfg);
        } else {
          s = summarize(checkpointTensors(opened.source), DeepseekModel.checkCheckpoint(opened.source));
        }
        if (o.json) {
          process.stdout.write(JSON.stringify(s, null, 2) + '\n');
          return;
        }
        const lines = [
          `architecture       ${s.architecture}`,
          `layers             ${s.layers} (${s.denseLayers} dense, ${s.moeLayers} MoE) + ${s.mtpLayers} MTP`,
          `experts            ${s.routedExperts ? `${s.routedExperts} routed, ${s.sharedExperts} shared, ${s.expertsPerToken} per token` : 'none (dense MLP)'}`,
          `hidden / vocab     ${s.hiddenSize} / ${s.vocabSize}`,
          `parameters         ${human(s.params)} total, ${human(s.activeParams)} active per token (+${human(s.mtpParams)} MTP)`,
          `KV cache / token   ${bytes(s.kvBytesPerTokenBf16)} ${s.attention === 'mla' ? 'latent' : 'K/V, GQA'} (bf16) vs ${bytes(s.mhaKvBytesPerTokenBf16)} for full MHA (${(s.mhaKvBytesPerTokenBf16 / s.kvBytesPerTokenBf16).toFixed(1)}x)`,
          `weights            ${bytes(s.totalBytes)}: ` + Object.entries(s.bytesByDtype).map(([d, b]) => `${d} ${bytes(b)}`).join(', '),
        ];
        process.stdout.write(lines.join('\n') + '\n');
      } finally {
        opened.close();
      }
    });
}
