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
  unet_gst_inspect --exists "$1" 2>/dev/null
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
# shebang up to the first blank line) with the leading "# " removed.
unet_usage() {
  sed -n '2,/^$/{/^#/!d;s/^# \{0,1\}//;p}' "$0"
}
