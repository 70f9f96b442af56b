#!/usr/bin/env bash
# Live test, run inside tests/live/netns-camera.sh: the simulated GigE Vision camera
# streams through aravissrc in Mono8 (GRAY8) and Mono16 (GRAY16_LE), and exactly the
# requested number of whole frames arrives -- at a sink that writes one file per frame,
# and at tiffstacksink (page count and pixel type read back with tifffile) when the
# tiffstack plugin is built.
#
#   tests/live/netns-camera.sh tests/live/aravis-frames.sh [N]
set -euo pipefail

N=${1:-8}
W=256
H=128
ROOT=${UNET_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../../pipelines/lib.sh
. "$ROOT/pipelines/lib.sh"

export UNET_TIMEOUT=${UNET_TIMEOUT:-30}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

for fmt in GRAY8 GRAY16_LE; do
  bpp=1
  [ "$fmt" = GRAY16_LE ] && bpp=2
  mkdir "$tmp/$fmt"
  # 100 fps: 4x the simulator's default, so N frames take well under a second
  caps="video/x-raw,format=$fmt,width=$W,height=$H,framerate=100/1"
  unet_gst_launch -q aravissrc camera-name=Aravis-Fake-GV01 num-buffers="$N" \
    ! "$caps" ! multifilesink location="$tmp/$fmt/frame-%05d.raw" \
    || fail "$fmt: pipeline failed"
  count=$(find "$tmp/$fmt" -name 'frame-*.raw' | wc -l)
  [ "$count" -eq "$N" ] || fail "$fmt: $count frames written, expected $N"
  bad=$(find "$tmp/$fmt" -name 'frame-*.raw' ! -size "$((W * H * bpp))c" | wc -l)
  [ "$bad" -eq 0 ] || fail "$fmt: $bad frames are not ${W}x${H}x$bpp bytes"
  echo "$fmt: $count frames of ${W}x${H}, $bpp byte(s)/px"

  if unet_have_element tiffstacksink; then
    unet_gst_launch -q aravissrc camera-name=Aravis-Fake-GV01 num-buffers="$N" \
      ! "$caps" ! tiffstacksink location="$tmp/$fmt.tif" \
      || fail "$fmt: recording pipeline failed"
    "$UNET_PYTHON" - "$tmp/$fmt.tif" "$N" "$W" "$H" "$bpp" <<'PY' || fail "$fmt: TIFF check failed"
import sys, tifffile
path, n, w, h, bpp = sys.argv[1], *map(int, sys.argv[2:])
with tifffile.TiffFile(path) as t:
    pages = len(t.pages)
    p = t.pages[0]
    assert pages == n, f"{pages} pages, expected {n}"
    assert p.shape == (h, w), f"page shape {p.shape}"
    assert p.dtype.itemsize == bpp and p.dtype.kind == "u", f"page dtype {p.dtype}"
print(f"  tiffstacksink: {pages} pages {p.shape} {p.dtype}")
PY
  fi
done
