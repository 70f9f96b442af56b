#!/usr/bin/python3
"""tiffstacksink output as the readers users have read it: tifffile.imread (the
whole stack at once, as napari, Cellpose and scikit-image do), tifffile page by
page, libtiff's tiffinfo, and ImageJ 1.53t itself (under xvfb-run). For 1 to 5
pages, every sample format, classic TIFF and BigTIFF, uncompressed and
compressed, tiny pages (smaller than a TIFF directory) and larger ones.

Regression: with each page's directory written after its pixels, tifffile took
the ImageJ description's `images=` for ImageJ's contiguous layout and returned
directory bytes as pixels for every 2-page stack (and for 3+ pages when a page
is smaller than a directory)."""
import os

import numpy as np
import tifffile

from tiffstack_util import (check, finish, gst, have_imagej, imagej_read,
                            tiffinfo_pages, workdir)

wd = workdir()
rng = np.random.default_rng(2026)

# name: (numpy dtype, samples per pixel, tiffinfo sample format, ImageJ bit depth)
FORMATS = {
    "gray8": (np.uint8, 1, "unsigned integer", 8),
    "gray16": (np.uint16, 1, "unsigned integer", 16),
    "gray32": (np.uint32, 1, "unsigned integer", 32),
    "gray32f": (np.float32, 1, "IEEE floating point", 32),
    "rgb": (np.uint8, 3, "unsigned integer", 24),
}
SIZES = ((3, 5), (17, 33))      # (height, width): 15 px is smaller than a directory


def make(dtype, spp, n, h, w):
    shape = (n, h, w) + ((spp,) if spp > 1 else ())
    if dtype == np.float32:
        return rng.standard_normal(shape).astype(np.float32)
    # ImageJ holds 32-bit integer pages as float: ids below 2^24 stay exact.
    top = 1 << 24 if dtype == np.uint32 else int(np.iinfo(dtype).max) + 1
    return rng.integers(0, top, shape, dtype=dtype)


def ij_value(data, page, y, x):
    """The value ImageJ's getPixel() gives: RGB packed as 0xRRGGBB."""
    v = data[page, y, x]
    if data.ndim == 4:
        return float((int(v[0]) << 16) | (int(v[1]) << 8) | int(v[2]))
    return float(v)


cases = []
for name, (dtype, spp, fmt, bits) in FORMATS.items():
    for n in range(1, 6):
        for h, w in SIZES:
            data = make(dtype, spp, n, h, w)
            src = os.path.join(wd, f"src-{name}-{n}-{h}x{w}.tif")
            tifffile.imwrite(src, data, photometric="rgb" if spp > 1 else "minisblack")
            for big in ("never", "always"):
                for comp in ("none", "deflate") if (n, h) == (2, 17) else ("none",):
                    out = os.path.join(wd, f"{name}-{n}-{h}x{w}-{big}-{comp}.tif")
                    rc, log = gst(f"tiffstacksrc location={src} ! tiffstacksink "
                                  f"location={out} bigtiff={big} compression={comp}")
                    what = f"{name} {n} page(s) {h}x{w} bigtiff={big} {comp}"
                    if rc != 0:
                        print(log)
                        check(False, f"{what}: written")
                        continue
                    cases.append((what, out, data, fmt, bits, big == "always"))

for what, out, data, fmt, bits, big in cases:
    n = data.shape[0]
    # tifffile, whole file at once: the ImageJ series must be the stack.
    with tifffile.TiffFile(out) as t:
        check(t.is_bigtiff == big and t.is_imagej, f"{what}: tifffile sees "
              f"{'BigTIFF' if t.is_bigtiff else 'classic'}, ImageJ={t.is_imagej}")
        pages = [p.asarray() for p in t.pages]
    got = tifffile.imread(out)
    check(got.size == data.size and np.array_equal(got.reshape(data.shape), data),
          f"{what}: tifffile.imread {got.shape} equals the frames")
    check(len(pages) == n and all(np.array_equal(pages[i], data[i]) for i in range(n)),
          f"{what}: tifffile page by page")
    info = tiffinfo_pages(out)
    check(info is not None and len(info) == n and all(
        p.get("width") == data.shape[2] and p.get("length") == data.shape[1]
        and p.get("bits") == (8 if bits == 24 else bits) and p.get("format") == fmt
        for p in info), f"{what}: tiffinfo lists {n} directories ({info and info[:1]})")

if have_imagej():
    ij = imagej_read([c[1] for c in cases])
    check(ij is not None, "ImageJ read every file within its time limit")
    for what, out, data, fmt, bits, big in cases if ij is not None else ():
        r = ij.get(out)
        if big:
            # Plain ImageJ 1.53t has no BigTIFF reader (Fiji reads it through
            # Bio-Formats): bigtiff=never / auto with a known length exist for it.
            check(r == "bigtiff", f"{what}: ImageJ recognises BigTIFF ({r})")
            continue
        n, h, w = data.shape[:3]
        ok = isinstance(r, dict) and r["nslices"] == n and r["bitdepth"] == bits
        # getPixel of 32-bit data printed with 6 decimals: 1e-6 is its rounding.
        ok = ok and all(abs(r["pixels"][k][0] - ij_value(data, k, 0, 0)) <= 1e-6 and
                        abs(r["pixels"][k][1] - ij_value(data, k, h - 1, w - 1)) <= 1e-6
                        for k in range(n))
        check(ok, f"{what}: ImageJ nSlices/bitDepth/pixels "
              f"({r if not isinstance(r, dict) else {k: r[k] for k in ('nslices', 'bitdepth')}})")
else:
    print("skip: ImageJ checks (imagej and xvfb-run not installed; scripts/bootstrap.sh installs them)")

finish()
