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
                "slices", "frames", "value offset"):
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
rc, t = tags_of(p, "channel=1")
check(abs(t.get("pixel size x", 0) - 0.25) < 1e-6 and abs(t.get("pixel size z", 0) - 1.5) < 1e-9
      and t.get("channels") == 2 and t.get("slices") == 3 and t.get("frames") == 2,
      f"ImageJ metadata as tags {t}")
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
      and abs(t.get("pixel size z", 0) - 1.2) < 1e-9 and t.get("channels") == 3,
      f"OME metadata as tags {t}")

# Resolution tags in centimetres; signed data announces its offset.
p = path("res-cm.tif")
tifffile.imwrite(p, u16, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER",
                 photometric="minisblack")
rc, t = tags_of(p)
# XResolution is a rational of 32-bit integers: 1e4/0.65 is stored to ~1e-7.
check(abs(t.get("pixel size x", 0) - 0.65) < 1e-5, f"resolution in cm as tags {t}")
rc, t = tags_of(path("i16.tif"))
check(t.get("value offset") == -32768, f"signed data tag {t}")

finish()
