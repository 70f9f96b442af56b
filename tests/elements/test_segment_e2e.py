#!/usr/bin/python3
"""End to end: gst-launch-1.0 tiffstacksrc ! unetsegment ! tiffstacksink.

A multi-page TIFF (tifffile) of frames of different kinds goes through the real
pipeline; the written stack is read back and checked page by page against the
float64 PyTorch reference of the whole mirror-extended frame (valid-padded model,
so the result must be exact to float rounding):

* GRAY32F in, output=probabilities, normalization=none: |p - ref| <= 1e-4
* GRAY16_LE in, output=labels, normalization=range: labels == argmax(ref) wherever
  the two largest reference probabilities differ by more than 1e-3 (ties within
  float rounding may flip)
* GRAY8 in, output=instances: instance ids are the 4-connected components of the
  labels (checked with scipy.ndimage.label), and overlay gives RGBA pages
* a missing model makes gst-launch fail with a message naming the file.

Fresh random model and frames each run; the seed is printed.
"""
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import scipy.ndimage
import tifffile

ROOT = os.environ.get("UNET_SOURCE_ROOT",
                      os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))
import unet_ref  # noqa: E402
from test_segment_exact import reference  # noqa: E402

# The contract: float32 pipeline vs float64 reference, "to fp32 rounding".
TOL = 1e-4
# Argmax is compared only where the reference margin is clearly above rounding.
MARGIN = 1e-3


def launch(args):
    # One thread: the frames are small; OpenMP barriers are slow on a busy machine.
    if "unetsegment" in args:
        args.insert(args.index("unetsegment") + 1, "threads=1")
    res = subprocess.run(["gst-launch-1.0", "-q"] + args, capture_output=True,
                         text=True, timeout=240)
    return res.returncode, res.stdout + res.stderr


def main():
    seed = int(os.environ.get("UNET_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print("seed", seed)
    rng = np.random.default_rng(seed)
    failures = []
    cfg = unet_ref.make_config(classes=3, depth=2, base_filters=4)
    model = unet_ref.random_model(cfg, int(rng.integers(1 << 31)))
    with tempfile.TemporaryDirectory() as tmp:
        mpath = os.path.join(tmp, "m.safetensors")
        unet_ref.save_model(model, mpath,
                            normalization={"mode": "range", "min": 0, "max": 4095})
        h, w, n = 53, 71, 3

        # 1. float frames -> probabilities, exact.
        frames = (rng.random((n, h, w)) * 2 - 0.5).astype(np.float32)
        src = os.path.join(tmp, "f32.tif")
        out = os.path.join(tmp, "p.tif")
        tifffile.imwrite(src, frames, photometric="minisblack")
        rc, log = launch(["tiffstacksrc", "location=" + src, "!", "unetsegment",
                          "model=" + mpath, "output=probabilities",
                          "probability-class=2", "normalization=none", "tile-size=40",
                          "batch-size=3", "!", "tiffstacksink", "location=" + out])
        if rc != 0:
            failures.append("probabilities pipeline failed: " + log)
        else:
            got = tifffile.imread(out)
            assert got.shape == (n, h, w), got.shape
            for i in range(n):
                ref = reference(model, cfg, frames[i])[2]
                err = float(np.abs(got[i] - ref).max())
                print("page %d probabilities max|diff| %.2e" % (i, err))
                if err > TOL:
                    failures.append("page %d: %.2e" % (i, err))

        # 2. 12-bit camera frames in GRAY16 -> labels, model's range normalisation.
        raw = rng.integers(0, 4096, (n, h, w), dtype=np.uint16)
        src = os.path.join(tmp, "u16.tif")
        out = os.path.join(tmp, "l.tif")
        tifffile.imwrite(src, raw, photometric="minisblack")
        rc, log = launch(["tiffstacksrc", "location=" + src, "!", "unetsegment",
                          "model=" + mpath, "output=labels", "!", "tiffstacksink",
                          "location=" + out])
        if rc != 0:
            failures.append("labels pipeline failed: " + log)
        else:
            got = tifffile.imread(out)
            for i in range(n):
                ref = reference(model, cfg, raw[i].astype(np.float64) / 4095.0)
                top2 = np.sort(ref, axis=0)[-2:]
                clear = (top2[1] - top2[0]) > MARGIN
                bad = int(((got[i] != ref.argmax(0)) & clear).sum())
                print("page %d labels: %d mismatches (of %d clear pixels)" %
                      (i, bad, int(clear.sum())))
                if bad:
                    failures.append("labels page %d: %d mismatches" % (i, bad))

        # 3. GRAY8 -> instances and overlay.
        raw8 = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
        src = os.path.join(tmp, "u8.tif")
        tifffile.imwrite(src, raw8, photometric="minisblack")
        outs = {}
        for mode in ("labels", "instances", "overlay"):
            outs[mode] = os.path.join(tmp, mode + "8.tif")
            # tiffstacksink writes RGB, not RGBA: the overlay goes through
            # videoconvert.
            conv = (["videoconvert", "!", "video/x-raw,format=RGB", "!"]
                    if mode == "overlay" else [])
            rc, log = launch(["tiffstacksrc", "location=" + src, "!", "unetsegment",
                              "model=" + mpath, "output=" + mode, "!"] + conv +
                             ["tiffstacksink", "location=" + outs[mode]])
            if rc != 0:
                failures.append(mode + " pipeline failed: " + log)
        if not failures:
            labels = tifffile.imread(outs["labels"])
            inst = tifffile.imread(outs["instances"])
            # 32-bit ids: tiffstacksink takes GRAY32_LE, the preferred format.
            if inst.dtype != np.uint32:
                failures.append("instances written as %s, not uint32" % inst.dtype)
            for i in range(n):
                want, count = scipy.ndimage.label(labels[i] == 1)
                print("page %d instances: %d objects (scipy: %d)" %
                      (i, int(inst[i].max()), count))
                if not (inst[i] == want).all():
                    failures.append("instances page %d differ from scipy" % i)
            ov = tifffile.imread(outs["overlay"])
            print("overlay pages", ov.shape, ov.dtype)
            if ov.shape[-1] not in (3, 4) or ov.shape[:3] != (n, h, w):
                failures.append("overlay shape %s" % (ov.shape,))

        # 4. A missing model: the pipeline fails and says which file.
        missing = os.path.join(tmp, "missing.safetensors")
        rc, log = launch(["tiffstacksrc", "location=" + src, "!", "unetsegment",
                          "model=" + missing, "!", "fakesink"])
        print("missing model: rc %d" % rc)
        if rc == 0 or missing not in log:
            failures.append("missing model not reported: " + log)

    if failures:
        print("FAILED:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
