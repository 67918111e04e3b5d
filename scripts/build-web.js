#!/usr/bin/env node
// Copies the web playground's static files (web/*.html, *.css, ...) into dist/web, next to the
// scripts that `tsc -p web/tsconfig.json` compiles there. Run from the repository root (npm run build).
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
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
