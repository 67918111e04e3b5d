/** `shoal convert`: a Hugging Face DeepSeek checkpoint to a llama.cpp GGUF (deepseek2), quantized tensor by tensor. */
import type { Command } from 'commander';
import { UserError } from '../errors.js';
import { convertToGguf, GGUF_OUT_TYPES, type GgufOutType } from '../models/gguf-deepseek.js';
import { Progress } from './progress.js';

function size(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(2)} MiB`;
}

export function registerConvert(program: Command): void {
  program
    .command('convert')
    .description('write a Hugging Face checkpoint as a GGUF file for llama.cpp (architecture deepseek2)')
    .requiredOption('--model <dir>', 'Hugging Face model folder (BF16 or FP8 safetensors, tokenizer)')
    .requiredOption('--out <file.gguf>', 'GGUF file to write')
    .option('--type <type>', `weight type: ${GGUF_OUT_TYPES.join(' | ')}`, 'q8_0')
    .action((o: { model: string; out: string; type: string }) => {
      if (!(GGUF_OUT_TYPES as readonly string[]).includes(o.type)) {
        throw new UserError(`unknown type "${o.type}" (choose from: ${GGUF_OUT_TYPES.join(', ')})`, '--type');
      }
      const progress = new Progress(`converting to ${o.type}`);
      let report;
      try {
        report = convertToGguf(o.model, o.out, o.type as GgufOutType, (d, t) => progress.update(d, t));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOENT' || code === 'EACCES' || code === 'EISDIR') throw new UserError(`cannot write (${code})`, o.out);
        throw e;
      }
      progress.done();
      const formats = Object.entries(report.formats).map(([f, n]) => `${n} ${f}`).join(', ');
      process.stdout.write(`${o.out}: ${report.tensors} tensors (${formats}), ${size(report.bytes)}\n`);
      if (report.mtpDropped) process.stderr.write('shoal: the MTP layers were left out (llama.cpp\'s converter does the same; its deepseek2 has no MTP)\n');
    });
}
