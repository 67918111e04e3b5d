/** The server panel: GET /api/stats every 2 seconds. */
import { getJson, type Stats } from './api.js';
import { byId, fmt, h, pct } from './dom.js';

export const POLL_MS = 2000;

function row(label: string, value: string, extra?: Node): HTMLElement[] {
  const dd = h('dd', {}, value);
  if (extra) dd.append(extra);
  return [h('dt', {}, label), dd];
}

function bar(frac: number | null): HTMLElement {
  const b = h('span', { class: 'bar', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round((frac ?? 0) * 100) });
  const fill = h('span', { class: 'bar-fill' });
  fill.style.setProperty('width', `${Math.min(100, Math.max(0, (frac ?? 0) * 100))}%`);
  b.append(fill);
  return b;
}

export class StatsPanel {
  private readonly modelEl = byId('model-info');
  private readonly serverEl = byId('server-stats');
  private readonly dot = byId('server-status');
  private readonly badge = byId('model-name');
  private last: Stats | null = null;
  private timer: number | undefined;
  private readonly listeners: ((s: Stats) => void)[] = [];

  get stats(): Stats | null {
    return this.last;
  }

  onUpdate(fn: (s: Stats) => void): void {
    this.listeners.push(fn);
  }

  start(): void {
    const tick = async () => {
      await this.poll();
      this.timer = window.setTimeout(tick, POLL_MS);
    };
    void tick();
  }

  stop(): void {
    window.clearTimeout(this.timer);
  }

  private async poll(): Promise<void> {
    try {
      const s = await getJson<Stats>('/api/stats');
      this.last = s;
      this.render(s);
      for (const fn of this.listeners) fn(s);
    } catch {
      this.dot.className = 'status-dot offline';
      this.dot.title = 'server unreachable';
      this.serverEl.replaceChildren(h('p', { class: 'muted' }, 'The server does not answer; retrying every 2 s.'));
    }
  }

  private render(s: Stats): void {
    this.dot.className = `status-dot ${s.status === 'ok' ? 'ok' : 'loading'}`;
    this.dot.title = `server: ${s.status}`;
    const m = s.model;
    this.badge.textContent = m.name;
    this.badge.title = m.architecture ?? '';
    const moe = m.moe_layers?.length ?? 0;
    this.modelEl.replaceChildren(
      ...row('architecture', m.architecture ?? '…'),
      ...row('layers', m.layers === null ? '…' : `${m.layers} (${moe} MoE)`),
      ...row('experts', m.experts === null ? '…' : `${m.experts} routed, ${m.experts_per_token} per token, ${m.shared_experts} shared`),
      ...row('context', m.max_context === null ? '…' : `${m.max_context.toLocaleString('en-US')} tokens`),
      ...row('backend', `${m.backend ?? '…'}${m.speculative ? `, ${m.speculative} drafting` : ''}`),
    );
    const st = s.scheduler;
    if (!st) {
      this.serverEl.replaceChildren(h('p', { class: 'muted' }, s.status === 'loading' ? 'Loading the model…' : s.status));
      return;
    }
    const r = s.rates;
    this.serverEl.replaceChildren(
      ...row('requests', `${st.running} running, ${st.waiting} waiting`),
      ...row('KV cache', `${pct(r.kv_cache_usage)} of ${st.kvBlocksTotal} blocks`, bar(r.kv_cache_usage)),
      ...row('prefix cache hits', r.prefix_cache_hit_rate === null ? '– (no prompts yet)' : `${pct(r.prefix_cache_hit_rate)} of ${fmt(st.prefixQueryTokens, 0)} prompt tokens`),
      ...row('speculative acceptance', r.spec_acceptance_rate === null ? (m.speculative ? '– (nothing drafted yet)' : 'off') : `${pct(r.spec_acceptance_rate)} of ${fmt(st.draftTokens, 0)} drafts`),
      ...row('tokens', `${fmt(st.promptTokens, 0)} prompt, ${fmt(st.generationTokens, 0)} generated`),
      ...row('preemptions', String(st.preemptions)),
    );
  }
}
