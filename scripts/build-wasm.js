#!/usr/bin/env node
// Compiles the AssemblyScript kernels of the fast CPU backend into WebAssembly:
//   src/backends/cpu-simd/kernels.as -> dist/src/backends/cpu-simd/kernels.wasm and kernels-relaxed.wasm
//   (+ .wat with --text)
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

// Two builds of one source: kernels.wasm (SIMD128) and kernels-relaxed.wasm (SIMD128 plus relaxed
// SIMD: ASC_FEATURE_RELAXED_SIMD picks the k-quant kernels on int8 activations in kernels.as;
// the host uses it only where the engine runs it exactly, simd-backend.ts).
mkdirSync(outDir, { recursive: true });
const built = [];
for (const [name, features] of [['kernels', 'simd,threads'], ['kernels-relaxed', 'simd,threads,relaxed-simd']]) {
  const flags = [
    'kernels.ts', '-o', `${name}.wasm`, ...(text ? ['-t', `${name}.wat`] : []),
    '-O3', '--noAssert', '--runtime', 'stub',
    // One shared memory, created by the host and imported by every thread's instance.
    '--importMemory', '--noExportMemory', '--sharedMemory', '--initialMemory', '1', '--maximumMemory', '65536',
    '--enable', features,
  ];
  const outputs = {};
  const { error, stderr } = await asc.main(flags, {
    readFile: (file) => (file === 'kernels.ts' ? readFileSync(source, 'utf8') : null),
    writeFile: (file, contents) => { outputs[file] = contents; },
    listFiles: () => [],
  });
  if (error) {
    console.error(stderr.toString());
    console.error(`build-wasm: ${error.message}`);
    process.exit(1);
  }
  for (const [file, contents] of Object.entries(outputs)) writeFileSync(join(outDir, file), contents);
  built.push(`${join('dist/src/backends/cpu-simd', `${name}.wasm`)} (${outputs[`${name}.wasm`].length} bytes)`);
}
console.log(`build-wasm: ${built.join(', ')}`);
