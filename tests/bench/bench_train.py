#!/usr/bin/python3
"""Training steps per second: the engine's UnetTrainer (oneDNN backward passes, C
augmentation) against a PyTorch training loop with the same model, tile, batch,
optimiser and an equivalent augmentation in numpy/scipy, in the same run.

  bench_train.py [--build DIR] [--threads N] [--steps S] [--config NAME ...]

Each side: one untimed warm-up step, then S timed steps, alternating ours and PyTorch
--rounds times; a step = draw a sample
(random position, 3x3 elastic grid sigma 10 bicubic-upsampled to a per-pixel field,
random rotation, flips, gamma/contrast/brightness; image bicubic with mirror boundary,
labels nearest, weights bilinear) -> forward -> weighted softmax cross-entropy ->
backward -> SGD momentum 0.99. Weight maps are precomputed once per frame on both
sides (not timed). Prints medians and the ratio ours/PyTorch (> 1: we are faster).
Run on an otherwise idle machine; the ratio is what matters (both share it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
from scipy import ndimage

CONFIGS = {
    # name: (depth, base_filters, tile, batch)
    "classic-572": (4, 64, 572, 1),
    "d4-b32-572": (4, 32, 572, 1),
    "d3-b16-252": (3, 16, 252, 1),
    "d2-b8-124x4": (2, 8, 124, 4),
}


def output_size(depth, s):
    for _ in range(depth):
        s -= 4
        if s <= 0 or s % 2:
            return -1
        s //= 2
    s -= 4
    for _ in range(depth):
        s = s * 2 - 4
    return s if s > 0 else -1


def blobs(seed, w, h):
    """Bright discs on noise (same kind of data as the C tool; exact pixels differ)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(3 + rng.integers(0, 4) + (w * h) // 3000):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 10)
        mask |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    img = np.where(mask, 170.0, 60.0) + rng.uniform(-1, 1, (h, w)) * 45.0
    return np.clip(img, 0, 255).astype(np.float32) / 255.0, mask.astype(np.int64)


def weight_map(labels, w0=10.0, sigma=5.0):
    """Class balance + w0 exp(-(d1+d2)^2 / 2 sigma^2) from 4-connected objects."""
    inst, n = ndimage.label(labels > 0, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    freq = np.bincount(labels.ravel(), minlength=2).astype(np.float64)
    present = (freq > 0).sum()
    wc = (labels.size / (present * np.maximum(freq, 1)))[labels]
    if n >= 2:
        d = np.stack([ndimage.distance_transform_edt(inst != i) for i in range(1, n + 1)])
        d.sort(axis=0)
        wc = wc + w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma * sigma))
    return wc.astype(np.float32)


def augment(rng, img, lab, wmap, ti, to, grid=3, sigma=10.0):
    h, w = img.shape
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ang = rng.uniform(-np.pi, np.pi)
    fy, fx = (-1 if rng.random() < 0.5 else 1), (-1 if rng.random() < 0.5 else 1)
    disp = rng.normal(0, sigma, (2, grid, grid))
    field = np.stack([ndimage.zoom(d, ti / grid, order=3)[:ti, :ti] for d in disp])
    v, u = np.mgrid[0:ti, 0:ti].astype(np.float64) - (ti - 1) / 2.0
    u, v = u * fx, v * fy
    c, s = np.cos(ang), np.sin(ang)
    x = cx + c * u - s * v + field[1]
    y = cy + s * u + c * v + field[0]
    out_img = ndimage.map_coordinates(img, [y, x], order=3, mode="mirror")
    b = (ti - to) // 2
    yc, xc = y[b:b + to, b:b + to], x[b:b + to, b:b + to]
    out_lab = ndimage.map_coordinates(lab, [yc, xc], order=0, mode="mirror")
    out_w = ndimage.map_coordinates(wmap, [yc, xc], order=1, mode="mirror")
    gamma = np.exp(rng.uniform(-np.log(1.5), np.log(1.5)))
    out_img = np.sign(out_img) * np.abs(out_img) ** gamma
    m = out_img.mean()
    out_img = (out_img - m) * rng.uniform(0.8, 1.2) + m + rng.uniform(-0.1, 0.1)
    return out_img.astype(np.float32), out_lab, out_w


def torch_steps(depth, base, tile, batch, steps, threads):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(threads)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            f = [base << i for i in range(depth + 1)]
            self.enc = nn.ModuleList([block(1 if i == 0 else f[i - 1], f[i]) for i in range(depth)])
            self.bottom = block(f[depth - 1], f[depth])
            self.up = nn.ModuleList([nn.ConvTranspose2d(f[i + 1], f[i], 2, 2) for i in range(depth)])
            self.dec = nn.ModuleList([block(2 * f[i], f[i]) for i in range(depth)])
            self.head = nn.Conv2d(f[0], 2, 1)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
                x = F.max_pool2d(x, 2)
            x = self.bottom(x)
            for i in reversed(range(depth)):
                u = self.up[i](x)
                e = skips[i]
                oy, ox = (e.shape[2] - u.shape[2]) // 2, (e.shape[3] - u.shape[3]) // 2
                x = self.dec[i](torch.cat([e[:, :, oy:oy + u.shape[2], ox:ox + u.shape[3]], u], 1))
            return self.head(x)

    torch.manual_seed(0)
    net = UNet()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.99)
    to = output_size(depth, tile)
    frame = max(to, 64)
    frames = []
    for i in range(4):
        img, lab = blobs(77 + i, frame, frame)
        frames.append((img, lab, weight_map(lab)))
    rng = np.random.default_rng(0)
    times = []
    for it in range(steps + 1):
        t0 = time.perf_counter()
        xs, ys, ws = [], [], []
        for _ in range(batch):
            img, lab, wm = frames[rng.integers(0, len(frames))]
            a, b, c = augment(rng, img, lab, wm, tile, to)
            xs.append(a)
            ys.append(b)
            ws.append(c)
        x = torch.from_numpy(np.stack(xs)[:, None])
        y = torch.from_numpy(np.stack(ys))
        w = torch.from_numpy(np.stack(ws))
        opt.zero_grad(set_to_none=True)
        loss = (F.cross_entropy(net(x), y, reduction="none") * w).sum() / w.sum()
        loss.backward()
        opt.step()
        if it > 0:
            times.append(time.perf_counter() - t0)
    return times


def ours_steps(tool, depth, base, tile, batch, steps, threads):
    out = subprocess.run([tool, "--depth", str(depth), "--base-filters", str(base),
                          "--tile", str(tile), "--batch", str(batch), "--steps", str(steps),
                          "--warmup", "1", "--threads", str(threads), "--optimizer", "sgd"],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)["step_seconds"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--build", default=os.path.join(here, "..", "..", "build"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate ours/PyTorch this many times (evens out load drift)")
    ap.add_argument("--config", nargs="*", default=["d3-b16-252", "d4-b32-572"],
                    choices=sorted(CONFIGS))
    args = ap.parse_args()
    tool = os.path.join(args.build, "tests", "tools", "unet-train-bench")
    if not os.path.exists(tool):
        sys.exit(f"{tool} not found: build the project first (--build DIR)")

    print(f"training steps/s, {args.threads} threads, {args.rounds} x {args.steps} timed steps "
          f"per side (median), load average {os.getloadavg()[0]:.1f}")
    print(f"{'config':<14} {'tile':>5} {'batch':>5} {'ours s/step':>12} {'torch s/step':>13} "
          f"{'ours steps/s':>13} {'torch steps/s':>14} {'ratio':>6}")
    for name in args.config:
        depth, base, tile, batch = CONFIGS[name]
        o, t = [], []
        for _ in range(args.rounds):
            o += ours_steps(tool, depth, base, tile, batch, args.steps, args.threads)
            t += torch_steps(depth, base, tile, batch, args.steps, args.threads)
        ours, theirs = statistics.median(o), statistics.median(t)
        print(f"{name:<14} {tile:>5} {batch:>5} {ours:>12.4f} {theirs:>13.4f} "
              f"{1 / ours:>13.3f} {1 / theirs:>14.3f} {theirs / ours:>6.2f}")


if __name__ == "__main__":
    main()
