/** Backend registry: names accepted by --device, and how to create each. */
import { UserError } from '../errors.js';
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu-backend.js';

export const DEVICE_NAMES = ['cpu', 'cpu-ref', 'webgpu', 'auto'] as const;

export interface CreateBackendOptions {
  /** Threads of the fast CPU backend, the calling one included (default: every core). */
  threads?: number;
}

/**
 * Creates the backend for a --device value.
 * - `cpu`: WebAssembly SIMD kernels on all cores when they load, else the reference.
 * - `cpu-ref`: the TypeScript reference backend (what the conformance suite trusts).
 * - `webgpu`: WGSL kernels through Dawn (the `webgpu` package) on any adapter, software
 *   ones (Mesa lavapipe) included; a user error when there is none.
 * - `auto`: webgpu on a hardware adapter, else cpu. Software adapters are not picked (they
 *   run on the same CPU), and on Linux without a GPU device node Dawn is not even loaded,
 *   so the fallback to cpu is immediate and silent.
 */
export async function createBackend(device: string, opts: CreateBackendOptions = {}): Promise<Backend> {
  switch (device) {
    case 'cpu':
      return fastCpu(opts.threads);
    case 'cpu-ref':
      return new CpuBackend();
    case 'webgpu': {
      const { WebGpuBackend } = await import('./webgpu/webgpu-backend.js');
      try {
        return await WebGpuBackend.create();
      } catch (e) {
        throw new UserError((e as Error).message, '--device webgpu');
      }
    }
    case 'auto':
      return (await hardwareWebGpu()) ?? (await fastCpu(opts.threads));
    default:
      throw new UserError(`unknown device "${device}" (choose from: ${DEVICE_NAMES.join(', ')})`, '--device');
  }
}

/** The fast CPU backend when its kernels load (built by scripts/build-wasm.js), else the TypeScript reference. */
async function fastCpu(threads?: number): Promise<Backend> {
  const { SimdCpuBackend, simdCpuAvailable } = await import('./cpu-simd/simd-backend.js');
  return simdCpuAvailable() ? SimdCpuBackend.create({ threads }) : new CpuBackend();
}

/** A WebGPU backend on a hardware adapter, or null (quietly) when there is none. */
async function hardwareWebGpu(): Promise<Backend | null> {
  const { mayHaveHardwareGpu } = await import('./webgpu/dawn.js');
  if (!mayHaveHardwareGpu()) return null;
  try {
    const { WebGpuBackend } = await import('./webgpu/webgpu-backend.js');
    const b = await WebGpuBackend.create({ adapter: { powerPreference: 'high-performance' } });
    if (!b.isFallbackAdapter) return b;
    b.dispose();
  } catch {
    // no package, no driver, or no device: the CPU backend it is
  }
  return null;
}
