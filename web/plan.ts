/** The Plan view: `shoal plan` through POST /api/plan (a table of configurations and the SVG plot). */
import { ApiError, getJson, postJson } from './api.js';
import { byId, fmt, h } from './dom.js';

interface Catalog {
  models: { name: string; hf_id: string; summary: string; mtp: boolean; max_context: number }[];
  hardware: { name: string; vendor: string; description: string; precisions: string[] }[];
  precisions: string[];
  defaults: { prompt_tokens: number; output_tokens: number; slo_tpot_ms: number; cache_hit_rate: number; top: number };
}

interface Row {
  chips: number;
  mode: string;
  parallelism: { summary: string };
  prefill_tokens_per_s_per_chip: number;
  decode_tokens_per_s_per_chip: number;
  tpot_ms: number;
  ttft_ms: number;
  users_served: number;
  requests_per_s: number;
  usd_per_million_input_tokens: number;
  usd_per_million_output_tokens: number;
  usd_per_request: number;
  joules_per_output_token: number;
}

interface PlanResult {
  model: { name: string; summary: string };
  hardware: { name: string; description: string; price_per_hour: number; power_w: number };
  precision: string;
  workload: { prompt_tokens: number; output_tokens: number; slo_tpot_ms: number; chips: number | null };
  ranked_by: string;
  best: Row;
  candidates: Row[];
  svg: string;
}

const money = (v: number) => (v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));

export class PlanView {
  private readonly form = byId<HTMLFormElement>('plan-form');
  private readonly out = byId('plan-result');
  private catalog: Catalog | null = null;
  private plotUrl: string | null = null;
  private loading: Promise<void> | null = null;

  constructor() {
    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      void this.run();
    });
    this.select('hardware').addEventListener('change', () => this.updatePrecisions());
  }

  private select(name: string): HTMLSelectElement {
    return this.form.elements.namedItem(name) as HTMLSelectElement;
  }

  private input(name: string): HTMLInputElement {
    return this.form.elements.namedItem(name) as HTMLInputElement;
  }

  /** Fills the form from GET /api/plan (once, when the tab is first shown). */
  load(): Promise<void> {
    this.loading ??= (async () => {
      try {
        const c = await getJson<Catalog>('/api/plan');
        this.catalog = c;
        this.select('model').replaceChildren(...c.models.map((m) => h('option', { value: m.name, title: m.summary, selected: m.name === 'deepseek-r1' }, m.name)));
        this.select('hardware').replaceChildren(...c.hardware.map((x) => h('option', { value: x.name, title: x.description, selected: x.name === 'h100' }, `${x.name} (${x.vendor})`)));
        this.input('prompt_tokens').placeholder = String(c.defaults.prompt_tokens);
        this.input('output_tokens').placeholder = String(c.defaults.output_tokens);
        this.input('slo_tpot_ms').placeholder = String(c.defaults.slo_tpot_ms);
        this.updatePrecisions();
      } catch (e) {
        this.loading = null;
        this.showError(e);
      }
    })();
    return this.loading;
  }

  private updatePrecisions(): void {
    const chip = this.catalog?.hardware.find((x) => x.name === this.select('hardware').value);
    const sel = this.select('precision');
    const keep = sel.value;
    const list = chip?.precisions ?? this.catalog?.precisions ?? [];
    sel.replaceChildren(h('option', { value: '', title: 'the checkpoint format if the chip runs it, else INT8' }, 'auto'), ...list.map((p) => h('option', { value: p, selected: p === keep }, p.toUpperCase())));
  }

  private body(): Record<string, unknown> {
    const b: Record<string, unknown> = { model: this.select('model').value, hardware: this.select('hardware').value };
    if (this.select('precision').value) b['precision'] = this.select('precision').value;
    for (const name of ['prompt_tokens', 'output_tokens', 'slo_tpot_ms', 'slo_ttft_ms', 'chips', 'mtp_acceptance', 'cache_hit_rate']) {
      const v = this.input(name).value.trim();
      if (v === '') continue;
      const n = Number(v);
      b[name] = Number.isFinite(n) ? n : v; // the server names a non-number field in its 400
    }
    return b;
  }

  async run(): Promise<void> {
    await this.load();
    const btn = byId<HTMLButtonElement>('plan-run');
    btn.disabled = true;
    this.out.setAttribute('aria-busy', 'true');
    this.form.querySelectorAll('.invalid').forEach((el) => el.classList.remove('invalid'));
    try {
      const r = await postJson<PlanResult>('/api/plan', this.body());
      this.show(r);
    } catch (e) {
      this.showError(e);
    } finally {
      btn.disabled = false;
      this.out.removeAttribute('aria-busy');
    }
  }

  private showError(e: unknown): void {
    const msg = e instanceof Error ? e.message : String(e);
    const field = e instanceof ApiError && e.param ? this.form.elements.namedItem(e.param) : null;
    if (field instanceof HTMLElement) field.classList.add('invalid');
    this.out.replaceChildren(h('p', { class: 'error-box', role: 'alert' }, msg));
  }

  private show(r: PlanResult): void {
    const head = ['#', 'chips', 'parallelism', 'prefill tok/s/chip', 'decode tok/s/chip', 'TPOT ms', 'TTFT ms', 'users', '$/M in', '$/M out', 'J/tok out'];
    const rows = r.candidates.map((c, i) =>
      h('tr', { class: i === 0 ? 'best' : false },
        h('td', {}, i + 1), h('td', {}, c.chips.toLocaleString('en-US')), h('td', { class: 'text' }, c.parallelism.summary),
        h('td', {}, fmt(c.prefill_tokens_per_s_per_chip, 0)), h('td', {}, fmt(c.decode_tokens_per_s_per_chip, 0)),
        h('td', {}, fmt(c.tpot_ms)), h('td', {}, fmt(c.ttft_ms, 0)), h('td', {}, fmt(c.users_served, 0)),
        h('td', {}, money(c.usd_per_million_input_tokens)), h('td', {}, money(c.usd_per_million_output_tokens)),
        h('td', {}, c.joules_per_output_token.toFixed(2)),
      ));
    const table = h('table', { class: 'plan-table' },
      h('thead', {}, h('tr', {}, ...head.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, ...rows),
    );
    if (this.plotUrl) URL.revokeObjectURL(this.plotUrl);
    // As an <img> from a blob: the SVG is shown, never run (no scripts, no DOM access).
    this.plotUrl = URL.createObjectURL(new Blob([r.svg], { type: 'image/svg+xml' }));
    const w = r.workload;
    this.out.replaceChildren(
      h('p', { class: 'plan-summary' },
        h('strong', {}, `${r.model.name} on ${r.hardware.name}`), ` (${r.precision.toUpperCase()} weights): prompt ${w.prompt_tokens} + output ${w.output_tokens} tokens, TPOT ≤ ${w.slo_tpot_ms} ms`,
        w.chips ? `, at most ${w.chips} chips` : '', '.'),
      h('p', { class: 'muted' }, `${r.model.summary}. ${r.hardware.description}; $${r.hardware.price_per_hour.toFixed(2)}/chip-hour, ${r.hardware.power_w} W.`),
      h('div', { class: 'table-scroll' }, table),
      h('p', { class: 'muted' }, `Ranked by ${r.ranked_by === 'requests_per_s' ? 'requests/s within the chip budget' : 'cost per request'}; the first row is the best. Costs assume full utilisation at the listed price.`),
      h('img', { class: 'plan-plot', src: this.plotUrl, alt: `decode throughput per chip against TPOT, and cost per million tokens, for ${r.model.name} on ${r.hardware.name}` }),
    );
  }
}
