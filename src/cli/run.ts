/** `shoal run`: generate from a prompt (or chat) and report speed. */
import type { Command } from 'commander';
import { createInterface } from 'node:readline';
import { UserError } from '../errors.js';
import { validateSamplingParams, type SamplingParams } from '../engine/sampling.js';
import type { Engine, GenerateOptions, GenerationStats } from '../engine/engine.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { InvalidArgumentError } from 'commander';
import { QUANTIZE_TYPES, type QuantizeType } from '../models/weights.js';
import { intOption, loadEngine, numberOption } from './common.js';

/** Commander parser for --quantize. */
export function quantizeOption(v: string): QuantizeType {
  if (!(QUANTIZE_TYPES as readonly string[]).includes(v)) throw new InvalidArgumentError(`expected one of: ${QUANTIZE_TYPES.join(', ')}`);
  return v as QuantizeType;
}

/** The flags addGenerationOptions and addSamplingOptions define, as commander hands them over. */
export interface GenerationFlags {
  model: string;
  maxTokens: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
  seed?: number;
  stop: string[];
  ignoreEos?: boolean;
  device: string;
  maxContext?: number;
  speculative?: 'mtp';
  quantize?: QuantizeType;
}

interface RunOptions extends GenerationFlags {
  prompt?: string;
  chat?: boolean;
  system?: string;
}

/** Flags shared by the generating commands (run, chat): model, limits, stops, speculation, device. */
export function addGenerationOptions(cmd: Command, defaultMaxTokens: number): Command {
  return cmd
    .requiredOption('--model <dir>', 'Hugging Face model folder (config.json, safetensors, tokenizer) or a .gguf file')
    .option('--max-tokens <n>', 'most tokens to generate (per reply)', intOption(1), defaultMaxTokens)
    .option('--stop <text>', 'stop string (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--ignore-eos', 'keep generating past end-of-sequence (up to --max-tokens)')
    .option('--speculative <method>', 'speculative decoding with the checkpoint\'s MTP head: mtp')
    .option('--device <name>', 'cpu | cpu-ref | webgpu | auto (a hardware GPU if one is found, else cpu)', 'auto')
    .option('--max-context <n>', 'context length to size the KV cache for', intOption(2))
    .option('--quantize <type>', 'pack projection weights on load: q8_0 | q4_k (llama.cpp block formats)', quantizeOption);
}

/** Loads the engine for run/chat after checking --speculative. */
export function loadGenerationEngine(o: { model: string; device: string; maxContext?: number; speculative?: string; quantize?: QuantizeType }): Promise<Engine> {
  if (o.speculative !== undefined && o.speculative !== 'mtp') throw new UserError(`unknown method "${o.speculative}" (supported: mtp)`, '--speculative');
  return loadEngine(o.model, o.device, { maxContext: o.maxContext, speculative: o.speculative === 'mtp' ? 'mtp' : null, quantize: o.quantize ?? null });
}

/** Adds the sampling flags shared by run, chat and bench. */
export function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('--temperature <t>', 'sampling temperature, 0 = greedy (default: generation_config.json, else 0)', numberOption)
    .option('--top-k <k>', 'keep the k most likely tokens', intOption(-1))
    .option('--top-p <p>', 'nucleus sampling mass', numberOption)
    .option('--min-p <p>', 'drop tokens below p times the top probability', numberOption)
    .option('--repetition-penalty <r>', 'penalize tokens already seen (1 = off)', numberOption)
    .option('--presence-penalty <v>', 'OpenAI presence penalty', numberOption)
    .option('--frequency-penalty <v>', 'OpenAI frequency penalty', numberOption)
    .option('--seed <n>', 'random seed (same seed, same output)', intOption(Number.MIN_SAFE_INTEGER));
}

/** The sampling flags that were given, validated (unset ones stay unset so model defaults apply). */
export function samplingFromOptions(o: Partial<RunOptions>): Partial<SamplingParams> {
  const given: Partial<SamplingParams> = {
    temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP,
    repetitionPenalty: o.repetitionPenalty, presencePenalty: o.presencePenalty, frequencyPenalty: o.frequencyPenalty, seed: o.seed,
  };
  validateSamplingParams(given); // throws UserError naming a bad field
  return Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined));
}

export function registerRun(program: Command): void {
  const cmd = program
    .command('run')
    .description('generate text from a prompt, or chat, and print speed figures')
    .option('--prompt <text>', 'prompt text (with --chat: the first user message)')
    .option('--chat', 'use the chat template; without --prompt, read messages from stdin')
    .option('--system <text>', 'system message for --chat');
  addSamplingOptions(addGenerationOptions(cmd, 256)).action(async (o: RunOptions) => {
    if (o.prompt === undefined && !o.chat) throw new UserError('give --prompt TEXT or --chat');
    const sampling = samplingFromOptions(o);
    const engine = await loadGenerationEngine(o);
    try {
      const gen: GenerateOptions = { sampling, maxTokens: o.maxTokens, stop: o.stop, ignoreEos: o.ignoreEos };
      if (!o.chat) {
        await generateAndReport(engine, engine.tokenizer.encode(o.prompt!), gen);
        return;
      }
      const history: ChatMessage[] = o.system ? [{ role: 'system', content: o.system }] : [];
      if (o.prompt !== undefined) {
        history.push({ role: 'user', content: o.prompt });
        await chatTurn(engine, history, gen);
        return;
      }
      await chatLoop(engine, history, gen);
    } finally {
      await engine.close();
    }
  });
}

/** Renders the history with the chat template and generates the assistant's reply. */
export async function chatTurn(engine: Engine, history: ChatMessage[], gen: GenerateOptions): Promise<string> {
  const text = engine.tokenizer.applyChatTemplate(history, { addGenerationPrompt: true });
  // The rendered template already carries BOS.
  const ids = engine.tokenizer.encode(text, { addSpecialTokens: false });
  const reply = await generateAndReport(engine, ids, gen);
  history.push({ role: 'assistant', content: reply });
  return reply;
}

async function chatLoop(engine: Engine, history: ChatMessage[], gen: GenerateOptions): Promise<void> {
  const rl = createInterface({ input: process.stdin, terminal: Boolean(process.stdin.isTTY) });
  const ask = () => { if (process.stdin.isTTY) process.stdout.write('> '); };
  ask();
  for await (const line of rl) {
    if (!line.trim()) { ask(); continue; }
    history.push({ role: 'user', content: line });
    await chatTurn(engine, history, gen);
    ask();
  }
}

/** Streams the generation to stdout and prints token counts and speeds to stderr. */
export async function generateAndReport(engine: Engine, ids: number[], gen: GenerateOptions): Promise<string> {
  const it = engine.generate(ids, gen);
  let text = '';
  let r = await it.next();
  while (!r.done) {
    process.stdout.write(r.value);
    text += r.value;
    r = await it.next();
  }
  process.stdout.write('\n');
  process.stderr.write(formatStats(r.value) + '\n');
  return text;
}

export function formatStats(s: GenerationStats): string {
  const rate = (n: number, ms: number) => (ms > 0 ? ((n * 1000) / ms).toFixed(1) : '-');
  // The first generated token comes from the prefill's logits; decode speed counts the rest.
  const decoded = Math.max(0, s.completionTokens - 1);
  const spec = s.draftTokens ? `, MTP acceptance: ${((100 * s.acceptedTokens) / s.draftTokens).toFixed(1)}% (${s.acceptedTokens}/${s.draftTokens})` : '';
  return `prompt tokens: ${s.promptTokens}, generated tokens: ${s.completionTokens} (${s.finishReason}), ` +
    `prefill: ${rate(s.promptTokens, s.prefillMs)} tok/s, decode: ${rate(decoded, s.decodeMs)} tok/s${spec}`;
}
