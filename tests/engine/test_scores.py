#!/usr/bin/python3
"""Held-out scores of the trainer (engine/scores.c) against independent references:
plain pixel error and Dice from numpy; the adapted Rand error from the contingency
table of scikit-image (skimage.metrics.contingency_table) over the same segments
(ground-truth objects; the 4-connected predicted regions from scipy.ndimage.label;
every pixel predicted as background inside an object a segment of its own, as the
ISBI 2012 definition says), with the ISBI formula 1 - 2 sum n_ij^2 / (sum s_j^2 +
sum t_i^2). (skimage's own adapted_rand_error counts pairs, n(n - 1) instead of n^2:
the same for large segments, not for small ones; the challenge and
tests/bench/isbi_eval.py use n^2.) Binary cases are also checked against
isbi_eval.rand_scores_2d.

  test_scores.py TRAIN_CHECK_TOOL
"""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
from scipy import ndimage

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
import isbi_eval  # noqa: E402

try:
    from skimage.metrics import contingency_table
except ImportError:          # python3-skimage missing: the reference is absent
    print("skip: python3-skimage is not installed")
    sys.exit(77)

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (f"  ({detail})" if detail and not ok else ""))
    if not ok:
        failures.append(name)


def run(tool, frames, classes):
    h, w = frames[0][0].shape
    payload = struct.pack("<4i", len(frames), classes, h, w)
    for pred, lab, obj in frames:
        for a in (pred, lab, obj):
            payload += np.ascontiguousarray(a, np.int32).tobytes()
    with tempfile.TemporaryDirectory() as d:
        i, o = os.path.join(d, "in"), os.path.join(d, "out")
        open(i, "wb").write(payload)
        subprocess.run([tool, "scores", i, o], check=True)
        return struct.unpack("<4d", open(o, "rb").read())


def reference_rand(pred, obj):
    """ISBI adapted Rand error from skimage's contingency table (pixels obj > 0)."""
    regions = np.zeros(pred.shape, np.int64)
    nxt = 1
    for c in np.unique(pred[pred > 0]):
        lab, n = ndimage.label(pred == c, structure=FOUR)
        regions[lab > 0] = lab[lab > 0] + nxt - 1
        nxt += n
    fg = obj > 0
    seg = regions[fg]
    bg = seg == 0
    seg[bg] = nxt + np.arange(bg.sum())          # background inside objects: singletons
    n_ij = contingency_table(obj[fg].astype(np.int64), seg, ignore_labels=[])
    n2 = float((n_ij.data.astype(np.float64) ** 2).sum())
    t = np.asarray(n_ij.sum(axis=1), np.float64).ravel()
    s_ = np.asarray(n_ij.sum(axis=0), np.float64).ravel()
    return 1.0 - 2.0 * n2 / (float(t @ t) + float(s_ @ s_))


def case(tool, name, rng, n_frames, classes, h, w, flip=0.1, ignore=0.0, empty_gt=False):
    frames = []
    for _ in range(n_frames):
        # ground truth: blobs of class 1..K-1 on background 0, objects = components
        k = max(classes, 2)
        lab = np.zeros((h, w), np.int32)
        for _ in range(rng.integers(1, 6)):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, min(h, w) // 3))
            yy, xx = np.ogrid[:h, :w]
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, k)
        if empty_gt:
            lab[:] = 0
        obj = np.zeros((h, w), np.int32)
        nxt = 1
        for c in range(1, k):
            l, n = ndimage.label(lab == c, structure=FOUR)
            obj[l > 0] = l[l > 0] + nxt - 1
            nxt += n
        pred = lab.copy()
        m = rng.random((h, w)) < flip
        pred[m] = rng.integers(0, k, m.sum())
        if ignore > 0:
            ig = rng.random((h, w)) < ignore
            lab = lab.copy()
            lab[ig] = -1
            obj[ig] = 0
        frames.append((pred, lab, obj))
    pe, re, dice, missing = run(tool, frames, classes)
    # plain pixel error over labelled pixels
    wrong = sum(int(((p != l) & (l >= 0)).sum()) for p, l, _ in frames)
    labelled = sum(int((l >= 0).sum()) for _, l, _ in frames)
    check(f"{name}: pixel error", abs(pe - wrong / labelled) < 1e-12, f"{pe} vs {wrong / labelled}")
    inter = sum(int(((p > 0) & (l > 0)).sum()) for p, l, _ in frames)
    den = sum(int(((p > 0) & (l >= 0)).sum() + (l > 0).sum()) for p, l, _ in frames)
    ref_d = 2 * inter / den if den else 1.0
    check(f"{name}: Dice", abs(dice - ref_d) < 1e-12, f"{dice} vs {ref_d}")
    refs = [reference_rand(p, o) for p, _, o in frames if (o > 0).any()]
    ref_r = float(np.mean(refs)) if refs else -1.0
    # float64 sums of squared counts: ~1e-15 relative; 1e-9 leaves room, a wrong
    # singleton or contingency rule is off by >= 1e-3.
    check(f"{name}: Rand error", abs(re - ref_r) < 1e-9, f"{re} vs skimage {ref_r}")
    if classes <= 2 and ignore == 0 and refs:
        # binary: the benchmark's scorer (GT objects = 4-connected interior regions)
        ev = float(np.mean([isbi_eval.rand_scores_2d(p > 0, o)["error"]
                            for p, _, o in frames if (o > 0).any()]))
        check(f"{name}: Rand error = isbi_eval's", abs(re - ev) < 1e-9, f"{re} vs {ev}")
    return missing


def main():
    tool = sys.argv[1]
    rng = np.random.default_rng(2012)
    case(tool, "binary 64x48, 3 frames", rng, 3, 2, 48, 64)
    case(tool, "binary odd 1x37", rng, 2, 2, 1, 37, flip=0.2)
    case(tool, "3 classes 33x29 with ignored pixels", rng, 2, 3, 29, 33, flip=0.15, ignore=0.1)
    case(tool, "sigmoid (1 class) 40x40", rng, 1, 1, 40, 40, flip=0.05)
    case(tool, "perfect prediction", rng, 2, 2, 32, 32, flip=0.0)
    m = case(tool, "no objects (Rand undefined)", rng, 1, 2, 16, 16, empty_gt=True)
    # never-predicted class: labels with class 1 on 25 % and a prediction of all 0
    lab = np.zeros((20, 20), np.int32)
    lab[:10, :10] = 1
    obj = (lab > 0).astype(np.int32)
    pe, re, dice, missing = run(tool, [(np.zeros_like(lab), lab, obj)], 2)
    check("all-background prediction: class 1 reported missing", missing == 1, f"{missing}")
    check("all-background prediction: Rand error of all singletons",
          abs(re - reference_rand(np.zeros_like(lab), obj)) < 1e-9, f"{re}")
    pe, re, dice, missing = run(tool, [(lab.copy(), lab, obj)], 2)
    check("perfect: no class missing, Rand error 0", missing == -1 and abs(re) < 1e-12,
          f"{missing} {re}")
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
