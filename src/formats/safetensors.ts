/**
 * Reader and writer for the safetensors format:
 *
 *   [u64 little-endian N][N bytes of JSON header][data section]
 *
 * The header maps tensor names to {dtype, shape, data_offsets: [begin, end]} with offsets
 * relative to the start of the data section, plus an optional `__metadata__` string map.
 *
 * Opening a file reads only the 8-byte length and the header, so a multi-hundred-gigabyte
 * checkpoint opens instantly; tensor bytes are read on demand with positioned reads. Since
 * the file is untrusted input, the header is validated completely before anything is used:
 * a bad file fails at open time with a UserError naming the file (and tensor), never later
 * with an out-of-range read or a silently wrong tensor.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { UserError } from '../errors.js';
import { DTYPE_BYTES, type DType, type TensorInfo, type TensorSource } from './types.js';

/**
 * Largest header accepted. The reference implementation (huggingface/safetensors) uses the
 * same 100 MB limit; a real header for a 1M-tensor checkpoint is far below it, and the limit
 * stops a corrupt length field from making us allocate gigabytes.
 */
export const MAX_HEADER_BYTES = 100_000_000;

/** Largest single readSync; Node refuses lengths above 2 GiB - 1 on some platforms. */
const MAX_READ_CHUNK = 1 << 30;

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, s);
}

/** Number of elements of a shape (1 for a scalar). */
export function numElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** One safetensors file opened for lazy reading. */
export class SafetensorsFile implements TensorSource {
  private fd: number | null;
  private readonly tensors: Map<string, TensorInfo>;

  /** @internal use openSafetensors() */
  constructor(
    readonly path: string,
    fd: number,
    tensors: Map<string, TensorInfo>,
    /** The header's `__metadata__` map ({} when absent). */
    readonly metadata: Record<string, string>,
    /** Size of the file when it was opened. */
    readonly fileSize: number,
    /** Absolute offset of the data section (8 + header length). */
    readonly dataStart: number,
  ) {
    this.fd = fd;
    this.tensors = tensors;
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`no tensor named "${name}"`, this.path);
    return t;
  }

  /** All tensor infos, in header order. */
  infos(): TensorInfo[] {
    return [...this.tensors.values()];
  }

  /**
   * Reads the tensor into a fresh buffer that owns its ArrayBuffer from offset 0, so any
   * typed-array view over it (Float32Array, Uint16Array, ...) is aligned.
   */
  read(name: string): Uint8Array {
    const t = this.info(name);
    // allocUnsafeSlow: never from Node's shared pool (which would give an arbitrary
    // byteOffset), and not zero-filled since every byte is overwritten below.
    const buf = Buffer.allocUnsafeSlow(t.byteLength);
    this.readInto(name, new Uint8Array(buf.buffer, 0, t.byteLength));
    return new Uint8Array(buf.buffer, 0, t.byteLength);
  }

  /** Reads bytes [offset, offset + dst.byteLength) of the tensor's data into `dst`. */
  readInto(name: string, dst: Uint8Array, offset = 0): void {
    const t = this.info(name);
    if (offset < 0 || offset + dst.byteLength > t.byteLength) {
      throw new Error(`readInto ${name}: bytes [${offset}, ${offset + dst.byteLength}) are outside the tensor's ${t.byteLength}`);
    }
    if (this.fd === null) throw new Error(`${this.path}: read after close`);
    let done = 0;
    while (done < dst.byteLength) {
      const len = Math.min(dst.byteLength - done, MAX_READ_CHUNK);
      const n = readSync(this.fd, dst, done, len, t.offset + offset + done);
      // The header was checked against the size at open time, so a short read means the
      // file was truncated or replaced while we had it open.
      if (n === 0) {
        throw new UserError(`unexpected end of file reading tensor "${name}" (was the file truncated?)`, this.path);
      }
      done += n;
    }
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '...' : v);
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function isNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Opens one .safetensors file: reads and validates its header, keeps the file descriptor
 * open for later reads. Throws UserError naming the file (and tensor) on any problem.
 */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, not a file' : `cannot open (${code ?? (e as Error).message})`;
    throw new UserError(why, path);
  }
  try {
    return parseOpened(path, fd);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function parseOpened(path: string, fd: number): SafetensorsFile {
  const st = fstatSync(fd);
  if (st.isDirectory()) throw new UserError('is a directory, not a .safetensors file', path);
  if (!st.isFile()) throw new UserError('not a regular file', path);
  const fileSize = st.size;
  if (fileSize < 8) {
    throw new UserError(`not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`, path);
  }

  const lenBuf = Buffer.alloc(8);
  readFully(fd, lenBuf, 0, path);
  const headerLen = safetensorsHeaderLength(lenBuf, fileSize, path);
  const headerBuf = Buffer.alloc(headerLen);
  readFully(fd, headerBuf, 8, path);
  const { tensors, metadata, dataStart } = parseSafetensorsHeader(headerBuf, fileSize, path);
  return new SafetensorsFile(path, fd, tensors, metadata, fileSize, dataStart);
}

/**
 * The header length from a file's first 8 bytes, checked against the size limit and the
 * file's size. Pure (no I/O): shared with readers that get their bytes elsewhere (HTTP).
 */
export function safetensorsHeaderLength(first8: Uint8Array, fileSize: number, path: string): number {
  if (fileSize < 8 || first8.byteLength < 8) {
    throw new UserError(`not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`, path);
  }
  const headerLen64 = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (headerLen64 > BigInt(MAX_HEADER_BYTES)) {
    throw new UserError(`not a safetensors file: header length ${headerLen64} exceeds the ${MAX_HEADER_BYTES}-byte limit`, path);
  }
  const headerLen = Number(headerLen64);
  if (8 + headerLen > fileSize) {
    throw new UserError(
      `truncated or not a safetensors file: header length ${headerLen} runs past the end of the ${fileSize}-byte file`,
      path,
    );
  }
  return headerLen;
}

/** A validated safetensors header: tensor locations (absolute offsets in the file) and metadata. */
export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** Absolute offset of the data section (8 + header length). */
  dataStart: number;
}

/**
 * Parses and validates the JSON header (the `headerBuf.byteLength` bytes after the length
 * field) of a file of `fileSize` bytes. Pure (no I/O). Throws UserError naming `path` (and
 * the tensor) on any problem.
 */
export function parseSafetensorsHeader(headerBuf: Uint8Array, fileSize: number, path: string): SafetensorsHeader {
  const headerLen = headerBuf.byteLength;
  let header: unknown;
  try {
    // fatal: invalid UTF-8 is a corrupt header, not something to paper over with U+FFFD.
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(headerBuf));
  } catch (e) {
    throw new UserError(`header is not valid JSON: ${(e as Error).message}`, path);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new UserError(`header must be a JSON object, got ${describe(header)}`, path);
  }

  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};

  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(entry, path);
      continue;
    }
    const where = `tensor "${name}"`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new UserError(`${where}: entry must be an object, got ${describe(entry)}`, path);
    }
    const { dtype, shape, data_offsets: offs } = entry as Record<string, unknown>;
    if (dtype === undefined) throw new UserError(`${where}: missing "dtype"`, path);
    if (!isDType(dtype)) {
      throw new UserError(
        `${where}: unknown dtype ${describe(dtype)} (known: ${Object.keys(DTYPE_BYTES).join(', ')})`,
        path,
      );
    }
    if (!Array.isArray(shape) || !shape.every(isNonNegInt)) {
      throw new UserError(`${where}: "shape" must be an array of non-negative integers, got ${JSON.stringify(shape) ?? 'nothing'}`, path);
    }
    if (!Array.isArray(offs) || offs.length !== 2 || !isNonNegInt(offs[0]) || !isNonNegInt(offs[1])) {
      throw new UserError(`${where}: "data_offsets" must be [begin, end] non-negative integers, got ${JSON.stringify(offs) ?? 'nothing'}`, path);
    }
    const [begin, end] = offs as [number, number];
    if (begin > end) throw new UserError(`${where}: data_offsets [${begin}, ${end}] has begin > end`, path);
    if (end > dataSize) {
      throw new UserError(
        `${where}: data_offsets [${begin}, ${end}] run past the end of the data section (${dataSize} bytes); the file may be truncated`,
        path,
      );
    }
    const expected = numElements(shape) * DTYPE_BYTES[dtype];
    if (end - begin !== expected) {
      throw new UserError(
        `${where}: data_offsets span ${end - begin} bytes but shape [${shape.join(', ')}] of ${dtype} needs ${expected}`,
        path,
      );
    }
    tensors.set(name, { name, dtype, shape: [...shape], file: path, offset: dataStart + begin, byteLength: end - begin });
  }

  checkNoOverlap(tensors, dataStart, path);
  return { tensors, metadata, dataStart };
}

function parseMetadata(entry: unknown, path: string): Record<string, string> {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
    throw new UserError(`"__metadata__" must be an object of strings, got ${describe(entry)}`, path);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new UserError(`"__metadata__" value for "${k}" must be a string, got ${describe(v)}`, path);
    out[k] = v;
  }
  return out;
}

/** Two tensors sharing bytes means a corrupt (or malicious) header; reject it. */
function checkNoOverlap(tensors: Map<string, TensorInfo>, dataStart: number, path: string): void {
  // Empty tensors occupy no bytes and so cannot overlap anything.
  const sorted = [...tensors.values()].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.offset < prev.offset + prev.byteLength) {
      const r = (t: TensorInfo) => `[${t.offset - dataStart}, ${t.offset - dataStart + t.byteLength}]`;
      throw new UserError(`tensors "${prev.name}" ${r(prev)} and "${cur.name}" ${r(cur)} have overlapping data_offsets`, path);
    }
  }
}

function readFully(fd: number, dst: Uint8Array, position: number, path: string): void {
  let done = 0;
  while (done < dst.byteLength) {
    const n = readSync(fd, dst, done, Math.min(dst.byteLength - done, MAX_READ_CHUNK), position + done);
    if (n === 0) throw new UserError('unexpected end of file while reading the header', path);
    done += n;
  }
}

// ---------------------------------------------------------------------------------------
// Writer

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  /** Raw little-endian element bytes: a Uint8Array or any typed array / DataView. */
  data: ArrayBufferView;
}

/**
 * Writes a .safetensors file the way huggingface/safetensors does: tensors ordered by
 * element size (largest first) then name, so each tensor is naturally aligned within the
 * data section, and the header padded with spaces so the data section starts on an 8-byte
 * boundary.
 */
export function writeSafetensors(path: string, tensors: readonly TensorToWrite[], metadata?: Record<string, string>): void {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === '__metadata__') throw new Error('"__metadata__" is reserved and cannot be a tensor name');
    if (seen.has(t.name)) throw new Error(`duplicate tensor name "${t.name}"`);
    seen.add(t.name);
    if (!isDType(t.dtype)) throw new Error(`tensor "${t.name}": unknown dtype ${String(t.dtype)}`);
    const need = numElements(t.shape) * DTYPE_BYTES[t.dtype];
    if (t.data.byteLength !== need) {
      throw new Error(`tensor "${t.name}": data has ${t.data.byteLength} bytes, shape [${t.shape.join(', ')}] of ${t.dtype} needs ${need}`);
    }
  }
  const ordered = [...tensors].sort(
    (a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
  );

  const header: Record<string, unknown> = {};
  if (metadata) header['__metadata__'] = metadata;
  let pos = 0;
  for (const t of ordered) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + t.data.byteLength] };
    pos += t.data.byteLength;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const head = Buffer.alloc(8 + padded, 0x20);
  head.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(head, 8);

  const fd = openSync(path, 'w');
  try {
    writeAll(fd, head);
    for (const t of ordered) writeAll(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) {
    done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, MAX_READ_CHUNK));
  }
}

// ---------------------------------------------------------------------------------------
// Decoding to float32 (for small tensors: norms, biases, tests). The compute backends have
// their own bulk converters; these favour clarity with table lookups built once.

let f16Table: Float32Array | null = null;
let e4m3Table: Float32Array | null = null;

/** All 65536 IEEE half-precision values as float32 (built on first use, 256 KiB). */
export function f16Table32(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const man = h & 0x3ff;
    let v: number;
    if (exp === 0) v = man * 2 ** -24; // zero and subnormals
    else if (exp === 31) v = man === 0 ? Infinity : NaN;
    else v = (1 + man / 1024) * 2 ** (exp - 15);
    t[h] = sign * v;
  }
  return (f16Table = t);
}

/**
 * All 256 float8 e4m3fn values as float32 (the "fn" variant used by DeepSeek checkpoints:
 * exponent bias 7, no infinities, only S.1111.111 is NaN, so the largest finite is 448).
 */
export function e4m3Table32(): Float32Array {
  if (e4m3Table) return e4m3Table;
  const t = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const sign = b & 0x80 ? -1 : 1;
    const exp = (b >> 3) & 0xf;
    const man = b & 0x7;
    let v: number;
    if (exp === 0xf && man === 0x7) v = NaN;
    else if (exp === 0) v = man * 2 ** -9; // subnormals: man/8 * 2^(1-7)
    else v = (1 + man / 8) * 2 ** (exp - 7);
    t[b] = sign * v;
  }
  return (e4m3Table = t);
}

/**
 * A typed view of `bytes` as elements of `size` bytes, copying first when the bytes are not
 * aligned for that element size (typed arrays require it). Assumes a little-endian host,
 * as safetensors data is little-endian and every platform Node supports for us is.
 */
function aligned(bytes: Uint8Array, size: number): ArrayBuffer | SharedArrayBuffer {
  if (bytes.byteOffset % size === 0) return bytes.buffer;
  return bytes.slice().buffer;
}

function viewOffset(bytes: Uint8Array, size: number): number {
  return bytes.byteOffset % size === 0 ? bytes.byteOffset : 0;
}

/**
 * Decodes a tensor's raw bytes to a new Float32Array. Supports every DType; integer types
 * are converted by value. `info.name` (when given) is used in error messages.
 */
export function toFloat32(info: { dtype: DType; name?: string; shape?: readonly number[] }, bytes: Uint8Array): Float32Array {
  const size = DTYPE_BYTES[info.dtype];
  const label = info.name ? `tensor "${info.name}"` : 'tensor';
  if (size === undefined) throw new Error(`${label}: unknown dtype ${String(info.dtype)}`);
  if (bytes.byteLength % size !== 0) throw new Error(`${label}: ${bytes.byteLength} bytes is not a whole number of ${info.dtype} elements`);
  const n = bytes.byteLength / size;
  if (info.shape && numElements(info.shape) !== n) {
    throw new Error(`${label}: ${n} elements but shape [${info.shape.join(', ')}]`);
  }
  const buf = aligned(bytes, size);
  const off = viewOffset(bytes, size);
  const out = new Float32Array(n);
  switch (info.dtype) {
    case 'F32':
      out.set(new Float32Array(buf, off, n));
      break;
    case 'F64':
      out.set(new Float64Array(buf, off, n));
      break;
    case 'BF16': {
      // bfloat16 is the top half of a float32: shift the bits into place.
      const src = new Uint16Array(buf, off, n);
      const dst = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) dst[i] = src[i]! << 16;
      break;
    }
    case 'F16': {
      const src = new Uint16Array(buf, off, n);
      const t = f16Table32();
      for (let i = 0; i < n; i++) out[i] = t[src[i]!]!;
      break;
    }
    case 'F8_E4M3': {
      const t = e4m3Table32();
      for (let i = 0; i < n; i++) out[i] = t[bytes[i]!]!;
      break;
    }
    case 'I64': {
      const src = new BigInt64Array(buf, off, n);
      for (let i = 0; i < n; i++) out[i] = Number(src[i]!);
      break;
    }
    case 'I32':
      out.set(new Int32Array(buf, off, n));
      break;
    case 'I16':
      out.set(new Int16Array(buf, off, n));
      break;
    case 'I8':
      out.set(new Int8Array(buf, off, n));
      break;
    case 'U8':
    case 'BOOL':
      out.set(bytes);
      break;
  }
  return out;
}
