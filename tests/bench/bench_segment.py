#!/usr/bin/python3
"""Benchmark: overlap-tile segmentation of a stack of 2048x2048 16-bit frames on CPU.

Side by side in the same run, same model, same tiles, same threads:

  ours:    gst-launch-1.0 tiffstacksrc ! unetsegment ! fakesink
  PyTorch: a script doing the same overlap-tile segmentation (tifffile page by page,
           range normalisation, mirror padding, the same tile grid and batch, float32
           forward with torch.set_num_threads, softmax, owned-block stitching, argmax)

Prints Mpx/s (medians over --repeats runs) and the ratio, the share of
normalise / tile extraction / stitch+argmax versus the forward pass (from the
element's "unetsegment-stats" messages), and the resident memory of the gst-launch
process sampled over the stack (flat = bounded memory).

usage: bench_segment.py [--frames 4] [--base 16] [--depth 4] [--tile 572] [--batch 4]
                        [--threads 2] [--repeats 1] [--auto] [--classic] [--build build]
Not a test; takes a few minutes on 2 cores with the defaults.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import unet_ref  # noqa: E402


def gst_env(build):
    env = dict(os.environ)
    b = os.path.join(ROOT, build)
    env["GST_PLUGIN_SYSTEM_PATH_1_0"] = ""
    env["GST_PLUGIN_PATH_1_0"] = ":".join([
        os.path.join(b, "elements", "tiffstack"), os.path.join(b, "elements", "unet"),
        "/usr/lib/x86_64-linux-gnu/gstreamer-1.0"])
    env["GST_REGISTRY_1_0"] = os.path.join(b, "bench-registry.bin")
    return env


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run_ours(args, stack, model, tile, n_frames):
    cmd = ["gst-launch-1.0", "-m", "tiffstacksrc", "location=" + stack, "!",
           "unetsegment", "model=" + model, "tile-size=%d" % tile,
           "batch-size=%d" % args.batch, "threads=%d" % args.threads, "device=cpu",
           "post-messages=true", "!", "fakesink"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=gst_env(args.build))
    samples = []
    out = []
    reader = threading.Thread(target=lambda: out.extend(p.stdout))
    reader.start()
    while p.poll() is None:
        r = rss_kib(p.pid)
        if r:
            samples.append((time.perf_counter() - t0, r))
        time.sleep(0.25)
    reader.join()
    wall = time.perf_counter() - t0
    text = "".join(out)
    if p.returncode != 0:
        raise RuntimeError("gst-launch failed:\n" + text[-3000:])
    stats = []
    for m in re.finditer(r"unetsegment-stats, (.*)", text):
        d = {}
        for k in ("normalize-time", "extract-time", "forward-time", "stitch-time",
                  "post-time", "processing-time", "tiles", "tile-width"):
            mm = re.search(k + r"=\(\w+\)(\d+)", m.group(1))
            if mm:
                d[k] = int(mm.group(1))
        stats.append(d)
    if len(stats) != n_frames:
        raise RuntimeError("expected %d stats messages, got %d" % (n_frames, len(stats)))
    return wall, stats, samples


def torch_segment(args, stack, model_path, tile):
    """The PyTorch peer: same overlap-tile algorithm, same tiles and batch."""
    import tifffile
    import torch
    torch.set_num_threads(args.threads)
    net, meta = unet_ref.load_model(model_path, dtype=torch.float32)
    cfg = net.cfg
    step = 1 << cfg["depth"]

    def out_size(s):
        for _ in range(cfg["depth"]):
            s = (s - 4) // 2
        s -= 4
        for _ in range(cfg["depth"]):
            s = 2 * s - 4
        return s

    to = out_size(tile)
    border = (tile - to) // 2
    stride = to // step * step
    t0 = time.perf_counter()
    with tifffile.TiffFile(stack) as tf, torch.no_grad():
        for page in tf.pages:
            img = page.asarray().astype(np.float32) / 65535.0
            h, w = img.shape
            ny, nx = -(-h // stride), -(-w // stride)
            ph = (ny - 1) * stride + tile
            pw = (nx - 1) * stride + tile
            padded = np.pad(img, ((border, ph - h - border), (border, pw - w - border)),
                            mode="reflect")
            labels = np.empty((h, w), np.uint8)
            origins = [(ty * stride, tx * stride) for ty in range(ny) for tx in range(nx)]
            for b0 in range(0, len(origins), args.batch):
                chunk = origins[b0:b0 + args.batch]
                x = torch.from_numpy(np.stack(
                    [padded[y:y + tile, x_:x_ + tile] for y, x_ in chunk])[:, None])
                p = torch.softmax(net(x), dim=1).argmax(1).numpy().astype(np.uint8)
                for (y, x_), lab in zip(chunk, p):
                    hh, ww = min(stride, h - y), min(stride, w - x_)
                    labels[y:y + hh, x_:x_ + ww] = lab[:hh, :ww]
    return time.perf_counter() - t0


def bench(args, tmp, stack, depth, base, tile, label):
    cfg = unet_ref.make_config(classes=2, depth=depth, base_filters=base)
    model = unet_ref.random_model(cfg, 1, dtype=__import__("torch").float32)
    mpath = os.path.join(tmp, "bench-%s.safetensors" % label)
    unet_ref.save_model(model, mpath, normalization={"mode": "range", "min": 0,
                                                     "max": 65535})
    mpx = args.frames * 2048 * 2048 / 1e6
    ours, theirs, all_stats, rss = [], [], None, None
    for _ in range(args.repeats):
        wall, stats, samples = run_ours(args, stack, mpath, tile, args.frames)
        ours.append(wall)
        all_stats, rss = stats, samples
        theirs.append(torch_segment(args, stack, mpath, tile))
    o, t = statistics.median(ours), statistics.median(theirs)
    print("\n== %s: depth %d, base %d, tile %d, batch %d, threads %d, %d frames "
          "2048x2048 u16 (%d tiles/frame)" % (label, depth, base, tile, args.batch,
                                             args.threads, args.frames,
                                             all_stats[0].get("tiles", 0)))
    print("%-34s %10s %10s" % ("", "wall s", "Mpx/s"))
    print("%-34s %10.2f %10.3f" % ("gst-launch ... unetsegment", o, mpx / o))
    print("%-34s %10.2f %10.3f" % ("PyTorch overlap-tile script", t, mpx / t))
    print("ratio (ours / PyTorch throughput): %.2fx" % (t / o))
    if args.auto:
        wall, st, _ = run_ours(args, stack, mpath, 0, args.frames)
        print("%-34s %10.2f %10.3f   (tile-size=0: %d tiles of %d px)" % (
            "unetsegment, automatic tile", wall, mpx / wall, st[0].get("tiles", 0),
            st[0].get("tile-width", 0)))
    tot = {k: sum(s.get(k, 0) for s in all_stats) / 1e9 for k in
           ("normalize-time", "extract-time", "forward-time", "stitch-time",
            "post-time", "processing-time")}
    fwd = tot["forward-time"] or 1e-12
    print("element time split over the stack (s, % of forward):")
    for k in ("normalize-time", "extract-time", "stitch-time", "post-time"):
        print("  %-16s %8.3f  %6.2f %%" % (k, tot[k], 100 * tot[k] / fwd))
    print("  %-16s %8.3f" % ("forward-time", tot["forward-time"]))
    side = tot["normalize-time"] + tot["extract-time"] + tot["stitch-time"] + \
        tot["post-time"]
    print("  normalise+tile+stitch+argmax = %.2f %% of forward" % (100 * side / fwd))
    if rss:
        pts = [r for _, r in rss]
        n = len(pts)
        q = [pts[min(n - 1, int(n * f))] for f in (0.25, 0.5, 0.75)]
        print("gst-launch resident memory (MiB): at 25%% %.0f, 50%% %.0f, 75%% %.0f, "
              "max %.0f of the run" % (q[0] / 1024, q[1] / 1024, q[2] / 1024,
                                       max(pts) / 1024))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--classic", action="store_true",
                    help="also the classic net (base 64), one frame: slow")
    ap.add_argument("--auto", action="store_true",
                    help="also run ours with the automatic tile size")
    ap.add_argument("--build", default="build")
    args = ap.parse_args()
    import tifffile
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        stack = os.path.join(tmp, "stack.tif")
        # sCMOS-like: smooth blobs on a background plus shot noise, 16-bit.
        yy, xx = np.mgrid[0:2048, 0:2048]
        with tifffile.TiffWriter(stack) as tw:
            for i in range(args.frames):
                base = 1000 + 800 * np.sin(xx / 37.0 + i) * np.cos(yy / 41.0)
                img = rng.poisson(np.clip(base, 0, None)).astype(np.uint16)
                tw.write(img, photometric="minisblack")
        bench(args, tmp, stack, args.depth, args.base, args.tile, "small")
        if args.classic:
            frames = args.frames
            args.frames = 1
            one = os.path.join(tmp, "one.tif")
            with tifffile.TiffFile(stack) as tf:
                tifffile.imwrite(one, tf.pages[0].asarray(), photometric="minisblack")
            bench(args, tmp, one, 4, 64, 572, "classic")
            args.frames = frames


if __name__ == "__main__":
    main()
