/**
 * The thread pool of the fast CPU backend: `threads - 1` worker_threads plus the calling thread,
 * all running the same wasm kernels on the same shared memories. `run` hands a job (groups of
 * kernel calls, split into chunks) to the workers through the control block and
 * Atomics.notify, claims chunks itself too, and returns when every chunk is done (waiting in
 * Atomics.wait, which Node allows on the main thread), so ops stay synchronous from the
 * model's point of view. A worker that dies or never starts only means fewer threads: chunks
 * nobody claims are done by the others. Workers are unref'd, so they never keep the process
 * alive; dispose() stops them.
 */
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import {
  C_ERROR, C_JOB, C_READY, C_STOP, MAX_THREADS, SPIN_MICROS, closeJob, controlBlock, instantiate, jobTag, openJob, runJob, setSpinMicros, writeJob, type Group, type KernelFns,
} from './protocol.js';

export type { Group } from './protocol.js';

export class KernelPool {
  readonly threads: number;
  private readonly ctrl: Int32Array;
  private readonly cmds: Float64Array;
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  /** Kernel functions of the calling thread, per shard. */
  private readonly fns: KernelFns[] = [];
  private readonly scratch: number[][] = [];
  private ready: number[] = [];
  /** Workers that errored or exited before becoming ready: never waited for. */
  private failed = 0;
  private job = 0;
  private stopped = false;

  constructor(private readonly module: WebAssembly.Module, threads: number, memories: WebAssembly.Memory[], spinMicros = SPIN_MICROS) {
    setSpinMicros(spinMicros);
    this.threads = Math.max(1, Math.min(MAX_THREADS, Math.floor(threads)));
    const { buf, ctrl, cmds } = controlBlock();
    this.ctrl = ctrl;
    this.cmds = cmds;
    for (const m of memories) this.fns.push(instantiate(module, m));
    for (let index = 1; index < this.threads; index++) {
      const { port1, port2 } = new MessageChannel();
      const worker = new Worker(new URL('./worker.js', import.meta.url), {
        workerData: { index, module, ctrl: buf, memories, port: port2, spinMicros },
        transferList: [port2],
        // Not the parent's options: `node --input-type=module -e ...` would make every worker
        // fail at start ("--input-type can only be used with string input"), silently leaving
        // one thread. The kernels need no Node options (V8 flags are process-wide anyway).
        execArgv: [],
      });
      let failed = false;
      const fail = (why: string) => {
        if (failed || this.stopped) return;
        failed = true;
        this.failed++;
        // A worker that cannot start is simply never ready; the others carry on.
        process.emitWarning(`shoal cpu kernel worker ${index} failed: ${why}`);
      };
      worker.on('error', (e) => fail(e.message));
      worker.on('exit', (code) => { if (Atomics.load(this.ctrl, C_READY + index) !== 1) fail(`exited with code ${code} before it was ready`); });
      worker.unref();
      port1.unref();
      this.workers.push(worker);
      this.ports.push(port1);
    }
  }

  /** Number of shards with kernel instances. */
  get shards(): number {
    return this.fns.length;
  }

  /** Threads that take part in parallel jobs right now (the calling thread plus ready workers). */
  get activeThreads(): number {
    return 1 + this.readyWorkers().length;
  }

  /** Resolves once every worker is ready (or after `timeoutMs`, with those that are). */
  async whenReady(timeoutMs = 10000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.readyWorkers().length + this.failed < this.workers.length && Date.now() < end && !this.stopped) {
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /** Adds a memory: instantiated here now, in each worker when a job first needs it. */
  addShard(memory: WebAssembly.Memory): void {
    const shard = this.fns.length;
    this.fns.push(instantiate(this.module, memory));
    for (const p of this.ports) p.postMessage({ shard, memory });
  }

  private readyWorkers(): number[] {
    if (this.ready.length < this.workers.length && !this.stopped) {
      const r: number[] = [];
      for (let w = 1; w < this.threads; w++) if (Atomics.load(this.ctrl, C_READY + w) === 1) r.push(w);
      this.ready = r;
    }
    return this.ready;
  }

  /**
   * Runs a job: its groups in order, each split into chunks that the threads claim. With
   * parallel = false (small ops) or no ready worker, the calling thread runs it alone, each
   * kernel once with (0, 1).
   */
  run(groups: Group[], parallel: boolean): void {
    const workers = parallel && !this.stopped ? this.readyWorkers() : [];
    if (!workers.length) {
      for (const g of groups) for (const c of g.cmds) this.fns[c.shard][c.kernel](...c.args, 0, 1);
      return;
    }
    const ctrl = this.ctrl;
    writeJob(ctrl, this.cmds, groups, workers.length + 1);
    this.job = (this.job + 1) | 0;
    const tag = jobTag(this.job);
    openJob(ctrl, groups.length, tag);
    for (const w of workers) {
      Atomics.store(ctrl, C_JOB + w, this.job);
      Atomics.notify(ctrl, C_JOB + w, 1);
    }
    let failure: unknown = null;
    try {
      runJob(ctrl, this.cmds, this.fns, tag, this.scratch);
    } catch (e) {
      failure = e;
    }
    closeJob(ctrl, groups.length, tag); // every chunk is done
    const bad = Atomics.exchange(ctrl, C_ERROR, 0);
    if (bad && failure === null) {
      const msg = receiveMessageOnPort(this.ports[bad - 1])?.message as { error?: string } | undefined;
      failure = new Error(`cpu kernel worker ${bad} failed: ${msg?.error ?? 'unknown error'}`);
    }
    if (failure !== null) throw failure;
  }

  /** Stops and terminates the workers. */
  dispose(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.ready = [];
    Atomics.store(this.ctrl, C_STOP, 1);
    for (let w = 1; w < this.threads; w++) {
      Atomics.store(this.ctrl, C_JOB + w, -1);
      Atomics.notify(this.ctrl, C_JOB + w);
    }
    for (const wk of this.workers) void wk.terminate();
    for (const p of this.ports) p.close();
  }
}
