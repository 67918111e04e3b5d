/** `shoal golden`: compare logits with a reference fixture; non-zero exit on any mismatch. */
import type { Command } from 'commander';
import { createBackend } from '../backends/index.js';
import { GOLDEN_TOLERANCE, runGolden } from '../engine/golden.js';

export function registerGolden(program: Command): void {
  program
    .command('golden')
    .description('check prefill, decode and MTP logits against golden.safetensors')
    .argument('<fixture-dir>', 'folder with a checkpoint, golden.json and golden.safetensors')
    .option('--device <name>', 'cpu | webgpu | auto (a hardware GPU if one is found, else cpu)', 'auto')
    .action(async (dir: string, o: { device: string }) => {
      const backend = await createBackend(o.device);
      const report = await runGolden(dir, backend);
      backend.dispose();
      const out = [`${report.dir} (${report.architecture}, ${backend.info.name})`];
      for (const c of report.comparisons) {
        out.push(`  ${c.name.padEnd(8)} rows ${String(c.rows).padStart(3)}  max |diff| ${c.maxAbsDiff.toExponential(2)}  ` +
          `argmax ${c.argmaxAgree}/${c.rows}  ${c.pass ? 'ok' : 'FAIL'}`);
      }
      out.push(report.pass ? `pass (tolerance ${GOLDEN_TOLERANCE})` : `FAIL (tolerance ${GOLDEN_TOLERANCE}, every argmax must agree)`);
      process.stdout.write(out.join('\n') + '\n');
      if (!report.pass) process.exitCode = 1;
    });
}
