#!/usr/bin/python3
"""Segmentation metrics: ISBI 2012 membrane scores and nuclei Dice, for TIFF stacks.

  isbi_eval.py PRED GT [--kind membrane|nuclei] [--json]

PRED is what `unetsegment` wrote (labels: class index per pixel; probabilities: GRAY32F)
or any label stack; GT is the ground truth.  Both are multi-page TIFFs of the same shape.

membrane (ISBI 2012 layout: GT 255 = cell interior, 0 = membrane; instance ids > 0 are
accepted too).  A predicted pixel is "cell interior" when its label is non-zero
(`unetsegment output=labels` of a model trained with 255 = interior gives class 1 there)
or, for float stacks, when its probability is >= --threshold; --pred-membrane-nonzero
flips that for models whose class 1 is the membrane.

  pixel error     plain pixel error: the share of pixels whose predicted class
                  (membrane or interior) differs from the ground truth, mean(pred != gt).
  membrane F error  1 - F-score of the per-pixel classification with membrane as the
                  positive class (the challenge's "pixel error", "1 - maximal F-score
                  of pixel similarity"; we score the given labels, not a sweep over
                  thresholds). Earlier versions of this script printed this figure
                  under the name "pixel error".
  Rand error      1 - F-score of the foreground-restricted Rand index (Arganda-Carreras
                  et al. 2015, "Crowdsourcing the creation of image segmentation
                  algorithms for connectomics", Front. Neuroanat. 9:142):
                    segments are the 4-connected regions of cell interior; only pixels
                    that are interior in GT are counted; predicted membrane pixels inside
                    them count as singleton segments.  With n_ij the pixels in GT segment
                    i and predicted segment j, s_j = sum_i n_ij, t_i = sum_j n_ij:
                      V_split = sum n_ij^2 / sum t_i^2,  V_merge = sum n_ij^2 / sum s_j^2,
                      V_Rand  = 2 sum n_ij^2 / (sum s_j^2 + sum t_i^2)  (alpha = 0.5),
                    Rand error = 1 - V_Rand.  Computed per frame (2D, as the challenge
                    scores each section) and averaged.  Borders are not thinned (the
                    challenge's later V_Rand(thinned) variant thins them first).
  membrane Dice   2|P n G| / (|P| + |G|) over membrane pixels.

nuclei (GT: instance ids or binary, 0 = background; PRED: labels, instances or binary):
  Dice of the foreground (non-zero) pixels, per frame and over the whole stack, and the
  object counts (4-connected components of PRED unless it already holds instance ids).
"""

import argparse
import json
import sys

import numpy as np
from scipy import ndimage

FOUR_CONNECTED = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def load_stack(path):
    import tifffile
    a = tifffile.imread(path)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{path}: expected a stack of 2-D grey frames, got shape {a.shape}")
    return a


def as_interior(pred, threshold=0.5, membrane_nonzero=False):
    """Boolean cell-interior map from a predicted label or probability stack."""
    pred = np.asarray(pred)
    if pred.dtype.kind == "f":
        inside = pred >= threshold
    else:
        inside = pred != 0
    return ~inside if membrane_nonzero else inside


def dice(a, b):
    """Dice of two boolean arrays; 1.0 when both are empty (nothing to find, none found)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int((a & b).sum()) / denom


def pixel_error(pred_interior, gt_interior):
    """Plain pixel error: mean(pred != gt) over all pixels."""
    return float(np.mean(np.asarray(pred_interior, bool) != np.asarray(gt_interior, bool)))


def membrane_f_error(pred_interior, gt_interior):
    """1 - F-score of membrane-pixel classification (membrane = positive class)."""
    pm = ~np.asarray(pred_interior, bool)
    gm = ~np.asarray(gt_interior, bool)
    tp = int((pm & gm).sum())
    fp = int((pm & ~gm).sum())
    fn = int((~pm & gm).sum())
    if tp + fp + fn == 0:
        return 0.0          # no membrane anywhere, none predicted: perfect
    return 1.0 - 2.0 * tp / (2 * tp + fp + fn)


def segments(interior):
    """4-connected regions of a 2-D boolean map: int labels, 0 = membrane."""
    lab, _ = ndimage.label(np.asarray(interior, bool), structure=FOUR_CONNECTED)
    return lab


def rand_scores_2d(pred_interior, gt_segments):
    """Foreground-restricted Rand scores of one 2-D frame.

    pred_interior: bool (H,W); gt_segments: int (H,W), 0 = GT membrane (not counted).
    Returns dict(error, v_rand, v_split, v_merge)."""
    gt = np.asarray(gt_segments).ravel().astype(np.int64)
    ps = segments(pred_interior).ravel().astype(np.int64)
    fg = gt > 0
    gt, ps = gt[fg], ps[fg]
    if gt.size == 0:
        return {"error": 0.0, "v_rand": 1.0, "v_split": 1.0, "v_merge": 1.0}
    single = ps == 0                     # predicted membrane: each pixel its own segment
    n_single = int(single.sum())
    g, p = gt[~single], ps[~single]
    # contingency table n_ij over (GT segment, predicted segment) pairs
    key = g * (int(ps.max()) + 1) + p
    _, n_ij = np.unique(key, return_counts=True)
    t_i = np.bincount(gt)                # GT segment sizes, singletons included
    s_j = np.bincount(p)[1:] if p.size else np.zeros(0, np.int64)
    sum_nij2 = float(np.sum(n_ij.astype(np.float64) ** 2)) + n_single
    sum_t2 = float(np.sum(t_i.astype(np.float64) ** 2))
    sum_s2 = float(np.sum(s_j.astype(np.float64) ** 2)) + n_single
    v_rand = 2.0 * sum_nij2 / (sum_s2 + sum_t2)
    return {"error": 1.0 - v_rand, "v_rand": v_rand,
            "v_split": sum_nij2 / sum_t2, "v_merge": sum_nij2 / sum_s2}


def gt_segments_of(gt_frame):
    """GT segments: instance ids when the frame holds more than one non-zero value,
    otherwise the 4-connected regions of its non-zero (interior) pixels."""
    vals = np.unique(gt_frame)
    if vals[vals != 0].size > 1:
        return np.asarray(gt_frame).astype(np.int64)
    return segments(gt_frame != 0)


def evaluate_membrane(pred, gt, threshold=0.5, membrane_nonzero=False):
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, ground truth {gt.shape}")
    frames = []
    for k in range(gt.shape[0]):
        pi = as_interior(pred[k], threshold, membrane_nonzero)
        gi = gt[k] != 0
        r = rand_scores_2d(pi, gt_segments_of(gt[k]))
        frames.append({"frame": k,
                       "pixel_error": pixel_error(pi, gi),
                       "membrane_f_error": membrane_f_error(pi, gi),
                       "rand_error": r["error"],
                       "v_split": r["v_split"], "v_merge": r["v_merge"],
                       "membrane_dice": dice(~pi, ~gi)})
    mean = {m: float(np.mean([f[m] for f in frames]))
            for m in ("pixel_error", "membrane_f_error", "rand_error", "v_split", "v_merge",
                      "membrane_dice")}
    return {"kind": "membrane", "frames": frames, "mean": mean}


def count_objects(frame):
    vals = np.unique(frame)
    vals = vals[vals != 0]
    if vals.size > 1:                    # already instance ids
        return int(vals.size)
    return int(ndimage.label(frame != 0, structure=FOUR_CONNECTED)[1])


def evaluate_nuclei(pred, gt, threshold=0.5):
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, ground truth {gt.shape}")
    pf = pred >= threshold if pred.dtype.kind == "f" else pred != 0
    gf = gt != 0
    frames = []
    for k in range(gt.shape[0]):
        frames.append({"frame": k, "dice": dice(pf[k], gf[k]),
                       "objects": count_objects(pf[k] if pred.dtype.kind == "f" else pred[k]),
                       "objects_gt": count_objects(gt[k])})
    return {"kind": "nuclei", "frames": frames,
            "mean": {"dice": float(np.mean([f["dice"] for f in frames]))},
            "stack": {"dice": dice(pf, gf)}}


def print_table(res, out=sys.stdout):
    if res["kind"] == "membrane":
        cols = ("pixel_error", "membrane_f_error", "rand_error", "v_split", "v_merge",
                "membrane_dice")
    else:
        cols = ("dice", "objects", "objects_gt")
    print("frame  " + "  ".join(f"{c:>16}" for c in cols), file=out)
    for f in res["frames"]:
        print(f"{f['frame']:5d}  " + "  ".join(
            f"{f[c]:16.4f}" if isinstance(f[c], float) else f"{f[c]:16d}" for c in cols),
            file=out)
    print(" mean  " + "  ".join(
        f"{res['mean'][c]:16.4f}" if c in res["mean"] else " " * 16 for c in cols), file=out)
    if "stack" in res:
        print(f"stack Dice (all frames pooled): {res['stack']['dice']:.4f}", file=out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pred", help="predicted label / probability stack (.tif)")
    ap.add_argument("gt", help="ground-truth stack (.tif)")
    ap.add_argument("--kind", choices=["membrane", "nuclei"], default="membrane")
    ap.add_argument("--threshold", type=float, default=0.5,
                    help="probability threshold for float predictions (default 0.5)")
    ap.add_argument("--pred-membrane-nonzero", action="store_true",
                    help="the prediction marks membrane (not interior) as non-zero")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    try:
        pred = load_stack(args.pred)
        gt = load_stack(args.gt)
        if args.kind == "membrane":
            res = evaluate_membrane(pred, gt, args.threshold, args.pred_membrane_nonzero)
        else:
            res = evaluate_nuclei(pred, gt, args.threshold)
    except (OSError, ValueError) as e:
        print(f"isbi_eval: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
