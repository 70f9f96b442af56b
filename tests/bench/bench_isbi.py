#!/usr/bin/python3
"""ISBI 2012 membranes: `unettrain` with its defaults against a PyTorch twin of the same
recipe, both trained on slices 0-19 of ../shared/data/isbi2012 and scored on slices
20-24 (which neither saw) with the same evaluation (tests/bench/isbi_eval.py).

  bench_isbi.py [--build DIR] [--steps N] [--seeds 1,2] [--threads 2]
                [--sides ours,torch] [--out DIR] [--prop NAME=VALUE ...]

Ours: gst-launch-1.0 tiffstacksrc ! unettrain (element defaults unless --steps or --prop
say otherwise) ! fakesink, then tiffstacksrc ! unetsegment output=labels !
tiffstacksink over the held-out slices.

Twin (Debian's PyTorch, same threads): the network of tests/reference/unet_ref.py with
the architecture unettrain builds by default (depth, base filters, valid padding, 2
classes), the paper's He-normal initialisation, the default normalisation (per-frame
percentiles 1-99.8), the same weight map (class balance w_c = N / (n_present N_c) + the
border term w0 = 10, sigma = 5 px between 4-connected cells), the same augmentation
(random position, rotation, flips, 3x3 elastic grid sigma 10 px bicubic-upsampled,
gamma/contrast/brightness; image bicubic with mirror boundary, labels nearest, weights
bilinear: tests/bench/bench_train.py's numpy version of our warp), the same tile, batch
1, the weighted cross-entropy normalised by the sum of weights, and the same optimiser
and schedule (Adam, linear warm-up, cosine to 0; read from the model ours wrote, so the
two sides cannot drift apart). Held-out slices: one pass over each mirror-extended
frame (which is what our overlap-tile inference equals for valid models).

Prints one row per side and seed: training-loop time (ours: the log's clock from the
first step to the last; twin: its loop; neither counts start-up or weight maps), steps/s, final loss (mean of the last
50 steps), and on slices 20-24: plain pixel error (mean(pred != truth)), the
challenge's membrane F error (1 - F-score of the membrane pixels, which the challenge
called "pixel error"), adapted Rand error of the 4-connected cells, membrane Dice, and
the predicted membrane fraction (truth about 0.20); then medians per side and the
ratios ours/twin. Skips (exit 0 with a note) when the shared data is absent.

Time: with the defaults (4000 steps) ours takes about 21 min on an idle 2-core machine
and the twin (Debian's PyTorch 1.13) over an hour; `--steps 1000` compares both sides
at 1000 steps (the schedule then spans 1000 steps on both).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
DATA = os.path.join(ROOT, "..", "shared", "data", "isbi2012")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

import isbi_eval  # noqa: E402
from bench_train import output_size  # noqa: E402


def env_for(build):
    e = dict(os.environ)
    e["GST_PLUGIN_PATH_1_0"] = (os.path.join(build, "elements", "unet") + ":" +
                                os.path.join(build, "elements", "tiffstack"))
    e.setdefault("OMP_WAIT_POLICY", "passive")
    return e


def split(out):
    import tifffile
    v = tifffile.imread(os.path.join(DATA, "train-volume.tif"))
    lab = tifffile.imread(os.path.join(DATA, "train-labels.tif"))
    paths = {k: os.path.join(out, k + ".tif") for k in ("train-img", "train-lab", "val-img",
                                                          "val-lab")}
    tifffile.imwrite(paths["train-img"], v[:20])
    tifffile.imwrite(paths["train-lab"], lab[:20])
    tifffile.imwrite(paths["val-img"], v[20:25])
    tifffile.imwrite(paths["val-lab"], lab[20:25])
    return paths, v, lab


def score(pred, gt):
    r = isbi_eval.evaluate_membrane(pred, gt)["mean"]
    r["membrane_fraction"] = float(np.mean(~isbi_eval.as_interior(pred)))
    return r


# ------------------------------------------------------------------ ours --
def run_ours(args, paths, seed, work):
    model = os.path.join(work, f"ours-{seed}.safetensors")
    log = os.path.join(work, f"ours-{seed}.csv")
    props = [f"seed={seed}", f"threads={args.threads}", "preview=false",
             f"output-model={model}", f"log-location={log}"]
    if args.steps:
        props.append(f"iterations={args.steps}")
    props += args.prop
    cmd = (["gst-launch-1.0", "-q", "unettrain", "name=t"] + props +
           ["tiffstacksrc", f"location={paths['train-img']}", "!", "queue", "!", "t.image",
            "tiffstacksrc", f"location={paths['train-lab']}", "!", "queue", "!", "t.mask",
            "t.src", "!", "fakesink", "sync=false", "async=false"])
    subprocess.run(cmd, check=True, env=env_for(args.build), stdout=subprocess.DEVNULL)
    rows = [l.split(",") for l in open(log).read().splitlines()[1:] if l]
    losses = [float(r[1]) for r in rows]
    # Training-loop time as the twin measures it (no start-up, no data loading):
    # the log's clock from the first step to the last, per step.
    t = [float(r[6]) for r in rows]
    secs = (t[-1] - t[0]) * len(t) / max(len(t) - 1, 1)
    pred = os.path.join(work, f"ours-{seed}-pred.tif")
    subprocess.run(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={paths['val-img']}",
                    "!", "unetsegment", f"model={model}", "output=labels", "device=cpu",
                    f"threads={args.threads}", "!", "tiffstacksink", f"location={pred}"],
                   check=True, env=env_for(args.build), stdout=subprocess.DEVNULL)
    import tifffile
    return model, {"steps": len(losses), "secs": secs,
                   "loss": float(np.mean(losses[-50:])),
                   **score(tifffile.imread(pred), tifffile.imread(paths["val-lab"]))}


def read_recipe(model):
    """Architecture, tile, optimiser and schedule that ours used (from its metadata)."""
    from unet_ref import load_safetensors
    _, meta = load_safetensors(model)
    cfg = json.loads(meta["unet.config"])
    tr = json.loads(meta["unet.training"])
    norm = json.loads(meta["unet.normalization"])
    return cfg, tr, norm


# ----------------------------------------------------------------- twin --
def percentile_norm(img, lo, hi):
    a, b = np.percentile(img.astype(np.float64), [lo, hi])
    return ((img - a) / (b - a if b > a else 1.0)).astype(np.float32)


def run_twin(args, seed, frames, labels, cfg, tr, norm):
    import torch
    import torch.nn.functional as F
    from bench_train import augment, weight_map
    from unet_ref import UNetRef
    torch.set_num_threads(args.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    net = UNetRef(cfg)
    with torch.no_grad():     # the paper's (and our) initialisation
        for name, p in net.named_parameters():
            if name.endswith("weight") and p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                if ".up." in name:          # ConvTranspose2d: [in, out, kh, kw]
                    fan_in = p.shape[0] * p.shape[2] * p.shape[3]
                p.normal_(0.0, (2.0 / fan_in) ** 0.5)
            else:
                p.zero_()
    lo, hi = norm.get("low", 1.0), norm.get("high", 99.8)
    imgs = [percentile_norm(f, lo, hi) for f in frames]
    labs = [(l != 0).astype(np.int64) for l in labels]      # binary: interior = class 1
    wmaps = [weight_map(l, tr["border_weight"], tr["border_sigma"]) for l in labs]
    ti = tr["tile_size"]
    to = output_size(cfg["depth"], ti)
    steps = tr["iterations"]
    warm = tr.get("warmup", 0)
    lr = tr["learning_rate"]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    if tr["optimizer"] == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=tr["momentum"])

    def factor(t):
        f = (1 + np.cos(np.pi * t / steps)) / 2 if tr["schedule"] == "cosine" else 1.0
        return f * (min(t + 1, warm) / warm if warm else 1.0)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses = []
    t0 = time.monotonic()
    net.train()
    for _ in range(steps):
        k = int(rng.integers(0, len(imgs)))
        x, y, w = augment(rng, imgs[k], labs[k], wmaps[k], ti, to, tr["elastic_grid"],
                          tr["elastic_sigma"])
        z = net(torch.from_numpy(x)[None, None])
        yt = torch.from_numpy(np.ascontiguousarray(y))[None]
        wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))[None]
        loss = (F.cross_entropy(z, yt, reduction="none") * wt).sum() / wt.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sch.step()
        losses.append(float(loss))
    secs = time.monotonic() - t0
    return net, {"steps": steps, "secs": secs, "loss": float(np.mean(losses[-50:]))}


def twin_predict(net, frames, depth, norm):
    import torch
    net.eval()
    lo, hi = norm.get("low", 1.0), norm.get("high", 99.8)
    out = []
    with torch.no_grad():
        for f in frames:
            h, w = f.shape
            s = 1
            while output_size(depth, s) < max(h, w):
                s += 1
            m = (s - output_size(depth, s)) // 2
            x = percentile_norm(f, lo, hi)
            x = np.pad(x, ((m, s - h - m), (m, s - w - m)), mode="reflect")
            z = net(torch.from_numpy(x)[None, None])[0]
            out.append(z.argmax(0).numpy()[:h, :w].astype(np.uint8))
    return np.stack(out)


# ----------------------------------------------------------------- main --
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--steps", type=int, default=0, help="iterations (0: the element's default)")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="ours,torch")
    ap.add_argument("--out", default=None, help="keep models, logs and predictions here")
    ap.add_argument("--prop", action="append", default=[],
                    help="extra unettrain property NAME=VALUE (both sides follow it)")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(DATA, "train-volume.tif")):
        print(f"bench_isbi: skipped: no ISBI 2012 data at {DATA}")
        return 0
    sides = args.sides.split(",")
    work = args.out or tempfile.mkdtemp(prefix="bench-isbi-")
    os.makedirs(work, exist_ok=True)
    paths, vol, lab = split(work)
    print(f"# load average at start: {os.getloadavg()}; threads {args.threads}; work {work}")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        model, ours = run_ours(args, paths, seed, work)
        if "ours" in sides:
            rows.append(("unettrain", seed, ours))
            print(f"ours seed {seed}: {json.dumps(ours)}", flush=True)
        if "torch" in sides:
            cfg, tr, norm = read_recipe(model)
            net, tw = run_twin(args, seed, vol[:20], lab[:20], cfg, tr, norm)
            tw.update(score(twin_predict(net, vol[20:25], cfg["depth"], norm), lab[20:25]))
            rows.append(("PyTorch twin", seed, tw))
            print(f"twin seed {seed}: {json.dumps(tw)}", flush=True)
    print(f"# load average at end: {os.getloadavg()}")
    cols = ("steps", "secs", "loss", "pixel_error", "membrane_f_error", "rand_error",
            "membrane_dice", "membrane_fraction")
    print("| side | seed | steps | train s | steps/s | final loss | pixel error | "
          "membrane F error | Rand error | membrane Dice | membrane fraction |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for side, seed, r in rows:
        print(f"| {side} | {seed} | {r['steps']} | {r['secs']:.0f} | "
              f"{r['steps'] / r['secs']:.2f} | {r['loss']:.3f} | {r['pixel_error']:.3f} | "
              f"{r['membrane_f_error']:.3f} | {r['rand_error']:.3f} | "
              f"{r['membrane_dice']:.3f} | {r['membrane_fraction']:.3f} |")
    med = {}
    for side in ("unettrain", "PyTorch twin"):
        rs = [r for s, _, r in rows if s == side]
        if rs:
            med[side] = {c: statistics.median(r[c] for r in rs) for c in cols}
            med[side]["sps"] = statistics.median(r["steps"] / r["secs"] for r in rs)
            m = med[side]
            print(f"median {side}: steps/s {m['sps']:.2f}, pixel error {m['pixel_error']:.3f},"
                  f" Rand error {m['rand_error']:.3f}, membrane Dice {m['membrane_dice']:.3f}")
    if len(med) == 2:
        a, b = med["unettrain"], med["PyTorch twin"]
        print(f"ratio ours/twin: steps/s {a['sps'] / b['sps']:.2f}x; pixel error "
              f"{a['pixel_error']:.3f} vs {b['pixel_error']:.3f}; Rand error "
              f"{a['rand_error']:.3f} vs {b['rand_error']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
