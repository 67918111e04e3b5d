/**
 * bench/webgpu-decode.ts's core on its --tiny model: the synthetic GGUF (shape, parameter count,
 * bytes a decode step reads), the WebGPU bandwidth probe, a shoal round on WebGPU, and llama.cpp
 * on the same file (its Vulkan build on a hardware adapter, else its CPU build, saying so), and
 * the deepseek2 MoE variant's file and a shoal round on it.
 * Skipped, with the reason, without a WebGPU adapter; the llama.cpp part without node-llama-cpp.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GGML, openGguf } from '../src/formats/gguf.js';
import { requestAdapter, webgpuUnavailable } from '../src/backends/webgpu/dawn.js';
import { tokenizerFromGguf } from '../src/tokenizer/gguf-tokenizer.js';
import {
  TINY, TINY_MOE, LLAMA_32_1B, denseParameters, llamaCppRound, measureBandwidth, shoalRound, stepBytes, writeSyntheticDeepseek2, writeSyntheticLlama,
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
    // On a software adapter (lavapipe) llama.cpp's Vulkan build runs only when GGML_VK_VISIBLE_DEVICES
    // names it, and then compiles its pipelines for about 70 s on a cold Mesa shader cache: too
    // long for a test, so its CPU build runs unless SHOAL_TEST_LLAMA_VULKAN=1.
    const software = h.why === undefined && isSoftware(h.adapter);
    const vulkan = !software || process.env.SHOAL_TEST_LLAMA_VULKAN === '1';
    const env = process.env.GGML_VK_VISIBLE_DEVICES;
    if (software && vulkan && env === undefined) process.env.GGML_VK_VISIBLE_DEVICES = '0';
    try {
      let r = vulkan ? llamaCppRound(file, TINY.vocab, 4, 6, 'vulkan', 1) : { why: 'software adapter (SHOAL_TEST_LLAMA_VULKAN=1 tries it)' };
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

describe('the synthetic deepseek2 MoE', () => {
  const moe = join(tmp, 'tiny-moe.gguf');

  it('a step reads the active experts only, and the MLA cache', () => {
    writeSyntheticDeepseek2(moe, TINY_MOE);
    const f = openGguf(moe);
    try {
      assert.equal(f.string('general.architecture'), 'deepseek2');
      assert.deepEqual(f.info('blk.1.ffn_up_exps.weight').ne, [TINY_MOE.hidden, TINY_MOE.expertFfn, TINY_MOE.experts]);
      assert.deepEqual(f.info('blk.1.attn_k_b.weight').ne, [TINY_MOE.nopeDim, TINY_MOE.kvLoraRank, TINY_MOE.heads]);
      let all = 0, experts = 0;
      for (const [name, t] of f.tensors) {
        const n = t.ne.reduce((x, y) => x * y, 1), bytes = t.type === GGML.F32 ? n * 4 : (n / 32) * 34;
        all += bytes;
        if (name.endsWith('_exps.weight')) experts += bytes;
      }
      const embdRows = f.info('token_embd.weight').ne[1];
      const embd = (TINY_MOE.vocab * TINY_MOE.hidden / 32) * 34;
      const s = stepBytes(moe, 10);
      assert.equal(s.weights, all - embd + embd / embdRows - experts + (experts * TINY_MOE.expertsUsed) / TINY_MOE.experts);
      assert.equal(s.kvCache, 10 * TINY_MOE.layers * (TINY_MOE.kvLoraRank + TINY_MOE.ropeDim) * 2);
    } finally {
      f.close();
    }
  });

  it('shoal decodes it on webgpu', { skip }, () => {
    writeSyntheticDeepseek2(moe, TINY_MOE);
    const r = shoalRound(moe, 4, 6);
    assert.ok(Number.isFinite(r.decode) && r.decode > 0, String(r.decode));
  });
});

/** A software (CPU) adapter such as lavapipe. */
function isSoftware(adapter: GPUAdapter): boolean {
  return Boolean((adapter.info as { isFallbackAdapter?: boolean }).isFallbackAdapter) || adapter.info.architecture === 'software';
}
