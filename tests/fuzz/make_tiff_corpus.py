"""Writes seed TIFF files for the tiffstacksrc fuzz target: one small file per
layout the reader handles — classic and BigTIFF, both byte orders, strips and
tiles (partial edge tiles), 8/16-bit unsigned and signed, 32/64-bit float, RGB
contiguous and planar, deflate/LZW/PackBits with and without predictor, pages
of different sizes, ImageJ hyperstack and OME-XML descriptions, resolution tags.

    /usr/bin/python3 tests/fuzz/make_tiff_corpus.py OUT_DIR

Deterministic. The fuzz-tiff-regress test runs it into a temporary directory
(`fuzz-tiff-regress --generate /usr/bin/python3 make_tiff_corpus.py`) and runs
the entry point over the seeds and their mutations; libFuzzer takes the same
directory as its seed corpus.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import tifffile


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(14)
    H, W = 9, 7                 # odd: rows padded, tiles partial
    u8 = rng.integers(0, 256, (2, H, W), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (2, H, W), dtype=np.uint16)

    def write(name, data, **kw):
        kw.setdefault("photometric", "minisblack" if data.ndim == 3 else "rgb")
        tifffile.imwrite(os.path.join(out, name + ".tif"), data, **kw)

    write("u8", u8)
    write("u16-be", u16, byteorder=">")
    write("u16-bigtiff", u16, bigtiff=True)
    write("i16", u16.astype(np.int16))
    write("i8", u8.astype(np.int8))
    write("f32", rng.standard_normal((2, H, W)).astype(np.float32))
    write("f64-be", rng.standard_normal((1, H, W)), byteorder=">")
    write("tiled", rng.integers(0, 65536, (2, 40, 36), dtype=np.uint16), tile=(16, 16))
    write("strips", u16, rowsperstrip=2)
    write("deflate-pred", u16, compression="zlib", predictor=True, rowsperstrip=4)
    write("rgb", rng.integers(0, 256, (2, H, W, 3), dtype=np.uint8), photometric="rgb")
    write("rgb-planar", rng.integers(0, 256, (1, 3, H, W), dtype=np.uint8),
          photometric="rgb", planarconfig="separate")
    write("resolution", u8, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    # ImageJ hyperstack T=2 Z=1 C=2, and OME-XML
    tifffile.imwrite(os.path.join(out, "imagej.tif"),
                     rng.integers(0, 65536, (2, 1, 2, H, W), dtype=np.uint16),
                     imagej=True, metadata={"axes": "TZCYX", "spacing": 2.5, "unit": "um"})
    tifffile.imwrite(os.path.join(out, "ome.tif"),
                     rng.integers(0, 256, (2, 2, H, W), dtype=np.uint8),
                     ome=True, metadata={"axes": "CZYX", "PhysicalSizeX": 0.5})
    # pages of different sizes (renegotiation)
    with tifffile.TiffWriter(os.path.join(out, "sizes.tif")) as w:
        w.write(u8[0], photometric="minisblack", contiguous=False)
        w.write(np.zeros((3, 5), np.uint16), photometric="minisblack", contiguous=False)
        w.write(np.zeros((4, 4), np.float32), photometric="minisblack", contiguous=False)
    # compressions tifffile needs imagecodecs for: through libtiff's tiffcp
    src = os.path.join(out, "u16.tmp")
    tifffile.imwrite(src, u16, photometric="minisblack")
    if shutil.which("tiffcp"):
        for name, args in (("lzw-pred", ["-c", "lzw:2"]), ("packbits", ["-c", "packbits"]),
                           ("tiled-lzw", ["-c", "lzw", "-t", "-w", "16", "-l", "16"])):
            subprocess.run(["tiffcp", *args, src, os.path.join(out, name + ".tif")],
                           check=True)
    os.unlink(src)


if __name__ == "__main__":
    main()
