/** `shoal devices`: the devices --device can name, with each WebGPU adapter's limits and features. */
import { cpus, totalmem } from 'node:os';
import type { Command } from 'commander';
import { listAdapters, mayHaveHardwareGpu, type AdapterSummary } from '../backends/webgpu/dawn.js';

/** Limits that decide what fits: buffer and binding sizes, workgroup memory, bindings per stage. */
const KEY_LIMITS = [
  'maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize',
  'maxStorageBuffersPerShaderStage', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupsPerDimension',
];

function bytes(n: number): string {
  if (n >= 2 ** 30) return `${+(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${+(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${+(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

export interface DevicesReport {
  cpu: { cores: number; model: string; memoryBytes: number };
  webgpu: { adapters: AdapterSummary[]; unavailable?: string };
  /** What --device auto picks here. */
  auto: 'webgpu' | 'cpu';
}

export async function devicesReport(): Promise<DevicesReport> {
  const cores = cpus();
  const { adapters, why } = await listAdapters();
  const hardware = mayHaveHardwareGpu() && adapters.some((a) => !a.fallback);
  return {
    cpu: { cores: cores.length, model: cores[0]?.model.trim() ?? 'unknown', memoryBytes: totalmem() },
    webgpu: { adapters, unavailable: why },
    auto: hardware ? 'webgpu' : 'cpu',
  };
}

/** An adapter's lines of the report: name, vendor and architecture, key limits, features. */
export function formatAdapter(a: AdapterSummary, label = ''): string {
  const name = a.description || [a.vendor, a.device].filter(Boolean).join(' ') || 'unknown adapter';
  const has = (f: string) => (a.features.includes(f) ? 'yes' : 'no');
  return [
    `${label.padEnd(6)}    ${name}${a.fallback ? '  (software: used by --device webgpu only, not auto)' : ''}`,
    `            vendor ${a.vendor || '?'}, architecture ${a.architecture || '?'}, device ${a.device || '?'}`,
    `            ${KEY_LIMITS.filter((k) => k in a.limits).map((k) => `${k} ${/Size$/.test(k) ? bytes(a.limits[k]) : a.limits[k]}`).join(', ')}`,
    `            shader-f16 ${has('shader-f16')}, subgroups ${has('subgroups')}${a.subgroupSizes ? ` (size ${a.subgroupSizes[0]}-${a.subgroupSizes[1]})` : ''}; features: ${a.features.join(' ') || 'none'}`,
  ].join('\n');
}

function formatReport(r: DevicesReport): string {
  const out: string[] = [];
  out.push(`cpu       WebAssembly SIMD kernels on ${r.cpu.cores} threads (cpu-ref: the TypeScript reference): ${r.cpu.model}, ${bytes(r.cpu.memoryBytes)} memory`);
  if (!r.webgpu.adapters.length) out.push(`webgpu    unavailable: ${r.webgpu.unavailable}`);
  r.webgpu.adapters.forEach((a, i) => out.push(formatAdapter(a, i === 0 ? 'webgpu' : '')));
  out.push(`auto      -> ${r.auto}`);
  return out.join('\n') + '\n';
}

export function registerDevices(program: Command): void {
  program
    .command('devices')
    .description('list the devices --device can use: the CPU and each WebGPU adapter (limits, features)')
    .option('--json', 'print the report as JSON (every limit and feature)')
    .action(async (o: { json?: boolean }) => {
      const r = await devicesReport();
      process.stdout.write(o.json ? JSON.stringify(r, null, 2) + '\n' : formatReport(r));
    });
}
