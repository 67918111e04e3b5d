/**
 * The fast CPU backend: WebAssembly SIMD128 kernels (kernels.as) on every core (pool.ts) over
 * shared memory (shard.ts). A drop-in for CpuBackend, which it extends: the heavy ops (matmul,
 * rmsNorm, add, swiglu, mlaAttention, moe) run in wasm; data movement, RoPE, the router and
 * argmax stay in TypeScript but read and write the same shared memory; and a weight whose format
 * has no kernels (formats.ts) is computed on by the reference code, op by op.
 *
 * Memory: weights are copied once, packed, into a shard at upload. Tensors are float32 blocks
 * of a shard (a view plus an offset); each is freed when its handle is garbage collected
 * (FinalizationRegistry), and op scratch is freed when the op returns. Since V8 cannot see how
 * much shared memory dead handles hold, the backend asks for a collection after every
 * `gcBudgetBytes` of new tensors not released explicitly (where `gc` can be had), which keeps
 * the arena from growing between the engine's own collections.
 *
 * docs/backends.md, "Fast CPU backend", has the rationale and the numbers.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import type {
  AttentionBatch, DeviceInfo, DeviceWeight, ExpertWeights, HostWeight, KVPool, MlaShape, Routing, Tensor, WeightSpec,
} from '../backend.js';
import { CpuBackend, CpuTensor } from '../cpu/cpu-backend.js';
import { dequantRow, weightBytes, weightDataBytes } from '../cpu/dequant.js';
import { kernelsFor, type FormatKernels, type Int8Kernels } from './formats.js';
import { isPackedFormat } from '../../formats/quant.js';
import { KernelPool, type Group } from './pool.js';
import { KERNEL_INDEX, type Command, type KernelName } from './protocol.js';
import { MAX_SHARD_BYTES, Shard, alignUp } from './shard.js';

export interface SimdCpuOptions {
  /** Threads computing each op, the calling one included (default: os.availableParallelism()). */
  threads?: number;
  /** Largest shared memory (default and maximum 4 GiB); models beyond it use several. */
  shardBytes?: number;
  /** Work (multiply-adds) below which an op runs on the calling thread alone (default 32768). */
  minParallelWork?: number;
  /**
   * New tensor bytes, less those released explicitly (Backend.release), after which a garbage
   * collection is requested (default 64 MiB; 0 = never).
   */
  gcBudgetBytes?: number;
  /**
   * How long an idle thread spins before sleeping in Atomics.wait, in microseconds (default 20).
   * Longer cuts the wake-up latency of back-to-back ops on an otherwise idle machine; shorter
   * leaves the cores to other processes sooner.
   */
  spinMicros?: number;
  /**
   * Tokens from which a matmul with a llama.cpp block-format weight (q8_0, q4_0, q4_k, q6_k)
   * quantizes its activations to q8 and computes with integer dot products, as llama.cpp does
   * (about 1e-3 relative error; docs/backends.md). Default INT8_MIN_TOKENS; Infinity keeps
   * every matmul on the float path.
   */
  int8MinTokens?: number;
  /**
   * Use the relaxed-SIMD build of the kernels where it runs exactly (relaxedSimdUsable; default
   * true): its q4_k/q6_k kernels multiply the weights' code bytes by int8 activations directly.
   * false keeps the SIMD128 build.
   */
  relaxedSimd?: boolean;
  /**
   * Latent attention without absorbing kv_b for a sequence's tokens of a batch (keys and values
   * decompressed once per call): 'auto' (default) where it costs fewer multiply-adds
   * (mlaExpandPays: prefill chunks), 'always', or 'never' (the absorbed kernel only).
   */
  mlaExpand?: 'auto' | 'always' | 'never';
  /**
   * Most bytes of scratch the expanded path may take for one sequence (its keys and values:
   * cached rows · heads · (nope + vDim) floats; default 256 MiB), and never more than half of
   * the shard's free room: past that the sequence takes the absorbed kernel, whose scratch does
   * not grow with the cache.
   */
  mlaExpandMaxBytes?: number;
}

/**
 * Default SimdCpuOptions.int8MinTokens (docs/backends.md has the figures): every matmul with a
 * block-format weight, decode included, as llama.cpp computes them. For batches the integer
 * kernels do 1.5x to 3x the float path's multiply-adds per second; for a single token they
 * stream a q8_0 weight from memory about twice as fast (the float path decodes each weight to
 * f32 at 4-6 instructions per four weights, which bounds it below memory speed).
 */
export const INT8_MIN_TOKENS = 1;

/**
 * Whether latent attention for `tokens` tokens of one sequence whose cache holds `length` rows
 * costs fewer multiply-adds per head without absorption: decompressing every row's key and
 * value (length · kvRank · (nope + vDim)), then nope + rope + vDim per visible row and token,
 * against 2 · kvRank + rope per visible row and token plus folding kv_b into each token's query
 * and output (kvRank · (nope + vDim)). A prefill chunk of 256 tokens costs 0.8× as much
 * expanded; decode, a few tokens over a long cache, many times more. The 0.9 keeps close calls
 * on the absorbed kernel.
 */
export function mlaExpandPays(s: MlaShape, tokens: number, length: number): boolean {
  const R = s.kvRank, N = s.nopeDim, P = s.ropeDim, V = s.vDim;
  const visible = Math.max(1, length - (tokens - 1) / 2);
  const absorbed = tokens * (visible * (2 * R + P) + R * (N + V));
  const expanded = length * R * (N + V) + tokens * visible * (N + P + V);
  return expanded < 0.9 * absorbed;
}

// ---- the compiled kernels ----------------------------------------------------------------

/**
 * The two builds of kernels.as (scripts/build-wasm.js): SIMD128 everywhere, and SIMD128 plus
 * relaxed SIMD, whose k-quant kernels multiply weight bytes by int8 activations directly.
 */
export type KernelBuild = 'simd128' | 'relaxed';

const compiled = new Map<KernelBuild, WebAssembly.Module>();
const WASM_FILE: Record<KernelBuild, string> = { simd128: './kernels.wasm', relaxed: './kernels-relaxed.wasm' };

function wasmBytes(build: KernelBuild): Uint8Array<ArrayBuffer> {
  const url = new URL(WASM_FILE[build], import.meta.url);
  try {
    return new Uint8Array(readFileSync(url));
  } catch {
    throw new Error(`the fast CPU kernels are not built: ${fileURLToPath(url)} is missing (npm run build)`);
  }
}

/** The compiled kernels of a build (dist/src/backends/cpu-simd/kernels*.wasm). */
export function kernelModule(build: KernelBuild = 'simd128'): WebAssembly.Module {
  let m = compiled.get(build);
  if (!m) {
    m = new WebAssembly.Module(wasmBytes(build));
    compiled.set(build, m);
  }
  return m;
}

let relaxedChecked: boolean | undefined;

/**
 * Whether the relaxed-SIMD build runs here and computes exactly. Node 22+ ships relaxed SIMD;
 * Node 20 (V8 11.3) has it behind --experimental-wasm-relaxed-simd, which is turned on for this
 * process when the module does not validate without it (V8 flags are process-wide, so the
 * worker threads get it too). Then the one relaxed instruction the kernels use is checked
 * against exact integer sums on operands that cover its whole range (kernels.as,
 * relaxed_check): an engine that got it wrong keeps the SIMD128 build. SHOAL_RELAXED_SIMD=0
 * turns the relaxed build off.
 */
export function relaxedSimdUsable(): boolean {
  if (relaxedChecked !== undefined) return relaxedChecked;
  relaxedChecked = false;
  if (process.env.SHOAL_RELAXED_SIMD === '0') return false;
  try {
    const bytes = wasmBytes('relaxed');
    if (!WebAssembly.validate(bytes)) v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    if (!WebAssembly.validate(bytes)) return false;
    const module = new WebAssembly.Module(bytes);
    const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    const check = new WebAssembly.Instance(module, { env: { memory } }).exports.relaxed_check as (a: number, b: number) => number;
    const a = new Int8Array(memory.buffer, 0, 64), b = new Uint8Array(memory.buffer, 64, 64);
    for (let round = 0; round < 4; round++) {
      let exact = 0;
      for (let i = 0; i < 64; i++) {
        // Extremes first (-128, 127 against 127 and 0), then a spread of both signs.
        a[i] = round === 0 ? (i & 1 ? 127 : -128) : ((i * 37 + round * 101) % 256) - 128;
        b[i] = round === 0 ? (i & 2 ? 127 : 0) : (i * 29 + round * 53) % 128;
        exact += a[i] * b[i];
      }
      if (check(0, 64) !== exact) return false;
    }
    compiled.set('relaxed', module);
    relaxedChecked = true;
  } catch {
    relaxedChecked = false;
  }
  return relaxedChecked;
}

/** Whether the fast CPU backend can run here (kernels built, SIMD and shared memory supported). */
export function simdCpuAvailable(): boolean {
  try {
    kernelModule();
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    return true;
  } catch {
    return false;
  }
}

// ---- GC nudging --------------------------------------------------------------------------

type GcFn = (opts?: { type?: 'minor' | 'major' }) => void;
let gcFn: GcFn | null | undefined;
function forcedGc(): GcFn | null {
  if (gcFn === undefined) {
    gcFn = ((globalThis as { gc?: GcFn }).gc) ?? null;
    if (!gcFn) {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFn = runInNewContext('gc') as GcFn;
      } catch {
        gcFn = null;
      }
    }
  }
  return gcFn;
}

// ---- handles -------------------------------------------------------------------------------

/** A tensor: rows × cols float32 at `ptr` in `shard` (`data` is a view of those bytes). */
export class SimdTensor extends CpuTensor {
  constructor(rows: number, cols: number, data: Float32Array, readonly shard: Shard, readonly ptr: number) {
    super(rows, cols, data);
  }
}

interface Placed {
  ptr: number;
  scalesPtr: number;
}

class SimdWeight implements DeviceWeight {
  readonly name: string;
  readonly format: HostWeight['format'];
  readonly rows: number;
  readonly cols: number;
  readonly bytes: number;
  /** fp8 block shape (0 otherwise). */
  readonly br: number;
  readonly bc: number;
  /** Copies of the packed weight in other shards (kv_b for a pool elsewhere, norms), made once. */
  readonly replicas = new Map<Shard, Placed>();
  constructor(
    /** The weight as the reference code reads it: views of the shard, or the caller's arrays when `kernels` is null. */
    readonly host: HostWeight,
    readonly kernels: FormatKernels | null,
    readonly shard: Shard | null,
    readonly ptr: number,
    readonly scalesPtr: number,
  ) {
    this.name = host.name;
    this.format = host.format;
    this.rows = host.rows;
    this.cols = host.cols;
    this.bytes = weightBytes(host);
    this.br = host.blockRows ?? 0;
    this.bc = host.blockCols ?? 0;
  }
}

/**
 * A weight's `bytes` of data at `ptr` in `shard`, as the typed array its format calls for: the
 * reference code (embedding, the router's bias, fallbacks) reads the shard bytes through it.
 */
function dataView(w: Pick<HostWeight, 'format' | 'rows' | 'cols'>, bytes: number, shard: Shard, ptr: number): HostWeight['data'] {
  const n = w.rows * w.cols;
  return w.format === 'f32' ? shard.f32(ptr, n)
    : w.format === 'fp8_e4m3_block' ? shard.u8(ptr, n)
    : isPackedFormat(w.format) ? shard.u8(ptr, bytes) // blocks, as stored
    : shard.u16(ptr, n);
}

class SimdKVPool implements KVPool {
  readonly bytes: number;
  /** Per layer: a view of its slots (the reference code's writeKV/copyBlocks use these). */
  readonly data: Float32Array[] = [];
  readonly shards: Shard[] = [];
  readonly ptrs: number[] = [];
  constructor(readonly layers: number, readonly numBlocks: number, readonly blockSize: number, readonly width: number) {
    this.bytes = layers * numBlocks * blockSize * width * 4;
  }
}

/** dst row r = src row rows[r], for rows of `width` floats. */
function gatherRows(dst: Float32Array, src: Float32Array, rows: readonly number[], width: number): void {
  rows.forEach((i, r) => dst.set(src.subarray(i * width, (i + 1) * width), r * width));
}

/** dst row rows[r] = src row r, for rows of `width` floats. */
function scatterRows(dst: Float32Array, src: Float32Array, rows: readonly number[], width: number): void {
  rows.forEach((i, r) => dst.set(src.subarray(r * width, (r + 1) * width), i * width));
}

interface Held {
  shard: Shard;
  ptr: number;
  bytes: number;
}

const K = KERNEL_INDEX;

/** Shards are filled with weights and caches up to this fraction; the rest is for activations. */
const WEIGHT_FILL = 0.875;

// ---- the backend -------------------------------------------------------------------------

export class SimdCpuBackend extends CpuBackend {
  override readonly info: DeviceInfo;
  readonly threads: number;
  private readonly module: WebAssembly.Module;
  /** Whether the relaxed-SIMD build of the kernels is in use. */
  readonly relaxed: boolean;
  private readonly pool: KernelPool;
  private readonly shardBytes: number;
  private readonly minParallelWork: number;
  private readonly gcBudget: number;
  private readonly int8MinTokens: number;
  private readonly mlaExpand: 'auto' | 'always' | 'never';
  private readonly mlaExpandMaxBytes: number;
  private shards: Shard[] = [];
  private temps: Held[] = [];
  private disposed = false;
  private sinceGc = 0;
  private gcCount = 0;
  private readonly registry = new FinalizationRegistry<Held>((h) => this.freeHeld(h));

  /** Creates the backend and waits until its worker threads are up. */
  static async create(opts: SimdCpuOptions = {}): Promise<SimdCpuBackend> {
    const b = new SimdCpuBackend(opts);
    await b.ready();
    return b;
  }

  /** Usable at once: ops run on the calling thread until the workers are up. */
  constructor(opts: SimdCpuOptions = {}) {
    super();
    this.relaxed = (opts.relaxedSimd ?? true) && relaxedSimdUsable();
    this.module = kernelModule(this.relaxed ? 'relaxed' : 'simd128');
    this.threads = Math.max(1, Math.floor(opts.threads ?? availableParallelism()));
    this.shardBytes = Math.min(MAX_SHARD_BYTES, opts.shardBytes ?? MAX_SHARD_BYTES);
    this.minParallelWork = opts.minParallelWork ?? 32768;
    this.gcBudget = opts.gcBudgetBytes ?? 64 << 20;
    this.int8MinTokens = opts.int8MinTokens ?? INT8_MIN_TOKENS;
    this.mlaExpand = opts.mlaExpand ?? 'auto';
    this.mlaExpandMaxBytes = opts.mlaExpandMaxBytes ?? 256 << 20;
    const first = new Shard(0, this.shardBytes);
    this.shards.push(first);
    this.pool = new KernelPool(this.module, this.threads, [first.memory], opts.spinMicros);
    this.info = { name: `cpu (WebAssembly SIMD${this.relaxed ? ' + relaxed' : ''}, ${this.threads} thread${this.threads > 1 ? 's' : ''})`, kind: 'cpu' };
  }

  /** Resolves once every worker thread is ready. */
  async ready(): Promise<void> {
    await this.pool.whenReady();
  }

  /** Threads taking part in parallel ops right now. */
  get activeThreads(): number {
    return this.pool.activeThreads;
  }

  /** Bytes of shared memory in use, over all shards. */
  get sharedBytes(): number {
    return this.shards.reduce((a, s) => a + s.used, 0);
  }

  // ---- memory ------------------------------------------------------------------------------

  private newShard(): Shard {
    const s = new Shard(this.shards.length, this.shardBytes);
    this.shards.push(s);
    this.pool.addShard(s.memory);
    return s;
  }

  /** A shard with room for `bytes` more (weights keep some room free in every shard). */
  private shardWithRoom(bytes: number, forWeights: boolean): Shard {
    const last = this.shards[this.shards.length - 1];
    const limit = forWeights ? last.maxBytes * WEIGHT_FILL : last.maxBytes;
    if (last.used + bytes <= limit && last.room >= bytes) return last;
    if (alignUp(bytes) > this.shardBytes - 65536) throw new Error(`a block of ${bytes} bytes does not fit in one shared memory (${this.shardBytes} bytes)`);
    return this.newShard();
  }

  private allocIn(shard: Shard, bytes: number): number {
    const ptr = shard.alloc(bytes);
    if (ptr < 0) throw new Error(`out of shared memory: shard ${shard.index} has ${shard.used} bytes in use, ${bytes} more requested (${shard.maxBytes} at most)`);
    return ptr;
  }

  private freeHeld(h: Held): void {
    if (!this.disposed) h.shard.release(h.ptr, h.bytes);
  }

  /** Scratch for the op in progress, freed by `op`. */
  private temp(shard: Shard, bytes: number): number {
    const ptr = this.allocIn(shard, bytes);
    this.temps.push({ shard, ptr, bytes });
    return ptr;
  }

  /** Runs an op body and frees its scratch afterwards. */
  private op<T>(body: () => T): T {
    const mark = this.temps.length;
    try {
      return body();
    } finally {
      while (this.temps.length > mark) this.freeHeld(this.temps.pop()!);
    }
  }

  /**
   * A new tensor. Kernel outputs must be in the op's shard (`anywhere` false); other tensors
   * (inputs, data movement) go to the preferred shard when it has room, else to any other.
   */
  private newTensor(shard: Shard, rows: number, cols: number, anywhere = false): SimdTensor {
    this.mustLive();
    const len = rows * cols;
    const bytes = len * 4;
    let ptr = shard.alloc(bytes);
    if (ptr < 0) {
      if (!anywhere) ptr = this.allocIn(shard, bytes); // throws: out of shared memory
      for (const s of this.shards) if (ptr < 0 && s !== shard && (ptr = s.alloc(bytes)) >= 0) shard = s;
      if (ptr < 0) {
        // The last shard may have the bytes free but not in one piece: then a new one.
        shard = this.shardWithRoom(bytes, false);
        ptr = shard.alloc(bytes);
        if (ptr < 0) ptr = this.allocIn((shard = this.newShard()), bytes);
      }
    }
    const t = new SimdTensor(rows, cols, shard.f32(ptr, len), shard, ptr);
    this.registry.register(t, { shard, ptr, bytes }, t);
    this.sinceGc += bytes;
    if (this.gcBudget > 0 && this.sinceGc > this.gcBudget) this.nudgeGc();
    return t;
  }

  /**
   * Asks V8 for a full collection of dead tensor handles (their memory returns when the
   * finalizers run, at the next turn of the event loop). A full one: V8's scavenger treats
   * FinalizationRegistry targets as strong, so minor collections would free nothing.
   */
  private nudgeGc(): void {
    this.sinceGc = 0;
    const gc = forcedGc();
    if (!gc) return;
    this.gcCount++;
    gc();
  }

  /** The shard a tensor lives in, if it is one of ours. */
  private shardOf(x: Tensor): Shard | null {
    return x instanceof SimdTensor && this.shards[x.shard.index] === x.shard ? x.shard : null;
  }

  /** Offset of x's values in `shard`: x itself, or a copy made for the op in progress. */
  private tensorIn(x: Tensor, shard: Shard): number {
    if (x instanceof SimdTensor && x.shard === shard) return x.ptr;
    const src = (x as CpuTensor).data;
    const ptr = this.temp(shard, src.length * 4);
    shard.f32(ptr, src.length).set(src);
    return ptr;
  }

  /** Where a weight's packed data and scales are in `shard` (copied there once when needed). */
  private weightAt(w: SimdWeight, shard: Shard): Placed {
    if (w.shard === shard) return w;
    let p = w.replicas.get(shard);
    if (!p) {
      p = this.place(w.host, shard);
      w.replicas.set(shard, p);
    }
    return p;
  }

  /** Copies a packed weight (data, then fp8 scales) into `shard`. */
  private place(hw: HostWeight, shard: Shard): Placed {
    const data = hw.data;
    const ptr = this.allocIn(shard, data.byteLength);
    shard.u8(ptr, data.byteLength).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    let scalesPtr = 0;
    if (hw.scales) {
      scalesPtr = this.allocIn(shard, hw.scales.byteLength);
      shard.f32(scalesPtr, hw.scales.length).set(hw.scales);
    }
    return { ptr, scalesPtr };
  }

  /** Runs groups of kernel calls (one after the other), threaded when there is enough work. */
  private exec(groups: Group[], work: number): void {
    this.pool.run(groups, work >= this.minParallelWork);
  }

  private cmd(kernel: KernelName, shard: Shard, args: number[]): Command {
    return { kernel: K[kernel], shard: shard.index, args };
  }

  /** The integer (q8-activation) kernels for a matmul of n tokens with w, or null for the float path. */
  private int8For(w: SimdWeight, n: number): Int8Kernels | null {
    return w.kernels?.int8 && n >= this.int8MinTokens ? w.kernels.int8 : null;
  }

  /**
   * Scratch for x [n, k] (row stride xs, at x in `shard`) quantized as `q` wants it (layout in
   * kernels.as, quantize_q8), and the command that fills it (one chunk per row). Returns the
   * command and the first three arguments of q's imatmul: codes, scales, sums.
   */
  private quantized(shard: Shard, q: Int8Kernels, x: number, xs: number, n: number, k: number): { cmd: Command; args: number[] } {
    // From four tokens on, the kernels take tokens in tiles of eight or four, so the last
    // tile's padding must be readable (its results are dropped).
    const np = Math.ceil(n / 4) * 4, n8 = Math.ceil(n / 8) * 8;
    const scales = this.temp(shard, ((k / q.block) * np + 4) * 4);
    const sums = q.sums ? this.temp(shard, n8 * (k / q.sums) * 2) : 0;
    if (q.quantize === 'quantize_q8r') {
      // int8 codes, q8_K blocks (relaxed-SIMD k-quant kernels).
      const codes = this.temp(shard, n8 * k);
      return { cmd: this.cmd('quantize_q8r', shard, [x, xs, n, k, codes, scales, sums, q.sums]), args: [codes, scales, sums] };
    }
    // int16 codes (decode: twice, kernels.as).
    const codes = this.temp(shard, n < 4 ? n * k * 4 : n8 * k * 2);
    return { cmd: this.cmd('quantize_q8', shard, [x, xs, n, k, q.block, codes, scales, sums]), args: [codes, scales, sums] };
  }

  private mustLive(): void {
    if (this.disposed) throw new Error('the fast CPU backend was disposed');
  }

  // ---- buffers -----------------------------------------------------------------------------

  override uploadWeight(hw: HostWeight): DeviceWeight {
    this.mustLive();
    const kernels = kernelsFor(hw, this.relaxed);
    if (!kernels) return new SimdWeight(hw, null, null, 0, 0);
    const shard = this.shardWithRoom(weightBytes(hw) + 128, true);
    const { ptr, scalesPtr } = this.place(hw, shard);
    const view: HostWeight = { ...hw, data: dataView(hw, hw.data.byteLength, shard, ptr), scales: hw.scales ? shard.f32(scalesPtr, hw.scales.length) : undefined };
    if (!hw.scales) delete view.scales;
    return new SimdWeight(view, kernels, shard, ptr, scalesPtr);
  }

  /** Fills the weight in place in a shard (moved to the host, as uploadWeight keeps it, when no kernels take it). */
  uploadWeightFrom(spec: WeightSpec, fill: (dst: Uint8Array) => void): DeviceWeight {
    this.mustLive();
    const bytes = weightDataBytes(spec.format, spec.rows, spec.cols);
    const shard = this.shardWithRoom(bytes + 128, true);
    const ptr = this.allocIn(shard, bytes);
    let view: HostWeight;
    let kernels: FormatKernels | null;
    try {
      fill(shard.u8(ptr, bytes));
      view = { ...spec, data: dataView(spec, bytes, shard, ptr) };
      kernels = kernelsFor(view, this.relaxed);
    } catch (e) {
      shard.release(ptr, bytes);
      throw e;
    }
    if (kernels) return new SimdWeight(view, kernels, shard, ptr, 0);
    // No kernels for these values (f16 inf/NaN) or this format: the reference code computes on a host copy.
    const host: HostWeight = { ...view, data: view.data.slice() };
    shard.release(ptr, bytes);
    return new SimdWeight(host, null, null, 0, 0);
  }

  override fromHost(data: Float32Array, rows: number, cols: number): Tensor {
    if (data.length !== rows * cols) throw new Error(`fromHost: ${data.length} values for [${rows}, ${cols}]`);
    const t = this.newTensor(this.shards[0], rows, cols, true);
    t.data.set(data);
    return t;
  }

  override async read(x: Tensor): Promise<Float32Array> {
    return (x as CpuTensor).data.slice();
  }

  override createKVPool(layers: number, numBlocks: number, blockSize: number, width: number): KVPool {
    this.mustLive();
    const pool = new SimdKVPool(layers, numBlocks, blockSize, width);
    const len = numBlocks * blockSize * width;
    for (let l = 0; l < layers; l++) {
      const shard = this.shardWithRoom(len * 4, true);
      const ptr = this.allocIn(shard, len * 4);
      pool.shards.push(shard);
      pool.ptrs.push(ptr);
      pool.data.push(shard.f32(ptr, len));
      this.registry.register(pool, { shard, ptr, bytes: len * 4 });
    }
    return pool;
  }

  // ---- ops ---------------------------------------------------------------------------------

  override embedding(table: DeviceWeight, ids: Int32Array): Tensor {
    const tw = table as SimdWeight;
    const d = tw.cols;
    const out = this.newTensor(tw.shard ?? this.shards[0], ids.length, d, true);
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (id < 0) { out.data.fill(0, i * d, (i + 1) * d); continue; }
      if (id >= tw.rows) throw new RangeError(`token id ${id} outside the vocabulary (${tw.rows})`);
      dequantRow(tw.host, id, out.data, i * d);
    }
    return out;
  }

  override matmul(xIn: Tensor, wIn: DeviceWeight): Tensor {
    const wt = wIn as SimdWeight;
    if (!wt.kernels || !wt.shard) return super.matmul(xIn, wIn);
    const n = xIn.rows, k = xIn.cols, m = wt.rows;
    if (wt.cols !== k) throw new Error(`matmul: x has ${k} columns, ${wt.name} has ${wt.cols}`);
    const shard = wt.shard;
    return this.op(() => {
      const x = this.tensorIn(xIn, shard);
      const out = this.newTensor(shard, n, m);
      const int8 = this.int8For(wt, n);
      if (int8) {
        const q = this.quantized(shard, int8, x, k, n, k);
        const cmd = this.cmd(int8.matmul, shard, [...q.args, n, wt.ptr, k, 0, m, out.ptr, m]);
        this.exec([{ cmds: [q.cmd], units: n }, { cmds: [cmd], units: Math.ceil(m / 4) }], n * m * k);
        return out;
      }
      const cmd = this.cmd(wt.kernels!.matmul, shard, [x, k, n, wt.ptr, k, 0, m, out.ptr, m, wt.scalesPtr, wt.br, wt.bc]);
      this.exec([{ cmds: [cmd], units: Math.ceil(m / 4) }], n * m * k);
      return out;
    });
  }

  override rmsNorm(xIn: Tensor, wIn: DeviceWeight, eps: number): Tensor {
    const wt = wIn as SimdWeight;
    const n = xIn.rows, d = xIn.cols;
    const kernel = wt.kernels?.rmsnorm;
    if (!kernel || wt.rows * wt.cols !== d) return super.rmsNorm(xIn, wIn, eps);
    const shard = this.shardOf(xIn) ?? wt.shard!;
    return this.op(() => {
      const x = this.tensorIn(xIn, shard);
      const g = this.weightAt(wt, shard).ptr;
      const out = this.newTensor(shard, n, d);
      this.exec([{ cmds: [this.cmd(kernel, shard, [x, out.ptr, n, d, g, eps])], units: n }], n * d * 4);
      return out;
    });
  }

  override add(aIn: Tensor, bIn: Tensor): Tensor {
    if (aIn.rows !== bIn.rows || aIn.cols !== bIn.cols) throw new Error('add: shape mismatch');
    return this.elementwise('add', aIn, bIn);
  }

  override swiglu(gIn: Tensor, uIn: Tensor): Tensor {
    if (gIn.rows !== uIn.rows || gIn.cols !== uIn.cols) throw new Error('swiglu: shape mismatch');
    return this.elementwise('swiglu', gIn, uIn);
  }

  private elementwise(kernel: 'add' | 'swiglu', aIn: Tensor, bIn: Tensor): Tensor {
    const shard = this.shardOf(aIn) ?? this.shardOf(bIn) ?? this.shards[0];
    const len = aIn.rows * aIn.cols;
    return this.op(() => {
      const a = this.tensorIn(aIn, shard), b = this.tensorIn(bIn, shard);
      const out = this.newTensor(shard, aIn.rows, aIn.cols);
      this.exec([{ cmds: [this.cmd(kernel, shard, [a, b, out.ptr, len])], units: Math.ceil(len / 16) }], len * (kernel === 'add' ? 1 : 8));
      return out;
    });
  }

  /** Data-movement outputs (slice, concat, gather, rope: plain loops in CpuBackend) live in shared memory. */
  protected override output(rows: number, cols: number, ...near: Tensor[]): CpuTensor {
    let shard: Shard | null = null;
    for (const x of near) if ((shard = this.shardOf(x))) break;
    return this.newTensor(shard ?? this.shards[0], rows, cols, true);
  }

  override mlaAttention(qIn: Tensor, kvBIn: DeviceWeight, poolIn: KVPool, layer: number, batch: AttentionBatch, s: MlaShape): Tensor {
    const kvB = kvBIn as SimdWeight;
    const pool = poolIn as SimdKVPool;
    if (!kvB.kernels || !(pool instanceof SimdKVPool)) return super.mlaAttention(qIn, kvBIn, poolIn, layer, batch, s);
    const n = qIn.rows, H = s.heads, R = s.kvRank, P = s.ropeDim, qStride = s.nopeDim + P;
    if (qIn.cols !== H * qStride) throw new Error('mlaAttention: q has the wrong width');
    if (kvB.rows !== H * (s.nopeDim + s.vDim) || kvB.cols !== R) throw new Error(`mlaAttention: ${kvB.name} has the wrong shape`);
    if (pool.width !== R + P) throw new Error(`mlaAttention: pool rows of ${pool.width} values, expected ${R + P}`);
    if (layer < 0 || layer >= pool.layers) throw new RangeError(`mlaAttention: layer ${layer} outside the pool (${pool.layers})`);
    const B = pool.blockSize;
    // The kernel follows block tables blindly: check every block it will read.
    let maxLen = 1, work = n * H * (s.nopeDim + s.vDim) * R;
    for (let i = 0; i < n; i++) {
      const pos = batch.positions[i];
      const table = batch.blockTables[batch.seqIndex[i]];
      const need = Math.floor(pos / B) + 1;
      if (pos < 0 || !table || table.length < need) throw new RangeError(`no cache block for position ${pos}`);
      for (let j = 0; j < need; j++) if (!(table[j] >= 0 && table[j] < pool.numBlocks)) throw new RangeError(`block ${table[j]} outside the pool (${pool.numBlocks} blocks)`);
      maxLen = Math.max(maxLen, pos + 1);
      work += (pos + 1) * H * (2 * R + P);
    }
    const shard = pool.shards[layer];
    // Sequences for which it pays (prefill chunks: mlaExpandPays) attend without absorbing kv_b:
    // their cached latents are decompressed once into keys and values. Others (decode) take the
    // absorbed kernel.
    const bySeq = new Map<number, number[]>();
    for (let i = 0; i < n; i++) {
      const si = batch.seqIndex[i];
      let list = bySeq.get(si);
      if (!list) bySeq.set(si, (list = []));
      list.push(i);
    }
    const expanded: number[][] = [], absorbed: number[] = [];
    for (const list of bySeq.values()) {
      let length = 0;
      for (const i of list) length = Math.max(length, batch.positions[i] + 1);
      // Scratch: the gathered rows, keys and values, scores, the tokens' queries and outputs.
      const bytes = 4 * (length * (pool.width + H * (s.nopeDim + s.vDim) + 4 * H) + list.length * H * (qStride + s.vDim + 1));
      const fits = bytes <= Math.min(this.mlaExpandMaxBytes, shard.room / 2);
      const expand = fits && (this.mlaExpand === 'always' || (this.mlaExpand === 'auto' && mlaExpandPays(s, list.length, length)));
      if (expand) expanded.push(list);
      else for (const i of list) absorbed.push(i);
    }
    return this.op(() => {
      const q = this.tensorIn(qIn, shard);
      const out = this.newTensor(shard, n, H * s.vDim);
      if (!expanded.length) {
        this.mlaAbsorbed(shard, q, kvB, pool, layer, batch, s, null, maxLen, out.ptr, work);
        return out;
      }
      if (absorbed.length) {
        const part = this.temp(shard, absorbed.length * H * s.vDim * 4);
        this.mlaAbsorbed(shard, q, kvB, pool, layer, batch, s, absorbed, maxLen, part, work);
        const src = shard.f32(part, absorbed.length * H * s.vDim);
        scatterRows(out.data, src, absorbed, H * s.vDim);
      }
      for (const list of expanded) this.mlaExpanded(shard, q, kvB, pool, layer, batch, s, list, out);
      return out;
    });
  }

  /**
   * The absorbed kernel for the tokens `rows` of q (all when null), results to outPtr as rows
   * in that order.
   */
  private mlaAbsorbed(shard: Shard, qAll: number, kvB: SimdWeight, pool: SimdKVPool, layer: number, batch: AttentionBatch, s: MlaShape,
    rows: number[] | null, maxLen: number, outPtr: number, work: number): void {
    const H = s.heads, R = s.kvRank, P = s.ropeDim, qStride = s.nopeDim + P, B = pool.blockSize;
    const n = rows ? rows.length : batch.positions.length;
    let q = qAll;
    if (rows) {
      // Gather the rows into one block.
      q = this.temp(shard, n * H * qStride * 4);
      const dst = shard.f32(q, n * H * qStride), src = shard.f32(qAll, batch.positions.length * H * qStride);
      gatherRows(dst, src, rows, H * qStride);
    }
    const kv = this.weightAt(kvB, shard);
    // Per token: position and a pointer to its sequence's block table (copied into the shard).
    const tok = this.temp(shard, n * 8);
    const tokV = shard.i32(tok, 2 * n);
    const tablePtr = new Map<number, number>();
    for (let r = 0; r < n; r++) {
      const i = rows ? rows[r] : r;
      const si = batch.seqIndex[i];
      let tp = tablePtr.get(si);
      if (tp === undefined) {
        const table = batch.blockTables[si];
        tp = this.temp(shard, table.length * 4);
        shard.i32(tp, table.length).set(table);
        tablePtr.set(si, tp);
      }
      tokV[2 * r] = batch.positions[i];
      tokV[2 * r + 1] = tp | 0;
    }
    const qAbs = this.temp(shard, n * H * (R + P) * 4); // per token and head: absorbed query | rope query
    const lat = this.temp(shard, n * H * R * 4);
    const scores = this.temp(shard, H * maxLen * 4);
    const rowTmp = this.temp(shard, H * R * 4);
    const cmd = this.cmd(kvB.kernels!.mla, shard, [
      q, n, H, s.nopeDim, P, s.vDim, R, s.softmaxScale, kv.ptr, kv.scalesPtr, kvB.br, kvB.bc,
      pool.ptrs[layer], pool.width, B, tok, maxLen, qAbs, lat, scores, rowTmp, outPtr,
    ]);
    this.exec([{ cmds: [cmd], units: H }], work);
  }

  /**
   * The tokens `rows` of one sequence without absorbing kv_b: its cached rows 0..L-1 gathered,
   * their latents times kv_b (the matmul kernels: the integer path, latents in q8 blocks, for
   * a block-format kv_b as for any matmul; float otherwise) give every head's keys and values,
   * then mha_prefill. Per token and row that is nope + rope + vDim multiply-adds per head
   * instead of 2·kvRank + rope, for L·kvRank·H·(nope + vDim) once per chunk.
   */
  private mlaExpanded(shard: Shard, qAll: number, kvB: SimdWeight, pool: SimdKVPool, layer: number, batch: AttentionBatch, s: MlaShape,
    rows: number[], out: SimdTensor): void {
    const H = s.heads, R = s.kvRank, P = s.ropeDim, N = s.nopeDim, V = s.vDim, qStride = N + P, B = pool.blockSize, W = pool.width;
    const cnt = rows.length;
    const table = batch.blockTables[batch.seqIndex[rows[0]]];
    let L = 0;
    for (const i of rows) L = Math.max(L, batch.positions[i] + 1);
    // The sequence's cached rows, in order.
    const lat = this.temp(shard, L * W * 4);
    const latV = shard.f32(lat, L * W), cache = pool.data[layer];
    for (let j = 0; j < L; j += B) {
      const len = Math.min(B, L - j), from = table[j / B] * B * W;
      latV.set(cache.subarray(from, from + len * W), j * W);
    }
    // Queries and positions of the tokens, and a block for their outputs.
    const q = this.temp(shard, cnt * H * qStride * 4), pos = this.temp(shard, cnt * 4), o = this.temp(shard, cnt * H * V * 4);
    const qV = shard.f32(q, cnt * H * qStride), src = shard.f32(qAll, batch.positions.length * H * qStride), posV = shard.i32(pos, cnt);
    gatherRows(qV, src, rows, H * qStride);
    rows.forEach((i, r) => { posV[r] = batch.positions[i]; });
    const kv = this.temp(shard, L * H * (N + V) * 4), scores = this.temp(shard, H * 4 * L * 4);
    const at = this.weightAt(kvB, shard), m = H * (N + V);
    // The decompression is a matmul like any other: on the integer path for a block-format kv_b
    // (latents quantized to q8 blocks, as llama.cpp's matmuls quantize their inputs).
    const int8 = this.int8For(kvB, L), groups: Group[] = [];
    if (int8) {
      const qz = this.quantized(shard, int8, lat, W, L, R);
      groups.push({ cmds: [qz.cmd], units: L }, { cmds: [this.cmd(int8.matmul, shard, [...qz.args, L, at.ptr, R, 0, m, kv, m])], units: Math.ceil(m / 4) });
    } else {
      groups.push({ cmds: [this.cmd(kvB.kernels!.matmul, shard, [lat, W, L, at.ptr, R, 0, m, kv, m, at.scalesPtr, kvB.br, kvB.bc])], units: Math.ceil(m / 4) });
    }
    groups.push({ cmds: [this.cmd('mha_prefill', shard, [q, cnt, H, N, P, V, s.softmaxScale, kv, L, lat + R * 4, W, pos, scores, o, H * V])], units: H });
    this.exec(groups, L * m * R + cnt * L * H * (N + P + V));
    const res = shard.f32(o, cnt * H * V);
    scatterRows(out.data, res, rows, H * V);
  }

  override moe(xIn: Tensor, rIn: Routing, experts: ExpertWeights[]): Tensor {
    const r = rIn as unknown as { ids: Int32Array; weights: Float32Array; topK: number };
    const x = xIn as CpuTensor;
    const picks: number[][] = experts.map(() => []);
    for (let j = 0; j < r.ids.length; j++) {
      const e = r.ids[j];
      if (!(e >= 0 && e < experts.length)) throw new RangeError(`moe: expert ${e} of ${experts.length}`);
      picks[e].push(j);
    }
    const used: number[] = [];
    for (let e = 0; e < experts.length; e++) if (picks[e].length) used.push(e);
    const fast = (w: DeviceWeight) => (w as SimdWeight).kernels !== null && (w as SimdWeight).shard !== null;
    if (!used.every((e) => fast(experts[e].gate) && fast(experts[e].up) && fast(experts[e].down))) return super.moe(xIn, rIn, experts);
    // One job per shard holding experts (one, unless the model spans several shards).
    const groups = new Map<Shard, number[]>();
    for (const e of used) {
      const s = (experts[e].gate as SimdWeight).shard!;
      if (!groups.has(s)) groups.set(s, []);
      groups.get(s)!.push(e);
    }
    let result: Tensor | null = null;
    for (const [shard, es] of groups) {
      const partial = this.moeOn(shard, x, r, experts, picks, es);
      result = result ? this.add(result, partial) : partial;
    }
    if (!result) {
      const z = this.newTensor(this.shardOf(x) ?? this.shards[0], x.rows, x.cols, true);
      z.data.fill(0);
      result = z;
    }
    return result;
  }

  /**
   * The experts `es` (all in `shard`) as one job of two groups. Phase A, per expert: gate and
   * up rows split in chunks, silu(g)·u on the same chunk's columns. Phase B (after all of A),
   * per expert: the down rows split in chunks, each chunk adding weight · y into its own columns
   * of the output, expert after expert, so no two threads write the same values.
   * Projections on the integer path (int8For) need their input quantized first: a group of
   * quantize_q8 commands (one chunk per token row) before each phase that has some.
   */
  private moeOn(shard: Shard, x: CpuTensor, r: { weights: Float32Array; topK: number }, experts: ExpertWeights[], picks: number[][], es: number[]): Tensor {
    const d = x.cols;
    return this.op(() => {
      const out = this.newTensor(shard, x.rows, d);
      out.data.fill(0);
      const phaseA: Command[] = [], phaseB: Command[] = [], quantA: Command[] = [], quantB: Command[] = [];
      let work = 0, maxInter = 0, maxCnt = 0;
      for (const e of es) {
        const gate = experts[e].gate as SimdWeight, up = experts[e].up as SimdWeight, down = experts[e].down as SimdWeight;
        const inter = gate.rows;
        maxInter = Math.max(maxInter, inter);
        if (gate.cols !== d || up.cols !== d) throw new Error(`matmul: x has ${d} columns, ${gate.cols !== d ? gate.name : up.name} has ${gate.cols !== d ? gate.cols : up.cols}`);
        if (up.rows !== inter) throw new Error(`moe: ${gate.name} has ${inter} rows, ${up.name} has ${up.rows}`);
        if (down.cols !== inter) throw new Error(`matmul: x has ${inter} columns, ${down.name} has ${down.cols}`);
        if (down.rows !== d) throw new Error(`moe: ${down.name} has ${down.rows} rows, expected ${d}`);
        const p = picks[e], cnt = p.length;
        const rows = this.temp(shard, cnt * 4), wts = this.temp(shard, cnt * 4);
        const xe = this.temp(shard, cnt * d * 4);
        const rowsV = shard.i32(rows, cnt), wtsV = shard.f32(wts, cnt), xeV = shard.f32(xe, cnt * d);
        for (let j = 0; j < cnt; j++) {
          const t = (p[j] / r.topK) | 0;
          rowsV[j] = t;
          wtsV[j] = r.weights[p[j]];
          xeV.set(x.data.subarray(t * d, (t + 1) * d), j * d);
        }
        const g = this.temp(shard, cnt * inter * 4), u = this.temp(shard, cnt * inter * 4), y = this.temp(shard, cnt * d * 4);
        const gw = this.weightAt(gate, shard), uw = this.weightAt(up, shard), dw = this.weightAt(down, shard);
        // x · w^T for rows [0, m) into dst: the float kernel, or the integer one on activations
        // quantized once per activation layout (gate and up share theirs when they can).
        const quants = new Map<string, number[]>();
        const project = (w: SimdWeight, at: Placed, src: number, k: number, m: number, dst: number, quant: Command[]): Command => {
          const int8 = this.int8For(w, cnt);
          if (!int8) return this.cmd(w.kernels!.matmul, shard, [src, k, cnt, at.ptr, k, 0, m, dst, m, at.scalesPtr, w.br, w.bc]);
          const layout = `${int8.quantize}/${int8.block}/${int8.sums}`;
          let args = quant === quantA ? quants.get(layout) : undefined;
          if (!args) {
            const q = this.quantized(shard, int8, src, k, cnt, k);
            quant.push(q.cmd);
            args = q.args;
            if (quant === quantA) quants.set(layout, args);
          }
          return this.cmd(int8.matmul, shard, [...args, cnt, at.ptr, k, 0, m, dst, m]);
        };
        phaseA.push(
          project(gate, gw, xe, d, inter, g, quantA),
          project(up, uw, xe, d, inter, u, quantA),
          this.cmd('swiglu_cols', shard, [g, u, g, cnt, inter]),
        );
        phaseB.push(
          project(down, dw, g, inter, d, y, quantB),
          this.cmd('scatter_add_cols', shard, [out.ptr, y, rows, wts, cnt, d]),
        );
        work += 3 * cnt * inter * d;
        maxCnt = Math.max(maxCnt, cnt);
      }
      // A chunk of phase A is a slice of every expert's gate/up rows (and the same columns of
      // silu(g)·u); a chunk of phase B a slice of the output columns, over every expert in turn.
      const groups: Group[] = [];
      if (quantA.length) groups.push({ cmds: quantA, units: maxCnt });
      groups.push({ cmds: phaseA, units: Math.ceil(maxInter / 4) });
      if (quantB.length) groups.push({ cmds: quantB, units: maxCnt });
      groups.push({ cmds: phaseB, units: Math.ceil(d / 4) });
      this.exec(groups, work);
      return out;
    });
  }

  /** Frees t's bytes in its shard now (once: the registry entry goes with it). */
  override release(t: Tensor): void {
    if (!(t instanceof SimdTensor) || this.disposed) return; // host tensors live on the JS heap
    if (!this.registry.unregister(t)) return;
    const bytes = t.rows * t.cols * 4;
    t.shard.release(t.ptr, bytes);
    // Released bytes need no collection: only what is left to the finalizers counts toward one.
    this.sinceGc = Math.max(0, this.sinceGc - bytes);
  }

  override dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.pool.dispose();
    this.shards = [];
    this.temps = [];
    super.dispose();
  }
}
