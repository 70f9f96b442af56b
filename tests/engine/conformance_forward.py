#!/usr/bin/env python3
"""Forward-pass conformance of the C engine (CPU backend) against PyTorch.

For many configs (depth 1-5, base 4-64, valid and same padding, batch norm on and
off, 1/2/3 classes, 1 or 3 input channels, square and non-square tiles, batch 1-3)
this builds a random model with tests/reference/unet_ref.py, saves it as a
contract .safetensors file, computes float64 probabilities with PyTorch and runs
the C side through tests/tools/unet-forward on fresh random inputs (the seed is
printed so a failure can be reproduced with --seed).

Pass criterion (issue 3, "1e-4 relative, fp32"):
    max |ours - ref| <= 1e-4 * max(1, max |ref|)
Probabilities lie in [0, 1], so this is an absolute 1e-4. Where it comes from:
fp32 convolutions accumulate rounding of order sqrt(K) * 6e-8 relative per layer
(K <= 9 * 1024 products) over ~20 layers, i.e. ~1e-5 on the logits at most, and
softmax/sigmoid have slope <= 1/4; a real mistake (wrong crop offset, swapped
weight layout, missing bias or batch-norm term) shows up at 1e-2 .. 1e0.
The reference uses the float32-rounded weights that are in the file.

Also checked: the C output shape (unet_config_output_size) equals PyTorch's, an
illegal tile size is rejected with a clear error, and the bf16 mode stays within
its own (looser, documented) bound.

Usage: conformance_forward.py [--seed N] [--unet-forward PATH] [--quick]
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.environ.get("UNET_SOURCE_ROOT",
                     os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("UNET_BUILD_ROOT", os.path.join(SRC, "build"))
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))

import unet_ref  # noqa: E402

TOL_FP32 = 1e-4
# bf16 keeps 8 significant bits: every bf16 convolution rounds its input and its
# weights with unit roundoff u = 2^-8, i.e. adds a relative error of at most ~2u to
# its output (fp32 accumulation is exact by comparison). To first order these add up
# linearly over the L convolutions, so every logit moves by at most
# delta = 2·u·L·max|z| (z = float64 reference logits). The check is then exact given
# that: each bf16 probability must lie in the interval that softmax (or sigmoid) maps
# [z - delta, z + delta] to, pixel by pixel. Confident pixels thus get tight bounds
# (a saturated softmax barely moves) and a wrong layout or garbage falls outside.
BF16_U = 2.0 ** -8


def bf16_interval(cfg, z):
    """(lo, hi) probability bounds for logits z (B,K,H,W) moved by at most delta."""
    L = 2 * cfg["depth"] + 2 + 3 * cfg["depth"] + 1   # enc, bottom, dec (up+2), head
    delta = 2.0 * BF16_U * L * float(np.abs(z).max())
    if z.shape[1] == 1:
        sig = lambda t: 1.0 / (1.0 + np.exp(-t))   # noqa: E731
        return sig(z - delta), sig(z + delta)
    zmax = z.max(axis=1, keepdims=True)
    e_lo, e_hi = np.exp(z - zmax - delta), np.exp(z - zmax + delta)
    rest_hi = e_hi.sum(axis=1, keepdims=True) - e_hi   # others as large as possible
    rest_lo = e_lo.sum(axis=1, keepdims=True) - e_lo
    return e_lo / (e_lo + rest_hi), e_hi / (e_hi + rest_lo)


def walk(cfg, s):
    """Output edge for input edge s, or None when s is illegal (network.md)."""
    D = cfg["depth"]
    shrink = 4 if cfg["padding"] == "valid" else 0
    enc = []
    for _ in range(D):
        e = s - shrink
        if e <= 0 or e % 2:
            return None
        enc.append(e)
        s = e // 2
    s -= shrink
    if s < 1:
        return None
    for i in reversed(range(D)):
        u = 2 * s
        if u > enc[i]:
            return None
        s = u - shrink
        if s < 1:
            return None
    return s


def legal_at_least(cfg, s):
    while walk(cfg, s) is None:
        s += 1
    return s


# (in_channels, classes, depth, base, padding, batch_norm, batch, extra_h, extra_w)
# extra_*: how many size steps (2^depth) above the smallest legal edge.
CONFIGS = [
    (1, 2, 1, 4, "valid", False, 1, 0, 0),
    (1, 2, 1, 8, "same", True, 2, 1, 0),
    (3, 3, 1, 16, "valid", True, 3, 0, 2),
    (1, 1, 2, 4, "valid", True, 1, 1, 1),
    (3, 2, 2, 8, "same", False, 2, 0, 1),
    (1, 3, 2, 16, "valid", False, 2, 2, 0),
    (1, 2, 2, 32, "same", True, 1, 1, 2),
    (3, 1, 2, 64, "valid", False, 1, 0, 0),
    (1, 2, 3, 4, "same", False, 3, 1, 0),
    (1, 2, 3, 8, "valid", True, 1, 0, 1),
    (3, 2, 3, 16, "valid", False, 2, 1, 0),
    (1, 1, 3, 16, "same", True, 2, 0, 0),
    (1, 3, 3, 32, "valid", True, 1, 0, 0),
    (3, 3, 3, 4, "valid", False, 2, 2, 1),
    (1, 2, 4, 4, "valid", False, 1, 0, 0),
    (1, 2, 4, 8, "same", True, 2, 1, 1),
    (3, 2, 4, 16, "valid", True, 1, 0, 0),
    (1, 1, 4, 8, "valid", False, 1, 1, 0),
    (1, 2, 4, 16, "same", False, 3, 0, 0),
    (1, 3, 4, 4, "same", True, 1, 0, 2),
    (1, 2, 5, 4, "valid", False, 1, 0, 0),
    (3, 2, 5, 4, "same", True, 2, 1, 0),
    (1, 1, 5, 8, "same", False, 1, 0, 1),
    (1, 2, 5, 4, "valid", True, 1, 0, 0),
    (1, 2, 1, 64, "same", True, 2, 0, 0),
    (1, 2, 2, 48, "valid", True, 1, 0, 0),
    # widths that are no multiple of 8: the CPU backend pads them to 8-channel
    # blocks with zero weights (graph.h) -- 12 -> 16, 20 -> 24, 5 -> 8, 10 -> 16
    # (the base-4 configs above: 4 -> 8)
    (1, 2, 2, 12, "valid", True, 2, 0, 1),
    (3, 3, 3, 20, "same", False, 1, 1, 0),
    (1, 1, 3, 5, "valid", True, 2, 0, 0),
    (1, 2, 4, 20, "valid", False, 1, 0, 0),
]


def run_forward(exe, model_path, x, h, w, extra=(), env=None):
    with tempfile.TemporaryDirectory() as d:
        xin = os.path.join(d, "x.raw")
        yout = os.path.join(d, "y.raw")
        np.ascontiguousarray(x, dtype="<f4").tofile(xin)
        cmd = [exe, "-m", model_path, "-i", xin, "-o", yout, "-n", str(x.shape[0]),
               "-H", str(h), "-W", str(w)] + list(extra)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return None, r
        return np.fromfile(yout, dtype="<f4"), r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--unet-forward", default=os.path.join(BUILD, "tests", "tools",
                                                          "unet-forward"))
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    print(f"seed {seed} (reproduce with --seed {seed})", flush=True)
    rng = np.random.default_rng(seed)
    exe = args.unet_forward
    failures = 0

    with tempfile.TemporaryDirectory() as tmp:
        for k, (C, K, D, B, pad, bn, nb, xh, xw) in enumerate(CONFIGS):
            cfg = unet_ref.make_config(C, K, D, B, pad, bn, 0.0)
            step = 2 ** D
            h = legal_at_least(cfg, 1) + xh * step
            w = legal_at_least(cfg, 1) + xw * step
            path = os.path.join(tmp, f"m{k}.safetensors")
            unet_ref.save_model(unet_ref.random_model(cfg, seed + k), path)
            ref_model, _ = unet_ref.load_model(path)   # float32-rounded weights
            x = rng.standard_normal((nb, C, h, w)).astype(np.float32)
            ref = unet_ref.probabilities(ref_model, x)
            # alternate thread counts and chunking (exercises a second plan)
            extra = ["-t", str(1 + k % 2)]
            if nb == 3:
                extra += ["--batch-size", "2"]
            y, r = run_forward(exe, path, x, h, w, extra)
            name = (f"C={C} K={K} D={D} B={B} {pad} bn={int(bn)} batch={nb} "
                    f"{h}x{w}")
            if y is None:
                print(f"FAIL {name}: unet-forward exited {r.returncode}: "
                      f"{r.stderr.strip()}")
                failures += 1
                continue
            oh, ow = walk(cfg, h), walk(cfg, w)
            if ref.shape != (nb, K, oh, ow) or y.size != ref.size:
                print(f"FAIL {name}: shape C {y.size} values, PyTorch {ref.shape}, "
                      f"geometry ({nb},{K},{oh},{ow})")
                failures += 1
                continue
            err = float(np.abs(y.reshape(ref.shape) - ref).max())
            bound = TOL_FP32 * max(1.0, float(np.abs(ref).max()))
            ok = err <= bound
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {name}: max|diff| {err:.2e} "
                  f"(bound {bound:.0e})", flush=True)

            # widths no multiple of 8 unpadded (UNET_CPU_PAD_CHANNELS=0: plain
            # layouts, the other kernels), within the same bound
            if B % 8 and D >= 2:
                yu, r = run_forward(exe, path, x, h, w, extra,
                                    dict(os.environ, UNET_CPU_PAD_CHANNELS="0"))
                eu = float(np.abs(yu.reshape(ref.shape) - ref).max()) \
                    if yu is not None and yu.size == ref.size else float("inf")
                oku = eu <= bound
                failures += not oku
                print(f"{'ok  ' if oku else 'FAIL'} unpadded {name}: max|diff| {eu:.2e}"
                      f"{'' if yu is not None else ': ' + r.stderr.strip()}", flush=True)

            if k in (10, 16):
                yb, r = run_forward(exe, path, x, h, w, ["--precision", "bf16"])
                if yb is None:
                    print(f"FAIL bf16 {name}: {r.stderr.strip()}")
                    failures += 1
                    continue
                yb = yb.reshape(ref.shape)
                eb = float(np.abs(yb - ref).max())
                with unet_ref.torch.no_grad():
                    z = ref_model.double().eval()(
                        unet_ref.torch.as_tensor(x, dtype=unet_ref.torch.float64))
                lo, hi = bf16_interval(cfg, z.numpy())
                slack = 1e-6   # fp32 rounding of the probabilities themselves
                outside = int(((yb < lo - slack) | (yb > hi + slack)).sum())
                okb = outside == 0
                failures += not okb
                # below AVX-512 oneDNN has no bf16 kernels: the backend says so and
                # computes in fp32, which lies within the same bounds
                fell_back = "bf16 is not available on this CPU" in r.stderr
                print(f"{'ok  ' if okb else 'FAIL'} bf16 {name}: max|diff| {eb:.2e} "
                      f"({outside} of {yb.size} outside the propagated bf16 bounds"
                      f"{'; computed in fp32, no bf16 kernels on this CPU' if fell_back else ''})",
                      flush=True)

        # The default kernels (Winograd F(4x4,3x3) on wide layers where the
        # backend checked it thread-invariant, transposed convolutions as 1x1 +
        # shuffle) must give an image the same bits whatever the thread count and
        # whatever it is batched with (README: shards and element tests rely on it).
        # (base 12: channel counts that are no multiple of 8, plain layouts, see
        # cpu_pd_chain; base 64 last: its model is the one the cache check below uses)
        for inv_base in (12, 64):
            cfg = unet_ref.make_config(1, 2, 2, inv_base, "valid", False, 0.0)
            path = os.path.join(tmp, "invariance.safetensors")
            unet_ref.save_model(unet_ref.random_model(cfg, seed), path)
            h = legal_at_least(cfg, 1) + 4 * 4
            x = rng.standard_normal((2, 1, h, h)).astype(np.float32)
            env = dict(os.environ, UNET_CPU_VERBOSE="1")
            env.pop("UNET_CPU_CONV_ALGO", None)
            outs = []
            for extra in (["-t", "1"], ["-t", "2"], ["-t", "2", "--batch-size", "1"],
                          ["-t", "1", "--batch-size", "1"]):
                y, r = run_forward(exe, path, x, h, h, extra, env)
                if y is None:
                    print(f"FAIL invariance {extra}: {r.stderr.strip()}")
                    failures += 1
                    break
                outs.append((extra, y))
            # oneDNN's Winograd (AVX-512, checked and cached) or the backend's own
            # (cpu-wino8, AVX2: invariant by construction, nothing cached)
            wino = "winograd 4x3 agrees" in r.stderr
            wino8 = "cpu-wino8" in r.stderr
            for extra, y in outs[1:]:
                same = y.tobytes() == outs[0][1].tobytes()
                failures += not same
                print(f"{'ok  ' if same else 'FAIL'} default kernels, D=2 B={inv_base} {h}x{h} "
                      f"batch 2: {' '.join(extra)} {'equals' if same else 'differs from'} "
                      f"-t 1 bit for bit (Winograd {'used' if wino or wino8 else 'not offered'})",
                      flush=True)

        # The verdicts of that check are kept for the machine (cpu-conv-cache.c): a
        # process that reads them gives the same bits as one that checks again.
        cache_dir = os.path.join(tmp, "cache")
        cenv = dict(env, UNET_CACHE_DIR=cache_dir)
        y1, r1 = run_forward(exe, path, x, h, h, ["-t", "2"], cenv)
        cache_file = os.path.join(cache_dir, "cpu-conv-verdicts.txt")
        lines = open(cache_file).read().splitlines() if os.path.exists(cache_file) else []
        y2, r2 = run_forward(exe, path, x, h, h, ["-t", "2"], cenv)
        y3, r3 = run_forward(exe, path, x, h, h, ["-t", "2"],
                             dict(cenv, UNET_CPU_CONV_CACHE="0"))
        # (where oneDNN offers no Winograd kernel, below AVX-512, no shape needs a
        # verdict and none may be written)
        same = (y1 is not None and y2 is not None and y3 is not None
                and y1.tobytes() == y2.tobytes() == y3.tobytes())
        if wino:
            ok = (same and lines[:1] and lines[0].startswith("gst-unet cpu-conv-verdicts")
                  and len(lines) > 1)
        else:
            ok = same and len(lines) <= 1
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} convolution verdicts cached: {max(len(lines) - 1, 0)} "
              f"shape(s) in {os.path.basename(cache_file)} (oneDNN's Winograd "
              f"{'used' if wino else 'not offered'}); a process reading them, one "
              f"checking again and the first give the same bits", flush=True)

        # An illegal tile (odd before the first pooling) must be rejected clearly.
        cfg = unet_ref.make_config(1, 2, 2, 4, "valid", False, 0.0)
        path = os.path.join(tmp, "illegal.safetensors")
        unet_ref.save_model(unet_ref.random_model(cfg, seed), path)
        h = legal_at_least(cfg, 1) + 1
        x = rng.standard_normal((1, 1, h, h)).astype(np.float32)
        y, r = run_forward(exe, path, x, h, h)
        if y is not None or "not a legal" not in r.stderr:
            print(f"FAIL illegal size {h}: rc {r.returncode}, stderr {r.stderr!r}")
            failures += 1
        else:
            print(f"ok   illegal size {h} rejected: {r.stderr.strip()}")

    print(f"{failures} failure(s), seed {seed}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
