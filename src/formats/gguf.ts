/**
 * Reader and writer for GGUF, llama.cpp's model file (versions 2 and 3, little-endian):
 *
 *   u32 magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count
 *   kv_count x (string key, u32 value type, value)
 *   tensor_count x (string name, u32 n_dims, n_dims x u64 ne, u32 ggml type, u64 offset)
 *   padding to general.alignment (default 32) | tensor data (each offset aligned, relative to here)
 *
 * Strings are u64 length + UTF-8 bytes; arrays are u32 element type + u64 count + elements.
 * `ne` lists dimensions innermost first (ggml order): a torch [rows, cols] weight has
 * ne = [cols, rows]; infos also give `shape` in torch order.
 *
 * Like the safetensors reader, opening reads and validates only the header (with positioned
 * reads, so a 400 GB file opens at once): magic, version, counts, every string and array
 * length, value types, dims, known ggml types, tensor sizes and aligned offsets inside the
 * file, no overlaps. A bad file fails at open with a UserError naming the file (and tensor).
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { UserError } from '../errors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types. */
export const enum GgufType {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
}

const SCALAR_BYTES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
const TYPE_NAMES = ['u8', 'i8', 'u16', 'i16', 'u32', 'i32', 'f32', 'bool', 'string', 'array', 'u64', 'i64', 'f64'];

/** ggml tensor types: name, values per block, bytes per block. Ids 4, 5 and 31-33, 36-38 were removed from ggml. */
export const GGML_TYPES: Record<number, { name: string; block: number; bytes: number }> = {
  0: { name: 'F32', block: 1, bytes: 4 }, 1: { name: 'F16', block: 1, bytes: 2 },
  2: { name: 'Q4_0', block: 32, bytes: 18 }, 3: { name: 'Q4_1', block: 32, bytes: 20 },
  6: { name: 'Q5_0', block: 32, bytes: 22 }, 7: { name: 'Q5_1', block: 32, bytes: 24 },
  8: { name: 'Q8_0', block: 32, bytes: 34 }, 9: { name: 'Q8_1', block: 32, bytes: 36 },
  10: { name: 'Q2_K', block: 256, bytes: 84 }, 11: { name: 'Q3_K', block: 256, bytes: 110 },
  12: { name: 'Q4_K', block: 256, bytes: 144 }, 13: { name: 'Q5_K', block: 256, bytes: 176 },
  14: { name: 'Q6_K', block: 256, bytes: 210 }, 15: { name: 'Q8_K', block: 256, bytes: 292 },
  16: { name: 'IQ2_XXS', block: 256, bytes: 66 }, 17: { name: 'IQ2_XS', block: 256, bytes: 74 },
  18: { name: 'IQ3_XXS', block: 256, bytes: 98 }, 19: { name: 'IQ1_S', block: 256, bytes: 50 },
  20: { name: 'IQ4_NL', block: 32, bytes: 18 }, 21: { name: 'IQ3_S', block: 256, bytes: 110 },
  22: { name: 'IQ2_S', block: 256, bytes: 82 }, 23: { name: 'IQ4_XS', block: 256, bytes: 136 },
  24: { name: 'I8', block: 1, bytes: 1 }, 25: { name: 'I16', block: 1, bytes: 2 },
  26: { name: 'I32', block: 1, bytes: 4 }, 27: { name: 'I64', block: 1, bytes: 8 },
  28: { name: 'F64', block: 1, bytes: 8 }, 29: { name: 'IQ1_M', block: 256, bytes: 56 },
  30: { name: 'BF16', block: 1, bytes: 2 }, 34: { name: 'TQ1_0', block: 256, bytes: 54 },
  35: { name: 'TQ2_0', block: 256, bytes: 66 }, 39: { name: 'MXFP4', block: 32, bytes: 17 },
};

export const GGML = { F32: 0, F16: 1, Q4_0: 2, Q8_0: 8, Q4_K: 12, Q6_K: 14, BF16: 30 } as const;

/** A metadata value with its GGUF type (arrays keep their element type). */
export type GgufValue =
  | { type: GgufType.STRING; value: string }
  | { type: GgufType.BOOL; value: boolean }
  | { type: Exclude<GgufType, GgufType.STRING | GgufType.BOOL | GgufType.ARRAY>; value: number }
  | { type: GgufType.ARRAY; itemType: GgufType; value: (string | number | boolean)[] };

export interface GgufTensorInfo {
  name: string;
  /** ggml type id (see GGML_TYPES). */
  type: number;
  typeName: string;
  /** Dimensions innermost first, as stored. */
  ne: number[];
  /** Dimensions outermost first (torch order): the reverse of ne. */
  shape: number[];
  /** Absolute byte offset in the file. */
  offset: number;
  byteLength: number;
}

/** Most header bytes we accept (tokenizer vocabularies of a few hundred thousand tokens take ~10 MB). */
export const MAX_GGUF_HEADER_BYTES = 1 << 30;
const MAX_READ_CHUNK = 1 << 30;

/** Bytes of a tensor with these dims and type; null when ne[0] is not a whole number of blocks. */
export function ggmlTensorBytes(type: number, ne: readonly number[]): number | null {
  const t = GGML_TYPES[type];
  if (!t || ne[0] % t.block !== 0) return null;
  let rows = 1;
  for (let i = 1; i < ne.length; i++) rows *= ne[i];
  return (ne[0] / t.block) * t.bytes * rows;
}

/** One GGUF file opened for lazy reading. */
export class GgufFile {
  private fd: number | null;

  /** @internal use openGguf() */
  constructor(
    readonly path: string,
    fd: number,
    readonly version: number,
    readonly metadata: Map<string, GgufValue>,
    readonly tensors: Map<string, GgufTensorInfo>,
    readonly alignment: number,
    readonly dataStart: number,
    readonly fileSize: number,
  ) {
    this.fd = fd;
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): GgufTensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new UserError(`no tensor named "${name}"`, this.path);
    return t;
  }

  /** A metadata value, type-checked; `undefined` when absent and not required. */
  get(key: string): GgufValue | undefined {
    return this.metadata.get(key);
  }

  string(key: string, required: true): string;
  string(key: string, required?: false): string | undefined;
  string(key: string, required = false): string | undefined {
    const v = this.expect(key, required);
    if (v === undefined) return undefined;
    if (v.type !== GgufType.STRING) throw new UserError(`metadata "${key}" must be a string, got ${TYPE_NAMES[v.type]}`, this.path);
    return v.value;
  }

  number(key: string, required: true): number;
  number(key: string, required?: false): number | undefined;
  number(key: string, required = false): number | undefined {
    const v = this.expect(key, required);
    if (v === undefined) return undefined;
    if (v.type === GgufType.STRING || v.type === GgufType.ARRAY || v.type === GgufType.BOOL) {
      throw new UserError(`metadata "${key}" must be a number, got ${TYPE_NAMES[v.type]}`, this.path);
    }
    return v.value;
  }

  bool(key: string): boolean | undefined {
    const v = this.expect(key, false);
    if (v === undefined) return undefined;
    if (v.type !== GgufType.BOOL) throw new UserError(`metadata "${key}" must be a bool, got ${TYPE_NAMES[v.type]}`, this.path);
    return v.value;
  }

  array(key: string, required = false): (string | number | boolean)[] | undefined {
    const v = this.expect(key, required);
    if (v === undefined) return undefined;
    if (v.type !== GgufType.ARRAY) throw new UserError(`metadata "${key}" must be an array, got ${TYPE_NAMES[v.type]}`, this.path);
    return v.value;
  }

  private expect(key: string, required: boolean): GgufValue | undefined {
    const v = this.metadata.get(key);
    if (v === undefined && required) throw new UserError(`missing metadata "${key}"`, this.path);
    return v;
  }

  /** Reads a tensor's bytes into a fresh buffer owning its ArrayBuffer from offset 0 (so typed views are aligned). */
  read(name: string): Uint8Array {
    const t = this.info(name);
    const buf = new Uint8Array(Buffer.allocUnsafeSlow(t.byteLength).buffer, 0, t.byteLength);
    this.readAt(t.offset, buf, name);
    return buf;
  }

  /** Reads bytes [offset, offset + dst.length) of the file (absolute offset). */
  readAt(offset: number, dst: Uint8Array, what = 'tensor data'): void {
    if (this.fd === null) throw new Error(`${this.path}: read after close`);
    let done = 0;
    while (done < dst.byteLength) {
      const n = readSync(this.fd, dst, done, Math.min(dst.byteLength - done, MAX_READ_CHUNK), offset + done);
      if (n === 0) throw new UserError(`unexpected end of file reading "${what}" (was the file truncated?)`, this.path);
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

/** Sequential reads of the header through a growing window (the header's size is known only once parsed). */
class HeaderReader {
  pos = 0;
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  private readonly decoder = new TextDecoder('utf-8', { fatal: true });

  constructor(private readonly fd: number, readonly fileSize: number, private readonly path: string) {}

  private need(n: number, what: string): number {
    if (this.pos + n > this.fileSize) {
      throw new UserError(`truncated file: ${what} at byte ${this.pos} runs past the end of the ${this.fileSize}-byte file`, this.path);
    }
    if (this.pos + n > MAX_GGUF_HEADER_BYTES) throw new UserError(`header larger than ${MAX_GGUF_HEADER_BYTES} bytes (${what})`, this.path);
    const end = this.bufStart + this.buf.length;
    if (this.pos < this.bufStart || this.pos + n > end) {
      const len = Math.min(this.fileSize - this.pos, Math.max(n, 1 << 20));
      this.buf = Buffer.alloc(len);
      let done = 0;
      while (done < len) {
        const r = readSync(this.fd, this.buf, done, len - done, this.pos + done);
        if (r === 0) throw new UserError(`unexpected end of file reading ${what}`, this.path);
        done += r;
      }
      this.bufStart = this.pos;
    }
    const off = this.pos - this.bufStart;
    this.pos += n;
    return off;
  }

  /** Reads n bytes through `get` once need() has made them available. */
  private at<T>(n: number, what: string, get: (b: Buffer, o: number) => T): T {
    const o = this.need(n, what);
    return get(this.buf, o);
  }

  u8(what: string): number { const o = this.need(1, what); return this.buf[o]; }
  u32(what: string): number { const o = this.need(4, what); return this.buf.readUInt32LE(o); }
  i32(what: string): number { const o = this.need(4, what); return this.buf.readInt32LE(o); }

  /** A u64 that must be a safe integer no larger than `max`. */
  u64(what: string, max = Number.MAX_SAFE_INTEGER): number {
    const o = this.need(8, what); // (before reading this.buf: need() may replace it)
    const v = this.buf.readBigUInt64LE(o);
    if (v > BigInt(max)) throw new UserError(`${what} is ${v}, more than the ${max} the ${this.fileSize}-byte file can hold (truncated or corrupt?)`, this.path);
    return Number(v);
  }

  string(what: string): string {
    const len = this.u64(`${what} length`, this.fileSize - this.pos);
    if (len === 0) return '';
    const off = this.need(len, what);
    try {
      return this.decoder.decode(this.buf.subarray(off, off + len));
    } catch {
      throw new UserError(`${what} is not valid UTF-8`, this.path);
    }
  }

  scalar(type: number, what: string): number | boolean {
    switch (type) {
      case GgufType.U8: return this.u8(what);
      case GgufType.I8: return (this.u8(what) << 24) >> 24;
      case GgufType.U16: return this.at(2, what, (b, o) => b.readUInt16LE(o));
      case GgufType.I16: return this.at(2, what, (b, o) => b.readInt16LE(o));
      case GgufType.U32: return this.u32(what);
      case GgufType.I32: return this.i32(what);
      case GgufType.F32: return this.at(4, what, (b, o) => b.readFloatLE(o));
      case GgufType.F64: return this.at(8, what, (b, o) => b.readDoubleLE(o));
      case GgufType.U64: return Number(this.at(8, what, (b, o) => b.readBigUInt64LE(o)));
      case GgufType.I64: return Number(this.at(8, what, (b, o) => b.readBigInt64LE(o)));
      case GgufType.BOOL: {
        const b = this.u8(what);
        if (b > 1) throw new UserError(`${what}: bool value ${b} is neither 0 nor 1`, this.path);
        return b === 1;
      }
    }
    throw new UserError(`${what}: unknown value type ${type}`, this.path);
  }
}

function parseValue(h: HeaderReader, type: number, what: string, path: string): GgufValue {
  if (type === GgufType.STRING) return { type, value: h.string(what) };
  if (type === GgufType.ARRAY) {
    const itemType = h.u32(`${what} array type`);
    if (itemType === GgufType.ARRAY) throw new UserError(`${what}: nested arrays are not supported`, path);
    if (itemType !== GgufType.STRING && SCALAR_BYTES[itemType] === undefined) throw new UserError(`${what}: unknown array element type ${itemType}`, path);
    // Every element takes at least one byte (a string at least its 8-byte length): bound the count by the file.
    const minBytes = itemType === GgufType.STRING ? 8 : SCALAR_BYTES[itemType];
    const count = h.u64(`${what} array length`, Math.floor((h.fileSize - h.pos) / minBytes));
    const value: (string | number | boolean)[] = new Array(count);
    for (let i = 0; i < count; i++) value[i] = itemType === GgufType.STRING ? h.string(`${what}[${i}]`) : h.scalar(itemType, `${what}[${i}]`);
    return { type, itemType, value };
  }
  if (SCALAR_BYTES[type] === undefined) throw new UserError(`${what}: unknown value type ${type}`, path);
  const v = h.scalar(type, what);
  return (type === GgufType.BOOL ? { type, value: v as boolean } : { type, value: v as number }) as GgufValue;
}

/** Opens a .gguf file, validating its whole header. Throws UserError naming the file (and tensor). */
export function openGguf(path: string): GgufFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? 'file not found' : code === 'EISDIR' ? 'is a directory, not a .gguf file' : `cannot open (${code ?? (e as Error).message})`, path);
  }
  try {
    return parseGguf(path, fd);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function parseGguf(path: string, fd: number): GgufFile {
  const st = fstatSync(fd);
  if (st.isDirectory()) throw new UserError('is a directory, not a .gguf file', path);
  if (!st.isFile()) throw new UserError('not a regular file', path);
  const fileSize = st.size;
  if (fileSize < 24) throw new UserError(`not a GGUF file: ${fileSize} bytes, shorter than the 24-byte header`, path);
  const h = new HeaderReader(fd, fileSize, path);
  const magic = h.u32('magic');
  if (magic !== GGUF_MAGIC) {
    const got = Buffer.alloc(4);
    got.writeUInt32LE(magic);
    throw new UserError(`not a GGUF file: magic ${JSON.stringify(got.toString('latin1'))}, expected "GGUF"`, path);
  }
  const version = h.u32('version');
  if (version === 0x03000000 || version === 0x02000000) throw new UserError('big-endian GGUF files are not supported', path);
  if (version !== 2 && version !== 3) throw new UserError(`unsupported GGUF version ${version} (supported: 2, 3)`, path);
  // A tensor info takes at least 8 + 4 + 8 + 4 + 8 bytes, a key-value pair at least 8 + 4 + 1.
  const tensorCount = h.u64('tensor count', Math.floor(fileSize / 32));
  const kvCount = h.u64('metadata count', Math.floor(fileSize / 13));

  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = h.string(`metadata key ${i}`);
    if (metadata.has(key)) throw new UserError(`metadata key "${key}" appears twice`, path);
    const type = h.u32(`type of metadata "${key}"`);
    metadata.set(key, parseValue(h, type, `metadata "${key}"`, path));
  }

  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get('general.alignment');
  if (al !== undefined) {
    if (al.type !== GgufType.U32 || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      throw new UserError(`general.alignment must be a power of two (u32), got ${JSON.stringify(al.value)}`, path);
    }
    alignment = al.value;
  }

  const raw: { name: string; type: number; ne: number[]; rel: number }[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < tensorCount; i++) {
    const name = h.string(`tensor name ${i}`);
    const where = `tensor "${name}"`;
    if (seen.has(name)) throw new UserError(`${where} appears twice`, path);
    seen.add(name);
    const nDims = h.u32(`${where} dimension count`);
    if (nDims < 1 || nDims > 4) throw new UserError(`${where}: ${nDims} dimensions (ggml tensors have 1 to 4)`, path);
    const ne: number[] = [];
    for (let d = 0; d < nDims; d++) {
      const n = h.u64(`${where} dimension ${d}`, Number.MAX_SAFE_INTEGER);
      if (n < 1) throw new UserError(`${where}: dimension ${d} is 0`, path);
      ne.push(n);
    }
    const type = h.u32(`${where} type`);
    if (!GGML_TYPES[type]) throw new UserError(`${where}: unknown ggml type ${type}`, path);
    const rel = h.u64(`${where} offset`);
    raw.push({ name, type, ne, rel });
  }
  const dataStart = Math.ceil(h.pos / alignment) * alignment;
  if (tensorCount > 0 && dataStart > fileSize) throw new UserError(`truncated file: the tensor data would start at byte ${dataStart}, past the end of the ${fileSize}-byte file`, path);

  const tensors = new Map<string, GgufTensorInfo>();
  for (const t of raw) {
    const where = `tensor "${t.name}"`;
    const ty = GGML_TYPES[t.type];
    const bytes = ggmlTensorBytes(t.type, t.ne);
    if (bytes === null) throw new UserError(`${where}: ${ty.name} needs rows of whole ${ty.block}-value blocks, but ne[0] is ${t.ne[0]}`, path);
    if (!Number.isSafeInteger(bytes)) throw new UserError(`${where}: dims [${t.ne}] are too large`, path);
    if (t.rel % alignment !== 0) throw new UserError(`${where}: data offset ${t.rel} is not a multiple of the alignment ${alignment}`, path);
    const offset = dataStart + t.rel;
    if (offset + bytes > fileSize) {
      throw new UserError(`${where}: data [${t.rel}, ${t.rel + bytes}) runs past the end of the file (${fileSize - dataStart} data bytes); the file may be truncated`, path);
    }
    tensors.set(t.name, { name: t.name, type: t.type, typeName: ty.name, ne: t.ne, shape: [...t.ne].reverse(), offset, byteLength: bytes });
  }
  const sorted = [...tensors.values()].sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1], b = sorted[i];
    if (b.offset < a.offset + a.byteLength) throw new UserError(`tensors "${a.name}" and "${b.name}" overlap`, path);
  }
  return new GgufFile(path, fd, version, metadata, tensors, alignment, dataStart, fileSize);
}

// ---------------------------------------------------------------------------------------
// Writer

/** A tensor to write: its bytes come from `write`, called once, in file order. */
export interface GgufTensorToWrite {
  name: string;
  type: number;
  /** Dimensions innermost first. */
  ne: number[];
  /** Produces exactly ggmlTensorBytes(type, ne) bytes through `emit` (in any number of pieces). */
  write(emit: (bytes: Uint8Array) => void): void;
}

/** Metadata entries in file order. */
export type GgufMetadata = [key: string, value: GgufValue][];

/** Helpers to build typed metadata values. */
export const kv = {
  str: (value: string): GgufValue => ({ type: GgufType.STRING, value }),
  u32: (value: number): GgufValue => ({ type: GgufType.U32, value }),
  i32: (value: number): GgufValue => ({ type: GgufType.I32, value }),
  f32: (value: number): GgufValue => ({ type: GgufType.F32, value }),
  bool: (value: boolean): GgufValue => ({ type: GgufType.BOOL, value }),
  strs: (value: string[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.STRING, value }),
  i32s: (value: number[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.I32, value }),
  f32s: (value: number[]): GgufValue => ({ type: GgufType.ARRAY, itemType: GgufType.F32, value }),
};

class Sink {
  private buf = Buffer.alloc(1 << 20);
  private len = 0;
  written = 0;
  constructor(private readonly fd: number) {}
  put(bytes: Uint8Array): void {
    if (bytes.byteLength > this.buf.length - this.len) this.flush();
    if (bytes.byteLength >= this.buf.length) {
      writeAll(this.fd, bytes);
    } else {
      this.buf.set(bytes, this.len);
      this.len += bytes.byteLength;
    }
    this.written += bytes.byteLength;
  }
  flush(): void {
    if (this.len) writeAll(this.fd, this.buf.subarray(0, this.len));
    this.len = 0;
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.byteLength) done += writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, MAX_READ_CHUNK));
}

function encodeString(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const out = Buffer.alloc(8 + b.length);
  out.writeBigUInt64LE(BigInt(b.length));
  b.copy(out, 8);
  return out;
}

function encodeScalar(type: number, v: number | boolean): Buffer {
  const b = Buffer.alloc(SCALAR_BYTES[type]);
  switch (type) {
    case GgufType.U8: b.writeUInt8(v as number); break;
    case GgufType.I8: b.writeInt8(v as number); break;
    case GgufType.U16: b.writeUInt16LE(v as number); break;
    case GgufType.I16: b.writeInt16LE(v as number); break;
    case GgufType.U32: b.writeUInt32LE(v as number); break;
    case GgufType.I32: b.writeInt32LE(v as number); break;
    case GgufType.F32: b.writeFloatLE(v as number); break;
    case GgufType.F64: b.writeDoubleLE(v as number); break;
    case GgufType.U64: b.writeBigUInt64LE(BigInt(v as number)); break;
    case GgufType.I64: b.writeBigInt64LE(BigInt(v as number)); break;
    case GgufType.BOOL: b.writeUInt8(v ? 1 : 0); break;
    default: throw new Error(`unknown GGUF value type ${type}`);
  }
  return b;
}

function encodeValue(v: GgufValue): Buffer[] {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(v.type);
  if (v.type === GgufType.STRING) return [head, encodeString(v.value)];
  if (v.type === GgufType.ARRAY) {
    const ah = Buffer.alloc(12);
    ah.writeUInt32LE(v.itemType, 0);
    ah.writeBigUInt64LE(BigInt(v.value.length), 4);
    const items = v.value.map((x) => (v.itemType === GgufType.STRING ? encodeString(x as string) : encodeScalar(v.itemType, x as number)));
    return [head, ah, Buffer.concat(items)]; // one piece: a spread of 100k+ items overflows the stack
  }
  return [head, encodeScalar(v.type, v.value)];
}

/**
 * Writes a GGUF v3 file: metadata in the given order, tensors in the given order, each aligned
 * to `general.alignment` (32 unless the metadata sets it). Tensor data is streamed: each
 * tensor's `write` is called in turn, so a converter holds one tensor at a time.
 */
export function writeGguf(path: string, metadata: GgufMetadata, tensors: readonly GgufTensorToWrite[], onTensor?: (done: number, total: number) => void): void {
  const al = metadata.find(([k]) => k === 'general.alignment')?.[1];
  const alignment = al && al.type === GgufType.U32 ? al.value : GGUF_DEFAULT_ALIGNMENT;
  const keys = new Set<string>();
  for (const [k] of metadata) {
    if (keys.has(k)) throw new Error(`duplicate metadata key "${k}"`);
    keys.add(k);
  }
  const names = new Set<string>();
  const parts: Buffer[] = [];
  const fixed = Buffer.alloc(24);
  fixed.writeUInt32LE(GGUF_MAGIC, 0);
  fixed.writeUInt32LE(3, 4);
  fixed.writeBigUInt64LE(BigInt(tensors.length), 8);
  fixed.writeBigUInt64LE(BigInt(metadata.length), 16);
  parts.push(fixed);
  for (const [k, v] of metadata) parts.push(encodeString(k), ...encodeValue(v));
  let rel = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    if (names.has(t.name)) throw new Error(`duplicate tensor name "${t.name}"`);
    names.add(t.name);
    const bytes = ggmlTensorBytes(t.type, t.ne);
    if (bytes === null) throw new Error(`tensor "${t.name}": type ${t.type} cannot hold dims [${t.ne}]`);
    sizes.push(bytes);
    const info = Buffer.alloc(4 + 8 * t.ne.length + 4 + 8);
    info.writeUInt32LE(t.ne.length, 0);
    t.ne.forEach((n, i) => info.writeBigUInt64LE(BigInt(n), 4 + 8 * i));
    info.writeUInt32LE(t.type, 4 + 8 * t.ne.length);
    info.writeBigUInt64LE(BigInt(rel), 8 + 8 * t.ne.length);
    parts.push(encodeString(t.name), info);
    rel += Math.ceil(bytes / alignment) * alignment;
  }
  const fd = openSync(path, 'w');
  try {
    const sink = new Sink(fd);
    for (const p of parts) sink.put(p);
    const pad = (n: number) => { if (n % alignment) sink.put(new Uint8Array(alignment - (n % alignment))); };
    pad(sink.written);
    for (let i = 0; i < tensors.length; i++) {
      const start = sink.written;
      tensors[i].write((b) => sink.put(b));
      const got = sink.written - start;
      if (got !== sizes[i]) throw new Error(`tensor "${tensors[i].name}": wrote ${got} bytes, expected ${sizes[i]}`);
      pad(got);
      onTensor?.(i + 1, tensors.length);
    }
    sink.flush();
  } finally {
    closeSync(fd);
  }
}
