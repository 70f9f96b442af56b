#!/usr/bin/python3
"""output=instances with more objects than 16 bits can number.

Regression: a frame with 132238 objects came out with 1.4 M pixels sharing id
65535, without a word. A model whose class-1 logit is its input pixel and whose
class-0 logit is 0.5 (checked against the PyTorch reference below) segments a
checkerboard into one object per foreground pixel: 512x512 -> 131072 objects.

* unetsegment ! tiffstacksink: 32-bit ids (GRAY32_LE), equal to
  scipy.ndimage.label, written as a 32-bit unsigned TIFF that tifffile (imread
  and page-wise), tiffinfo and ImageJ 1.53t read; tiffstacksrc reads it back.
* downstream that only takes GRAY16_LE: a frame with more than 65535 objects is
  an error naming the count and the way out; no output file is left.
* GRAY16_LE with fewer objects still works."""
import os
import sys

import numpy as np
import scipy.ndimage
import tifffile
import torch

from tiffstack_util import (check, finish, gst, have_imagej, imagej_read, read_raw,
                            tiffinfo_pages, workdir)

ROOT = os.environ.get("UNET_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import unet_ref  # noqa: E402

wd = workdir()
H = W = 512

# The thresholding model: every conv passes its centre tap of channel 0, the
# decoder takes the skip connection, the up-path is zero.
cfg = unet_ref.make_config(in_channels=1, classes=2, depth=1, base_filters=1)
model = unet_ref.UNetRef(cfg).double()
with torch.no_grad():
    for p in model.parameters():
        p.zero_()
    for blk in (model.enc[0], model.dec[0]):
        blk.conv1.weight[0, 0, 1, 1] = 1.0
        blk.conv2.weight[0, 0, 1, 1] = 1.0
    model.head.weight[1, 0, 0, 0] = 1.0
    model.head.bias[0] = 0.5
    x = torch.tensor(np.indices((20, 20)).sum(0) % 2, dtype=torch.float64)[None, None]
    logits = model(x)
    crop = x[0, 0, 2:2 + logits.shape[2], 2:2 + logits.shape[3]]
    check(bool((logits[0].argmax(0) == (crop > 0.5)).all()),
          "PyTorch reference: the model labels pixels > 0.5 as class 1")
mpath = os.path.join(wd, "threshold.safetensors")
unet_ref.save_model(model, mpath)

board = (np.indices((H, W)).sum(0) % 2 == 0).astype(np.uint8)
few = np.zeros((H, W), np.uint8)
few[10:20, 10:20] = 1
few[100:300, 50:60] = 1
src = os.path.join(wd, "board.tif")
tifffile.imwrite(src, np.stack([board, few]), photometric="minisblack")
want = [scipy.ndimage.label(f)[0] for f in (board, few)]
check(want[0].max() == H * W // 2, f"scipy: {want[0].max()} objects on the checkerboard")

seg = f"tiffstacksrc location={src} ! unetsegment threads=1 model={mpath} " \
      f"normalization=none output=instances"

# 32-bit ids by default with tiffstacksink.
out = os.path.join(wd, "ids32.tif")
rc, log = gst(f"{seg} ! tiffstacksink location={out}", timeout=120)
check(rc == 0, f"instances -> tiffstacksink (rc {rc}) {log[-500:] if rc else ''}")
if rc == 0:
    got = tifffile.imread(out)
    check(got.dtype == np.uint32 and got.shape == (2, H, W),
          f"tifffile.imread: {got.dtype} {got.shape}")
    check(np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]),
          f"ids equal scipy.ndimage.label (max {got.max()})")
    with tifffile.TiffFile(out) as t:
        pages = [p.asarray() for p in t.pages]
    check(len(pages) == 2 and all(np.array_equal(p, w) for p, w in zip(pages, want)),
          "tifffile page by page")
    info = tiffinfo_pages(out)
    check(info is not None and len(info) == 2 and all(
        p.get("bits") == 32 and p.get("format") == "unsigned integer" for p in info),
        f"tiffinfo: 32-bit unsigned pages ({info})")
    raw = os.path.join(wd, "back.raw")
    rc, log = gst(f"tiffstacksrc location={out} ! video/x-raw,format=GRAY32_LE ! "
                  f"filesink location={raw}")
    back = read_raw(raw, 2, H, W, np.uint32) if rc == 0 else None
    check(back is not None and np.array_equal(back, np.stack(want)),
          f"tiffstacksrc reads the ids back as GRAY32_LE (rc {rc})")
    if have_imagej():
        r = imagej_read([out])
        r = r and r.get(out)
        # ImageJ opens 32-bit integer TIFF as 32-bit float: ids up to 2^24 exact.
        check(isinstance(r, dict) and r["nslices"] == 2 and r["bitdepth"] == 32
              and r["pixels"][0] == (1.0, float(H * W // 2)),
              f"ImageJ: 2 slices, 32-bit, ids 1 .. {H * W // 2} ({r and {k: r[k] for k in ('nslices', 'bitdepth', 'pixels')}})")
    else:
        print("skip: ImageJ check (imagej and xvfb-run not installed)")

# Only 16-bit ids accepted downstream: an error, not merged objects.
out16 = os.path.join(wd, "ids16.tif")
rc, log = gst(f"{seg} ! video/x-raw,format=GRAY16_LE ! tiffstacksink location={out16}",
              timeout=120)
check(isinstance(rc, int) and rc > 0 and "131072 objects" in log and "GRAY32_LE" in log,
      f"GRAY16_LE with 131072 objects: clear error (rc {rc}): "
      f"{[l for l in log.splitlines() if 'objects' in l][:1]}")
check(not os.path.exists(out16), "the failed run leaves no output file")

src_few = os.path.join(wd, "few.tif")
tifffile.imwrite(src_few, few, photometric="minisblack")
rc, log = gst(f"tiffstacksrc location={src_few} ! unetsegment threads=1 model={mpath} "
              f"normalization=none output=instances ! video/x-raw,format=GRAY16_LE ! "
              f"tiffstacksink location={out16}")
got = tifffile.imread(out16) if rc == 0 else None
check(got is not None and got.dtype == np.uint16 and np.array_equal(got, want[1]),
      f"GRAY16_LE with {want[1].max()} objects still works (rc {rc})")

finish()
