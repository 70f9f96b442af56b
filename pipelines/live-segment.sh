#!/usr/bin/env bash
# Live segmentation of a camera stream, with every raw frame recorded to a TIFF stack.
#
#   pipelines/live-segment.sh [options]
#
#   camera -> tee -> queue (leaky, 2 frames) -> unetsegment output=overlay -> display
#              \--> queue (bounded, never leaky) -> tiffstacksink (every raw frame)
#
# When segmentation is slower than the camera, the leaky queue drops frames for the
# display branch only; the recording branch keeps them all. Stop with Ctrl-C: the
# pipeline is drained (EOS) so the TIFF is complete. At the end it prints how many
# frames were recorded and how many segmented. Without a display (no $DISPLAY or
# $WAYLAND_DISPLAY) the overlay goes to a fakesink.
#
# Options:
#   -s, --source SRC        aravis | v4l2 | test  (default test: videotestsrc stand-in)
#   -c, --camera NAME       aravis camera name, e.g. Aravis-Fake-GV01 (default: first found)
#       --v4l2-device DEV   v4l2 device (default /dev/video0)
#   -f, --format FMT        GRAY8 | GRAY16_LE  (default GRAY8; Mono8 / Mono16 on GigE)
#       --size WxH          frame size (default 512x512)
#       --fps N             frame rate (default 25)
#   -n, --frames N          stop after N frames (default: run until Ctrl-C)
#   -m, --model FILE        model (default samples/nuclei-model.safetensors)
#   -d, --device DEV        auto | cpu | cuda  (default auto)
#   -w, --watch-model       reload the model whenever its file is replaced, without
#                           stopping the stream: run pipelines/train.sh -i MODEL ... MODEL
#                           next to it and every checkpoint goes live
#   -r, --record FILE       raw recording (default live-<date>-<time>.tif; "none" = off)
#       --no-segment        record (and display raw) only, no model needed
#       --sink SINK         display sink (default autovideosink, fakesink when headless)
#       --stats FILE.csv    per-frame statistics of the segmented frames (object count,
#                           timing; unetsegment's "unetsegment-stats" messages)
#   -p, --property P=V      any other unetsegment property (repeatable)
#   -h, --help              this text
#
# Examples:
#   pipelines/live-segment.sh                                   # test pattern, 25 fps
#   pipelines/live-segment.sh -s aravis -f GRAY16_LE -r run1.tif
#   tests/live/netns-camera.sh pipelines/live-segment.sh -s aravis -n 50   # simulator
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

source=test
camera=""
v4l2dev=/dev/video0
format=GRAY8
size=512x512
fps=25
frames=-1
model="$UNET_ROOT/samples/nuclei-model.safetensors"
device=auto
record="live-$(date +%Y%m%d-%H%M%S).tif"
segment=1
sink=""
stats=""
watch=false
props=()

while [ $# -gt 0 ]; do
  case "$1" in
    -s|--source) source=${2:?}; shift 2 ;;
    -c|--camera) camera=${2:?}; shift 2 ;;
    --v4l2-device) v4l2dev=${2:?}; shift 2 ;;
    -f|--format) format=${2:?}; shift 2 ;;
    --size) size=${2:?}; shift 2 ;;
    --fps) fps=${2:?}; shift 2 ;;
    -n|--frames) frames=${2:?}; shift 2 ;;
    -m|--model) model=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    -r|--record) record=${2:?}; shift 2 ;;
    --no-segment) segment=0; shift ;;
    --sink) sink=${2:?}; shift 2 ;;
    --stats) stats=${2:?}; shift 2 ;;
    -w|--watch-model) watch=true; shift ;;
    -p|--property) props+=("${2:?}"); shift 2 ;;
    -h|--help) unet_usage; exit 0 ;;
    *) unet_die "unknown argument $1 (see --help)" ;;
  esac
done

case "$format" in GRAY8|GRAY16_LE) ;; *) unet_die "--format must be GRAY8 or GRAY16_LE" ;; esac
[[ "$size" =~ ^([0-9]+)x([0-9]+)$ ]] || unet_die "--size must be WxH, e.g. 512x512"
width=${BASH_REMATCH[1]}
height=${BASH_REMATCH[2]}
[[ "$fps" =~ ^[0-9]+$ ]] && [ "$fps" -gt 0 ] || unet_die "--fps must be a positive integer"
[[ "$frames" =~ ^-?[0-9]+$ ]] || unet_die "--frames must be a number"
case "$device" in auto|cpu|cuda) ;; *) unet_die "--device must be auto, cpu or cuda" ;; esac
if [ "$segment" -eq 1 ] && [ ! -r "$model" ]; then
  unet_die "cannot read model '$model' (pass -m, or --no-segment to only record)"
fi
if [ -z "$sink" ]; then
  if unet_headless; then sink=fakesink; else sink=autovideosink; fi
fi

caps="video/x-raw,format=$format,width=$width,height=$height,framerate=$fps/1"
unet_camera_source "$source" "$frames" "$camera" "$v4l2dev"
src=("${UNET_SRC[@]}")
need=("${UNET_SRC_NEED[@]}")

display=(videoconvert ! "$sink" sync=false)
if [ "$segment" -eq 1 ]; then
  seg_branch=(queue name=segq leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0
              ! unetsegment name=seg "model=$model" "device=$device" output=overlay
                post-messages=true "watch-model=$watch" "${props[@]}"
              ! "${display[@]}")
  need+=(unetsegment)
else
  seg_branch=(queue name=segq leaky=downstream max-size-buffers=2 max-size-bytes=0 max-size-time=0
              ! "${display[@]}")
fi
if [ "$record" != none ]; then
  # bounded (1 GiB) but not leaky: a slow disk back-pressures the camera instead of
  # losing frames silently or growing without limit
  rec_branch=(t. ! queue name=recq max-size-buffers=0 max-size-time=0 max-size-bytes=1073741824
              ! tiffstacksink "location=$record")
  need+=(tiffstacksink)
else
  rec_branch=()
fi

pipeline=("${src[@]}" ! "$caps" ! tee name=t t. ! "${seg_branch[@]}" "${rec_branch[@]}")

if [ -n "${UNET_DRY_RUN:-}" ]; then
  echo "gst-launch-1.0 -e ${pipeline[*]}"
  exit 0
fi

unet_ensure_build
[ ${#need[@]} -gt 0 ] && unet_require_element "${need[@]}"

echo "$UNET_SCRIPT: $source camera, $format ${width}x$height @ $fps fps$([ "$record" != none ] && echo ", recording to $record")" >&2
start=$(unet_now_ms)
if [ "$segment" -eq 1 ]; then
  tmp_stats=""
  if [ -z "$stats" ]; then
    tmp_stats=$(mktemp)
    stats=$tmp_stats
  fi
  set +e
  unet_gst_launch -e -m "${pipeline[@]}" |
    "$UNET_PYTHON" "$UNET_ROOT/pipelines/trainlog.py" csv --quiet --message unetsegment-stats \
      > "$stats"
  status=("${PIPESTATUS[@]}")
  set -e
  segmented=$(($(wc -l < "$stats") - 1))
  [ "$segmented" -lt 0 ] && segmented=0
  [ -n "$tmp_stats" ] && rm -f "$tmp_stats"
  [ "${status[0]}" -eq 0 ] || unet_die "the pipeline failed (see above)"
else
  unet_gst_launch -e "${pipeline[@]}"
fi
summary="stopped after $(unet_elapsed "$start")"
if [ "$record" != none ] && [ -r "$record" ]; then
  pages=$("$UNET_PYTHON" -c 'import sys, tifffile; print(len(tifffile.TiffFile(sys.argv[1]).pages))' "$record")
  summary+=", $pages frames recorded in $record"
  [ "$segment" -eq 1 ] && summary+=", $segmented segmented ($((pages - segmented)) dropped by the display branch)"
elif [ "$segment" -eq 1 ]; then
  summary+=", $segmented frames segmented"
fi
echo "$UNET_SCRIPT: $summary" >&2
