/**
 * Shared test helpers: where the repository and the golden fixtures are.
 * Works both from the compiled dist/test/*.js and from test/*.ts run directly.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRepoRoot(start: string): string {
  let dir = start;
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'tsconfig.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the repository root above ${start}`);
    dir = up;
  }
}

/** Absolute path of the repository root (the folder holding package.json). */
export const repoRoot: string = findRepoRoot(dirname(fileURLToPath(import.meta.url)));

/**
 * Folder of golden fixtures: $SHOAL_FIXTURES when set, else shared/fixtures inside the
 * repository when present (as on machines that carry shared/ along), else ../shared/fixtures
 * next to the repository.
 */
export function fixturesDir(): string {
  const env = process.env['SHOAL_FIXTURES'];
  if (env) return resolve(env);
  const inside = resolve(repoRoot, 'shared/fixtures');
  if (existsSync(inside)) return inside;
  return resolve(repoRoot, '../shared/fixtures');
}

/** Absolute paths of the fixture folders (those holding golden.json), sorted by name. */
export function listFixtures(): string[] {
  const root = fixturesDir();
  return readdirSync(root, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(root, d.name, 'golden.json')))
    .map((d) => join(root, d.name))
    .sort();
}

/** Path of one named fixture folder, e.g. fixture('deepseek-v3-tiny'). */
export function fixture(name: string): string {
  return join(fixturesDir(), name);
}

/** Asserts a golden report compared prefill and decode, within 1e-3, with every argmax agreeing. */
export function assertGoldenPass(report: { comparisons: { name: string; rows: number; maxAbsDiff: number; argmaxAgree: number }[]; pass: boolean }): void {
  const names = report.comparisons.map((c) => c.name);
  assert.ok(names.includes('prefill') && names.includes('decode'), `compared ${names}`);
  for (const c of report.comparisons) {
    assert.ok(c.maxAbsDiff <= 1e-3, `${c.name}: max |diff| ${c.maxAbsDiff}`);
    assert.equal(c.argmaxAgree, c.rows, `${c.name}: argmax agreement ${c.argmaxAgree}/${c.rows}`);
  }
  assert.ok(report.pass);
}

/** Runs the shoal CLI (bin/shoal.js) in a child process. */
export function shoal(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/shoal.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Asserts a clean user error: exit 1, one stderr line starting `shoal:`, mentioning `what`. */
export function assertUserError(r: ReturnType<typeof shoal>, what: RegExp): void {
  const lines = r.stderr.trim().split('\n').filter((l) => !/^loading weights/.test(l));
  assert.equal(r.code, 1, `exit code ${r.code}, stderr: ${r.stderr}`);
  assert.equal(lines.length, 1, `expected one error line, got:\n${r.stderr}`);
  assert.match(lines[0], /^shoal: /);
  assert.match(lines[0], what);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
}
