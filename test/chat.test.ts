/**
 * `shoal chat` driven through a child process: lines on stdin, the reply streamed on stdout,
 * notes and speed figures on stderr. Runs the bundled demo model on the CPU.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './helpers.js';

const CLI = join(repoRoot, 'bin/shoal.js');
const DEMO = join(repoRoot, 'models/demo');
const ARGS = ['chat', '--model', DEMO, '--device', 'cpu', '--temperature', '0', '--max-context', '512'];

interface Session {
  write(line: string): void;
  end(): void;
  /** Resolves once stderr has printed `n` reply figures ("generated tokens: ..."). */
  replies(n: number): Promise<void>;
  exit: Promise<number | null>;
  stdout: () => string;
  stderr: () => string;
  /** Sizes of the stdout chunks that arrived while each reply was generated. */
  chunksPerReply: number[][];
}

function chat(extra: string[] = []): Session {
  const child = spawn(process.execPath, [CLI, ...ARGS, ...extra], { cwd: repoRoot, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const chunksPerReply: number[][] = [[]];
  const waiters: { n: number; resolve: () => void }[] = [];
  const replyCount = () => (err.match(/generated tokens: /g) ?? []).length;
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    chunksPerReply.at(-1)!.push(d.length);
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    const before = replyCount();
    err += d;
    for (let i = before; i < replyCount(); i++) chunksPerReply.push([]);
    for (const w of waiters.splice(0)) {
      if (replyCount() >= w.n) w.resolve();
      else waiters.push(w);
    }
  });
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return {
    write: (line) => child.stdin.write(`${line}\n`),
    end: () => child.stdin.end(),
    replies: (n) => new Promise<void>((resolve, reject) => {
      if (replyCount() >= n) return resolve();
      waiters.push({ n, resolve });
      void exit.then(() => reject(new Error(`shoal chat exited after ${replyCount()} of ${n} replies:\n${err}`)));
    }),
    exit,
    stdout: () => out,
    stderr: () => err,
    chunksPerReply,
  };
}

/** Prompt token counts from the reply figures on stderr. */
function promptTokens(stderr: string): number[] {
  return [...stderr.matchAll(/prompt tokens: (\d+), generated tokens: (\d+)/g)].map((m) => Number(m[1]));
}

describe('shoal chat', () => {
  it('chats with history, streams replies, obeys /system, /reset and /quit', { timeout: 60_000 }, async () => {
    const s = chat(['--max-tokens', '30', '--ignore-eos']);
    s.write('And God said');
    await s.replies(1);
    const first = s.stdout();
    assert.ok(first.trim().length >= 20, `a reply: ${JSON.stringify(first)}`);
    assert.ok(s.chunksPerReply[0]!.length >= 2, `streamed in pieces, got chunks ${JSON.stringify(s.chunksPerReply[0])}`);

    s.write('/system You are a prophet.');
    s.write('Tell me more');
    await s.replies(2);
    s.write('/reset');
    s.write('And God said');
    await s.replies(3);
    s.write('/quit');
    s.write('this line comes after /quit and is never answered');
    s.end();
    assert.equal(await s.exit, 0, s.stderr());

    const err = s.stderr();
    assert.match(err, /\/reset.*\/system TEXT.*\/quit/, 'prints the commands');
    assert.match(err, /\(system prompt set\)/);
    assert.match(err, /\(conversation forgotten\)/);
    const prompts = promptTokens(err);
    assert.equal(prompts.length, 3, 'three replies, nothing after /quit');
    // Turn 2 carries the system prompt and turn 1; after /reset, turn 3 is the system prompt and one message.
    assert.ok(prompts[1]! > prompts[0]! + 30, `history is kept: ${prompts}`);
    assert.ok(prompts[2]! < prompts[1]!, `reset forgets it: ${prompts}`);
    assert.ok(prompts[2]! > prompts[0]!, `the system prompt survives /reset: ${prompts}`);
    const replies = s.stdout().split('\n').filter((l) => l.trim());
    assert.ok(replies.length >= 3, `three replies on stdout: ${JSON.stringify(replies)}`);
  });

  it('ends cleanly on end of input (Ctrl-D) and ignores empty lines', { timeout: 60_000 }, async () => {
    const s = chat(['--max-tokens', '8', '--system', 'Be brief.']);
    s.write('');
    s.write('Hello');
    s.write('/nonsense');
    s.end();
    assert.equal(await s.exit, 0, s.stderr());
    assert.equal(promptTokens(s.stderr()).length, 1);
    assert.match(s.stderr(), /unknown command \/nonsense/);
    assert.ok(s.stdout().trim().length > 0);
  });

  it('bad flags are one-line errors', async () => {
    const s = chat(['--temperature', '-1']);
    s.end();
    assert.equal(await s.exit, 1);
    assert.match(s.stderr(), /^shoal: .*temperature/m);
  });
});
