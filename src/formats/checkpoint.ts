/**
 * Opens a Hugging Face model folder: config.json plus weights in one of the layouts HF
 * writes, tried in this order:
 *   1. model.safetensors.index.json (sharded; its weight_map says which shard holds what),
 *   2. model.safetensors (single file),
 *   3. any *.safetensors in the folder (sorted by name), for hand-made or renamed exports.
 * Only headers are read here; tensor data stays on disk until a TensorSource read.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, isAbsolute, join, resolve } from 'node:path';
import { UserError } from '../errors.js';
import { openSafetensors, type SafetensorsFile } from './safetensors.js';
import type { Checkpoint, TensorInfo, TensorSource } from './types.js';

export const CONFIG_FILE = 'config.json';
export const INDEX_FILE = 'model.safetensors.index.json';
export const SINGLE_FILE = 'model.safetensors';

/** A Checkpoint plus where its weights came from. */
export interface OpenedCheckpoint extends Checkpoint {
  /** The opened .safetensors files, in the order they were opened. */
  files: SafetensorsFile[];
  /** Path of model.safetensors.index.json when the weights are sharded, else null. */
  indexFile: string | null;
}

/**
 * Several safetensors files presented as one TensorSource. Tensor names must be unique
 * across files: a name in two shards would make "which one is the weight" ambiguous.
 */
export class MultiFileSource implements TensorSource {
  private readonly owner = new Map<string, SafetensorsFile>();

  constructor(
    readonly files: readonly SafetensorsFile[],
    /** Named in "no tensor" errors (the model folder); defaults to the single file's path. */
    private readonly label = files.length === 1 ? files[0]!.path : `${files.length} safetensors files`,
  ) {
    for (const f of files) {
      for (const name of f.names()) {
        const prev = this.owner.get(name);
        if (prev) {
          throw new UserError(`tensor "${name}" appears in both ${basename(prev.path)} and ${basename(f.path)}`, f.path);
        }
        this.owner.set(name, f);
      }
    }
  }

  names(): string[] {
    return [...this.owner.keys()];
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  /** The file holding a tensor; UserError when no file has it. */
  fileOf(name: string): SafetensorsFile {
    const f = this.owner.get(name);
    if (!f) throw new UserError(`no tensor named "${name}"`, this.label);
    return f;
  }

  info(name: string): TensorInfo {
    return this.fileOf(name).info(name);
  }

  read(name: string): Uint8Array {
    return this.fileOf(name).read(name);
  }

  readInto(name: string, dst: Uint8Array, offset = 0): void {
    this.fileOf(name).readInto(name, dst, offset);
  }

  close(): void {
    for (const f of this.files) f.close();
  }
}

function readJsonObject(path: string, what: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? `${what} not found` : `cannot read ${what} (${code ?? (e as Error).message})`, path);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${what} is not valid JSON: ${(e as Error).message}`, path);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new UserError(`${what} must contain a JSON object, got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`, path);
  }
  return value as Record<string, unknown>;
}

function exists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Opens every file, closing the ones already opened if a later one fails. */
function openAll(paths: readonly string[], onError?: (path: string, e: unknown) => never): SafetensorsFile[] {
  const files: SafetensorsFile[] = [];
  try {
    for (const p of paths) {
      try {
        files.push(openSafetensors(p));
      } catch (e) {
        if (onError) onError(p, e);
        throw e;
      }
    }
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
  return files;
}

/** Validates the index's weight_map and returns it as name -> shard file name. */
function parseWeightMap(index: Record<string, unknown>, indexPath: string): Map<string, string> {
  const wm = index['weight_map'];
  if (wm === undefined) throw new UserError('missing "weight_map"', indexPath);
  if (wm === null || typeof wm !== 'object' || Array.isArray(wm)) {
    throw new UserError('"weight_map" must be an object mapping tensor names to shard file names', indexPath);
  }
  const map = new Map<string, string>();
  for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard === '') {
      throw new UserError(`"weight_map" entry for tensor "${name}" must be a shard file name, got ${JSON.stringify(shard)}`, indexPath);
    }
    // Shards live next to the index; refusing other paths keeps a downloaded index from
    // pointing us at arbitrary files on the machine.
    if (isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
      throw new UserError(`"weight_map" entry for tensor "${name}" names "${shard}", which is outside the model folder`, indexPath);
    }
    map.set(name, shard);
  }
  if (map.size === 0) throw new UserError('"weight_map" lists no tensors', indexPath);
  return map;
}

function openSharded(dir: string, indexPath: string): SafetensorsFile[] {
  const weightMap = parseWeightMap(readJsonObject(indexPath, INDEX_FILE), indexPath);
  // Each shard once, in the order of first mention (HF writes shards in order).
  const shardNames = [...new Set(weightMap.values())];
  const files = openAll(
    shardNames.map((s) => join(dir, s)),
    (p, e) => {
      if (!exists(p)) throw new UserError(`shard "${basename(p)}" listed in ${INDEX_FILE} not found`, p);
      throw e;
    },
  );
  try {
    const byName = new Map(shardNames.map((s, i) => [s, files[i]!]));
    for (const [name, shard] of weightMap) {
      if (!byName.get(shard)!.has(name)) {
        throw new UserError(`${INDEX_FILE} maps tensor "${name}" to ${shard}, but that shard has no such tensor`, join(dir, shard));
      }
    }
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
  return files;
}

/**
 * Opens a model folder. Throws UserError naming the folder or file on: a missing folder,
 * a missing or unparsable config.json, a bad index, missing shards, tensors the index
 * promises but a shard lacks, duplicate tensors across shards, any invalid safetensors.
 */
export function openCheckpoint(dirArg: string): OpenedCheckpoint {
  const dir = resolve(dirArg);
  let st;
  try {
    st = statSync(dir);
  } catch {
    throw new UserError('model folder not found', dir);
  }
  if (!st.isDirectory()) throw new UserError('not a directory (expected a model folder with config.json and *.safetensors)', dir);

  const config = readJsonObject(join(dir, CONFIG_FILE), CONFIG_FILE);

  let files: SafetensorsFile[];
  let indexFile: string | null = null;
  const indexPath = join(dir, INDEX_FILE);
  const singlePath = join(dir, SINGLE_FILE);
  if (exists(indexPath)) {
    indexFile = indexPath;
    files = openSharded(dir, indexPath);
  } else if (exists(singlePath)) {
    files = openAll([singlePath]);
  } else {
    const found = readdirSync(dir)
      .filter((n) => n.endsWith('.safetensors'))
      .sort()
      .map((n) => join(dir, n))
      .filter((p) => statSync(p).isFile());
    if (found.length === 0) throw new UserError(`no .safetensors weights found in ${dir}`);
    files = openAll(found);
  }

  let tensors: MultiFileSource;
  try {
    tensors = new MultiFileSource(files, dir);
  } catch (e) {
    for (const f of files) f.close();
    throw e;
  }
  let totalBytes = 0;
  for (const f of files) for (const t of f.infos()) totalBytes += t.byteLength;
  return { dir, config, tensors, totalBytes, files, indexFile };
}
