/**
 * The `shoal` command line. Each command lives in its own file and registers itself here.
 * User errors (bad files, flags, input) print one line `shoal: ...` and exit 1; anything
 * else is a bug and keeps its stack trace.
 */
import { Command, CommanderError } from 'commander';
import { isUserError } from '../errors.js';
import { registerRun } from './run.js';
import { registerInspect } from './inspect.js';
import { registerTokenize } from './tokenize.js';
import { registerGolden } from './golden.js';
import { registerPlan } from './plan.js';
import { registerServe } from './serve.js';
import { registerChat } from './chat.js';
import { registerDevices } from './devices.js';
import { registerConvert } from './convert.js';
import { registerBench } from './bench.js';

export function buildProgram(): Command {
  const program = new Command('shoal')
    .description('Inference engine for DeepSeek-class MoE models on any hardware')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerRun(program);
  registerChat(program);
  registerServe(program);
  registerInspect(program);
  registerTokenize(program);
  registerGolden(program);
  registerConvert(program);
  registerBench(program);
  registerDevices(program);
  registerPlan(program);
  for (const c of program.commands) c.exitOverride();
  return program;
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  // A closed stdout (e.g. `shoal run ... | head`) is not an error worth a stack trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
  });
  try {
    const program = buildProgram();
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Commander already printed the message (or help/version, exit code 0).
      return e.exitCode;
    }
    if (isUserError(e)) {
      process.stderr.write(`shoal: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`shoal: internal error: ${(e as Error)?.stack ?? String(e)}\n`);
    return 70;
  }
}
