/**
 * The expert-routing heatmap: one row per MoE layer, one column per routed expert; a cell's
 * colour is the share of the reply's tokens that chose that expert in that layer (the scale
 * runs from 0 to the largest share in the grid). Hovering a cell (or focusing it) shows its count.
 */
import type { Routing } from './api.js';
import { h } from './dom.js';

/** Light to dark blue (ColorBrewer "Blues", 6 stops). */
const STOPS: [number, number, number][] = [
  [239, 243, 255], [198, 219, 239], [158, 202, 225], [107, 174, 214], [49, 130, 189], [8, 81, 156],
];

export function colour(t: number): string {
  const x = Math.min(1, Math.max(0, t)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const a = STOPS[i]!;
  const b = STOPS[i + 1]!;
  const c = a.map((v, k) => Math.round(v + (b[k]! - v) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/**
 * Renders `routing` into `host`. `expertsPerToken` (K) turns a row's sum into tokens
 * (sum = tokens * K), so each cell can say what share of the tokens chose the expert.
 */
export function renderHeatmap(host: HTMLElement, routing: Routing, expertsPerToken: number): void {
  host.replaceChildren();
  const rows = routing.layers.length;
  const experts = routing.counts[0]?.length ?? 0;
  if (!rows || !experts) {
    host.append(h('p', { class: 'muted' }, 'No routing recorded (the model has no MoE layers, or nothing was generated).'));
    return;
  }
  const K = Math.max(1, expertsPerToken);
  const tokens = routing.counts.map((row) => row.reduce((a, b) => a + b, 0) / K);
  let maxShare = 0;
  routing.counts.forEach((row, i) => {
    for (const c of row) if (tokens[i]! > 0) maxShare = Math.max(maxShare, c / tokens[i]!);
  });

  const readout = h('div', { class: 'heat-readout', 'aria-live': 'polite' }, 'Hover a cell for its count.');
  const grid = h('div', { class: 'heat-grid', role: 'grid', 'aria-label': `expert routing: ${rows} layers by ${experts} experts` });
  grid.style.setProperty('--experts', String(experts));

  // Header row: expert numbers (every few when there are many).
  const every = experts <= 16 ? 1 : experts <= 64 ? 4 : 16;
  grid.append(h('div', { class: 'heat-corner' }, 'layer'));
  for (let e = 0; e < experts; e++) grid.append(h('div', { class: 'heat-col-label' }, e % every === 0 ? String(e) : ''));

  routing.layers.forEach((layer, i) => {
    grid.append(h('div', { class: 'heat-row-label', role: 'rowheader' }, String(layer)));
    const row = routing.counts[i]!;
    row.forEach((count, e) => {
      const share = tokens[i]! > 0 ? count / tokens[i]! : 0;
      const text = `layer ${layer}, expert ${e}: ${count} of ${Math.round(tokens[i]!)} tokens (${(share * 100).toFixed(1)}%)`;
      const cell = h('div', { class: 'heat-cell', role: 'gridcell', tabindex: -1, title: text, 'data-layer': layer, 'data-expert': e, 'data-count': count, 'aria-label': text });
      cell.style.setProperty('background-color', count === 0 ? 'var(--heat-zero)' : colour(maxShare > 0 ? share / maxShare : 0));
      grid.append(cell);
    });
  });
  grid.addEventListener('mouseover', (ev) => {
    const t = ev.target as HTMLElement;
    if (t.classList.contains('heat-cell')) readout.textContent = t.title;
  });

  const total = Math.round(tokens[0] ?? 0);
  const legend = h('div', { class: 'heat-legend' },
    h('span', {}, '0%'),
    h('span', { class: 'heat-scale', 'aria-hidden': 'true' }),
    h('span', {}, `${(maxShare * 100).toFixed(0)}% of tokens`),
  );
  host.append(
    h('p', { class: 'heat-caption' }, `${total} generated tokens × ${K} experts each, over ${rows} MoE layers × ${experts} experts. Uniform routing would be ${((K / experts) * 100).toFixed(0)}% per cell.`),
    h('div', { class: 'heat-scroll' }, grid),
    legend,
    readout,
  );
}
