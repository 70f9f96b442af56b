#!/usr/bin/python3
"""tiffstacksrc reads stacks written by tifffile and libtiff's tiffcp — classic
and BigTIFF, strips and tiles, both byte orders, every compression the system
libtiff decodes, predictors, float, signed, RGB, ImageJ hyperstacks, OME-TIFF —
and its frames equal the stored pixels exactly (JPEG: equal to libtiff's own
decode of the same file)."""
import os
import re
import subprocess

import numpy as np
import tifffile
from PIL import Image

from tiffstack_util import check, finish, gst, have, read_raw, src_frames, workdir

wd = workdir()
rng = np.random.default_rng(7)
N, H, W = 5, 37, 29            # odd sizes: rows need padding, tiles are partial


def path(name):
    return os.path.join(wd, name)


def roundtrip(name, data, expect=None, props="", channels=1, **kw):
    p = path(name)
    if channels == 1:
        kw.setdefault("photometric", "minisblack")
    tifffile.imwrite(p, data, **kw)
    expect = data if expect is None else expect
    got = src_frames(p, props, expect.shape[0], expect.shape[1], expect.shape[2],
                     expect.dtype, channels)
    check(got is not None and np.array_equal(got, expect), f"read {name} {props}")
    return p


u8 = rng.integers(0, 256, (N, H, W), dtype=np.uint8)
u16 = rng.integers(0, 65536, (N, H, W), dtype=np.uint16)
f32 = rng.standard_normal((N, H, W)).astype(np.float32)

# Plain layouts, classic and BigTIFF, both byte orders.
for big in (False, True):
    for bo in ("<", ">"):
        tag = f"{'big' if big else 'classic'}-{'le' if bo == '<' else 'be'}"
        roundtrip(f"u8-{tag}.tif", u8, bigtiff=big, byteorder=bo)
        roundtrip(f"u16-{tag}.tif", u16, bigtiff=big, byteorder=bo)
        roundtrip(f"f32-{tag}.tif", f32, bigtiff=big, byteorder=bo)

# Tiled (partial edge tiles), several strips per page.
roundtrip("u16-tiled.tif", u16, tile=(16, 16))
roundtrip("u16-strips.tif", u16, rowsperstrip=5)
roundtrip("u16-tiled-big-be.tif", u16, tile=(16, 32), bigtiff=True, byteorder=">")

# Float64 is narrowed to float32 (exact for values that are floats already).
roundtrip("f64.tif", f32.astype(np.float64), expect=f32)

# Signed samples are shifted into the unsigned range like ImageJ: +2^(bits-1).
i16 = rng.integers(-32768, 32768, (N, H, W), dtype=np.int16)
roundtrip("i16.tif", i16, expect=(i16.astype(np.int32) + 32768).astype(np.uint16))
i8 = rng.integers(-128, 128, (N, H, W), dtype=np.int8)
roundtrip("i8.tif", i8, expect=(i8.astype(np.int16) + 128).astype(np.uint8))

# RGB, contiguous and planar.
rgb = rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8)
roundtrip("rgb.tif", rgb, channels=3, photometric="rgb")
p = path("rgb-planar.tif")
tifffile.imwrite(p, np.moveaxis(rgb, -1, 1).copy(), photometric="rgb",
                 planarconfig="separate")
got = src_frames(p, "", N, H, W, np.uint8, 3)
check(got is not None and np.array_equal(got, rgb), "read rgb-planar.tif")

# Compression that tifffile writes without imagecodecs.
roundtrip("u16-zlib-pred.tif", u16, compression="zlib", predictor=True)
roundtrip("u8-zlib-tiled.tif", u8, compression="zlib", tile=(16, 16))
roundtrip("u16-lzma.tif", u16, compression="lzma")
roundtrip("f32-zlib.tif", f32, compression="zlib")

# Everything else through libtiff's tiffcp (lossless: compare with the source).
src16 = path("u16-classic-le.tif")
src8 = path("u8-classic-le.tif")
src32 = path("f32-classic-le.tif")
cases = [
    ("lzw:2", src16, u16), ("lzw", src8, u8), ("zip:2", src16, u16),
    ("zstd:2", src16, u16), ("zstd", src32, f32), ("lzma:2", src16, u16),
    ("packbits", src8, u8), ("packbits", src16, u16), ("zip:3", src32, f32),
    ("lzw:3", src32, f32),
]
for opts, src, ref in cases:
    layouts = [[], ["-t", "-w", "16", "-l", "16"], ["-B", "-r", "3"]]
    if opts.endswith(":3"):
        # libtiff 4.5's own tiffcp does not round-trip the floating-point
        # predictor in big-endian files (tiffcp -c none of it differs too).
        layouts.pop()
    for extra in layouts:
        p = path(f"cp-{opts.replace(':', '_')}-{len(extra)}-{os.path.basename(src)}")
        r = subprocess.run(["tiffcp", "-c", opts] + extra + [src, p],
                           capture_output=True)
        if r.returncode != 0:
            check(False, f"tiffcp -c {opts} {extra}: {r.stderr.decode()}")
            continue
        got = src_frames(p, "", N, H, W, ref.dtype)
        check(got is not None and np.array_equal(got, ref),
              f"read tiffcp -c {opts} {' '.join(extra)} {os.path.basename(src)}")

# JPEG (lossy): compare with libtiff's own decode of the same file.
smooth = (np.add.outer(np.arange(H), np.arange(W)) * 3 % 256).astype(np.uint8)
gray = np.stack([np.roll(smooth, i, axis=1) for i in range(N)])
tifffile.imwrite(path("gray8.tif"), gray, photometric="minisblack")
subprocess.run(["tiffcp", "-c", "jpeg:90", "-r", "16", path("gray8.tif"),
                path("gray-jpeg.tif")], check=True)
subprocess.run(["tiffcp", "-c", "none", path("gray-jpeg.tif"), path("gray-dec.tif")],
               check=True)
ref = tifffile.imread(path("gray-dec.tif"))
got = src_frames(path("gray-jpeg.tif"), "", N, H, W, np.uint8)
check(got is not None and np.array_equal(got, ref), "read gray JPEG")
check(got is not None and np.abs(got.astype(int) - gray).max() < 40,
      "gray JPEG close to the source (sanity: q=90 on a smooth ramp)")

rgbs = np.stack([gray, np.flip(gray, 2), 255 - gray], axis=-1)
tifffile.imwrite(path("rgb8.tif"), rgbs, photometric="rgb")
for opts, name in (("jpeg:90", "ycbcr"), ("jpeg:r:90", "rgb")):
    jp = path(f"rgb-jpeg-{name}.tif")
    subprocess.run(["tiffcp", "-c", opts, "-r", "16", path("rgb8.tif"), jp], check=True)
    # Pillow decodes through libtiff with JPEG colour mode RGB, as we do.
    im = Image.open(jp)
    ref = []
    for i in range(N):
        im.seek(i)
        ref.append(np.array(im.convert("RGB")))
    ref = np.stack(ref)
    got = src_frames(jp, "", N, H, W, np.uint8, 3)
    check(got is not None and np.array_equal(got, ref), f"read RGB JPEG ({name})")

# Pages of different sizes: caps are renegotiated for each change.
p = path("mixed.tif")
a = rng.integers(0, 65536, (2, 10, 12), dtype=np.uint16)
b = rng.integers(0, 65536, (3, 7, 9), dtype=np.uint16)
tifffile.imwrite(p, a, photometric="minisblack")
tifffile.imwrite(p, b, append=True, photometric="minisblack")
out = path("mixed.raw")
rc, log = gst(f"tiffstacksrc location={p} ! filesink location={out}")
raw = np.fromfile(out, dtype=np.uint8) if rc == 0 else np.zeros(0, np.uint8)
sa, sb = 2 * 10 * 24, 3 * 7 * 20
ok = raw.size == sa + sb
if ok:
    ga = raw[:sa].reshape(2, 10, 24)[:, :, :24].copy().view("<u2")
    gb = raw[sa:].reshape(3, 7, 20)[:, :, :18].copy().view("<u2")
    ok = np.array_equal(ga, a) and np.array_equal(gb, b)
check(ok, "pages of different sizes (renegotiation)")

# Page range and looping.
p = path("u16-classic-le.tif")
got = src_frames(p, "start-index=1 stop-index=2", 2, H, W, np.uint16)
check(got is not None and np.array_equal(got, u16[1:3]), "start-index/stop-index")
got = src_frames(p, "loop=true num-buffers=7", 7, H, W, np.uint16)
check(got is not None and np.array_equal(got, u16[[0, 1, 2, 3, 4, 0, 1]]), "loop")
got = src_frames(p, "start-index=3 loop=true num-buffers=5", 5, H, W, np.uint16)
check(got is not None and np.array_equal(got, u16[[3, 4, 3, 4, 3]]),
      "loop over a range")
rc, log = gst(f"tiffstacksrc location={p} start-index=9 ! fakesink")
check(isinstance(rc, int) and rc > 0 and "start-index=9" in log, "start-index past the end is an error")


def tags_of(p, props=""):
    rc, log = gst(f"tiffstacksrc location={p} {props} ! fakesink", tags=True)
    found = {}
    for key in ("pixel size x", "pixel size y", "pixel size z", "channels",
                "slices", "frames", "value offset", "frame interval"):
        m = re.search(rf"{key}: ([-0-9.e+]+)", log)
        if m:
            found[key] = float(m.group(1))
    return rc, found


# ImageJ hyperstack: T=2, Z=3, C=2; channel=1 gives z fastest, then t.
hs = rng.integers(0, 65536, (2, 3, 2, H, W), dtype=np.uint16)
p = path("hyper.tif")
tifffile.imwrite(p, hs, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                 metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um"})
for c in (0, 1):
    got = src_frames(p, f"channel={c}", 6, H, W, np.uint16)
    check(got is not None and np.array_equal(got, hs[:, :, c].reshape(6, H, W)),
          f"ImageJ hyperstack channel={c}")
got = src_frames(p, "channel=1 start-index=2 stop-index=4", 3, H, W, np.uint16)
check(got is not None and np.array_equal(got, hs[:, :, 1].reshape(6, H, W)[2:5]),
      "ImageJ hyperstack channel with a range")
got = src_frames(p, "", 12, H, W, np.uint16)
check(got is not None and np.array_equal(got, hs.reshape(12, H, W)),
      "ImageJ hyperstack, every page")
# The axes tags describe the frames as they leave the element.
rc, t = tags_of(p, "channel=1")
check(abs(t.get("pixel size x", 0) - 0.25) < 1e-6 and abs(t.get("pixel size z", 0) - 1.5) < 1e-9
      and t.get("channels") == 1 and t.get("slices") == 3 and t.get("frames") == 2,
      f"ImageJ metadata as tags, one channel over z and t {t}")
rc, t = tags_of(p)
check(t.get("channels") == 2 and t.get("slices") == 3 and t.get("frames") == 2,
      f"ImageJ hyperstack, every page: the file's axes as tags {t}")
rc, log = gst(f"tiffstacksrc location={p} channel=2 ! fakesink")
check(isinstance(rc, int) and rc > 0 and "channel=2" in log, "channel out of range is an error")

# OME-TIFF: T=2, C=3, Z=2 (DimensionOrder XYZCT).
ome = rng.integers(0, 256, (2, 3, 2, H, W), dtype=np.uint8)
p = path("stack.ome.tif")
tifffile.imwrite(p, ome, metadata={"axes": "TCZYX", "PhysicalSizeX": 0.3,
                                   "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.2})
for c in (0, 2):
    got = src_frames(p, f"channel={c}", 4, H, W, np.uint8)
    check(got is not None and np.array_equal(got, ome[:, c].reshape(4, H, W)),
          f"OME-TIFF channel={c}")
rc, t = tags_of(p)
check(abs(t.get("pixel size x", 0) - 0.3) < 1e-9 and abs(t.get("pixel size y", 0) - 0.4) < 1e-9
      and abs(t.get("pixel size z", 0) - 1.2) < 1e-9,
      f"OME metadata as tags {t}")
# Every page of XYZCT with 3 channels and 2 slices is not in ImageJ's
# (channels fastest) order: a plain stack of 12 slices; one channel runs over
# z and t.
check(t.get("channels") == 1 and t.get("slices") == 12 and t.get("frames") == 1,
      f"OME XYZCT, every page: axes tags of a plain stack {t}")
rc, t = tags_of(p, "channel=2")
check(t.get("channels") == 1 and t.get("slices") == 2 and t.get("frames") == 2,
      f"OME channel=2: axes tags {t}")

# A plain multi-page TIFF is a stack of z slices: one channel, one time point.
# Its page count is not known at the first frame (pages are indexed lazily), so
# tiff-slices is left out rather than wrong (it read 0 when the lazy index and
# the axes tags first met).
rc, t = tags_of(path("u16-classic-le.tif"))
check(rc == 0 and t.get("channels") == 1 and t.get("frames") == 1
      and t.get("slices", N) == N,
      f"plain TIFF: axes tags of z slices {t}")

# Resolution tags in centimetres; signed data announces its offset.
p = path("res-cm.tif")
tifffile.imwrite(p, u16, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER",
                 photometric="minisblack")
rc, t = tags_of(p)
# XResolution is a rational of 32-bit integers: 1e4/0.65 is stored to ~1e-7.
check(abs(t.get("pixel size x", 0) - 0.65) < 1e-5, f"resolution in cm as tags {t}")
rc, t = tags_of(path("i16.tif"))
check(t.get("value offset") == -32768, f"signed data tag {t}")

# Many pages, indexed lazily: the first frame of a 300,000-page stack costs
# about what a one-page file costs. Opening used to walk the whole chain of
# directories three times (libtiff's count, libtiff's walk to the last page,
# our offsets): 0.77 s of CPU more here, growing with the page count. CPU time
# of the gst-launch-1.0 process (not wall time: other tests share the cores),
# with a bound far from both (the lazy open measured 0.01 s, as one page).
def tiny_pages(name, n, order=None, next_of_last=0):
    """A classic little-endian TIFF of n 1x1 8-bit pages (page i holds i % 256)
    whose IFDs lie in the file in `order` (default: page order)."""
    import struct
    entries = 9
    ifd = 2 + entries * 12 + 4
    size = ifd + 4
    order = list(range(n)) if order is None else order
    slot = {page: k for k, page in enumerate(order)}
    buf = bytearray(8 + n * size)
    struct.pack_into("<2sHI", buf, 0, b"II", 42, 8 + slot[0] * size)
    for page in range(n):
        off = 8 + slot[page] * size
        nxt = 8 + slot[page + 1] * size if page + 1 < n else next_of_last
        e = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1),
             (273, 4, off + ifd), (277, 3, 1), (278, 3, 1), (279, 4, 1)]
        struct.pack_into("<H", buf, off, entries)
        for k, (tag, typ, val) in enumerate(e):
            fmt = "<HHIHH" if typ == 3 else "<HHII"
            struct.pack_into(fmt, buf, off + 2 + 12 * k, tag, typ, 1, val,
                             *([0] if typ == 3 else []))
        struct.pack_into("<I", buf, off + 2 + 12 * entries, nxt)
        buf[off + ifd] = page % 256
    p = path(name)
    open(p, "wb").write(buf)
    return p


def first_frame_cost(p):
    from tiffstack_util import gst_env
    child = subprocess.Popen(["gst-launch-1.0", "-q", "tiffstacksrc", f"location={p}",
                              "stop-index=0", "!", "fakesink"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=gst_env())
    _, status, ru = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, ru.ru_utime + ru.ru_stime


one = tiny_pages("one-page.tif", 1)
many = tiny_pages("many-pages.tif", 300000)
rc1, cpu1 = first_frame_cost(one)
rc, cpu = first_frame_cost(many)
print(f"first frame (CPU time): 1 page {cpu1:.2f} s, 300000 pages {cpu:.2f} s")
check(rc1 == 0 and rc == 0 and cpu < cpu1 + 0.4,
      "first frame of a 300000-page stack: pages indexed lazily")
# ... and every page still streams, in order
got = src_frames(tiny_pages("pages-2000.tif", 2000), "", 2000, 1, 1, np.uint8)
check(got is not None and np.array_equal(got[:, 0, 0], np.arange(2000) % 256),
      "2000 one-pixel pages, all in order")

# Directories stored back to front (offsets decreasing: the index then keeps a
# set of the offsets seen, for loop detection): every page, in order; and a
# chain that loops back is an error after the pages before the loop.
rev = tiny_pages("reversed.tif", 300, order=list(range(299, -1, -1)))
got = src_frames(rev, "", 300, 1, 1, np.uint8)
check(got is not None and np.array_equal(got[:, 0, 0], np.arange(300) % 256),
      "IFDs stored in reverse order: every page, in order")
looped = tiny_pages("reversed-loop.tif", 300, order=list(range(299, -1, -1)),
                    next_of_last=8 + 299 * 130)     # last page -> page 0
rc, log = gst(f"tiffstacksrc location={looped} ! fakesink")
check(isinstance(rc, int) and rc > 0 and "loop" in log, "IFD loop in reverse order: error")
rc, log = gst(f"tiffstacksrc location={looped} stop-index=299 ! fakesink")
check(rc == 0, "IFD loop after the last requested page: no error")

finish()
