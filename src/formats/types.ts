/** Element types found in safetensors files that shoal understands. */
export type DType = 'F32' | 'F16' | 'BF16' | 'F8_E4M3' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

export const DTYPE_BYTES: Record<DType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Where one tensor lives on disk. Nothing is read until asked. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** Path of the .safetensors file holding it. */
  file: string;
  /** Absolute byte offset of the data within the file. */
  offset: number;
  byteLength: number;
}

/** A lazily read set of named tensors (one file or many shards). */
export interface TensorSource {
  names(): string[];
  has(name: string): boolean;
  /** Throws UserError naming the tensor when missing. */
  info(name: string): TensorInfo;
  /** Reads exactly the tensor's bytes from disk (a fresh, aligned buffer). */
  read(name: string): Uint8Array;
  /**
   * Reads bytes [offset, offset + dst.byteLength) of the tensor's data into `dst`, so a loader
   * can fill memory it already holds (or read a large tensor a piece at a time).
   */
  readInto(name: string, dst: Uint8Array, offset?: number): void;
  close(): void;
}

/** A Hugging Face model folder opened for reading. */
export interface Checkpoint {
  dir: string;
  /** Parsed config.json, unvalidated (the model file validates what it needs). */
  config: Record<string, unknown>;
  tensors: TensorSource;
  /** Total bytes of tensor data over all files. */
  totalBytes: number;
}
