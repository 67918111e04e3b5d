/**
 * Hand-written SVG for `shoal plan --plot FILE.svg`:
 *  left:  decode throughput per chip against TPOT, one curve per decode instance size
 *         (batch swept from 1 sequence per group to the KV-memory limit), SLO as a dashed line;
 *  right: cost per million input and output tokens for the top deployments, as bars.
 */
import { decodePerf, maxBatchByMemory } from './perf.js';
import type { SearchResult } from './search.js';

const W = 1000;
const H = 540;
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b'];

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = 0; v <= max * 1.0001 + step; v += step) {
    ticks.push(+v.toPrecision(12));
    if (v >= max) break;
  }
  return ticks;
}

function fmt(v: number): string {
  if (v >= 1000) return `${+(v / 1000).toPrecision(3)}k`;
  if (v >= 10) return String(Math.round(v));
  return String(+v.toPrecision(2));
}

interface Curve {
  label: string;
  points: Array<[number, number]>; // [tpot ms, tokens/s/chip]
}

/** Throughput-vs-latency curves for up to `max` decode instance sizes. */
export function decodeCurves(res: SearchResult, max = 5): Curve[] {
  const plans = res.decodePlans;
  const pick = plans.length <= max ? plans : Array.from({ length: max }, (_, i) => plans[Math.round((i * (plans.length - 1)) / (max - 1))]);
  const curves: Curve[] = [];
  for (const d of pick) {
    const cap = Math.max(1, Math.min(maxBatchByMemory(res.scenario, d.plan), 4096));
    const pts: Array<[number, number]> = [];
    const seen = new Set<number>();
    for (let i = 0; i <= 40; i++) {
      const b = Math.max(1, Math.round(cap ** (i / 40)));
      if (seen.has(b)) continue;
      seen.add(b);
      const r = decodePerf(res.scenario, d.plan, b);
      pts.push([r.tpot * 1000, r.tokensPerSecPerChip]);
    }
    curves.push({ label: `${d.chipsPerInstance} chips ${d.text}`, points: pts });
  }
  return curves;
}

export function renderPlot(res: SearchResult): string {
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif" font-size="12">`);
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  const title = `${res.scenario.model.spec.name} on ${res.chip.name} (${res.precision.toUpperCase()}), prompt ${res.request.promptTokens}, output ${res.request.outputTokens}`;
  out.push(`<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`);

  // Left panel: decode tokens/s per chip vs TPOT.
  const curves = decodeCurves(res);
  const slo = res.request.sloTpotMs;
  const L = { x: 70, y: 50, w: 380, h: 320 };
  const xMax = Math.min(Math.max(slo * 3, ...curves.flatMap((c) => c.points.map((p) => p[0]))), slo * 4);
  const yMax = Math.max(1, ...curves.flatMap((c) => c.points.filter((p) => p[0] <= xMax).map((p) => p[1])));
  const xt = niceTicks(xMax);
  const yt = niceTicks(yMax);
  const sx = (v: number) => +(L.x + (v / xt[xt.length - 1]) * L.w).toFixed(1);
  const sy = (v: number) => +(L.y + L.h - (v / yt[yt.length - 1]) * L.h).toFixed(1);
  out.push(`<text x="${L.x + L.w / 2}" y="${L.y - 8}" text-anchor="middle" font-weight="bold">Decode throughput per chip vs. TPOT</text>`);
  for (const t of xt) {
    out.push(`<line x1="${sx(t)}" y1="${L.y}" x2="${sx(t)}" y2="${L.y + L.h}" stroke="#eee"/>`);
    out.push(`<text x="${sx(t)}" y="${L.y + L.h + 16}" text-anchor="middle">${fmt(t)}</text>`);
  }
  for (const t of yt) {
    out.push(`<line x1="${L.x}" y1="${sy(t)}" x2="${L.x + L.w}" y2="${sy(t)}" stroke="#eee"/>`);
    out.push(`<text x="${L.x - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`);
  }
  out.push(`<rect x="${L.x}" y="${L.y}" width="${L.w}" height="${L.h}" fill="none" stroke="#333"/>`);
  out.push(`<text x="${L.x + L.w / 2}" y="${L.y + L.h + 34}" text-anchor="middle">TPOT (ms per output token)</text>`);
  out.push(`<text transform="translate(${L.x - 50},${L.y + L.h / 2}) rotate(-90)" text-anchor="middle">output tokens/s per chip</text>`);
  out.push(`<line x1="${sx(slo)}" y1="${L.y}" x2="${sx(slo)}" y2="${L.y + L.h}" stroke="#555" stroke-dasharray="5,4"/>`);
  out.push(`<text x="${sx(slo) + 4}" y="${L.y + 14}" fill="#555">SLO ${slo} ms</text>`);
  out.push(`<clipPath id="plot"><rect x="${L.x}" y="${L.y}" width="${L.w}" height="${L.h}"/></clipPath>`);
  curves.forEach((c, i) => {
    const col = COLORS[i % COLORS.length];
    const d = c.points.map((p, j) => `${j ? 'L' : 'M'}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
    out.push(`<path d="${d}" fill="none" stroke="${col}" stroke-width="2" clip-path="url(#plot)"/>`);
    const ly = L.y + L.h + 52 + i * 15;
    out.push(`<line x1="${L.x}" y1="${ly - 4}" x2="${L.x + 18}" y2="${ly - 4}" stroke="${col}" stroke-width="2"/>`);
    out.push(`<text x="${L.x + 24}" y="${ly}">${esc(c.label)}</text>`);
  });

  // Right panel: $/M tokens bars for the top deployments.
  const R = { x: 570, y: 50, w: 390, h: 320 };
  const cands = res.candidates.slice(0, 6);
  const vMax = Math.max(...cands.flatMap((c) => [c.usdPerMillionInput, c.usdPerMillionOutput]), 1e-9);
  const vt = niceTicks(vMax * 1.12); // headroom for the value labels above the bars
  const by = (v: number) => +(R.y + R.h - (v / vt[vt.length - 1]) * R.h).toFixed(1);
  out.push(`<text x="${R.x + R.w / 2}" y="${R.y - 8}" text-anchor="middle" font-weight="bold">Cost per million tokens (USD)</text>`);
  for (const t of vt) {
    out.push(`<line x1="${R.x}" y1="${by(t)}" x2="${R.x + R.w}" y2="${by(t)}" stroke="#eee"/>`);
    out.push(`<text x="${R.x - 6}" y="${by(t) + 4}" text-anchor="end">${t < 1 ? t.toFixed(2) : fmt(t)}</text>`);
  }
  out.push(`<rect x="${R.x}" y="${R.y}" width="${R.w}" height="${R.h}" fill="none" stroke="#333"/>`);
  const slot = R.w / Math.max(cands.length, 1);
  const bw = Math.min(26, slot / 3);
  cands.forEach((c, i) => {
    const cx = R.x + slot * (i + 0.5);
    const bars: Array<[number, string]> = [[c.usdPerMillionInput, '#7fa7d6'], [c.usdPerMillionOutput, '#d67f7f']];
    bars.forEach(([v, col], j) => {
      const x = cx - bw + j * bw;
      out.push(`<rect x="${x.toFixed(1)}" y="${by(v).toFixed(1)}" width="${bw.toFixed(1)}" height="${(R.y + R.h - by(v)).toFixed(1)}" fill="${col}"><title>${esc(c.parallelismText)}: $${v.toFixed(3)}/M</title></rect>`);
      out.push(`<text x="${(x + bw / 2).toFixed(1)}" y="${(by(v) - 3).toFixed(1)}" text-anchor="middle" font-size="10">${v.toFixed(2)}</text>`);
    });
    // Two short lines so six or more bars never overlap their labels.
    out.push(`<text x="${cx}" y="${R.y + R.h + 16}" text-anchor="middle">#${i + 1}<tspan x="${cx}" dy="13">${c.chips} chips</tspan></text>`);
  });
  out.push(`<rect x="${R.x}" y="${R.y + R.h + 40}" width="12" height="12" fill="#7fa7d6"/><text x="${R.x + 18}" y="${R.y + R.h + 50}">input (prefill)</text>`);
  out.push(`<rect x="${R.x + 130}" y="${R.y + R.h + 40}" width="12" height="12" fill="#d67f7f"/><text x="${R.x + 148}" y="${R.y + R.h + 50}">output (decode)</text>`);
  out.push(`<text x="${R.x}" y="${R.y + R.h + 72}" font-size="11" fill="#555">${esc(`$${res.chip.pricePerHour.value}/chip-hour; deployments as ranked in the table`)}</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
