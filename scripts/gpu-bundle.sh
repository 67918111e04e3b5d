#!/usr/bin/env bash
# Packs what bench/webgpu-decode.ts needs on a bare x86-64 Linux GPU machine (no Node, no npm, no
# network) into one archive, .gpu/shoal-gpu.tar.xz, small enough to carry with the device tool
# (64 MiB a call, the repository's tracked files included). See docs/gpu-benchmark.md.
#
#   npm run build && scripts/gpu-bundle.sh [--with-cpu-build] [--no-node] [--no-vulkan-loader]
#
# The archive unpacks to shoal-gpu/:
#   bin/node                   this machine's Node binary (the device image has none)
#   shoal/                     package.json, dist/src, dist/bench and the runtime node_modules:
#                              webgpu (linux-x64 Dawn only), node-llama-cpp (JS, without the
#                              llama.cpp source bundle) and its linux-x64-vulkan build
#                              (--with-cpu-build adds its linux-x64 CPU build, for --with-cpu)
#   debs/                      the Vulkan loader (libvulkan1, amd64) for machines without one
#   run.sh                     scripts/gpu-run.sh: sets up Vulkan and runs the benchmark
set -euo pipefail
cd "$(dirname "$0")/.."

with_cpu=0 node_bin=1 loader=1
for a in "$@"; do
  case "$a" in
    --with-cpu-build) with_cpu=1 ;;
    --no-node) node_bin=0 ;;
    --no-vulkan-loader) loader=0 ;;
    *) echo "gpu-bundle: unknown option $a" >&2; exit 2 ;;
  esac
done
[ -f dist/bench/webgpu-decode.js ] || { echo "gpu-bundle: dist/bench/webgpu-decode.js is missing: run npm run build first" >&2; exit 1; }

stage=.gpu/stage/shoal-gpu
rm -rf .gpu/stage .gpu/shoal-gpu.tar.xz
mkdir -p "$stage/shoal/dist" "$stage/bin" "$stage/debs"
cp package.json "$stage/shoal/"
cp -r dist/src dist/bench "$stage/shoal/dist/"
find "$stage/shoal/dist" -name '*.map' -delete
cp scripts/gpu-run.sh "$stage/run.sh"

# The runtime dependency closure: package.json's dependencies and node-llama-cpp, each package's
# own dependencies resolved the way Node does (nearest node_modules up the tree). Of the
# optional platform builds only the ones named below are taken.
extra_builds='@node-llama-cpp/linux-x64-vulkan'
[ "$with_cpu" = 1 ] && extra_builds="$extra_builds @node-llama-cpp/linux-x64"
node --input-type=module - "$stage/shoal" $extra_builds <<'EOF'
import { cpSync, existsSync, readFileSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
const [dest, ...extra] = process.argv.slice(2);
const root = process.cwd();
const seen = new Set();
/** The folder Node would load `name` from when required from `from`. */
function resolvePackage(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const p = join(dir, 'node_modules', name);
    if (existsSync(join(p, 'package.json'))) return p;
    if (dir === root || dir === dirname(dir)) return null;
  }
}
function visit(name, from, optional) {
  const dir = resolvePackage(name, from);
  if (!dir) { if (optional) return; throw new Error(`gpu-bundle: ${name} (needed by ${relative(root, from) || 'shoal'}) is not installed`); }
  if (seen.has(dir)) return;
  seen.add(dir);
  const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, dir, false);
}
const own = JSON.parse(readFileSync('package.json', 'utf8'));
for (const dep of [...Object.keys(own.dependencies), 'node-llama-cpp']) visit(dep, root, false);
for (const dep of extra) visit(dep, resolvePackage('node-llama-cpp', root), false);
for (const dir of seen) {
  const to = join(dest, relative(root, dir));
  // Nested node_modules are visited as packages of their own: copy the package without them.
  cpSync(dir, to, { recursive: true, dereference: true, filter: (src) => !relative(dir, src).split('/').includes('node_modules') });
}
// Only what runs on linux-x64: Dawn's other platforms and llama.cpp's source bundle stay behind.
const webgpu = join(dest, 'node_modules/webgpu/dist');
for (const p of ['darwin-universal', 'linux-arm64', 'win32-arm64', 'win32-x64']) rmSync(join(webgpu, p), { recursive: true, force: true });
rmSync(join(dest, 'node_modules/node-llama-cpp/llama/gitRelease.bundle'), { force: true });
console.log(`gpu-bundle: ${seen.size} packages`);
EOF

if [ "$node_bin" = 1 ]; then cp "$(readlink -f "$(command -v node)")" "$stage/bin/node"; fi
if [ "$loader" = 1 ]; then
  # amd64 whatever this machine is, with package lists of their own (the system's stay untouched).
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/shoal-amd64-lists -oDebug::NoLocking=1'
  mkdir -p /tmp/shoal-amd64-lists/partial
  # shellcheck disable=SC2086
  apt-get $o update -qq >/dev/null && (cd "$stage/debs" && apt-get $o download -qq libvulkan1) \
    || echo "gpu-bundle: could not download libvulkan1; the device must have a Vulkan loader" >&2
fi

echo "gpu-bundle: staged sizes"
du -sh "$stage"/* | sed "s|.gpu/stage/||"
for p in webgpu node-llama-cpp @node-llama-cpp/linux-x64-vulkan @node-llama-cpp/linux-x64; do [ -d "$stage/shoal/node_modules/$p" ] && du -sh "$stage/shoal/node_modules/$p" | sed "s|.gpu/stage/||"; done
tar -C .gpu/stage -cf - shoal-gpu | xz -T0 -6 > .gpu/shoal-gpu.tar.xz
rm -rf .gpu/stage
size=$(stat -c %s .gpu/shoal-gpu.tar.xz)
echo "gpu-bundle: .gpu/shoal-gpu.tar.xz $((size / 1048576)) MiB ($size bytes)"
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{ s += $1 } END { print s }')
if [ $((size + tracked)) -gt $((64 * 1048576)) ]; then
  echo "gpu-bundle: with the $((tracked / 1048576)) MiB of tracked files this is over the 64 MiB a device call carries" >&2
  exit 1
fi
