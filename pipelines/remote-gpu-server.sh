#!/usr/bin/env bash
# GPU server side of remote segmentation: receives frames over TCP, segments them and
# writes the results as a TIFF stack.
#
#   pipelines/remote-gpu-server.sh [options]
#
# Frames arrive as GDP-serialised GStreamer buffers (caps and timestamps included) from
# pipelines/remote-acquire.sh. By default this side listens (tcpserversrc) and one
# acquisition PC connects; the stream (and this script) ends when it disconnects. With
# --connect it pulls from an acquisition PC started with remote-acquire.sh --serve.
#
#   TCP -> gdpdepay -> queue -> unetsegment -> tiffstacksink (one page per frame)
#
# Options:
#       --listen [HOST:]PORT  listen for the acquisition PC (default 0.0.0.0:5000)
#       --connect HOST:PORT   connect to an acquisition PC that serves frames
#   -m, --model FILE          model (default samples/nuclei-model.safetensors)
#   -d, --device DEV          auto | cpu | cuda  (default auto)
#       --mode MODE           labels | probabilities | instances  (default labels)
#   -o, --output FILE         result stack (default remote-<date>-<time>.tif)
#       --passthrough         no segmentation: write the received raw frames (checks
#                             the link and the camera settings before a model is loaded)
#   -p, --property P=V        any other unetsegment property (repeatable)
#   -h, --help                this text
#
# Example:
#   pipelines/remote-gpu-server.sh --listen 5000 -d cuda -m model.safetensors -o run1-labels.tif
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

listen=0.0.0.0:5000
connect=""
model="$UNET_ROOT/samples/nuclei-model.safetensors"
device=auto
mode=labels
output="remote-$(date +%Y%m%d-%H%M%S).tif"
passthrough=0
props=()

while [ $# -gt 0 ]; do
  case "$1" in
    --listen) listen=${2:?}; shift 2 ;;
    --connect) connect=${2:?}; shift 2 ;;
    -m|--model) model=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    --mode) mode=${2:?}; shift 2 ;;
    -o|--output) output=${2:?}; shift 2 ;;
    --passthrough) passthrough=1; shift ;;
    -p|--property) props+=("${2:?}"); shift 2 ;;
    -h|--help) unet_usage; exit 0 ;;
    *) unet_die "unknown argument $1 (see --help)" ;;
  esac
done

case "$device" in auto|cpu|cuda) ;; *) unet_die "--device must be auto, cpu or cuda" ;; esac
case "$mode" in labels|probabilities|instances) ;; *) unet_die "--mode must be labels, probabilities or instances" ;; esac
if [ "$passthrough" -eq 0 ] && [ ! -r "$model" ]; then
  unet_die "cannot read model '$model' (pass -m, or --passthrough to check the link)"
fi

if [ -n "$connect" ]; then
  unet_parse_hostport "$connect" 127.0.0.1
  net=(tcpclientsrc "host=$UNET_HOST" "port=$UNET_PORT")
  where="connecting to $UNET_HOST:$UNET_PORT"
else
  unet_parse_hostport "$listen" 0.0.0.0
  net=(tcpserversrc "host=$UNET_HOST" "port=$UNET_PORT")
  where="listening on $UNET_HOST:$UNET_PORT"
fi

need=(tiffstacksink)
if [ "$passthrough" -eq 1 ]; then
  work=()
else
  work=(unetsegment name=seg "model=$model" "device=$device" "output=$mode" "${props[@]}" !)
  need+=(unetsegment)
fi
pipeline=("${net[@]}" ! gdpdepay ! queue max-size-buffers=4 max-size-bytes=0 max-size-time=0
          ! "${work[@]}" tiffstacksink "location=$output")

if [ -n "${UNET_DRY_RUN:-}" ]; then
  echo "gst-launch-1.0 -e ${pipeline[*]}"
  exit 0
fi

unet_ensure_build
unet_require_element "${need[@]}"
echo "$UNET_SCRIPT: $where, writing $output" >&2
start=$(unet_now_ms)
unet_gst_launch -e "${pipeline[@]}"
echo "$UNET_SCRIPT: stream ended after $(unet_elapsed "$start"), wrote $output" >&2
