/** Backend registry: names accepted by --device, and how to create each. */
import { UserError } from '../errors.js';
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu-backend.js';

export const DEVICE_NAMES = ['cpu', 'webgpu', 'auto'] as const;

/**
 * Creates the backend for a --device value.
 * - `cpu`: the TypeScript reference backend.
 * - `webgpu`: WGSL kernels through Dawn (the `webgpu` package) on any adapter, software
 *   ones (Mesa lavapipe) included; a user error when there is none.
 * - `auto`: webgpu on a hardware adapter, else cpu. Software adapters are not picked (they
 *   run on the same CPU), and on Linux without a GPU device node Dawn is not even loaded,
 *   so the fallback to cpu is immediate and silent.
 */
export async function createBackend(device: string): Promise<Backend> {
  switch (device) {
    case 'cpu':
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
      return (await hardwareWebGpu()) ?? new CpuBackend();
    default:
      throw new UserError(`unknown device "${device}" (choose from: ${DEVICE_NAMES.join(', ')})`, '--device');
  }
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
