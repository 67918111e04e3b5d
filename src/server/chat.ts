/**
 * Chat specifics of the OpenAI API on DeepSeek models: rendering requests through the model's
 * chat template (tools included), and splitting generated text into reasoning, content and
 * tool calls, incrementally for streams.
 *
 * DeepSeek's think and tool-call markers are added tokens that are not "special", so the
 * scheduler's detokenizer (skipSpecialTokens) keeps them in the text as their literal strings
 * (`<think>`, `<｜tool▁calls▁begin｜>`, ...), and the parsers here work on text.
 *
 * Tool-call formats understood (DeepSeek V3 / R1, and V3.1):
 *   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
 *   <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>
 */
import { randomBytes } from 'node:crypto';
import type { ChatMessage, ShoalTokenizer } from '../tokenizer/tokenizer.js';
import { HttpError, type ChatMessageIn, type ToolChoice, type ToolIn } from './openai-types.js';

export const THINK_OPEN = '<think>';
export const THINK_CLOSE = '</think>';
export const TOOL_CALLS_BEGIN = '<｜tool▁calls▁begin｜>';
export const TOOL_CALLS_END = '<｜tool▁calls▁end｜>';
export const TOOL_CALL_BEGIN = '<｜tool▁call▁begin｜>';
export const TOOL_CALL_END = '<｜tool▁call▁end｜>';
export const TOOL_SEP = '<｜tool▁sep｜>';

// ---------------------------------------------------------------------------
// Prompt rendering

export interface ChatPrompt {
  /** Rendered template text (plus any forced tool-call opening). */
  text: string;
  ids: number[];
  /** The generation prompt opened a `<think>` block: output starts as reasoning. */
  reasoningOpen: boolean;
  /** Parse tool calls out of the output. */
  parseTools: boolean;
  /** Text appended to the prompt to force a tool call (tool_choice "required" or named); output continues it. */
  forcedPrefix: string;
}

export interface ChatPromptRequest {
  messages: ChatMessageIn[];
  tools?: ToolIn[] | null;
  tool_choice?: ToolChoice | null;
  chat_template_kwargs?: Record<string, unknown> | null;
}

/** Text of a message's content (parts joined by newlines); null stays null. */
function contentText(m: ChatMessageIn, i: number): string | null {
  const c = m.content;
  if (c === undefined || c === null) return null;
  if (typeof c === 'string') return c;
  return c
    .map((p, j) => {
      if (p.type !== 'text' || typeof p.text !== 'string') {
        throw new HttpError(400, `content part type "${p.type}" is not supported (text only)`, `messages[${i}].content[${j}].type`);
      }
      return p.text;
    })
    .join('\n');
}

/** OpenAI messages → the tokenizer's chat messages. */
export function toTemplateMessages(messages: ChatMessageIn[]): ChatMessage[] {
  return messages.map((m, i) => {
    const role = m.role === 'developer' ? 'system' : m.role;
    let content = contentText(m, i);
    const out: ChatMessage = { role, content };
    if (m.role === 'assistant' && m.tool_calls?.length) {
      out.tool_calls = m.tool_calls.map((c) => ({
        ...(c.id ? { id: c.id } : {}),
        type: c.type ?? 'function',
        function: { name: c.function.name, arguments: c.function.arguments },
      }));
      // DeepSeek's templates render tool calls only for assistant messages without content.
      if (content === '') content = null;
      out.content = content;
    } else if (content === null) {
      if (m.role !== 'assistant') throw new HttpError(400, `a ${m.role} message needs content`, `messages[${i}].content`);
      out.content = '';
    }
    if (m.role === 'tool') {
      if (m.tool_call_id) out.tool_call_id = m.tool_call_id;
    }
    if (m.name) out.name = m.name;
    return out;
  });
}

/** System text describing the tools, for templates that do not render `tools` themselves (vLLM's DeepSeek V3 tool template). */
export function toolsSystemText(tools: ToolIn[]): string {
  let text =
    'You are a helpful assistant with tool calling capabilities. When a tool call is needed, you MUST use the following format to issue the call:\n' +
    `${TOOL_CALLS_BEGIN}${TOOL_CALL_BEGIN}function${TOOL_SEP}FUNCTION_NAME\n\`\`\`json\n{"param1": "value1", "param2": "value2"}\n\`\`\`${TOOL_CALL_END}${TOOL_CALLS_END}\n\n` +
    'Make sure the JSON is valid.\n\n## Tools\n\n### Function\n\nYou have the following functions available:\n';
  for (const t of tools) text += '\n```json\n' + JSON.stringify(t) + '\n```\n';
  return text;
}

interface ToolFormat {
  /** Text from the calls-begin token up to the function name (e.g. `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>`). */
  beforeName: string;
  /** Text between the function name and the arguments (e.g. "\n```json\n"). */
  afterName: string;
}

const toolFormats = new WeakMap<ShoalTokenizer, ToolFormat | null>();

/** Learns how the chat template writes a tool call by rendering a probe conversation. */
export function toolFormat(tok: ShoalTokenizer): ToolFormat | null {
  if (toolFormats.has(tok)) return toolFormats.get(tok)!;
  let fmt: ToolFormat | null = null;
  const name = 'shoal_probe_function';
  const args = '{"shoal_probe": 1}';
  try {
    const text = tok.applyChatTemplate([
      { role: 'user', content: 'x' },
      { role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name, arguments: args } }] },
    ]);
    const b = text.indexOf(TOOL_CALLS_BEGIN);
    const n = text.indexOf(name, b);
    const a = text.indexOf(args, n);
    if (b >= 0 && n > b && a > n) fmt = { beforeName: text.slice(b, n), afterName: text.slice(n + name.length, a) };
  } catch {
    fmt = null;
  }
  if (fmt && tok.tokenToId(TOOL_CALLS_BEGIN) === undefined) fmt = null;
  toolFormats.set(tok, fmt);
  return fmt;
}

/** Renders a chat request into prompt tokens, adding tool descriptions and forced tool-call openings. */
export function buildChatPrompt(tok: ShoalTokenizer, req: ChatPromptRequest): ChatPrompt {
  const messages = toTemplateMessages(req.messages);
  const toolChoice = req.tool_choice ?? 'auto';
  const tools = toolChoice === 'none' ? [] : (req.tools ?? []);
  if (typeof toolChoice === 'object' && !tools.some((t) => t.function.name === toolChoice.function.name)) {
    throw new HttpError(400, `tool_choice names function "${toolChoice.function.name}", which is not in tools`, 'tool_choice');
  }
  if (toolChoice === 'required' && !tools.length) throw new HttpError(400, 'tool_choice "required" needs tools', 'tool_choice');
  const extra = req.chat_template_kwargs ?? undefined;
  let text: string;
  if (tools.length) {
    const toolJson = tools.map((t) => ({ type: t.type, function: t.function }));
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: true, tools: toolJson, extra });
    const plain = tok.applyChatTemplate(messages, { addGenerationPrompt: true, extra });
    if (text === plain) {
      // The template ignores `tools` (DeepSeek V3's does): describe them in the system prompt.
      const sys: ChatMessage = { role: 'system', content: toolsSystemText(tools) };
      let at = 0;
      while (at < messages.length && messages[at]!.role === 'system') at++;
      const withTools = [...messages.slice(0, at), sys, ...messages.slice(at)];
      text = tok.applyChatTemplate(withTools, { addGenerationPrompt: true, tools: toolJson, extra });
    }
  } else {
    text = tok.applyChatTemplate(messages, { addGenerationPrompt: true, extra });
  }
  const reasoningOpen = /<think>\s*$/.test(text);
  let forcedPrefix = '';
  if (tools.length && toolChoice !== 'auto') {
    const fmt = toolFormat(tok);
    if (fmt) {
      forcedPrefix = typeof toolChoice === 'object' ? fmt.beforeName + toolChoice.function.name + fmt.afterName : fmt.beforeName;
    }
  }
  const full = text + forcedPrefix;
  return {
    text: full,
    ids: tok.encode(full, { addSpecialTokens: false }),
    reasoningOpen: reasoningOpen && !forcedPrefix,
    parseTools: tools.length > 0,
    forcedPrefix,
  };
}

// ---------------------------------------------------------------------------
// Output parsing

export interface ParsedToolCall {
  name: string;
  arguments: string;
}

/** Parses the text between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`; null when it is not a call. */
export function parseToolCallBody(body: string): ParsedToolCall | null {
  const sep = body.indexOf(TOOL_SEP);
  if (sep < 0) return null;
  const before = body.slice(0, sep).trim();
  const after = body.slice(sep + TOOL_SEP.length);
  // V3 / R1: TYPE<sep>NAME\n```json\nARGS\n```
  const fenced = /^([^\n`]*)\n```(?:json)?[ \t]*\n?([\s\S]*?)\s*```\s*$/.exec(after);
  let name: string;
  let args: string;
  if (fenced) {
    name = fenced[1]!.trim();
    args = fenced[2]!.trim();
  } else {
    // V3.1: NAME<sep>ARGS
    name = before;
    args = after.trim();
  }
  if (!name || /\s/.test(name)) return null;
  return { name, arguments: args || '{}' };
}

export function newToolCallId(): string {
  return 'call_' + randomBytes(12).toString('hex');
}

/** What one push of text added, by kind. */
export interface OutputDelta {
  reasoning: string;
  content: string;
  toolCalls: ParsedToolCall[];
}

/** Length of the longest suffix of `text` that is a proper prefix of one of `markers`. */
function partialSuffix(text: string, markers: string[]): number {
  let best = 0;
  for (const m of markers) {
    for (let len = Math.min(m.length - 1, text.length); len > best; len--) {
      if (text.endsWith(m.slice(0, len))) {
        best = len;
        break;
      }
    }
  }
  return best;
}

/**
 * Splits generated text, pushed in chunks, into reasoning (`<think>…</think>` at the start, or
 * everything up to `</think>` when the prompt opened the block), content, and tool calls.
 * Chunk boundaries never change the result: text that might be the start of a marker is held
 * back until it is decided. Unparsable tool-call text falls back to content at finish().
 */
export class OutputParser {
  private state: 'start' | 'reasoning' | 'content' | 'tools';
  private buf = '';
  private trimLeading = false;
  /** Everything that went into the tool-call region, for the fallback. */
  private toolRaw = '';
  private calls = 0;

  constructor(private readonly opts: { reasoningOpen?: boolean; parseTools?: boolean; prefix?: string } = {}) {
    this.state = opts.reasoningOpen ? 'reasoning' : 'start';
    if (opts.prefix) this.buf = opts.prefix;
  }

  get toolCallCount(): number {
    return this.calls;
  }

  push(text: string): OutputDelta {
    this.buf += text;
    return this.process(false);
  }

  finish(): OutputDelta {
    return this.process(true);
  }

  private process(final: boolean): OutputDelta {
    const out: OutputDelta = { reasoning: '', content: '', toolCalls: [] };
    for (;;) {
      switch (this.state) {
        case 'start': {
          const s = this.buf.trimStart();
          if (s.startsWith(THINK_OPEN)) {
            this.buf = s.slice(THINK_OPEN.length);
            this.state = 'reasoning';
            this.trimLeading = true;
            continue;
          }
          if (!final && THINK_OPEN.startsWith(s)) return out; // '' or a prefix of <think>: undecided
          this.state = 'content';
          continue;
        }
        case 'reasoning': {
          if (this.trimLeading) {
            this.buf = this.buf.trimStart();
            if (!this.buf && !final) return out;
            this.trimLeading = false;
          }
          const i = this.buf.indexOf(THINK_CLOSE);
          if (i >= 0) {
            out.reasoning += this.buf.slice(0, i).replace(/\s+$/, '');
            this.buf = this.buf.slice(i + THINK_CLOSE.length);
            this.state = 'content';
            this.trimLeading = true;
            continue;
          }
          // Trailing whitespace waits too: it is dropped when </think> follows.
          let hold = 0;
          if (!final) {
            hold = partialSuffix(this.buf, [THINK_CLOSE]);
            hold += trailingSpace(this.buf.slice(0, this.buf.length - hold));
          }
          out.reasoning += this.buf.slice(0, this.buf.length - hold);
          this.buf = this.buf.slice(this.buf.length - hold);
          return out;
        }
        case 'content': {
          if (this.trimLeading) {
            this.buf = this.buf.trimStart();
            if (!this.buf && !final) return out;
            this.trimLeading = false;
          }
          if (!this.opts.parseTools) {
            out.content += this.buf;
            this.buf = '';
            return out;
          }
          const i = firstIndex(this.buf, [TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN]);
          if (i >= 0) {
            out.content += this.buf.slice(0, i);
            this.buf = this.buf.slice(i);
            this.state = 'tools';
            continue;
          }
          const hold = final ? 0 : partialSuffix(this.buf, [TOOL_CALLS_BEGIN, TOOL_CALL_BEGIN]);
          out.content += this.buf.slice(0, this.buf.length - hold);
          this.buf = this.buf.slice(this.buf.length - hold);
          return out;
        }
        case 'tools': {
          for (;;) {
            const b = this.buf.indexOf(TOOL_CALL_BEGIN);
            const e = b >= 0 ? this.buf.indexOf(TOOL_CALL_END, b) : -1;
            if (e < 0) break;
            const raw = this.buf.slice(0, e + TOOL_CALL_END.length);
            const call = parseToolCallBody(this.buf.slice(b + TOOL_CALL_BEGIN.length, e));
            this.buf = this.buf.slice(e + TOOL_CALL_END.length);
            this.toolRaw += raw;
            if (call) {
              this.calls++;
              out.toolCalls.push(call);
            }
          }
          if (!final) return out;
          // End of output: a call cut short (no end marker) still counts when it parses.
          let rest = this.buf;
          const b = rest.indexOf(TOOL_CALL_BEGIN);
          if (b >= 0) {
            const call = parseToolCallBody(rest.slice(b + TOOL_CALL_BEGIN.length).replace(TOOL_CALLS_END, ''));
            if (call && isJson(call.arguments)) {
              this.calls++;
              out.toolCalls.push(call);
              this.toolRaw += rest;
              rest = '';
            }
          }
          this.buf = '';
          if (this.calls === 0) {
            out.content += this.toolRaw + rest;
          } else {
            const tail = rest.split(TOOL_CALLS_END).join('').split(TOOL_CALLS_BEGIN).join('').trim();
            if (tail) out.content += tail;
          }
          this.toolRaw = '';
          return out;
        }
      }
    }
  }
}

function firstIndex(text: string, markers: string[]): number {
  let best = -1;
  for (const m of markers) {
    const i = text.indexOf(m);
    if (i >= 0 && (best < 0 || i < best)) best = i;
  }
  return best;
}

function trailingSpace(text: string): number {
  const m = /\s+$/.exec(text);
  return m ? m[0].length : 0;
}

function isJson(s: string): boolean {
  try {
    JSON.parse(s);
    return true;
  } catch {
    return false;
  }
}

/** Parses a whole generated text at once. */
export function parseOutput(text: string, opts: { reasoningOpen?: boolean; parseTools?: boolean; prefix?: string } = {}): OutputDelta {
  const p = new OutputParser(opts);
  const a = p.push(text);
  const b = p.finish();
  return { reasoning: a.reasoning + b.reasoning, content: a.content + b.content, toolCalls: [...a.toolCalls, ...b.toolCalls] };
}
