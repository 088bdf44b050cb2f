#!/usr/bin/env bash
# End-to-end DDP benchmark over a tc-shaped loopback in a private network namespace.
#
#   sudo benchmarks/bench_ddp.sh                         # 1, 2.5, 10 Gbit/s, every contender
#   sudo benchmarks/bench_ddp.sh --bandwidths 1 --contenders none fp16 nuqsgd:4
#
# Needs root (ip netns, tc). Everything after the script name goes to bench_ddp.py.
# BENCH_DDP_TIMEOUT (seconds, default 5400) bounds the whole run; the namespace is deleted on any
# exit, including Ctrl-C and the timeout (bench_ddp.py also deletes it itself).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ "$(id -u)" -ne 0 ]]; then
    echo "bench_ddp.sh: SKIPPED: needs root for 'ip netns' and 'tc' (try: sudo $0 $*)" >&2
    exit 2
fi
for tool in ip tc timeout; do
    command -v "$tool" >/dev/null || { echo "bench_ddp.sh: SKIPPED: '$tool' not found" >&2; exit 2; }
done
if [[ -z "${VIRTUAL_ENV:-}" && -f "$here/../.venv/bin/activate" ]]; then
    # shellcheck disable=SC1091
    source "$here/../.venv/bin/activate"
fi
ns="ccbench$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout --kill-after=30 "${BENCH_DDP_TIMEOUT:-5400}" python "$here/bench_ddp.py" --netns-name "$ns" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
