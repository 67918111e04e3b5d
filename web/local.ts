/**
 * "Run in this tab (WebGPU)": loads the served model into the page and generates there, on the
 * browser's WebGPU, with the same model code, backend, tokenizer and sampler as the server
 * (bundled into inbrowser.js from src/backends/webgpu/in-browser.ts). Weights and tokenizer
 * come from the server's /api/model/files/; nothing else is fetched. The bundle is imported
 * only when the mode is switched on.
 */
import type { ChatMessage, Usage } from './api.js';
import { authHeaders } from './api.js';
import { byId } from './dom.js';

/** What the bundle exports (src/backends/webgpu/in-browser.ts), as far as the page uses it. */
interface InTabToken { id: number; text: string }
interface InTabResult { tokenIds: number[]; text: string; finishReason: 'stop' | 'length' | 'aborted'; promptTokens: number; prefillMs: number; decodeMs: number }
interface InTabModel {
  readonly maxContext: number;
  readonly backend: { info: { name: string } };
  chatPrompt(messages: readonly ChatMessage[]): number[];
  generate(prompt: readonly number[], opts: {
    maxTokens?: number;
    sampling?: { temperature?: number; topP?: number; topK?: number; seed?: number };
    ignoreEos?: boolean;
    signal?: AbortSignal;
  }): AsyncGenerator<InTabToken, InTabResult>;
  close(): void;
}
interface InTabBundle {
  loadInTab(opts: { headers?: Record<string, string>; onStatus?: (line: string) => void }): Promise<InTabModel>;
}

export interface LocalCallbacks {
  onContent(text: string): void;
  onUsage(u: Usage): void;
  onFinish(reason: string): void;
}

export function hasWebGpu(): boolean {
  return Boolean((navigator as unknown as { gpu?: unknown }).gpu);
}

export class LocalRunner {
  private readonly toggle = byId<HTMLInputElement>('in-tab');
  private readonly status = byId('in-tab-status');
  private model: InTabModel | null = null;
  private loading: Promise<void> | null = null;

  constructor() {
    if (!hasWebGpu()) {
      this.toggle.disabled = true;
      this.say('This browser has no WebGPU (navigator.gpu): replies come from the server.');
      return;
    }
    this.toggle.addEventListener('change', () => void this.switch(this.toggle.checked));
  }

  /** The loaded model when the mode is on and ready, else null (the server answers). */
  get active(): InTabModel | null {
    return this.toggle.checked ? this.model : null;
  }

  /** Whether the mode is on (even while the model is still loading). */
  get on(): boolean {
    return this.toggle.checked;
  }

  private say(line: string, state = ''): void {
    this.status.textContent = line;
    this.status.dataset['state'] = state;
  }

  private async switch(on: boolean): Promise<void> {
    if (!on) {
      await this.loading?.catch(() => {});
      this.model?.close();
      this.model = null;
      this.say('Off: replies come from the server.');
      return;
    }
    this.loading = (async () => {
      try {
        this.say('loading the in-tab engine…', 'loading');
        const bundle = (await import('./inbrowser.js' as string)) as InTabBundle;
        const model = await bundle.loadInTab({ headers: authHeaders(), onStatus: (l) => this.say(l, 'loading') });
        if (!this.toggle.checked) {
          model.close();
          return;
        }
        this.model = model;
        this.say(`Ready: generating in this tab on ${model.backend.info.name}.`, 'ready');
      } catch (e) {
        this.toggle.checked = false;
        this.say(`Cannot run in this tab: ${(e as Error).message}`, 'error');
      }
    })();
    await this.loading;
  }

  /** Waits for a load in progress (sending while the model loads). */
  async ready(): Promise<InTabModel | null> {
    await this.loading?.catch(() => {});
    return this.active;
  }

  /** A chat turn generated in the tab, reported through the same callbacks as the server's stream. */
  async streamChat(model: InTabModel, messages: ChatMessage[], sampling: Record<string, number>, cb: LocalCallbacks, signal: AbortSignal): Promise<void> {
    const prompt = model.chatPrompt(messages);
    const gen = model.generate(prompt, {
      maxTokens: sampling['max_tokens'] ?? model.maxContext - prompt.length,
      sampling: {
        ...(sampling['temperature'] !== undefined ? { temperature: sampling['temperature'] } : {}),
        ...(sampling['top_p'] !== undefined ? { topP: sampling['top_p'] } : {}),
        ...(sampling['top_k'] !== undefined ? { topK: sampling['top_k'] } : {}),
        ...(sampling['seed'] !== undefined ? { seed: sampling['seed'] } : {}),
      },
      signal,
    });
    let n = 0;
    for (;;) {
      const r = await gen.next();
      if (r.done) {
        cb.onUsage({ prompt_tokens: prompt.length, completion_tokens: r.value.tokenIds.length });
        cb.onFinish(r.value.finishReason === 'aborted' ? 'stopped' : r.value.finishReason);
        if (r.value.finishReason === 'aborted') throw new DOMException('stopped', 'AbortError');
        return;
      }
      if (r.value.id >= 0) cb.onUsage({ prompt_tokens: prompt.length, completion_tokens: ++n });
      if (r.value.text) cb.onContent(r.value.text);
    }
  }
}
