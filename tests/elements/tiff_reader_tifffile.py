#!/usr/bin/python3
"""Writes TIFF stacks with tifffile for test-tiff-reader (its /tiff-reader/tifffile
case): an ImageJ hyperstack (TZCYX, uint16), a big-endian BigTIFF OME-TIFF (CZYX,
float32, so DimensionOrder XYZCT), and a big-endian int16 stack with no axes
metadata; for every plane, tifffile's own reading of it as the bytes the reader
must give (little-endian; int16 shifted by +32768 as tiff-reader.h says).

    /usr/bin/python3 tiff_reader_tifffile.py OUT_DIR

OUT_DIR/manifest.txt: one line per file: name C Z T bytes-per-pixel; the planes
are OUT_DIR/<name>-c<c>-z<z>-t<t>.raw.
"""
import os
import sys

import numpy as np
import tifffile

out = sys.argv[1]
rng = np.random.default_rng(15)
H, W = 17, 19
manifest = []


def planes(name, read, C, Z, T, dtype):
    """read: tifffile's array with axes (T, Z, C, Y, X)."""
    assert read.shape == (T, Z, C, H, W), read.shape
    for t in range(T):
        for z in range(Z):
            for c in range(C):
                with open(os.path.join(out, f"{name}-c{c}-z{z}-t{t}.raw"), "wb") as f:
                    f.write(np.ascontiguousarray(read[t, z, c]).astype(dtype).tobytes())
    manifest.append(f"{name} {C} {Z} {T} {np.dtype(dtype).itemsize}")


# ImageJ hyperstack: 2 time points, 3 slices, 2 channels (pages run C, Z, T)
a = rng.integers(0, 65536, (2, 3, 2, H, W), dtype=np.uint16)
p = os.path.join(out, "imagej.tif")
tifffile.imwrite(p, a, imagej=True, metadata={"axes": "TZCYX"})
with tifffile.TiffFile(p) as tf:
    assert tf.series[0].axes == "TZCYX", tf.series[0].axes
    planes("imagej.tif", tf.series[0].asarray(), 2, 3, 2, "<u2")

# OME-TIFF, BigTIFF, big-endian float32: 3 channels of 2 slices (XYZCT)
b = rng.standard_normal((3, 2, H, W)).astype(np.float32)
p = os.path.join(out, "ome.tif")
tifffile.imwrite(p, b, ome=True, bigtiff=True, byteorder=">",
                 metadata={"axes": "CZYX"})
with tifffile.TiffFile(p) as tf:
    read = tf.series[0].asarray()
    axes = tf.series[0].axes
    assert axes == "CZYX", axes
    planes("ome.tif", read.transpose(1, 0, 2, 3)[None], 3, 2, 1, "<f4")

# Plain big-endian int16 pages (no axes): page k is slice k
s = rng.integers(-32768, 32768, (4, H, W), dtype=np.int16)
p = os.path.join(out, "signed.tif")
tifffile.imwrite(p, s, byteorder=">", photometric="minisblack", metadata=None)
read = tifffile.imread(p)
planes("signed.tif", (read.astype(np.int32) + 32768)[None, :, None], 1, 4, 1, "<u2")

with open(os.path.join(out, "manifest.txt"), "w") as f:
    f.write("\n".join(manifest) + "\n")
