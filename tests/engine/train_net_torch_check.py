#!/usr/bin/env python3
"""Whole-network training gradients vs PyTorch (float64).

For several configs (depth, padding, batch norm, classes, channels, batch,
non-square tiles): a random model (tests/reference/unet_ref.py) saved as F32, a
random input and a random dL/dlogits; train-net-tool runs the engine's training
forward + backward on the CPU; PyTorch runs the same model in training mode in
float64 from the same float32 weights. Compared per tensor: logits, every
parameter gradient, and the batch-norm running statistics after the step.

Usage: train_net_torch_check.py PATH/TO/train-net-tool
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.environ.get("UNET_SOURCE_ROOT", "."), "tests", "reference"))
import unet_ref  # noqa: E402

TOOL = sys.argv[1]
failures = []
# Tolerance: the engine computes in float32 (oneDNN convolutions, float sums), the
# reference in float64. The issue asks for 1e-4 relative per tensor; float32
# rounding over these small nets gives ~1e-6, so 1e-4 fails only on real errors.
RTOL = 1e-4


def rel_err(a, b):
    """max |a - b| / max |b|"""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    scale = np.abs(b).max()
    return np.abs(a - b).max() / (scale if scale > 0 else 1.0)


def output_size(cfg, s):
    shrink = 4 if cfg["padding"] == "valid" else 0
    D = cfg["depth"]
    enc = []
    for _ in range(D):
        s -= shrink
        if s <= 0 or s % 2:
            return -1
        enc.append(s)
        s //= 2
    s -= shrink
    if s < 1:
        return -1
    for i in reversed(range(D)):
        s *= 2
        if s > enc[i]:
            return -1
        s -= shrink
        if s < 1:
            return -1
    return s


def legal(cfg, s):
    while output_size(cfg, s) < 1:
        s += 1
    return s


def case(name, cfg, batch, h, w, seed):
    h, w = legal(cfg, h), legal(cfg, w)
    oh, ow = output_size(cfg, h), output_size(cfg, w)
    model = unet_ref.random_model(cfg, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, cfg["in_channels"], h, w)).astype(np.float32)
    gl = rng.standard_normal((batch, cfg["classes"], oh, ow)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        mpath = os.path.join(d, "m.safetensors")
        unet_ref.save_model(model, mpath)
        x.tofile(os.path.join(d, "x"))
        gl.tofile(os.path.join(d, "g"))
        out = os.path.join(d, "out.safetensors")
        subprocess.run([TOOL, mpath, os.path.join(d, "x"), os.path.join(d, "g"), out,
                        str(batch), str(h), str(w), "0"], check=True)
        res, _ = unet_ref.load_safetensors(out)

    # The engine sees float32 weights: round the reference's weights the same way.
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.float().double())
    model.train()
    xt = torch.tensor(x, dtype=torch.float64)
    logits = model(xt)
    logits.backward(torch.tensor(gl, dtype=torch.float64))
    e = rel_err(res["logits"], logits.detach().numpy())
    ok = e <= RTOL
    print(f"{'ok  ' if ok else 'FAIL'} {name}: logits rel err {e:.2e}")
    if not ok:
        failures.append(name + " logits")
    params = dict(model.named_parameters())
    gscale = max(p.grad.abs().max().item() for p in params.values())
    worst = (0.0, "")
    n = 0
    for k, p in params.items():
        g = res.get("grad." + k)
        if g is None:
            failures.append(f"{name}: no gradient for {k}")
            continue
        if p.grad.abs().max().item() < 1e-9 * gscale:
            # A bias followed (through convolutions) by batch norm has a true
            # gradient of exactly zero (the norm removes any constant: conv
            # biases; up-conv biases with valid padding); the engine's value is
            # the float32 residue of a sum that cancels (~1e-7 of the net's
            # gradient scale). 1e-5 of the scale still catches a wrong BN backward.
            e = np.abs(g).max() / gscale * (RTOL / 1e-5)
        else:
            e = rel_err(g, p.grad.numpy())
        n += 1
        if e > RTOL:
            failures.append(f"{name}: grad {k} rel err {e:.2e}")
            print(f"FAIL {name}: grad {k} rel err {e:.2e}")
        worst = max(worst, (e, k))
    print(f"{'ok  ' if worst[0] <= RTOL else 'FAIL'} {name}: {n} gradients, worst {worst[1]} {worst[0]:.2e}")
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            e = rel_err(res["param." + k], v.numpy())
            if e > 1e-5:  # float32 storage of a float64 update: ~1e-7
                failures.append(f"{name}: {k} rel err {e:.2e}")
                print(f"FAIL {name}: {k} rel err {e:.2e}")


mc = unet_ref.make_config
case("depth 1 valid", mc(1, 2, 1, 4, "valid"), 2, 18, 22, 1)
case("depth 2 valid bn rgb 3 classes", mc(3, 3, 2, 4, "valid", True), 2, 44, 60, 2)
case("depth 2 same bn sigmoid", mc(1, 1, 2, 3, "same", True), 3, 16, 24, 3)
case("depth 3 valid", mc(1, 2, 3, 2, "valid"), 1, 60, 76, 4)
case("depth 2 same no bn", mc(1, 4, 2, 5, "same"), 2, 12, 8, 5)
# Filter counts that are multiples of 16 and 8: the executor keeps these activations
# in oneDNN's blocked layouts (nChw16c, nChw8c) through pooling, batch norm and concat.
case("depth 2 valid bn base 16", mc(1, 2, 2, 16, "valid", True), 2, 44, 44, 6)
case("depth 2 valid base 8", mc(1, 2, 2, 8, "valid"), 1, 44, 60, 7)
# A 1x1 bottom: the up-convolution's input is a single pixel.
case("depth 3 same 1x1 bottom", mc(1, 2, 3, 2, "same"), 2, 8, 8, 8)

if failures:
    print("\n".join(failures))
    sys.exit(1)
print("all checks passed")
