/**
 * The backend interface: everything the model code asks of a device.
 *
 * Split as in ggml-backend: *buffers* (weights uploaded once in their packed format,
 * activations, the paged latent KV pool) and *ops* on them. Ops are synchronous calls
 * that return new tensor handles; a device backend may only record them and run later.
 * Nothing comes back to the host until `read` (or `argmaxRows`) is awaited, so a GPU
 * backend can encode a whole forward step without read-backs.
 *
 * Tensors hold float32 activations laid out row-major as [rows, cols]. Weights keep
 * the checkpoint's format (see WeightFormat) and are computed on in that form.
 * docs/backends.md describes each op precisely; test/conformance.ts checks them.
 */

/**
 * Packed weight formats a backend computes on directly. The last four are llama.cpp's GGUF
 * block formats, byte for byte (src/formats/quant.ts describes their layouts).
 */
export type WeightFormat = 'f32' | 'f16' | 'bf16' | 'fp8_e4m3_block' | 'q8_0' | 'q4_0' | 'q4_k' | 'q6_k';

/**
 * A weight as read from the checkpoint, still packed, in host memory.
 * Matrices are [rows = out features, cols = in features] like torch's Linear.weight;
 * vectors (norm weights, biases) have rows = 1.
 */
export interface HostWeight {
  name: string;
  format: WeightFormat;
  rows: number;
  cols: number;
  /**
   * f32: Float32Array; f16/bf16: Uint16Array; fp8: Uint8Array (e4m3fn bytes);
   * q8_0/q4_0/q4_k/q6_k: Uint8Array of blocks, each row a whole number of blocks (cols a
   * multiple of 32, or 256 for the k-quants), rows one after another. May be a view into a
   * larger buffer (e.g. one expert of a stacked GGUF tensor).
   */
  data: Float32Array | Uint16Array | Uint8Array;
  /** fp8 only: one float per block, [ceil(rows / blockRows), ceil(cols / blockCols)] row-major. */
  scales?: Float32Array;
  blockRows?: number;
  blockCols?: number;
}

/**
 * A weight before its bytes exist, for Backend.uploadWeightFrom: its data is laid out as
 * HostWeight.data would be (weightDataBytes(format, rows, cols) bytes). fp8_e4m3_block, whose
 * scales live apart, goes through uploadWeight only.
 */
export interface WeightSpec {
  name: string;
  format: Exclude<WeightFormat, 'fp8_e4m3_block'>;
  rows: number;
  cols: number;
}

/** A weight living on a device. Opaque to the model code. */
export interface DeviceWeight {
  readonly name: string;
  readonly format: WeightFormat;
  readonly rows: number;
  readonly cols: number;
  /** Bytes the weight occupies on the device (packed data plus scales). */
  readonly bytes: number;
}

/** A float32 activation [rows, cols] owned by a backend. */
export interface Tensor {
  readonly rows: number;
  readonly cols: number;
}

/**
 * Paged storage for the MLA latent cache: per layer, `numBlocks * blockSize` slots of
 * `width` floats (the normalized kv latent followed by the rotated shared rope key).
 * Slot s of a sequence lives at block blockTable[s / blockSize], offset s % blockSize.
 */
export interface KVPool {
  readonly layers: number;
  readonly numBlocks: number;
  readonly blockSize: number;
  readonly width: number;
  /** Device bytes used by the pool. */
  readonly bytes: number;
}

/** Which cache slots a batch of tokens writes and attends to. */
export interface AttentionBatch {
  /** Absolute position of each token in its sequence (decides causal extent and RoPE). */
  positions: Int32Array;
  /** For each token, the index of its sequence in `blockTables`. */
  seqIndex: Int32Array;
  /** One block table per sequence: the pool blocks holding positions 0, B, 2B, ... */
  blockTables: Int32Array[];
}

/** Shape of multi-head latent attention, shared by every layer of a model. */
export interface MlaShape {
  heads: number;
  nopeDim: number;
  ropeDim: number;
  vDim: number;
  kvRank: number;
  /** Multiplies q·k before the softmax (includes YaRN's mscale^2). */
  softmaxScale: number;
}

/** How the router turns gate logits into expert choices (DeepSeek V2/V3 variants). */
export interface RouterConfig {
  topK: number;
  scoring: 'softmax' | 'sigmoid';
  /** Expert groups; groups outside the best `topkGroup` are masked out. 1 = no grouping. */
  nGroup: number;
  topkGroup: number;
  /** How a group is scored: best expert ('max', V2) or sum of its best two ('top2sum', V3 with bias). */
  groupScore: 'max' | 'top2sum';
  /** Divide the chosen weights by their sum. */
  normalize: boolean;
  /** Multiplies the (possibly normalized) weights. */
  scale: number;
}

/** The routing decision for a batch: per token, topK expert ids and their weights. */
export interface Routing {
  readonly tokens: number;
  readonly topK: number;
}

/** One routed expert's SwiGLU MLP. */
export interface ExpertWeights {
  gate: DeviceWeight;
  up: DeviceWeight;
  down: DeviceWeight;
}

export interface DeviceInfo {
  name: string;
  kind: 'cpu' | 'gpu';
  /** Memory the backend may use for weights and cache, when known. */
  memoryBytes?: number;
}

export interface Backend {
  readonly info: DeviceInfo;

  /**
   * Whether uploadWeight/every op accepts weights in this format. The model loader converts
   * weights in unsupported formats (to bf16) before uploading. Every backend supports f32 or bf16.
   */
  supportsFormat(format: WeightFormat): boolean;

  // ---- buffers -------------------------------------------------------------------------
  /**
   * Makes a device weight of `w`. The backend may keep w's arrays and compute on them (the CPU
   * reference backend does), so the caller hands them over: it must not modify or reuse them.
   */
  uploadWeight(w: HostWeight): DeviceWeight;
  /**
   * Optional: makes a device weight whose bytes `fill` writes straight into the storage the
   * backend keeps, so a loader reading a checkpoint needs no host copy of it (a model's peak
   * memory is then its packed size, not that plus whatever copies the garbage collector has
   * not freed yet). `dst` is weightDataBytes(format, rows, cols) long and valid only during
   * `fill`; when `fill` throws, the backend keeps nothing. Loaders call uploadFilled
   * (models/weights.ts), which falls back to uploadWeight over a fresh buffer without this.
   */
  uploadWeightFrom?(spec: WeightSpec, fill: (dst: Uint8Array) => void): DeviceWeight;
  /** Copies host floats into a new tensor of the given shape. */
  fromHost(data: Float32Array, rows: number, cols: number): Tensor;
  /** Copies a tensor back to the host (waits for pending work). */
  read(t: Tensor): Promise<Float32Array>;
  createKVPool(layers: number, numBlocks: number, blockSize: number, width: number): KVPool;
  /** Copies the given pool blocks (src[i] -> dst[i]) in every layer (copy-on-write for shared prefixes). */
  copyBlocks(pool: KVPool, src: Int32Array, dst: Int32Array): void;

  // ---- ops -----------------------------------------------------------------------------
  /** Rows of an embedding table; an id < 0 gives a row of zeros. */
  embedding(table: DeviceWeight, ids: Int32Array): Tensor;
  /** x [n, k] times w [m, k] transposed: [n, m]. */
  matmul(x: Tensor, w: DeviceWeight): Tensor;
  /** Row-wise x / rms(x) * w. */
  rmsNorm(x: Tensor, w: DeviceWeight, eps: number): Tensor;
  add(a: Tensor, b: Tensor): Tensor;
  /** silu(gate) * up, element-wise. */
  swiglu(gate: Tensor, up: Tensor): Tensor;
  /** Columns [start, start + count) of x. */
  sliceCols(x: Tensor, start: number, count: number): Tensor;
  /** [a | b] side by side (same rows). */
  concatCols(a: Tensor, b: Tensor): Tensor;
  /** Rows of x picked by index (e.g. each sequence's last token before the LM head). */
  gatherRows(x: Tensor, rows: Int32Array): Tensor;
  /**
   * Rotary embedding on adjacent pairs (x[2i], x[2i+1]) of a slice of every head:
   * x is [n, heads * headStride]; the slice [offset, offset + 2 * invFreq.length) of each
   * head is rotated by angle positions[row] * invFreq[i]. Returns a new tensor.
   */
  rope(x: Tensor, positions: Int32Array, invFreq: Float32Array, heads: number, headStride: number, offset: number): Tensor;
  /** Stores each token's [latent | rope key] row into its slot: block table of its sequence at its position. */
  writeKV(pool: KVPool, layer: number, kv: Tensor, batch: AttentionBatch): void;
  /**
   * Absorbed multi-head latent attention over the paged cache.
   * q: [n, heads * (nopeDim + ropeDim)] with RoPE already applied to the rope part.
   * kvB: kv_b_proj weight [heads * (nopeDim + vDim), kvRank]: its nope rows are folded
   * into the query, its v rows applied to the attended latent. Token t attends to
   * positions 0..positions[t] of its own sequence. Returns [n, heads * vDim].
   */
  mlaAttention(q: Tensor, kvB: DeviceWeight, pool: KVPool, layer: number, batch: AttentionBatch, shape: MlaShape): Tensor;
  /** Chooses experts from gate logits [n, experts]; bias (sigmoid routing) only affects the choice. */
  route(logits: Tensor, bias: DeviceWeight | null, cfg: RouterConfig): Routing;
  /** Reads a routing decision back (for statistics and visualisation). */
  readRouting(r: Routing): Promise<{ ids: Int32Array; weights: Float32Array }>;
  /** Sum over each token's chosen experts of weight * down(silu(gate x) * up x). Tokens are grouped per expert. */
  moe(x: Tensor, routing: Routing, experts: ExpertWeights[]): Tensor;
  /** Index of the largest value of each row (ties: lowest index), without reading the rows back. */
  argmaxRows(x: Tensor): Promise<Int32Array>;

  /**
   * The caller will not use t again (nor pass it to any op): its memory may be reused at once
   * instead of when its handle is garbage collected. The model releases each intermediate
   * of a forward pass as soon as it is dead, so a prefill chunk's activations do not pile up
   * (V8 runs finalizers only between tasks, never inside one synchronous pass). A no-op where
   * memory is the JS heap's.
   */
  release(t: Tensor): void;

  /** Frees device memory held by the backend. */
  dispose(): void;
}
