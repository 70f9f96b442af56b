#!/usr/bin/python3
"""Helpers of pipelines/segment-cluster.sh (GStreamer through PyGObject, Debian's python3-gi).

  shards.py count STACK.tif...
      Prints, one line per STACK, the number of frames tiffstacksrc streams from it (its
      DURATION in frames, the count its start-index/stop-index refer to).

  shards.py assemble --out OUT.tif --frames N [--compression C] SHARD.tif...
      Streams the shards in the order given through concat into one tiffstacksink and
      checks that OUT holds exactly N pages. The sink is told the total length N (concat
      only reports the current shard's), so it makes the choices a single run over the whole
      stack makes (classic TIFF or BigTIFF, the ImageJ image count). Exits non-zero, after
      removing OUT, on any error.

  shards.py merge-stats --out STATS.csv [--expect N] STACK START SHARD CSV [STACK START SHARD CSV...]
      Joins per-shard statistics CSVs (pipelines/trainlog.py csv of unetsegment-stats) into
      one CSV for the run: columns stack, frame-number (page of the stack), shard, then the
      shard's columns except its shard-relative frame-number and pts. Each shard's CSV must
      have one row per page of the shard (checked by the caller's page count, --expect: the
      total number of rows).
"""

import argparse
import csv
import os
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402


def die(msg):
    print(f"shards.py: {msg}", file=sys.stderr)
    sys.exit(1)


def run_to_state(pipeline, target, until_eos=False):
    """Sets the state and waits for ASYNC_DONE (or EOS); returns None or an error text."""
    bus = pipeline.get_bus()
    ret = pipeline.set_state(target)
    if ret == Gst.StateChangeReturn.FAILURE and not until_eos:
        msg = bus.timed_pop_filtered(0, Gst.MessageType.ERROR)
        return msg.parse_error()[0].message if msg else "state change failed"
    want = Gst.MessageType.ERROR | (Gst.MessageType.EOS if until_eos else Gst.MessageType.ASYNC_DONE)
    while True:
        msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, want)
        if msg is None:
            return "no message from the pipeline"
        if msg.type == Gst.MessageType.ERROR:
            err, dbg = msg.parse_error()
            return f"{err.message} ({dbg})" if dbg else err.message
        if msg.type == Gst.MessageType.EOS:
            return None
        if msg.type == Gst.MessageType.ASYNC_DONE and msg.src == pipeline:
            return None


def count_frames(path):
    src = Gst.ElementFactory.make("tiffstacksrc", None)
    if src is None:
        die("GStreamer element tiffstacksrc not found (GST_PLUGIN_PATH_1_0 must hold the build's plugins)")
    sink = Gst.ElementFactory.make("fakesink", None)
    src.set_property("location", path)
    p = Gst.Pipeline.new(None)
    p.add(src)
    p.add(sink)
    src.link(sink)
    err = run_to_state(p, Gst.State.PAUSED)
    n = -1
    if err is None:
        ok, n = src.query_duration(Gst.Format.DEFAULT)
        if not ok:
            err = "tiffstacksrc did not report its length"
    p.set_state(Gst.State.NULL)
    if err is not None:
        die(f"{path}: {err}")
    return n


def cmd_count(args):
    for path in args.stacks:
        print(count_frames(path), flush=True)


def cmd_assemble(args):
    p = Gst.Pipeline.new(None)
    concat = Gst.ElementFactory.make("concat", None)
    sink = Gst.ElementFactory.make("tiffstacksink", None)
    if concat is None or sink is None:
        die("GStreamer elements concat (gstreamer1.0 core) or tiffstacksink not found")
    sink.set_property("location", args.out)
    if args.compression:
        Gst.util_set_object_arg(sink, "compression", args.compression)
    p.add(concat)
    p.add(sink)
    concat.link(sink)
    for shard in args.shards:
        src = Gst.ElementFactory.make("tiffstacksrc", None)
        src.set_property("location", shard)
        p.add(src)
        if not src.link(concat):
            die(f"cannot link {shard} into concat")

    total = args.frames

    def answer_duration(pad, info):
        q = info.get_query()
        if q.type == Gst.QueryType.DURATION and q.parse_duration()[0] == Gst.Format.DEFAULT:
            q.set_duration(Gst.Format.DEFAULT, total)
            return Gst.PadProbeReturn.HANDLED
        return Gst.PadProbeReturn.OK

    # concat answers DURATION with the active shard's length; the sink decides classic
    # TIFF or BigTIFF from it, and must see the whole stack's as a single run does
    sink.get_static_pad("sink").add_probe(Gst.PadProbeType.QUERY_UPSTREAM, answer_duration)
    err = run_to_state(p, Gst.State.PLAYING, until_eos=True)
    p.set_state(Gst.State.NULL)
    if err is None:
        got = count_frames(args.out)
        if got != total:
            err = f"{args.out} has {got} pages, expected {total}"
    if err is not None:
        try:
            os.unlink(args.out)
        except FileNotFoundError:
            pass
        die(f"assembling {args.out}: {err}")


def cmd_merge_stats(args):
    items = args.items
    if len(items) % 4:
        die("merge-stats wants STACK START SHARD CSV groups")
    tmp = args.out + ".part"
    rows = 0
    header = None
    with open(tmp, "w", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        for i in range(0, len(items), 4):
            stack, start, shard, path = items[i], int(items[i + 1]), items[i + 2], items[i + 3]
            with open(path, newline="") as f:
                r = csv.reader(f)
                try:
                    cols = next(r)
                except StopIteration:
                    die(f"{path}: empty statistics file")
                if "frame-number" not in cols:
                    die(f"{path}: no frame-number column")
                keep = [c for c in cols if c not in ("frame-number", "pts")]
                if header is None:
                    header = keep
                    w.writerow(["stack", "frame-number", "shard"] + header)
                elif keep != header:
                    die(f"{path}: columns differ from the first shard's")
                fn = cols.index("frame-number")
                idx = [cols.index(c) for c in header]
                for row in r:
                    if len(row) != len(cols):
                        die(f"{path}: malformed row {row}")
                    w.writerow([stack, start + int(row[fn]), shard] + [row[j] for j in idx])
                    rows += 1
    if args.expect is not None and rows != args.expect:
        os.unlink(tmp)
        die(f"statistics have {rows} rows, expected {args.expect} (one per page)")
    os.replace(tmp, args.out)


def main():
    Gst.init(None)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("count")
    c.add_argument("stacks", nargs="+")
    c.set_defaults(func=cmd_count)
    a = sub.add_parser("assemble")
    a.add_argument("--out", required=True)
    a.add_argument("--frames", type=int, required=True)
    a.add_argument("--compression", default="")
    a.add_argument("shards", nargs="+")
    a.set_defaults(func=cmd_assemble)
    m = sub.add_parser("merge-stats")
    m.add_argument("--out", required=True)
    m.add_argument("--expect", type=int)
    m.add_argument("items", nargs="+")
    m.set_defaults(func=cmd_merge_stats)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
