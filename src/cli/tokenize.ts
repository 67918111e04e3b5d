/** `shoal tokenize`: token ids of a text (optionally rendered as a chat user message) as JSON. */
import type { Command } from 'commander';
import { loadTokenizer } from '../tokenizer/tokenizer.js';

export function registerTokenize(program: Command): void {
  program
    .command('tokenize')
    .description('print the token ids of a text as JSON')
    .requiredOption('--model <dir>', 'model folder with tokenizer.json and tokenizer_config.json')
    .requiredOption('--text <text>', 'text to tokenize')
    .option('--chat', 'render the text as a user message with the chat template first')
    .action(async (o: { model: string; text: string; chat?: boolean }) => {
      const tok = await loadTokenizer(o.model);
      const ids = o.chat
        ? tok.encode(tok.applyChatTemplate([{ role: 'user', content: o.text }], { addGenerationPrompt: true }), { addSpecialTokens: false })
        : tok.encode(o.text);
      process.stdout.write(JSON.stringify(ids) + '\n');
    });
}
