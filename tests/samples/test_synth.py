#!/usr/bin/python3
"""Tests of samples/synth.py: reproducibility, and that each stack has the properties
the generator promises (touching nuclei, varied brightness, the noise model, membranes
that separate 4-connected cells, ImageJ-compatible files)."""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from scipy import ndimage

ROOT = os.environ.get("UNET_SOURCE_ROOT",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "samples"))
import synth  # noqa: E402

FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def adjacent_pairs(lab):
    """Set of (a, b) label pairs, a < b, both non-zero, that touch 4-connectedly."""
    pairs = set()
    for a, b in ((lab[:-1, :], lab[1:, :]), (lab[:, :-1], lab[:, 1:])):
        m = (a != b) & (a > 0) & (b > 0)
        for x, y in zip(a[m], b[m]):
            pairs.add((min(x, y), max(x, y)))
    return pairs


class Reproducible(unittest.TestCase):
    def test_seeded(self):
        for kind in ("nuclei", "em"):
            a, am = synth.generate(kind, 3, 96, 80, 5)
            b, bm = synth.generate(kind, 2, 96, 80, 5)
            c, _ = synth.generate(kind, 1, 96, 80, 6)
            self.assertEqual(a.shape, (3, 80, 96))
            np.testing.assert_array_equal(a[:2], b)      # frame k independent of --frames
            np.testing.assert_array_equal(am[:2], bm)
            self.assertFalse(np.array_equal(a[0], c[0]))  # another seed, other data
            self.assertFalse(np.array_equal(a[0], a[1]))  # frames differ


class Nuclei(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.img, cls.mask = synth.generate("nuclei", 3, 256, 256, 11)

    def test_types(self):
        self.assertEqual(self.img.dtype, np.uint16)
        self.assertEqual(self.mask.dtype, np.uint16)

    def test_objects(self):
        for k in range(3):
            ids = np.unique(self.mask[k])
            ids = ids[ids > 0]
            # 25 % cover of 256^2 at mean radius 13 px targets ~30 nuclei
            self.assertGreater(ids.size, 15)
            self.assertLess(ids.size, 60)
            # ids are 1..n with no gaps
            np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
        touching = sum(len(adjacent_pairs(self.mask[k])) for k in range(3))
        self.assertGreater(touching, 3, "no touching nuclei")

    def test_contrast_and_brightness(self):
        k = 0
        img = self.img[k].astype(np.float64)
        lab = self.mask[k]
        n = lab.max()
        means = ndimage.mean(img, lab, np.arange(1, n + 1)) - 100.0   # camera offset 100
        bg = img[ndimage.distance_transform_edt(lab == 0) > 12].mean() - 100.0
        self.assertGreater(np.median(means), 4 * bg, "nuclei barely brighter than background")
        # log-normal brightness sigma 0.35 -> coefficient of variation ~0.36
        self.assertGreater(means.std() / means.mean(), 0.2, "brightness not varied")

    def test_noise_model(self):
        # Poisson + Gaussian with gain 2 ADU/e-, read noise 4 e- (8 ADU), offset 100:
        # var(ADU) = 2 (mean - 100) + 64.  Estimated from horizontal neighbour differences
        # in the background (var(diff)/2), far from nuclei where the expected value is
        # smooth.  15 %: the estimator's sampling error on ~10^4 px is ~2 %; blur, haze and
        # background slope add a small positive bias between neighbours.
        for k in range(3):
            img = self.img[k].astype(np.float64)
            far = ndimage.distance_transform_edt(self.mask[k] == 0) > 15
            m = far[:, :-1] & far[:, 1:]
            d = (img[:, 1:] - img[:, :-1])[m]
            var = d.var() / 2
            mean = ((img[:, 1:] + img[:, :-1]) / 2)[m].mean()
            expect = 2.0 * (mean - 100.0) + 64.0
            self.assertLess(abs(var / expect - 1.0), 0.15, f"frame {k}: var {var}, expected {expect}")

    def test_uneven_background(self):
        img = self.img[0].astype(np.float64)
        far = ndimage.distance_transform_edt(self.mask[0] == 0) > 15
        q = [img[:128, :128], img[:128, 128:], img[128:, :128], img[128:, 128:]]
        fq = [far[:128, :128], far[:128, 128:], far[128:, :128], far[128:, 128:]]
        levels = [a[f].mean() - 100.0 for a, f in zip(q, fq) if f.sum() > 200]
        # background varies by +-40 % (tanh of a unit field) across the frame
        self.assertGreater(max(levels) / min(levels), 1.1)


class EM(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.img, cls.mask = synth.generate("em", 2, 192, 160, 3)

    def test_cells(self):
        self.assertEqual(self.img.dtype, np.uint8)
        for k in range(2):
            lab = self.mask[k]
            memb = lab == 0
            # 40-px cells with 2-4 px membranes: ~10-25 % of the pixels are membrane
            self.assertGreater(memb.mean(), 0.05)
            self.assertLess(memb.mean(), 0.35)
            self.assertEqual(len(adjacent_pairs(lab)), 0, "cells touch without membrane")
            n = lab.max()
            self.assertGreater(n, 10)
            # every id is exactly one 4-connected region
            _, ncomp = ndimage.label(lab > 0, structure=FOUR)
            self.assertEqual(ncomp, n)
            img = self.img[k].astype(np.float64)
            self.assertGreater(img[~memb].mean() - img[memb].mean(), 50.0,
                               "membranes not dark")


class CommandLine(unittest.TestCase):
    def test_writes_imagej_stacks(self):
        import tifffile
        with tempfile.TemporaryDirectory() as d:
            img, msk = os.path.join(d, "em.tif"), os.path.join(d, "em-masks.tif")
            subprocess.run([sys.executable, os.path.join(ROOT, "samples", "synth.py"),
                            "--kind", "em", "--frames", "3", "--size", "64x48", "--seed", "2",
                            "--out-image", img, "--out-mask", msk, "--mask-format", "binary"],
                           check=True)
            with tifffile.TiffFile(img) as t:
                self.assertTrue(t.is_imagej)
                self.assertEqual(len(t.pages), 3)
                self.assertEqual(t.pages[0].shape, (48, 64))
            m = tifffile.imread(msk)
            self.assertEqual(m.dtype, np.uint8)
            self.assertEqual(set(np.unique(m)), {0, 255})
            bad = subprocess.run([sys.executable, os.path.join(ROOT, "samples", "synth.py"),
                                  "--size", "64", "--out-image", img], capture_output=True)
            self.assertEqual(bad.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
