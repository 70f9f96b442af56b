#!/usr/bin/python3
"""Damaged input makes tiffstacksrc post an ERROR naming the file — never a
crash, a hang or an unbounded allocation: not a TIFF, empty, truncated at
every structure, IFD loops, absurd dimensions, offsets past the end, and a
batch of randomly corrupted files."""
import os
import struct
import time

import numpy as np
import tifffile

from tiffstack_util import check, finish, gst, workdir

wd = workdir()
rng = np.random.default_rng(3)


def path(name):
    return os.path.join(wd, name)


def run(p, props=""):
    return gst(f"tiffstacksrc location={p} {props} ! fakesink", timeout=20)


def expect_error(p, what, props="", text=None):
    rc, log = run(p, props)
    ok = isinstance(rc, int) and rc > 0 and "ERROR" in log and p in log
    if text:
        ok = ok and text in log
    if not ok:
        print(f"rc={rc}\n{log}")
    check(ok, f"{what}: error, no crash or hang")


def ifds(data):
    """Offsets of the IFDs of a little-endian classic TIFF."""
    off = struct.unpack_from("<I", data, 4)[0]
    out = []
    while off and len(out) < 100:
        out.append(off)
        n = struct.unpack_from("<H", data, off)[0]
        off = struct.unpack_from("<I", data, off + 2 + 12 * n)[0]
    return out


def set_tag(data, ifd, tag, value):
    """Rewrites a tag of the IFD at `ifd` as one LONG."""
    n = struct.unpack_from("<H", data, ifd)[0]
    for i in range(n):
        e = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, e)[0] == tag:
            struct.pack_into("<HHII", data, e, tag, 4, 1, value)
            return
    raise KeyError(tag)


stack = rng.integers(0, 65536, (3, 40, 50), dtype=np.uint16)
good = path("good.tif")
tifffile.imwrite(good, stack, photometric="minisblack")
gz = path("good-deflate.tif")
tifffile.imwrite(gz, stack, photometric="minisblack", compression="zlib", predictor=True,
                 rowsperstrip=8)
raw = bytearray(open(good, "rb").read())
offs = ifds(raw)
check(len(offs) == 3, "test file has three IFDs")

with open(path("text.tif"), "w") as f:
    f.write("this is not a TIFF file\n" * 10)
expect_error(path("text.tif"), "not a TIFF", text="not a TIFF")
open(path("empty.tif"), "wb").close()
expect_error(path("empty.tif"), "empty file")
expect_error(path("missing.tif"), "missing file", text="does not exist")
# Opening a FIFO used to wait for a writer forever.
os.mkfifo(path("fifo.tif"))
expect_error(path("fifo.tif"), "FIFO", text="not a regular file")
os.mkdir(path("dir.tif"))
expect_error(path("dir.tif"), "directory", text="not a regular file")

# Truncation at every kind of place, plain and compressed.
for name in (good, gz):
    data = open(name, "rb").read()
    last = ifds(bytearray(data))
    # Every cut loses pixels or a directory (the last bytes of these files
    # are a resolution value, which libtiff may tolerate losing).
    cuts = sorted({4, 8, 16, 200, len(data) // 3, len(data) // 2, last[-1] - 10}
                  | {o + 6 for o in last})
    for cut in cuts:
        p = path(f"cut-{os.path.basename(name)}-{cut}.tif")
        open(p, "wb").write(data[:cut])
        expect_error(p, f"{os.path.basename(name)} truncated at {cut}")

# IFD loops: last -> first, and a page pointing to itself.
for name, frm, to in (("loop-last-first", 2, 0), ("loop-self", 1, 1)):
    d = bytearray(raw)
    n = struct.unpack_from("<H", d, offs[frm])[0]
    struct.pack_into("<I", d, offs[frm] + 2 + 12 * n, offs[to])
    p = path(name + ".tif")
    open(p, "wb").write(d)
    expect_error(p, name)
    expect_error(p, name + " with loop=true", props="loop=true")

# Absurd dimensions (a few bytes of file claiming gigabytes of pixels).
for name, tag, value in (("huge-width", 256, 0x7FFFFFFF), ("huge-height", 257, 0x7FFFFFFF),
                         ("big-page", 256, 60000), ("zero-width", 256, 0)):
    d = bytearray(raw)
    set_tag(d, offs[0], tag, value)
    if name == "big-page":
        set_tag(d, offs[0], 257, 60000)     # 60000^2 x 2 bytes = 7.2 GB
    p = path(name + ".tif")
    open(p, "wb").write(d)
    expect_error(p, name)
# Within max-page-size but larger than the file: refused before allocating.
d = bytearray(raw)
set_tag(d, offs[0], 256, 20000)
set_tag(d, offs[0], 257, 20000)
p = path("larger-than-file.tif")
open(p, "wb").write(d)
expect_error(p, "page larger than the file", text="truncated or damaged")
expect_error(good, "page above a lowered max-page-size", props="max-page-size=2000",
             text="max-page-size")

# A 16-bit deflate page claiming 22000 x 22000 (968 MB, within max-page-size;
# compressed, so not bounded by the file size) after a small first page, and
# as the first page, under a 1 GiB address-space limit: the frame cannot be
# allocated, and that must be an error naming the page. The later page used
# to abort the process (GLib-ERROR, exit 133): renegotiation made a buffer pool
# that allocated with g_malloc. (Not under ASan, which reserves terabytes of
# address space for its shadow memory.)
if not os.environ.get("UNET_SANITIZER_PRELOAD"):
    import resource
    import subprocess

    from tiffstack_util import gst_env

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    for big_page in (1, 0):
        p = path(f"huge-deflate-page{big_page}.tif")
        with tifffile.TiffWriter(p) as w:
            for _ in range(2):
                w.write(np.zeros((4, 4), np.uint16), photometric="minisblack",
                        compression="zlib", contiguous=False)
        d = bytearray(open(p, "rb").read())
        for tag in (256, 257, 278):     # width, height, rows per strip
            set_tag(d, ifds(d)[big_page], tag, 22000)
        open(p, "wb").write(d)
        r = subprocess.run(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={p}", "!",
                            "fakesink"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30, env=gst_env(), preexec_fn=limited)
        log = r.stdout.decode(errors="replace")
        # 1 (error while playing) or 255 (state change failed), never a signal
        # or GLib's abort (133)
        ok = r.returncode in (1, 255) and f"page {big_page} of \"{p}\"" in log
        if not ok:
            print(f"rc={r.returncode}\n{log}")
        check(ok, f"{len(d)}-byte file, page {big_page} of 22000x22000 under a 1 GiB "
              "address-space limit: error naming the page, no abort")

# Strip data outside the file.
d = bytearray(raw)
set_tag(d, offs[1], 273, 0xFFFFFF00)
p = path("strip-offset.tif")
open(p, "wb").write(d)
expect_error(p, "strip offset past the end")

# Caps downstream refuses: an ERROR naming the file, never a hang. The error
# used to come from the streaming thread during set_state(PAUSED), which
# gst-launch-1.0 1.22 can miss (it then hung in about 1 run in 6 here); ten
# runs of each pipeline catch that with probability 1 - (5/6)^20 > 97 %.
rgb = path("rgb.tif")
tifffile.imwrite(rgb, np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
for p, down in ((good, "video/x-raw,format=GRAY8 ! fakesink"),
                (rgb, "video/x-raw,format=GRAY8 ! fakesink")):
    bad = []
    for i in range(10):
        rc, log = gst(f"tiffstacksrc location={p} ! {down}", timeout=10)
        if not (isinstance(rc, int) and rc > 0 and "does not accept" in log and p in log):
            bad.append(rc)
            print(f"rc={rc}\n{log}")
            break
    check(not bad, f"{os.path.basename(p)} ! {down}: negotiation error, no hang")

# Random corruption: any outcome but a crash or a hang.
base = open(gz, "rb").read()
crashes = []
for i in range(40):
    d = bytearray(base)
    for _ in range(int(rng.integers(1, 8))):
        # Mostly the header and directories (the first and last bytes here).
        pos = int(rng.integers(0, 256)) if rng.random() < 0.5 else int(rng.integers(0, len(d)))
        d[pos] = int(rng.integers(0, 256))
    p = path(f"fuzz-{i}.tif")
    open(p, "wb").write(d)
    t0 = time.time()
    rc, log = run(p)
    print(f"fuzz-{i}: rc={rc} {time.time() - t0:.2f} s")
    if not (isinstance(rc, int) and rc >= 0 and (rc == 0 or "ERROR" in log)):
        crashes.append((p, rc))
        print(log[-2000:])
check(not crashes, f"40 randomly corrupted files: no crash or hang {crashes}")

finish()
