#!/usr/bin/env bash
# Builds the libFuzzer harness of the wire decoder (fuzz/payload_fuzzer.cpp) with ASan + UBSan and
# runs it for SECONDS (default 60) on a copy of fuzz/corpus. Exits nonzero on any crash, sanitizer
# report, leak, timeout or failed check, leaving the input under the printed artifact folder.
# Needs clang with libFuzzer; as root on Debian/Ubuntu it installs them (clang, libclang-rt-N-dev)
# from the system packages, running apt-get update only if the first attempt fails.
#   bash tools/fuzz_payload.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
CXX=${FUZZ_CXX:-clang++}
flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all)

can_build() {
  command -v "$CXX" >/dev/null 2>&1 &&
    printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' |
      "$CXX" "${flags[@]}" -x c++ - -o /dev/null >/dev/null 2>&1
}

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

if ! can_build; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "fuzz: $CXX with libFuzzer + ASan/UBSan is not available, and installing it needs root and apt-get" >&2
    exit 1
  fi
  echo "fuzz: installing clang and its sanitizer runtimes from the system packages"
  command -v clang++ >/dev/null || apt_install clang || { echo "fuzz: apt-get install clang failed" >&2; exit 1; }
  major=$(clang++ --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)
  apt_install "libclang-rt-$major-dev" ||
    { echo "fuzz: apt-get install libclang-rt-$major-dev failed" >&2; exit 1; }
  CXX=clang++
  can_build || { echo "fuzz: clang++ still cannot build a libFuzzer + ASan/UBSan binary" >&2; exit 1; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$CXX" "${flags[@]}" -Wall -Wextra -Werror -I csrc -I fuzz fuzz/payload_fuzzer.cpp -o "$work/payload_fuzzer"
cp -r fuzz/corpus "$work/corpus"
mkdir -p "$work/artifacts"
echo "fuzz: $("$CXX" --version | head -1); running ${seconds} s from $(ls fuzz/corpus | wc -l) seeds"
status=0
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ASAN_OPTIONS=abort_on_error=1 \
  "$work/payload_fuzzer" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 -artifact_prefix="$work/artifacts/" "$work/corpus" > "$work/log" 2>&1 || status=$?
grep -E "INITED|DONE" "$work/log" || true
if [ "$status" != 0 ] || grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:|deadly signal" "$work/log"; then
  tail -60 "$work/log" >&2
  for f in "$work"/artifacts/*; do
    [ -e "$f" ] && { echo "fuzz: failing input $(basename "$f"):" >&2; od -An -tx1 -v "$f" | head -40 >&2; }
  done
  echo "fuzz: FAILED (exit $status)" >&2
  exit 1
fi
echo "fuzz: no report in ${seconds} s"
