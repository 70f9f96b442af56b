#!/usr/bin/env bash
# The README's test command: installs what is missing, builds (a normal build and one
# under AddressSanitizer + UndefinedBehaviorSanitizer), runs every suite in both and
# ends with the line "N passed, N failed". GPU tests skip (exit 77) without a GPU.
set -uo pipefail

UNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$UNET_ROOT"
JOBS=$(nproc 2>/dev/null || echo 2)

"$UNET_ROOT/scripts/bootstrap.sh" "$UNET_ROOT/build" || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }

status=0
meson test -C build --num-processes "$JOBS" --print-errorlogs "$@" || status=1

# Sanitizer build: the same tests except the suites that measure long runs.
# (oneDNN/PyTorch are not instrumented; only our code is.)
if "$UNET_ROOT/scripts/bootstrap.sh" "$UNET_ROOT/build-asan" \
      -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debug -Dcuda=disabled; then
  meson test -C build-asan --num-processes "$JOBS" --print-errorlogs --no-suite slow "$@" || status=1
else
  echo "sanitizer build failed"
  status=1
fi

/usr/bin/python3 - build/meson-logs/testlog.json build-asan/meson-logs/testlog.json <<'PY'
import json, sys, os
passed = failed = skipped = 0
for path in sys.argv[1:]:
    if not os.path.exists(path):
        failed += 1
        continue
    for line in open(path):
        r = json.loads(line)
        res = r.get("result")
        if res in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif res == "SKIP":
            skipped += 1
        else:
            failed += 1
print(f"{skipped} skipped (no GPU or optional tool missing)")
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
rc=$?
[ $status -ne 0 ] && [ $rc -eq 0 ] && rc=1
exit $rc
