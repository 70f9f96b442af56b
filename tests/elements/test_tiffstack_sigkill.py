#!/usr/bin/python3
"""SIGKILL during a write: tiffstacksink's file must stay a valid TIFF that
libtiff (tiffinfo, tiffcp) and tifffile read, holding every page written before
the kill with the right pixels. Killed at random moments, several settings."""
import os
import signal
import subprocess
import time

import numpy as np
import tifffile

from tiffstack_util import check, finish, gst_env, workdir

wd = workdir()
rng = np.random.default_rng(5)
N, H, W = 60, 128, 160
src = os.path.join(wd, "src.tif")
data = rng.integers(0, 65536, (N, H, W), dtype=np.uint16)
tifffile.imwrite(src, data, photometric="minisblack")
page_bytes = H * W * 2

settings = [("none", "auto"), ("zstd", "always"), ("lzw", "never"), ("deflate", "auto"),
            ("none", "always"), ("none", "never")]
for i, (comp, big) in enumerate(settings):
    out = os.path.join(wd, f"killed-{i}.tif")
    # identity sleep-time paces the pages (5 ms each) so the kill lands mid-stack.
    p = subprocess.Popen(
        ["gst-launch-1.0", "-q", "tiffstacksrc", f"location={src}", "!",
         "identity", "sleep-time=5000", "!", "tiffstacksink", f"location={out}",
         f"compression={comp}", f"bigtiff={big}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=gst_env())
    # Wait until more than three pages' bytes are on disk (random data does
    # not compress), so at least two pages are complete, then kill at a
    # random moment.
    t0 = time.time()
    want = 3 * page_bytes
    while time.time() - t0 < 20 and p.poll() is None:
        if os.path.exists(out) and os.path.getsize(out) > want:
            break
        time.sleep(0.002)
    time.sleep(float(rng.uniform(0, 0.05)))
    alive = p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait()
    check(alive, f"{comp}/{big}: pipeline was still writing when killed")

    # tifffile: every listed page decodes and equals the source page.
    try:
        with tifffile.TiffFile(out) as t:
            n = len(t.pages)
            ok = all(np.array_equal(t.pages[k].asarray(), data[k]) for k in range(n)) \
                if comp in ("none", "deflate") else True
            ij = t.imagej_metadata or {}
    except Exception as e:  # noqa: BLE001 - any failure to read is the bug
        print(e)
        n, ok, ij = 0, False, {}
    check(n >= 2 and ok, f"{comp}/{big}: tifffile reads {n} complete pages")
    # The ImageJ count is updated after each page: never ahead of the pages.
    check(ij.get("images", 0) in (n, n - 1), f"{comp}/{big}: ImageJ images={ij.get('images')} for {n} pages")

    # libtiff: tiffinfo walks every directory without error, tiffcp decodes all.
    r = subprocess.run(["tiffinfo", out], capture_output=True, text=True)
    dirs = r.stdout.count("TIFF Directory at offset")
    check(r.returncode == 0 and dirs == n and "rror" not in r.stderr,
          f"{comp}/{big}: tiffinfo reads {dirs} directories cleanly {r.stderr.strip()[:200]}")
    plain = out + ".plain.tif"
    r = subprocess.run(["tiffcp", "-c", "none", out, plain], capture_output=True, text=True)
    ok = r.returncode == 0
    if ok:
        with tifffile.TiffFile(plain) as t:
            ok = len(t.pages) == n and all(np.array_equal(t.pages[k].asarray(), data[k])
                                           for k in range(n))
    check(ok, f"{comp}/{big}: libtiff decodes all {n} pages to the source pixels")

finish()
