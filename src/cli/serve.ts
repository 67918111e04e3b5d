/** `shoal serve`: the OpenAI-compatible HTTP server. */
import { InvalidArgumentError, type Command } from 'commander';
import { UserError } from '../errors.js';
import { DEFAULT_MAX_BODY_BYTES, startServer, type RunningServer } from '../server/server.js';
import { createBackend } from '../backends/index.js';
import { loadModel } from '../engine/engine.js';
import type { QuantizeType } from '../models/weights.js';
import { intOption, numberOption } from './common.js';
import { quantizeOption } from './run.js';
import { Progress } from './progress.js';

interface ServeOptions {
  model: string;
  host: string;
  port?: number;
  apiKey?: string;
  maxRunning: number;
  maxQueue: number;
  kvCacheMb?: number;
  maxContext?: number;
  maxBatchTokens?: number;
  blockSize?: number;
  speculative?: 'mtp';
  device: string;
  servedModelName?: string;
  maxBodyMb?: number;
  shutdownTimeout: number;
  quantize?: QuantizeType;
}

/** Seconds a graceful shutdown waits for running requests before aborting them. */
const SHUTDOWN_GRACE_S = 10;

function portFromEnv(): number | undefined {
  const v = process.env['PORT'];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new UserError(`expected a port number from 0 to 65535, got ${JSON.stringify(v)}`, 'PORT');
  return n;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve a model over an OpenAI-compatible HTTP API')
    .requiredOption('--model <dir>', 'Hugging Face model folder (config.json, safetensors, tokenizer) or a .gguf file')
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--port <n>', 'port to listen on (default: $PORT, else 8000; 0 = any free port)', intOption(0, 65535))
    .option('--api-key <key>', 'require Authorization: Bearer KEY on /v1/* (default: $SHOAL_API_KEY, else none)')
    .option('--max-running <n>', 'most requests decoding at once', intOption(1), 32)
    .option('--max-queue <n>', 'most requests waiting; more get 429', intOption(0), 256)
    .option('--kv-cache-mb <m>', 'memory for the KV cache in MiB (default: enough for --max-running full contexts, at most 1 GiB)', intOption(1))
    .option('--max-context <n>', 'context length in tokens (default: min(max_position_embeddings, 4096))', intOption(2))
    .option('--max-batch-tokens <n>', 'tokens per scheduler step over all requests', intOption(1))
    .option('--block-size <n>', 'tokens per KV-cache block', intOption(1, 1024))
    .option('--speculative <method>', 'speculative decoding: mtp (the checkpoint\'s multi-token-prediction layer)', (v: string) => {
      if (v !== 'mtp') throw new InvalidArgumentError('the only method is "mtp"');
      return v;
    })
    .option('--device <name>', 'cpu | cpu-ref | webgpu | auto (a hardware GPU if one is found, else cpu)', 'auto')
    .option('--served-model-name <name>', 'model name clients send (default: the model folder\'s name)')
    .option('--max-body-mb <m>', `largest request body in MiB (default ${DEFAULT_MAX_BODY_BYTES / 2 ** 20})`, numberOption)
    .option('--shutdown-timeout <s>', 'seconds to let running requests finish on SIGINT/SIGTERM', numberOption, SHUTDOWN_GRACE_S)
    .option('--quantize <type>', 'pack projection weights on load: q8_0 | q4_k (llama.cpp block formats)', quantizeOption)
    .action(async (o: ServeOptions) => {
      if (o.maxBodyMb !== undefined && !(o.maxBodyMb > 0)) throw new UserError('must be > 0', '--max-body-mb');
      const port = o.port ?? portFromEnv() ?? 8000;
      const apiKey = o.apiKey ?? (process.env['SHOAL_API_KEY'] || undefined);
      const progress = new Progress('loading weights');
      let server: RunningServer;
      try {
        server = await startServer({
          model: o.model,
          host: o.host,
          port,
          apiKey,
          maxRunning: o.maxRunning,
          maxQueue: o.maxQueue,
          kvCacheMb: o.kvCacheMb,
          maxContext: o.maxContext,
          maxBatchTokens: o.maxBatchTokens,
          blockSize: o.blockSize,
          speculative: o.speculative ?? null,
          device: o.device,
          servedModelName: o.servedModelName,
          maxBodyBytes: o.maxBodyMb !== undefined ? Math.floor(o.maxBodyMb * 2 ** 20) : undefined,
          onProgress: (d, t) => progress.update(d, t),
          // --quantize needs the load options the server's default loader does not take.
          load: o.quantize ? async () => loadModel(o.model, await createBackend(o.device), (d, t) => progress.update(d, t), { quantize: o.quantize }) : undefined,
        });
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EADDRINUSE') throw new UserError(`${o.host}:${port} is already in use`, '--port');
        if (code === 'EACCES') throw new UserError(`no permission to listen on ${o.host}:${port}`, '--port');
        if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') throw new UserError(`cannot listen on ${o.host}`, '--host');
        throw e;
      }
      progress.done();
      process.stdout.write(`shoal: serving ${server.modelName} at ${server.url}\n`);

      // Graceful shutdown: stop taking requests, let running ones finish, then exit. A second signal forces it.
      await new Promise<void>((done) => {
        let stopping = false;
        const onSignal = (sig: NodeJS.Signals) => {
          if (stopping) {
            process.stderr.write(`shoal: ${sig} again, exiting now\n`);
            process.exit(130);
          }
          stopping = true;
          process.stderr.write(`shoal: ${sig}, shutting down\n`);
          server.close({ graceMs: o.shutdownTimeout * 1000 }).then(done, (e) => {
            process.stderr.write(`shoal: error while shutting down: ${(e as Error).message}\n`);
            done();
          });
        };
        process.on('SIGINT', onSignal);
        process.on('SIGTERM', onSignal);
      });
      process.stderr.write('shoal: stopped\n');
    });
}
