#!/usr/bin/env node
// Copies the web playground's static files (web/*.html, *.css, ...) into dist/web, next to the
// scripts that `tsc -p web/tsconfig.json` compiles there, and bundles the in-tab engine
// (dist/src/backends/webgpu/in-browser.js, compiled by `tsc -p tsconfig.json` before this runs)
// with esbuild into dist/web/inbrowser.js. Run from the repository root (npm run build).
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'web');
const out = join(root, 'dist', 'web');
const STATIC = new Set(['.html', '.css', '.svg', '.png', '.ico', '.txt']);

mkdirSync(out, { recursive: true });
let n = 0;
for (const name of readdirSync(src)) {
  if (!STATIC.has(extname(name))) continue;
  copyFileSync(join(src, name), join(out, name));
  n++;
}
console.log(`build-web: copied ${n} static files to dist/web`);

// ---- the in-tab engine bundle ----------------------------------------------------------------
//
// The shared modules import a few Node built-ins for code paths the browser never takes
// (local file readers, Dawn loading). In the bundle each becomes a stub: calling any of its
// functions throws, except the handful the browser path does use (path.join in messages,
// crypto.getRandomValues for an unseeded Rng, which maps to Web Crypto).
const SHIMS = {
  'node:crypto': `module.exports = {
  getRandomValues: (a) => globalThis.crypto.getRandomValues(a),
  randomBytes: (n) => globalThis.crypto.getRandomValues(new Uint8Array(n)),
  createHash: () => { throw new Error('node:crypto createHash is not available in the browser'); },
};`,
  'node:path': `const join = (...p) => p.filter(Boolean).join('/').replace(/\\/+/g, '/');
module.exports = { join, basename: (p) => p.split('/').pop(), dirname: (p) => p.split('/').slice(0, -1).join('/') || '.', extname: (p) => { const m = /\\.[^./]*$/.exec(p); return m ? m[0] : ''; }, resolve: join, sep: '/' };`,
};
const stub = (name) => `module.exports = new Proxy({}, { get: (_, k) => k === '__esModule' ? false : () => { throw new Error(${JSON.stringify(name)} + '.' + String(k) + ' is not available in the browser'); } });`;

const entry = join(root, 'dist', 'src', 'backends', 'webgpu', 'in-browser.js');
if (!existsSync(entry)) {
  console.error(`build-web: ${entry} is missing: run \`tsc -p tsconfig.json\` first`);
  process.exit(1);
}
let esbuild;
try {
  esbuild = await import('esbuild');
} catch (e) {
  console.error(`build-web: cannot load esbuild (a devDependency; run \`npm install\`): ${e.message.split('\n')[0]}`);
  process.exit(1);
}
await esbuild.build({
  entryPoints: [entry],
  outfile: join(out, 'inbrowser.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
  plugins: [{
    name: 'node-builtins',
    setup(b) {
      b.onResolve({ filter: /^(node:)?(fs|fs\/promises|path|crypto|url|os|module|worker_threads)$/ }, (a) => ({ path: a.path.startsWith('node:') ? a.path : `node:${a.path}`, namespace: 'shim' }));
      b.onLoad({ filter: /.*/, namespace: 'shim' }, (a) => ({ contents: SHIMS[a.path] ?? stub(a.path), loader: 'js' }));
    },
  }],
});
const size = statSync(join(out, 'inbrowser.js')).size;
console.log(`build-web: bundled the in-tab engine into dist/web/inbrowser.js (${(size / 1024).toFixed(0)} KiB)`);
