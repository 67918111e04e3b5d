/**
 * Placement: which backend holds which decoder layer's weights and cache.
 *
 * A model spread over several devices (pipeline parallel) names a backend per layer;
 * activations move between backends at the boundaries. Expert parallelism will extend
 * this with a backend per expert.
 */
import type { Backend, Tensor } from '../backends/backend.js';

export class Placement {
  private constructor(
    /** backends[i] holds layer i; layers past the end (MTP) go to the last one. */
    private readonly layerBackends: Backend[],
    private readonly fallback: Backend,
  ) {}

  /** Everything on one backend. */
  static single(b: Backend): Placement {
    return new Placement([], b);
  }

  /**
   * Consecutive layer ranges on consecutive backends: `counts[j]` layers on `backends[j]`
   * (pipeline parallel). Layers beyond the sum (MTP) stay on the last backend.
   */
  static pipeline(backends: Backend[], counts: number[]): Placement {
    if (backends.length !== counts.length || !backends.length) throw new Error('pipeline: one layer count per backend');
    const per: Backend[] = [];
    counts.forEach((c, j) => { for (let i = 0; i < c; i++) per.push(backends[j]); });
    return new Placement(per, backends[backends.length - 1]);
  }

  backendFor(layer: number): Backend {
    return this.layerBackends[layer] ?? this.fallback;
  }

  backends(): Backend[] {
    return [...new Set([...this.layerBackends, this.fallback])];
  }

  /** Moves an activation to another backend (a no-op on the same one). */
  async move(x: Tensor, from: Backend, to: Backend): Promise<Tensor> {
    if (from === to) return x;
    return to.fromHost(await from.read(x), x.rows, x.cols);
  }
}
