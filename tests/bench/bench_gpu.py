#!/usr/bin/python3
"""GPU throughput of gst-unet vs PyTorch + cuDNN, for an H200 (DESIGN.md, issue 6).

For the classic U-Net (depth 4, 64 filters, valid) and base 32, over 2048x2048 16-bit
frames, in one run:
  engine   the engine alone (tests/gpu/unet-bench-gpu: segmenter = upload, normalise,
           tile, batched forward, stitch, download), per precision
  gst      end to end: gst-launch-1.0 videotestsrc (GRAY16_LE 2048x2048) ! unetsegment
           device=cuda precision=P ! fakesink, for each P of --gst-precisions
           (default bf16,fp32); the per-frame time is the difference of two runs
           (N+K and K frames) so start-up and model loading cancel out
  torch    PyTorch + cuDNN on the same weights and the same tiles: channels_last,
           bf16 autocast, cudnn.benchmark, the frame's tiles in batches, plus the
           frame's upload (tile extraction and stitching are NOT charged to PyTorch,
           which favours it)
and prints Mpx/s (input megapixels per second, median frame time), the ratio
engine/torch and the engine's share of the bf16 tensor-core floor
(FLOPs per frame / 790 TFLOP/s).

usage: tests/bench/bench_gpu.py [--build DIR] [--frames N] [--tile T] [--batch B]
       [--precisions P,..] [--gst-precisions P,..] [--gst-single]
(scripts/gpu-run.sh phase 2: --frames 10 --precisions bf16,fp32 --gst-precisions bf16
 --gst-single, which fits its time budget)
Without a CUDA device it says so and exits 0 (nothing to measure).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

BF16_PEAK = 790e12      # measured dense BF16 matrix throughput of an H200 (DESIGN.md)
SIZE = 2048


def find_build(arg):
    for d in ([arg] if arg else []) + [os.environ.get("UNET_BUILD_ROOT"), "build-gpu",
                                        "build-cuda", "build"]:
        if d and os.path.exists(os.path.join(d, "tests", "gpu", "unet-bench-gpu")):
            return os.path.abspath(d)
    return None


def run_engine(build, model, precision, args):
    tool = os.path.join(build, "tests", "gpu", "unet-bench-gpu")
    p = subprocess.run([tool, model, "--precision", precision, "--frames", str(args.frames),
                        "--size", str(SIZE), "--tile", str(args.tile), "--batch",
                        str(args.batch)], capture_output=True, text=True)
    if p.returncode == 77:
        return None
    if p.returncode != 0:
        raise RuntimeError(f"unet-bench-gpu failed: {p.stderr.strip()}")
    return dict(line.split("=", 1) for line in p.stdout.split("\n") if "=" in line)


def run_gst(build, model, precision, args):
    if shutil.which("gst-launch-1.0") is None:
        return None
    env = dict(os.environ)
    plugin_dir = os.path.join(build, "elements", "unet")
    env["GST_PLUGIN_PATH_1_0"] = plugin_dir + ":" + env.get("GST_PLUGIN_PATH_1_0", "")

    def once(n):
        cmd = ["gst-launch-1.0", "-q", "videotestsrc", f"num-buffers={n}", "pattern=snow", "!",
               f"video/x-raw,format=GRAY16_LE,width={SIZE},height={SIZE}", "!",
               "unetsegment", f"model={model}", "device=cuda", f"precision={precision}",
               f"tile-size={args.tile}",
               f"batch-size={args.batch}", "!", "fakesink", "sync=false"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError(f"gst-launch failed: {p.stderr.strip()[-500:]}")
        return time.perf_counter() - t0

    if args.gst_single:
        # one process of `frames` frames: start-up and model loading are included, so
        # this is an upper bound of the per-frame time (the GPU check's time budget)
        return once(args.frames) / args.frames
    k = 3
    short = min(once(k) for _ in range(2))
    long_ = min(once(k + args.frames) for _ in range(2))
    return (long_ - short) / args.frames


def run_torch(model_path, n_tiles, tile, args):
    import torch
    import unet_ref
    m, _ = unet_ref.load_model(model_path, dtype=torch.float32)
    m = m.cuda().to(memory_format=torch.channels_last).eval()
    torch.backends.cudnn.benchmark = True
    frame = torch.randint(0, 4096, (SIZE, SIZE), dtype=torch.int16).pin_memory()
    batches = [min(args.batch, n_tiles - i) for i in range(0, n_tiles, args.batch)]
    xs = {b: torch.randn(b, 1, tile, tile, device="cuda").to(
        memory_format=torch.channels_last) for b in set(batches)}
    times = []
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for i in range(args.frames + 2):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            frame.cuda(non_blocking=True)
            for b in batches:
                torch.softmax(m(xs[b]), dim=1).argmax(dim=1)
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--tile", type=int, default=572)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precisions", default="bf16,fp16,tf32,fp32")
    ap.add_argument("--gst-precisions", default="bf16,fp32",
                    help="precisions of the gst-launch end-to-end runs")
    ap.add_argument("--gst-single", action="store_true",
                    help="one gst-launch run in all (the first net, the first gst "
                    "precision, one process; start-up included)")
    args = ap.parse_args()

    try:
        import torch
        have_torch_gpu = torch.cuda.is_available()
    except ImportError:
        have_torch_gpu = False
    build = find_build(args.build)
    if build is None:
        print("bench_gpu: no build with the CUDA backend (tests/gpu/unet-bench-gpu); "
              "configure with -Dcuda=enabled")
        return 0
    import unet_ref
    import torch

    rows = []
    tmp = tempfile.mkdtemp(prefix="bench-gpu-")
    try:
        for name, base in (("classic", 64), ("base32", 32)):
            cfg = unet_ref.make_config(base_filters=base)
            path = os.path.join(tmp, f"{name}.safetensors")
            unet_ref.save_model(unet_ref.random_model(cfg, 1, dtype=torch.float32), path)
            eng = {}
            for prec in args.precisions.split(","):
                r = run_engine(build, path, prec, args)
                if r is None:
                    print("bench_gpu: no CUDA device on this machine; nothing measured "
                          "(the GPU path has not run here)")
                    return 0
                eng[prec] = r
            ref = eng.get("bf16") or next(iter(eng.values()))
            n_tiles = int(ref["n_tiles"])
            tile = int(ref["tile"].split("x")[0])
            flops = float(ref["flops_per_frame"])
            t_torch = run_torch(path, n_tiles, tile, args) if have_torch_gpu else None
            gst_precs = [p for p in args.gst_precisions.split(",") if p]
            if args.gst_single:
                gst_precs = gst_precs[:1] if not rows else []
            t_gst = {p: run_gst(build, path, p, args) for p in gst_precs}
            rows.append((name, n_tiles, tile, flops, eng, t_torch, t_gst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mpx = SIZE * SIZE / 1e6
    print(f"\n2048x2048 GRAY16 frames, tile {args.tile}, batch {args.batch}, "
          f"{args.frames} frames (median); Mpx/s of input pixels")
    hdr = ["net", "tiles"] + [f"engine {p}" for p in args.precisions.split(",")] + \
        [f"gst e2e {p}" for p in args.gst_precisions.split(",") if p] + ["torch bf16", "engine bf16 / torch", "% of bf16 floor"]
    print(" | ".join(hdr))
    for name, n_tiles, tile, flops, eng, t_torch, t_gst in rows:
        floor = flops / BF16_PEAK
        cells = [name, str(n_tiles)]
        for p in args.precisions.split(","):
            cells.append(f"{float(eng[p]['mpx_s']):.1f}")
        for p in args.gst_precisions.split(","):
            if p:
                cells.append(f"{mpx / t_gst[p]:.1f}" if t_gst.get(p) else "n/a")
        cells.append(f"{mpx / t_torch:.1f}" if t_torch else "n/a")
        t_bf16 = float(eng["bf16"]["median_ms"]) / 1e3 if "bf16" in eng else None
        cells.append(f"{t_torch / t_bf16:.2f}x" if t_torch and t_bf16 else "n/a")
        cells.append(f"{100 * floor / t_bf16:.1f} %" if t_bf16 else "n/a")
        print(" | ".join(cells))
        print(f"  ({name}: {flops / 1e12:.2f} TFLOP per frame, bf16 floor "
              f"{floor * 1e3:.2f} ms = {mpx / floor:.0f} Mpx/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
