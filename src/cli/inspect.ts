/** `shoal inspect`: what a checkpoint is, from its config and headers alone (no weights read). */
import type { Command } from 'commander';
import { openCheckpoint } from '../formats/checkpoint.js';
import { DeepseekModel, expectedTensors } from '../models/deepseek.js';
import type { DeepseekConfig } from '../models/config.js';
import type { Checkpoint } from '../formats/types.js';

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
  /** Latent cache per token over the main layers, stored as bf16 (what production engines store). */
  kvBytesPerTokenBf16: number;
  /** What standard multi-head attention would cache per token (bf16 K and V for every head). */
  mhaKvBytesPerTokenBf16: number;
  /** Bytes of tensor data per dtype as stored. */
  bytesByDtype: Record<string, number>;
  totalBytes: number;
}

export function summarize(ckpt: Checkpoint, cfg: DeepseekConfig): ModelSummary {
  let params = 0, mtpParams = 0, routed = 0;
  const layerOf = (name: string) => Number(/^model\.layers\.(\d+)\./.exec(name)?.[1] ?? -1);
  for (const [name, shape] of expectedTensors(cfg, true, (n) => ckpt.tensors.has(n))) {
    const n = shape.reduce((a, b) => a * b, 1);
    if (layerOf(name) >= cfg.numHiddenLayers) mtpParams += n;
    else {
      params += n;
      if (name.includes('.mlp.experts.')) routed += n;
    }
  }
  const activeParams = params - routed + (cfg.nRoutedExperts ? (routed * cfg.numExpertsPerTok) / cfg.nRoutedExperts : 0);
  const bytesByDtype: Record<string, number> = {};
  for (const name of ckpt.tensors.names()) {
    const info = ckpt.tensors.info(name);
    bytesByDtype[info.dtype] = (bytesByDtype[info.dtype] ?? 0) + info.byteLength;
  }
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
    kvBytesPerTokenBf16: cfg.numHiddenLayers * (cfg.kvLoraRank + cfg.qkRopeHeadDim) * 2,
    mhaKvBytesPerTokenBf16: cfg.numHiddenLayers * cfg.numAttentionHeads * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim + cfg.vHeadDim) * 2,
    bytesByDtype,
    totalBytes: ckpt.totalBytes,
  };
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
    .requiredOption('--model <dir>', 'Hugging Face model folder')
    .option('--json', 'print JSON')
    .action((o: { model: string; json?: boolean }) => {
      const ckpt = openCheckpoint(o.model);
      try {
        const cfg = DeepseekModel.checkCheckpoint(ckpt);
        const s = summarize(ckpt, cfg);
        if (o.json) {
          process.stdout.write(JSON.stringify(s, null, 2) + '\n');
          return;
        }
        const lines = [
          `architecture       ${s.architecture}`,
          `layers             ${s.layers} (${s.denseLayers} dense, ${s.moeLayers} MoE) + ${s.mtpLayers} MTP`,
          `experts            ${s.routedExperts} routed, ${s.sharedExperts} shared, ${s.expertsPerToken} per token`,
          `hidden / vocab     ${s.hiddenSize} / ${s.vocabSize}`,
          `parameters         ${human(s.params)} total, ${human(s.activeParams)} active per token (+${human(s.mtpParams)} MTP)`,
          `KV cache / token   ${bytes(s.kvBytesPerTokenBf16)} latent (bf16) vs ${bytes(s.mhaKvBytesPerTokenBf16)} for full MHA (${(s.mhaKvBytesPerTokenBf16 / s.kvBytesPerTokenBf16).toFixed(1)}x)`,
          `weights            ${bytes(s.totalBytes)}: ` + Object.entries(s.bytesByDtype).map(([d, b]) => `${d} ${bytes(b)}`).join(', '),
        ];
        process.stdout.write(lines.join('\n') + '\n');
      } finally {
        ckpt.tensors.close();
      }
    });
}
