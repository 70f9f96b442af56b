"""Helpers shared by the tiffstack Python tests (run with /usr/bin/python3 under
meson's test_env: private registry, plugin path on the build tree)."""
import os
import subprocess
import sys
import tempfile

import numpy as np

GST_LAUNCH = "gst-launch-1.0"
# A pipeline on a small stack takes well under a second; 30 s means a hang.
TIMEOUT = 30

failures = []
_REGISTRY = os.path.join(tempfile.mkdtemp(prefix="tiffstack-registry-"), "registry.bin")


def check(cond, what):
    if cond:
        print("ok  ", what)
    else:
        print("FAIL", what)
        failures.append(what)


_dirs = []


def finish():
    import shutil
    for d in _dirs + [os.path.dirname(_REGISTRY)]:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  ", f)
        sys.exit(1)
    print("all checks passed")
    sys.exit(0)


def workdir():
    d = tempfile.mkdtemp(prefix="tiffstack-test-")
    _dirs.append(d)
    return d


def gst_env():
    """Environment for gst-launch-1.0. In the sanitizer build the runtimes
    must be preloaded into the uninstrumented program that loads our plugin."""
    env = os.environ.copy()
    # A registry of our own: a shared one may hold our plugin as unloadable
    # after a scan by a program without the sanitizer runtimes.
    env["GST_REGISTRY_1_0"] = _REGISTRY
    pre = env.get("UNET_SANITIZER_PRELOAD")
    if pre:
        env["LD_PRELOAD"] = pre + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    return env


def gst(pipeline, timeout=TIMEOUT, tags=False):
    """Runs gst-launch-1.0; returns (returncode, combined output).
    returncode < 0 means killed by a signal (a crash)."""
    args = [GST_LAUNCH, "-q"] + (["-t"] if tags else []) + pipeline.split()
    if tags:
        args.remove("-q")
    try:
        p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=gst_env())
    except subprocess.TimeoutExpired as e:
        return "timeout", (e.output or b"").decode(errors="replace")
    return p.returncode, p.stdout.decode(errors="replace")


def read_raw(path, frames, height, width, dtype, channels=1):
    """Frames written by filesink: rows padded to 4 bytes (GStreamer default
    stride), frames back to back."""
    dtype = np.dtype(dtype)
    row = width * channels * dtype.itemsize
    stride = (row + 3) // 4 * 4
    data = np.fromfile(path, dtype=np.uint8)
    need = frames * stride * height
    if data.size != need:
        raise ValueError(f"{path}: {data.size} bytes, expected {need}")
    data = data.reshape(frames, height, stride)[:, :, :row].copy()
    out = data.view(dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype)
    shape = (frames, height, width) + ((channels,) if channels > 1 else ())
    return out.reshape(shape)


def src_frames(path, props, frames, height, width, dtype, channels=1, wd=None):
    """Streams `path` through tiffstacksrc into a raw file and parses it."""
    out = os.path.join(wd or os.path.dirname(path), "frames.raw")
    if os.path.exists(out):
        os.unlink(out)
    rc, log = gst(f"tiffstacksrc location={path} {props} ! filesink location={out}")
    if rc != 0:
        print(log)
        return None
    try:
        return read_raw(out, frames, height, width, dtype, channels)
    except ValueError as e:
        print(e)
        return None


def have(tool):
    from shutil import which
    return which(tool) is not None


# ---- ImageJ itself (Debian `imagej` 1.53t) under xvfb-run ----------------------

# One JVM reads a list of files (a JVM start costs ~0.5 s; one per file would not
# keep the tests short). Per file it prints the stack size, hyperstack dimensions,
# bit depth, calibration, frame interval and two pixels of every slice. ImageJ
# 1.53t cannot open BigTIFF (plain ImageJ stops at a modal "unsupported format"
# dialog): those files are reported as "bigtiff" without being opened.
_IJ_MACRO = r"""
setBatchMode(true);
lines = split(File.openAsString(getArgument()), "\n");
for (i = 0; i < lines.length; i++) {
  if (lines[i] == "") continue;
  magic = File.openAsRawString(lines[i], 4);
  if (charCodeAt(magic, 2) == 43) { print("IJ|" + lines[i] + "|bigtiff"); continue; }
  open(lines[i]);
  getDimensions(w, h, c, z, t);
  getVoxelSize(pw, ph, pd, u);
  s = "IJ|" + lines[i] + "|" + nSlices + "|" + c + "|" + z + "|" + t + "|" + bitDepth();
  s = s + "|" + d2s(pw, 9) + "|" + d2s(ph, 9) + "|" + d2s(pd, 9) + "|" + u;
  s = s + "|" + d2s(Stack.getFrameInterval(), 9) + "|";
  for (k = 1; k <= nSlices; k++) {
    setSlice(k);
    a = getPixel(0, 0); b = getPixel(w - 1, h - 1);
    if (bitDepth() == 24) { a = a & 0xffffff; b = b & 0xffffff; }
    s = s + d2s(a, 6) + "," + d2s(b, 6) + ";";
  }
  print(s);
  close();
}
print("IJ-DONE");
"""

IJ_JAR = "/usr/share/java/ij.jar"


def have_imagej():
    return have("xvfb-run") and have("java") and os.path.exists(IJ_JAR)


def imagej_read(paths, timeout=120):
    """What ImageJ sees in each of `paths`: {path: dict} with keys nslices,
    channels, slices, frames, bitdepth, pw, ph, pd, unit, finterval and
    pixels (list of (first, last) pixel per slice, ImageJ's values: RGB as
    packed 0xRRGGBB), or "bigtiff". Returns None (after printing why) when
    ImageJ did not finish within `timeout` seconds."""
    d = tempfile.mkdtemp(prefix="tiffstack-ij-")
    _dirs.append(d)
    macro = os.path.join(d, "read.ijm")
    lst = os.path.join(d, "files.txt")
    with open(macro, "w") as f:
        f.write(_IJ_MACRO)
    with open(lst, "w") as f:
        f.write("\n".join(paths) + "\n")
    env = os.environ.copy()
    env.pop("LD_PRELOAD", None)
    env["HOME"] = d       # ImageJ writes its preferences under ~/.imagej
    try:
        p = subprocess.run(["xvfb-run", "-a", "java", "-Xmx512m", "-jar", IJ_JAR,
                            "-batch", macro, lst],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, env=env, start_new_session=True)
        out = p.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        print("ImageJ timed out:", (e.output or b"").decode(errors="replace")[-2000:])
        return None
    if "IJ-DONE" not in out:
        print("ImageJ did not finish:", out[-2000:])
        return None
    res = {}
    for line in out.splitlines():
        if not line.startswith("IJ|"):
            continue
        f = line.split("|")
        if f[2] == "bigtiff":
            res[f[1]] = "bigtiff"
            continue
        pix = [tuple(float(v) for v in s.split(",")) for s in f[12].split(";") if s]
        res[f[1]] = dict(nslices=int(f[2]), channels=int(f[3]), slices=int(f[4]),
                         frames=int(f[5]), bitdepth=int(f[6]), pw=float(f[7]),
                         ph=float(f[8]), pd=float(f[9]), unit=f[10],
                         finterval=float(f[11]), pixels=pix)
    return res


def tiffinfo_pages(path):
    """Directories libtiff's tiffinfo lists, each as a dict of the fields we
    check (width, length, bits, sample format); None when tiffinfo fails."""
    p = subprocess.run(["tiffinfo", path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        print(p.stdout.decode(errors="replace")[-2000:])
        return None
    pages = []
    for line in p.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("TIFF Directory at offset"):
            pages.append({})
        elif line.startswith("Image Width:") and pages:
            f = line.split()
            pages[-1]["width"], pages[-1]["length"] = int(f[2]), int(f[5])
        elif line.startswith("Bits/Sample:") and pages:
            pages[-1]["bits"] = int(line.split()[1])
        elif line.startswith("Sample Format:") and pages:
            pages[-1]["format"] = line.split(":", 1)[1].strip()
        elif line.startswith("Samples/Pixel:") and pages:
            pages[-1]["spp"] = int(line.split()[1])
    return pages
