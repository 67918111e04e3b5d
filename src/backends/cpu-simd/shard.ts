/**
 * A shard: one shared WebAssembly.Memory (at most 4 GiB, wasm32) and the allocator that hands
 * out its bytes. Weights, latent-cache pools and activations all live in shards; every thread
 * has a kernel instance on every shard, and a kernel call only touches memory of one shard.
 * Models larger than one shard spread their weights over several (see simd-backend.ts).
 *
 * The allocator: 64-byte aligned blocks; exact-size free lists (decode steps allocate the same
 * sizes step after step, so blocks are reused as they are), a bump pointer, growth of the memory,
 * and when growth is exhausted a coalescing pass plus first fit.
 */

export const PAGE = 65536;
/** The first bytes of every shard are never handed out (null pointers, kernel static data). */
export const RESERVED_BYTES = PAGE;
/** wasm32: 65536 pages. */
export const MAX_SHARD_BYTES = 65536 * PAGE;
const ALIGN = 64;

export function alignUp(n: number, a = ALIGN): number {
  return Math.ceil(n / a) * a;
}

export class Shard {
  readonly memory: WebAssembly.Memory;
  readonly maxBytes: number;
  private buf: SharedArrayBuffer;
  private top = RESERVED_BYTES;
  private freeLists = new Map<number, number[]>();
  private freeTotal = 0;

  constructor(readonly index: number, maxBytes: number, initialBytes = 16 << 20) {
    const maxPages = Math.max(2, Math.min(65536, Math.floor(maxBytes / PAGE)));
    this.maxBytes = maxPages * PAGE;
    const initial = Math.min(maxPages, Math.max(2, Math.ceil(initialBytes / PAGE)));
    this.memory = new WebAssembly.Memory({ initial, maximum: maxPages, shared: true });
    this.buf = this.memory.buffer as unknown as SharedArrayBuffer;
  }

  /** Bytes in use (handed out and not released). */
  get used(): number {
    return this.top - RESERVED_BYTES - this.freeTotal;
  }

  /** Bytes still obtainable, counting growth up to the maximum. */
  get room(): number {
    return this.maxBytes - this.top + this.freeTotal;
  }

  /** The memory's current buffer (a new object after every growth; old views stay valid). */
  get buffer(): SharedArrayBuffer {
    if (this.buf.byteLength !== this.memory.buffer.byteLength) this.buf = this.memory.buffer as unknown as SharedArrayBuffer;
    return this.buf;
  }

  /** Offset of a new block of at least `bytes` bytes, or -1 when the shard is full. */
  alloc(bytes: number): number {
    const size = alignUp(Math.max(bytes, 1));
    const list = this.freeLists.get(size);
    if (list && list.length) {
      this.freeTotal -= size;
      return list.pop()!;
    }
    if (this.top + size <= this.maxBytes) {
      const ptr = this.top;
      this.ensure(ptr + size);
      this.top += size;
      return ptr;
    }
    return this.fit(size);
  }

  /** Returns a block from alloc (same size). */
  release(ptr: number, bytes: number): void {
    const size = alignUp(Math.max(bytes, 1));
    if (ptr + size === this.top) {
      this.top = ptr;
      return;
    }
    let list = this.freeLists.get(size);
    if (!list) this.freeLists.set(size, (list = []));
    list.push(ptr);
    this.freeTotal += size;
  }

  private ensure(end: number): void {
    const have = this.memory.buffer.byteLength;
    if (end <= have) return;
    const havePages = have / PAGE;
    const needPages = Math.ceil(end / PAGE) - havePages;
    const pages = Math.min(this.maxBytes / PAGE - havePages, Math.max(needPages, Math.ceil(havePages / 4)));
    this.memory.grow(pages);
  }

  /** Coalesces free blocks (lowering the bump pointer when it can) and takes the first that fits. */
  private fit(size: number): number {
    const blocks: [number, number][] = [];
    for (const [s, list] of this.freeLists) for (const p of list) blocks.push([p, s]);
    blocks.sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [p, s] of blocks) {
      const last = merged[merged.length - 1];
      if (last && last[0] + last[1] === p) last[1] += s;
      else merged.push([p, s]);
    }
    const tail = merged[merged.length - 1];
    if (tail && tail[0] + tail[1] === this.top) {
      this.top = tail[0];
      merged.pop();
    }
    this.freeLists.clear();
    this.freeTotal = 0;
    let found = -1;
    for (const [p, s] of merged) {
      if (found < 0 && s >= size) {
        found = p;
        if (s > size) this.release(p + size, s - size);
      } else this.release(p, s);
    }
    if (found >= 0) return found;
    if (this.top + size <= this.maxBytes) {
      const ptr = this.top;
      this.ensure(ptr + size);
      this.top += size;
      return ptr;
    }
    return -1;
  }

  f32(ptr: number, len: number): Float32Array {
    return new Float32Array(this.buffer, ptr, len);
  }
  u16(ptr: number, len: number): Uint16Array {
    return new Uint16Array(this.buffer, ptr, len);
  }
  u8(ptr: number, len: number): Uint8Array {
    return new Uint8Array(this.buffer, ptr, len);
  }
  i32(ptr: number, len: number): Int32Array {
    return new Int32Array(this.buffer, ptr, len);
  }
}
