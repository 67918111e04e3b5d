/** `shoal golden`: compare logits with a reference fixture; non-zero exit on any mismatch. */
import { InvalidArgumentError, type Command } from 'commander';
import type { QuantizeType } from '../models/weights.js';
import { createBackend } from '../backends/index.js';
import { GOLDEN_TOLERANCE, runGolden } from '../engine/golden.js';
import { quantizeOption } from './run.js';

export function registerGolden(program: Command): void {
  program
    .command('golden')
    .description('check prefill, decode and MTP logits against golden.safetensors')
    .argument('<fixture-dir>', 'folder with a checkpoint (or model.gguf), golden.json and golden.safetensors')
    .option('--device <name>', 'cpu | cpu-ref | webgpu | auto (a hardware GPU if one is found, else cpu)', 'auto')
    .option('--quantize <type>', 'pack projection weights on load: q8_0 | q4_k', quantizeOption)
    .option('--tolerance <t>', `largest allowed max |diff| (default ${GOLDEN_TOLERANCE})`, (v: string) => {
      const n = Number(v);
      if (!(n > 0)) throw new InvalidArgumentError('expected a positive number');
      return n;
    })
    .action(async (dir: string, o: { device: string; quantize?: QuantizeType; tolerance?: number }) => {
      const backend = await createBackend(o.device);
      const tol = o.tolerance ?? GOLDEN_TOLERANCE;
      const report = await runGolden(dir, backend, tol, { quantize: o.quantize });
      backend.dispose();
      const out = [`${report.dir} (${report.architecture}, ${backend.info.name})`];
      for (const c of report.comparisons) {
        out.push(`  ${c.name.padEnd(8)} rows ${String(c.rows).padStart(3)}  max |diff| ${c.maxAbsDiff.toExponential(2)}  ` +
          `argmax ${c.argmaxAgree}/${c.rows}  ${c.pass ? 'ok' : 'FAIL'}`);
      }
      out.push(report.pass ? `pass (tolerance ${tol})` : `FAIL (tolerance ${tol}, every argmax must agree)`);
      process.stdout.write(out.join('\n') + '\n');
      if (!report.pass) process.exitCode = 1;
    });
}
