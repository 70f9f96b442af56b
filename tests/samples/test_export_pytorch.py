#!/usr/bin/python3
"""samples/export-pytorch.py: a PyTorch U-Net whose tensors use other names (a common
"down/up" naming) is saved with torch.save, exported with --rename, and our C forward
pass (tests/tools/unet-forward) on the exported file must give PyTorch's probabilities
(float64 forward of the same weights) within 1e-4 — the conformance bound of the engine
(fp32 arithmetic over a small net deviates by ~1e-6). A wrong architecture must be
refused naming the tensor."""

import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

SRC = os.environ.get("UNET_SOURCE_ROOT",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("UNET_BUILD_ROOT", os.path.join(SRC, "build"))
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import unet_ref  # noqa: E402

EXPORT = os.path.join(SRC, "samples", "export-pytorch.py")
FORWARD = os.path.join(BUILD, "tests", "tools", "unet-forward")


def main():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"seed {seed}")
    cfg = unet_ref.make_config(1, 2, 2, 8, "valid", True, 0.0)
    model = unet_ref.random_model(cfg, seed)
    renamed = {k.replace("enc.", "down.", 1).replace("dec.", "up_path.", 1): v
               for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as d:
        pt, out = os.path.join(d, "w.pt"), os.path.join(d, "m.safetensors")
        torch.save(renamed, pt)
        r = subprocess.run([sys.executable, EXPORT, pt, out, "--depth", "2",
                            "--base-filters", "8", "--batch-norm",
                            "--rename", "down.=enc.", "--rename", "up_path.=dec.",
                            "--normalization", '{"mode":"none"}'],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        h = w = 44   # legal for depth 2 valid (output 4)
        x = np.random.default_rng(seed).standard_normal((1, 1, h, w)).astype(np.float32)
        xin, yout = os.path.join(d, "x.raw"), os.path.join(d, "y.raw")
        x.tofile(xin)
        r = subprocess.run([FORWARD, "-m", out, "-i", xin, "-o", yout, "-H", str(h),
                            "-W", str(w), "-t", "1"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        ref = unet_ref.probabilities(model, x)
        ours = np.fromfile(yout, dtype="<f4").reshape(ref.shape)
        err = float(np.abs(ours - ref).max())
        print(f"max|ours - PyTorch| = {err:.2e}")
        assert err <= 1e-4, err

        # the same weights declared with the wrong depth: refused, naming a tensor
        r = subprocess.run([sys.executable, EXPORT, pt, out + "2", "--depth", "3",
                            "--base-filters", "8", "--batch-norm",
                            "--rename", "down.=enc.", "--rename", "up_path.=dec."],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "enc.2.conv1.weight" in r.stderr, r.stderr
        assert not os.path.exists(out + "2")
    print("ok")


if __name__ == "__main__":
    main()
