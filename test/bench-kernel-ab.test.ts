/**
 * bench/kernel-ab.ts compares two builds of the fast CPU kernels in one process. Compared with
 * itself, a build prints a row per format and token count with a ratio near 1.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

it('bench/kernel-ab prints one row per format and token count, and a build against itself is near 1', () => {
  const script = fileURLToPath(new URL('../bench/kernel-ab.js', import.meta.url));
  const dist = fileURLToPath(new URL('..', import.meta.url)); // dist/, which holds this test's build
  const r = spawnSync(process.execPath, [script, '--a', dist, '--b', dist, '--formats', 'q8_0,q4_k', '--tokens', '1,8',
    '--rows', '256', '--threads', '1', '--rounds', '3', '--seconds', '0.05'], { encoding: 'utf8', timeout: 120000 });
  assert.equal(r.status, 0, r.stderr);
  const rows = r.stdout.split('\n').filter((l) => /^\| q/.test(l));
  assert.equal(rows.length, 4, r.stdout);
  for (const row of rows) {
    const m = row.match(/\| (q8_0|q4_k) \| (1|8) \| \[256, 2048\] \| ([\d.]+) (GB|GFLOP)\/s \| ([\d.]+) (GB|GFLOP)\/s \| ([\d.]+) \|$/);
    assert.ok(m, row);
    assert.ok(Number(m[3]) > 0 && Number(m[5]) > 0, row);
    assert.ok(Number(m[7]) > 0.2 && Number(m[7]) < 5, `same build, ratio ${m[7]}`);
  }
  const bad = spawnSync(process.execPath, [script, '--a', '/nonexistent', '--b', dist], { encoding: 'utf8', timeout: 60000 });
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /^kernel-ab: /);
});
