#!/usr/bin/env bash
# Compile-checks the CUDA backend on a machine without a GPU or a CUDA build of PyTorch:
#  1. every csrc/cuda/*.cu with nvcc -c for sm_80 and sm_90 (kernels include no torch headers);
#  2. every csrc/cuda/*_binding.cpp with g++ -fsyntax-only against torch's headers and the CUDA
#     toolkit's headers (a CPU torch wheel lacks one generated CUDA config header; an empty stub
#     stands in for it).
# Runs every check, then exits nonzero if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found" >&2; exit 1; }
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v "$NVCC")")")")}
[ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || CUDA_HOME=$(ls -d /usr/local/cuda* 2>/dev/null | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0
for cu in csrc/cuda/*.cu; do
  for arch in 80 90; do
    if "$NVCC" -std=c++17 -O3 --fmad=false -arch=sm_$arch -I csrc -c "$cu" -o "$out/$(basename "$cu").$arch.o"; then
      echo "nvcc sm_$arch ok: $cu"
    else
      echo "nvcc sm_$arch FAILED: $cu" >&2; status=1
    fi
  done
done
mkdir -p "$out/stub/c10/cuda/impl" && : > "$out/stub/c10/cuda/impl/cuda_cmake_macros.h"
torch_includes=$(python -c "import torch.utils.cpp_extension as c; print(' '.join('-I' + p for p in c.include_paths()))")
bindings=(csrc/cuda/*_binding.cpp)
[ -e "${bindings[0]}" ] || { echo "check_cuda: no csrc/cuda/*_binding.cpp found" >&2; exit 1; }
for cpp in "${bindings[@]}"; do
  # shellcheck disable=SC2086
  if g++ -std=c++20 -w -fsyntax-only $torch_includes -I "$out/stub" -I "$CUDA_HOME/include" -I csrc "$cpp"; then
    echo "g++ syntax ok: $cpp"
  else
    echo "g++ syntax FAILED: $cpp" >&2; status=1
  fi
done
exit $status
