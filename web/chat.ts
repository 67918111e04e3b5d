/**
 * The chat view: transcript, composer, Stop, sampling settings, live reply figures and the
 * expert-routing heatmap of the last reply.
 */
import { ApiError, streamChat, type ChatMessage, type Routing, type Usage } from './api.js';
import { byId, fmt, h } from './dom.js';
import { renderHeatmap } from './heatmap.js';
import type { LocalRunner } from './local.js';

/** Sampling settings as typed: empty fields are not sent, so the model's defaults apply. */
interface Settings {
  system: string;
  temperature: string;
  top_p: string;
  top_k: string;
  max_tokens: string;
  seed: string;
  routing: boolean;
  api_key: string;
}

const SETTINGS_KEY = 'shoal.playground.settings';
const FIELDS = ['system', 'temperature', 'top_p', 'top_k', 'max_tokens', 'seed'] as const;

export interface ChatOptions {
  /** Experts per token of the served model (for the heatmap's shares); read when a reply ends. */
  expertsPerToken: () => number;
  /** The name to send as `model`. */
  modelName: () => string | null;
  onApiKey: (key: string) => void;
  /** The in-tab WebGPU mode: when on, turns are generated in the page instead of by the server. */
  local?: LocalRunner;
}

export class ChatView {
  private readonly transcript = byId('transcript');
  private readonly input = byId<HTMLTextAreaElement>('input');
  private readonly sendBtn = byId<HTMLButtonElement>('send');
  private readonly stopBtn = byId<HTMLButtonElement>('stop');
  private readonly replyStats = byId('reply-stats');
  private readonly heatmap = byId('heatmap');
  private readonly settingsForm = byId<HTMLFormElement>('settings');
  private readonly history: ChatMessage[] = [];
  private controller: AbortController | null = null;

  constructor(private readonly opts: ChatOptions) {
    this.loadSettings();
    byId<HTMLFormElement>('composer').addEventListener('submit', (e) => {
      e.preventDefault();
      void this.send();
    });
    this.input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void this.send();
      }
    });
    this.stopBtn.addEventListener('click', () => this.controller?.abort());
    byId('clear').addEventListener('click', () => this.reset());
    this.settingsForm.addEventListener('input', () => this.saveSettings());
    this.settingsForm.addEventListener('submit', (e) => e.preventDefault());
    this.showEmpty();
  }

  // ---- settings ------------------------------------------------------------------------

  private field(name: string): HTMLInputElement | HTMLTextAreaElement {
    return this.settingsForm.elements.namedItem(name) as HTMLInputElement | HTMLTextAreaElement;
  }

  private settings(): Settings {
    const s = {} as Settings;
    for (const f of FIELDS) s[f] = this.field(f).value.trim();
    s.routing = (this.field('routing') as HTMLInputElement).checked;
    s.api_key = this.field('api_key').value;
    return s;
  }

  private loadSettings(): void {
    let saved: Partial<Settings> = {};
    try {
      saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) ?? '{}') as Partial<Settings>;
    } catch {
      // ignore a corrupt entry
    }
    for (const f of FIELDS) if (typeof saved[f] === 'string') this.field(f).value = saved[f]!;
    if (typeof saved.routing === 'boolean') (this.field('routing') as HTMLInputElement).checked = saved.routing;
    if (typeof saved.api_key === 'string') this.field('api_key').value = saved.api_key;
    this.opts.onApiKey(this.field('api_key').value);
  }

  private saveSettings(): void {
    const s = this.settings();
    this.opts.onApiKey(s.api_key);
    try {
      localStorage.setItem(SETTINGS_KEY, JSON.stringify(s));
    } catch {
      // private mode: settings just do not persist
    }
  }

  /** The request's sampling fields; throws a message naming a field that is not a number. */
  private samplingFields(s: Settings): Record<string, number> {
    const out: Record<string, number> = {};
    const num = (key: 'temperature' | 'top_p' | 'top_k' | 'max_tokens' | 'seed', int: boolean) => {
      const v = s[key];
      if (v === '') return;
      const n = Number(v);
      if (!Number.isFinite(n) || (int && !Number.isInteger(n))) throw new Error(`${key.replace('_', ' ')}: expected ${int ? 'an integer' : 'a number'}, got "${v}"`);
      out[key] = n;
    };
    num('temperature', false);
    num('top_p', false);
    num('top_k', true);
    num('max_tokens', true);
    num('seed', true);
    return out;
  }

  // ---- transcript ----------------------------------------------------------------------

  private showEmpty(): void {
    this.transcript.replaceChildren(h('p', { class: 'empty muted' }, 'Say something to the model. Replies stream in as they are generated.'));
  }

  private reset(): void {
    this.controller?.abort();
    this.history.length = 0;
    this.showEmpty();
    this.replyStats.textContent = '';
    this.input.focus();
  }

  private addMessage(role: 'user' | 'assistant' | 'error', text = ''): HTMLElement {
    this.transcript.querySelector('.empty')?.remove();
    const label = role === 'user' ? 'You' : role === 'assistant' ? 'Model' : 'Error';
    const body = h('div', { class: 'msg-body' }, text);
    const msg = h('div', { class: `msg ${role}` }, h('div', { class: 'msg-role' }, label), body);
    this.transcript.append(msg);
    this.scrollDown();
    return msg;
  }

  private scrollDown(): void {
    const t = this.transcript;
    if (t.scrollHeight - t.scrollTop - t.clientHeight < 120) t.scrollTop = t.scrollHeight;
  }

  private busy(on: boolean): void {
    this.sendBtn.disabled = on;
    this.stopBtn.disabled = !on;
    document.body.classList.toggle('generating', on);
  }

  // ---- a turn --------------------------------------------------------------------------

  async send(): Promise<void> {
    const text = this.input.value.trim();
    if (!text || this.controller) return;
    const s = this.settings();
    let sampling: Record<string, number>;
    try {
      sampling = this.samplingFields(s);
    } catch (e) {
      this.addMessage('error', (e as Error).message);
      return;
    }
    this.input.value = '';
    this.addMessage('user', text);
    this.history.push({ role: 'user', content: text });
    const messages: ChatMessage[] = s.system ? [{ role: 'system', content: s.system }, ...this.history] : [...this.history];

    const msg = this.addMessage('assistant');
    msg.classList.add('streaming');
    const body = msg.querySelector('.msg-body') as HTMLElement;
    const answer = h('div', { class: 'answer' });
    body.append(answer);
    let reasoning: { box: HTMLDetailsElement; text: HTMLElement; summary: HTMLElement } | null = null;

    const ac = new AbortController();
    this.controller = ac;
    this.busy(true);
    const t0 = performance.now();
    let tFirst = 0;
    let tLast = 0;
    let tokens = 0;
    let finish = '';
    let content = '';
    let routing: Routing | null = null;
    let usage: Usage | null = null;
    let where = '';
    const figures = () => {
      const ttft = tFirst ? `${fmt(tFirst - t0, 0)} ms` : '…';
      const rate = tokens > 1 && tLast > tFirst ? fmt(((tokens - 1) * 1000) / (tLast - tFirst)) : '–';
      const parts = [`time to first token ${ttft}`, `${rate} tok/s`, `${tokens} tokens`];
      if (usage?.prompt_cache_hit_tokens) parts.push(`${usage.prompt_cache_hit_tokens} prompt tokens cached`);
      if (finish) parts.push(`finish: ${finish}`);
      if (where) parts.push(where);
      this.replyStats.textContent = parts.join(' · ');
    };
    const seen = () => {
      const now = performance.now();
      if (!tFirst) tFirst = now;
      tLast = now;
    };
    figures();

    const onContent = (t: string) => {
      seen();
      content += t;
      answer.textContent = content;
      figures();
      this.scrollDown();
    };
    const onUsage = (u: NonNullable<typeof usage>) => {
      usage = u;
      tokens = u.completion_tokens;
      figures();
    };
    const onFinish = (r: string) => {
      finish = r;
    };
    const model = this.opts.modelName();
    const local = this.opts.local?.on ? await this.opts.local.ready() : null;
    try {
      if (local) {
        where = 'in this tab';
        figures();
        await this.opts.local!.streamChat(local, messages, sampling, { onContent, onUsage, onFinish }, ac.signal);
      } else await streamChat(
        { ...(model ? { model } : {}), messages, ...sampling, ...(s.routing ? { shoal: { routing: true } } : {}) },
        {
          onContent,
          onReasoning: (t) => {
            seen();
            if (!reasoning) {
              const summary = h('summary', {}, 'Thinking…');
              const text = h('div', { class: 'reasoning-text' });
              const box = h('details', { class: 'reasoning' }, summary, text);
              body.insertBefore(box, answer);
              reasoning = { box, text, summary };
            }
            reasoning.text.textContent += t;
            figures();
          },
          onUsage,
          onFinish,
          onRouting: (r) => {
            routing = r;
          },
        },
        ac.signal,
      );
    } catch (e) {
      if (ac.signal.aborted) finish = 'stopped';
      else {
        const err = e instanceof ApiError || e instanceof Error ? e.message : String(e);
        this.addMessage('error', err);
      }
    } finally {
      this.controller = null;
      this.busy(false);
      msg.classList.remove('streaming');
    }
    if (finish === 'stopped') msg.append(h('div', { class: 'msg-note' }, 'stopped'));
    const r = reasoning as { summary: HTMLElement; text: HTMLElement } | null;
    if (r) r.summary.textContent = `Reasoning (${r.text.textContent?.length ?? 0} characters)`;
    if (!content && !r) answer.append(h('span', { class: 'muted' }, finish === 'stopped' ? '(nothing yet)' : '(empty reply)'));
    figures();
    if (content) this.history.push({ role: 'assistant', content });
    else this.history.pop(); // a turn with no answer leaves no half-exchange behind
    if (routing) renderHeatmap(this.heatmap, routing, this.opts.expertsPerToken());
    this.input.focus();
  }
}
