/**
 * The tokenizer a GGUF file carries (tokenizer.ggml.*), as the tokenizer.json and
 * tokenizer_config.json objects @huggingface/tokenizers and ShoalTokenizer take, and the
 * reverse: a Hugging Face folder's tokenizer as GGUF metadata, the way llama.cpp's
 * convert_hf_to_gguf.py writes it (gpt2 byte-level BPE: tokens in byte-level form, merges
 * "a b", token types, bos/eos ids, add_bos/add_eos, chat template).
 *
 * llama.cpp names the pre-tokenizer (tokenizer.ggml.pre) instead of storing its regexes;
 * we know the DeepSeek V3 one (also used by R1, V3.1, Kimi-free DeepSeek exports), Llama 3's
 * (DeepSeek-R1-Distill-Llama), Qwen2's (DeepSeek-R1-Distill-Qwen) and GPT-2's default.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import { kv, type GgufFile, type GgufMetadata } from '../formats/gguf.js';
import { ShoalTokenizer } from './tokenizer.js';

/** llama.cpp token types. */
export const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

type Json = Record<string, unknown>;

/** DeepSeek V3's pre-tokenizer, exactly as its tokenizer.json has it (llama.cpp's "deepseek-v3"). */
const DEEPSEEK_V3_PRE: Json = {
  type: 'Sequence',
  pretokenizers: [
    { type: 'Split', pattern: { Regex: '\\p{N}{1,3}' }, behavior: 'Isolated', invert: false },
    { type: 'Split', pattern: { Regex: '[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+' }, behavior: 'Isolated', invert: false },
    {
      type: 'Split',
      pattern: { Regex: "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+" },
      behavior: 'Isolated',
      invert: false,
    },
    { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
  ],
};

/** GPT-2's byte-level pre-tokenizer with its built-in regex (llama.cpp's "default" / "gpt2"). */
const GPT2_PRE: Json = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };

/**
 * A Split on `regex` (as the models' tokenizer.json write it: `(?i:...)` for the contractions,
 * which llama.cpp spells out as [sS] etc.), then byte-level mapping.
 */
function splitThenByteLevel(regex: string, trimOffsets: boolean): Json {
  return {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: trimOffsets, use_regex: false },
    ],
  };
}

/** Llama 3's pre-tokenizer (llama.cpp's "llama-bpe"): digits in runs of up to three. */
const LLAMA3_PRE = splitThenByteLevel(
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", true);

/** Qwen2's pre-tokenizer (llama.cpp's "qwen2", and "deepseek-r1-qwen" for the R1 distills): single digits. */
const QWEN2_PRE = splitThenByteLevel(
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", false);

/**
 * llama.cpp's names for Llama 3's pre-tokenizer. With them llama.cpp (like Llama 3's
 * tokenizer.json, "ignore_merges") takes a pre-token that is itself in the vocabulary as one
 * token before trying merges, and adds BOS unless the file says otherwise.
 */
const LLAMA3_NAMES = new Set(['llama-bpe', 'llama3', 'llama-v3']);

/** By llama.cpp name; for a tokenizer.json, the first name whose pre-tokenizer it has is written. */
const PRE_TOKENIZERS: Record<string, Json> = {
  'deepseek-v3': DEEPSEEK_V3_PRE,
  default: GPT2_PRE,
  gpt2: GPT2_PRE,
  'llama-bpe': LLAMA3_PRE,
  llama3: LLAMA3_PRE,
  'llama-v3': LLAMA3_PRE,
  qwen2: QWEN2_PRE,
  'deepseek-r1-qwen': QWEN2_PRE,
};

function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : 1))) : x));
}

/** Builds the tokenizer stored in a GGUF file. */
export function tokenizerFromGguf(f: GgufFile): ShoalTokenizer {
  const where = f.path;
  const model = f.string('tokenizer.ggml.model', true);
  if (model !== 'gpt2') throw new UserError(`tokenizer model "${model}" is not supported (supported: gpt2, the byte-level BPE DeepSeek uses)`, where);
  const pre = f.string('tokenizer.ggml.pre') ?? 'default';
  const preTokenizer = PRE_TOKENIZERS[pre];
  if (!preTokenizer) throw new UserError(`pre-tokenizer "${pre}" is not supported (supported: ${Object.keys(PRE_TOKENIZERS).join(', ')})`, where);
  const tokens = f.array('tokenizer.ggml.tokens', true)!;
  const types = f.array('tokenizer.ggml.token_type') ?? [];
  const merges = f.array('tokenizer.ggml.merges', true)!;
  if (types.length && types.length !== tokens.length) throw new UserError(`tokenizer.ggml.token_type has ${types.length} entries for ${tokens.length} tokens`, where);
  const vocab: Record<string, number> = {};
  const added: Json[] = [];
  for (let id = 0; id < tokens.length; id++) {
    const t = tokens[id];
    if (typeof t !== 'string') throw new UserError(`tokenizer.ggml.tokens[${id}] is not a string`, where);
    const type = types.length ? Number(types[id]) : TOKEN_TYPE.NORMAL;
    if (type === TOKEN_TYPE.UNUSED) continue; // padding ids ([PAD123]) decode to nothing
    if (type === TOKEN_TYPE.CONTROL || type === TOKEN_TYPE.USER_DEFINED) {
      added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: false, special: type === TOKEN_TYPE.CONTROL });
    } else vocab[t] = id;
  }
  for (let i = 0; i < merges.length; i++) if (typeof merges[i] !== 'string') throw new UserError(`tokenizer.ggml.merges[${i}] is not a string`, where);
  const tokenizerJson: Json = {
    version: '1.0',
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: preTokenizer,
    post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
      ignore_merges: LLAMA3_NAMES.has(pre), vocab, merges,
    },
  };
  const tokenAt = (key: string): string | undefined => {
    const id = f.number(key);
    if (id === undefined) return undefined;
    if (!Number.isInteger(id) || id < 0 || id >= tokens.length) throw new UserError(`${key} ${id} is outside the vocabulary (${tokens.length} tokens)`, where);
    return tokens[id] as string;
  };
  const config: Json = {};
  const bos = tokenAt('tokenizer.ggml.bos_token_id');
  const eos = tokenAt('tokenizer.ggml.eos_token_id');
  const pad = tokenAt('tokenizer.ggml.padding_token_id');
  if (bos !== undefined) config.bos_token = bos;
  if (eos !== undefined) config.eos_token = eos;
  if (pad !== undefined) config.pad_token = pad;
  const addBos = f.bool('tokenizer.ggml.add_bos_token') ?? (LLAMA3_NAMES.has(pre) ? true : undefined);
  const addEos = f.bool('tokenizer.ggml.add_eos_token');
  if (addBos !== undefined) config.add_bos_token = addBos;
  if (addEos !== undefined) config.add_eos_token = addEos;
  const template = f.string('tokenizer.chat_template');
  if (template !== undefined) config.chat_template = template;
  return new ShoalTokenizer(tokenizerJson, config, { where });
}

function readJson(path: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(code === 'ENOENT' ? 'file not found' : `cannot read: ${(e as Error).message}`, path);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw new UserError('expected a JSON object', path);
  return v as Json;
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return undefined;
}

/** Added tokens llama.cpp's converter marks CONTROL even when tokenizer.json says not special (<｜User｜>, <|EOT|>). */
function looksSpecial(t: string): boolean {
  return (t.startsWith('<|') && t.endsWith('|>')) || (t.startsWith('<｜') && t.endsWith('｜>'));
}

/**
 * A Hugging Face folder's tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja)
 * as GGUF metadata for a vocabulary of `vocabSize` ids (ids the tokenizer lacks become
 * "[PAD<id>]" UNUSED tokens, as llama.cpp's converter writes them).
 */
export function ggufTokenizerMetadata(dir: string, vocabSize: number, ids: { bos: number | null; eos: number | null }): GgufMetadata {
  const tjPath = join(dir, 'tokenizer.json');
  const tj = readJson(tjPath);
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = existsSync(cfgPath) ? readJson(cfgPath) : {};
  const model = tj.model as Json | undefined;
  if (!model || model.type !== 'BPE') throw new UserError(`only byte-level BPE tokenizers can be written to GGUF (this one is ${String(model?.type)})`, tjPath);
  let pre: string | undefined;
  for (const [name, json] of Object.entries(PRE_TOKENIZERS)) if (canonical(json) === canonical(tj.pre_tokenizer)) { pre = name; break; }
  if (!pre) throw new UserError('its pre-tokenizer is not one llama.cpp names (supported: DeepSeek V3\'s, Llama 3\'s, Qwen2\'s, GPT-2\'s)', tjPath);
  const tokens: string[] = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const types: number[] = new Array(vocabSize).fill(TOKEN_TYPE.UNUSED);
  for (const [t, id] of Object.entries(model.vocab as Record<string, number>)) {
    if (id >= vocabSize) throw new UserError(`token ${JSON.stringify(t)} has id ${id}, outside the model's vocabulary (${vocabSize})`, tjPath);
    tokens[id] = t;
    types[id] = TOKEN_TYPE.NORMAL;
  }
  for (const a of (tj.added_tokens as Json[] | undefined) ?? []) {
    const id = a.id as number, content = a.content as string;
    if (id >= vocabSize) throw new UserError(`added token ${JSON.stringify(content)} has id ${id}, outside the model's vocabulary (${vocabSize})`, tjPath);
    tokens[id] = content;
    types[id] = a.special === true || looksSpecial(content) ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED;
  }
  const merges = ((model.merges as unknown[]) ?? []).map((m) => (Array.isArray(m) ? m.join(' ') : String(m)));
  const idOf = (field: string): number | undefined => {
    const c = tokenContent(cfg[field]);
    if (c === undefined) return undefined;
    const i = tokens.indexOf(c);
    return i >= 0 ? i : undefined;
  };
  const out: GgufMetadata = [
    ['tokenizer.ggml.model', kv.str('gpt2')],
    ['tokenizer.ggml.pre', kv.str(pre)],
    ['tokenizer.ggml.tokens', kv.strs(tokens)],
    ['tokenizer.ggml.token_type', kv.i32s(types)],
    ['tokenizer.ggml.merges', kv.strs(merges)],
  ];
  const bos = ids.bos ?? idOf('bos_token');
  const eos = ids.eos ?? idOf('eos_token');
  const pad = idOf('pad_token');
  if (bos !== undefined) out.push(['tokenizer.ggml.bos_token_id', kv.u32(bos)]);
  if (eos !== undefined) out.push(['tokenizer.ggml.eos_token_id', kv.u32(eos)]);
  if (pad !== undefined) out.push(['tokenizer.ggml.padding_token_id', kv.u32(pad)]);
  if (typeof cfg.add_bos_token === 'boolean') out.push(['tokenizer.ggml.add_bos_token', kv.bool(cfg.add_bos_token)]);
  if (typeof cfg.add_eos_token === 'boolean') out.push(['tokenizer.ggml.add_eos_token', kv.bool(cfg.add_eos_token)]);
  const jinja = join(dir, 'chat_template.jinja');
  const template = typeof cfg.chat_template === 'string' ? cfg.chat_template : existsSync(jinja) ? readFileSync(jinja, 'utf8') : undefined;
  if (template !== undefined) out.push(['tokenizer.chat_template', kv.str(template)]);
  return out;
}
