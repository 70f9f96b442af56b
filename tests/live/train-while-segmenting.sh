#!/usr/bin/env bash
# Fine-tuning into a running stream, end to end with the real elements: one
# gst-launch-1.0 process trains with unettrain and writes a checkpoint every few steps
# (temporary name + rename); a second, live one segments with
# unetsegment watch-model=true on the same file. Checked: the live pipeline swaps in
# several checkpoints while it keeps streaming (frames are segmented after the last
# swap), and neither pipeline posts an error or a warning.
#
#   tests/live/train-while-segmenting.sh
set -euo pipefail

ROOT=${UNET_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
# shellcheck source=../../pipelines/lib.sh
. "$ROOT/pipelines/lib.sh"
export UNET_TIMEOUT=${UNET_TIMEOUT:-150}

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; for f in "$tmp"/*.log; do echo "== $f" >&2; tail -15 "$f" >&2; done; exit 1; }

# Training data: 4 generated nuclei frames with instance masks (samples/synth.py).
"$UNET_PYTHON" "$ROOT/samples/synth.py" --kind nuclei --frames 4 --size 96x96 --seed 5 \
  --out-image "$tmp/img.tif" --out-mask "$tmp/mask.tif" >/dev/null

model="$tmp/live.safetensors"
train() {   # train ITERATIONS: a small network, a checkpoint every 10 steps
  unet_gst_launch -m unettrain name=t "output-model=$model" iterations="$1" \
      checkpoint-interval=10 depth=2 base-filters=4 tile-size=92 threads=1 seed=3 \
      mask-mode=instances preview=false ! fakesink sync=false \
    tiffstacksrc location="$tmp/img.tif" ! t.image \
    tiffstacksrc location="$tmp/mask.tif" ! t.mask
}

# The first model, so the live pipeline has something to start with.
train 10 > "$tmp/train0.log" 2>&1 || fail "initial training"
[ -s "$model" ] || fail "unettrain wrote no model"

# Live segmentation: 50 fps for up to 2 minutes (stopped as soon as we have seen enough).
unet_gst_launch -m videotestsrc is-live=true pattern=snow num-buffers=6000 \
  ! video/x-raw,format=GRAY16_LE,width=96,height=96,framerate=50/1 \
  ! queue leaky=downstream max-size-buffers=1 \
  ! unetsegment "model=$model" watch-model=true threads=1 post-messages=true \
  ! fakesink sync=true > "$tmp/live.log" 2>&1 &
pids+=($!)
live_pid=$!

# Wait until the live pipeline segments, then fine-tune into the same file: a
# checkpoint every 10 steps (rename into place), 60 steps = 6 checkpoints.
for _ in $(seq 300); do grep -q unetsegment-stats "$tmp/live.log" && break; sleep 0.1; done
grep -q unetsegment-stats "$tmp/live.log" || fail "the live pipeline did not start"
train 60 > "$tmp/train1.log" 2>&1 || fail "fine-tuning run"
ckpts=$(grep -c 'unettrain-checkpoint' "$tmp/train1.log" || true)
[ "$ckpts" -ge 3 ] || fail "only $ckpts checkpoints written"

# Let the live pipeline see the last checkpoint and segment a few frames with it.
"$UNET_PYTHON" - "$tmp/live.log" <<'PY' || fail "the live pipeline did not pick up the checkpoints"
import re, sys, time
log = sys.argv[1]
end = time.monotonic() + 30
while time.monotonic() < end:
    text = open(log).read()
    swaps = [int(m) for m in re.findall(r"unetsegment-model-swapped.*?frame-number=\(guint64\)(\d+)", text)]
    frames = [int(m) for m in re.findall(r"unetsegment-stats.*?frame-number=\(guint64\)(\d+)", text)]
    if len(swaps) >= 2 and frames and frames[-1] > swaps[-1] + 5:
        break
    time.sleep(0.2)
else:
    sys.exit(f"swaps at {swaps}, last frame {frames[-1] if frames else None}")
print(f"{len(swaps)} checkpoints swapped in live (at frames {swaps}); {len(frames)} frames segmented")
PY
kill -INT "$live_pid" 2>/dev/null || true
wait "$live_pid" 2>/dev/null || true
pids=()

for f in "$tmp"/train0.log "$tmp"/train1.log "$tmp"/live.log; do
  if grep -qE '^(ERROR|WARNING)' "$f"; then fail "$(basename "$f") has an error or warning"; fi
done
echo "ok: unettrain checkpoints picked up by a live unetsegment without stopping it"
