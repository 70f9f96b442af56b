#!/usr/bin/env bash
# Acquisition PC side of remote segmentation: streams camera frames to a GPU server.
#
#   pipelines/remote-acquire.sh [options]
#
# Frames travel as GStreamer buffers with their caps and timestamps (GDP, gdppay) over
# TCP -- no home-made protocol. By default this side connects to a server started with
# pipelines/remote-gpu-server.sh (tcpclientsink); with --serve it listens instead
# (tcpserversink) and servers connect with remote-gpu-server.sh --connect.
#
#   camera -> tee -> queue (leaky, N frames) -> gdppay -> TCP      (may drop if the link stalls)
#              \--> queue -> tiffstacksink     (--record: every raw frame kept locally)
#
# Options:
#       --server HOST:PORT  GPU server to send to (default 127.0.0.1:5000)
#       --serve [HOST:]PORT listen here instead; servers connect (HOST default 0.0.0.0)
#   -s, --source SRC        aravis | v4l2 | test  (default test: videotestsrc stand-in)
#   -c, --camera NAME       aravis camera name (default: first found)
#       --v4l2-device DEV   v4l2 device (default /dev/video0)
#   -f, --format FMT        GRAY8 | GRAY16_LE  (default GRAY8)
#       --size WxH          frame size (default 512x512)
#       --fps N             frame rate (default 25)
#   -n, --frames N          stop after N frames (default: until Ctrl-C)
#       --queue N           frames buffered for the network before dropping (default 8)
#   -r, --record FILE       also record every raw frame locally (TIFF stack)
#   -h, --help              this text
#
# Example (two terminals; on one machine, 127.0.0.1):
#   pipelines/remote-gpu-server.sh --listen 5000 -m model.safetensors -o labels.tif
#   pipelines/remote-acquire.sh --server gpu-host:5000 -s aravis -f GRAY16_LE
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

server=127.0.0.1:5000
serve=""
source=test
camera=""
v4l2dev=/dev/video0
format=GRAY8
size=512x512
fps=25
frames=-1
qlen=8
record=""

while [ $# -gt 0 ]; do
  case "$1" in
    --server) server=${2:?}; shift 2 ;;
    --serve) serve=${2:?}; shift 2 ;;
    -s|--source) source=${2:?}; shift 2 ;;
    -c|--camera) camera=${2:?}; shift 2 ;;
    --v4l2-device) v4l2dev=${2:?}; shift 2 ;;
    -f|--format) format=${2:?}; shift 2 ;;
    --size) size=${2:?}; shift 2 ;;
    --fps) fps=${2:?}; shift 2 ;;
    -n|--frames) frames=${2:?}; shift 2 ;;
    --queue) qlen=${2:?}; shift 2 ;;
    -r|--record) record=${2:?}; shift 2 ;;
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
[[ "$qlen" =~ ^[0-9]+$ ]] && [ "$qlen" -gt 0 ] || unet_die "--queue must be a positive integer"

unet_camera_source "$source" "$frames" "$camera" "$v4l2dev"
need=("${UNET_SRC_NEED[@]}")
caps="video/x-raw,format=$format,width=$width,height=$height,framerate=$fps/1"

if [ -n "$serve" ]; then
  unet_parse_hostport "$serve" 0.0.0.0
  # a lagging client is resynchronised to the newest frame instead of queueing forever
  net=(tcpserversink "host=$UNET_HOST" "port=$UNET_PORT" sync=false
       recover-policy=latest "units-soft-max=$qlen" "units-max=$((qlen * 4))")
  where="serving on $UNET_HOST:$UNET_PORT"
else
  unet_parse_hostport "$server" 127.0.0.1
  net=(tcpclientsink "host=$UNET_HOST" "port=$UNET_PORT" sync=false)
  where="sending to $UNET_HOST:$UNET_PORT"
fi
send=(queue name=netq leaky=downstream "max-size-buffers=$qlen" max-size-bytes=0 max-size-time=0
      ! gdppay ! "${net[@]}")

if [ -n "$record" ]; then
  pipeline=("${UNET_SRC[@]}" ! "$caps" ! tee name=t
            t. ! "${send[@]}"
            t. ! queue name=recq max-size-buffers=0 max-size-time=0 max-size-bytes=1073741824
            ! tiffstacksink "location=$record")
  need+=(tiffstacksink)
else
  pipeline=("${UNET_SRC[@]}" ! "$caps" ! "${send[@]}")
fi

if [ -n "${UNET_DRY_RUN:-}" ]; then
  echo "gst-launch-1.0 -e ${pipeline[*]}"
  exit 0
fi

unet_ensure_build
[ ${#need[@]} -gt 0 ] && unet_require_element "${need[@]}"
echo "$UNET_SCRIPT: $source camera, $format ${width}x$height @ $fps fps, $where" >&2
start=$(unet_now_ms)
unet_gst_launch -e "${pipeline[@]}"
echo "$UNET_SCRIPT: stopped after $(unet_elapsed "$start")" >&2
