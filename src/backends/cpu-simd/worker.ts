/**
 * A kernel worker of the fast CPU backend (see pool.ts). It instantiates the wasm kernels on
 * every shared memory, then loops: sleep on its mailbox word, claim and run chunks of the job
 * (protocol.ts runJob). Memories added later arrive on its MessagePort and are picked up
 * synchronously (receiveMessageOnPort) when a job names a shard it does not have yet.
 */
import { receiveMessageOnPort, workerData, type MessagePort } from 'node:worker_threads';
import {
  C_ERROR, C_JOB, C_NGROUPS, C_READY, C_STOP, C_CMD1, CMD_STRIDE,
  controlBlock, instantiate, jobTag, runJob, setSpinMicros, waitWhileEqual, type KernelFns,
} from './protocol.js';

interface WorkerInit {
  index: number;
  module: WebAssembly.Module;
  ctrl: SharedArrayBuffer;
  memories: WebAssembly.Memory[];
  port: MessagePort;
  spinMicros: number;
}

const init = workerData as WorkerInit;
setSpinMicros(init.spinMicros);
const { ctrl, cmds } = controlBlock(init.ctrl);
const shards: KernelFns[] = init.memories.map((m) => instantiate(init.module, m));
const scratch: number[][] = [];
const me = init.index;

/** Instantiates the memories posted since, up to the highest shard the job's commands name. */
function adopt(): void {
  const groups = Atomics.load(ctrl, C_NGROUPS);
  let end = 0;
  for (let g = 0; g < groups; g++) end = Math.max(end, Atomics.load(ctrl, C_CMD1 + g));
  let need = 0;
  for (let k = 0; k < end; k++) need = Math.max(need, cmds[k * CMD_STRIDE + 1]);
  while (shards.length <= need) {
    const msg = receiveMessageOnPort(init.port);
    if (!msg) return; // a stale view of a newer job: its claims will fail anyway
    const { shard, memory } = msg.message as { shard: number; memory: WebAssembly.Memory };
    shards[shard] = instantiate(init.module, memory);
  }
}

function report(e: unknown): void {
  init.port.postMessage({ error: String((e as Error)?.stack ?? e) });
  Atomics.store(ctrl, C_ERROR, me);
}

let seen = Atomics.load(ctrl, C_JOB + me);
Atomics.store(ctrl, C_READY + me, 1);
for (;;) {
  seen = waitWhileEqual(ctrl, C_JOB + me, seen);
  if (Atomics.load(ctrl, C_STOP)) break;
  try {
    adopt();
    runJob(ctrl, cmds, shards, jobTag(seen), scratch, report);
  } catch {
    // reported (and its chunk counted) inside runJob; this worker lives on
  }
}
init.port.close();
