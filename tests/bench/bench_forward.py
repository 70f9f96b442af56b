#!/usr/bin/env python3
"""CPU forward benchmark: gst-unet's oneDNN backend vs PyTorch, side by side.

Same machine, same weights (one random contract model per config, written with
tests/reference/unet_ref.py), same 572x572 tile, same thread count, same run.
Each contender runs in its own process (so peak RSS is its own), does one warm-up
forward and then --runs timed forwards; the table shows the median ms per tile,
GFLOP/s (2 per multiply-add, convolutions + transposed convolutions + head), the
speed ratio (PyTorch ms / ours ms) and peak resident memory (ru_maxrss of the
process, from os.wait4).

PyTorch: torch.set_num_threads(threads), eval(), no_grad, fp32, both contiguous
(NCHW) and channels_last; the faster of the two is PyTorch's number.
Ours: tests/tools/unet-forward --repeat N (fp32 direct convolution, the default),
plus the bf16 mode and the Winograd algorithm ($UNET_CPU_CONV_ALGO=winograd), each
with its max |difference| of probabilities from our fp32 output (which the
conformance test ties to float64 PyTorch within 1e-4).

Usage: bench_forward.py [--threads 2] [--runs 3] [--size 572] [--bases 64,32]
       [--build DIR]   (run it on an otherwise idle machine; numbers are medians)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import unet_ref  # noqa: E402

TORCH_CHILD = r"""
import json, sys, time, resource
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import unet_ref
path, xpath, size, threads, runs, fmt = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
torch.set_num_threads(threads)
m, _ = unet_ref.load_model(path, dtype=torch.float32)
m.eval()
x = torch.from_numpy(np.fromfile(xpath, dtype="<f4").reshape(1, -1, size, size))
if fmt == "channels_last":
    m = m.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
ts = []
with torch.no_grad():
    m(x)
    for _ in range(runs):
        t = time.perf_counter(); m(x); ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"ms": sorted(ts)[len(ts) // 2]}))
"""


def flops(cfg, s):
    """Multiply-adds x 2 of one forward of an s x s tile (valid or same)."""
    D, B, C, K = cfg["depth"], cfg["base_filters"], cfg["in_channels"], cfg["classes"]
    sh = 2 if cfg["padding"] == "valid" else 0
    f = [B << i for i in range(D + 1)]
    total = 0
    cin = C
    for i in range(D):
        s -= sh
        total += 2 * cin * f[i] * 9 * s * s
        s -= sh
        total += 2 * f[i] * f[i] * 9 * s * s
        cin = f[i]
        s //= 2
    s -= sh
    total += 2 * f[D - 1] * f[D] * 9 * s * s
    s -= sh
    total += 2 * f[D] * f[D] * 9 * s * s
    for i in reversed(range(D)):
        total += 2 * f[i + 1] * f[i] * 4 * s * s
        s *= 2
        s -= sh
        total += 2 * 2 * f[i] * f[i] * 9 * s * s
        s -= sh
        total += 2 * f[i] * f[i] * 9 * s * s
    total += 2 * f[0] * K * s * s
    return total


def run_measured(cmd, stdout_path, env=None):
    """Runs cmd in its own process with stdout to a file: (exit code, peak RSS MiB)."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            if env is not None:
                os.execve(cmd[0], cmd, env)
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), ru.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size", type=int, default=572)
    ap.add_argument("--bases", default="64,32")
    ap.add_argument("--build", default=os.environ.get("UNET_BUILD_ROOT",
                                                      os.path.join(SRC, "build")))
    args = ap.parse_args()
    exe = os.path.join(args.build, "tests", "tools", "unet-forward")
    py = "/usr/bin/python3"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for base in [int(b) for b in args.bases.split(",")]:
            cfg = unet_ref.make_config(1, 2, 4, base, "valid", False, 0.0)
            path = os.path.join(tmp, f"b{base}.safetensors")
            unet_ref.save_model(unet_ref.random_model(cfg, 1234 + base), path)
            xpath = os.path.join(tmp, "x.raw")
            s = args.size
            np.random.default_rng(5).standard_normal((1, 1, s, s)).astype("<f4").tofile(xpath)
            gf = flops(cfg, s) / 1e9

            torch_best = None
            for fmt in ("contiguous", "channels_last"):
                res = os.path.join(tmp, "torch.json")
                cmd = [py, "-c", TORCH_CHILD, os.path.join(SRC, "tests", "reference"),
                       path, xpath, str(s), str(args.threads), str(args.runs), fmt]
                rc, rss = run_measured(cmd, res)
                if rc != 0:
                    print(f"PyTorch ({fmt}) failed with {rc}", file=sys.stderr)
                    continue
                ms = json.load(open(res))["ms"]
                rows.append((base, f"PyTorch fp32 {fmt}", ms, gf, rss, None))
                if torch_best is None or ms < torch_best:
                    torch_best = ms

            outs = {}
            for label, extra, env_add in (
                    ("ours fp32 (direct)", [], {}),
                    ("ours fp32 winograd", [], {"UNET_CPU_CONV_ALGO": "winograd"}),
                    ("ours bf16", ["--precision", "bf16"], {})):
                res = os.path.join(tmp, "ours.txt")
                ypath = os.path.join(tmp, f"y{len(outs)}.raw")
                env = dict(os.environ, **env_add)
                cmd = [exe, "-m", path, "-i", xpath, "-o", ypath, "-H", str(s),
                       "-W", str(s), "-t", str(args.threads), "--repeat", str(args.runs)]
                rc, rss = run_measured(cmd + extra, res, env)
                if rc != 0:
                    print(f"{label} failed with {rc}", file=sys.stderr)
                    continue
                ms = float(open(res).read().split()[2])
                outs[label] = np.fromfile(ypath, dtype="<f4")
                dev = None
                if label != "ours fp32 (direct)" and "ours fp32 (direct)" in outs:
                    dev = float(np.abs(outs[label] - outs["ours fp32 (direct)"]).max())
                rows.append((base, label, ms, gf, rss, dev))
            rows.append((base, "PyTorch best", torch_best, gf, None, None))

    print(f"\nU-Net forward, 1 tile {args.size}x{args.size}, depth 4, valid, "
          f"{args.threads} threads, median of {args.runs}")
    print(f"{'base':>4}  {'contender':<26} {'ms/tile':>9} {'GFLOP/s':>8} "
          f"{'vs PyTorch':>10} {'peak RSS':>9}  max|dp| vs fp32")
    best = {b: ms for b, l, ms, *_ in rows if l == "PyTorch best"}
    for base, label, ms, gf, rss, dev in rows:
        if label == "PyTorch best" or ms is None:
            continue
        ratio = best[base] / ms if best.get(base) else float("nan")
        print(f"{base:>4}  {label:<26} {ms:9.1f} {gf / ms * 1e3:8.1f} {ratio:9.2f}x "
              f"{rss:7.0f}MB  {'' if dev is None else f'{dev:.1e}'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
