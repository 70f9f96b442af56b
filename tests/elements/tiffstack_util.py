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
