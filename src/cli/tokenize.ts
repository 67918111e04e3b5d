/** `shoal tokenize`: token ids of a text (optionally rendered as a chat user message) as JSON. */
import type { Command } from 'commander';
import { loadTokenizer, type ShoalTokenizer } from '../tokenizer/tokenizer.js';
import { tokenizerFromGguf } from '../tokenizer/gguf-tokenizer.js';
import { openGguf } from '../formats/gguf.js';
import { ggufPathOf } from '../models/gguf-deepseek.js';

/** The tokenizer of a model folder, or the one embedded in a .gguf file (metadata only is read). */
async function modelTokenizer(path: string): Promise<ShoalTokenizer> {
  const gguf = ggufPathOf(path);
  if (!gguf) return loadTokenizer(path);
  const f = openGguf(gguf);
  try {
    return tokenizerFromGguf(f);
  } finally {
    f.close();
  }
}

export function registerTokenize(program: Command): void {
  program
    .command('tokenize')
    .description('print the token ids of a text as JSON')
    .requiredOption('--model <dir>', 'model folder (tokenizer.json, tokenizer_config.json) or .gguf file')
    .requiredOption('--text <text>', 'text to tokenize')
    .option('--chat', 'render the text as a user message with the chat template first')
    .action(async (o: { model: string; text: string; chat?: boolean }) => {
      const tok = await modelTokenizer(o.model);
      const ids = o.chat
        ? tok.encode(tok.applyChatTemplate([{ role: 'user', content: o.text }], { addGenerationPrompt: true }), { addSpecialTokens: false })
        : tok.encode(o.text);
      process.stdout.write(JSON.stringify(ids) + '\n');
    });
}
