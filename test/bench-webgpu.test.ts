/**
 * bench/webgpu-decode.ts's core on its --tiny model: the synthetic GGUF (shape, parameter count,
 * bytes a decode step reads), the WebGPU bandwidth probe, a shoal round on WebGPU, and llama.cpp
 * on the same file (its Vulkan build when it sees a device, lavapipe included, else its CPU build,
 * saying so).
 * Skipped, with the reason, without a WebGPU adapter; the llama.cpp part without node-llama-cpp.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openGguf } from '../src/formats/gguf.js';
import { requestAdapter, webgpuUnavailable } from '../src/backends/webgpu/dawn.js';
import { tokenizerFromGguf } from '../src/tokenizer/gguf-tokenizer.js';
import {
  TINY, LLAMA_32_1B, denseParameters, llamaCppRound, measureBandwidth, shoalRound, stepBytes, writeSyntheticLlama,
} from '../bench/webgpu-decode.js';

const skip = await webgpuUnavailable();
const tmp = mkdtempSync(join(tmpdir(), 'shoal-bench-webgpu-'));
const file = join(tmp, 'tiny.gguf');
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('the synthetic model', () => {
  it('Llama-3.2-1B shapes make 1.24 B parameters', () => {
    assert.equal(denseParameters(LLAMA_32_1B), 1_235_814_400);
  });

  it('the tiny GGUF has its shapes, a working tokenizer, and a decode step reads every weight once', () => {
    writeSyntheticLlama(file, TINY);
    const f = openGguf(file);
    try {
      assert.equal(f.string('general.architecture'), 'llama');
      assert.equal(f.array('tokenizer.ggml.tokens')!.length, TINY.vocab);
      assert.ok(!f.tensors.has('output.weight'), 'tied embeddings');
      assert.deepEqual(f.info('blk.1.attn_k.weight').ne, [TINY.hidden, TINY.kvHeads * TINY.headDim]);
      const tok = tokenizerFromGguf(f);
      const ids = tok.encode(' the quick fox', { addSpecialTokens: false });
      assert.ok(ids.includes(256 + 8), 'the merges apply (" the" is one token)');
      assert.equal(tok.decode(ids), ' the quick fox');
      const s = stepBytes(file, 100);
      assert.equal(s.parameters, denseParameters(TINY));
      // Tied: the whole file's tensor data (the embedding is the LM head), q8_0 = 34 bytes per 32.
      const f32 = (2 * TINY.layers + 1) * TINY.hidden;
      assert.equal(s.weights, ((s.parameters - f32) / 32) * 34 + f32 * 4);
      assert.equal(s.kvCache, 100 * TINY.layers * 2 * TINY.kvHeads * TINY.headDim * 2);
      assert.ok(statSync(file).size > s.weights);
    } finally {
      f.close();
    }
  });
});

describe('decode benchmark on WebGPU', { skip }, () => {
  it('measures the adapter bandwidth', async () => {
    const bw = await measureBandwidth(16 * 2 ** 20, 2);
    assert.equal(bw.bytes, 16 * 2 ** 20);
    assert.ok(bw.readGBs > 0 && bw.copyGBs > 0, JSON.stringify(bw));
    assert.ok(bw.adapter.vendor !== undefined && Array.isArray(bw.adapter.features));
  });

  it('shoal decodes the tiny model on webgpu in a child process', () => {
    writeSyntheticLlama(file, TINY);
    const r = shoalRound(file, 4, 6);
    assert.match(r.device, /^webgpu/);
    assert.ok(Number.isFinite(r.decode) && r.decode > 0, String(r.decode));
  });

  it('llama.cpp decodes the same file (Vulkan if it sees a device, else CPU)', async (t) => {
    writeSyntheticLlama(file, TINY);
    const h = await requestAdapter();
    // llama.cpp's Vulkan backend skips CPU devices such as lavapipe unless they are named.
    const env = process.env.GGML_VK_VISIBLE_DEVICES;
    if (h.why === undefined && isSoftware(h.adapter) && env === undefined) process.env.GGML_VK_VISIBLE_DEVICES = '0';
    try {
      let r = llamaCppRound(file, TINY.vocab, 4, 6, 'vulkan', 1);
      if ('why' in r) {
        t.diagnostic(`llama.cpp Vulkan: ${r.why}; using its CPU build`);
        r = llamaCppRound(file, TINY.vocab, 4, 6, false, 1);
      }
      if ('why' in r) { t.skip(r.why); return; }
      t.diagnostic(`llama.cpp ${r.device}: ${r.decode.toFixed(0)} tok/s`);
      assert.ok(Number.isFinite(r.decode) && r.decode > 0, String(r.decode));
      if (r.device.startsWith('vulkan')) assert.match(r.device, /[1-9]\d* layers offloaded/);
    } finally {
      if (env === undefined) delete process.env.GGML_VK_VISIBLE_DEVICES;
    }
  });
});

/** A software (CPU) adapter such as lavapipe. */
function isSoftware(adapter: GPUAdapter): boolean {
  return Boolean((adapter.info as { isFallbackAdapter?: boolean }).isFallbackAdapter) || adapter.info.architecture === 'software';
}
