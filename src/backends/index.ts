/** Backend registry: names accepted by --device, and how to create each. */
import { UserError } from '../errors.js';
import type { Backend } from './backend.js';
import { CpuBackend } from './cpu/cpu-backend.js';

export const DEVICE_NAMES = ['cpu', 'auto'] as const;

/** Creates the backend for a --device value. `auto` picks the best available one. */
export async function createBackend(device: string): Promise<Backend> {
  switch (device) {
    case 'cpu':
    case 'auto':
      return new CpuBackend();
    default:
      throw new UserError(`unknown device "${device}" (choose from: ${DEVICE_NAMES.join(', ')})`, '--device');
  }
}
