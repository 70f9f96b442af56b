#!/usr/bin/env bash
# Trains a U-Net (or fine-tunes one) with unettrain from paired images and masks.
#
#   pipelines/train.sh [options] IMAGES MASKS OUTPUT.safetensors
#
# IMAGES and MASKS are either two multi-page TIFF stacks with the same number of pages
# (page k of MASKS annotates page k of IMAGES; e.g. ISBI 2012's train-volume.tif and
# train-labels.tif) or two folders of PNGs paired by sorted file name (masks must be
# grayscale PNGs: 0/255 for binary, class indices, or instance ids). The loss curve is
# written as CSV (OUTPUT with .csv) and plotted to a PNG (OUTPUT with -loss.png).
#
# Options:
#   -i, --init FILE          fine-tune this model instead of starting from scratch
#   -n, --iterations N       optimiser steps (default 4000, unettrain's)
#       --checkpoint N       save a checkpoint every N steps (default 500)
#       --mask-mode MODE     binary | indexed | instances  (default binary)
#       --optimizer OPT      sgd | adam | adamw  (default: unettrain's, Adam; sgd = the paper's)
#       --learning-rate X    (default: unettrain's default for its optimiser)
#       --tile-size N        training tile edge (default: unettrain's, near 572)
#       --depth D            poolings of a new network (default 4)
#       --base-filters F     filters at full resolution of a new network (default 16)
#   -d, --device DEV         auto | cpu | cuda  (default auto)
#       --seed N             seed for sampling and augmentation (default 1)
#       --csv FILE           loss log (default OUTPUT with .csv)
#       --plot FILE          loss plot (default OUTPUT with -loss.png; "none" = off)
#   -p, --property P=V       any other unettrain property (repeatable), e.g.
#                            -p border-weight=10 -p elastic-sigma=10
#   -h, --help               this text
#
# Examples:
#   pipelines/train.sh train-volume.tif train-labels.tif isbi.safetensors
#   pipelines/train.sh -i samples/nuclei-model.safetensors -n 500 my-imgs/ my-masks/ tuned.safetensors
#
# It runs (print it with UNET_DRY_RUN=1):
#   unettrain name=train output-model=OUTPUT ... ! fakesink
#   tiffstacksrc location=IMAGES ! train.image    tiffstacksrc location=MASKS ! train.mask
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

init=""
iterations=4000
checkpoint=500
mask_mode=binary
lr=""
optimizer=""
tile=""
depth=4
base=16
device=auto
seed=1
csv=""
plot=""
props=()

while [ $# -gt 0 ]; do
  case "$1" in
    -i|--init) init=${2:?}; shift 2 ;;
    -n|--iterations) iterations=${2:?}; shift 2 ;;
    --checkpoint) checkpoint=${2:?}; shift 2 ;;
    --mask-mode) mask_mode=${2:?}; shift 2 ;;
    --learning-rate) lr=${2:?}; shift 2 ;;
    --optimizer) optimizer=${2:?}; shift 2 ;;
    --tile-size) tile=${2:?}; shift 2 ;;
    --depth) depth=${2:?}; shift 2 ;;
    --base-filters) base=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    --seed) seed=${2:?}; shift 2 ;;
    --csv) csv=${2:?}; shift 2 ;;
    --plot) plot=${2:?}; shift 2 ;;
    -p|--property) props+=("${2:?}"); shift 2 ;;
    -h|--help) unet_usage; exit 0 ;;
    --) shift; break ;;
    -*) unet_die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -eq 3 ] || { unet_usage >&2; exit 2; }
images=$1
masks=$2
output=$3

for v in iterations checkpoint depth base seed; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || unet_die "--${v/base/base-filters} must be a non-negative integer"
done
case "$mask_mode" in binary|indexed|instances) ;; *) unet_die "--mask-mode must be binary, indexed or instances" ;; esac
case "$device" in auto|cpu|cuda) ;; *) unet_die "--device must be auto, cpu or cuda" ;; esac
case "$optimizer" in ""|sgd|adam|adamw) ;; *) unet_die "--optimizer must be sgd, adam or adamw" ;; esac
[ -z "$tile" ] || [[ "$tile" =~ ^[0-9]+$ ]] || unet_die "--tile-size must be a number"
case "$output" in *.safetensors) ;; *) unet_die "OUTPUT must end in .safetensors" ;; esac
[ -z "$init" ] || [ -r "$init" ] || unet_die "cannot read model '$init'"
csv=${csv:-"${output%.safetensors}.csv"}
plot=${plot:-"${output%.safetensors}-loss.png"}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# source words for a TIFF stack or a PNG folder; $2 = image | mask
source_of() {
  local path=$1 role=$2 n
  if [ -d "$path" ]; then
    # multifilesrc needs a numbered pattern: link the PNGs in sorted order
    mkdir -p "$tmp/$role"
    n=0
    while IFS= read -r -d '' f; do
      ln -s "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")" "$(printf '%s/%06d.png' "$tmp/$role" "$n")"
      n=$((n + 1))
    done < <(find "$path" -maxdepth 1 -type f -iname '*.png' -print0 | sort -z)
    [ "$n" -gt 0 ] || unet_die "no .png files in $path"
    echo "$n" > "$tmp/$role.count"
    # 16-bit PNGs decode big-endian: videoconvert makes GRAY16_LE; 8-bit stays GRAY8
    SRC=(multifilesrc "location=$tmp/$role/%06d.png" index=0 "stop-index=$((n - 1))"
         caps=image/png,framerate=1/1 ! pngdec ! videoconvert
         ! "video/x-raw,format=(string){GRAY8,GRAY16_LE}")
    SRC_NEED=(pngdec)
  elif [ -r "$path" ]; then
    SRC=(tiffstacksrc "location=$path")
    SRC_NEED=(tiffstacksrc)
  else
    unet_die "cannot read $role data '$path' (a multi-page TIFF or a folder of PNGs)"
  fi
}

source_of "$images" image
img_src=("${SRC[@]}")
need=("${SRC_NEED[@]}")
source_of "$masks" mask
msk_src=("${SRC[@]}")
need+=("${SRC_NEED[@]}" unettrain)
if [ -f "$tmp/image.count" ] && [ -f "$tmp/mask.count" ] &&
   [ "$(cat "$tmp/image.count")" != "$(cat "$tmp/mask.count")" ]; then
  unet_die "$(cat "$tmp/image.count") images but $(cat "$tmp/mask.count") masks"
fi

# preview=false: nobody looks at the src pad here (fakesink), so skip predicting it
train=(unettrain name=train "output-model=$output" "iterations=$iterations"
       "checkpoint-interval=$checkpoint" "mask-mode=$mask_mode" "device=$device" "seed=$seed"
       preview=false)
if [ -n "$init" ]; then
  train+=("model=$init")
else
  train+=("depth=$depth" "base-filters=$base")
fi
[ -n "$lr" ] && train+=("learning-rate=$lr")
[ -n "$optimizer" ] && train+=("optimizer=$optimizer")
[ -n "$tile" ] && train+=("tile-size=$tile")
train+=("${props[@]}")

pipeline=("${train[@]}" ! fakesink sync=false async=false
          "${img_src[@]}" ! queue ! train.image
          "${msk_src[@]}" ! queue ! train.mask)

if [ -n "${UNET_DRY_RUN:-}" ]; then
  echo "gst-launch-1.0 -m ${pipeline[*]}"
  exit 0
fi

unet_ensure_build
unet_require_element "${need[@]}"

echo "$UNET_SCRIPT: training $output ($iterations iterations), log $csv" >&2
start=$(unet_now_ms)
set +e
unet_gst_launch -m "${pipeline[@]}" | "$UNET_PYTHON" "$UNET_ROOT/pipelines/trainlog.py" csv --total "$iterations" > "$csv"
status=("${PIPESTATUS[@]}")
set -e
[ "${status[0]}" -eq 0 ] || unet_die "training failed (gst-launch-1.0 exit ${status[0]}, see above)"
echo "$UNET_SCRIPT: wrote $output in $(unet_elapsed "$start")" >&2
if [ "$plot" != none ] && [ -s "$csv" ]; then
  "$UNET_PYTHON" "$UNET_ROOT/pipelines/trainlog.py" plot "$csv" "$plot" --title "$(basename "$output")" ||
    echo "$UNET_SCRIPT: no plot (see above); the loss log is $csv" >&2
fi
