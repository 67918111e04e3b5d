#!/usr/bin/env node
// Compiles the AssemblyScript kernels of the fast CPU backend into WebAssembly:
//   src/backends/cpu-simd/kernels.as -> dist/src/backends/cpu-simd/kernels.wasm (+ kernels.wat with --text)
// Runs offline (the compiler is the `assemblyscript` devDependency). The source is named .as so
// tsc skips it; asc wants a .ts entry, so it is handed over under a virtual name.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(root, 'src/backends/cpu-simd/kernels.as');
const outDir = join(root, 'dist/src/backends/cpu-simd');
const text = process.argv.includes('--text');

let asc;
try {
  asc = (await import('assemblyscript/asc')).default;
} catch (e) {
  console.error(`build-wasm: the AssemblyScript compiler is missing (npm install): ${e.message}`);
  process.exit(1);
}

const flags = [
  'kernels.ts', '-o', 'kernels.wasm', ...(text ? ['-t', 'kernels.wat'] : []),
  '-O3', '--noAssert', '--runtime', 'stub',
  // One shared memory, created by the host and imported by every thread's instance.
  '--importMemory', '--noExportMemory', '--sharedMemory', '--initialMemory', '1', '--maximumMemory', '65536',
  '--enable', 'simd,threads',
];
const outputs = {};
const { error, stderr } = await asc.main(flags, {
  readFile: (name) => (name === 'kernels.ts' ? readFileSync(source, 'utf8') : null),
  writeFile: (name, contents) => { outputs[name] = contents; },
  listFiles: () => [],
});
if (error) {
  console.error(stderr.toString());
  console.error(`build-wasm: ${error.message}`);
  process.exit(1);
}
mkdirSync(outDir, { recursive: true });
for (const [name, contents] of Object.entries(outputs)) writeFileSync(join(outDir, name), contents);
console.log(`build-wasm: ${Object.keys(outputs).map((n) => join('dist/src/backends/cpu-simd', n)).join(', ')} (${outputs['kernels.wasm'].length} bytes)`);
