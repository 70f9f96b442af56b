# Shared helpers for the pipelines/ scripts (sourced, not run).
#
# After sourcing:
#   UNET_ROOT     the source tree
#   UNET_BUILD    the build tree whose plugins are used ($UNET_BUILD_ROOT when set --
#                 meson test sets it -- else $UNET_ROOT/build)
#   UNET_PYTHON   /usr/bin/python3 (Debian's, with numpy/tifffile/matplotlib)
#   GST_PLUGIN_PATH_1_0   has the build tree's plugins (tiffstack, unet) in front
#
#   unet_ensure_build       runs scripts/bootstrap.sh when the build tree has no plugins
#   unet_gst_launch ARGS    gst-launch-1.0 (with the sanitizer runtimes preloaded when
#                           the build is instrumented, as the test environment says;
#                           bounded to $UNET_TIMEOUT seconds when that is set)
#   unet_have_element NAME  true when GStreamer can make element NAME
#   unet_require_element NAME...   exits with an actionable message if one is missing
#   unet_headless           true when there is no display to open a window on
#   unet_die MESSAGE        prints "<script>: MESSAGE" and exits 1

UNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UNET_BUILD=${UNET_BUILD_ROOT:-"$UNET_ROOT/build"}
UNET_PYTHON=/usr/bin/python3
UNET_SCRIPT=$(basename "${BASH_SOURCE[1]:-$0}")

unet_plugin_path() {
  echo "$UNET_BUILD/elements/tiffstack:$UNET_BUILD/elements/unet"
}

case ":${GST_PLUGIN_PATH_1_0:-}:" in
  *":$UNET_BUILD/elements/unet:"*) ;;
  *) export GST_PLUGIN_PATH_1_0="$(unet_plugin_path)${GST_PLUGIN_PATH_1_0:+:$GST_PLUGIN_PATH_1_0}" ;;
esac

unet_die() {
  echo "$UNET_SCRIPT: $*" >&2
  exit 1
}

unet_built() {
  compgen -G "$UNET_BUILD/elements/*/libgst*.so" >/dev/null
}

unet_ensure_build() {
  if ! unet_built; then
    echo "$UNET_SCRIPT: no build in $UNET_BUILD, building it with scripts/bootstrap.sh" >&2
    "$UNET_ROOT/scripts/bootstrap.sh" "$UNET_BUILD" || unet_die "the build failed (see above)"
  fi
}

# gst-launch-1.0 is not instrumented; our plugins are in the ASan/UBSan build, which
# then needs the sanitizer runtimes loaded first (tests/meson.build exports their paths)
unet_with_runtime() {
  if [ -n "${UNET_SANITIZER_PRELOAD:-}" ]; then
    LD_PRELOAD="$UNET_SANITIZER_PRELOAD${LD_PRELOAD:+:$LD_PRELOAD}" "$@"
  else
    "$@"
  fi
}

# UNET_TIMEOUT=SECONDS bounds the run (tests); it then ends with status 124
unet_gst_launch() {
  if [ -n "${UNET_TIMEOUT:-}" ]; then
    unet_with_runtime timeout --kill-after=10 "$UNET_TIMEOUT" gst-launch-1.0 "$@"
  else
    unet_with_runtime gst-launch-1.0 "$@"
  fi
}

unet_gst_inspect() {
  unet_with_runtime gst-inspect-1.0 "$@"
}

unet_have_element() {
  unet_gst_inspect "$1" >/dev/null 2>&1
}

unet_require_element() {
  local e
  for e in "$@"; do
    if ! unet_have_element "$e"; then
      case "$e" in
        aravissrc) unet_die "element 'aravissrc' not found: apt-get install libaravis-0.8-0" ;;
        v4l2src) unet_die "element 'v4l2src' not found: apt-get install gstreamer1.0-plugins-good" ;;
        tiffstack*|unet*) unet_die "element '$e' not found in $UNET_BUILD/elements: run scripts/bootstrap.sh $UNET_BUILD" ;;
        *) unet_die "GStreamer element '$e' not found (gst-inspect-1.0 $e)" ;;
      esac
    fi
  done
}

unet_headless() {
  [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ]
}

# Prints the usage block at the top of the calling script (the comment lines after the
# shebang, up to the first line that is not a comment) without the leading "# ".
unet_usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# Milliseconds since the epoch (for "took N s" lines).
unet_now_ms() {
  echo $(( $(date +%s%N) / 1000000 ))
}

unet_elapsed() {
  local ms=$(( $(unet_now_ms) - $1 ))
  printf '%d.%03d s' $((ms / 1000)) $((ms % 1000))
}

# unet_camera_source SOURCE FRAMES [CAMERA] [V4L2DEVICE]
# Sets UNET_SRC (pipeline words of a live source, before its caps filter) and
# UNET_SRC_NEED (elements it needs). SOURCE: aravis | v4l2 | test; FRAMES -1 = unlimited.
unet_camera_source() {
  local source=$1 frames=$2 camera=${3:-} v4l2dev=${4:-/dev/video0}
  case "$source" in
    aravis)
      UNET_SRC=(aravissrc "num-buffers=$frames")
      [ -n "$camera" ] && UNET_SRC+=("camera-name=$camera")
      UNET_SRC_NEED=(aravissrc) ;;
    v4l2)
      # webcams deliver colour at their own sizes and rates: convert to what is asked
      UNET_SRC=(v4l2src "device=$v4l2dev" "num-buffers=$frames" ! videoconvert ! videoscale ! videorate)
      UNET_SRC_NEED=(v4l2src) ;;
    test)
      UNET_SRC=(videotestsrc is-live=true pattern=ball "num-buffers=$frames")
      UNET_SRC_NEED=() ;;
    *) unet_die "--source must be aravis, v4l2 or test, not '$source'" ;;
  esac
}

# unet_parse_hostport TEXT DEFAULT_HOST -> sets UNET_HOST, UNET_PORT
unet_parse_hostport() {
  local text=$1
  if [[ "$text" =~ ^([^:]+):([0-9]+)$ ]]; then
    UNET_HOST=${BASH_REMATCH[1]}
    UNET_PORT=${BASH_REMATCH[2]}
  elif [[ "$text" =~ ^([0-9]+)$ ]]; then
    UNET_HOST=$2
    UNET_PORT=${BASH_REMATCH[1]}
  else
    unet_die "expected [HOST:]PORT, not '$text'"
  fi
  [ "$UNET_PORT" -ge 1 ] && [ "$UNET_PORT" -le 65535 ] || unet_die "port $UNET_PORT out of range"
}
