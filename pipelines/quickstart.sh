#!/usr/bin/env bash
# The README's main job: installs what is missing, builds, and segments the sample stack
# (16 frames of 512x512 16-bit synthetic nuclei, generated reproducibly at build time)
# with the shipped model (samples/nuclei-model.safetensors) in one gst-launch-1.0
# pipeline, then says how many nuclei it found, how good that was and how long it took.
#
#   pipelines/quickstart.sh [--no-bootstrap] [OUTPUT_DIR]    (default ./quickstart-out)
#
# 1. scripts/bootstrap.sh installs missing Debian packages and builds into build/
#    ($UNET_BUILD_ROOT when set); safe to run again. --no-bootstrap skips it (the build
#    must exist then).
# 2. One pipeline with two chains, run by gst-launch-1.0 -m:
#      tiffstacksrc location=SAMPLE ! progressreport ! unetsegment model=MODEL
#        post-messages=true ! tiffstacksink location=OUTPUT_DIR/labels.tif
#      tiffstacksrc location=SAMPLE start-index=7 stop-index=7 ! unetsegment model=MODEL
#        output=overlay ! videoconvert ! pngenc ! filesink location=OUTPUT_DIR/overlay.png
#    The first writes the label stack (one page per frame, opens in Fiji/ImageJ: 0 =
#    background, 1 = nucleus, 2 = border between touching nuclei); the second draws
#    frame 8 with the nuclei in red and the borders between them in green.
# 3. Prints per frame the nuclei counted (unetsegment's "unetsegment-stats" messages:
#    4-connected regions of class 1; all fields kept in OUTPUT_DIR/stats.csv), the
#    ground truth's count and the Dice of the nuclei (classes 1 and 2) against the
#    ground truth (tests/bench/isbi_eval.py), and the time taken.
set -euo pipefail

bootstrap=1
if [ "${1:-}" = "--no-bootstrap" ]; then
  bootstrap=0
  shift
fi
case "${1:-}" in
  -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
  -*) echo "quickstart.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
esac
[ $# -le 1 ] || { echo "usage: $0 [--no-bootstrap] [OUTPUT_DIR]" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-"$PWD/quickstart-out"}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ "$bootstrap" -eq 1 ]; then
  echo "== Installing what is missing and building (scripts/bootstrap.sh; log in $OUT/bootstrap.log)"
  "$ROOT/scripts/bootstrap.sh" "${UNET_BUILD_ROOT:-$ROOT/build}" > "$OUT/bootstrap.log" 2>&1 ||
    { tail -n 20 "$OUT/bootstrap.log" >&2; echo "quickstart.sh: the build failed (above, and $OUT/bootstrap.log)" >&2; exit 1; }
fi
# shellcheck source=pipelines/lib.sh
source "$ROOT/pipelines/lib.sh"

STACK="$UNET_BUILD/samples/nuclei-16x512.tif"
TRUTH="$UNET_BUILD/samples/nuclei-16x512-masks.tif"
MODEL="$ROOT/samples/nuclei-model.safetensors"
FRAME=7        # 0-based page of the overlay picture
[ -r "$STACK" ] && [ -r "$TRUTH" ] ||
  unet_die "sample stack $STACK is missing (run scripts/bootstrap.sh, the build makes it)"
[ -r "$MODEL" ] || unet_die "model $MODEL is missing (pipelines/train-sample-model.sh makes it)"
unet_require_element tiffstacksrc tiffstacksink unetsegment progressreport pngenc
rm -f "$OUT/labels.tif" "$OUT/overlay.png" "$OUT/stats.csv"

labels_chain=(
  tiffstacksrc "location=$STACK" ! progressreport name=progress update-freq=1 format=buffers
  ! unetsegment name=seg "model=$MODEL" post-messages=true
  ! tiffstacksink "location=$OUT/labels.tif"
)
overlay_chain=(
  tiffstacksrc "location=$STACK" "start-index=$FRAME" "stop-index=$FRAME"
  ! unetsegment "model=$MODEL" output=overlay
  ! videoconvert ! pngenc ! filesink "location=$OUT/overlay.png"
)
# paths relative to the source tree (and the output folder by its name) for display
short() { local s="${*//$ROOT\//}"; echo "${s//$OUT\//$(basename "$OUT")/}"; }
echo "== Segmenting $(short "$STACK") with $(short "$MODEL"):"
echo "   gst-launch-1.0 $(short "${labels_chain[@]}")"
echo "                  $(short "${overlay_chain[@]}")"

start=$(unet_now_ms)
set +e
unet_gst_launch -m "${labels_chain[@]}" "${overlay_chain[@]}" | "$UNET_PYTHON" "$ROOT/pipelines/quickstart.py" filter "$OUT/stats.csv"
status=("${PIPESTATUS[@]}")
set -e
seconds=$(unet_elapsed "$start")
[ "${status[0]}" -eq 0 ] && [ "${status[1]}" -eq 0 ] || unet_die "the pipeline failed (see above)"

echo "== Results"
"$UNET_PYTHON" "$ROOT/pipelines/quickstart.py" report "$OUT/stats.csv" "$OUT/labels.tif" "$TRUTH" "${seconds% s}"
echo "== Wrote $OUT/labels.tif (label stack), $OUT/overlay.png (frame $((FRAME + 1))), $OUT/stats.csv"
