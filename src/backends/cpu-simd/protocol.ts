/**
 * What the main thread and the kernel workers of the fast CPU backend share: the kernel table
 * (names of the WebAssembly exports, indexed), the layout of the control block (a small
 * SharedArrayBuffer, separate from the wasm memories) and the scheduling primitives.
 *
 * A job is a list of groups run one after the other; a group is a list of kernel calls that
 * together compute `chunks` independent chunks (output rows, heads, columns). Threads claim
 * chunks with an atomic counter and, for a chunk c, call every kernel of the group with
 * (args..., c, chunks). A group starts when the previous one is complete (a barrier).
 * Claiming is dynamic, so a thread that is late (descheduled by another process, a slower
 * core) never holds the others up: the job ends when its chunks are done, whoever did them.
 * Claim counters carry the job's tag, so a thread still looking at an old job claims nothing.
 * The main thread takes part in every job; each worker has its own mailbox word where the main
 * thread writes the job number (and notifies). No postMessage on the hot path.
 */

/** Every kernel the wasm module exports, in a fixed order: commands name kernels by index. */
export const KERNELS = [
  'matmul_f32', 'matmul_bf16', 'matmul_f16', 'matmul_f16s', 'matmul_fp8', 'matmul_fp8s',
  'mla_f32', 'mla_bf16', 'mla_f16', 'mla_f16s', 'mla_fp8', 'mla_fp8s',
  'rmsnorm_f32', 'rmsnorm_bf16', 'rmsnorm_f16', 'rmsnorm_f16s',
  'add', 'swiglu', 'swiglu_cols', 'scatter_add_cols',
  'matmul_q8_0', 'matmul_q4_0', 'matmul_q4_k', 'matmul_q6_k', 'mla_q8_0', 'mla_q4_0', 'mla_q4_k', 'mla_q6_k',
  'quantize_q8', 'imatmul_q8_0', 'imatmul_q4_0', 'imatmul_q4_k', 'imatmul_q6_k',
  'quantize_q8r', 'imatmulr_q4_k', 'imatmulr_q6_k', 'mha_prefill',
] as const;
export type KernelName = (typeof KERNELS)[number];
export const KERNEL_INDEX: Record<KernelName, number> = Object.fromEntries(KERNELS.map((k, i) => [k, i])) as Record<KernelName, number>;

/** Most threads (main included) a pool runs. */
export const MAX_THREADS = 64;
/** Most groups in a job, commands in a job, arguments of a command, chunks of a group. */
export const MAX_GROUPS = 16;
export const MAX_CMDS = 4096;
export const CMD_STRIDE = 32;
export const MAX_ARGS = CMD_STRIDE - 3;
export const MAX_CHUNKS = 0xffff;

// Control block: Int32 words, then commands as Float64 (exact for i32 and f32 arguments).
export const C_STOP = 0;
/** Set by a worker whose kernel threw (its index); the main thread reports it after the job. */
export const C_ERROR = 1;
export const C_NGROUPS = 2;
/** Per group g: claim word (tag << 16 | next chunk), chunks done, chunk count, first and end command. */
export const C_CLAIM = 16;
export const C_DONE = C_CLAIM + MAX_GROUPS;
export const C_NCHUNK = C_DONE + MAX_GROUPS;
export const C_CMD0 = C_NCHUNK + MAX_GROUPS;
export const C_CMD1 = C_CMD0 + MAX_GROUPS;
/** Per worker w (1..MAX_THREADS-1): its job mailbox and its ready flag. */
export const C_JOB = C_CMD1 + MAX_GROUPS;
export const C_READY = C_JOB + MAX_THREADS;
export const CTRL_INTS = C_READY + MAX_THREADS;
export const CMD_OFFSET_BYTES = Math.ceil((CTRL_INTS * 4) / 8) * 8;
export const CTRL_BYTES = CMD_OFFSET_BYTES + MAX_CMDS * CMD_STRIDE * 8;

/**
 * A claim word's chunk field once its job is over. A thread that is still looking at that job
 * may read the chunk count of the next one (written before the claims reopen); against this
 * value every count compares as used up, so such a thread can never claim, run and count a
 * chunk of the wrong job.
 */
export const CLOSED = 0xffff;

/** Views of a control block; a new one (no buffer given) starts with every claim closed. */
export function controlBlock(buf?: SharedArrayBuffer): { buf: SharedArrayBuffer; ctrl: Int32Array; cmds: Float64Array } {
  const b = buf ?? new SharedArrayBuffer(CTRL_BYTES);
  const ctrl = new Int32Array(b, 0, CTRL_INTS);
  if (!buf) for (let g = 0; g < MAX_GROUPS; g++) Atomics.store(ctrl, C_CLAIM + g, CLOSED);
  return { buf: b, ctrl, cmds: new Float64Array(b, CMD_OFFSET_BYTES) };
}

/** The tag a job's claim words carry (15 bits, so claim words stay positive). */
export function jobTag(job: number): number {
  return job & 0x7fff;
}

/** How long a waiting thread spins before it sleeps in Atomics.wait (microseconds). */
export let SPIN_MICROS = 20;
export function setSpinMicros(us: number): void {
  SPIN_MICROS = us;
}

/** Waits until ctrl[index] differs from `value` (spinning first, then sleeping); returns the new value. */
export function waitWhileEqual(ctrl: Int32Array, index: number, value: number, spinMicros = SPIN_MICROS): number {
  let v = Atomics.load(ctrl, index);
  if (v !== value) return v;
  const deadline = performance.now() + spinMicros / 1000;
  let i = 0;
  while ((v = Atomics.load(ctrl, index)) === value) {
    if ((++i & 127) === 0 && performance.now() > deadline) Atomics.wait(ctrl, index, value);
  }
  return v;
}

/** A kernel call: every participant calls `kernel(...args, part, parts)` on its instance for `shard`. */
export interface Command {
  kernel: number;
  shard: number;
  args: number[];
}

/** Kernel calls computing `units` independent pieces (rows, heads, columns). */
export interface Group {
  cmds: Command[];
  units: number;
}

/** Chunks per thread: more balance the load (a late thread takes fewer), fewer cost less. */
const CHUNKS_PER_THREAD = 4;

/**
 * Writes a job's groups (commands, chunk counts, zeroed done counters) into the control block.
 * Only the main thread writes, and only while the previous job is closed.
 */
export function writeJob(ctrl: Int32Array, cmds: Float64Array, groups: Group[], threads: number): void {
  if (groups.length > MAX_GROUPS) throw new Error(`kernel job of ${groups.length} groups (at most ${MAX_GROUPS})`);
  let k = 0;
  for (let g = 0; g < groups.length; g++) {
    const { cmds: list, units } = groups[g];
    if (k + list.length > MAX_CMDS) throw new Error(`kernel job of more than ${MAX_CMDS} commands`);
    Atomics.store(ctrl, C_CMD0 + g, k);
    for (const c of list) {
      if (c.args.length > MAX_ARGS) throw new Error(`${KERNELS[c.kernel]}: ${c.args.length} arguments (at most ${MAX_ARGS})`);
      const o = k++ * CMD_STRIDE;
      cmds[o] = c.kernel;
      cmds[o + 1] = c.shard;
      cmds[o + 2] = c.args.length;
      for (let a = 0; a < c.args.length; a++) cmds[o + 3 + a] = c.args[a];
    }
    Atomics.store(ctrl, C_CMD1 + g, k);
    Atomics.store(ctrl, C_NCHUNK + g, Math.max(1, Math.min(MAX_CHUNKS, units, threads * CHUNKS_PER_THREAD)));
    Atomics.store(ctrl, C_DONE + g, 0);
  }
}

/** Opens a written job's groups to claims under `tag` (last: no one has seen the tag before). */
export function openJob(ctrl: Int32Array, groups: number, tag: number): void {
  for (let g = 0; g < groups; g++) Atomics.store(ctrl, C_CLAIM + g, tag << 16);
  Atomics.store(ctrl, C_NGROUPS, groups);
}

/** Closes a finished job's groups (see CLOSED), before the next job is written. */
export function closeJob(ctrl: Int32Array, groups: number, tag: number): void {
  for (let g = 0; g < groups; g++) Atomics.store(ctrl, C_CLAIM + g, (tag << 16) | CLOSED);
}

/** Claims the next chunk of group g of the job tagged `tag`; -1 when none is left (or the job is over). */
function claim(ctrl: Int32Array, g: number, tag: number, chunks: number): number {
  for (;;) {
    const v = Atomics.load(ctrl, C_CLAIM + g);
    if (v >>> 16 !== tag) return -1;
    const c = v & 0xffff;
    if (c >= chunks) return -1;
    if (Atomics.compareExchange(ctrl, C_CLAIM + g, v, v + 1) === v) return c;
  }
}

/**
 * Waits until every chunk of group g is done, or the job tagged `tag` is over (a thread that
 * came late must not wait on a later job's counters). Sleeps in short slices to check both.
 */
function awaitGroup(ctrl: Int32Array, g: number, tag: number, chunks: number, spinMicros: number): void {
  const deadline = performance.now() + spinMicros / 1000;
  let i = 0;
  for (;;) {
    const done = Atomics.load(ctrl, C_DONE + g);
    const v = Atomics.load(ctrl, C_CLAIM + g);
    if (done >= chunks || v >>> 16 !== tag || (v & 0xffff) === CLOSED) return;
    if ((++i & 127) === 0 && performance.now() > deadline) Atomics.wait(ctrl, C_DONE + g, done, 1);
  }
}

/** The exports of one instance, indexed as KERNELS. */
export type KernelFns = ((...args: number[]) => void)[];

export function kernelFns(instance: WebAssembly.Instance): KernelFns {
  return KERNELS.map((name) => {
    const fn = instance.exports[name];
    if (typeof fn !== 'function') throw new Error(`kernels.wasm lacks the export ${name} (rebuild: node scripts/build-wasm.js)`);
    return fn as (...args: number[]) => void;
  });
}

export function instantiate(module: WebAssembly.Module, memory: WebAssembly.Memory): KernelFns {
  return kernelFns(new WebAssembly.Instance(module, { env: { memory } }));
}

/**
 * Takes part in the job tagged `tag`: claims chunks group by group and runs them, and returns
 * once the last group is complete (or the job is over). A kernel that throws still counts its
 * chunk done (nobody waits forever); later chunks are claimed and counted but not run, and the
 * first error is rethrown at the end.
 */
export function runJob(ctrl: Int32Array, cmds: Float64Array, shards: KernelFns[], tag: number, scratch: number[][], onError?: (e: unknown) => void): void {
  let failure: unknown = null;
  const groups = Atomics.load(ctrl, C_NGROUPS);
  for (let g = 0; g < groups; g++) {
    const chunks = Atomics.load(ctrl, C_NCHUNK + g);
    let c: number;
    while ((c = claim(ctrl, g, tag, chunks)) >= 0) {
      if (failure === null) {
        try {
          const end = Atomics.load(ctrl, C_CMD1 + g);
          for (let k = Atomics.load(ctrl, C_CMD0 + g); k < end; k++) {
            const o = k * CMD_STRIDE;
            const argc = cmds[o + 2];
            const args = (scratch[argc] ??= new Array<number>(argc + 2));
            for (let a = 0; a < argc; a++) args[a] = cmds[o + 3 + a];
            args[argc] = c;
            args[argc + 1] = chunks;
            shards[cmds[o + 1]][cmds[o]].apply(null, args);
          }
        } catch (e) {
          failure = e;
          onError?.(e); // before the chunk counts as done, so the main thread sees it
        }
      }
      if (Atomics.add(ctrl, C_DONE + g, 1) + 1 === chunks) Atomics.notify(ctrl, C_DONE + g);
    }
    awaitGroup(ctrl, g, tag, chunks, SPIN_MICROS);
  }
  if (failure !== null) throw failure;
}


