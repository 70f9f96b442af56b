#!/usr/bin/env python3
"""Loss, Dice and optimiser conformance against PyTorch (float64).

Runs train-check-tool (engine/loss.c, engine/optim.c) on random inputs and compares
with PyTorch autograd / torch.optim / torch.optim.lr_scheduler computed in float64
from the same float32 inputs. Exits non-zero on any mismatch.

Usage: train_torch_check.py PATH/TO/train-check-tool
"""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

TOOL = sys.argv[1]
IGNORE = -1
failures = []


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + ("" if ok else "  " + detail))
    if not ok:
        failures.append(name)


def run_tool(mode, payload):
    with tempfile.TemporaryDirectory() as d:
        fin, fout = os.path.join(d, "in"), os.path.join(d, "out")
        with open(fin, "wb") as f:
            f.write(payload)
        subprocess.run([TOOL, mode, fin, fout], check=True)
        with open(fout, "rb") as f:
            return f.read()


def close(a, b, rtol, atol):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    err = np.abs(a - b)
    bad = err > atol + rtol * np.abs(b)
    return not bad.any(), f"max abs err {err.max():.3g} (atol {atol:.3g}, rtol {rtol:.3g})"


# ---------------------------------------------------------------- loss --
def torch_losses(z, y, w, dice_scale):
    """Weighted CE / BCE normalised by the sum of weights, soft Dice; float64."""
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.int64)
    K = z.shape[1]
    valid = (yt != IGNORE).double()
    wt = torch.tensor(w, dtype=torch.float64) if w is not None else torch.ones_like(valid)
    wt = wt * valid
    if K == 1:
        target = yt.clamp(min=0).double()
        per = F.binary_cross_entropy_with_logits(zt[:, 0], target, reduction="none")
    else:
        per = F.cross_entropy(zt, yt, reduction="none", ignore_index=IGNORE)
    denom = wt.sum()
    ce = (per * wt).sum() / denom if denom > 0 else (per * wt).sum() * 0
    (g_ce,) = torch.autograd.grad(ce, zt)

    zt2 = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    if K == 1:
        probs = torch.sigmoid(zt2)[:, 0:1]
        fg = [(probs[:, 0], 1)]
    else:
        probs = torch.softmax(zt2, dim=1)
        fg = [(probs[:, c], c) for c in range(1, K)]
    terms = []
    for p, c in fg:
        g = (yt == c).double()
        inter = (p * g * valid).sum()
        ps = (p * valid).sum()
        gs = (g * valid).sum()
        terms.append((2 * inter + 1.0) / (ps + gs + 1.0))
    dice = 1 - torch.stack(terms).mean()
    (g_dice,) = torch.autograd.grad(dice * dice_scale, zt2)
    return ce.item(), g_ce.numpy(), dice.item(), g_dice.numpy()


def numpy_dice(z, y):
    K = z.shape[1]
    pred = (z[:, 0] > 0).astype(np.int64) if K == 1 else z.argmax(axis=1)
    valid = y != IGNORE
    out = []
    for c in range(max(K, 2)):
        p = (pred == c) & valid
        g = (y == c) & valid
        s = p.sum() + g.sum()
        out.append(1.0 if s == 0 else 2.0 * (p & g).sum() / s)
    p = (pred != 0) & valid
    g = (y != 0) & valid
    s = p.sum() + g.sum()
    out.append(1.0 if s == 0 else 2.0 * (p & g).sum() / s)
    return out


def loss_case(name, rng, B, K, H, W, weights, ignore_frac, dice_scale=0.7, all_ignored=False):
    z = (rng.standard_normal((B, K, H, W)) * 3).astype(np.float32)
    y = rng.integers(0, max(K, 2), size=(B, H, W)).astype(np.int32)
    y[rng.random((B, H, W)) < ignore_frac] = IGNORE
    if all_ignored:
        y[:] = IGNORE
    w = (rng.random((B, H, W)) * 5 + 0.1).astype(np.float32) if weights else None
    payload = struct.pack("<5id", B, K, H, W, 1 if weights else 0, dice_scale)
    payload += z.tobytes() + y.tobytes() + (w.tobytes() if weights else b"")
    out = run_tool("loss", payload)
    n = B * K * H * W
    off = 0
    ce = struct.unpack_from("<d", out, off)[0]; off += 8
    g_ce = np.frombuffer(out, np.float32, n, off).reshape(z.shape); off += 4 * n
    dice = struct.unpack_from("<d", out, off)[0]; off += 8
    g_dice = np.frombuffer(out, np.float32, n, off).reshape(z.shape); off += 4 * n
    nd = max(K, 2) + 1
    dices = np.frombuffer(out, np.float64, nd, off)

    r_ce, r_gce, r_dice, r_gdice = torch_losses(z, y, w, dice_scale)
    # Both sides compute in double from the same float32 inputs: the losses differ
    # only by summation order and libm (~1e-15 relative); 1e-9 leaves room.
    check(f"{name}: loss", abs(ce - r_ce) <= 1e-9 * max(1.0, abs(r_ce)), f"{ce} vs {r_ce}")
    check(f"{name}: soft dice", abs(dice - r_dice) <= 1e-9, f"{dice} vs {r_dice}")
    # Gradients are stored as float32: 2^-24 relative rounding per element, plus
    # an absolute floor of 1e-6 of the largest entry for entries near zero.
    ok, det = close(g_ce, r_gce, 1e-6, 1e-6 * max(np.abs(r_gce).max(), 1e-30))
    check(f"{name}: d loss / d logits", ok, det)
    ok, det = close(g_dice, r_gdice, 1e-6, 1e-6 * max(np.abs(r_gdice).max(), 1e-30))
    check(f"{name}: d soft dice / d logits", ok, det)
    # Hard Dice from counts: exact.
    ok, det = close(dices, numpy_dice(z, y), 0, 1e-12)
    check(f"{name}: dice metric", ok, det)
    return r_gce


rng = np.random.default_rng(1234)
g = loss_case("softmax K=2 weighted+ignore", rng, 2, 2, 9, 11, True, 0.2)
check("softmax K=2: gradient is not trivially zero", np.abs(g).max() > 1e-4)
loss_case("softmax K=3 unweighted", rng, 3, 3, 7, 5, False, 0.0)
loss_case("softmax K=4 weighted+ignore", rng, 1, 4, 6, 13, True, 0.3)
loss_case("sigmoid K=1 weighted+ignore", rng, 2, 1, 8, 8, True, 0.25)
loss_case("sigmoid K=1 unweighted", rng, 1, 1, 5, 9, False, 0.0, dice_scale=1.0)
loss_case("all ignored", rng, 1, 2, 4, 4, True, 0.0, all_ignored=True)


# ------------------------------------------------------------ optimiser --
KINDS = {"sgd": 0, "adam": 1, "adamw": 2}
SCHED = {"constant": 0, "cosine": 1, "poly": 2}


def optim_case(name, kind, sched, lr, steps=6, momentum=0.0, nesterov=False, wd=0.0,
               betas=(0.9, 0.999), eps=1e-8, total=10, power=0.9, lr_min=0.0,
               warmup=0, ranges=None, n=257, seed=0):
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 0.5).astype(np.float32) for _ in range(steps)]
    rl = ranges or []
    payload = struct.pack("<6i", KINDS[kind], SCHED[sched], int(nesterov), n, steps, len(rl))
    payload += struct.pack("<10d", lr, momentum, betas[0], betas[1], eps, wd, float(total),
                           power, lr_min, float(warmup))
    for off, num, dec in rl:
        payload += struct.pack("<3i", off, num, int(dec))
    payload += w0.tobytes() + b"".join(g.tobytes() for g in grads)
    out = run_tool("optim", payload)

    # PyTorch: one tensor + param group per range (weight decay on or off).
    if not rl:
        rl = [(0, n, True)]
    params = [torch.tensor(w0[o:o + m].astype(np.float64), requires_grad=True) for o, m, _ in rl]
    groups = [{"params": [p], "weight_decay": wd if dec else 0.0} for p, (_, _, dec) in zip(params, rl)]
    if kind == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    elif kind == "adam":
        opt = torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    if warmup and sched == "constant":
        # Linear warm-up alone: PyTorch's own LinearLR from 1/W to 1 over W - 1 steps.
        sch = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / warmup,
                                                end_factor=1.0, total_iters=warmup - 1)
    elif warmup and sched == "cosine":
        # Warm-up on top of cosine: LambdaLR with the product of LinearLR's and
        # CosineAnnealingLR's closed forms (chaining the two recursive schedulers
        # would compound the factors).
        def factor(t):
            cos_lr = lr_min + (lr - lr_min) * (1 + np.cos(np.pi * t / total)) / 2
            return (min(t + 1, warmup) / warmup) * cos_lr / lr
        sch = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    elif sched == "cosine":
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=lr_min)
    elif sched == "poly":
        sch = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=power)
    else:
        sch = None
    n_buf = (1 if momentum > 0 else 0) if kind == "sgd" else 2
    off = 0
    ref = w0.astype(np.float64).copy()
    for s in range(steps):
        lr_c = struct.unpack_from("<d", out, off)[0]; off += 8
        w_c = np.frombuffer(out, np.float32, n, off); off += 4 * n
        bufs = []
        for _ in range(n_buf):
            bufs.append(np.frombuffer(out, np.float32, n, off)); off += 4 * n
        lr_t = opt.param_groups[0]["lr"]
        for p, (o, m, _) in zip(params, rl):
            p.grad = torch.tensor(grads[s][o:o + m].astype(np.float64))
        opt.step()
        if sch:
            sch.step()
        for p, (o, m, _) in zip(params, rl):
            ref[o:o + m] = p.detach().numpy()
        # lr: closed form vs PyTorch's chained recursion, ~1e-16 per step.
        check(f"{name}: lr step {s + 1}", abs(lr_c - lr_t) <= 1e-12 * max(lr_t, 1e-30),
              f"{lr_c} vs {lr_t}")
        # Parameters: the engine rounds parameters and state to float32 once per
        # step (2^-24 relative); over <= 6 steps with |w| ~ 1 that stays below
        # 1e-6 absolute. A wrong formula (bias correction, decay, Nesterov) is off
        # by >= 1e-4.
        ok, det = close(w_c, ref, 1e-6, 1e-6)
        check(f"{name}: params step {s + 1}", ok, det)
        # Optimiser state vs PyTorch's buffers (same rounding argument).
        st = [opt.state[p] for p in params]
        names = ["momentum_buffer"] if kind == "sgd" else ["exp_avg", "exp_avg_sq"]
        for bi in range(n_buf):
            rb = np.zeros(n)
            for sp, (o, m, _) in zip(st, rl):
                rb[o:o + m] = sp[names[bi]].numpy()
            scale = max(np.abs(rb).max(), 1e-30)
            ok, det = close(bufs[bi], rb, 1e-6, 1e-6 * scale)
            check(f"{name}: {names[bi]} step {s + 1}", ok, det)
    # Slab outside the ranges is untouched.
    covered = np.zeros(n, bool)
    for o, m, _ in rl:
        covered[o:o + m] = True
    check(f"{name}: frozen part untouched", np.array_equal(w_c[~covered], w0[~covered]))


optim_case("sgd momentum 0.99 (paper)", "sgd", "constant", 0.01, momentum=0.99)
optim_case("sgd nesterov wd cosine", "sgd", "cosine", 0.05, momentum=0.9, nesterov=True,
           wd=1e-2, total=5, steps=7, lr_min=1e-3)
optim_case("sgd plain poly", "sgd", "poly", 0.1, total=4, steps=6)
optim_case("adam wd poly ranges", "adam", "poly", 1e-2, wd=1e-2, total=8,
           ranges=[(0, 100, True), (120, 100, False), (230, 27, True)])
optim_case("adamw cosine", "adamw", "cosine", 3e-3, wd=0.05, total=6, lr_min=1e-4,
           betas=(0.8, 0.99), eps=1e-6)
optim_case("adam constant", "adam", "constant", 1e-3)
optim_case("adam warm-up constant", "adam", "constant", 1e-3, warmup=4, steps=7)
optim_case("sgd 0.99 warm-up cosine", "sgd", "cosine", 0.01, momentum=0.99, warmup=3,
           total=8, steps=8, lr_min=1e-4)

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all checks passed")
