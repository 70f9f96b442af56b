#!/usr/bin/env bash
# Reproduces samples/nuclei-model.safetensors: trains the small shipped nuclei model on
# generated data and checks it on the sample stack, which it never saw.
#
#   pipelines/train-sample-model.sh [options]
#
# 1. samples/synth.py writes a training set: nuclei, --frames frames of 256x256,
#    seed 100 (the sample stack in build/samples/ uses seed 1: different nuclei,
#    backgrounds and noise).
# 2. pipelines/train.sh trains a U-Net (depth 4, 16 base filters, valid convolutions;
#    instance masks -> the paper's border weights between touching nuclei).
# 3. pipelines/segment-stack.sh segments the sample stack with the new model and
#    tests/bench/isbi_eval.py prints the Dice against its ground truth; the script
#    fails when the Dice is below --min-dice.
#
# Options:
#   -o, --output FILE       model to write (default samples/nuclei-model.safetensors)
#   -n, --iterations N      optimiser steps (default 3000)
#       --frames N          training frames (default 48)
#   -d, --device DEV        auto | cpu | cuda  (default auto)
#       --min-dice X        required Dice on the sample stack (default 0.9)
#   -k, --keep DIR          keep the training data and logs in DIR (default: temporary)
#   -h, --help              this text
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

output="$UNET_ROOT/samples/nuclei-model.safetensors"
iterations=3000
frames=48
device=auto
min_dice=0.9
keep=""

while [ $# -gt 0 ]; do
  case "$1" in
    -o|--output) output=${2:?}; shift 2 ;;
    -n|--iterations) iterations=${2:?}; shift 2 ;;
    --frames) frames=${2:?}; shift 2 ;;
    -d|--device) device=${2:?}; shift 2 ;;
    --min-dice) min_dice=${2:?}; shift 2 ;;
    -k|--keep) keep=${2:?}; shift 2 ;;
    -h|--help) unet_usage; exit 0 ;;
    *) unet_die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$iterations" =~ ^[0-9]+$ ]] || unet_die "--iterations must be a number"
[[ "$frames" =~ ^[0-9]+$ ]] && [ "$frames" -gt 0 ] || unet_die "--frames must be a positive number"

if [ -n "$keep" ]; then
  mkdir -p "$keep"
  work=$keep
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

unet_ensure_build
sample="$UNET_BUILD/samples/nuclei-16x512.tif"
sample_gt="$UNET_BUILD/samples/nuclei-16x512-masks.tif"
[ -r "$sample" ] || unet_die "no sample stack in $UNET_BUILD/samples (run ninja -C $UNET_BUILD)"

echo "$UNET_SCRIPT: generating $frames training frames (seed 100)" >&2
"$UNET_PYTHON" "$UNET_ROOT/samples/synth.py" --kind nuclei --frames "$frames" --size 256x256 \
  --seed 100 --out-image "$work/train-images.tif" --out-mask "$work/train-masks.tif"

"$UNET_ROOT/pipelines/train.sh" -n "$iterations" --checkpoint 500 --mask-mode instances \
  --depth 4 --base-filters 16 --optimizer adam --learning-rate 0.001 -d "$device" --seed 1 \
  --csv "$work/loss.csv" --plot "$work/loss.png" \
  "$work/train-images.tif" "$work/train-masks.tif" "$output"

"$UNET_ROOT/pipelines/segment-stack.sh" -q -m "$output" -d "$device" "$sample" "$work/sample-labels.tif"
"$UNET_PYTHON" "$UNET_ROOT/tests/bench/isbi_eval.py" --kind nuclei --json \
  "$work/sample-labels.tif" "$sample_gt" > "$work/eval.json"
dice=$("$UNET_PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["stack"]["dice"])' "$work/eval.json")
echo "$UNET_SCRIPT: Dice on the sample stack (not trained on): $dice" >&2
"$UNET_PYTHON" -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$dice" "$min_dice" ||
  unet_die "Dice $dice is below $min_dice"
