#!/usr/bin/python3
"""unettrain on RGB frames (a 3-channel model), checked with the PyTorch
reference; and the errors when frames and model disagree on channels.

The masks follow the red channel only (bright disks); green and blue are noise
of the same range. unettrain in-channels=3 trains on RGB pairs (and a fine-tune
on RGBA ones); the written model, loaded into the PyTorch reference
(tests/reference/unet_ref.py) and fed the frames as a PyTorch user would
((R, G, B) planes scaled as its unet.normalization says), must segment frames it
never saw: foreground Dice >= 0.9 (a model that read the channels in another
order, or a gray mix, sees only noise where the disks are and stays far below).
unetsegment on the same RGB frames must agree with PyTorch's labels. Before, the
image pad took gray only and a 3-channel model got the gray plane in every
channel."""
import json
import os
import sys

import numpy as np
import tifffile
import torch

from tiffstack_util import check, finish, gst, workdir

ROOT = os.environ.get("UNET_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import unet_ref  # noqa: E402

wd = workdir()
rng = np.random.default_rng(12)
H = W = 64


def frames(n):
    img = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    mask = np.zeros((n, H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    for i in range(n):
        red = np.full((H, W), 40, np.int32)
        for _ in range(4):
            cy, cx, r = rng.integers(8, H - 8), rng.integers(8, W - 8), rng.integers(4, 8)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            red[disk] = 215
            mask[i][disk] = 1
        img[i, :, :, 0] = np.clip(red + rng.integers(-25, 26, (H, W)), 0, 255)
    return img, mask


def dice(a, b):
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


train_img, train_mask = frames(6)
test_img, test_mask = frames(3)
paths = {}
for name, arr, photo in (("img", train_img, "rgb"), ("mask", train_mask, "minisblack"),
                         ("test", test_img, "rgb")):
    paths[name] = os.path.join(wd, name + ".tif")
    tifffile.imwrite(paths[name], arr, photometric=photo)

model = os.path.join(wd, "rgb.safetensors")
train = (f"unettrain name=t in-channels=3 depth=2 base-filters=8 padding=same "
         f"iterations=150 optimizer=adam learning-rate=0.003 batch-size=2 tile-size=48 "
         f"mask-mode=binary normalization={{\"mode\":\"range\",\"min\":0,\"max\":255}} "
         f"threads=1 device=cpu output-model={model} "
         f"! fakesink tiffstacksrc location={paths['img']} ! t.image "
         f"tiffstacksrc location={paths['mask']} ! t.mask")
rc, log = gst(train, timeout=300)
check(rc == 0 and os.path.exists(model), f"unettrain on RGB pairs (rc {rc}) {log[-400:] if rc else ''}")


def torch_labels(path, img):
    """Labels of the PyTorch reference: (R, G, B) planes, normalised per the file."""
    m, meta = unet_ref.load_model(path)
    norm = json.loads(meta["unet.normalization"])
    x = img.transpose(0, 3, 1, 2).astype(np.float64)
    if norm.get("mode") == "range":
        x = (x - norm["min"]) / (norm["max"] - norm["min"])
    else:
        raise AssertionError(f"unexpected normalization {norm}")
    with torch.no_grad():
        return m(torch.from_numpy(x)).argmax(1).numpy(), norm


if rc == 0:
    lab, norm = torch_labels(model, test_img)
    d = dice(lab == 1, test_mask == 1)
    check(d >= 0.9, f"PyTorch reference with the trained model: Dice {d:.3f} on unseen "
          f"RGB frames (>= 0.9; normalization {norm})")
    # The check can fail: the same frames with the channels in B, G, R order.
    lab_bgr, _ = torch_labels(model, test_img[..., ::-1].copy())
    d_bgr = dice(lab_bgr == 1, test_mask == 1)
    check(d_bgr < 0.5, f"channels in the wrong order segment noise: Dice {d_bgr:.3f} (< 0.5)")
    out = os.path.join(wd, "seg.tif")
    rc2, log = gst(f"tiffstacksrc location={paths['test']} ! unetsegment threads=1 "
                   f"model={model} ! tiffstacksink location={out}", timeout=120)
    seg = tifffile.imread(out) if rc2 == 0 else None
    agree = float((seg == lab).mean()) if seg is not None else 0.0
    # Same padding: tiles blended, so float rounding may flip a few near-tie pixels.
    check(seg is not None and agree >= 0.999,
          f"unetsegment on RGB agrees with PyTorch on {agree:.4%} of pixels (rc {rc2})")

    # Fine-tuning the 3-channel model on RGBA frames (alpha not used).
    tuned = os.path.join(wd, "tuned.safetensors")
    rc3, log = gst(f"unettrain name=t model={model} iterations=5 batch-size=2 tile-size=48 "
                   f"mask-mode=binary threads=1 device=cpu output-model={tuned} ! fakesink "
                   f"tiffstacksrc location={paths['img']} ! videoconvert ! "
                   f"video/x-raw,format=RGBA ! t.image "
                   f"tiffstacksrc location={paths['mask']} ! t.mask", timeout=300)
    check(rc3 == 0 and os.path.exists(tuned), f"fine-tune on RGBA pairs (rc {rc3}) "
          f"{log[-400:] if rc3 else ''}")

# Channels that do not match the model: an error naming both counts.
gray = os.path.join(wd, "gray.tif")
tifffile.imwrite(gray, train_img[..., 0], photometric="minisblack")
for what, extra, img, want in (
        ("gray frames, in-channels=3", "in-channels=3", gray, ("3 input channels", "have 1")),
        ("RGB frames, in-channels=1", "in-channels=1", paths["img"], ("1 input channel", "have 3"))):
    out = os.path.join(wd, "never.safetensors")
    rc, log = gst(f"unettrain name=t {extra} depth=2 base-filters=4 iterations=2 tile-size=48 "
                  f"mask-mode=binary threads=1 device=cpu output-model={out} ! fakesink "
                  f"tiffstacksrc location={img} ! t.image "
                  f"tiffstacksrc location={paths['mask']} ! t.mask", timeout=120)
    msg = [ln for ln in log.splitlines() if "channel" in ln][:1]
    check(isinstance(rc, int) and rc > 0 and all(x in log for x in want), f"{what}: error naming both counts "
          f"(rc {rc}): {msg}")

finish()
