/**
 * A model folder read over HTTP (the web playground's in-tab mode, which fetches the served
 * model's files from `shoal serve`'s GET /api/model/files/NAME).
 *
 * The .safetensors file is fetched whole into memory (meant for small models: the demo model
 * is 7 MB) and then read like a local file: the header goes through the same validation as
 * src/formats/safetensors.ts (parseSafetensorsHeader), tensor reads are synchronous copies
 * out of the downloaded bytes. No Node APIs: runs in a browser and in Node (global fetch).
 */
import { UserError } from '../errors.js';
import { parseSafetensorsHeader, safetensorsHeaderLength } from './safetensors.js';
import type { Checkpoint, TensorInfo, TensorSource } from './types.js';

export type FetchLike = (url: string, init?: { headers?: Record<string, string>; signal?: AbortSignal }) => Promise<Response>;

/** One safetensors file held in memory (e.g. downloaded). */
export class BytesSafetensors implements TensorSource {
  private readonly tensors: Map<string, TensorInfo>;
  private bytes: Uint8Array | null;
  readonly metadata: Record<string, string>;

  /** Validates the header now; throws UserError naming `label` on a bad file. */
  constructor(bytes: Uint8Array, readonly label: string) {
    const headerLen = safetensorsHeaderLength(bytes.subarray(0, 8), bytes.byteLength, label);
    const h = parseSafetensorsHeader(bytes.subarray(8, 8 + headerLen), bytes.byteLength, label);
    this.tensors = h.tensors;
    this.metadata = h.metadata;
    this.bytes = bytes;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`no tensor named "${name}"`, this.label);
    return t;
  }

  /** A fresh copy that owns its ArrayBuffer from offset 0 (so typed-array views are aligned). */
  read(name: string): Uint8Array {
    const t = this.info(name);
    if (!this.bytes) throw new Error(`${this.label}: read after close`);
    return this.bytes.slice(t.offset, t.offset + t.byteLength);
  }

  readInto(name: string, dst: Uint8Array, offset = 0): void {
    const t = this.info(name);
    if (!this.bytes) throw new Error(`${this.label}: read after close`);
    if (offset < 0 || offset + dst.byteLength > t.byteLength) {
      throw new Error(`readInto ${name}: bytes [${offset}, ${offset + dst.byteLength}) are outside the tensor's ${t.byteLength}`);
    }
    dst.set(this.bytes.subarray(t.offset + offset, t.offset + offset + dst.byteLength));
  }

  /** Total bytes of tensor data. */
  get dataBytes(): number {
    let n = 0;
    for (const t of this.tensors.values()) n += t.byteLength;
    return n;
  }

  close(): void {
    this.bytes = null;
  }
}

/** Files of a model folder the server exposes (GET /api/model/files/NAME). */
export const MODEL_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json', 'generation_config.json'] as const;
export type ModelFileName = (typeof MODEL_FILES)[number];

export interface HttpModelOptions {
  fetch?: FetchLike;
  /** Sent with every request (e.g. Authorization). */
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Download progress of the weights (bytes so far, total or null when unknown). */
  onProgress?: (loaded: number, total: number | null) => void;
}

/** A model folder at `baseUrl` (ending in `/`): `baseUrl + NAME` for each file. */
export class HttpModelFolder {
  private readonly fetch: FetchLike;
  constructor(readonly baseUrl: string, private readonly opts: HttpModelOptions = {}) {
    this.fetch = opts.fetch ?? ((u, i) => globalThis.fetch(u, i));
  }

  private async get(name: ModelFileName): Promise<Response> {
    const url = this.baseUrl + name;
    let r: Response;
    try {
      r = await this.fetch(url, { headers: this.opts.headers, signal: this.opts.signal });
    } catch (e) {
      throw new UserError(`cannot fetch: ${(e as Error).message}`, url);
    }
    if (!r.ok) {
      let why = `${r.status} ${r.statusText}`;
      try {
        const j = (await r.json()) as { error?: { message?: string } };
        if (j.error?.message) why += `: ${j.error.message}`;
      } catch {
        // not JSON
      }
      throw new UserError(`cannot fetch: ${why}`, url);
    }
    return r;
  }

  /** A JSON file, or undefined when the server answers 404 (optional files). */
  async json(name: ModelFileName, optional = false): Promise<Record<string, unknown> | undefined> {
    let r: Response;
    try {
      r = await this.get(name);
    } catch (e) {
      if (optional && /cannot fetch: 404/.test((e as Error).message)) return undefined;
      throw e;
    }
    const text = await r.text();
    try {
      const v = JSON.parse(text) as unknown;
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
      return v as Record<string, unknown>;
    } catch (e) {
      throw new UserError(`invalid JSON: ${(e as Error).message}`, this.baseUrl + name);
    }
  }

  /** Downloads model.safetensors whole. */
  async safetensors(name: ModelFileName = 'model.safetensors'): Promise<BytesSafetensors> {
    const r = await this.get(name);
    const len = Number(r.headers.get('content-length'));
    const total = Number.isFinite(len) && len > 0 ? len : null;
    let bytes: Uint8Array;
    if (r.body && total !== null) {
      // Stream into one buffer so progress can be shown.
      bytes = new Uint8Array(total);
      let at = 0;
      const reader = r.body.getReader();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (at + value.byteLength > total) throw new UserError(`more bytes than the announced ${total}`, this.baseUrl + name);
        bytes.set(value, at);
        at += value.byteLength;
        this.opts.onProgress?.(at, total);
      }
      if (at !== total) throw new UserError(`truncated download: ${at} of ${total} bytes`, this.baseUrl + name);
    } else {
      bytes = new Uint8Array(await r.arrayBuffer());
      this.opts.onProgress?.(bytes.byteLength, bytes.byteLength);
    }
    return new BytesSafetensors(bytes, this.baseUrl + name);
  }

  /** config.json + model.safetensors as a Checkpoint (one-file models only; no shards). */
  async checkpoint(): Promise<Checkpoint> {
    const config = (await this.json('config.json'))!;
    const tensors = await this.safetensors();
    return { dir: this.baseUrl, config, tensors, totalBytes: tensors.dataBytes };
  }
}
