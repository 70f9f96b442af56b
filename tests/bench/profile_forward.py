#!/usr/bin/env python3
"""Where the CPU forward's time goes: per-op times, one column per convolution mode.

Runs tests/tools/unet-forward with UNET_CPU_PROFILE=1 (the CPU backend times every
op and prints the mean per op when the plan is freed) on one random contract model
(depth 4, valid, base --base) and one --size tile, for each UNET_CPU_CONV_ALGO in
--modes, the modes alternating over --rounds processes; per op the median over the
rounds of its mean ms per call, and the implementation oneDNN ran in each mode. A
mode "M/nopad" is M with UNET_CPU_PAD_CHANNELS=0 (widths that are no multiple of 8
left unpadded; rows are matched by op index, labelled with the first mode's shapes).

Usage: profile_forward.py [--base 32] [--size 572] [--threads 2] [--repeat 3]
       [--rounds 3] [--modes direct,measure] [--build DIR]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

import numpy as np

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, os.path.join(SRC, "tests", "reference"))
import unet_ref  # noqa: E402

LINE = re.compile(r"unet-cpu profile: (.*?) (\S+): ([0-9.]+) ms/call")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=32)
    ap.add_argument("--size", type=int, default=572)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default="direct,measure")
    ap.add_argument("--build", default=os.environ.get("UNET_BUILD_ROOT",
                                                      os.path.join(SRC, "build")))
    args = ap.parse_args()
    exe = os.path.join(args.build, "tests", "tools", "unet-forward")
    modes = args.modes.split(",")
    times = {m: {} for m in modes}      # mode -> op label -> [ms]
    impls = {m: {} for m in modes}
    order = []
    labels = {}
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = unet_ref.make_config(1, 2, 4, args.base, "valid", False, 0.0)
        path = os.path.join(tmp, "m.safetensors")
        unet_ref.save_model(unet_ref.random_model(cfg, 1234 + args.base), path)
        x = os.path.join(tmp, "x.raw")
        s = args.size
        np.random.default_rng(5).standard_normal((1, 1, s, s)).astype("<f4").tofile(x)
        for _ in range(args.rounds):
            for m in modes:
                alg, _, flag = m.partition("/")
                env = dict(os.environ, UNET_CPU_PROFILE="1", UNET_CPU_CONV_ALGO=alg)
                if flag == "nopad":
                    env["UNET_CPU_PAD_CHANNELS"] = "0"
                env.setdefault("OMP_WAIT_POLICY", "passive")
                r = subprocess.run([exe, "-m", path, "-i", x, "-H", str(s), "-W", str(s),
                                    "-t", str(args.threads), "--repeat",
                                    str(args.repeat)], capture_output=True, text=True,
                                   env=env)
                if r.returncode != 0:
                    raise SystemExit(r.stderr)
                for i, (label, impl, ms) in enumerate(LINE.findall(r.stderr)):
                    key = i
                    if key not in order:
                        order.append(key)
                        labels[key] = "%2d %s" % (i, label)
                    times[m].setdefault(key, []).append(float(ms))
                    impls[m][key] = impl
    print("per-op ms (median over %d rounds of the mean over %d forwards), base %d, "
          "%dx%d tile, %d threads" % (args.rounds, args.repeat + 1, args.base, s, s,
                                      args.threads))
    print("%-56s" % "op" + "".join("%28s" % m for m in modes))
    total = {m: 0.0 for m in modes}
    for key in order:
        cells = ""
        for m in modes:
            if key in times[m]:
                v = statistics.median(times[m][key])
                total[m] += v
                cells += "%9.2f %-18s" % (v, impls[m][key].split(":")[0][:18])
            else:
                cells += "%28s" % "-"
        print("%-56s%s" % (labels[key][:56], cells))
    print("%-56s" % "sum of ops" + "".join("%9.2f %-18s" % (total[m], "") for m in modes))
    print("load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
