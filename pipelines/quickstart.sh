#!/usr/bin/env bash
# The README's main job: installs what is missing, builds, and streams the sample stack
# (16 frames of 512x512 16-bit synthetic nuclei, generated reproducibly at build time)
# through a gst-launch-1.0 pipeline with visible progress, then says what it did.
#
#   pipelines/quickstart.sh [OUTPUT_DIR]      (default: ./quickstart-out)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/bootstrap.sh" "$ROOT/build"
# shellcheck source=pipelines/lib.sh
source "$ROOT/pipelines/lib.sh"

OUT=${1:-"$PWD/quickstart-out"}
mkdir -p "$OUT"
STACK="$UNET_BUILD/samples/nuclei-16x512.tif"
[ -f "$STACK" ] || unet_die "sample stack $STACK is missing (the build should have made it)"

COPY="$OUT/nuclei-copy.tif"
echo "== streaming $STACK page by page through tiffstacksrc ! tiffstacksink"
start=$(date +%s.%N)
unet_gst_launch -q tiffstacksrc location="$STACK" \
  ! progressreport format=buffers update-freq=1 \
  ! tiffstacksink location="$COPY" compression=deflate
end=$(date +%s.%N)

"$UNET_PYTHON" - "$STACK" "$COPY" "$start" "$end" <<'PY'
import sys, tifffile, numpy as np
src, dst, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
a = tifffile.imread(src); b = tifffile.imread(dst)
print(f"read  {src}: {a.shape[0]} pages of {a.shape[2]}x{a.shape[1]} {a.dtype}")
print(f"wrote {dst}: {b.shape[0]} pages, pixel-identical: {np.array_equal(a, b)}")
print(f"time  {t1 - t0:.2f} s")
PY
