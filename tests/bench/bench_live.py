#!/usr/bin/python3
"""Live segmentation when the camera is faster than the model: end-to-end latency
(capture -> segmented frame out) p50/p99 and frames dropped, for

  camera -> tee -> queue leaky=downstream max-size-buffers=1 -> unetsegment -> fakesink sync=true
                \\-> (with --record) queue -> tiffstacksink   [every frame kept]

against the naive pipeline (plain unbounded queue, QoS off: every frame is segmented,
late) and a PyTorch script doing the same per frame (a camera thread at the same rate
feeding a queue, the same model's forward on the mirror-extended frame), in one run.

  bench_live.py [--source test|aravis] [--fps 25,100] [--frames N] [--size WxH]
                [--model FILE | --depth D --base B] [--threads T] [--record]
                [--build DIR] [--no-torch]

--source aravis uses Aravis's GigE Vision camera simulator in a loopback-only network
namespace (the script re-runs itself inside tests/live/netns-camera.sh; needs root).

Latency is what unetsegment reports per frame in its "unetsegment-stats" message (the
pipeline clock's running time when the frame leaves the element minus the frame's
running time, i.e. its capture time for a live source); "dropped" = frames the camera
produced (counted by a pad probe on the camera) minus frames segmented; "RSS +MiB" is
the growth of the process's resident memory over the run (queued frames show up there).
Uses Debian's python3-gi + gir1.2-gstreamer-1.0 (scripts/bootstrap.sh installs them).
"""

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
INSIDE_NETNS = "UNET_BENCH_LIVE_IN_NETNS"


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=["test", "aravis"], default="test")
    ap.add_argument("--fps", default="25,100", help="comma-separated camera rates")
    ap.add_argument("--frames", type=int, default=200, help="frames per run")
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--model", help="model file (default: a random one, see --depth)")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="unetsegment threads (0 = all)")
    ap.add_argument("--record", action="store_true", help="also record every frame")
    ap.add_argument("--build", default=os.environ.get("UNET_BUILD_ROOT",
                                                      os.path.join(ROOT, "build")))
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch script")
    a = ap.parse_args()
    a.width, a.height = (int(v) for v in a.size.split("x"))
    a.fps_list = [int(v) for v in a.fps.split(",")]
    return a


def reexec_in_netns():
    """aravissrc must run in the simulator's namespace: run this script in it."""
    env = dict(os.environ, **{INSIDE_NETNS: "1"})
    cmd = [os.path.join(ROOT, "tests", "live", "netns-camera.sh"), sys.executable] + sys.argv
    sys.exit(subprocess.call(cmd, env=env))


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def run_pipeline(Gst, a, model, fps, mode, record_path):
    """mode: 'leaky' (leaky queue + QoS) or 'naive' (unbounded queue, QoS off)."""
    caps = f"video/x-raw,format=GRAY8,width={a.width},height={a.height},framerate={fps}/1"
    if a.source == "aravis":
        src = f"aravissrc name=cam camera-name=Aravis-Fake-GV01 num-buffers={a.frames}"
    else:
        src = f"videotestsrc name=cam is-live=true pattern=ball num-buffers={a.frames}"
    if mode == "leaky":
        q = "queue leaky=downstream max-size-buffers=1 max-size-bytes=0 max-size-time=0"
        qos = "true"
    else:
        q = "queue max-size-buffers=0 max-size-bytes=0 max-size-time=0"
        qos = "false"
    seg = (f"unetsegment name=seg model=\"{model}\" threads={a.threads} "
           f"post-messages=true qos={qos} ! fakesink sync=true")
    desc = f"{src} ! {caps} ! tee name=t t. ! {q} ! {seg}"
    if record_path:
        desc += (" t. ! queue max-size-buffers=0 max-size-time=0 max-size-bytes=1073741824"
                 f" ! tiffstacksink location=\"{record_path}\"")
    pipe = Gst.parse_launch(desc)
    produced = [0]

    def count(pad, info):
        produced[0] += 1
        return Gst.PadProbeReturn.OK

    pipe.get_by_name("cam").get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, count)
    bus = pipe.get_bus()
    stats = []
    rss0 = rss_mib()
    rss_peak = rss0
    t0 = time.monotonic()
    pipe.set_state(Gst.State.PLAYING)
    error = None
    while True:
        msg = bus.timed_pop(100 * Gst.MSECOND)
        rss_peak = max(rss_peak, rss_mib())
        if time.monotonic() - t0 > 600:
            error = "timeout"
            break
        if msg is None:
            continue
        if msg.type == Gst.MessageType.LATENCY:
            pipe.recalculate_latency()
        elif msg.type == Gst.MessageType.ERROR:
            error = msg.parse_error()[0].message
            break
        elif msg.type == Gst.MessageType.EOS:
            break
        elif msg.type == Gst.MessageType.ELEMENT:
            s = msg.get_structure()
            if s.get_name() == "unetsegment-stats":
                stats.append((s.get_value("latency"), s.get_value("processing-time"),
                              s.get_value("frames-dropped")))
    ok, lat_q = False, None
    q = Gst.Query.new_latency()
    if pipe.get_by_name("seg").get_static_pad("src").query(q):
        live, lmin, lmax = q.parse_latency()
        lat_q = lmin
    pipe.set_state(Gst.State.NULL)
    if error:
        raise RuntimeError(f"pipeline failed: {error}\n  {desc}")
    lat = [s[0] / 1e6 for s in stats if s[0] < 2**63]
    return {
        "produced": produced[0], "segmented": len(stats),
        "dropped": produced[0] - len(stats),
        "reported_dropped": stats[-1][2] if stats else 0,
        "p50": pct(lat, 50), "p99": pct(lat, 99),
        "proc": statistics.median([s[1] / 1e6 for s in stats]) if stats else float("nan"),
        "latency_query": lat_q / 1e6 if lat_q is not None else float("nan"),
        "rss": rss_peak - rss0,
    }


def run_torch(a, model_path, fps, threads):
    """A Python acquisition script: camera thread at `fps` -> queue -> forward of the
    same model on the mirror-extended frame (legal size), argmax; every frame."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    import unet_ref as u

    if threads > 0:
        torch.set_num_threads(threads)
    net, _ = u.load_model(model_path, dtype=torch.float32)
    depth = net.cfg["depth"]

    def out_size(s):
        for _ in range(depth):
            s -= 4
            if s <= 0 or s % 2:
                return -1
            s //= 2
        s -= 4
        for _ in range(depth):
            s = s * 2 - 4
        return s

    def legal_input(n):
        s = n
        while out_size(s) < n:
            s += 1
        return s

    ih, iw = legal_input(a.height), legal_input(a.width)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (a.height, a.width), dtype=np.uint8)
    fifo = queue.Queue()
    rss0 = rss_mib()
    peak = [rss0]

    def camera():
        t = time.monotonic()
        for _ in range(a.frames):
            t += 1.0 / fps
            time.sleep(max(0.0, t - time.monotonic()))
            fifo.put((time.monotonic(), frame.copy()))
        fifo.put(None)

    cam = threading.Thread(target=camera)
    cam.start()
    lat = []
    with torch.no_grad():
        while True:
            item = fifo.get()
            if item is None:
                break
            t_cap, f = item
            x = torch.from_numpy(f.astype(np.float32) / 255.0)[None, None]
            py, px = ih - a.height, iw - a.width
            # mirror extension around the frame (reflect); a frame smaller than the
            # margin would need repeated reflection, not needed at these sizes
            x = F.pad(x, (px // 2, px - px // 2, py // 2, py - py // 2), mode="reflect")
            labels = net(x).argmax(1)
            del labels
            lat.append((time.monotonic() - t_cap) * 1e3)
            peak[0] = max(peak[0], rss_mib())
    cam.join()
    return {"produced": a.frames, "segmented": len(lat), "dropped": 0,
            "reported_dropped": 0, "p50": pct(lat, 50), "p99": pct(lat, 99),
            "proc": float("nan"), "latency_query": float("nan"), "rss": peak[0] - rss0}


def main():
    a = parse_args()
    if a.source == "aravis" and not os.environ.get(INSIDE_NETNS):
        reexec_in_netns()
    os.environ["GST_PLUGIN_PATH_1_0"] = ":".join(
        [os.path.join(a.build, "elements", "unet"), os.path.join(a.build, "elements", "tiffstack")]
        + ([os.environ["GST_PLUGIN_PATH_1_0"]] if os.environ.get("GST_PLUGIN_PATH_1_0") else []))
    import gi
    gi.require_version("Gst", "1.0")
    from gi.repository import Gst
    Gst.init(None)
    if Gst.ElementFactory.find("unetsegment") is None:
        sys.exit(f"unetsegment not found in {a.build}/elements/unet (build first, or --build)")

    tmp = tempfile.mkdtemp(prefix="bench-live-")
    model = a.model
    if model is None:
        sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
        import unet_ref as u
        model = os.path.join(tmp, f"d{a.depth}-b{a.base}.safetensors")
        u.save_model(u.random_model(u.make_config(depth=a.depth, base_filters=a.base),
                                    seed=1), model)

    print(f"# source {a.source}, {a.width}x{a.height} GRAY8, {a.frames} frames per run, "
          f"model {os.path.basename(model)}, threads {a.threads or 'all'}, "
          f"{os.cpu_count()} CPUs")
    # warm-up (plugin loading, oneDNN primitives), not in the table
    warm = argparse.Namespace(**vars(a))
    warm.frames = 5
    run_pipeline(Gst, warm, model, a.fps_list[0], "leaky", None)

    hdr = (f"{'pipeline':<36} {'fps':>4} {'made':>5} {'segm':>5} {'drop':>5} "
           f"{'msg-drop':>8} {'proc ms':>8} {'p50 ms':>8} {'p99 ms':>8} {'LATENCY ms':>10} "
           f"{'RSS +MiB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for fps in a.fps_list:
        rows = [("leaky queue + QoS", "leaky"), ("naive (queue, QoS off)", "naive")]
        for label, mode in rows:
            rec = os.path.join(tmp, f"rec-{fps}-{mode}.tif") if a.record else None
            r = run_pipeline(Gst, a, model, fps, mode, rec)
            pages = ""
            if rec:
                import tifffile
                with tifffile.TiffFile(rec) as t:
                    pages = f"  recorded {len(t.pages)}/{r['produced']}"
                os.unlink(rec)
            print(f"{'unetsegment ' + label:<36} {fps:>4} {r['produced']:>5} "
                  f"{r['segmented']:>5} {r['dropped']:>5} {r['reported_dropped']:>8} "
                  f"{r['proc']:>8.1f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
                  f"{r['latency_query']:>10.1f} {r['rss']:>8.1f}{pages}", flush=True)
        if not a.no_torch:
            r = run_torch(a, model, fps, a.threads)
            print(f"{'PyTorch script (no drops)':<36} {fps:>4} {r['produced']:>5} "
                  f"{r['segmented']:>5} {r['dropped']:>5} {'-':>8} {'-':>8} "
                  f"{r['p50']:>8.1f} {r['p99']:>8.1f} {'-':>10} {r['rss']:>8.1f}", flush=True)
    print("\nmade: frames from the camera; segm: frames segmented; drop = made - segm; "
          "msg-drop: frames-dropped in the last unetsegment-stats message; LATENCY: "
          "what unetsegment adds in the LATENCY query (its largest processing time).")


if __name__ == "__main__":
    main()
