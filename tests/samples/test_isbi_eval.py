#!/usr/bin/python3
"""Unit tests of tests/bench/isbi_eval.py on hand-made cases with known values, and
against a brute-force pair count of the Rand index straight from its definition."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np

ROOT = os.environ.get("UNET_SOURCE_ROOT",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "bench"))
import isbi_eval as ev  # noqa: E402

# All expected values below are exact fractions evaluated in double precision; 1e-12
# only absorbs the rounding of those few float operations.
EPS = 1e-12


def brute_force_rand(pred_interior, gt_seg):
    """V_Rand from the definition: over ordered pairs (u, v) of GT-foreground pixels
    (u == v included), count pairs together in GT, together in the prediction, and
    together in both; predicted membrane pixels are together only with themselves."""
    ps = ev.segments(pred_interior).ravel()
    gt = np.asarray(gt_seg).ravel()
    idx = np.flatnonzero(gt > 0)
    both = in_gt = in_pred = 0
    for u in idx:
        for v in idx:
            same_gt = gt[u] == gt[v]
            same_pred = (u == v) or (ps[u] != 0 and ps[u] == ps[v])
            in_gt += same_gt
            in_pred += same_pred
            both += same_gt and same_pred
    return 2.0 * both / (in_gt + in_pred), both / in_gt, both / in_pred


class RandTest(unittest.TestCase):
    def test_perfect(self):
        gt = np.array([[1, 1, 0, 2, 2],
                       [1, 1, 0, 2, 2]])
        r = ev.rand_scores_2d(gt > 0, gt)
        self.assertAlmostEqual(r["error"], 0.0, delta=EPS)

    def test_merge(self):
        # two GT cells of 4 px, the prediction misses the membrane and merges them:
        # sum n^2 = 16 + 16 = 32, sum t^2 = 32, sum s^2 = 8^2 = 64 -> V = 64/96
        gt = np.array([[1, 1, 0, 2, 2],
                       [1, 1, 0, 2, 2]])
        r = ev.rand_scores_2d(np.ones_like(gt, bool), gt)
        self.assertAlmostEqual(r["error"], 1.0 / 3.0, delta=EPS)
        self.assertAlmostEqual(r["v_split"], 1.0, delta=EPS)
        self.assertAlmostEqual(r["v_merge"], 0.5, delta=EPS)

    def test_split_diagonal(self):
        # one GT cell of 8 px; the predicted interior touches only diagonally, which is
        # not 4-connected: two 2-px segments and 4 singleton (membrane) pixels.
        # sum n^2 = 4 + 4 + 4 = 12, sum t^2 = 64, sum s^2 = 4 + 4 + 4 = 12 -> V = 24/76
        gt = np.ones((2, 4), np.int64)
        pred = np.array([[1, 1, 0, 0],
                         [0, 0, 1, 1]], bool)
        r = ev.rand_scores_2d(pred, gt)
        self.assertAlmostEqual(r["v_rand"], 24.0 / 76.0, delta=EPS)
        self.assertAlmostEqual(r["v_merge"], 1.0, delta=EPS)

    def test_split(self):
        # one GT segment (id 1 on both sides of a GT-membrane column), predicted as two
        # 4-px cells: sum n^2 = 32, sum t^2 = 64, sum s^2 = 32 -> V = 64/96
        gt = np.array([[1, 1, 0, 1, 1],
                       [1, 1, 0, 1, 1]])
        r = ev.rand_scores_2d(gt > 0, gt)
        self.assertAlmostEqual(r["v_split"], 0.5, delta=EPS)
        self.assertAlmostEqual(r["v_merge"], 1.0, delta=EPS)
        self.assertAlmostEqual(r["error"], 1.0 / 3.0, delta=EPS)

    def test_singleton(self):
        # GT cell of 4 px, one predicted membrane pixel inside it:
        # sum n^2 = 3^2 + 1 = 10, sum t^2 = 16, sum s^2 = 9 + 1 = 10 -> V = 20/26
        gt = np.array([[1, 1],
                       [1, 1]])
        pred = np.array([[1, 1],
                         [1, 0]], bool)
        r = ev.rand_scores_2d(pred, gt)
        self.assertAlmostEqual(r["v_rand"], 20.0 / 26.0, delta=EPS)

    def test_gt_background_ignored(self):
        # whatever is predicted on GT membrane does not change the score
        gt = np.array([[1, 1, 0, 2, 2]])
        a = ev.rand_scores_2d(np.array([[1, 1, 0, 1, 1]], bool), gt)
        b = ev.rand_scores_2d(np.array([[1, 1, 1, 1, 1]], bool), gt)
        self.assertAlmostEqual(a["error"], 0.0, delta=EPS)
        self.assertAlmostEqual(b["error"], 1.0 / 3.0, delta=EPS)   # merged: 8/(8+16)

    def test_against_brute_force(self):
        rng = np.random.default_rng(7)
        for _ in range(6):
            gt_int = rng.random((9, 11)) > 0.3
            gt = ev.segments(gt_int)
            pred = rng.random((9, 11)) > 0.35
            v, vs, vm = brute_force_rand(pred, gt)
            r = ev.rand_scores_2d(pred, gt)
            self.assertAlmostEqual(r["v_rand"], v, delta=EPS)
            self.assertAlmostEqual(r["v_split"], vs, delta=EPS)
            self.assertAlmostEqual(r["v_merge"], vm, delta=EPS)
            self.assertGreater(r["error"], 0.0)   # random maps can't be perfect


class PixelAndDiceTest(unittest.TestCase):
    def test_pixel_error(self):
        # GT membrane: 4 px (column 2); prediction: that column + 2 false pixels, and it
        # misses 1: tp = 3, fp = 2, fn = 1 -> F = 6 / 9
        gt = np.array([[1, 1, 0, 1],
                       [1, 1, 0, 1],
                       [1, 1, 0, 1],
                       [1, 1, 0, 1]]) > 0
        pred = gt.copy()
        pred[0, 0] = pred[1, 0] = False       # false membrane
        pred[3, 2] = True                     # missed membrane
        self.assertAlmostEqual(ev.membrane_f_error(pred, gt), 1.0 - 6.0 / 9.0, delta=EPS)
        self.assertAlmostEqual(ev.membrane_f_error(gt, gt), 0.0, delta=EPS)
        # plain pixel error: 3 of 16 pixels differ
        self.assertAlmostEqual(ev.pixel_error(pred, gt), 3.0 / 16.0, delta=EPS)
        self.assertAlmostEqual(ev.pixel_error(gt, gt), 0.0, delta=EPS)
        # membrane Dice is the same F-score
        self.assertAlmostEqual(ev.dice(~pred, ~gt), 6.0 / 9.0, delta=EPS)

    def test_dice(self):
        a = np.zeros((4, 4), bool)
        b = np.zeros((4, 4), bool)
        self.assertEqual(ev.dice(a, b), 1.0)
        a[:2] = True                          # 8 px
        b[1:3] = True                         # 8 px, 4 shared -> 8/16
        self.assertAlmostEqual(ev.dice(a, b), 0.5, delta=EPS)
        self.assertEqual(ev.dice(a, np.zeros_like(a)), 0.0)

    def test_probability_threshold(self):
        p = np.array([[0.2, 0.5, 0.9]], np.float32)
        np.testing.assert_array_equal(ev.as_interior(p), [[False, True, True]])
        np.testing.assert_array_equal(ev.as_interior(p, membrane_nonzero=True),
                                      [[True, False, False]])


class StackTest(unittest.TestCase):
    def test_nuclei(self):
        gt = np.zeros((2, 8, 8), np.uint16)
        gt[:, 1:3, 1:3] = 1
        gt[:, 1:3, 3:5] = 2                   # touching instance
        pred = np.zeros((2, 8, 8), np.uint8)
        pred[0] = gt[0] > 0                   # frame 0 perfect
        pred[1, 1:3, 1:4] = 1                 # frame 1: 6 of 8 px -> Dice 12/14
        res = ev.evaluate_nuclei(pred, gt)
        self.assertAlmostEqual(res["frames"][0]["dice"], 1.0, delta=EPS)
        self.assertAlmostEqual(res["frames"][1]["dice"], 12.0 / 14.0, delta=EPS)
        self.assertAlmostEqual(res["stack"]["dice"], 28.0 / 30.0, delta=EPS)
        self.assertEqual(res["frames"][0]["objects_gt"], 2)
        self.assertEqual(res["frames"][0]["objects"], 1)   # binary prediction merges them

    def test_cli(self):
        import tifffile
        gt = np.zeros((3, 16, 16), np.uint8)
        gt[:, :, :] = 255
        gt[:, :, 7] = 0                       # ISBI layout: two cells per frame
        pred = (gt > 0).astype(np.uint8)      # class index 1 = interior
        pred[2, :, 7] = 1                     # frame 2 merges the cells
        with tempfile.TemporaryDirectory() as d:
            tifffile.imwrite(os.path.join(d, "gt.tif"), gt, imagej=True)
            tifffile.imwrite(os.path.join(d, "pred.tif"), pred, imagej=True)
            out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench", "isbi_eval.py"),
                                  os.path.join(d, "pred.tif"), os.path.join(d, "gt.tif"), "--json"],
                                 check=True, capture_output=True, text=True).stdout
            res = json.loads(out)
            self.assertAlmostEqual(res["frames"][0]["rand_error"], 0.0, delta=EPS)
            # frame 2: cells of 16x7 = 112 and 16x8 = 128 px merged into one of 240:
            # V = 2 (112^2 + 128^2) / (112^2 + 128^2 + 240^2)
            v = 2.0 * (112 ** 2 + 128 ** 2) / (112 ** 2 + 128 ** 2 + 240 ** 2)
            self.assertAlmostEqual(res["frames"][2]["rand_error"], 1.0 - v, delta=EPS)
            self.assertAlmostEqual(res["frames"][2]["membrane_f_error"], 1.0, delta=EPS)
            # ... while the plain pixel error is the one wrong column: 16 of 256 px
            self.assertAlmostEqual(res["frames"][2]["pixel_error"], 16.0 / 256.0, delta=EPS)
            bad = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "bench", "isbi_eval.py"),
                                  os.path.join(d, "pred.tif"), os.path.join(d, "missing.tif")],
                                 capture_output=True, text=True)
            self.assertEqual(bad.returncode, 2)
            self.assertIn("missing.tif", bad.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
