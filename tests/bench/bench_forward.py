#!/usr/bin/env python3
"""CPU forward benchmark: gst-unet's oneDNN backend vs the engines a user would pick
instead, side by side in one run.

Same weights (one random contract model per base, written with
tests/reference/unet_ref.py and exported to ONNX with Debian's PyTorch for ONNX
Runtime and OpenVINO), same valid U-Net (depth 4, 1 input channel, 2 classes), same
input tile (--size, default 572x572), same thread count, probabilities out (softmax
included in every engine's time). Each contender is its own process (peak RSS is its
own: VmHWM), warmed up once (our plan build, which checks the Winograd kernels it
chooses, and the peers' graph compilation happen before the first timed run);
then --rounds rounds, each running every contender once in turn (alternating, so a
burst of load from elsewhere hits all alike); the table shows medians, GFLOP/s
(2 per multiply-add), the ratio (fastest peer ms / contender ms: > 1 = faster than
every peer) and the max |probability - float64 reference| (PyTorch float64 of the
same model and input: the contract's reference, tolerance 1e-4).

Contenders: ours by default (UNET_CPU_CONV_ALGO=rule: Winograd F(4x4,3x3) where a
rule on the shape says it pays and it is thread-invariant, else direct; transposed
convolutions as 1x1 convolutions + shuffle), ours with UNET_CPU_CONV_ALGO=direct (the
default before: oneDNN's direct kernels everywhere), ours with UNET_CPU_PAD_CHANNELS=0
for bases whose widths are no multiple of 8 (the unpadded network), ours bf16 with --bf16;
PyTorch (Debian 1.13) NCHW and channels_last; ONNX Runtime and OpenVINO from PyPI
(installed into --venv by this script; skipped with a note when they cannot be);
PyTorch 2.x from PyPI with --pypi-torch (see tests/bench/peers.py). The load average
is printed before and after: quote the figures with it.

Usage: bench_forward.py [--threads 2] [--rounds 5] [--size 572] [--bases 64,32,16]
       [--build DIR] [--bf16] [--venv DIR] [--no-install] [--pypi-torch]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
import unet_ref  # noqa: E402


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


class Child:
    """A contender process speaking the ready/run/quit protocol."""

    def __init__(self, label, cmd, env, out):
        self.label, self.out, self.ms, self.version = label, out, [], ""
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if not line.startswith("ready"):
            err = self.p.communicate()[1]
            self.p = None
            raise RuntimeError("%s did not start: %s" % (label, err.strip()[-800:]))
        self.version = line[5:].strip().strip('"')

    def run(self):
        self.p.stdin.write("run\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        try:
            self.ms.append(float(line))
        except ValueError:
            raise RuntimeError("%s failed: %s %s" % (self.label, line,
                                                     self.p.stderr.read()[-800:]))

    def finish(self):
        """Ends the child: (probabilities, peak RSS MiB). The peak is VmHWM of the
        child's own image (ru_maxrss would carry the forking parent's over exec)."""
        hwm = float("nan")
        with open("/proc/%d/status" % self.p.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024.0
        self.p.stdin.write("quit\n")
        self.p.stdin.close()
        _, status, _ = os.wait4(self.p.pid, 0)
        self.p.stdout.close()
        self.p.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError("%s exited with %d" % (self.label, status))
        return np.fromfile(self.out, dtype="<f4"), hwm


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def bench_base(args, tmp, base, ours_exe, peer_defs):
    s = args.size
    cfg = unet_ref.make_config(1, 2, 4, base, "valid", False, 0.0)
    model64 = unet_ref.random_model(cfg, 1234 + base)
    path = os.path.join(tmp, "b%d.safetensors" % base)
    unet_ref.save_model(model64, path)
    onnx = os.path.join(tmp, "b%d.onnx" % base)
    onnx_ok = peers.export_onnx(path, onnx, s)
    x = np.random.default_rng(5).standard_normal((1, 1, s, s)).astype("<f4")
    xpath = os.path.join(tmp, "x.raw")
    x.tofile(xpath)
    import torch
    ref = unet_ref.probabilities(model64, torch.from_numpy(x.astype(np.float64)))
    gf = flops(cfg, s) / 1e9

    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")   # every OpenMP engine alike
    defs = []
    ours = [("ours (default)", [], {"UNET_CPU_CONV_ALGO": "rule"}),
            ("ours UNET_CPU_CONV_ALGO=direct", [], {"UNET_CPU_CONV_ALGO": "direct"})]
    if base % 8:
        # widths that are no multiple of 8: the default pads them to 8-channel
        # blocks (graph.h); this row is the unpadded network (plain layouts)
        ours.append(("ours UNET_CPU_PAD_CHANNELS=0", [],
                     {"UNET_CPU_CONV_ALGO": "rule", "UNET_CPU_PAD_CHANNELS": "0"}))
    if args.bf16:
        ours.append(("ours bf16", ["--precision", "bf16"], {}))
    for i, (label, extra, env_add) in enumerate(ours):
        out = os.path.join(tmp, "ours%d.raw" % i)
        defs.append((label, [ours_exe, "-m", path, "-i", xpath, "-o", out, "-H", str(s),
                             "-W", str(s), "-t", str(args.threads), "--serve"] + extra,
                     dict(env, **env_add), out, True))
    for i, (label, py, engine) in enumerate(peer_defs):
        if engine in ("onnxruntime", "openvino") and not onnx_ok:
            continue
        out = os.path.join(tmp, "peer%d.raw" % i)
        model = onnx if engine in ("onnxruntime", "openvino") else path
        defs.append((label, [py, "-c", peers.SERVE_CHILD, engine, model, xpath,
                             "1,1,%d,%d" % (s, s), str(args.threads), out,
                             os.path.join(SRC, "tests", "reference")], env, out, False))

    children = []
    for label, cmd, cenv, out, is_ours in defs:
        try:
            children.append((Child(label, cmd, cenv, out), is_ours))
        except RuntimeError as e:
            peers.note(str(e))
    for _ in range(args.rounds):
        for c, _ in children:
            c.run()
    rows = []
    for c, is_ours in children:
        y, rss = c.finish()
        dev = float(np.abs(y.reshape(ref.shape) - ref).max()) if y.size == ref.size \
            else float("nan")
        rows.append((c.label, c.version, statistics.median(c.ms), min(c.ms), rss, dev,
                     is_ours))
    peer_ms = [r[2] for r in rows if not r[6]]
    best_peer = min(peer_ms) if peer_ms else None
    print("\nbase %d: depth 4, valid, 1 tile %dx%d, %d threads, %d alternating rounds, "
          "%.1f GFLOP/forward" % (base, s, s, args.threads, args.rounds, gf))
    print("%-36s %9s %9s %8s %12s %9s %10s" % ("contender", "median ms", "min ms",
                                              "GFLOP/s", "vs best peer", "peak RSS",
                                              "max|dp64|"))
    for label, version, med, mn, rss, dev, _ in rows:
        ratio = best_peer / med if best_peer else float("nan")
        print("%-36s %9.1f %9.1f %8.1f %11.2fx %7.0fMB %10.1e" % (
            label, med, mn, gf / med * 1e3, ratio, rss, dev))
    print("versions: " + "; ".join(sorted({v for _, v, *_ in rows if v})))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=572)
    ap.add_argument("--bases", default="64,32,16")
    ap.add_argument("--bf16", action="store_true", help="also ours in bf16")
    ap.add_argument("--build", default=os.environ.get("UNET_BUILD_ROOT",
                                                      os.path.join(SRC, "build")))
    peers.add_args(ap)
    args = ap.parse_args()
    exe = os.path.join(args.build, "tests", "tools", "unet-forward")
    print("load average at start: " + loadavg())
    with tempfile.TemporaryDirectory() as tmp:
        onnx_probe = peers.export_onnx(*(lambda p: (p, p + ".onnx", 60))(
            _probe_model(tmp)))
        peer_defs, _ = peers.peer_list(args, onnx_probe)
        for base in [int(b) for b in args.bases.split(",")]:
            bench_base(args, tmp, base, exe, peer_defs)
    print("load average at end: " + loadavg())
    return 0


def _probe_model(tmp):
    """A tiny model, to learn whether the ONNX export works before installing."""
    cfg = unet_ref.make_config(1, 2, 2, 4, "valid", False, 0.0)
    p = os.path.join(tmp, "probe.safetensors")
    unet_ref.save_model(unet_ref.random_model(cfg, 1), p)
    return p


if __name__ == "__main__":
    sys.exit(main())
