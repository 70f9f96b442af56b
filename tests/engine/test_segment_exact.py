#!/usr/bin/python3
"""Exactness of the overlap-tile segmenter against the PyTorch reference.

Valid-padded models: the stitched output of unet-segment-frame (engine segmenter,
float32, any tile size and batch) must equal one float64 forward pass over the whole
frame mirror-extended with numpy.pad(mode="reflect") to the smallest legal size
(origin -border), cropped to the frame: max |diff| <= 1e-4 on probabilities.

Same-padded batch-norm models: a tile covering the frame is the whole-frame pass
(same 1e-4); overlapping tiles blended by the Gaussian window must equal a float64
blend of the reference's per-tile passes (same 1e-4; placement, mirror extension and
window as DESIGN.md/tiling.c state them), and their deviation from the whole-frame
pass (the "no visible seams" measure, a property of the model) is printed.

Fresh random models and frames every run; the seed is printed (set UNET_TEST_SEED to
repeat a run).

usage: test_segment_exact.py PATH/TO/unet-segment-frame
"""
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.environ.get("UNET_SOURCE_ROOT",
                      os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import unet_ref  # noqa: E402

# float32 inference vs a float64 reference: the contract for probabilities
# ("to fp32 rounding, <= 1e-4"). Small random models keep the accumulated float32
# rounding near 1e-6, so a tiling error (misaligned grid, wrong mirror index, an
# unowned pixel) shows up orders of magnitude above this.
TOL = 1e-4
# Gaussian blending is an approximation for same-padded nets: zero padding makes a
# tile's border pixels differ from the whole-frame pass, by an amount that depends on
# the random model (mean |diff| 0.004..0.034, max up to 0.49 over seeds 1-3). A bound
# on that deviation could neither be derived nor catch a one-pixel seam (diluted in
# the mean), so the blend is instead compared with an independent float64 blend of the
# reference's own per-tile passes at TOL: the weights are float32 (relative error
# ~6e-8), so that comparison is as tight as the valid-padding one.


def out_size(cfg, s):
    """Output edge of a legal input edge, else -1 (network.md geometry)."""
    d = cfg["depth"]
    if cfg["padding"] == "same":
        return s if s > 0 and s % (1 << d) == 0 else -1
    for _ in range(d):
        s -= 4
        if s <= 0 or s % 2:
            return -1
        s //= 2
    s -= 4
    if s <= 0:
        return -1
    for _ in range(d):
        s = 2 * s - 4
        if s <= 0:
            return -1
    return s


def input_for_output(cfg, n):
    s = 1
    while out_size(cfg, s) < n:
        s += 1
    return s


def mirror(i, n):
    if n == 1:
        return 0
    p = 2 * (n - 1)
    r = i % p
    return r if r < n else p - r


def check_numpy_reflect():
    """numpy's reflect pad equals the contract's mirror ("reflect again" when the
    margin exceeds the frame, 1-pixel frames constant) for every size used here."""
    for n in range(1, 12):
        a = np.arange(n)
        for before, after in ((0, 0), (1, 2), (n, n + 3), (5 * n + 7, 3 * n + 11)):
            got = np.pad(a, (before, after), mode="reflect")
            want = np.array([mirror(i - before, n) for i in range(n + before + after)])
            assert (got == want).all(), (n, before, after, got, want)


def reference(model, cfg, frame):
    """Whole-frame float64 probabilities (K,H,W) of a gray (H,W) or (C,H,W) frame."""
    h, w = frame.shape[-2:]
    if cfg["padding"] == "valid":
        lh, lw = input_for_output(cfg, h), input_for_output(cfg, w)
        b = (lh - out_size(cfg, lh)) // 2
        pad = ((b, lh - h - b), (b, lw - w - b))
    else:
        step = 1 << cfg["depth"]
        lh, lw = -(-h // step) * step, -(-w // step) * step
        pad = ((0, lh - h), (0, lw - w))
    planes = frame.reshape(-1, h, w)
    assert planes.shape[0] == cfg["in_channels"]
    x = np.stack([np.pad(p.astype(np.float64), pad, mode="reflect") for p in planes])[None]
    p = unet_ref.probabilities(model, x)[0]
    return p[:, :h, :w]


def gaussian_window(n):
    """tiling.c's window: sigma n/8 about the tile centre."""
    d = (np.arange(n) - (n - 1) / 2.0) / (n / 8.0)
    return np.exp(-0.5 * d * d)


def blended_reference(model, cfg, frame, th, tw):
    """Float64 Gaussian blend of per-tile passes, placed as tiling.c documents for
    same padding: half-tile overlap on the 2^depth grid, the last tile mirror-extended
    past the frame end. Returns ((K,H,W) probabilities, tile count)."""
    h, w = frame.shape
    step = 1 << cfg["depth"]

    def axis(n, t):
        if t >= n:
            return [0]
        stride = max(step, (t // 2) // step * step)
        return [i * stride for i in range((n - t + stride - 1) // stride + 1)]

    ys, xs = axis(h, th), axis(w, tw)
    wy, wx = gaussian_window(th), gaussian_window(tw)
    acc = np.zeros((cfg["classes"], h, w))
    wsum = np.zeros((h, w))
    for y0 in ys:
        for x0 in xs:
            iy = [mirror(i, h) for i in range(y0, y0 + th)]
            ix = [mirror(i, w) for i in range(x0, x0 + tw)]
            x = frame.astype(np.float64)[np.ix_(iy, ix)]
            x = np.repeat(x[None, None], cfg["in_channels"], axis=1)
            p = unet_ref.probabilities(model, x)[0]
            y1, x1 = min(y0 + th, h), min(x0 + tw, w)
            wt = np.outer(wy, wx)[:y1 - y0, :x1 - x0]
            acc[:, y0:y1, x0:x1] += wt * p[:, :y1 - y0, :x1 - x0]
            wsum[y0:y1, x0:x1] += wt
    return acc / wsum, len(ys) * len(xs)


def run_tool(tool, model_path, frame, specs, tmp, frames=1):
    h, w = frame.shape[-2:]
    channels = frame.size // (h * w)
    fpath = os.path.join(tmp, "frame.f32")
    frame.astype("<f4").tofile(fpath)
    out = os.path.join(tmp, "out")
    # One thread: the test checks geometry, not speed, and OpenMP barriers of many
    # tiny forwards are slow on a busy 2-core machine.
    cmd = [tool, "--threads", "1", "--frames", str(frames), "--channels", str(channels),
           model_path, fpath, str(w), str(h), "f32", out]
    cmd += ["%d,%d,%d" % s for s in specs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError("%s failed: %s" % (" ".join(cmd), res.stderr))
    results = []
    lines = res.stdout.strip().splitlines()
    for i, line in enumerate(lines):
        _, th, tw, nt = map(int, line.split())
        p = np.fromfile("%s.%d.f32" % (out, i), dtype="<f4")
        results.append(((th, tw, nt), p))
    return results


def main():
    tool = sys.argv[1]
    seed = int(os.environ.get("UNET_TEST_SEED", random.SystemRandom().randrange(1 << 31)))
    print("seed", seed, "(UNET_TEST_SEED to repeat)")
    rng = np.random.default_rng(seed)
    check_numpy_reflect()
    print("numpy reflect == contract mirror: ok")

    # (config, frames (h, w), extra tile specs): specs (tile_h, tile_w, batch) with 0
    # = the smallest usable legal tile; "big" = larger than the frame.
    cases = [
        (unet_ref.make_config(classes=2, depth=2, base_filters=4),
         [(1, 1), (7, 300), (300, 7), (389, 389), (1000, 700)]),
        (unet_ref.make_config(classes=1, depth=3, base_filters=4),
         [(1, 1), (7, 300), (45, 61)]),
        (unet_ref.make_config(in_channels=3, classes=3, depth=3, base_filters=4),
         [(20, 33), (161, 170)]),
    ]
    worst = 0.0
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for ci, (cfg, frames) in enumerate(cases):
            model = unet_ref.random_model(cfg, int(rng.integers(1 << 31)))
            mpath = os.path.join(tmp, "model%d.safetensors" % ci)
            unet_ref.save_model(model, mpath)
            step = 1 << cfg["depth"]
            for (h, w) in frames:
                # A 3-channel model gets 3 different planes (not a gray copy).
                shape = (h, w) if cfg["in_channels"] == 1 else (cfg["in_channels"], h, w)
                frame = rng.random(shape, dtype=np.float32) * 2 - 0.5
                ref = reference(model, cfg, frame)
                lh, lw = input_for_output(cfg, h), input_for_output(cfg, w)
                big = (lh + 3 * step, lw + 5 * step)
                # (1, x): the smallest usable legal tile edge along that axis;
                # (0, 0): automatic; big: larger than the frame.
                if h * w > 100000:
                    # Large frames: smallest tiles along one axis only, so the tile
                    # count (and the run time on 2 cores) stays small.
                    specs = [(1, big[1], 4), (150, 230, 3), (big[0], big[1], 1)]
                    if h * w > 400000:
                        specs = [(1, big[1], 4), (150, 230, 3), (0, 0, 1)]
                else:
                    specs = [(1, 1, 1), (1, 1, 3), (1, 60, 2), (70, 1, 5),
                             (big[0], big[1], 1)]
                frames_n = 3 if (h, w) == (7, 300) else 1
                res = run_tool(tool, mpath, frame, specs, tmp, frames_n)
                for spec, ((th, tw, nt), p) in zip(specs, res):
                    p = p.reshape(ref.shape)
                    err = float(np.abs(p - ref).max())
                    worst = max(worst, err)
                    ok = err <= TOL
                    print("cfg %d frame %4dx%-4d spec %-16s tile %4dx%-4d tiles %5d "
                          "max|diff| %.2e %s" % (ci, w, h, spec, tw, th, nt, err,
                                                 "ok" if ok else "FAIL"))
                    if not ok:
                        failures.append((ci, h, w, spec, err))

        # Same padding + batch norm: exact with one covering tile, blended otherwise.
        cfg = unet_ref.make_config(classes=2, depth=2, base_filters=4, padding="same",
                                   batch_norm=True)
        model = unet_ref.random_model(cfg, int(rng.integers(1 << 31)))
        mpath = os.path.join(tmp, "model-same.safetensors")
        unet_ref.save_model(model, mpath)
        h, w = 100, 141
        frame = rng.random((h, w), dtype=np.float32)
        ref = reference(model, cfg, frame)
        specs = [(512, 512, 1), (64, 64, 4), (32, 48, 2)]
        for spec, ((th, tw, nt), p) in zip(specs, run_tool(tool, mpath, frame, specs, tmp)):
            p = p.reshape(ref.shape)
            d = np.abs(p - ref)
            blend, n_ref = blended_reference(model, cfg, frame, th, tw)
            e = float(np.abs(p - blend).max())
            ok = n_ref == nt and e <= TOL and (nt > 1 or d.max() <= TOL)
            print("same/bn frame %dx%d tile %dx%d tiles %d (reference %d): max|diff| "
                  "vs blended reference %.2e; vs whole frame max %.3e mean %.3e %s"
                  % (w, h, tw, th, nt, n_ref, e, d.max(), d.mean(),
                     "ok" if ok else "FAIL"))
            if not ok:
                failures.append(("same", h, w, spec, e))

    print("worst valid max|diff| %.2e (tolerance %.0e)" % (worst, TOL))
    if failures:
        print("FAILED:", failures)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
