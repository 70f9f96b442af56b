#!/usr/bin/env bash
# Hot reload across processes: a live gst-launch-1.0 pipeline segments with
# unetsegment watch-model=true while another process (standing in for a training
# pipeline) writes checkpoints to the model file mid-stream, the way unettrain does:
# to a temporary name, then renamed over it. Then a careless writer rewrites the file
# in place and stops half-way, then a good checkpoint follows.
#
# Checked in the pipeline's messages (gst-launch-1.0 -m): one
# "unetsegment-model-swapped" per good checkpoint, one warning for the broken file,
# no error, the stream never stops, and each frame's foreground-fraction is that of
# the model in use (the models label everything background or everything foreground).
#
#   tests/live/hot-reload.sh
set -euo pipefail

ROOT=${UNET_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../../pipelines/lib.sh
. "$ROOT/pipelines/lib.sh"
export UNET_TIMEOUT=${UNET_TIMEOUT:-90}

tmp=$(mktemp -d)
gst_pid=""
cleanup() {
  if [ -n "$gst_pid" ] && kill -0 "$gst_pid" 2>/dev/null; then
    kill "$gst_pid" 2>/dev/null
    wait "$gst_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -f "$tmp/log" ] && tail -20 "$tmp/log" >&2; exit 1; }

writer() {   # writer COMMAND: constant models written by the PyTorch reference's writer
  "$UNET_PYTHON" - "$tmp" "$@" <<'PY'
import os, sys, time
sys.path.insert(0, os.path.join(os.environ.get("UNET_SOURCE_ROOT", "."), "tests", "reference"))
import torch
import unet_ref as u

tmp, cmd = sys.argv[1], sys.argv[2]
model = os.path.join(tmp, "model.safetensors")
log = os.path.join(tmp, "log")

def constant(foreground, path):
    m = u.UNetRef(u.make_config(depth=2, base_filters=4))
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.head.bias.copy_(torch.tensor([-10.0, 10.0] if foreground else [10.0, -10.0]))
    u.save_model(m, path, normalization={"mode": "none"})

def atomic(foreground):
    t = model + ".tmp-writer"
    constant(foreground, t)
    os.replace(t, model)            # rename: readers see the old or the new file

def wait_for(what, count, timeout=30):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(log) as f:
            text = f.read()
        if text.count(what) >= count:
            return
        time.sleep(0.05)
    sys.exit(f"timed out waiting for {count} x {what!r}")

def frames_after(n):   # wait until n more frames were segmented
    with open(log) as f:
        base = f.read().count("unetsegment-stats")
    wait_for("unetsegment-stats", base + n)

if cmd == "initial":
    atomic(False)
    sys.exit(0)
wait_for("unetsegment-stats", 3)
atomic(True)
wait_for("unetsegment-model-swapped", 1)
frames_after(3)
atomic(False)
wait_for("unetsegment-model-swapped", 2)
frames_after(3)
# in place, half-written: at most a warning
full = os.path.join(tmp, "full.safetensors")
constant(True, full)
data = open(full, "rb").read()
with open(model, "r+b") as f:
    f.truncate(0)
    f.write(data[: len(data) // 2])
wait_for("WARNING", 1)
frames_after(5)
atomic(True)
wait_for("unetsegment-model-swapped", 3)
frames_after(3)
PY
}

writer initial
# 30 s of stream (1500 frames at 50 fps); the writer needs ~20 frames and 4 loads of a
# tiny model after importing PyTorch, which alone took over 8 s on a loaded 2-core
# machine (the stream was 8 s long then, and ended before the first checkpoint)
unet_gst_launch -m -e videotestsrc is-live=true pattern=snow num-buffers=1500 \
  ! video/x-raw,format=GRAY8,width=48,height=40,framerate=50/1 \
  ! queue leaky=downstream max-size-buffers=1 \
  ! unetsegment name=seg "model=$tmp/model.safetensors" watch-model=true threads=1 \
    post-messages=true ! fakesink sync=true > "$tmp/log" 2>&1 &
gst_pid=$!

writer run || fail "writer"
wait "$gst_pid" || fail "gst-launch-1.0 failed"
gst_pid=""

"$UNET_PYTHON" - "$tmp/log" <<'PY' || fail "check"
import re, sys
text = open(sys.argv[1]).read()
assert "ERROR" not in text, "an error was posted"
assert text.count("WARNING") == 1, f"{text.count('WARNING')} warnings, expected 1"
swaps, stats = [], []
for line in text.splitlines():
    if "unetsegment-model-swapped" in line:
        swaps.append(int(re.search(r"frame-number=\(guint64\)(\d+)", line).group(1)))
    elif "unetsegment-stats" in line:
        f = int(re.search(r"frame-number=\(guint64\)(\d+)", line).group(1))
        fg = float(re.search(r"foreground-fraction=\(double\)([0-9.e+-]+)", line).group(1))
        stats.append((f, fg))
assert len(swaps) == 3, f"{len(swaps)} swaps, expected 3"
want_after = [0.0, 1.0, 0.0, 1.0]
for f, fg in stats:
    k = sum(1 for s in swaps if f >= s)
    assert fg == want_after[k], f"frame {f}: foreground {fg}, model {k} gives {want_after[k]}"
print(f"{len(stats)} frames, swaps at frames {swaps}, 1 warning for the half-written file")
PY
