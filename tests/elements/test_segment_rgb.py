#!/usr/bin/python3
"""A 3-channel model on RGB and RGBA frames, end to end, against the PyTorch
reference; and the errors when frames and model disagree on channels.

tiffstacksrc (8-bit RGB TIFF) ! [videoconvert ! RGBA] ! unetsegment ! tiffstacksink:
the probabilities must equal a float64 forward pass of the reference over the
whole mirror-extended frame with each channel normalised as the model says
(range 0..255), to float rounding (the e2e test's tolerance, 1e-4), and labels
must equal its argmax where the two largest probabilities differ by more than
1e-3. Regression: a 3-channel model ran on gray input (the gray plane copied
into every channel) with exit 0 and no message.

Fresh random model and frames each run; the seed is printed."""
import os
import random
import sys

import numpy as np
import tifffile

from tiffstack_util import check, finish, gst, workdir

ROOT = os.environ.get("UNET_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))
import unet_ref  # noqa: E402
from test_segment_exact import reference  # noqa: E402

TOL = 1e-4      # float32 pipeline vs float64 reference (as test_segment_e2e.py)
MARGIN = 1e-3   # labels compared where the reference's top two differ by more

seed = int(os.environ.get("UNET_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
print("seed", seed)
rng = np.random.default_rng(seed)
wd = workdir()

cfg = unet_ref.make_config(in_channels=3, classes=3, depth=2, base_filters=4)
model = unet_ref.random_model(cfg, int(rng.integers(1 << 31)))
mpath = os.path.join(wd, "rgb.safetensors")
unet_ref.save_model(model, mpath, normalization={"mode": "range", "min": 0, "max": 255})
gray_cfg = unet_ref.make_config(in_channels=1, classes=2, depth=2, base_filters=4)
gpath = os.path.join(wd, "gray.safetensors")
unet_ref.save_model(unet_ref.random_model(gray_cfg, 7), gpath)

n, h, w = 2, 45, 62
rgb = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
src = os.path.join(wd, "rgb.tif")
tifffile.imwrite(src, rgb, photometric="rgb")
refs = [reference(model, cfg, rgb[i].transpose(2, 0, 1).astype(np.float64) / 255.0)
        for i in range(n)]

for fmt, conv in (("RGB", ""), ("RGBA", "videoconvert ! video/x-raw,format=RGBA ! ")):
    out = os.path.join(wd, f"p-{fmt}.tif")
    rc, log = gst(f"tiffstacksrc location={src} ! {conv}unetsegment threads=1 model={mpath} "
                  f"output=probabilities probability-class=1 tile-size=40 batch-size=2 ! "
                  f"tiffstacksink location={out}", timeout=120)
    check(rc == 0, f"{fmt} -> probabilities (rc {rc}) {log[-300:] if rc else ''}")
    if rc == 0:
        got = tifffile.imread(out)
        err = max(float(np.abs(got[i] - refs[i][1]).max()) for i in range(n))
        check(got.shape == (n, h, w) and err <= TOL,
              f"{fmt}: probabilities vs PyTorch max|diff| {err:.2e} (<= {TOL})")
    out = os.path.join(wd, f"l-{fmt}.tif")
    rc, log = gst(f"tiffstacksrc location={src} ! {conv}unetsegment threads=1 model={mpath} "
                  f"output=labels ! tiffstacksink location={out}", timeout=120)
    if rc == 0:
        got = tifffile.imread(out)
        bad = 0
        for i in range(n):
            top2 = np.sort(refs[i], axis=0)[-2:]
            clear = (top2[1] - top2[0]) > MARGIN
            bad += int(((got[i] != refs[i].argmax(0)) & clear).sum())
        check(bad == 0, f"{fmt}: labels equal the reference argmax ({bad} mismatches)")
    else:
        check(False, f"{fmt} -> labels (rc {rc}) {log[-300:]}")

# Mismatches: an error naming both channel counts, and no output file.
gray = os.path.join(wd, "gray.tif")
tifffile.imwrite(gray, rng.integers(0, 65536, (1, h, w), dtype=np.uint16),
                 photometric="minisblack")
for what, s, m, want in (("3-channel model on GRAY16_LE", gray, mpath, ("3 input channels", "have 1")),
                         ("1-channel model on RGB", src, gpath, ("1 input channel", "have 3"))):
    out = os.path.join(wd, "mismatch.tif")
    rc, log = gst(f"tiffstacksrc location={s} ! unetsegment threads=1 model={m} ! "
                  f"tiffstacksink location={out}", timeout=120)
    msg = [ln for ln in log.splitlines() if "channel" in ln][:1]
    check(isinstance(rc, int) and rc > 0 and all(x in log for x in want) and not os.path.exists(out),
          f"{what}: error naming both counts (rc {rc}): {msg}")

finish()
