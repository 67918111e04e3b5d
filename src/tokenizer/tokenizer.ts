/**
 * Tokenizer for Hugging Face model folders (tokenizer.json + tokenizer_config.json), built on
 * @huggingface/tokenizers, with chat templates rendered by @huggingface/jinja and an incremental
 * (streaming) detokenizer.
 *
 * Special-token rule (what the library does vs what we do):
 *  - @huggingface/tokenizers only adds special tokens through tokenizer.json's post_processor.
 *    DeepSeek checkpoints ship a ByteLevel post_processor (adds nothing), while Python's
 *    LlamaTokenizerFast rebuilds the post_processor from tokenizer_config's add_bos_token /
 *    add_eos_token. So when tokenizer_config sets either flag we own BOS/EOS ourselves (and ask the
 *    library for no special tokens); otherwise the library's post_processor decides.
 *  - BOS never appears twice: if the text itself already starts with the BOS token (a rendered chat
 *    template does), encode() with addSpecialTokens does not add another. The clean rule is still:
 *    encode rendered chat templates with `{ addSpecialTokens: false }`, since they carry their BOS.
 *  - Special tokens written in the text (e.g. `<｜User｜>`) are matched as single ids.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { UserError } from '../errors.js';

export interface EncodeOptions {
  /** Add BOS/EOS as the tokenizer config asks (default true). */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  /** Drop special tokens (BOS, EOS, pad, ... : added tokens marked special) from the text. */
  skipSpecialTokens?: boolean;
}

export interface ChatToolCall {
  id?: string;
  /** Defaults to 'function' (DeepSeek templates print it). */
  type?: string;
  function: {
    name: string;
    /** JSON text, as OpenAI sends it; an object is serialized with JSON.stringify. */
    arguments: string | Record<string, unknown>;
  };
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool' | (string & {});
  /** null for an assistant message that only carries tool_calls. */
  content: string | null;
  tool_calls?: ChatToolCall[];
  tool_call_id?: string;
  name?: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** Append the prompt that starts the assistant's turn (default false). */
  addGenerationPrompt?: boolean;
  /** Tool schemas, passed to the template as `tools`. */
  tools?: unknown[];
  /** Extra template variables (e.g. `thinking`); explicit arguments win over these. */
  extra?: Record<string, unknown>;
}

export interface StreamDecoderOptions extends DecodeOptions {
  /**
   * Token ids that precede the stream (e.g. the prompt). The last few are used as decoding
   * context only and are never emitted (matters for SentencePiece-style decoders that strip
   * a leading space at the start of a decode).
   */
  contextIds?: readonly number[];
}

type Json = Record<string, unknown>;

/**
 * The part of @huggingface/tokenizers' Tokenizer we use. Its .d.ts files import each other without
 * file extensions, which NodeNext resolution cannot follow, so the class comes in as `any`; this
 * interface restores type checking.
 */
interface LibTokenizer {
  encode(text: string, opts: { add_special_tokens: boolean }): { ids: number[] };
  decode(ids: number[], opts?: { skip_special_tokens?: boolean }): string;
  token_to_id(token: string): number | undefined;
  id_to_token(id: number): string | undefined;
}
const LibTokenizerClass = Tokenizer as unknown as new (tokenizerJson: object, config: object) => LibTokenizer;

const TOKENIZER_JSON = 'tokenizer.json';
const TOKENIZER_CONFIG_JSON = 'tokenizer_config.json';
const CHAT_TEMPLATE_JINJA = 'chat_template.jinja';

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** tokenizer_config token fields are either a string or an AddedToken object `{content, ...}`. */
function tokenContent(v: unknown, field: string, where: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  throw new UserError(`${field} must be a string or an object with a string "content"`, where);
}

function parseJson(text: string, where: string): Json {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new UserError(`invalid JSON: ${(e as Error).message}`, where);
  }
  if (!isObject(value)) throw new UserError('expected a JSON object', where);
  return value;
}

function readErrorMessage(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'file not found';
  if (code === 'EISDIR') return 'is a directory, expected a file';
  if (code === 'EACCES') return 'permission denied';
  return `cannot read: ${(e as Error).message}`;
}

export class ShoalTokenizer {
  /** Number of ids the tokenizer knows: highest id (model vocab or added token) + 1. */
  readonly vocabSize: number;
  readonly bosToken: string | undefined;
  readonly eosToken: string | undefined;
  readonly bosTokenId: number | undefined;
  readonly eosTokenId: number | undefined;
  readonly padTokenId: number | undefined;
  /** Ids of added tokens marked special, plus the config's bos/eos/unk/pad/additional special tokens. */
  readonly specialTokenIds: ReadonlySet<number>;
  /** From tokenizer_config; undefined when the config does not say (the post_processor decides). */
  readonly addBosToken: boolean | undefined;
  readonly addEosToken: boolean | undefined;

  private readonly tok: LibTokenizer;
  private readonly config: Json;
  private readonly chatTemplateSource: unknown;
  private readonly templates = new Map<string, Template>();
  private readonly cfgWhere: string;

  /**
   * @param tokenizerJson parsed tokenizer.json
   * @param config parsed tokenizer_config.json
   * @param opts.chatTemplate template used when the config has none (e.g. from chat_template.jinja)
   * @param opts.where folder name used in error messages
   */
  constructor(tokenizerJson: Json, config: Json, opts: { chatTemplate?: string; where?: string } = {}) {
    const tjWhere = opts.where ? join(opts.where, TOKENIZER_JSON) : TOKENIZER_JSON;
    const cfgWhere = opts.where ? join(opts.where, TOKENIZER_CONFIG_JSON) : TOKENIZER_CONFIG_JSON;
    this.cfgWhere = cfgWhere;
    if (!isObject(tokenizerJson.model)) throw new UserError('missing "model" object', tjWhere);
    if (tokenizerJson.added_tokens !== undefined && !Array.isArray(tokenizerJson.added_tokens)) {
      throw new UserError('"added_tokens" must be an array', tjWhere);
    }
    // The library reads these keys unconditionally; absent means null in tokenizer.json.
    const tj: Json = { added_tokens: [], normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, ...tokenizerJson };
    for (const k of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder']) if (tj[k] === undefined) tj[k] = null;
    // The library expects plain-string special tokens in its config; give it a normalized copy.
    const libConfig: Json = { ...config };
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      const c = tokenContent(config[k], k, cfgWhere);
      if (c === undefined) delete libConfig[k];
      else libConfig[k] = c;
    }
    if (Array.isArray(config.additional_special_tokens)) {
      libConfig.additional_special_tokens = config.additional_special_tokens.map((t, i) => {
        const c = tokenContent(t, `additional_special_tokens[${i}]`, cfgWhere);
        if (c === undefined) throw new UserError(`additional_special_tokens[${i}] is empty`, cfgWhere);
        return c;
      });
    }
    try {
      this.tok = new LibTokenizerClass(tj, libConfig);
    } catch (e) {
      if (e instanceof UserError) throw e;
      throw new UserError(`unsupported or malformed tokenizer: ${(e as Error).message}`, tjWhere);
    }
    this.config = config;

    // vocabSize: highest id + 1 over the model vocabulary and the added tokens.
    const model = tokenizerJson.model;
    let maxId = -1;
    if (Array.isArray(model.vocab)) maxId = model.vocab.length - 1; // Unigram: [[piece, score], ...]
    else if (isObject(model.vocab)) {
      for (const v of Object.values(model.vocab)) if (typeof v === 'number' && v > maxId) maxId = v;
    }
    const special = new Set<number>();
    for (const t of (tj.added_tokens as unknown[])) {
      if (!isObject(t) || typeof t.id !== 'number' || typeof t.content !== 'string') {
        throw new UserError('added_tokens entries need a numeric "id" and a string "content"', tjWhere);
      }
      if (t.id > maxId) maxId = t.id;
      if (t.special === true) special.add(t.id);
    }
    this.vocabSize = maxId + 1;

    // bos/eos must exist in the vocabulary; pad/unk that do not are ignored (HF tolerates them too).
    const cfgId = (field: string, required: boolean, strict = true): number | undefined => {
      const content = libConfig[field] as string | undefined;
      if (content === undefined) {
        if (required) throw new UserError(`${field} is required (add_${field} is true)`, cfgWhere);
        return undefined;
      }
      const id = this.tok.token_to_id(content);
      if (id === undefined) {
        if (!strict) return undefined;
        throw new UserError(`${field} ${JSON.stringify(content)} is not in the vocabulary of ${TOKENIZER_JSON}`, cfgWhere);
      }
      return id;
    };
    this.addBosToken = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : undefined;
    this.addEosToken = typeof config.add_eos_token === 'boolean' ? config.add_eos_token : undefined;
    this.bosToken = libConfig.bos_token as string | undefined;
    this.eosToken = libConfig.eos_token as string | undefined;
    this.bosTokenId = cfgId('bos_token', this.addBosToken === true);
    this.eosTokenId = cfgId('eos_token', this.addEosToken === true);
    this.padTokenId = cfgId('pad_token', false, false);
    const unkId = cfgId('unk_token', false, false);
    for (const id of [this.bosTokenId, this.eosTokenId, this.padTokenId, unkId]) if (id !== undefined) special.add(id);
    for (const c of (libConfig.additional_special_tokens as string[] | undefined) ?? []) {
      const id = this.tok.token_to_id(c);
      if (id !== undefined) special.add(id);
    }
    this.specialTokenIds = special;
    this.chatTemplateSource = config.chat_template ?? opts.chatTemplate;
  }

  /** Text → ids. Special tokens written in the text are recognized as single ids. */
  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecialTokens ?? true;
    const weOwnSpecials = this.addBosToken !== undefined || this.addEosToken !== undefined;
    const ids = this.tok.encode(text, { add_special_tokens: addSpecial && !weOwnSpecials }).ids;
    if (!addSpecial) return ids;
    const bos = this.bosTokenId;
    if (weOwnSpecials) {
      if (this.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
      if (this.addEosToken && this.eosTokenId !== undefined) ids.push(this.eosTokenId);
    } else if (bos !== undefined && ids.length >= 2 && ids[0] === bos && ids[1] === bos) {
      ids.shift(); // post_processor added BOS in front of text that already began with it
    }
    return ids;
  }

  /** Ids → text. Unknown ids decode to nothing. */
  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    let list = opts.skipSpecialTokens ? ids.filter((id) => !this.specialTokenIds.has(id)) : ids.slice();
    // The library throws on an empty array; ids it does not know would decode to nothing anyway.
    if (list.length === 0) return '';
    for (const id of list) {
      if (!Number.isInteger(id)) throw new TypeError(`token id must be an integer, got ${id}`);
    }
    list = list.filter((id) => id >= 0 && id < this.vocabSize);
    if (list.length === 0) return '';
    return this.tok.decode(list);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id) ?? undefined;
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token) ?? undefined;
  }

  /** Whether the config (or chat_template.jinja) provides a chat template. */
  get hasChatTemplate(): boolean {
    return this.chatTemplateSource !== undefined && this.chatTemplateSource !== null;
  }

  private template(useTools: boolean): Template {
    const src = this.chatTemplateSource;
    let name = 'default';
    let text: string | undefined;
    if (typeof src === 'string') text = src;
    else if (Array.isArray(src)) {
      // HF named templates: [{name, template}, ...]
      const byName = new Map<string, string>();
      for (const e of src) if (isObject(e) && typeof e.name === 'string' && typeof e.template === 'string') byName.set(e.name, e.template);
      name = useTools && byName.has('tool_use') ? 'tool_use' : 'default';
      text = byName.get(name);
    } else if (isObject(src)) {
      name = useTools && typeof src.tool_use === 'string' ? 'tool_use' : 'default';
      text = typeof src[name] === 'string' ? (src[name] as string) : undefined;
    }
    if (text === undefined) {
      throw new UserError(
        src === undefined || src === null
          ? `no chat_template (and no ${CHAT_TEMPLATE_JINJA}); cannot format chat messages for this model`
          : 'chat_template has no usable "default" template',
        this.cfgWhere,
      );
    }
    let t = this.templates.get(name);
    if (!t) {
      try {
        t = new Template(text);
      } catch (e) {
        throw new UserError(`chat_template does not parse: ${(e as Error).message}`, this.cfgWhere);
      }
      this.templates.set(name, t);
    }
    return t;
  }

  /** Renders the chat template to text. The result already holds BOS: encode it with addSpecialTokens false. */
  applyChatTemplate(messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
    const template = this.template(opts.tools !== undefined && opts.tools.length > 0);
    const msgs = messages.map((m) => {
      const out: Json = { ...m };
      if (out.content === undefined) out.content = null;
      if (Array.isArray(m.tool_calls)) {
        out.tool_calls = m.tool_calls.map((c) => {
          const fn = isObject(c?.function) ? c.function : undefined;
          return {
            ...c,
            type: c?.type ?? 'function',
            function: fn && {
              ...fn,
              arguments: typeof fn.arguments === 'string' || fn.arguments === undefined ? fn.arguments : JSON.stringify(fn.arguments),
            },
          };
        });
      }
      return out;
    });
    const ctx: Json = {
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      pad_token: tokenContent(this.config.pad_token, 'pad_token', this.cfgWhere) ?? '',
      unk_token: tokenContent(this.config.unk_token, 'unk_token', this.cfgWhere) ?? '',
      ...(opts.extra ?? {}),
      messages: msgs,
      tools: opts.tools ?? null,
      add_generation_prompt: opts.addGenerationPrompt ?? false,
    };
    try {
      return template.render(ctx);
    } catch (e) {
      throw new UserError(`chat template rendering failed: ${(e as Error).message}`);
    }
  }

  /** A fresh incremental detokenizer for one generated sequence. */
  streamDecoder(opts: StreamDecoderOptions = {}): StreamDecoder {
    return new StreamDecoder(this, opts);
  }
}

/**
 * Incremental detokenizer (prefix offset + read offset, as HF's DecodeStream and vLLM's
 * detokenizer). Each push decodes only the tokens since the last emitted chunk's start, so the
 * cost per token is constant. Text whose decode ends in U+FFFD (half a UTF-8 character: byte-level
 * BPE splits one emoji or CJK character over several tokens) is held back until it completes.
 */
export class StreamDecoder {
  private ids: number[];
  /** Start of the decode window: first token of the last emitted chunk (context). */
  private prefixOffset: number;
  /** Tokens before this index have been emitted. */
  private readOffset: number;
  private readonly decodeOpts: DecodeOptions;

  constructor(
    private readonly tokenizer: ShoalTokenizer,
    opts: StreamDecoderOptions = {},
  ) {
    this.decodeOpts = { skipSpecialTokens: opts.skipSpecialTokens };
    const ctx = opts.contextIds ? opts.contextIds.slice(-5) : [];
    this.ids = [...ctx];
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  /** Adds one token; returns the text it completes ('' while a character is still partial). */
  push(tokenId: number): string {
    this.ids.push(tokenId);
    const prefixText = this.prefixOffset < this.readOffset
      ? this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.decodeOpts)
      : '';
    const newText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.decodeOpts);
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      const out = newText.slice(prefixText.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      this.compact();
      return out;
    }
    return '';
  }

  /** Returns whatever is still held back (possibly with U+FFFD for a truly incomplete character). */
  flush(): string {
    if (this.readOffset >= this.ids.length) return '';
    const prefixText = this.prefixOffset < this.readOffset
      ? this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset), this.decodeOpts)
      : '';
    const newText = this.tokenizer.decode(this.ids.slice(this.prefixOffset), this.decodeOpts);
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    this.compact();
    return newText.length > prefixText.length ? newText.slice(prefixText.length) : '';
  }

  /** Drops tokens before the window so memory stays bounded (amortized O(1) per token). */
  private compact(): void {
    if (this.prefixOffset >= 64) {
      this.ids = this.ids.slice(this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
  }
}

function buildTokenizer(dir: string, tjText: string, cfgText: string, templateText: string | undefined): ShoalTokenizer {
  const tj = parseJson(tjText, join(dir, TOKENIZER_JSON));
  const cfg = parseJson(cfgText, join(dir, TOKENIZER_CONFIG_JSON));
  return new ShoalTokenizer(tj, cfg, { chatTemplate: templateText, where: dir });
}

/** Loads tokenizer.json + tokenizer_config.json (+ chat_template.jinja if present) from a HF model folder. */
export async function loadTokenizer(dir: string): Promise<ShoalTokenizer> {
  const read = async (name: string): Promise<string> => {
    const p = join(dir, name);
    try {
      return await readFile(p, 'utf8');
    } catch (e) {
      throw new UserError(readErrorMessage(e), p);
    }
  };
  const [tjText, cfgText] = await Promise.all([read(TOKENIZER_JSON), read(TOKENIZER_CONFIG_JSON)]);
  const jinjaPath = join(dir, CHAT_TEMPLATE_JINJA);
  const templateText = existsSync(jinjaPath) ? await read(CHAT_TEMPLATE_JINJA) : undefined;
  return buildTokenizer(dir, tjText, cfgText, templateText);
}

/** Synchronous loadTokenizer. */
export function loadTokenizerSync(dir: string): ShoalTokenizer {
  const read = (name: string): string => {
    const p = join(dir, name);
    try {
      return readFileSync(p, 'utf8');
    } catch (e) {
      throw new UserError(readErrorMessage(e), p);
    }
  };
  const tjText = read(TOKENIZER_JSON);
  const cfgText = read(TOKENIZER_CONFIG_JSON);
  const templateText = existsSync(join(dir, CHAT_TEMPLATE_JINJA)) ? read(CHAT_TEMPLATE_JINJA) : undefined;
  return buildTokenizer(dir, tjText, cfgText, templateText);
}
