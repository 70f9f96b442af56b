#!/usr/bin/env bash
# Installs what is missing (Debian/Ubuntu packages), then configures and builds with
# meson. Safe to run any number of times. Sourced by the README's two commands.
#
#   scripts/bootstrap.sh [BUILD_DIR [extra meson setup args...]]
set -euo pipefail

UNET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${1:-"$UNET_ROOT/build"}
shift || true

PACKAGES=(
  gcc g++ pkg-config meson ninja-build
  libglib2.0-dev libjson-glib-dev
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  libtiff-dev libtiff-tools libdnnl-dev
  python3 python3-numpy python3-scipy python3-tifffile python3-torch python3-pil python3-matplotlib
  python3-skimage
  libaravis-0.8-0 aravis-tools gstreamer1.0-plugins-bad iproute2
  valgrind
  slurm-wlm munge procps
  python3-gi gir1.2-gstreamer-1.0
  imagej xvfb xauth
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "gst-unet: installing missing packages: ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [ -f "$BUILD_DIR/build.ninja" ]; then
  meson setup --reconfigure "$BUILD_DIR" "$UNET_ROOT" "$@" >/dev/null
else
  meson setup "$BUILD_DIR" "$UNET_ROOT" "$@" >&2
fi
ninja -C "$BUILD_DIR" >&2
