/**
 * Finding a WebGPU adapter in Node: the `webgpu` npm package (Dawn) is imported lazily, so
 * the CPU path never loads it, and a machine without the package or without a driver is
 * reported as such rather than failing.
 *
 * Lifetime: Dawn's objects must not outlive the object `create()` returned (the process
 * crashes when it is garbage collected first), and while it is referenced Node does not
 * exit. Whoever holds an adapter or device keeps `gpu` alongside and drops both together.
 */
/// <reference types="@webgpu/types" />
import { existsSync, readdirSync } from 'node:fs';

interface DawnModule {
  create(options: string[]): GPU;
}

let dawn: Promise<DawnModule | null> | null = null;
let dawnError = '';

/** The `webgpu` package, or null when it is not installed (the reason is in `dawnLoadError()`). */
export function loadDawn(): Promise<DawnModule | null> {
  dawn ??= (async () => {
    const name = 'webgpu'; // not a literal: the build must not need the package
    try {
      return (await import(name)) as DawnModule;
    } catch (e) {
      dawnError = `the "webgpu" package cannot be loaded (${(e as Error).message.split('\n')[0]})`;
      return null;
    }
  })();
  return dawn;
}

export function dawnLoadError(): string {
  return dawnError;
}

export interface AdapterHandle {
  /** Keep this referenced for as long as `adapter` or anything made from it is used. */
  gpu: GPU;
  adapter: GPUAdapter;
}

/** Requests an adapter; null (with the reason in `why`) when the package or a driver is missing. */
export async function requestAdapter(options: GPURequestAdapterOptions = {}): Promise<(AdapterHandle & { why?: undefined }) | { why: string }> {
  const mod = await loadDawn();
  if (!mod) return { why: dawnError };
  const gpu = mod.create([]);
  const adapter = await gpu.requestAdapter(options);
  if (!adapter) return { why: 'no WebGPU adapter: no Vulkan, Metal or D3D12 driver found (on Linux without a GPU, install Mesa lavapipe: mesa-vulkan-drivers)' };
  return { gpu, adapter };
}

/**
 * Whether this machine may have a hardware GPU that Dawn could use. On Linux that needs a
 * GPU device node (DRM render node, NVIDIA or WSL's dxg); elsewhere we cannot tell and say yes.
 * `auto` checks this first so that a machine without a GPU never loads Dawn (which prints
 * driver warnings on stderr when probing).
 */
export function mayHaveHardwareGpu(): boolean {
  if (process.platform !== 'linux') return true;
  if (existsSync('/dev/nvidia0') || existsSync('/dev/dxg')) return true;
  try {
    return readdirSync('/dev/dri').some((n) => n.startsWith('renderD'));
  } catch {
    return false;
  }
}

/** What `shoal devices` shows for an adapter. */
export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** A software (CPU) implementation such as lavapipe or SwiftShader. */
  fallback: boolean;
  /** Smallest and largest subgroup size, when the adapter reports them. */
  subgroupSizes?: [number, number];
  features: string[];
  limits: Record<string, number>;
}

export function summarizeAdapter(adapter: GPUAdapter): AdapterSummary {
  const info = adapter.info;
  const limits: Record<string, number> = {};
  // The limits are getters on the prototype: enumerate with for-in.
  for (const k in adapter.limits) {
    const v = (adapter.limits as unknown as Record<string, unknown>)[k];
    if (typeof v === 'number') limits[k] = v;
  }
  const sg = info as { subgroupMinSize?: number; subgroupMaxSize?: number };
  const fallback = Boolean((info as { isFallbackAdapter?: boolean }).isFallbackAdapter ?? (adapter as { isFallbackAdapter?: boolean }).isFallbackAdapter);
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    fallback,
    subgroupSizes: sg.subgroupMinSize && sg.subgroupMaxSize ? [sg.subgroupMinSize, sg.subgroupMaxSize] : undefined,
    features: [...adapter.features].map(String).sort(),
    limits,
  };
}

/**
 * Every distinct adapter Dawn offers (asked for by power preference and as a fallback),
 * or the reason there is none.
 */
export async function listAdapters(): Promise<{ adapters: AdapterSummary[]; why?: string }> {
  const mod = await loadDawn();
  if (!mod) return { adapters: [], why: dawnError };
  let gpu: GPU | null = mod.create([]);
  const seen = new Set<string>();
  const adapters: AdapterSummary[] = [];
  const asks: GPURequestAdapterOptions[] = [{ powerPreference: 'high-performance' }, { powerPreference: 'low-power' }, { forceFallbackAdapter: true }];
  for (const ask of asks) {
    const a = await gpu.requestAdapter(ask);
    if (!a) continue;
    const s = summarizeAdapter(a);
    const key = [s.vendor, s.architecture, s.device, s.description].join('|');
    if (seen.has(key)) continue;
    seen.add(key);
    adapters.push(s);
  }
  gpu = null;
  return adapters.length ? { adapters } : { adapters, why: 'no WebGPU adapter: no Vulkan, Metal or D3D12 driver found' };
}

/** Why the WebGPU backend cannot run here, or undefined when an adapter exists. Holds on to nothing. */
export async function webgpuUnavailable(options: GPURequestAdapterOptions = {}): Promise<string | undefined> {
  const h = await requestAdapter(options);
  return h.why;
}
