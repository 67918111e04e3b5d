/**
 * The WebGPU backend: WGSL compute kernels through Dawn (the `webgpu` npm package).
 *
 * - Weights are uploaded once, packed as in the checkpoint (see kernels.ts for the
 *   layouts), and decoded by the kernels. A weight larger than one storage binding is
 *   split by rows into parts; matmul and embedding run once per part.
 * - Activations are f32 storage buffers. Ops only record compute dispatches into one
 *   command encoder; it is submitted when `read`, `readRouting` or `argmaxRows` needs a
 *   result, or, between ops, once FLUSH_EVERY dispatches are recorded. Never inside an op,
 *   which keeps the buffer release rule below simple. Nothing else waits for the device.
 * - Kernel parameters and small per-call data (token ids, block tables, RoPE tables)
 *   are staged in a host arena and written into a device buffer (one per arena-full) just
 *   before the batch is submitted; larger inputs get a pooled buffer of their own.
 * - Buffers come from a pool. The interface has no `free`, so a tensor's buffer goes back
 *   to the pool when its handle is garbage collected (FinalizationRegistry); released
 *   buffers (and a batch's arenas and op scratch) are reused only after the next submit,
 *   so no recorded work ever sees a buffer reused under it. A buffer taken from the pool
 *   is referenced by no unsubmitted work, so `queue.writeBuffer` into it is safe.
 * - Routing and MoE stay on the device: the router picks experts per token; a one-workgroup
 *   kernel sorts the routed (token, k) entries by expert and writes, per expert, the sizes
 *   of its indirect dispatches; each expert then runs its gate/up and down matmuls over its
 *   own rows only (zero workgroups when unused), and a last kernel sums each token's
 *   weighted expert outputs.
 */
/// <reference types="@webgpu/types" />
import type {
  AttentionBatch, Backend, DeviceInfo, DeviceWeight, ExpertWeights, HostWeight, KVPool,
  MlaShape, RouterConfig, Routing, Tensor, WeightFormat, WeightSpec,
} from '../backend.js';
import { weightDataBytes } from '../cpu/dequant.js';
import { requestAdapter } from './dawn.js';
import {
  ARGMAX, EW, MM_TOKENS, MOE_INDEX, RMSNORM, Shader, attendBody, elementwise, matmulBody, routeBody,
  type BufferRef, type WeightPart,
} from './kernels.js';

// GPUBufferUsage / GPUMapMode values (the globals are not installed in Node).
const MAP_READ = 1, COPY_SRC = 4, COPY_DST = 8, UNIFORM = 64, STORAGE = 128, INDIRECT = 256;
const POOLED = STORAGE | UNIFORM | INDIRECT | COPY_SRC | COPY_DST;

/** Host arena for parameters and small inputs, written to the device once per batch. */
const ARENA_BYTES = 1 << 20;
/** Submit after this many dispatches, so the device starts while the host keeps encoding. */
const FLUSH_EVERY = 512;
/** Free buffers kept for reuse beyond this are destroyed. */
const POOL_LIMIT = 512 << 20;

export interface WebGpuOptions {
  /** Adapter request (default: any adapter Dawn offers, software ones included). */
  adapter?: GPURequestAdapterOptions;
  /** Split weights into parts of at most this many bytes (default and cap: maxStorageBufferBindingSize). */
  maxWeightPartBytes?: number;
  /** Submit after this many dispatches (default FLUSH_EVERY); small values exercise mid-op submits in tests. */
  flushEvery?: number;
  /** Bytes of the staging arena (default ARENA_BYTES, at least 1 KiB). */
  arenaBytes?: number;
}

class GpuTensor implements Tensor {
  constructor(readonly rows: number, readonly cols: number, readonly buf: GPUBuffer) {}
}

class GpuWeight implements DeviceWeight {
  constructor(
    readonly name: string,
    readonly format: WeightFormat,
    readonly rows: number,
    readonly cols: number,
    readonly bytes: number,
    readonly blockRows: number,
    readonly blockCols: number,
    readonly parts: WeightPart[],
  ) {}
}

class GpuKVPool implements KVPool {
  constructor(
    readonly layers: number,
    readonly numBlocks: number,
    readonly blockSize: number,
    readonly width: number,
    readonly bytes: number,
    /** One storage buffer per layer: numBlocks * blockSize slots of `width` floats. */
    readonly buffers: GPUBuffer[],
  ) {}
}

class GpuRouting implements Routing {
  constructor(readonly tokens: number, readonly topK: number, readonly ids: GPUBuffer, readonly weights: GPUBuffer) {}
}

const roundUp = (n: number, m: number) => Math.ceil(n / m) * m;

/** Pool size classes: 4 per power of two (at most ~19% slack), 1 KiB at least. */
function sizeClass(bytes: number): number {
  if (bytes <= 1024) return 1024;
  const step = 2 ** Math.floor(Math.log2(bytes)) / 4;
  return Math.ceil(bytes / step) * step;
}

/** Workgroup grid for `groups` workgroups (split over x and y past 65535), times z. */
function grid(groups: number, z = 1): [number, number, number] {
  if (groups === 0 || z === 0) return [0, 0, 0];
  const x = Math.min(groups, 65535);
  return [x, Math.ceil(groups / x), z];
}

function bytesOf(a: Float32Array | Uint16Array | Uint8Array | Int32Array | Uint32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function tensor(x: Tensor): GpuTensor {
  if (!(x instanceof GpuTensor)) throw new TypeError('webgpu: not a tensor of this backend');
  return x;
}
function weight(w: DeviceWeight): GpuWeight {
  if (!(w instanceof GpuWeight)) throw new TypeError('webgpu: not a weight of this backend');
  return w;
}
function single(w: GpuWeight, what: string): WeightPart {
  if (w.parts.length !== 1) throw new Error(`webgpu: ${what}: ${w.name} is split into ${w.parts.length} parts (larger than one storage binding)`);
  return w.parts[0];
}
const ref = (t: GpuTensor): BufferRef => ({ buffer: t.buf });

export class WebGpuBackend implements Backend {
  readonly info: DeviceInfo;
  private gpu: GPU | null;
  private adapter: GPUAdapter | null;
  private readonly device: GPUDevice;
  private readonly maxBinding: number;
  private readonly maxPartBytes: number;
  private readonly uniformAlign: number;
  private readonly storageAlign: number;
  private disposed = false;
  private failure: string | null = null;

  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private dispatches = 0;

  private readonly flushEvery: number;
  private readonly arenaBytes: number;
  private arena: GPUBuffer | null = null;
  private readonly arenaHost: Uint8Array;
  private arenaUsed = 0;
  /** Full arenas of the batch being recorded (already written): pooled after its submit. */
  private fullArenas: GPUBuffer[] = [];

  private readonly free = new Map<number, GPUBuffer[]>();
  private freeBytes = 0;
  /** Released buffers (collected handles, op scratch) that recorded work may still use: pooled after the next submit. */
  private pending: GPUBuffer[] = [];
  private readonly registry = new FinalizationRegistry<GPUBuffer[]>((bufs) => {
    if (!this.disposed) this.pending.push(...bufs);
  });

  /** Requests an adapter and a device with the adapter's largest buffer limits. Throws when there is none. */
  static async create(opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const h = await requestAdapter(opts.adapter);
    if (h.why !== undefined) throw new Error(`webgpu: ${h.why}`);
    return WebGpuBackend.fromAdapter(h.gpu, h.adapter, opts);
  }

  /**
   * From a WebGPU entry point that is not Dawn's: a browser's `navigator.gpu`. Throws when it
   * offers no adapter.
   */
  static async fromGpu(gpu: GPU, opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const adapter = await gpu.requestAdapter(opts.adapter);
    if (!adapter) throw new Error('webgpu: no WebGPU adapter (navigator.gpu.requestAdapter() gave none)');
    return WebGpuBackend.fromAdapter(gpu, adapter, opts);
  }

  /** Requests a device from `adapter` with its largest buffer limits. `gpu` is kept referenced (Dawn's lifetime rule). */
  static async fromAdapter(gpu: GPU, adapter: GPUAdapter, opts: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const wanted = [
      'maxBufferSize', 'maxStorageBufferBindingSize', 'maxStorageBuffersPerShaderStage',
      'maxComputeWorkgroupStorageSize', 'maxComputeInvocationsPerWorkgroup',
    ] as const;
    const requiredLimits: Record<string, number> = {};
    for (const k of wanted) requiredLimits[k] = adapter.limits[k];
    const device = await adapter.requestDevice({ requiredLimits });
    return new WebGpuBackend(gpu, adapter, device, opts);
  }

  private constructor(gpu: GPU, adapter: GPUAdapter, device: GPUDevice, opts: WebGpuOptions) {
    this.gpu = gpu;
    this.adapter = adapter;
    this.device = device;
    const info = adapter.info;
    this.info = { name: `webgpu (${info.description || [info.vendor, info.architecture, info.device].filter(Boolean).join(' ') || 'unknown adapter'})`, kind: 'gpu' };
    this.maxBinding = Math.min(device.limits.maxStorageBufferBindingSize, device.limits.maxBufferSize);
    this.maxPartBytes = Math.min(this.maxBinding, opts.maxWeightPartBytes ?? Infinity);
    this.uniformAlign = device.limits.minUniformBufferOffsetAlignment;
    this.storageAlign = device.limits.minStorageBufferOffsetAlignment;
    this.flushEvery = Math.max(1, opts.flushEvery ?? FLUSH_EVERY);
    this.arenaBytes = roundUp(Math.max(1024, opts.arenaBytes ?? ARENA_BYTES), 256);
    this.arenaHost = new Uint8Array(this.arenaBytes);
    device.addEventListener('uncapturederror', (ev) => {
      this.failure ??= (ev as GPUUncapturedErrorEvent).error.message;
    });
    void device.lost.then((l) => {
      if (!this.disposed) this.failure ??= `device lost: ${l.message}`;
    });
  }

  /** Whether the adapter is a software implementation (lavapipe, SwiftShader). */
  get isFallbackAdapter(): boolean {
    const info = this.adapter?.info as { isFallbackAdapter?: boolean } | undefined;
    return Boolean(info?.isFallbackAdapter);
  }

  // ---- device plumbing ---------------------------------------------------------------------

  private check(): void {
    if (this.disposed) throw new Error('webgpu: backend used after dispose()');
    if (this.failure) throw new Error(`webgpu: ${this.failure}`);
  }

  private alloc(bytes: number): GPUBuffer {
    if (bytes > this.maxBinding) throw new Error(`webgpu: a buffer of ${bytes} bytes exceeds maxStorageBufferBindingSize (${this.maxBinding})`);
    let size = sizeClass(bytes);
    if (size > this.maxBinding) size = roundUp(bytes, 16);
    const list = this.free.get(size);
    if (list?.length) {
      this.freeBytes -= size;
      return list.pop()!;
    }
    return this.device.createBuffer({ size, usage: POOLED });
  }

  private recycle(b: GPUBuffer): void {
    if (this.freeBytes + b.size > POOL_LIMIT || b.size !== sizeClass(b.size)) {
      b.destroy();
      return;
    }
    let list = this.free.get(b.size);
    if (!list) this.free.set(b.size, (list = []));
    list.push(b);
    this.freeBytes += b.size;
  }

  /** A new tensor whose buffer returns to the pool when the handle is collected. */
  private newTensor(rows: number, cols: number): GpuTensor {
    const buf = this.alloc(rows * cols * 4);
    const t = new GpuTensor(rows, cols, buf);
    this.registry.register(t, [buf], t);
    return t;
  }

  /** A buffer packed once at creation (weights). */
  private createInit(bytes: Uint8Array): GPUBuffer {
    const b = this.device.createBuffer({ size: roundUp(Math.max(bytes.byteLength, 4), 4), usage: STORAGE | COPY_DST, mappedAtCreation: true });
    new Uint8Array(b.getMappedRange()).set(bytes);
    b.unmap();
    return b;
  }

  /** Stages host data for the next submit; returns where it will be on the device. */
  private stage(data: Int32Array | Uint32Array | Float32Array | Uint8Array, align = this.storageAlign, minSize = 4): BufferRef {
    const src = data instanceof Uint8Array ? data : bytesOf(data);
    const size = roundUp(Math.max(src.byteLength, minSize), 4);
    if (size > this.arenaBytes / 4) {
      // Large inputs get a buffer of their own, free for reuse after the next submit.
      const buffer = this.alloc(size);
      this.device.queue.writeBuffer(buffer, 0, src.buffer, src.byteOffset, src.byteLength);
      this.pending.push(buffer);
      return { buffer, offset: 0, size };
    }
    let off = roundUp(this.arenaUsed, align);
    if (off + size > this.arenaBytes && this.arena) {
      // Its contents are final: write it now and continue in a fresh one.
      this.device.queue.writeBuffer(this.arena, 0, this.arenaHost.buffer, 0, this.arenaUsed);
      this.fullArenas.push(this.arena);
      this.arena = null;
      off = 0;
    }
    this.arena ??= this.alloc(this.arenaBytes);
    this.arenaHost.set(src, off);
    if (size > src.byteLength) this.arenaHost.fill(0, off + src.byteLength, off + size);
    this.arenaUsed = off + size;
    return { buffer: this.arena, offset: off, size };
  }

  private pipeline(code: string): GPUComputePipeline {
    let p = this.pipelines.get(code);
    if (!p) {
      const module = this.device.createShaderModule({ code });
      p = this.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      this.pipelines.set(code, p);
    }
    return p;
  }

  /** Records one dispatch of `body` with the shader's parameters and bindings. */
  private run(sh: Shader, body: string, groups: [number, number, number] | { indirect: GPUBuffer; offset: number }): void {
    this.check();
    if (Array.isArray(groups) && groups[0] * groups[1] * groups[2] === 0) return;
    const pipeline = this.pipeline(sh.wgsl(body));
    const raw = new ArrayBuffer(Math.max(16, roundUp(sh.params.length * 4, 16)));
    const u32 = new Uint32Array(raw), f32 = new Float32Array(raw);
    sh.params.forEach((p, i) => (p.type === 'u32' ? (u32[i] = p.value) : (f32[i] = p.value)));
    const params = this.stage(new Uint8Array(raw), this.uniformAlign);
    const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: params }];
    sh.bindings.forEach((b, i) => entries.push({ binding: i + 1, resource: b }));
    const bindGroup = this.device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries });
    this.encoder ??= this.device.createCommandEncoder();
    this.pass ??= this.encoder.beginComputePass();
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    if (Array.isArray(groups)) this.pass.dispatchWorkgroups(groups[0], groups[1], groups[2]);
    else this.pass.dispatchWorkgroupsIndirect(groups.indirect, groups.offset);
    this.dispatches++;
  }

  /** Starts an op: submits the batch so far when it is long enough (never inside an op). */
  private begin(): void {
    this.check();
    if (this.dispatches >= this.flushEvery) this.flush();
  }

  /** Submits everything recorded; then the buffers released so far, and this batch's arenas, return to the pool. */
  private flush(): void {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.arena && this.arenaUsed) this.device.queue.writeBuffer(this.arena, 0, this.arenaHost.buffer, 0, this.arenaUsed);
    if (this.encoder) {
      this.device.queue.submit([this.encoder.finish()]);
      this.encoder = null;
    }
    const released = [...this.pending, ...this.fullArenas];
    if (this.arena) released.push(this.arena);
    this.pending = [];
    this.fullArenas = [];
    this.arena = null;
    for (const b of released) this.recycle(b);
    this.arenaUsed = 0;
    this.dispatches = 0;
  }

  /** Copies `bytes` of `src` to the host after all recorded work. */
  private async readBuffer(src: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    this.check();
    const staging = this.device.createBuffer({ size: roundUp(Math.max(bytes, 4), 4), usage: MAP_READ | COPY_DST });
    try {
      if (this.pass) {
        this.pass.end();
        this.pass = null;
      }
      this.encoder ??= this.device.createCommandEncoder();
      if (bytes) this.encoder.copyBufferToBuffer(src, 0, staging, 0, bytes);
      this.flush();
      await staging.mapAsync(1 /* GPUMapMode.READ */);
      const out = staging.getMappedRange().slice(0, bytes);
      staging.unmap();
      this.check();
      return out;
    } finally {
      staging.destroy();
    }
  }

  // ---- buffers --------------------------------------------------------------------------

  /** The formats the kernels decode (kernels.ts): all of them, GGUF blocks included. */
  supportsFormat(format: WeightFormat): boolean {
    return (
      format === 'f32' || format === 'f16' || format === 'bf16' || format === 'fp8_e4m3_block' ||
      format === 'q8_0' || format === 'q4_0' || format === 'q4_k' || format === 'q6_k'
    );
  }

  uploadWeight(hw: HostWeight): DeviceWeight {
    this.check();
    const { rows, cols, format } = hw;
    if (!this.supportsFormat(format)) throw new Error(`webgpu: ${hw.name}: format ${format} is not supported`);
    // GGUF blocks (q8_0, q4_0, q4_k, q6_k): rows of whole blocks, uploaded as stored.
    const block =
      format === 'q8_0' ? { n: 32, bytes: 34 } : format === 'q4_0' ? { n: 32, bytes: 18 } :
      format === 'q4_k' ? { n: 256, bytes: 144 } : format === 'q6_k' ? { n: 256, bytes: 210 } : null;
    let rowBytes: number;
    if (block) {
      if (cols % block.n !== 0) throw new Error(`webgpu: ${hw.name}: ${format} needs a multiple of ${block.n} columns, has ${cols}`);
      rowBytes = (cols / block.n) * block.bytes;
      if (hw.data.byteLength !== rows * rowBytes) throw new Error(`webgpu: ${hw.name}: ${hw.data.byteLength} bytes of ${format} blocks for [${rows}, ${cols}]`);
    } else {
      rowBytes = cols * (format === 'f32' ? 4 : format === 'fp8_e4m3_block' ? 1 : 2);
      if (hw.data.length !== rows * cols) throw new Error(`webgpu: ${hw.name}: ${hw.data.length} values for [${rows}, ${cols}]`);
    }
    const br = hw.blockRows ?? 1, bc = hw.blockCols ?? 1;
    const scaleCols = Math.ceil(cols / bc);
    if (format === 'fp8_e4m3_block' && (!hw.scales || !hw.blockRows || !hw.blockCols || hw.scales.length < Math.ceil(rows / br) * scaleCols)) {
      throw new Error(`webgpu: ${hw.name}: fp8 weight without matching block scales`);
    }
    let partRows = Math.floor(this.maxPartBytes / rowBytes);
    if (format === 'fp8_e4m3_block') partRows -= partRows % br;
    if (partRows < 1) throw new Error(`webgpu: ${hw.name}: one row${format === 'fp8_e4m3_block' ? ' block' : ''} exceeds the largest storage binding (${this.maxPartBytes} bytes)`);
    const data = bytesOf(hw.data);
    const parts: WeightPart[] = [];
    let bytes = 0;
    for (let r0 = 0; r0 < rows || (rows === 0 && r0 === 0); r0 += partRows) {
      const r1 = Math.min(rows, r0 + partRows);
      const buf = this.createInit(data.subarray(r0 * rowBytes, r1 * rowBytes));
      let scales: GPUBuffer | null = null;
      if (format === 'fp8_e4m3_block') {
        scales = this.createInit(bytesOf(hw.scales!.subarray((r0 / br) * scaleCols, Math.ceil(r1 / br) * scaleCols)));
        bytes += scales.size;
      }
      bytes += buf.size;
      parts.push({ row0: r0, rows: r1 - r0, data: buf, scales });
      if (rows === 0) break;
    }
    return new GpuWeight(hw.name, format, rows, cols, bytes, br, bc, parts);
  }

  /**
   * Fills a weight that fits one storage binding straight into its buffer (mapped at creation),
   * with no host copy of it; a larger one, split into parts, goes through a host buffer.
   */
  uploadWeightFrom(spec: WeightSpec, fill: (dst: Uint8Array) => void): DeviceWeight {
    this.check();
    const { name, format, rows, cols } = spec;
    const bytes = weightDataBytes(format, rows, cols);
    if (bytes > this.maxPartBytes) {
      const data = new Uint8Array(bytes);
      fill(data);
      const n = rows * cols;
      return this.uploadWeight({ ...spec, data: format === 'f32' ? new Float32Array(data.buffer, 0, n) : format === 'f16' || format === 'bf16' ? new Uint16Array(data.buffer, 0, n) : data });
    }
    const buf = this.device.createBuffer({ size: roundUp(Math.max(bytes, 4), 4), usage: STORAGE | COPY_DST, mappedAtCreation: true });
    try {
      fill(new Uint8Array(buf.getMappedRange(), 0, bytes));
    } catch (e) {
      buf.destroy();
      throw e;
    }
    buf.unmap();
    return new GpuWeight(name, format, rows, cols, buf.size, 1, 1, [{ row0: 0, rows, data: buf, scales: null }]);
  }

  fromHost(data: Float32Array, rows: number, cols: number): Tensor {
    this.check();
    if (data.length !== rows * cols) throw new Error(`fromHost: ${data.length} values for [${rows}, ${cols}]`);
    const t = this.newTensor(rows, cols);
    // A pooled buffer is referenced by no recorded work, so writing it now is safe.
    if (data.length) this.device.queue.writeBuffer(t.buf, 0, data.buffer, data.byteOffset, data.byteLength);
    return t;
  }

  async read(x: Tensor): Promise<Float32Array> {
    const t = tensor(x);
    return new Float32Array(await this.readBuffer(t.buf, t.rows * t.cols * 4));
  }

  createKVPool(layers: number, numBlocks: number, blockSize: number, width: number): KVPool {
    this.check();
    const bytes = numBlocks * blockSize * width * 4;
    if (bytes > this.maxBinding) throw new Error(`webgpu: a KV pool layer of ${bytes} bytes exceeds maxStorageBufferBindingSize (${this.maxBinding}); use fewer blocks`);
    const buffers: GPUBuffer[] = [];
    for (let l = 0; l < layers; l++) buffers.push(this.device.createBuffer({ size: roundUp(Math.max(bytes, 4), 4), usage: STORAGE | COPY_SRC | COPY_DST }));
    return new GpuKVPool(layers, numBlocks, blockSize, width, layers * bytes, buffers);
  }

  copyBlocks(poolIn: KVPool, src: Int32Array, dst: Int32Array): void {
    this.begin();
    const pool = poolIn as GpuKVPool;
    if (src.length !== dst.length) throw new Error('copyBlocks: src and dst differ in length');
    if (!src.length) return;
    for (const b of [...src, ...dst]) if (b < 0 || b >= pool.numBlocks) throw new RangeError(`copyBlocks: block ${b} outside the pool`);
    const span = pool.blockSize * pool.width;
    const pairs = this.stage(Int32Array.from([...src, ...dst]));
    for (const layer of pool.buffers) {
      const sh = new Shader().u32('total', src.length * span).u32('span', span).u32('count', src.length)
        .buf('pairs', 'u32', 'read', pairs).buf('cache', 'u32', 'read_write', { buffer: layer });
      this.run(sh, elementwise('let i = g / P.span;\n  let o = g % P.span;\n  cache[pairs[P.count + i] * P.span + o] = cache[pairs[i] * P.span + o];'), grid(Math.ceil((src.length * span) / EW)));
    }
  }

  // ---- ops --------------------------------------------------------------------------------

  embedding(table: DeviceWeight, ids: Int32Array): Tensor {
    this.begin();
    const w = weight(table);
    const n = ids.length, d = w.cols;
    for (const id of ids) if (id >= w.rows) throw new RangeError(`token id ${id} outside the vocabulary (${w.rows})`);
    const out = this.newTensor(n, d);
    if (!n || !d) return out;
    const idsRef = this.stage(ids);
    w.parts.forEach((part, i) => {
      const sh = new Shader().u32('total', n * d).u32('d', d).u32('row0', part.row0).u32('row1', part.row0 + part.rows).u32('first', i === 0 ? 1 : 0)
        .buf('ids', 'i32', 'read', idsRef).weight('w', w, part).buf('out', 'f32', 'read_write', ref(out));
      this.run(sh, elementwise(`let i = g / P.d;
  let c = g % P.d;
  let id = ids[i];
  if (id < 0) {
    if (P.first == 1u) { out[g] = 0.0; }
    return;
  }
  let r = u32(id);
  if (r >= P.row0 && r < P.row1) { out[g] = w_at(r - P.row0, c); }`), grid(Math.ceil((n * d) / EW)));
    });
    return out;
  }

  matmul(xIn: Tensor, wIn: DeviceWeight): Tensor {
    this.begin();
    const x = tensor(xIn), w = weight(wIn);
    const n = x.rows, k = x.cols, m = w.rows;
    if (w.cols !== k) throw new Error(`matmul: x has ${k} columns, ${w.name} has ${w.cols}`);
    const out = this.newTensor(n, m);
    // One token (decode): no token tile, and whole blocks per thread where k allows.
    const tokens = n === 1 ? 1 : MM_TOKENS, dot32 = n === 1 && k % 32 === 0;
    for (const part of w.parts) {
      const sh = new Shader().u32('n', n).u32('k', k).u32('m', part.rows).u32('ostride', m).u32('col0', part.row0)
        .buf('x', 'f32', 'read', ref(x)).weight('w', w, part, dot32).buf('out', 'f32', 'read_write', ref(out));
      this.run(sh, matmulBody({ expert: false, gather: false, dual: false, tokens, dot32 }), grid(part.rows, Math.ceil(n / tokens)));
    }
    return out;
  }

  rmsNorm(xIn: Tensor, wIn: DeviceWeight, eps: number): Tensor {
    this.begin();
    const x = tensor(xIn), w = weight(wIn);
    const d = x.cols;
    if (w.rows * w.cols !== d) throw new Error(`${w.name}: expected ${d} values, has ${w.rows * w.cols}`);
    if (w.rows !== 1 && w.format === 'fp8_e4m3_block') throw new Error(`webgpu: rmsNorm: ${w.name} must be one row`);
    const out = this.newTensor(x.rows, d);
    const sh = new Shader().u32('n', x.rows).u32('d', d).f32('eps', eps)
      .buf('x', 'f32', 'read', ref(x)).weight('w', w, single(w, 'rmsNorm')).buf('out', 'f32', 'read_write', ref(out));
    this.run(sh, RMSNORM, grid(x.rows));
    return out;
  }

  private binary(aIn: Tensor, bIn: Tensor, what: string, stmt: string): Tensor {
    this.begin();
    const a = tensor(aIn), b = tensor(bIn);
    if (a.rows !== b.rows || a.cols !== b.cols) throw new Error(`${what}: shape mismatch`);
    const out = this.newTensor(a.rows, a.cols);
    const total = a.rows * a.cols;
    const sh = new Shader().u32('total', total).buf('a', 'f32', 'read', ref(a)).buf('b', 'f32', 'read', ref(b)).buf('out', 'f32', 'read_write', ref(out));
    this.run(sh, elementwise(stmt), grid(Math.ceil(total / EW)));
    return out;
  }

  add(a: Tensor, b: Tensor): Tensor {
    return this.binary(a, b, 'add', 'out[g] = a[g] + b[g];');
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    return this.binary(gate, up, 'swiglu', 'out[g] = silu(a[g]) * b[g];');
  }

  sliceCols(xIn: Tensor, start: number, count: number): Tensor {
    this.begin();
    const x = tensor(xIn);
    if (start < 0 || count < 0 || start + count > x.cols) throw new Error('sliceCols: out of range');
    const out = this.newTensor(x.rows, count);
    const total = x.rows * count;
    const sh = new Shader().u32('total', total).u32('cols', count).u32('xcols', x.cols).u32('start', start)
      .buf('x', 'u32', 'read', ref(x)).buf('out', 'u32', 'read_write', ref(out));
    this.run(sh, elementwise('out[g] = x[(g / P.cols) * P.xcols + P.start + g % P.cols];'), grid(Math.ceil(total / EW)));
    return out;
  }

  concatCols(aIn: Tensor, bIn: Tensor): Tensor {
    this.begin();
    const a = tensor(aIn), b = tensor(bIn);
    if (a.rows !== b.rows) throw new Error('concatCols: row mismatch');
    const cols = a.cols + b.cols;
    const out = this.newTensor(a.rows, cols);
    const total = a.rows * cols;
    const sh = new Shader().u32('total', total).u32('cols', cols).u32('ca', a.cols).u32('cb', b.cols)
      .buf('a', 'u32', 'read', ref(a)).buf('b', 'u32', 'read', ref(b)).buf('out', 'u32', 'read_write', ref(out));
    this.run(sh, elementwise(`let i = g / P.cols;
  let j = g % P.cols;
  if (j < P.ca) { out[g] = a[i * P.ca + j]; } else { out[g] = b[i * P.cb + j - P.ca]; }`), grid(Math.ceil(total / EW)));
    return out;
  }

  gatherRows(xIn: Tensor, rows: Int32Array): Tensor {
    this.begin();
    const x = tensor(xIn);
    for (const r of rows) if (r < 0 || r >= x.rows) throw new RangeError('gatherRows: row out of range');
    const out = this.newTensor(rows.length, x.cols);
    const total = rows.length * x.cols;
    if (!total) return out;
    const sh = new Shader().u32('total', total).u32('cols', x.cols)
      .buf('rows', 'u32', 'read', this.stage(rows)).buf('x', 'u32', 'read', ref(x)).buf('out', 'u32', 'read_write', ref(out));
    this.run(sh, elementwise('out[g] = x[rows[g / P.cols] * P.cols + g % P.cols];'), grid(Math.ceil(total / EW)));
    return out;
  }

  rope(xIn: Tensor, positions: Int32Array, invFreq: Float32Array, heads: number, headStride: number, offset: number): Tensor {
    this.begin();
    const x = tensor(xIn);
    if (x.cols !== heads * headStride) throw new Error('rope: columns do not match heads * headStride');
    const half = invFreq.length;
    if (offset + 2 * half > headStride) throw new Error('rope: rotated slice past the head');
    if (positions.length !== x.rows) throw new Error('rope: one position per row');
    // cos/sin per (row, frequency), from host data only (positions, invFreq), in float64 as on the CPU.
    const tab = new Float32Array(x.rows * half * 2);
    for (let r = 0; r < x.rows; r++) {
      for (let p = 0; p < half; p++) {
        const angle = positions[r] * invFreq[p];
        tab[(r * half + p) * 2] = Math.cos(angle);
        tab[(r * half + p) * 2 + 1] = Math.sin(angle);
      }
    }
    const out = this.newTensor(x.rows, x.cols);
    const total = x.rows * x.cols;
    if (!total) return out;
    const sh = new Shader().u32('total', total).u32('cols', x.cols).u32('stride', headStride).u32('offset', offset).u32('half', half)
      .buf('tab', 'f32', 'read', this.stage(tab)).buf('x', 'f32', 'read', ref(x)).buf('out', 'f32', 'read_write', ref(out));
    this.run(sh, elementwise(`let r = g / P.cols;
  let w = (g % P.cols) % P.stride;
  if (w < P.offset || w >= P.offset + 2u * P.half) { out[g] = x[g]; return; }
  let t = (r * P.half + (w - P.offset) / 2u) * 2u;
  let cs = tab[t];
  let sn = tab[t + 1u];
  if (((w - P.offset) & 1u) == 0u) { out[g] = x[g] * cs - x[g + 1u] * sn; } else { out[g] = x[g - 1u] * sn + x[g] * cs; }`), grid(Math.ceil(total / EW)));
    return out;
  }

  writeKV(poolIn: KVPool, layer: number, kvIn: Tensor, batch: AttentionBatch): void {
    this.begin();
    const pool = poolIn as GpuKVPool;
    const kv = tensor(kvIn);
    if (kv.cols !== pool.width) throw new Error(`writeKV: rows of ${kv.cols} values, pool width ${pool.width}`);
    if (layer < 0 || layer >= pool.layers) throw new RangeError(`writeKV: layer ${layer} outside the pool`);
    const slots = new Uint32Array(kv.rows);
    for (let i = 0; i < kv.rows; i++) slots[i] = slotOf(batch, i, pool);
    const total = kv.rows * pool.width;
    if (!total) return;
    const sh = new Shader().u32('total', total).u32('width', pool.width)
      .buf('slots', 'u32', 'read', this.stage(slots)).buf('kv', 'u32', 'read', ref(kv)).buf('cache', 'u32', 'read_write', { buffer: pool.buffers[layer] });
    this.run(sh, elementwise('cache[slots[g / P.width] * P.width + g % P.width] = kv[g];'), grid(Math.ceil(total / EW)));
  }

  mlaAttention(qIn: Tensor, kvBIn: DeviceWeight, poolIn: KVPool, layer: number, batch: AttentionBatch, s: MlaShape): Tensor {
    this.begin();
    const q = tensor(qIn), kvB = weight(kvBIn);
    const pool = poolIn as GpuKVPool;
    const n = q.rows, H = s.heads, R = s.kvRank, P = s.ropeDim, qStride = s.nopeDim + P;
    if (q.cols !== H * qStride) throw new Error('mlaAttention: q has the wrong width');
    if (kvB.rows !== H * (s.nopeDim + s.vDim) || kvB.cols !== R) throw new Error(`mlaAttention: ${kvB.name} has the wrong shape`);
    if (pool.width !== R + P) throw new Error(`mlaAttention: pool width ${pool.width}, expected ${R + P}`);
    if (layer < 0 || layer >= pool.layers) throw new RangeError(`mlaAttention: layer ${layer} outside the pool`);
    const shared = (2 * R + P + 128) * 4 + 4;
    if (shared > this.device.limits.maxComputeWorkgroupStorageSize) throw new Error(`webgpu: mlaAttention: kv rank ${R} needs ${shared} bytes of workgroup memory`);
    const out = this.newTensor(n, H * s.vDim);
    if (!n) return out;
    const part = single(kvB, 'mlaAttention');

    // tabs = [positions | start of each token's table in tabs | the block tables].
    const tableStart: number[] = [];
    let len = 2 * n;
    for (const t of batch.blockTables) { tableStart.push(len); len += t.length; }
    const tabs = new Uint32Array(len);
    for (let i = 0; i < n; i++) {
      const pos = batch.positions[i];
      const table = batch.blockTables[batch.seqIndex[i]];
      if (!table) throw new RangeError(`mlaAttention: token ${i} has no block table`);
      if (pos < 0 || Math.floor(pos / pool.blockSize) >= table.length) throw new RangeError(`no cache block for position ${pos}`);
      tabs[i] = pos;
      tabs[n + i] = tableStart[batch.seqIndex[i]];
    }
    batch.blockTables.forEach((t, j) => {
      for (const b of t) if (b < 0 || b >= pool.numBlocks) throw new RangeError(`mlaAttention: block ${b} outside the pool`);
      tabs.set(t, tableStart[j]);
    });
    const tabsRef = this.stage(tabs);
    const qa = this.alloc(n * H * R * 4), lat = this.alloc(n * H * R * 4);
    const dims = (sh: Shader) => sh.u32('heads', H).u32('rank', R).u32('nope', s.nopeDim).u32('vdim', s.vDim);

    // 1. Fold W_UK into the query: qa[i, h] = q_nope[i, h] · W_UK[h]  ([n, H, R]).
    let total = n * H * R;
    let sh = dims(new Shader().u32('total', total)).u32('qcols', q.cols).u32('qstride', qStride)
      .buf('q', 'f32', 'read', ref(q)).weight('w', kvB, part).buf('qa', 'f32', 'read_write', { buffer: qa });
    this.run(sh, elementwise(`let c = g % P.rank;
  let ih = g / P.rank;
  let h = ih % P.heads;
  let qb = (ih / P.heads) * P.qcols + h * P.qstride;
  let wr = h * (P.nope + P.vdim);
  var s = 0.0;
  for (var d = 0u; d < P.nope; d++) { s += q[qb + d] * w_at(wr + d, c); }
  qa[g] = s;`), grid(Math.ceil(total / EW)));

    // 2. Softmax over the cached [latent | rope key] rows; weighted sum of latents ([n, H, R]).
    sh = dims(new Shader().u32('n', n)).u32('rope', P).u32('qcols', q.cols).u32('qstride', qStride)
      .u32('block', pool.blockSize).u32('width', pool.width).f32('scale', s.softmaxScale)
      .buf('qa', 'f32', 'read', { buffer: qa }).buf('q', 'f32', 'read', ref(q)).buf('cache', 'f32', 'read', { buffer: pool.buffers[layer] })
      .buf('tabs', 'u32', 'read', tabsRef).buf('lat', 'f32', 'read_write', { buffer: lat });
    this.run(sh, attendBody(R, P), grid(n * H));

    // 3. Apply W_UV: out[i, h, d] = lat[i, h] · W_UV[h, d].
    total = n * H * s.vDim;
    sh = dims(new Shader().u32('total', total))
      .buf('lat', 'f32', 'read', { buffer: lat }).weight('w', kvB, part).buf('out', 'f32', 'read_write', ref(out));
    this.run(sh, elementwise(`let d = g % P.vdim;
  let ih = g / P.vdim;
  let wr = (ih % P.heads) * (P.nope + P.vdim) + P.nope + d;
  var s = 0.0;
  for (var c = 0u; c < P.rank; c++) { s += lat[ih * P.rank + c] * w_at(wr, c); }
  out[g] = s;`), grid(Math.ceil(total / EW)));
    this.pending.push(qa, lat);
    return out;
  }

  route(logitsIn: Tensor, bias: DeviceWeight | null, cfg: RouterConfig): Routing {
    this.begin();
    const lg = tensor(logitsIn);
    const n = lg.rows, E = lg.cols, K = cfg.topK, G = cfg.nGroup;
    if (K < 1 || K > E) throw new Error(`route: topK ${K} with ${E} experts`);
    if (G < 1 || E % G !== 0 || cfg.topkGroup < 1 || cfg.topkGroup > G) throw new Error(`route: ${E} experts in ${G} groups, keeping ${cfg.topkGroup}`);
    const b = bias ? weight(bias) : null;
    if (b && b.rows * b.cols !== E) throw new Error(`${b.name}: expected ${E} values, has ${b.rows * b.cols}`);
    const ids = this.alloc(n * K * 4), wts = this.alloc(n * K * 4);
    const r = new GpuRouting(n, K, ids, wts);
    this.registry.register(r, [ids, wts]);
    if (!n) return r;
    const scratch = this.alloc(n * (2 * E + 2 * G) * 4);
    const sh = new Shader().u32('n', n).u32('experts', E).u32('groups', G).u32('keep', cfg.topkGroup).u32('topk', K)
      .u32('softmax', cfg.scoring === 'softmax' ? 1 : 0).u32('top2', cfg.groupScore === 'top2sum' ? 1 : 0)
      .u32('normalize', cfg.normalize ? 1 : 0).f32('scale', cfg.scale)
      .buf('lg', 'f32', 'read', ref(lg));
    if (b) sh.weight('b', b, single(b, 'route'));
    sh.buf('sc', 'f32', 'read_write', { buffer: scratch }).buf('ids', 'u32', 'read_write', { buffer: ids }).buf('wts', 'f32', 'read_write', { buffer: wts });
    this.run(sh, routeBody(b !== null), grid(Math.ceil(n / 64)));
    this.pending.push(scratch);
    return r;
  }

  async readRouting(rIn: Routing): Promise<{ ids: Int32Array; weights: Float32Array }> {
    const r = rIn as GpuRouting;
    const bytes = r.tokens * r.topK * 4;
    const ids = new Int32Array(await this.readBuffer(r.ids, bytes));
    const weights = new Float32Array(await this.readBuffer(r.weights, bytes));
    return { ids, weights };
  }

  moe(xIn: Tensor, rIn: Routing, experts: ExpertWeights[]): Tensor {
    this.begin();
    const x = tensor(xIn);
    const r = rIn as GpuRouting;
    const n = x.rows, d = x.cols, K = r.topK, E = experts.length, nk = n * K;
    if (r.tokens !== n) throw new Error(`moe: routing for ${r.tokens} tokens, x has ${n}`);
    if (!E) throw new Error('moe: no experts');
    const inter = experts[0].gate.rows;
    const parts = experts.map((ex, e) => {
      const g = weight(ex.gate), u = weight(ex.up), dn = weight(ex.down);
      if (g.rows !== inter || g.cols !== d || u.rows !== inter || u.cols !== d || dn.rows !== d || dn.cols !== inter) {
        throw new Error(`moe: expert ${e} does not have the shapes gate/up [${inter}, ${d}], down [${d}, ${inter}]`);
      }
      return { g, u, dn, gp: single(g, 'moe'), up: single(u, 'moe'), dp: single(dn, 'moe') };
    });
    if (inter > 65535 || d > 65535) throw new Error('webgpu: moe: expert dimensions above 65535');
    const out = this.newTensor(n, d);
    if (!nk) return out;
    const idx = this.alloc((E + 1 + 2 * nk) * 4), args = this.alloc(E * 24);
    const h = this.alloc(nk * inter * 4), y = this.alloc(nk * d * 4);
    const idxRef: BufferRef = { buffer: idx };

    // Sort the routed entries by expert; per expert, the sizes of its two indirect dispatches.
    this.run(new Shader().u32('experts', E).u32('nk', nk).u32('inter', inter).u32('d', d)
      .buf('ids', 'u32', 'read', { buffer: r.ids }).buf('idx', 'u32', 'read_write', idxRef).buf('args', 'u32', 'read_write', { buffer: args }), MOE_INDEX, [1, 1, 1]);

    // Per expert, over its own rows only: h = silu(gate x) * (up x), then y = down h.
    // One token (decode): each expert has at most one row, so no token tile (the indirect
    // counts, ceil(rows / MM_TOKENS), are then 0 or 1 as well), and whole blocks per thread.
    const tokens = n === 1 ? 1 : MM_TOKENS;
    const dotGU = n === 1 && d % 32 === 0, dotDown = n === 1 && inter % 32 === 0;
    const gateUp = matmulBody({ expert: true, gather: true, dual: true, tokens, dot32: dotGU });
    const down = matmulBody({ expert: true, gather: false, dual: false, tokens, dot32: dotDown });
    parts.forEach((p, e) => {
      let sh = new Shader().u32('e', e).u32('list', E + 1).u32('topk', K).u32('k', d).u32('m', inter).u32('ostride', inter).u32('col0', 0)
        .buf('x', 'f32', 'read', ref(x)).weight('g', p.g, p.gp, dotGU).weight('u', p.u, p.up, dotGU).buf('idx', 'u32', 'read', idxRef).buf('out', 'f32', 'read_write', { buffer: h });
      this.run(sh, gateUp, { indirect: args, offset: e * 24 });
      sh = new Shader().u32('e', e).u32('k', inter).u32('m', d).u32('ostride', d).u32('col0', 0)
        .buf('x', 'f32', 'read', { buffer: h }).weight('w', p.dn, p.dp, dotDown).buf('idx', 'u32', 'read', idxRef).buf('out', 'f32', 'read_write', { buffer: y });
      this.run(sh, down, { indirect: args, offset: e * 24 + 12 });
    });

    // out[t] = Σ_k weight[t, k] · y[sorted position of (t, k)].
    const total = n * d;
    const sh = new Shader().u32('total', total).u32('d', d).u32('topk', K).u32('inv', E + 1 + nk)
      .buf('y', 'f32', 'read', { buffer: y }).buf('idx', 'u32', 'read', idxRef).buf('wts', 'f32', 'read', { buffer: r.weights }).buf('out', 'f32', 'read_write', ref(out));
    this.run(sh, elementwise(`let t = g / P.d;
  let c = g % P.d;
  var s = 0.0;
  for (var k = 0u; k < P.topk; k++) {
    let j = t * P.topk + k;
    s += wts[j] * y[idx[P.inv + j] * P.d + c];
  }
  out[g] = s;`), grid(Math.ceil(total / EW)));
    this.pending.push(idx, args, h, y);
    return out;
  }

  async argmaxRows(xIn: Tensor): Promise<Int32Array> {
    this.begin();
    const x = tensor(xIn);
    if (!x.cols) return new Int32Array(x.rows);
    const out = this.alloc(x.rows * 4);
    const sh = new Shader().u32('n', x.rows).u32('cols', x.cols).buf('x', 'f32', 'read', ref(x)).buf('out', 'u32', 'read_write', { buffer: out });
    this.run(sh, ARGMAX, grid(x.rows));
    try {
      return new Int32Array(await this.readBuffer(out, x.rows * 4));
    } finally {
      this.pending.push(out);
    }
  }

  /** Back to the pool after the next submit, as for a collected handle (recorded work may still read it). */
  release(tIn: Tensor): void {
    const t = tensor(tIn);
    if (this.registry.unregister(t) && !this.disposed) this.pending.push(t.buf);
  }

  dispose(): void {
    if (this.disposed) return;
    try {
      this.flush();
    } catch {
      // the device may already be lost
    }
    this.disposed = true;
    for (const list of this.free.values()) list.length = 0;
    this.free.clear();
    this.pending = [];
    this.pipelines.clear();
    this.device.destroy();
    // Drop Dawn's objects together (the instance last), so Node can exit.
    this.adapter = null;
    this.gpu = null;
  }
}

/** Cache slot of token i: its sequence's block table at its position. */
function slotOf(batch: AttentionBatch, i: number, pool: GpuKVPool): number {
  const pos = batch.positions[i];
  const table = batch.blockTables[batch.seqIndex[i]];
  const block = table?.[Math.floor(pos / pool.blockSize)];
  if (block === undefined || pos < 0) throw new RangeError(`no cache block for position ${pos}`);
  if (block < 0 || block >= pool.numBlocks) throw new RangeError(`block ${block} outside the pool`);
  return block * pool.blockSize + (pos % pool.blockSize);
}
