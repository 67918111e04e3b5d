/**
 * Block bookkeeping for the paged latent cache (the storage itself lives on the backends).
 * Blocks are reference counted so that sequences sharing a prompt prefix can share blocks.
 */
export class BlockAllocator {
  private readonly free: number[] = [];
  private readonly refs: Int32Array;

  constructor(readonly numBlocks: number, readonly blockSize: number) {
    this.refs = new Int32Array(numBlocks);
    // Hand out low block ids first.
    for (let b = numBlocks - 1; b >= 0; b--) this.free.push(b);
  }

  get freeBlocks(): number {
    return this.free.length;
  }

  get usedBlocks(): number {
    return this.numBlocks - this.free.length;
  }

  /** Blocks needed to hold `tokens` positions. */
  blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  /** Takes one free block (refcount 1), or null when none is left. */
  allocate(): number | null {
    const b = this.free.pop();
    if (b === undefined) return null;
    this.refs[b] = 1;
    return b;
  }

  /** Another holder of an allocated block. */
  retain(b: number): void {
    if (this.refs[b] <= 0) throw new Error(`retain of free block ${b}`);
    this.refs[b]++;
  }

  /** Drops one holder; the block becomes free when none remain. */
  release(b: number): void {
    if (this.refs[b] <= 0) throw new Error(`double free of block ${b}`);
    if (--this.refs[b] === 0) this.free.push(b);
  }

  refCount(b: number): number {
    return this.refs[b];
  }
}

/** One sequence's block table, growing as tokens are appended. */
export class SequenceBlocks {
  readonly blocks: number[] = [];

  constructor(private readonly alloc: BlockAllocator) {}

  /** Makes room for `tokens` positions in total. Returns false (allocating nothing) if the pool is short. */
  ensure(tokens: number): boolean {
    const need = this.alloc.blocksFor(tokens) - this.blocks.length;
    if (need <= 0) return true;
    if (need > this.alloc.freeBlocks) return false;
    for (let i = 0; i < need; i++) this.blocks.push(this.alloc.allocate()!);
    return true;
  }

  table(): Int32Array {
    return Int32Array.from(this.blocks);
  }

  releaseAll(): void {
    for (const b of this.blocks) this.alloc.release(b);
    this.blocks.length = 0;
  }
}
