#!/usr/bin/python3
"""T, Z, C and the frame interval travel from tiffstacksrc (and from live or
video sources: time) through unetsegment to tiffstacksink, and the written
stack opens with the right axes in tifffile and ImageJ 1.53t.

Regressions: an OME-TIFF T=2, Z=3, C=2 read with channel=1 came back as
`slices=6` without `frames=`; camera and video streams were written as z
slices; ImageJ `finterval` was lost on the way."""
import os
import sys

import numpy as np
import tifffile

from tiffstack_util import check, finish, gst, have_imagej, imagej_read, workdir

ROOT = os.environ.get("UNET_SOURCE_ROOT", os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))

wd = workdir()
rng = np.random.default_rng(5)
H, W = 24, 20


def path(name):
    return os.path.join(wd, name)


cases = []   # (what, file, expected ImageJ dims (c, z, t), finterval or None)


def written(what, out, shape, axes, data, ij, finterval=None):
    """tifffile: ImageJ metadata, series shape and axes, the pixels."""
    if not os.path.exists(out):
        check(False, f"{what}: {out} written")
        return
    with tifffile.TiffFile(out) as t:
        md = t.imagej_metadata or {}
        s = t.series[0]
        got = s.asarray()
        check(s.shape == shape and s.axes == axes,
              f"{what}: tifffile series {s.shape} {s.axes} (want {shape} {axes}); {md}")
        c, z, tt = ij
        check(md.get("channels", 1) == c and md.get("slices", 1) == z
              and md.get("frames", 1) == tt and md.get("images") == c * z * tt,
              f"{what}: ImageJ description channels/slices/frames {c}/{z}/{tt}")
        if finterval is not None:
            check(abs(md.get("finterval", 0) - finterval) < 1e-9,
                  f"{what}: finterval {md.get('finterval')} (want {finterval})")
    if data is not None:
        check(np.array_equal(got, data.reshape(got.shape)) and got.size == data.size,
              f"{what}: pixels in {axes} order")
    cases.append((what, out, ij, finterval))


# 1. OME-TIFF T=2, Z=3, C=2 (XYZCT) with a time increment, one channel.
ome = rng.integers(0, 65536, (2, 2, 3, H, W), dtype=np.uint16)       # T C Z
src = path("tcz.ome.tif")
tifffile.imwrite(src, ome, metadata={"axes": "TCZYX", "TimeIncrement": 2.5,
                                     "TimeIncrementUnit": "s", "PhysicalSizeX": 0.5,
                                     "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0})
out = path("ome-channel1.tif")
rc, log = gst(f"tiffstacksrc location={src} channel=1 ! tiffstacksink location={out}")
written("OME T2 Z3 C2, channel=1", out, (2, 3, H, W), "TZYX", ome[:, 1], (1, 3, 2), 2.5)

# 2. ImageJ hyperstack T=2, Z=3, C=2, finterval 0.5 s, every page.
hs = rng.integers(0, 65536, (2, 3, 2, H, W), dtype=np.uint16)        # T Z C
src = path("hyper.tif")
tifffile.imwrite(src, hs, imagej=True, metadata={"axes": "TZCYX", "finterval": 0.5})
out = path("hyper-all.tif")
rc, log = gst(f"tiffstacksrc location={src} ! tiffstacksink location={out}")
written("ImageJ T2 Z3 C2, every page", out, (2, 3, 2, H, W), "TZCYX", hs, (2, 3, 2), 0.5)
out = path("hyper-c0.tif")
rc, log = gst(f"tiffstacksrc location={src} channel=0 ! tiffstacksink location={out}")
written("ImageJ T2 Z3 C2, channel=0", out, (2, 3, H, W), "TZYX", hs[:, :, 0], (1, 3, 2), 0.5)
# A page range of whole time points keeps the z size; the time points follow.
out = path("hyper-range.tif")
rc, log = gst(f"tiffstacksrc location={src} channel=0 start-index=3 stop-index=5 ! "
              f"tiffstacksink location={out}")
written("ImageJ T2 Z3 C2, channel=0, second time point", out, (3, H, W), "ZYX",
        hs[1, :, 0], (1, 3, 1))

# 3. Through unetsegment (tags pass the element): labels keep T and Z.
try:
    import unet_ref
    cfg = unet_ref.make_config(classes=2, depth=1, base_filters=2)
    mpath = path("m.safetensors")
    unet_ref.save_model(unet_ref.random_model(cfg, 3), mpath)
    out = path("labels.tif")
    rc, log = gst(f"tiffstacksrc location={path('tcz.ome.tif')} channel=0 ! unetsegment "
                  f"threads=1 model={mpath} ! tiffstacksink location={out}", timeout=120)
    written("unetsegment labels of OME channel=0", out, (2, 3, H, W), "TZYX", None,
            (1, 3, 2), 2.5)
except ImportError as e:
    check(False, f"PyTorch reference importable: {e}")

# 4. A video / camera stream is a time-lapse: frames, interval 1/framerate.
out = path("video.tif")
rc, log = gst(f"videotestsrc num-buffers=5 ! video/x-raw,format=GRAY8,width={W},height={H},"
              f"framerate=4/1 ! tiffstacksink location={out}")
written("videotestsrc 4 fps, 5 frames", out, (5, H, W), "TYX", None, (1, 1, 5), 0.25)
out = path("live.tif")
rc, log = gst(f"videotestsrc is-live=true num-buffers=3 ! video/x-raw,format=GRAY16_LE,"
              f"width={W},height={H},framerate=20/1 ! tiffstacksink location={out}")
written("live videotestsrc 20 fps", out, (3, H, W), "TYX", None, (1, 1, 3), 0.05)

# 5. A plain multi-page TIFF (no axes) stays a z-stack, as ImageJ shows it.
plain = rng.integers(0, 256, (4, H, W), dtype=np.uint8)
src = path("plain.tif")
tifffile.imwrite(src, plain, photometric="minisblack", metadata=None)
out = path("plain-out.tif")
rc, log = gst(f"tiffstacksrc location={src} ! tiffstacksink location={out}")
written("plain 4-page TIFF", out, (4, H, W), "ZYX", plain, (1, 4, 1))

if have_imagej():
    ij = imagej_read([c[1] for c in cases])
    check(ij is not None, "ImageJ read every file within its time limit")
    for what, out, (c, z, t), finterval in cases if ij else ():
        r = ij.get(out)
        ok = isinstance(r, dict) and (r["channels"], r["slices"], r["frames"]) == (c, z, t) \
            and r["nslices"] == c * z * t
        if finterval is not None and isinstance(r, dict):
            ok = ok and abs(r["finterval"] - finterval) < 1e-6
        check(ok, f"{what}: ImageJ C/Z/T = {c}/{z}/{t}, finterval {finterval} "
              f"({r if not isinstance(r, dict) else (r['channels'], r['slices'], r['frames'], r['finterval'])})")
else:
    print("skip: ImageJ checks (imagej and xvfb-run not installed)")

finish()
