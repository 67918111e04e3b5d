#!/usr/bin/env bash
# Runs bench/webgpu-decode.ts from an unpacked .gpu/shoal-gpu.tar.xz (scripts/gpu-bundle.sh) on a
# bare GPU machine: the bundled Node, a Vulkan loader when the system has none, NVIDIA's Vulkan
# driver named when the loader would not find it. Arguments go to the benchmark.
#
#   tar -xJf .gpu/shoal-gpu.tar.xz -C /tmp && /tmp/shoal-gpu/run.sh --bandwidth-gbs 3350 --with-cpu
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ -x "$here/bin/node" ] && export PATH="$here/bin:$PATH"
echo "# node $(node -v) at $(command -v node)"

if ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  for f in "$here"/debs/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done
  ldconfig
  ldconfig -p | grep -q 'libvulkan\.so\.1' && echo "# installed the bundled Vulkan loader" || echo "# no Vulkan loader: WebGPU and llama.cpp's Vulkan build will find no GPU"
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -e "$icd" ]; then export VK_DRIVER_FILES="$icd"; echo "# VK_DRIVER_FILES=$icd"; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv,noheader | sed 's/^/# /'

cd "$here/shoal" && exec node dist/bench/webgpu-decode.js "$@"
