/**
 * The job protocol of the fast CPU backend's thread pool (src/backends/cpu-simd/protocol.ts),
 * stepped by hand so that interleavings that only happen under load run every time.
 *
 * A worker descheduled in the middle of a job can wake after the main thread has finished that
 * job and is writing the next. It once read the next job's (larger) chunk count while the claim
 * words still carried the old tag, claimed "new" chunks, ran them and counted them done, so a
 * group of the next job could finish one chunk early and the group after it read unfinished
 * rows (seen as wrong golden logits on a 2-core CI machine).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import {
  C_DONE, C_NGROUPS, KERNELS, closeJob, controlBlock, jobTag, openJob, runJob, writeJob, type Group, type KernelFns,
} from '../src/backends/cpu-simd/protocol.js';

/** Fake kernels that record (kernel, first arg, chunk, chunks) of every call. */
function recorder(): { fns: KernelFns[]; calls: number[][] } {
  const calls: number[][] = [];
  const fns = [KERNELS.map((_, k) => (...args: number[]) => { calls.push([k, args[0], args[args.length - 2], args[args.length - 1]]); })];
  return { fns, calls };
}

/**
 * Runs runJob for `tag` on another thread, as a late worker would (the old protocol could leave
 * such a worker waiting forever, so it runs where it can be stopped); its calls, or 'stuck'.
 */
function lateWorker(buf: SharedArrayBuffer, tag: number): Promise<number[][] | 'stuck'> {
  const protocol = new URL('../src/backends/cpu-simd/protocol.js', import.meta.url).href;
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(workerData.protocol).then((p) => {
      const { ctrl, cmds } = p.controlBlock(workerData.buf);
      const calls = [];
      const fns = [p.KERNELS.map((_, k) => (...a) => { calls.push([k, a[0], a[a.length - 2], a[a.length - 1]]); })];
      p.runJob(ctrl, cmds, fns, workerData.tag, []);
      parentPort.postMessage(calls);
    });`;
  const w = new Worker(code, { eval: true, workerData: { buf, tag, protocol } });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { void w.terminate(); resolve('stuck'); }, 5000);
    w.once('message', (calls: number[][]) => { clearTimeout(timer); void w.terminate(); resolve(calls); });
    w.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

const job = (id: number, units: number[]): Group[] => units.map((u, g) => ({ cmds: [{ kernel: g, shard: 0, args: [id] }], units: u }));

describe('cpu-simd job protocol', () => {
  it('a worker still on a finished job claims nothing of the next one, even with more chunks', async () => {
    const { buf, ctrl, cmds } = controlBlock();
    const { fns, calls } = recorder();
    // Job 1: two groups of 2 chunks, all run by the main thread.
    writeJob(ctrl, cmds, job(1, [2, 2]), 2);
    openJob(ctrl, 2, jobTag(1));
    runJob(ctrl, cmds, fns, jobTag(1), []);
    closeJob(ctrl, 2, jobTag(1));
    assert.equal(calls.length, 4);
    // Job 2 is written (8 chunks a group) but not yet open; a late worker of job 1 looks now.
    writeJob(ctrl, cmds, job(2, [8, 8]), 2);
    calls.length = 0;
    assert.deepEqual(await lateWorker(buf, jobTag(1)), [], 'the late worker ran chunks');
    assert.equal(Atomics.load(ctrl, C_DONE), 0, 'the late worker counted chunks of job 2');
    // Job 2 opens: each chunk runs exactly once, group after group.
    openJob(ctrl, 2, jobTag(2));
    runJob(ctrl, cmds, fns, jobTag(2), []);
    closeJob(ctrl, 2, jobTag(2));
    const want = [0, 1].flatMap((g) => Array.from({ length: 8 }, (_, c) => [g, 2, c, 8]));
    assert.deepEqual(calls, want);
    assert.equal(Atomics.load(ctrl, C_DONE), 8);
  });

  it('a late worker returns from a closed job instead of waiting on its groups', async () => {
    const { buf, ctrl, cmds } = controlBlock();
    const { fns } = recorder();
    writeJob(ctrl, cmds, job(1, [3]), 2);
    openJob(ctrl, 1, jobTag(1));
    runJob(ctrl, cmds, fns, jobTag(1), []);
    closeJob(ctrl, 1, jobTag(1));
    // The next job resets the done counter of group 0 but has not opened yet.
    writeJob(ctrl, cmds, job(2, [3]), 2);
    assert.deepEqual(await lateWorker(buf, jobTag(1)), []);
  });

  it('a new control block has every claim closed (no job 0 to claim from)', async () => {
    const { buf, ctrl, cmds } = controlBlock();
    writeJob(ctrl, cmds, job(0, [4]), 2);
    Atomics.store(ctrl, C_NGROUPS, 1); // as a job that wrapped around to tag 0 would leave it
    assert.deepEqual(await lateWorker(buf, jobTag(0)), []);
  });
});

describe('cpu-simd worker threads', () => {
  // `node --input-type=module -e ...` (how bench/vs-llama-cpp runs each shoal round) used to hand
  // its options to the workers, which then failed at start: every op ran on one thread, silently.
  it('start under `node --input-type=module -e`', () => {
    const backend = new URL('../src/backends/cpu-simd/simd-backend.js', import.meta.url).href;
    const script = `import { SimdCpuBackend } from ${JSON.stringify(backend)};
const b = await SimdCpuBackend.create({ threads: 2 });
process.stdout.write(String(b.activeThreads));
b.dispose();`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '2', r.stderr);
    assert.doesNotMatch(r.stderr, /worker \d+ failed/);
  });
});
