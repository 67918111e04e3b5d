/**
 * `shoal chat`: a terminal chat with a model. The conversation is kept and sent whole each
 * turn (the prefix cache makes that cheap); replies stream as they are generated.
 *
 *   /reset         forget the conversation (the system prompt stays)
 *   /system TEXT   set the system prompt (no TEXT: remove it)
 *   /help          the commands
 *   /quit, /exit   leave (so does Ctrl-D)
 *
 * Ctrl-C stops the reply being generated; at the prompt it leaves. A line ending in `\`
 * continues on the next one.
 */
import type { Command } from 'commander';
import { createInterface } from 'node:readline';
import type { Engine, GenerateOptions } from '../engine/engine.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { addGenerationOptions, addSamplingOptions, chatTurn, loadGenerationEngine, samplingFromOptions, type GenerationFlags } from './run.js';

interface ChatOptions extends GenerationFlags {
  system?: string;
}

const HELP = 'commands: /reset (forget the conversation), /system TEXT (set the system prompt; none: remove it), /help, /quit (or Ctrl-D)';

export function registerChat(program: Command): void {
  const cmd = program
    .command('chat')
    .description('chat with a model in the terminal (history, streaming; /reset, /system TEXT, /quit)')
    .option('--system <text>', 'system prompt');
  addSamplingOptions(addGenerationOptions(cmd, 512)).action(async (o: ChatOptions) => {
    const sampling = samplingFromOptions(o);
    const engine = await loadGenerationEngine(o);
    try {
      await chatSession(engine, { system: o.system ?? '', gen: { sampling, maxTokens: o.maxTokens, stop: o.stop, ignoreEos: o.ignoreEos } });
    } finally {
      await engine.close();
    }
  });
}

export interface ChatSessionOptions {
  system: string;
  gen: GenerateOptions;
  input?: NodeJS.ReadableStream;
}

/** Prompt length of the conversation as the model would see it. */
function promptTokens(engine: Engine, messages: ChatMessage[]): number {
  const text = engine.tokenizer.applyChatTemplate(messages, { addGenerationPrompt: true });
  return engine.tokenizer.encode(text, { addSpecialTokens: false }).length;
}

/**
 * Drops the oldest exchanges until the conversation leaves room for a reply in the context.
 * Returns how many messages were dropped, or -1 when even the last message alone does not fit.
 */
function fitContext(engine: Engine, system: string, history: ChatMessage[]): number {
  const withSystem = () => (system ? [{ role: 'system', content: system } as ChatMessage, ...history] : history);
  let dropped = 0;
  while (promptTokens(engine, withSystem()) >= engine.maxContext) {
    if (history.length <= 1) return -1;
    const n = history[0]!.role === 'user' && history[1]?.role === 'assistant' ? 2 : 1;
    history.splice(0, n);
    dropped += n;
  }
  return dropped;
}

/** Reads lines from stdin (or `input`) and chats until /quit or end of input. */
export async function chatSession(engine: Engine, opts: ChatSessionOptions): Promise<void> {
  const input = opts.input ?? process.stdin;
  const tty = input === process.stdin && Boolean(process.stdin.isTTY) && Boolean(process.stdout.isTTY);
  const rl = createInterface({ input, output: tty ? process.stdout : undefined, terminal: tty, prompt: '> ' });
  const note = (s: string) => process.stderr.write(`${s}\n`);
  let system = opts.system;
  const history: ChatMessage[] = [];
  let current: AbortController | null = null;
  let quit = false;

  // Ctrl-C: stop the reply being generated; at the prompt, leave.
  rl.on('SIGINT', () => {
    if (current) current.abort();
    else {
      quit = true;
      rl.close();
    }
  });

  note(`shoal chat: ${HELP}`);
  if (tty) rl.prompt();
  let pending = '';
  for await (const raw of rl) {
    if (quit) break;
    if (raw.endsWith('\\')) {
      pending += raw.slice(0, -1) + '\n';
      continue;
    }
    const line = (pending + raw).trim();
    pending = '';
    if (line.startsWith('/')) {
      const command = line.split(/\s+/, 1)[0]!;
      const arg = line.slice(command.length).trim();
      if (command === '/quit' || command === '/exit') break;
      if (command === '/reset') {
        history.length = 0;
        note('(conversation forgotten)');
      } else if (command === '/system') {
        system = arg;
        note(system ? '(system prompt set)' : '(system prompt removed)');
      } else if (command === '/help') {
        note(HELP);
      } else {
        note(`unknown command ${command}; ${HELP}`);
      }
    } else if (line) {
      history.push({ role: 'user', content: line });
      const dropped = fitContext(engine, system, history);
      if (dropped < 0) {
        history.pop();
        note(`(that message does not fit in the context of ${engine.maxContext} tokens)`);
      } else {
        if (dropped > 0) note(`(dropped the oldest messages to fit the context of ${engine.maxContext} tokens)`);
        const messages: ChatMessage[] = system ? [{ role: 'system', content: system }, ...history] : [...history];
        current = new AbortController();
        try {
          const reply = await chatTurn(engine, messages, { ...opts.gen, signal: current.signal });
          history.push({ role: 'assistant', content: reply });
        } finally {
          current = null;
        }
      }
    }
    if (quit) break;
    if (tty) rl.prompt();
  }
  rl.close();
}
