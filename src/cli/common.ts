/** Helpers shared by CLI commands: option parsing and loading an engine with progress. */
import { InvalidArgumentError } from 'commander';
import { createBackend, type CreateBackendOptions } from '../backends/index.js';
import { Engine, type EngineOptions } from '../engine/engine.js';
import { Progress } from './progress.js';

/** Commander parser for integers within bounds. */
export function intOption(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected an integer from ${min} to ${max}`);
    return n;
  };
}

/** Commander parser for finite numbers. */
export function numberOption(v: string): number {
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError('expected a number');
  return n;
}

/** Loads an engine on the requested device, showing a progress bar on stderr. */
export async function loadEngine(model: string, device: string, opts: Omit<EngineOptions, 'backend'> = {}, backendOpts: CreateBackendOptions = {}): Promise<Engine> {
  const backend = await createBackend(device, backendOpts);
  const progress = new Progress('loading weights');
  const engine = await Engine.load(model, { ...opts, backend, onProgress: (d, t) => progress.update(d, t) });
  progress.done();
  return engine;
}
