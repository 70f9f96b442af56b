#!/usr/bin/python3
"""tiffstacksink output read by tifffile and libtiff: right page count, pixels,
ImageJ description and resolution; every compression; BigTIFF modes; and the
errors for an unwritable path and a full disk."""
import os
import subprocess

import numpy as np
import tifffile

from tiffstack_util import (check, finish, gst, have_imagej, imagej_read, read_raw,
                            src_frames, workdir)

wd = workdir()
rng = np.random.default_rng(11)
N, H, W = 6, 23, 31


def path(name):
    return os.path.join(wd, name)


def decoded(p):
    """Pixels of every page, decoded by libtiff (tiffcp -c none) so that
    LZW/ZSTD output is checked without imagecodecs."""
    plain = p + ".plain.tif"
    subprocess.run(["tiffcp", "-c", "none", p, plain], check=True)
    with tifffile.TiffFile(plain) as t:
        return np.stack([pg.asarray() for pg in t.pages])


stacks = {
    "gray8": rng.integers(0, 256, (N, H, W), dtype=np.uint8),
    "gray16": rng.integers(0, 65536, (N, H, W), dtype=np.uint16),
    "gray32f": rng.standard_normal((N, H, W)).astype(np.float32),
    "rgb": rng.integers(0, 256, (N, H, W, 3), dtype=np.uint8),
}
for name, data in stacks.items():
    src = path(f"{name}.tif")
    rgb = data.ndim == 4
    tifffile.imwrite(src, data, photometric="rgb" if rgb else "minisblack",
                     imagej=not rgb and data.dtype != np.uint8 or None,
                     resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"spacing": 2.5, "unit": "um", "axes": "ZYX"} if not rgb else {})
    for comp in ("none", "lzw", "deflate", "zstd"):
        out = path(f"{name}-{comp}.tif")
        rc, log = gst(f"tiffstacksrc location={src} ! tiffstacksink location={out} "
                      f"compression={comp}")
        if rc != 0:
            print(log)
            check(False, f"write {name} {comp}")
            continue
        with tifffile.TiffFile(out) as t:
            pages = len(t.pages)
            ij = t.imagej_metadata or {}
            big = t.is_bigtiff
            xres = t.pages[0].tags.get("XResolution")
        check(pages == N, f"{name} {comp}: {pages} pages")
        check(not big, f"{name} {comp}: classic TIFF when the length is known")
        check(ij.get("images") == N and ij.get("slices") == N,
              f"{name} {comp}: ImageJ description {ij}")
        if name != "rgb" and name != "gray8":
            check(ij.get("unit") == "micron" and abs(ij.get("spacing", 0) - 2.5) < 1e-9,
                  f"{name} {comp}: unit and spacing {ij}")
            px = xres.value[1] / xres.value[0] if xres else 0
            # XResolution is a 32-bit rational: 2 px/um is exact.
            check(abs(px - 0.5) < 1e-9, f"{name} {comp}: XResolution {xres and xres.value}")
        got = decoded(out)
        check(np.array_equal(got, data), f"{name} {comp}: pixels (libtiff decode)")
        if comp in ("none", "deflate"):
            check(np.array_equal(tifffile.imread(out), data),
                  f"{name} {comp}: pixels (tifffile decode)")
        back = src_frames(out, "", N, H, W, data.dtype, 3 if rgb else 1, wd=wd)
        check(back is not None and np.array_equal(back, data),
              f"{name} {comp}: read back by tiffstacksrc")

# BigTIFF modes. A looping source has no length (a live recording): auto still
# writes classic TIFF, which plain ImageJ opens (it has no BigTIFF reader).
g16 = path("gray16.tif")
for mode, src, expect in (("auto", f"tiffstacksrc location={g16} loop=true num-buffers=3", False),
                          ("auto", "videotestsrc num-buffers=3", False),
                          ("always", f"tiffstacksrc location={path('gray16.tif')}", True),
                          ("never", "videotestsrc num-buffers=3", False),
                          ("auto", f"tiffstacksrc location={path('gray16.tif')}", False)):
    out = path(f"big-{mode}.tif")
    caps = "" if "tiffstacksrc" in src else " ! video/x-raw,format=GRAY16_LE,width=64,height=48"
    rc, log = gst(f"{src}{caps} ! tiffstacksink location={out} bigtiff={mode}")
    with tifffile.TiffFile(out) as t:
        ok = rc == 0 and t.is_bigtiff == expect and len(t.pages) >= 3
    check(ok, f"bigtiff={mode} from {src.split()[0]} -> {'BigTIFF' if expect else 'classic'}")

# Past the size limit the stack continues in numbered files (as Micro-Manager
# does), each a classic TIFF with its own ImageJ description. max-file-size
# stands in for 4 GiB: 64x48 GRAY16 pages (6 KiB + a directory slot of < 2 KiB)
# give 2 pages per 20000-byte file.
frames = rng.integers(0, 65536, (7, 48, 64), dtype=np.uint16)
seven = path("seven.tif")
tifffile.imwrite(seven, frames, photometric="minisblack")
for loop in ("", " loop=true num-buffers=7"):
    out = path("split.ome.tif" if loop else "split.tif")
    rc, log = gst(f"tiffstacksrc location={seven}{loop} ! tiffstacksink location={out} "
                  f"max-file-size=20000")
    names = [out] + [out.replace(".ome.tif" if loop else ".tif",
                                 f"_{i}" + (".ome.tif" if loop else ".tif")) for i in (1, 2, 3)]
    got, sizes, ok = [], [], rc == 0
    for n in names:
        ok = ok and os.path.exists(n)
        if ok:
            sizes.append(os.path.getsize(n))
            with tifffile.TiffFile(n) as t:
                ok = ok and not t.is_bigtiff and t.imagej_metadata.get("images") == len(t.pages)
                got += [p.asarray() for p in t.pages]
            ok = ok and np.array_equal(tifffile.imread(n).reshape(-1, 48, 64),
                                       np.stack(got[-len(t.pages):]))
    ok = ok and not os.path.exists(names[-1].replace("_3", "_4"))
    check(ok and len(got) == 7 and np.array_equal(np.stack(got), frames)
          and all(s <= 20000 for s in sizes),
          f"max-file-size{loop}: 7 frames in 4 classic files {[os.path.basename(n) for n in names]} "
          f"of {sizes} bytes (rc {rc})")
    if loop == "" and have_imagej():
        ij = imagej_read(names) or {}
        check(all(isinstance(ij.get(n), dict) for n in names)
              and [ij[n]["nslices"] for n in names] == [2, 2, 2, 1],
              f"ImageJ opens every numbered file: {[ij.get(n, {}).get('nslices') for n in names]}")

# Pages of different sizes stay pages of different sizes.
mixed = path("mixed.tif")
a = rng.integers(0, 65536, (2, 10, 12), dtype=np.uint16)
b = rng.integers(0, 65536, (3, 7, 9), dtype=np.uint16)
tifffile.imwrite(mixed, a, photometric="minisblack")
tifffile.imwrite(mixed, b, append=True, photometric="minisblack")
out = path("mixed-out.tif")
rc, log = gst(f"tiffstacksrc location={mixed} ! tiffstacksink location={out}")
with tifffile.TiffFile(out) as t:
    pages = [pg.asarray() for pg in t.pages]
check(rc == 0 and len(pages) == 5 and all(np.array_equal(pages[i], a[i]) for i in range(2))
      and all(np.array_equal(pages[2 + i], b[i]) for i in range(3)),
      "frames of different sizes become pages of different sizes")

# A failed run leaves no empty or header-only file behind, and does not
# destroy a file that was at the location before it failed.
trunc = path("truncated-src.tif")
tifffile.imwrite(trunc, rng.integers(0, 65536, (3, 64, 64), dtype=np.uint16))
with open(trunc, "r+b") as f:
    f.truncate(2000)                   # page 0's pixels are cut: reading fails
for label, src in (("source that fails to start", f"tiffstacksrc location={path('missing.tif')}"),
                   ("source that fails on its first page", f"tiffstacksrc location={trunc}"),
                   ("stream without frames",
                    "videotestsrc num-buffers=0 ! video/x-raw,format=GRAY8")):
    out = path("failed.tif")
    rc, log = gst(f"{src} ! tiffstacksink location={out}")
    check(not os.path.exists(out), f"{label}: no file left (rc {rc})")
    keep = path("kept.tif")
    with open(keep, "wb") as f:
        f.write(b"previous result")
    rc, log = gst(f"{src} ! tiffstacksink location={keep}")
    with open(keep, "rb") as f:
        check(f.read() == b"previous result", f"{label}: an existing file is left as it was")

# Errors, not crashes.
rc, log = gst(f"videotestsrc num-buffers=2 ! video/x-raw,format=GRAY8 ! "
              f"tiffstacksink location=/nonexistent-dir/x.tif")
check(isinstance(rc, int) and rc > 0 and "Could not open file" in log,
      "unwritable path -> OPEN_WRITE error")
if os.path.exists("/dev/full"):
    rc, log = gst("videotestsrc num-buffers=2 ! video/x-raw,format=GRAY8 ! "
                  "tiffstacksink location=/dev/full")
    check(isinstance(rc, int) and rc > 0 and "No space left" in log,
          "full disk (/dev/full) -> NO_SPACE_LEFT error")

finish()
