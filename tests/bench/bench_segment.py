#!/usr/bin/python3
"""Benchmark: overlap-tile segmentation of a stack of 2048x2048 16-bit frames on CPU.

Side by side in the same run, same model (exported to ONNX with Debian's PyTorch for
the PyPI engines), same tiles, same threads, alternating rounds:

  ours:    gst-launch-1.0 tiffstacksrc ! unetsegment ! fakesink
  peers:   a script doing the same overlap-tile segmentation (tifffile page by page,
           range normalisation, mirror padding, the same tile grid and batch, float32
           forward, softmax, owned-block stitching, argmax) with Debian's PyTorch,
           ONNX Runtime and OpenVINO from PyPI (installed into --venv by the bench,
           skipped with a note when they cannot be; see peers.py), and PyTorch 2.x
           from PyPI with --pypi-torch

Prints Mpx/s (medians over --repeats alternating rounds), the ratio to the fastest
peer, the fraction of frame-0 labels equal to ours (a forward-pass bug shows up as
disagreement; a float64 reference of whole 2048x2048 frames is too slow for a bench:
bench_forward.py checks every engine against float64 on one tile), the share of
normalise / tile extraction / stitch+argmax versus the forward pass (from the
element's "unetsegment-stats" messages), and the resident memory of the gst-launch
process sampled over the stack (flat = bounded memory).

usage: bench_segment.py [--frames 4] [--base 16] [--depth 4] [--tile 572] [--batch 4]
                        [--threads 2] [--repeats 1] [--auto] [--classic] [--build build]
                        [--venv DIR] [--no-install] [--pypi-torch]
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402
import unet_ref  # noqa: E402


def gst_env(build):
    env = dict(os.environ)
    b = os.path.join(ROOT, build)
    env["GST_PLUGIN_SYSTEM_PATH_1_0"] = ""
    env["GST_PLUGIN_PATH_1_0"] = ":".join([
        os.path.join(b, "elements", "tiffstack"), os.path.join(b, "elements", "unet"),
        "/usr/lib/x86_64-linux-gnu/gstreamer-1.0"])
    env["GST_REGISTRY_1_0"] = os.path.join(b, "bench-registry.bin")
    env.setdefault("OMP_WAIT_POLICY", "passive")   # as for the peers
    # the element's defaults (UNET_CPU_CONV_ALGO from the caller's environment only)
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


# The peers' overlap-tile script: same algorithm as the element (range
# normalisation, mirror padding, one tile grid of step 2^depth, owned-block
# stitching, argmax), tifffile page by page, the same tile and batch; only the
# forward differs. argv: engine model stack tile batch threads depth labels.raw refdir
# Prints the wall seconds of the whole stack. OpenVINO gets a static
# [batch, 1, tile, tile] shape (the last batch of a frame is padded to it);
# ONNX Runtime and PyTorch take the batch as it comes.
SEGMENT_CHILD = r"""
import sys, time
import numpy as np, tifffile
engine, model, stack, tile, batch, threads, depth, labels_out, refdir = sys.argv[1:10]
tile, batch, threads, depth = int(tile), int(batch), int(threads), int(depth)
if engine == "torch":
    import torch
    sys.path.insert(0, refdir)
    import unet_ref
    torch.set_num_threads(threads)
    net, _ = unet_ref.load_model(model, dtype=torch.float32)
    net.eval()
    def fwd(x):
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
elif engine == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    def fwd(x):
        return sess.run(None, {"x": x})[0]
else:
    import openvino as ov
    core = ov.Core()
    m = core.read_model(model)
    m.reshape({"x": [batch, 1, tile, tile]})
    cm = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                       "PERFORMANCE_HINT": "LATENCY",
                                       "INFERENCE_PRECISION_HINT": "f32",
                                       "NUM_STREAMS": 1})
    req = cm.create_infer_request()
    def fwd(x):
        n = x.shape[0]
        if n < batch:
            x = np.concatenate([x, np.zeros((batch - n,) + x.shape[1:], x.dtype)])
        req.infer({"x": x})
        return req.get_output_tensor(0).data[:n]
step = 1 << depth
def out_size(s):
    for _ in range(depth):
        s = (s - 4) // 2
    s -= 4
    for _ in range(depth):
        s = 2 * s - 4
    return s
to = out_size(tile)
border = (tile - to) // 2
stride = to // step * step
first = None
t0 = time.perf_counter()
with tifffile.TiffFile(stack) as tf:
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
        for b0 in range(0, len(origins), batch):
            chunk = origins[b0:b0 + batch]
            x = np.ascontiguousarray(np.stack(
                [padded[y:y + tile, x_:x_ + tile] for y, x_ in chunk])[:, None])
            p = fwd(x).argmax(1).astype(np.uint8)
            for (y, x_), lab in zip(chunk, p):
                hh, ww = min(stride, h - y), min(stride, w - x_)
                labels[y:y + hh, x_:x_ + ww] = lab[:hh, :ww]
        if first is None:
            first = labels
print("%.4f" % (time.perf_counter() - t0))
first.tofile(labels_out)
"""


def peer_segment(args, py, engine, model, stack, tile, depth, tmp):
    """One peer's overlap-tile run: (wall s, labels of frame 0)."""
    out = os.path.join(tmp, "labels-%s.raw" % engine)
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "passive")
    r = subprocess.run([py, "-c", SEGMENT_CHILD, engine, model, stack, str(tile),
                        str(args.batch), str(args.threads), str(depth), out,
                        os.path.join(ROOT, "tests", "reference")],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s failed: %s" % (engine, r.stderr.strip()[-800:]))
    return float(r.stdout.split()[-1]), np.fromfile(out, dtype=np.uint8)


def first_frame_labels(args, stack, model, tile, out):
    """Our labels of the stack's first frame (for the agreement column)."""
    import tifffile
    one = out + ".tif"
    with tifffile.TiffFile(stack) as tf:
        tifffile.imwrite(one, tf.pages[0].asarray(), photometric="minisblack")
    cmd = ["gst-launch-1.0", "-q", "tiffstacksrc", "location=" + one, "!", "unetsegment",
           "model=" + model, "tile-size=%d" % tile, "batch-size=%d" % args.batch,
           "threads=%d" % args.threads, "device=cpu", "!", "filesink",
           "location=" + out]
    r = subprocess.run(cmd, capture_output=True, text=True, env=gst_env(args.build))
    if r.returncode != 0:
        peers.note("labels of frame 0 failed: " + r.stderr[-500:])
        return None
    return np.fromfile(out, dtype=np.uint8)


def bench(args, tmp, stack, depth, base, tile, label, peer_defs):
    cfg = unet_ref.make_config(classes=2, depth=depth, base_filters=base)
    model = unet_ref.random_model(cfg, 1, dtype=__import__("torch").float32)
    mpath = os.path.join(tmp, "bench-%s.safetensors" % label)
    unet_ref.save_model(model, mpath, normalization={"mode": "range", "min": 0,
                                                     "max": 65535})
    onnx = os.path.join(tmp, "bench-%s.onnx" % label)
    onnx_ok = peers.export_onnx(mpath, onnx, tile)
    mpx = args.frames * 2048 * 2048 / 1e6
    contenders = [("gst-launch ... unetsegment tile-size=%d" % tile, None, None)]
    if args.auto:
        contenders.append(("gst-launch ... unetsegment tile-size=0", None, None))
    for plabel, py, engine in peer_defs:
        if engine in ("onnxruntime", "openvino") and not onnx_ok:
            continue
        if engine.startswith("torch"):
            engine = "torch"
            plabel = plabel.replace(" NCHW", "").replace(" channels_last", "")
            if any(c[2] == "torch" and c[1] == py for c in contenders):
                continue
        contenders.append((plabel + " overlap-tile script", py, engine))
    walls = {c[0]: [] for c in contenders}
    first_labels, all_stats, rss, auto_stats = {}, None, None, None
    ref_labels = os.path.join(tmp, "ours-labels.raw")
    for _ in range(args.repeats):           # alternating rounds
        for name, py, engine in contenders:
            try:
                if py is None:
                    t = tile if "tile-size=0" not in name else 0
                    wall, stats, samples = run_ours(args, stack, mpath, t, args.frames)
                    if t == tile:
                        all_stats, rss = stats, samples
                    else:
                        auto_stats = stats
                else:
                    model_file = onnx if engine in ("onnxruntime", "openvino") else mpath
                    wall, lab = peer_segment(args, py, engine, model_file, stack, tile,
                                             depth, tmp)
                    first_labels[name] = lab
                walls[name].append(wall)
            except RuntimeError as e:
                peers.note(str(e))
    ours_labels = first_frame_labels(args, stack, mpath, tile, ref_labels)
    print("\n== %s: depth %d, base %d, tile %d, batch %d, threads %d, %d frames "
          "2048x2048 u16 (%d tiles/frame), median of %d alternating rounds" % (
              label, depth, base, tile, args.batch, args.threads, args.frames,
              all_stats[0].get("tiles", 0) if all_stats else 0, args.repeats))
    peer_walls = [statistics.median(w) for n, w in walls.items()
                  if w and not n.startswith("gst-launch")]
    best = min(peer_walls) if peer_walls else None
    print("%-52s %8s %8s %14s %s" % ("", "wall s", "Mpx/s", "vs best peer",
                                    "labels = ours (frame 0)"))
    for name, w in walls.items():
        if not w:
            continue
        m = statistics.median(w)
        agree = ""
        if name in first_labels and ours_labels is not None \
                and first_labels[name].size == ours_labels.size:
            agree = "%.5f" % float((first_labels[name] == ours_labels).mean())
        extra = ""
        if "tile-size=0" in name and auto_stats:
            extra = "  (%d tiles of %d px)" % (auto_stats[0].get("tiles", 0),
                                               auto_stats[0].get("tile-width", 0))
        print("%-52s %8.2f %8.3f %13.2fx %s%s" % (name, m, mpx / m,
                                                  best / m if best else float("nan"),
                                                  agree, extra))
    if all_stats is None:
        return
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
    peers.add_args(ap)
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
        print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
        peer_defs, _ = peers.peer_list(args, True)
        bench(args, tmp, stack, args.depth, args.base, args.tile, "small", peer_defs)
        if args.classic:
            frames = args.frames
            args.frames = 1
            one = os.path.join(tmp, "one.tif")
            with tifffile.TiffFile(stack) as tf:
                tifffile.imwrite(one, tf.pages[0].asarray(), photometric="minisblack")
            bench(args, tmp, one, 4, 64, 572, "classic", peer_defs)
            args.frames = frames
        print("load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
