#!/usr/bin/python3
"""Throughput and memory of tiffstacksrc / tiffstacksink on a ~1 GB 16-bit stack,
beside tifffile on the same file and a plain `cat > /dev/null`, in one run.

    tests/bench/bench_tiff.py [--size-mb 1024] [--runs 3] [--dir /tmp] [--build build]

Throughput is MB/s of TIFF file read (and, for the copy rows, also written),
median of --runs runs, with the page cache warm (every row reads the same
cached file, so the numbers compare decode/copy overhead, not the disk).
gst-launch-1.0 rows include process start-up (~50 ms). Peak resident memory
(ru_maxrss of the process) is measured on the full stack and on one eighth of
it: flat memory means the two agree. Files are deleted at the end.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_child(args, env):
    """Runs a command; returns (seconds, peak RSS in MiB). The peak comes from
    /usr/bin/time (a small parent: ru_maxrss is inherited across fork)."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name] + args, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"command failed: {' '.join(args)}\n{p.stderr.decode(errors='replace')}")
        return dt, int(rss.read().split()[-1]) / 1024.0


def median_run(args, env, runs):
    times, rss = [], []
    for _ in range(runs):
        t, r = run_child(args, env)
        times.append(t)
        rss.append(r)
    return statistics.median(times), max(rss)


def py_child(code, env):
    return [sys.executable, "-c", code]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    a = ap.parse_args()

    env = os.environ.copy()
    env["GST_PLUGIN_PATH_1_0"] = os.path.join(a.build, "elements", "tiffstack")
    env.setdefault("GST_REGISTRY_1_0", os.path.join(a.dir, "bench-tiff-registry.bin"))

    H = W = 2048                        # an sCMOS frame, 8 MiB at 16 bit
    page_mb = H * W * 2 / 2**20
    pages = max(8, int(a.size_mb / page_mb))
    work = tempfile.mkdtemp(prefix="bench-tiff-", dir=a.dir)
    big = os.path.join(work, "stack.tif")
    small = os.path.join(work, "stack-eighth.tif")
    out = os.path.join(work, "copy.tif")
    rng = np.random.default_rng(0)
    # Smooth background + noise: realistic values, incompressible low bits.
    base = (np.add.outer(np.arange(H), np.arange(W)) % 4096).astype(np.uint16) * 8
    print(f"writing {pages} pages of {W}x{H} GRAY16 ({pages * page_mb:.0f} MiB) ...",
          flush=True)
    try:
        with tifffile.TiffWriter(big, bigtiff=pages * page_mb > 3900) as tw:
            for i in range(pages):
                tw.write(base + rng.integers(0, 256, (H, W), dtype=np.uint16),
                         photometric="minisblack", contiguous=False)
        with tifffile.TiffWriter(small) as tw:
            for i in range(pages // 8):
                tw.write(base, photometric="minisblack", contiguous=False)
        size = os.path.getsize(big) / 1e6
        size_small = os.path.getsize(small) / 1e6
        # Warm the page cache and the GStreamer registry (first scan is slow).
        subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)
        run_child(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={small}", "!",
                   "fakesink"], env)

        rows = []

        def row(name, args, mb, moved=1):
            t, rss = median_run(args, env, a.runs)
            rows.append((name, mb * moved / t, rss))
            print(f"  {name:44s} {mb * moved / t:9.0f} MB/s   peak RSS {rss:7.1f} MiB",
                  flush=True)

        print(f"\nread {size:.0f} MB ({pages} pages), median of {a.runs} runs, warm page cache")
        row("cat > /dev/null", ["sh", "-c", f"cat {big} > /dev/null"], size)
        row("tiffstacksrc ! fakesink", ["gst-launch-1.0", "-q", "tiffstacksrc",
            f"location={big}", "!", "fakesink"], size)
        row("tifffile, page by page (streaming)", py_child(
            "import tifffile,sys\n"
            f"with tifffile.TiffFile({big!r}) as t:\n"
            "    for p in t.pages: p.asarray()\n", env), size)
        # key=slice(None): every page (each write above is its own series).
        row("tifffile.imread (whole stack in memory)", py_child(
            f"import tifffile; a = tifffile.imread({big!r}, key=slice(None))\n"
            f"assert a.shape[0] == {pages}", env), size)
        print(f"\ncopy {size:.0f} MB read + {size:.0f} MB written (MB/s counts both)")
        row("tiffstacksrc ! tiffstacksink", ["gst-launch-1.0", "-q", "tiffstacksrc",
            f"location={big}", "!", "tiffstacksink", f"location={out}"], size, 2)
        row("tifffile read page + TiffWriter.write page", py_child(
            "import tifffile\n"
            f"with tifffile.TiffFile({big!r}) as t, tifffile.TiffWriter({out!r}, bigtiff=True) as w:\n"
            "    for p in t.pages: w.write(p.asarray(), photometric='minisblack', contiguous=False)\n",
            env), size, 2)
        print(f"\nmemory: the same pipelines on one eighth of the stack ({size_small:.0f} MB)")
        _, rss_src = median_run(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={small}",
                                 "!", "fakesink"], env, 1)
        _, rss_copy = median_run(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={small}",
                                  "!", "tiffstacksink", f"location={out}"], env, 1)
        print(f"  {'tiffstacksrc ! fakesink':44s} peak RSS {rss_src:7.1f} MiB "
              f"(full stack: {rows[1][2]:.1f})")
        print(f"  {'tiffstacksrc ! tiffstacksink':44s} peak RSS {rss_copy:7.1f} MiB "
              f"(full stack: {rows[4][2]:.1f})")

        cat, src, tf_stream, tf_all, copy, tf_copy = (r[1] for r in rows)
        print("\nratios")
        print(f"  tiffstacksrc / tifffile streaming     {src / tf_stream:6.2f}x")
        print(f"  tiffstacksrc / tifffile.imread        {src / tf_all:6.2f}x")
        print(f"  tiffstacksrc / cat                    {src / cat:6.2f}x")
        print(f"  copy: tiffstack / tifffile            {copy / tf_copy:6.2f}x")
        print(f"  RSS growth, 8x more pages (src)       {rows[1][2] - rss_src:+6.1f} MiB")
    finally:
        for f in (big, small, out):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(work)


if __name__ == "__main__":
    main()
