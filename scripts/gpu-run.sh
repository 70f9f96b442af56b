#!/bin/bash
# The GPU check, for a build packed by scripts/gpu-pack.sh, on the GPU machine, from the
# project's root, after `source .gpu/env.sh`. Two phases, each one call of the device
# tool on the same warm machine, each within a fixed time budget BY CONSTRUCTION: every
# step runs under `timeout` with at most its own limit and at most what is left of the
# phase's budget, and a step that would start with less than 10 s left is logged as
# "SKIP (phase budget)" instead of run.
#
#   phase 1 (budget 290 s): GPU / driver / CUDA / torch / cuDNN versions and which
#     libcudnn the tests load; every GPU test (nodevice, ops, net, segment, train; 60 s
#     each); compute-sanitizer memcheck and racecheck on the op test (60 s each).
#   phase 2 (budget 290 s): the headline benchmark only (tests/bench/bench_gpu.py:
#     classic and base-32 nets, bf16 and fp32, 10 frames of 2048x2048, engine vs
#     PyTorch + cuDNN bf16 channels_last in the same run, one gst-launch end-to-end run;
#     200 s); compute-sanitizer memcheck on the segment test (80 s).
#
# Logs: at most 8 files, all in $OUT (the run tool's output folder; /tmp/gpu-out
# without it): env.log, tests.log, sanitizer-ops.log (phase 1), bench.log,
# sanitizer-segment.log (phase 2), summary.txt (one line per step, both phases).
#
# usage: source .gpu/env.sh && scripts/gpu-run.sh BUILD_DIR 1|2
# exit status: 0 when every step that ran passed (or skipped for lack of a device).
set -uo pipefail
build=${1:-$(cat .gpu/build-dir 2>/dev/null || echo build-gpu)}
phase=${2:-1}
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
root=$(pwd)
budget=${GPU_RUN_BUDGET:-290}  # seconds per phase (override only to test this script)
start=$(date +%s)
fail=0

# the environment meson's test_env gives the tests (tests/meson.build)
export UNET_SOURCE_ROOT="$root" UNET_BUILD_ROOT="$root/$build" PYTHONDONTWRITEBYTECODE=1
export PYTHONUNBUFFERED=1 GST_STATE_IGNORE_ELEMENTS="" OMP_WAIT_POLICY=passive
export GST_REGISTRY_1_0=${GST_REGISTRY_1_0:-/tmp/gst-registry.bin}
export GST_PLUGIN_PATH_1_0="$root/$build/elements/tiffstack:$root/$build/elements/unet"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -1)

left () { echo $(( budget - ($(date +%s) - start) )); }

# step NAME LIMIT_S LOG CMD...: runs CMD with stdout+stderr appended to LOG under
# min(LIMIT_S, what is left of the budget); one summary line.
step () {
  local name=$1 limit=$2 log=$3; shift 3
  local rest; rest=$(left)
  [ "$rest" -lt "$limit" ] && limit=$rest
  if [ "$limit" -lt 10 ]; then
    printf 'phase %s %-28s SKIP (phase budget)\n' "$phase" "$name" | tee -a "$out/summary.txt"
    return
  fi
  echo "===== $name (limit ${limit} s): $*" >> "$out/$log"
  local t0; t0=$(date +%s%N)
  timeout -k 5 "$limit" "$@" >> "$out/$log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  local verdict
  case $rc in
    0) verdict=PASS ;;
    77) verdict=SKIP ;;
    124|137) verdict="FAIL (timeout ${limit} s)"; fail=1 ;;
    *) verdict="FAIL (exit $rc)"; fail=1 ;;
  esac
  echo "===== $name: $verdict, $ms ms" >> "$out/$log"
  printf 'phase %s %-28s %-22s %7d ms\n' "$phase" "$name" "$verdict" "$ms" \
    | tee -a "$out/summary.txt"
}

versions () {
  date -u
  nvidia-smi || echo "nvidia-smi failed"
  nvcc --version 2>/dev/null | tail -2
  "${sanitizer:-false}" --version 2>/dev/null | head -2 || echo "no compute-sanitizer"
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"cuDNN", torch.backends.cudnn.version(), "device", torch.cuda.get_device_name(0)
if torch.cuda.is_available() else "none")' || echo "no torch"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  echo "--- libraries the test binaries resolve (ldd):"
  ldd "$build/tests/gpu/test-cuda-ops" | grep -E 'cudnn|cudart|cuda\.so|stdc\+\+|gomp|libz|glib'
  echo "--- libraries loaded at run time (cuDNN 9 dlopens its engines):"
  LD_DEBUG=libs "$build/tests/gpu/test-cuda-nodevice" 2>&1 >/dev/null \
    | grep -E 'calling init: .*(cudnn|cudart|libcuda)' | sed 's/.*calling init: //' | sort -u
  python3 -c 'import ctypes; l = ctypes.CDLL("libcudnn.so.9"); print("libcudnn.so.9 on the library path: version", l.cudnnGetVersion())' \
    || echo "libcudnn.so.9 not loadable"
}

case $phase in
  1)
    export build sanitizer
    export -f versions
    step versions 30 env.log bash -c versions
    # deterministic cuDNN algorithm choice for the conformance tests (gpu-test.h sets
    # it too); the op tests need no cuDNN
    for t in gpu/test-cuda-nodevice gpu/test-cuda-ops gpu/test-cuda-net \
        gpu/test-cuda-segment gpu/test-cuda-train engine/test-backend-ops; do
      exe="$build/tests/$t"
      if [ -x "$exe" ]; then step "${t#*/test-}" 60 tests.log "$exe"
      else echo "MISSING $exe" | tee -a "$out/summary.txt"; fail=1; fi
    done
    if [ -n "$sanitizer" ]; then
      # memory access errors only (no --leak-check): a device buffer a test does not
      # free is no kernel error and would fail the step
      step "memcheck cuda-ops" 60 sanitizer-ops.log "$sanitizer" --tool memcheck \
        --error-exitcode 1 "$build/tests/gpu/test-cuda-ops"
      step "racecheck cuda-ops" 60 sanitizer-ops.log "$sanitizer" --tool racecheck \
        --error-exitcode 1 "$build/tests/gpu/test-cuda-ops"
    else
      echo "phase 1 compute-sanitizer not found: sanitizer steps not run" | tee -a "$out/summary.txt"
      fail=1
    fi
    ;;
  2)
    step "bench_gpu" 200 bench.log python3 tests/bench/bench_gpu.py --build "$build" \
      --frames 10 --precisions bf16,fp32 --gst-precisions bf16 --gst-single
    if [ -n "$sanitizer" ]; then
      step "memcheck cuda-segment" 80 sanitizer-segment.log "$sanitizer" --tool memcheck \
        --error-exitcode 1 "$build/tests/gpu/test-cuda-segment"
    fi
    ;;
  *)
    echo "usage: scripts/gpu-run.sh BUILD_DIR 1|2" >&2
    exit 2
    ;;
esac
echo "phase $phase done in $(( $(date +%s) - start )) s (budget $budget s); logs in $out" \
  | tee -a "$out/summary.txt"
exit $fail
