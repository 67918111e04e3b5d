/**
 * Hardware lookup for the planner: the catalog in hardware-data.ts plus `local`, a description
 * of the machine shoal runs on, measured on the spot (memory bandwidth from a typed-array copy,
 * cores from os.cpus()).
 */
import os from 'node:os';
import { UserError } from '../errors.js';
import { CHIPS, type ChipSpec, type Figure, type Precision } from './hardware-data.js';

export { CHIPS };
export type { ChipSpec, Figure, Precision };

const ALIASES: Record<string, string> = {
  '910b': 'ascend-910b',
  '910c': 'ascend-910c',
  '950pr': 'ascend-950pr',
  '950dt': 'ascend-950dt',
  'h100-sxm': 'h100',
  'h100sxm': 'h100',
  'h200-sxm': 'h200',
  'h800-sxm': 'h800',
  'mi300': 'mi300x',
};

export function chipNames(): string[] {
  return [...CHIPS.map((c) => c.name), 'local'];
}

/** Finds a chip by name (case-insensitive, a few aliases). Throws UserError for unknown names. */
export function getChip(name: string): ChipSpec {
  const key = name.trim().toLowerCase().replace(/_/g, '-');
  if (key === 'local') return localChip();
  const resolved = ALIASES[key] ?? ALIASES[key.replace(/^ascend-?/, '')] ?? key;
  const chip = CHIPS.find((c) => c.name === resolved);
  if (!chip) throw new UserError(`unknown hardware "${name}" (known: ${chipNames().join(', ')})`, '--hardware');
  return chip;
}

/** The precisions a chip has tensor units for, fastest first. */
export function supportedPrecisions(chip: ChipSpec): Precision[] {
  return (['fp4', 'fp8', 'int8', 'bf16'] as Precision[]).filter((p) => chip.tflops[p] !== undefined);
}

/** Peak dense TFLOPS for a precision; throws UserError when the chip has no such unit. */
export function peakTflops(chip: ChipSpec, precision: Precision): number {
  const f = chip.tflops[precision];
  if (!f) {
    throw new UserError(
      `${chip.name} has no ${precision.toUpperCase()} tensor units (it supports ${supportedPrecisions(chip).join(', ')})`,
      '--precision',
    );
  }
  return f.value;
}

export interface BandwidthProbe {
  gbPerS: number;
  bytes: number;
  seconds: number;
}

/**
 * Memory bandwidth probe: repeatedly copies a 64 MiB Float64Array (well past any cache) and
 * counts read + write bytes. Takes ~0.1-0.3 s. A single JS thread rarely saturates all memory
 * channels, so this is a lower bound on the machine's bandwidth.
 */
export function probeMemoryBandwidth(mib = 64, minSeconds = 0.12): BandwidthProbe {
  const n = (mib * 1024 * 1024) / 8;
  const src = new Float64Array(n);
  const dst = new Float64Array(n);
  for (let i = 0; i < n; i += 512) src[i] = i; // touch pages
  dst.set(src); // warm-up, also faults in dst
  let copies = 0;
  const t0 = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < minSeconds || copies < 4) {
    if (copies % 2 === 0) dst.set(src);
    else src.set(dst);
    copies++;
    elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  }
  const bytes = copies * n * 8 * 2; // each copy reads and writes n doubles
  return { gbPerS: bytes / elapsed / 1e9, bytes, seconds: elapsed };
}

let localCache: ChipSpec | undefined;

/** Describes this machine as a "chip": all cores, all memory, measured bandwidth. */
export function localChip(): ChipSpec {
  if (localCache) return localCache;
  const cpus = os.cpus();
  const cores = Math.max(1, cpus.length);
  const mhz = cpus.reduce((a, c) => Math.max(a, c.speed || 0), 0) || 2500;
  const probe = probeMemoryBandwidth();
  // 32 FP32 FLOPs/cycle/core = two 8-wide FMA units (AVX2); BF16 runs at the FP32 rate on most
  // CPUs without AMX, INT8 (VNNI) at about twice that. All three are estimates, not measurements.
  const fp32 = (cores * mhz * 1e6 * 32) / 1e12;
  const where = `measured on this machine (${cores} logical cores, ${Math.round(mhz)} MHz, ${cpus[0]?.model?.trim() ?? 'unknown CPU'})`;
  localCache = {
    name: 'local',
    vendor: 'this machine',
    description: `this machine: ${cores} CPU cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
    status: 'measured',
    tflops: {
      bf16: { value: fp32, source: where, note: 'estimate: cores x clock x 32 FLOP/cycle (AVX2 FMA), not measured' },
      int8: { value: fp32 * 2, source: where, note: 'estimate: 2x the FP32 rate (VNNI), not measured' },
    },
    memoryGB: { value: os.totalmem() / 1e9, source: 'os.totalmem()' },
    memoryBandwidthGBs: {
      value: probe.gbPerS,
      source: `typed-array copy probe: ${(probe.bytes / 1e9).toFixed(1)} GB moved in ${(probe.seconds * 1000).toFixed(0)} ms`,
      note: 'single-thread measurement, a lower bound',
    },
    scaleUpGBs: { value: 0, source: 'single machine: no scale-up fabric' },
    scaleUpDomain: { value: 1, source: 'single machine' },
    scaleOutGBs: { value: 1.25, source: 'assumed 10 GbE', note: 'estimate' },
    powerW: { value: Math.max(65, cores * 6), source: 'about 6 W per core', note: 'estimate' },
    pricePerHour: { value: 0.05 * cores, source: 'about $0.05 per core-hour (cloud VM pricing)', note: 'estimate' },
    ranksPerChip: 1,
  };
  return localCache;
}

/** A copy of `chip` with the price replaced (for --price-per-hour). */
export function withPrice(chip: ChipSpec, usdPerHour: number): ChipSpec {
  return { ...chip, pricePerHour: { value: usdPerHour, source: '--price-per-hour' } };
}

/** Per-rank view of a chip (a 910C die, or the whole chip when ranksPerChip is 1). */
export interface RankSpec {
  chip: ChipSpec;
  peakTflops: Record<Precision, number | undefined>;
  memoryBytes: number;
  memoryBandwidth: number; // bytes/s
  scaleUp: number; // bytes/s per rank, one direction
  scaleOut: number; // bytes/s per rank, one direction
  /** Ranks in one scale-up domain. */
  domainRanks: number;
}

export function rankSpec(chip: ChipSpec): RankSpec {
  const r = chip.ranksPerChip;
  const t = (p: Precision) => (chip.tflops[p] ? chip.tflops[p]!.value / r : undefined);
  return {
    chip,
    peakTflops: { bf16: t('bf16'), fp8: t('fp8'), int8: t('int8'), fp4: t('fp4') },
    memoryBytes: (chip.memoryGB.value * 1e9) / r,
    memoryBandwidth: (chip.memoryBandwidthGBs.value * 1e9) / r,
    scaleUp: (chip.scaleUpGBs.value * 1e9) / r,
    scaleOut: (chip.scaleOutGBs.value * 1e9) / r,
    domainRanks: Math.max(1, chip.scaleUpDomain.value * r),
  };
}
