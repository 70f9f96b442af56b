#!/bin/bash
# Packs a CUDA build for the GPU machine, which has a driver, CUDA 13, PyTorch (with its
# cuDNN 9), meson and ninja but none of the Debian libraries (GLib, GStreamer, libtiff,
# json-glib, oneDNN). Our adapted copy of ../shared/gpu/pack.sh (read its README first);
# what changed and why:
#   - it works where .git/info/ does not exist (the shared script's exclude step failed
#     there; /.gpu/ and /build*/ are in .gitignore anyway);
#   - the carry must stay under 64 MiB: the build directory is not carried as it is
#     (objects, static libraries, debug info and generated sample stacks made it ~46 MiB)
#     but as .gpu/build.tar.xz: stripped binaries, no *.o/*.a/*.d, no samples/*.tif, no
#     logs; the libraries are stripped and compressed the same way (.gpu/lib.tar.xz);
#     .gpu/env.sh unpacks both on first use. Carry only ".gpu".
#   - the binaries and meson's test setup hold absolute paths of this checkout
#     (/work/main/...); env.sh links that path to the tree on the GPU machine when it
#     does not exist there, so `meson test --no-rebuild` and the tools' data paths work.
#
# usage (from the project's root, after building):
#   meson setup build-gpu -Dcuda=enabled && ninja -C build-gpu
#   scripts/gpu-pack.sh build-gpu [FILE...]
# then on the GPU machine, from the same root (run tool, carry [".gpu"]):
#   source .gpu/env.sh && scripts/gpu-run.sh build-gpu
set -euo pipefail
build=${1:?usage: scripts/gpu-pack.sh BUILD_DIR [FILE...]}
shift || true
build=${build%/}
[ -f "$build/build.ninja" ] || { echo "$build is not a meson build directory" >&2; exit 1; }
root=$(pwd -P)
out=.gpu
limit_mib=60                    # the run tool carries 64 MiB; leave room for the tree

mkdir -p "$(git rev-parse --git-path info)"
grep -qx '/.gpu/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
  || echo '/.gpu/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out" "$stage/lib" "$stage/bin" "$stage/gst-plugins" "$stage/build"

# --- the build directory, slimmed (a copy: the development build stays intact) ---
tar -C "$build" \
  --exclude='*.o' --exclude='*.a' --exclude='*.d' --exclude='*.tif' \
  --exclude='meson-logs' --exclude='.ninja_log' --exclude='__pycache__' \
  -cf - . | tar -C "$stage/build" -xf -
is_elf () { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' \n')" = '177ELF' ]; }
objs=()
while IFS= read -r f; do
  if is_elf "$f"; then
    strip --strip-unneeded "$f" 2>/dev/null || true
    objs+=("$f")
  fi
done < <(find "$stage/build" -type f \( -perm -u+x -o -name '*.so' \))

# --- GStreamer tools and the stock plugins pipelines use ---
gstlib=/usr/lib/x86_64-linux-gnu/gstreamer-1.0
for tool in gst-launch-1.0 gst-inspect-1.0; do
  cp -L "$(command -v $tool)" "$stage/bin/"; objs+=("$stage/bin/$tool")
done
scanner=$(find /usr/lib/x86_64-linux-gnu/gstreamer1.0 -name gst-plugin-scanner | head -1)
if [ -n "$scanner" ]; then cp -L "$scanner" "$stage/bin/"; objs+=("$stage/bin/gst-plugin-scanner"); fi
for p in coreelements videotestsrc videoconvertscale videorate app png multifile debugutilsbad tcp gdp; do
  f=$gstlib/libgst$p.so
  if [ -f "$f" ]; then cp -L "$f" "$stage/gst-plugins/"; objs+=("$stage/gst-plugins/libgst$p.so"); fi
done
for f in "$@"; do cp -L "$f" "$stage/bin/"; objs+=("$stage/bin/$(basename "$f")"); done

# --- every shared library those need, except glibc's, CUDA's own, and the compiler
# runtime and zlib/libffi the GPU image has in newer versions: a carried (older) Debian
# libstdc++ / libgcc_s / libgomp / libz / libffi would be found first (env.sh puts the
# carried libraries first) and shadow the image's for every process, PyTorch included ---
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread|librt\.so|libcuda|libcudart|libcudnn|libcublas|libnvrtc|libnvJitLink|libcurand|libcufft|libnccl|libstdc\+\+|libgcc_s|libgomp|libz\.so|libffi)'
for f in "${objs[@]}"; do
  ldd "$f" 2>/dev/null | awk '/=> \//{print $1" "$3}' | while read -r name path; do
    [[ $name =~ $skip ]] && continue
    [ -e "$stage/lib/$name" ] || { cp -L "$path" "$stage/lib/$name"; strip --strip-unneeded "$stage/lib/$name" 2>/dev/null || true; }
  done
done
for f in "$stage"/bin/* "$stage"/gst-plugins/*; do strip --strip-unneeded "$f" 2>/dev/null || true; done

# --- compress (xz -9: the GPU machine unpacks once, in seconds) ---
XZ_OPT=-9e tar -C "$stage" -cJf "$out/lib.tar.xz" lib bin gst-plugins
XZ_OPT=-9e tar -C "$stage/build" -cJf "$out/build.tar.xz" .
printf '%s\n' "$build" > "$out/build-dir"
printf '%s\n' "$root" > "$out/source-root"

cat > "$out/env.sh" <<'ENV'
# source .gpu/env.sh on the GPU machine, from the project's root (written by scripts/gpu-pack.sh)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd -P)
build=$(cat "$here/build-dir")
# unpack once: the carried libraries/tools and the slimmed build directory
[ -d "$here/lib" ] || tar -C "$here" -xJf "$here/lib.tar.xz"
[ -f "$root/$build/build.ninja" ] || { mkdir -p "$root/$build" && tar -C "$root/$build" -xJf "$here/build.tar.xz"; }
# carry only what the image lacks: a carried (Debian) copy of a library the image has
# would shadow the image's, for every process; drop those once, and say which
if [ ! -f "$here/lib/.pruned" ]; then
  have=$( (ldconfig -p 2>/dev/null || /sbin/ldconfig -p 2>/dev/null) | awk '{print $1}')
  for f in "$here"/lib/*.so*; do
    n=$(basename "$f")
    if printf '%s\n' "$have" | grep -qxF "$n"; then rm -f "$f"; echo "$n" >> "$here/lib/.pruned"; fi
  done
  touch "$here/lib/.pruned"
  echo "gpu env: using the image's own $(wc -l < "$here/lib/.pruned") of the carried libraries: $(tr '\n' ' ' < "$here/lib/.pruned")"
fi
# binaries and meson's test setup name the packing checkout's absolute path
src=$(cat "$here/source-root")
if [ "$src" != "$root" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$root" "$src"; fi
# PyTorch's Python (the image's /opt/torch/.venv when python3 on PATH is another)
[ -x /opt/torch/.venv/bin/python3 ] && ! python3 -c 'import torch' 2>/dev/null \
  && export PATH="/opt/torch/.venv/bin:$PATH"
cudnn=$(python3 -c 'import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], "lib"))' 2>/dev/null || true)
if [ -z "$cudnn" ]; then
  # PyTorch wheels that bundle cuDNN inside torch/lib
  cudnn=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
fi
export LD_LIBRARY_PATH="$here/lib${cudnn:+:$cudnn}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$here/bin:$PATH"
export GST_PLUGIN_SYSTEM_PATH_1_0="$here/gst-plugins"
export GST_PLUGIN_SCANNER_1_0="$here/bin/gst-plugin-scanner"
export GST_REGISTRY_1_0=/tmp/gst-registry.bin
export GST_PLUGIN_PATH_1_0="$root/$build/elements/unet:$root/$build/elements/tiffstack"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
ENV

size_kib=$(du -sk "$out" | cut -f1)
echo "packed $(ls "$stage/lib" | wc -l) libraries and $build into $out: $((size_kib / 1024)) MiB (carry [\".gpu\"])"
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "$out is over $limit_mib MiB: the run tool will refuse it" >&2
  exit 1
fi
