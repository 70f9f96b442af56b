#!/usr/bin/env bash
# Short end-to-end runs of the pipelines/ scripts on generated data.
#
#   tests/samples/pipeline-test.sh CASE
#
# CASE: help | trainlog | live-test | live-segment | live-reload | live-aravis | live-segment-aravis |
#       watch-aravis | remote | remote-serve | remote-segment | segment-stack | train
# Every case makes its own data (samples/synth.py, a random model from the PyTorch
# reference) in a temporary directory and checks what the script wrote: page counts,
# pixel types and values. Network cases use 127.0.0.1 only (live-aravis runs inside
# tests/live/netns-camera.sh's loopback-only namespace).
set -euo pipefail

ROOT=${UNET_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
. "$ROOT/pipelines/lib.sh"
P="$ROOT/pipelines"
export UNET_TIMEOUT=${UNET_TIMEOUT:-60}

tmp=$(mktemp -d)
bg_pid=""
cleanup() {
  if [ -n "$bg_pid" ] && kill -0 "$bg_pid" 2>/dev/null; then
    kill "$bg_pid" 2>/dev/null
    wait "$bg_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# check_stack FILE PAGES DTYPE [MAXVALUE]: page count, pixel type, optional value bound
check_stack() {
  "$UNET_PYTHON" - "$@" <<'PY' || fail "stack check of $1"
import sys, numpy as np, tifffile
path, pages, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with tifffile.TiffFile(path) as t:
    n = len(t.pages)
    a = t.asarray(key=range(n)) if n else None
assert n == pages, f"{path}: {n} pages, expected {pages}"
assert a.dtype == np.dtype(dtype), f"{path}: {a.dtype}, expected {dtype}"
if len(sys.argv) > 4:
    assert a.max() <= int(sys.argv[4]), f"{path}: max {a.max()} > {sys.argv[4]}"
print(f"{path}: {n} pages {a.shape[1:]} {a.dtype}")
PY
}

free_port() {
  "$UNET_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_listen() {   # wait_listen PORT: until something listens on 127.0.0.1:PORT (TCP)
  for _ in $(seq 1 200); do
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q 127.0.0.1 && return 0
    sleep 0.05
  done
  fail "nothing listens on 127.0.0.1:$1 after 10 s"
}

random_model() {  # random_model FILE: tiny valid-padded U-Net (depth 2, 4 filters)
  "$UNET_PYTHON" - "$1" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ.get("UNET_SOURCE_ROOT", "."), "tests", "reference"))
import unet_ref as u
u.save_model(u.random_model(u.make_config(depth=2, base_filters=4), seed=3), sys.argv[1])
PY
}

case "${1:-}" in
  help)
    for s in segment-stack segment-cluster live-segment remote-acquire remote-gpu-server train; do
      "$P/$s.sh" --help > "$tmp/help" || fail "$s.sh --help failed"
      grep -q '^Options:' "$tmp/help" || fail "$s.sh --help has no Options section"
      if "$P/$s.sh" --no-such-option >"$tmp/out" 2>&1; then
        fail "$s.sh accepted an unknown option"
      fi
      grep -q "$s.sh: unknown" "$tmp/out" || fail "$s.sh: no message for an unknown option"
    done
    # argument checks fail early with a message naming the problem
    "$P/segment-stack.sh" -d gpu x.tif 2>"$tmp/out" && fail "accepted --device gpu"
    grep -q -- "--device must be" "$tmp/out" || fail "no message for a bad --device"
    "$P/live-segment.sh" --no-segment --size 12 2>"$tmp/out" && fail "accepted --size 12"
    grep -q -- "--size must be" "$tmp/out" || fail "no message for a bad --size"
    echo "help and argument checks: ok"
    ;;

  trainlog)
    cat > "$tmp/launch.txt" <<'EOF'
Setting pipeline to PLAYING ...
Got message #7 from element "train" (element): unettrain-progress, iteration=(int)10, loss=(double)0.5, dice=(double)0.25;
Got message #8 from element "train" (element): unettrain-checkpoint, iteration=(int)10, location=(string)/tmp/x;
Got message #9 from element "train" (element): unettrain-progress, iteration=(int)20, loss=(double)0.125, dice=(double)0.75;
EOF
    "$UNET_PYTHON" "$P/trainlog.py" csv < "$tmp/launch.txt" > "$tmp/loss.csv" 2>"$tmp/err"
    printf 'iteration,loss,dice\n10,0.5,0.25\n20,0.125,0.75\n' | cmp - "$tmp/loss.csv" || fail "CSV differs"
    grep -q "unettrain-checkpoint" "$tmp/err" || fail "other messages not passed through"
    if "$UNET_PYTHON" -c 'import matplotlib' 2>/dev/null; then
      "$UNET_PYTHON" "$P/trainlog.py" plot "$tmp/loss.csv" "$tmp/loss.png"
      "$UNET_PYTHON" -c 'import sys; from PIL import Image; im = Image.open(sys.argv[1]); assert im.size[0] > 300, im.size' "$tmp/loss.png" ||
        fail "plot is not a PNG"
    fi
    "$UNET_PYTHON" "$P/trainlog.py" csv < /dev/null > /dev/null 2>&1 && fail "no messages must be an error"
    echo "trainlog: ok"
    ;;

  live-test)
    # videotestsrc as the camera, no model: every frame recorded
    "$P/live-segment.sh" -s test --no-segment --sink fakesink -n 20 --fps 200 --size 96x64 \
      -f GRAY16_LE -r "$tmp/rec.tif"
    check_stack "$tmp/rec.tif" 20 uint16
    ;;

  live-segment)
    # camera stand-in faster than the model: the segmentation branch may drop frames,
    # the recording may not
    random_model "$tmp/m.safetensors"
    "$P/live-segment.sh" -s test -m "$tmp/m.safetensors" -d cpu --sink fakesink -n 40 \
      --fps 200 --size 128x96 -f GRAY16_LE -r "$tmp/rec.tif" --stats "$tmp/stats.csv" 2>"$tmp/err"
    check_stack "$tmp/rec.tif" 40 uint16
    seg=$(($(wc -l < "$tmp/stats.csv") - 1))
    [ "$seg" -ge 1 ] && [ "$seg" -le 40 ] || fail "$seg frames segmented, expected 1..40"
    grep -q "40 frames recorded in .*, $seg segmented" "$tmp/err" || fail "no summary line"
    ;;

  live-reload)
    # --watch-model: a new model file written next to the running stream (as a training
    # pipeline's checkpoints are: temporary name, then rename) is swapped in live
    random_model "$tmp/m.safetensors"
    cp "$tmp/m.safetensors" "$tmp/next.safetensors"
    "$P/live-segment.sh" -s test -m "$tmp/m.safetensors" -w -d cpu --sink fakesink -n 150 \
      --fps 50 --size 64x48 -r none 2>"$tmp/err" &
    bg_pid=$!
    sleep 1.5
    mv "$tmp/next.safetensors" "$tmp/m.safetensors"
    wait "$bg_pid" || { cat "$tmp/err" >&2; fail "live-segment failed"; }
    bg_pid=""
    grep -q "unetsegment-model-swapped" "$tmp/err" || { cat "$tmp/err" >&2; fail "model not swapped in"; }
    echo "model swapped while streaming: ok"
    ;;

  live-segment-aravis)
    random_model "$tmp/m.safetensors"
    "$P/live-segment.sh" -s aravis -c Aravis-Fake-GV01 -m "$tmp/m.safetensors" -d cpu \
      --sink fakesink -n 40 --fps 100 --size 128x96 -f GRAY8 -r "$tmp/rec.tif"
    check_stack "$tmp/rec.tif" 40 uint8
    ;;

  remote-segment)
    random_model "$tmp/m.safetensors"
    port=$(free_port)
    "$P/remote-gpu-server.sh" --listen "127.0.0.1:$port" -m "$tmp/m.safetensors" -d cpu \
      --mode labels -o "$tmp/labels.tif" &
    bg_pid=$!
    wait_listen "$port"
    "$P/remote-acquire.sh" --server "127.0.0.1:$port" -s test -n 10 --fps 50 --size 80x60 \
      -f GRAY16_LE
    wait "$bg_pid" || fail "server exited with an error"
    bg_pid=""
    # the link itself is lossless (tcpclientsink blocks, the leaky queue only drops when
    # the network stalls for 8 frames): every frame is segmented
    check_stack "$tmp/labels.tif" 10 uint8 1
    ;;

  watch-aravis)
    # samples/unet-live-watch reacts to the object count: with threshold 0 the first
    # frame with an object crosses it (this random model finds dozens in the
    # simulator's pattern) and the camera's exposure is set through aravissrc
    random_model "$tmp/m.safetensors"
    "$UNET_BUILD/samples/unet-live-watch" -m "$tmp/m.safetensors" -s aravis \
      -c Aravis-Fake-GV01 -d cpu -n 10 --fps 50 -t 0 -e 5000 > "$tmp/out"
    cat "$tmp/out"
    grep -q "crossed the threshold 0" "$tmp/out" || fail "no threshold crossing reported"
    grep -q "reads back 5000 us" "$tmp/out" || fail "camera exposure not changed"
    grep -q "^[1-9][0-9]* frames segmented, 1 threshold crossing" "$tmp/out" || fail "summary"
    ;;

  live-aravis)
    # the GigE Vision simulator through aravissrc (run inside tests/live/netns-camera.sh)
    "$P/live-segment.sh" -s aravis -c Aravis-Fake-GV01 --no-segment --sink fakesink -n 15 \
      --fps 100 --size 128x96 -f GRAY16_LE -r "$tmp/rec.tif"
    check_stack "$tmp/rec.tif" 15 uint16
    ;;

  remote)
    port=$(free_port)
    "$P/remote-gpu-server.sh" --listen "127.0.0.1:$port" --passthrough -o "$tmp/rx.tif" &
    bg_pid=$!
    wait_listen "$port"
    "$P/remote-acquire.sh" --server "127.0.0.1:$port" -s test -n 12 --fps 200 --size 80x60 \
      -r "$tmp/local.tif"
    wait "$bg_pid" || fail "server exited with an error"
    bg_pid=""
    check_stack "$tmp/rx.tif" 12 uint8
    check_stack "$tmp/local.tif" 12 uint8
    ;;

  remote-serve)
    # the acquisition side serves; the server connects later and gets what follows
    # (3 s of frames: room for a slow start of the server on a loaded machine)
    port=$(free_port)
    "$P/remote-acquire.sh" --serve "127.0.0.1:$port" -s test -n 300 --fps 100 --size 80x60 &
    bg_pid=$!
    wait_listen "$port"
    "$P/remote-gpu-server.sh" --connect "127.0.0.1:$port" --passthrough -o "$tmp/rx.tif"
    wait "$bg_pid" || fail "acquisition exited with an error"
    bg_pid=""
    "$UNET_PYTHON" -c '
import sys, tifffile
n = len(tifffile.TiffFile(sys.argv[1]).pages)
assert 1 <= n <= 300, n
print(f"received {n} of 300 frames (those sent after connecting)")' "$tmp/rx.tif" || fail "page count"
    ;;

  segment-stack)
    "$UNET_PYTHON" "$ROOT/samples/synth.py" --kind nuclei --frames 3 --size 96x80 --seed 4 \
      --out-image "$tmp/in.tif" --out-mask "$tmp/gt.tif"
    random_model "$tmp/m.safetensors"
    "$P/segment-stack.sh" -m "$tmp/m.safetensors" -d cpu -s "$tmp/stats.csv" "$tmp/in.tif" "$tmp/labels.tif"
    check_stack "$tmp/labels.tif" 3 uint8 1
    [ "$(tail -n +2 "$tmp/stats.csv" | wc -l)" -eq 3 ] || fail "expected 3 rows of per-frame stats"
    head -1 "$tmp/stats.csv" | grep -q object-count || fail "no object-count column in the stats"
    "$P/segment-stack.sh" -q -m "$tmp/m.safetensors" -d cpu -o overlay "$tmp/in.tif" "$tmp/ov-%02d.png"
    [ "$(find "$tmp" -name 'ov-*.png' | wc -l)" -eq 3 ] || fail "expected 3 overlay PNGs"
    "$UNET_PYTHON" "$ROOT/tests/bench/isbi_eval.py" --kind nuclei "$tmp/labels.tif" "$tmp/gt.tif" >/dev/null ||
      fail "isbi_eval.py could not read the labels"
    ;;

  train)
    "$UNET_PYTHON" "$ROOT/samples/synth.py" --kind nuclei --frames 2 --size 96x96 --seed 5 \
      --out-image "$tmp/img.tif" --out-mask "$tmp/msk.tif" --mask-format binary
    "$P/train.sh" -n 4 --checkpoint 2 --depth 2 --base-filters 4 -d cpu \
      "$tmp/img.tif" "$tmp/msk.tif" "$tmp/m.safetensors"
    [ -s "$tmp/m.safetensors" ] || fail "no model written"
    [ "$(tail -n +2 "$tmp/m.csv" | wc -l)" -eq 4 ] || fail "expected 4 rows in the loss log"
    head -1 "$tmp/m.csv" | grep -q '^iteration,loss' || fail "loss log header"
    # fine-tune that model from PNG folders (multifilesrc ! pngdec), 16-bit images
    "$UNET_PYTHON" - "$tmp" <<'PY'
import os, sys, numpy as np, tifffile
from PIL import Image
d = sys.argv[1]
img, msk = tifffile.imread(f"{d}/img.tif"), tifffile.imread(f"{d}/msk.tif")
for sub in ("pimg", "pmsk"):
    os.mkdir(f"{d}/{sub}")
for k in range(img.shape[0]):
    Image.fromarray(img[k]).save(f"{d}/pimg/cell{k:02d}.png")     # 16-bit gray PNG
    Image.fromarray(msk[k]).save(f"{d}/pmsk/cell{k:02d}-mask.png")  # 8-bit 0/255
PY
    "$P/train.sh" -i "$tmp/m.safetensors" -n 2 --checkpoint 1 -d cpu --plot none \
      "$tmp/pimg" "$tmp/pmsk" "$tmp/tuned.safetensors"
    [ -s "$tmp/tuned.safetensors" ] || fail "no fine-tuned model written"
    [ "$(tail -n +2 "$tmp/tuned.csv" | wc -l)" -eq 2 ] || fail "expected 2 rows in the fine-tuning log"
    [ ! -e "$tmp/tuned-loss.png" ] || fail "--plot none still plotted"
    mkdir "$tmp/one" && cp "$tmp/pimg/cell00.png" "$tmp/one/"
    "$P/train.sh" -n 1 "$tmp/pimg" "$tmp/one" "$tmp/x.safetensors" 2>"$tmp/err" && fail "accepted 2 images / 1 mask"
    grep -q "2 images but 1 masks" "$tmp/err" || fail "no message for unpaired folders"
    echo "train from TIFF stacks, fine-tune from PNG folders: ok"
    ;;

  *)
    echo "usage: $0 CASE (see the comment at the top)" >&2
    exit 2
    ;;
esac
