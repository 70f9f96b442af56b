#!/usr/bin/python3
"""Multi-channel fluorescence (e.g. nucleus + cytoplasm) from hyperstacks and
OME-TIFF: tiffstacksrc merge-channels=true gives one frame per z/t position with
every channel as a plane (caps format GRAY16_LE_C2 ...), unetsegment runs a model
with that many input channels, and the result is checked against the PyTorch
reference (float64 forward pass of the whole mirror-extended frame, each
channel normalised as the model says; 1e-4 as in the gray path's e2e test).
tiffstacksink writes merged frames back as a hyperstack (one page per channel);
the labels keep T and Z. Channel counts that differ from the model's are an
error naming both. Fresh random model and data each run; the seed is printed."""
import os
import random
import sys

import numpy as np
import tifffile

from tiffstack_util import check, finish, gst, have_imagej, imagej_read, workdir

ROOT = os.environ.get("UNET_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))
import unet_ref  # noqa: E402
from test_segment_exact import reference  # noqa: E402

TOL = 1e-4
seed = int(os.environ.get("UNET_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print("seed", seed)
rng = np.random.default_rng(seed)
wd = workdir()
T, Z, C, H, W = 2, 3, 2, 37, 50

# OME-TIFF, DimensionOrder XYZCT (tifffile axes TCZYX), 16-bit.
ome = rng.integers(0, 65536, (T, C, Z, H, W), dtype=np.uint16)
ome_path = os.path.join(wd, "cells.ome.tif")
tifffile.imwrite(ome_path, ome, metadata={"axes": "TCZYX", "TimeIncrement": 30.0})
# ImageJ hyperstack (TZCYX), 8-bit.
ij = rng.integers(0, 256, (T, Z, C, H, W), dtype=np.uint8)
ij_path = os.path.join(wd, "cells-ij.tif")
tifffile.imwrite(ij_path, ij, imagej=True, metadata={"axes": "TZCYX"})

cfg = unet_ref.make_config(in_channels=C, classes=2, depth=2, base_filters=4)
model = unet_ref.random_model(cfg, int(rng.integers(1 << 31)))
mpath = os.path.join(wd, "two.safetensors")
unet_ref.save_model(model, mpath, normalization={"mode": "range", "min": 0, "max": 65535})

# Segmentation vs PyTorch.
out = os.path.join(wd, "p.tif")
rc, log = gst(f"tiffstacksrc location={ome_path} merge-channels=true ! unetsegment threads=1 "
              f"model={mpath} output=probabilities probability-class=1 tile-size=44 ! "
              f"tiffstacksink location={out}", timeout=120)
check(rc == 0, f"OME C=2 merged -> 2-channel model (rc {rc}) {log[-300:] if rc else ''}")
if rc == 0:
    with tifffile.TiffFile(out) as t:
        got, axes = t.series[0].asarray(), t.series[0].axes
    check(got.shape == (T, Z, H, W) and axes == "TZYX",
          f"probabilities keep T and Z: {got.shape} {axes}")
    err = 0.0
    for ti in range(T):
        for zi in range(Z):
            x = ome[ti, :, zi].astype(np.float64) / 65535.0       # (C, H, W)
            ref = reference(model, cfg, x)[1]
            err = max(err, float(np.abs(got.reshape(T, Z, H, W)[ti, zi] - ref).max()))
    check(err <= TOL, f"probabilities vs PyTorch max|diff| {err:.2e} (<= {TOL})")

# Merged frames written back: a hyperstack with the channels (CZT order).
for name, path, want in (("ImageJ", ij_path, ij),
                         ("OME", ome_path, ome.transpose(0, 2, 1, 3, 4))):
    out = os.path.join(wd, f"merged-{name}.tif")
    rc, log = gst(f"tiffstacksrc location={path} merge-channels=true ! "
                  f"tiffstacksink location={out}")
    ok = rc == 0
    if ok:
        with tifffile.TiffFile(out) as t:
            s = t.series[0]
            ok = s.axes == "TZCYX" and np.array_equal(s.asarray(), want)
            print(name, s.shape, s.axes, t.imagej_metadata)
    check(ok, f"{name} hyperstack through merge-channels comes back as TZCYX (rc {rc})")
    if ok and name == "ImageJ" and have_imagej():
        r = (imagej_read([out]) or {}).get(out)
        check(isinstance(r, dict) and (r["channels"], r["slices"], r["frames"]) == (C, Z, T),
              f"ImageJ opens it as C/Z/T = {C}/{Z}/{T}: {r and (r['channels'], r['slices'], r['frames'])}")

# Errors.
gray_cfg = unet_ref.make_config(in_channels=1, classes=2, depth=2, base_filters=4)
gpath = os.path.join(wd, "one.safetensors")
unet_ref.save_model(unet_ref.random_model(gray_cfg, 3), gpath)
for what, src, m, want in (
        ("2-channel model on one channel", f"channel=0", mpath, ("2 input channels", "have 1")),
        ("1-channel model on merged channels", "merge-channels=true", gpath,
         ("1 input channel", "have 2"))):
    rc, log = gst(f"tiffstacksrc location={ome_path} {src} ! unetsegment threads=1 model={m} "
                  f"! fakesink", timeout=120)
    msg = [ln for ln in log.splitlines() if "channel" in ln][:1]
    check(isinstance(rc, int) and rc > 0 and all(x in log for x in want), f"{what}: error naming both counts "
          f"(rc {rc}): {msg}")
rc, log = gst(f"tiffstacksrc location={ome_path} channel=0 merge-channels=true ! fakesink")
check(isinstance(rc, int) and rc > 0 and "exclude each other" in log, "channel=N with merge-channels is an error")

finish()
