/**
 * bench/relaxed-simd.ts runs (it compiles its kernels with the AssemblyScript compiler at run
 * time) and prints its table; the SIMD128 integer kernel it measures must be exact, while the
 * relaxed ones are reported right or wrong (first call and optimized), whichever this Node's V8 does.
 */
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

it('bench/relaxed-simd prints both rows and checks every result', () => {
  const script = fileURLToPath(new URL('../bench/relaxed-simd.js', import.meta.url));
  const r = spawnSync(process.execPath, [script, '--seconds', '0.05'], { encoding: 'utf8', timeout: 120000 });
  assert.equal(r.status, 0, r.stderr);
  const rows = r.stdout.split('\n').filter((l) => l.startsWith('| int8') || l.startsWith('| float32'));
  assert.equal(rows.length, 3, r.stdout);
  for (const row of rows.slice(0, 2)) {
    assert.match(row, /exact -?\d+; SIMD128 right; relaxed, first call: (right|WRONG -?\d+, [\d.-]+x), optimized: (right|WRONG -?\d+, [\d.-]+x) \|$/);
  }
  assert.match(rows[2], /\| [\d.]+ \| [\d.]+ \| [\d.]+x \| sums differ by /);
});
