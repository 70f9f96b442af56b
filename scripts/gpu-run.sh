#!/bin/bash
# Runs the GPU checks and benchmarks of a build packed by scripts/gpu-pack.sh, on the GPU
# machine, from the project's root, after `source .gpu/env.sh`. The test binaries are run
# directly with the environment meson's test_env gives them (tests/meson.build): the
# machine's meson may not read this machine's build directory. Logs go to $OUT (the run
# tool's output folder) or /tmp/gpu-out.
#
# usage: source .gpu/env.sh && scripts/gpu-run.sh [BUILD_DIR] [--no-bench]
set -uo pipefail
build=${1:-$(cat .gpu/build-dir 2>/dev/null || echo build-gpu)}
bench=1
[ "${2:-}" = "--no-bench" ] && bench=0
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
root=$(pwd)
export UNET_SOURCE_ROOT="$root" UNET_BUILD_ROOT="$root/$build" PYTHONDONTWRITEBYTECODE=1
export GST_REGISTRY_1_0="$root/$build/tests/registry.bin"
export GST_PLUGIN_PATH_1_0="$root/$build/elements/tiffstack:$root/$build/elements/unet"

fail=0
for t in cuda-nodevice cuda-ops cuda-net cuda-train; do
  exe="$build/tests/gpu/test-$t"
  [ -x "$exe" ] || { echo "MISSING $exe"; fail=1; continue; }
  start=$(date +%s%N)
  timeout 600 "$exe" > "$out/test-$t.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  case $rc in
    0) verdict=PASS ;;
    77) verdict=SKIP ;;
    *) verdict="FAIL (exit $rc)"; fail=1 ;;
  esac
  printf '%-16s %-14s %6d ms\n' "$t" "$verdict" "$ms" | tee -a "$out/summary.txt"
  [ $rc -ne 0 ] && [ $rc -ne 77 ] && tail -20 "$out/test-$t.log"
done
if [ $bench -eq 1 ]; then
  PYTHONUNBUFFERED=1 python3 tests/bench/bench_gpu.py --build "$build" 2>&1 | tee "$out/bench_gpu.txt"
fi
exit $fail
