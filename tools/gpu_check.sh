#!/usr/bin/env bash
# One run of every GPU check on a machine with a CUDA device, in under 8 minutes:
#   1. build     the CUDA extension in place (COMMCOMP_USE_CUDA=1, for this GPU's architecture)
#   2. gpu-tests pytest -m gpu: CUDA against CPU bit for bit, opcheck on CUDA (tests/test_cuda_ops.py)
#   3. copy      device-to-device copy bandwidth (the roofline of the kernels)
#   4. bench     benchmarks/bench_kernels.py --device cuda (quantize/dequantize against clone)
#   5. hooks     the DDP hooks on CUDA tensors: 2 Gloo ranks on one GPU (tools/gpu_hooks_check.py)
#   5b. nccl     every hook on one NCCL rank: no synchronizing CUDA call on backward's threads in
#                steady state (sync debug mode), and no stream race (TORCH_CUDA_SANITIZER=1):
#                what the CPU suite's strict NCCL mode checks (tools/gpu_nccl_check.py)
#   6. probes    the CUDA emulation harness's semantic probes built by nvcc and run on the GPU: the
#                harness's expectations checked against the hardware (tests/cuda_emulation)
#   7. sanitize  compute-sanitizer memcheck and racecheck over every op once (where the runtime
#                supports it; skipped otherwise)
# Usage: tools/gpu_check.sh OUT_DIR      (PYTHON=... selects the interpreter holding CUDA torch)
# Writes OUT_DIR/<step>.log, the results (gpu_tests.xml, bench_kernels_cuda.json, hooks_cuda.json,
# env.json, copy.json) and OUT_DIR/summary.md; exits 0 only if every step passed.
set -uo pipefail

usage() { echo "usage: $0 OUT_DIR   (writes logs, results and summary.md there)" >&2; exit 2; }
[ $# -eq 1 ] || usage
mkdir -p "$1" || usage
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # leaves room under 8 minutes for the summary
START=$(date +%s)

fail_early() { echo "gpu_check: $*" | tee "$OUT/summary.md" >&2; exit 2; }
command -v "$PY" >/dev/null || fail_early "no Python interpreter '$PY' (set PYTHON)"
"$PY" -c "import torch" 2>/dev/null || fail_early "'$PY' cannot import torch"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and torch.version.cuda else 1)" ||
  fail_early "no CUDA device visible to torch (torch.cuda.is_available() is False, or torch $("$PY" -c 'import torch; print(torch.__version__)') is a CPU build); run this on a machine with a GPU"
command -v nvcc >/dev/null || fail_early "nvcc not on PATH: the CUDA extension cannot be built"
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
SM=${ARCH/./}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - > "$OUT/env.json" <<'EOF'
import json, platform, subprocess, torch
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except OSError as e:
    smi = f"nvidia-smi unavailable: {e}"
print(json.dumps({"gpu": torch.cuda.get_device_name(0), "capability": torch.cuda.get_device_capability(),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                  "nvidia_smi": smi}, indent=2))
EOF

RESULTS="$OUT/steps.tsv"
: > "$RESULTS"
# step NAME CAP_SECONDS COMMAND...: runs COMMAND with its output in OUT/NAME.log, within both its cap
# and what is left of the budget; records passed / FAILED (exit code) / TIMED OUT / skipped.
step() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    printf '%s\tskipped (out of time)\t0\n' "$name" >> "$RESULTS"; echo "== $name: skipped (out of time)"; return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (at most ${cap}s)"
  local t0 rc status
  t0=$(date +%s)
  # Steps are shell functions (exported below), which timeout can only run through a new shell.
  timeout --kill-after=10 "$cap" bash -c '"$@"' "$name" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=passed ;;
    3) status="skipped (not supported here)" ;;  # a step's own verdict: nothing to check on this machine
    124|137) status="TIMED OUT after ${cap}s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$RESULTS"
  echo "   $status; last lines of $name.log:"; tail -n 3 "$OUT/$name.log" | sed 's/^/   | /'
}

build() {
  COMMCOMP_USE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=$(nproc) "$PY" setup.py build_ext --inplace &&
    "$PY" -c "import torch, commcomp; assert torch._C._dispatch_has_kernel_for_dispatch_key('commcomp::quantize', 'CUDA'), 'no CUDA kernel registered'; print('CUDA kernels registered')"
}

gpu_tests() {
  # Only the files holding GPU tests: a test module needing a package this image lacks must not
  # stop the collection of the others.
  local files
  files=$(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
  "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/gpu_tests.xml" $files
}

probes() {
  mkdir -p build/gpu_check &&
    nvcc -std=c++17 -O2 --fmad=false -arch="sm_$SM" -shared -Xcompiler -fPIC -I csrc \
      tests/cuda_emulation/kernels/probes.cu -o build/gpu_check/libprobes_cuda.so &&
    COMMCOMP_PROBE_CUDA_LIB="$ROOT/build/gpu_check/libprobes_cuda.so" MAX_JOBS=$(nproc) \
      "$PY" -m pytest -q -p no:cacheprovider -k cuda -rA tests/cuda_emulation/test_emu_harness.py
}

copy_bandwidth() {
  "$PY" - "$OUT/copy.json" <<'EOF'
import json, sys, torch
n = 1 << 28  # 1 GiB of fp32
src, dst = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
for _ in range(3):
    dst.copy_(src)
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(10):
    start.record(); dst.copy_(src); end.record(); torch.cuda.synchronize()
    times.append(start.elapsed_time(end) / 1e3)
best = min(times)
row = {"bytes": 4 * n, "best_s": best, "read_plus_write_GBps": 2 * 4 * n / best / 1e9}
json.dump(row, open(sys.argv[1], "w"), indent=2)
print(f"device-to-device copy: {row['read_plus_write_GBps']:.0f} GB/s (bytes read + written), best of 10")
EOF
}

bench() {
  "$PY" benchmarks/bench_kernels.py --device cuda --sizes 1e6 16e6 64e6 256e6 --bits 2 3 4 8 --repeats 10 &&
    cp benchmarks/results/bench_kernels_cuda.json "$OUT/" && cp benchmarks/results/bench_kernels_cuda.png "$OUT/" 2>/dev/null
  return $?
}

hooks() { "$PY" tools/gpu_hooks_check.py "$OUT/hooks"; local rc=$?; cp "$OUT/hooks/hooks_cuda.json" "$OUT/" 2>/dev/null; return $rc; }

nccl() { "$PY" tools/gpu_nccl_check.py "$OUT/nccl"; local rc=$?; cp "$OUT/nccl/nccl_check.json" "$OUT/" 2>/dev/null; return $rc; }

sanitize() {
  command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer is not installed"; return 3; }
  local script="$OUT/sanitize_ops.py"
  cat > "$script" <<'EOF'
import torch
from commcomp import ops
lv = torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0], device="cuda")
for n in (1, 1000, 100_003):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x = torch.randn(n, device="cuda").to(dtype)
        norms, symbols = ops.quantize(x, lv, 64, "l2", 1, 0)
        ops.dequantize(norms, symbols, lv, 64, n)
        torch.ops.commcomp.level_stats(x, norms, 64, 1024)
    out = torch.zeros(n, device="cuda")
    ops.dequantize_accumulate(out, [norms] * 3, [symbols] * 3, lv, 64, 0.5)
    ops.unpack_symbols(ops.pack_symbols(ops.unpack_symbols(symbols, 4, n), 4), 4, n)
    for code in (0, 1, 2):
        lengths, stream = ops.elias_encode(symbols, 5, 64, n, code)
        ops.elias_decode(lengths, stream, 5, 64, n, code)
torch.cuda.synchronize()
print("ops ran")
EOF
  local tool result r rc=0
  for tool in memcheck racecheck; do
    echo "-- compute-sanitizer --tool $tool"
    result=$(compute-sanitizer --tool "$tool" --error-exitcode 1 "$PY" "$script" 2>&1)
    r=$?
    echo "$result" | tail -n 20
    if grep -q "Device not supported" <<< "$result"; then
      echo "compute-sanitizer does not support this device or runtime"; return 3
    fi
    [ "$r" -eq 0 ] || rc=$r
  done
  return $rc
}

export PY OUT ROOT ARCH SM
export -f build gpu_tests probes copy_bandwidth bench hooks nccl sanitize
step build 240 build
if grep -q '^build	passed' "$RESULTS"; then
  step gpu-tests 150 gpu_tests
  step copy 60 copy_bandwidth
  step bench 120 bench
  step hooks 150 hooks
  step nccl 150 nccl
  # Checks of the checks, last: they are the first to go when the budget runs short.
  step probes 120 probes
  step sanitize 120 sanitize
fi

"$PY" - "$OUT" "$RESULTS" "$(( $(date +%s) - START ))" > "$OUT/summary.md" <<'EOF'
import json, os, sys
out, results, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
env, copy, bench, hooks = load("env.json"), load("copy.json"), load("bench_kernels_cuda.json"), load("hooks_cuda.json")
nccl = load("nccl_check.json")
lines = [f"# gpu_check ({elapsed} s)", "", f"GPU: {env['gpu']} (sm_{''.join(map(str, env['capability']))}), "
         f"torch {env['torch']}, CUDA {env['cuda']}, driver: {env['nvidia_smi']}", "", "| step | result | seconds |", "|---|---|---:|"]
lines += [f"| {n} | {s} | {t} |" for n, s, t in (row.split("\t") for row in open(results).read().splitlines())]
if copy:
    lines += ["", f"Device-to-device copy: {copy['read_plus_write_GBps']:.0f} GB/s (bytes read + written, best of 10, 1 GiB)."]
if bench:
    lines += ["", "bench_kernels --device cuda (GB/s of fp32 input; `vs copy`: quantize's bytes read + written per second over clone's):", "",
              "| elements | bits | clone GB/s | quantize GB/s | dequantize GB/s | quantize vs copy (r+w) |", "|---:|---:|---:|---:|---:|---:|"]
    for r in bench.get("rows", []):
        lines.append(f"| {r.get('numel', 0):,} | {r.get('bits')} | {r.get('clone_gbps', 0):.1f} | {r.get('quantize_gbps', 0):.1f} | "
                     f"{r.get('dequantize_gbps', 0):.1f} | {r.get('quantize_rw_vs_copy_rw', 0):.0%} |")
if hooks:
    lines += ["", "DDP hooks on CUDA (2 Gloo ranks, one GPU):", "", "| spec | rel. error vs fp32 mean | CUDA == CPU | ms/step CUDA |", "|---|---:|---|---:|"]
    for spec, row in hooks["ranks"][0].items():
        if "error" in row:
            lines.append(f"| {spec} | error | | |")
        else:
            lines.append(f"| {spec} | {row['rel_error_vs_exact']:.3f} | {row['cuda_equals_cpu']} | {1e3 * row['seconds_per_step_cuda']:.1f} |")
    lines += [f"- FAILED: {f}" for f in hooks["failures"]]
if nccl:
    lines += ["", "Every hook on one NCCL rank, steady state (sync debug mode; CSAN run: "
              f"{'passed' if 'sanitizer' in nccl['runs'] else 'missing'}):", "",
              "| spec | syncs on backward's threads per run | syncs on commcomp-comm per step |", "|---|---:|---:|"]
    for spec, row in nccl["runs"].get("plain", {}).items():
        if "error" in row:
            lines.append(f"| {spec} | error | |")
        else:
            lines.append(f"| {spec} | {row['syncs_on_backward_threads']} | {row['syncs_on_comm_thread_per_step']:.1f} |")
    lines += [f"- FAILED: {f}" for f in nccl["failures"]]
print("\n".join(lines))
EOF
cat "$OUT/summary.md"
# Success: every step passed, or found nothing to check on this machine.
! grep -Pqv '\t(passed|skipped \(not supported here\))\t' "$RESULTS"
