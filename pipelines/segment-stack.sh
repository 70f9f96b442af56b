#!/usr/bin/env bash
# Segments a multi-page TIFF stack with unetsegment and writes the result as a TIFF stack.
#
#   pipelines/segment-stack.sh [options] INPUT.tif [OUTPUT.tif]
#
# INPUT is any multi-page TIFF (classic or BigTIFF, 8/16-bit or float gray). OUTPUT
# (default: INPUT with -labels.tif) gets one page per input page, same width and height:
# class index per pixel (labels), foreground probability (probabilities), instance ids
# (instances) or, for overlay, one RGBA PNG per frame (OUTPUT is then a pattern such
# as overlay-%04d.png). Progress is printed while it runs.
#
# Options:
#   -m, --model FILE        model (.safetensors); default samples/nuclei-model.safetensors
#   -o, --output-mode MODE  labels | probabilities | instances | overlay  (default labels)
#   -d, --device DEV        auto | cpu | cuda  (default auto)
#   -t, --tile-size N       input tile size, 0 = chosen from the frame size (default 0)
#   -b, --batch-size N      tiles per forward pass (default: unetsegment's)
#   -s, --stats FILE.csv    per-frame statistics (object count, foreground fraction,
#                           timing: unetsegment's "unetsegment-stats" messages) as CSV,
#                           and one line per frame on the terminal
#   -p, --property P=V      any other unetsegment property (repeatable)
#   -q, --quiet             no progress lines
#   -h, --help              this text
#
# Examples:
#   pipelines/segment-stack.sh build/samples/nuclei-16x512.tif /tmp/labels.tif
#   pipelines/segment-stack.sh -m my.safetensors -d cuda -o instances big.tif cells.tif
#
# It runs this pipeline (print it with UNET_DRY_RUN=1):
#   tiffstacksrc location=INPUT ! progressreport ! unetsegment model=... output=...
#     ! tiffstacksink location=OUTPUT
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

model="$UNET_ROOT/samples/nuclei-model.safetensors"
mode=labels
device=auto
tile=0
batch=""
quiet=0
stats=""
props=()

while [ $# -gt 0 ]; do
  case "$1" in
    -m|--model) model=${2:?}; shift 2 ;;
    -o|--output-mode) mode=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    -t|--tile-size) tile=${2:?}; shift 2 ;;
    -b|--batch-size) batch=${2:?}; shift 2 ;;
    -p|--property) props+=("${2:?}"); shift 2 ;;
    -s|--stats) stats=${2:?}; shift 2 ;;
    -q|--quiet) quiet=1; shift ;;
    -h|--help) unet_usage; exit 0 ;;
    --) shift; break ;;
    -*) unet_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] && [ $# -le 2 ] || { unet_usage >&2; exit 2; }
input=$1
case "$mode" in
  labels|probabilities|instances) output=${2:-"${input%.tif*}-$mode.tif"} ;;
  overlay) output=${2:-"${input%.tif*}-overlay-%04d.png"} ;;
  *) unet_die "--output-mode must be labels, probabilities, instances or overlay, not '$mode'" ;;
esac
case "$device" in auto|cpu|cuda) ;; *) unet_die "--device must be auto, cpu or cuda" ;; esac
[[ "$tile" =~ ^[0-9]+$ ]] || unet_die "--tile-size must be a number"
[ -z "$batch" ] || [[ "$batch" =~ ^[1-9][0-9]*$ ]] || unet_die "--batch-size must be a positive number"
[ -r "$input" ] || unet_die "cannot read input stack '$input'"
[ -r "$model" ] || unet_die "cannot read model '$model' (train one with pipelines/train.sh, or pass -m)"
if [ "$mode" = overlay ]; then
  case "$output" in *%*d*) ;; *) unet_die "overlay output must be a PNG pattern with %d, e.g. overlay-%04d.png" ;; esac
fi

seg=(unetsegment name=seg "model=$model" "device=$device" "output=$mode" "tile-size=$tile")
[ -n "$batch" ] && seg+=("batch-size=$batch")
[ -n "$stats" ] && seg+=(post-messages=true)
seg+=("${props[@]}")
if [ "$mode" = overlay ]; then
  sink=(videoconvert ! pngenc ! multifilesink "location=$output")
else
  sink=(tiffstacksink "location=$output")
fi
progress=()
[ "$quiet" -eq 0 ] && progress=(progressreport name=progress update-freq=1 !)
pipeline=(tiffstacksrc "location=$input" ! "${progress[@]}" "${seg[@]}" ! "${sink[@]}")

if [ -n "${UNET_DRY_RUN:-}" ]; then
  echo "gst-launch-1.0 ${pipeline[*]}"
  exit 0
fi

unet_ensure_build
unet_require_element tiffstacksrc tiffstacksink unetsegment

start=$(unet_now_ms)
if [ -n "$stats" ]; then
  set +e
  unet_gst_launch -m "${pipeline[@]}" |
    "$UNET_PYTHON" "$UNET_ROOT/pipelines/trainlog.py" csv --message unetsegment-stats > "$stats"
  status=("${PIPESTATUS[@]}")
  set -e
  [ "${status[0]}" -eq 0 ] || unet_die "segmentation failed (see above)"
else
  unet_gst_launch -q "${pipeline[@]}"
fi
echo "$UNET_SCRIPT: wrote $output in $(unet_elapsed "$start")" >&2
