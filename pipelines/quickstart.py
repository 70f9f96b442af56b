#!/usr/bin/python3
"""The two halves of pipelines/quickstart.sh that are easier in Python.

  quickstart.py filter STATS.csv < gst-launch-output
      Reads `gst-launch-1.0 -m` output: progressreport's lines are shown indented,
      the "unetsegment-stats" messages of the element named "seg" go to STATS.csv (one
      row per frame, one column per field), gst-launch's own chatter and the other bus
      messages are dropped, anything else (errors, warnings) is shown unchanged.

  quickstart.py report STATS.csv LABELS.tif TRUTH.tif SECONDS
      Prints per frame the objects unetsegment counted, the objects in the ground
      truth and the Dice of the foreground (tests/bench/isbi_eval.py), then the Dice of
      the whole stack and the time taken. Exits 1 when a frame is missing.
"""

import csv
import os
import re
import signal
import sys

# gst-launch-1.0 -m prints a message's "Got message #N from element ..." prefix and its
# structure in two writes, and progressreport prints from the streaming thread, so a
# prefix can end up glued to another line: match the structure itself, wherever it is
# (only the element named "seg" posts statistics).
STATS = re.compile(r'unetsegment-stats, (.*?);?\s*$')
PROGRESS = re.compile(r'(progress \(.*)$')
FIELD = re.compile(r'([A-Za-z][\w-]*)=\(([\w]+)\)("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|$)')
CHATTER = re.compile(r'^(Got message #|Setting pipeline to|Pipeline is |New clock|'
                     r'Redistribute latency|Got EOS from|Execution ended after|'
                     r'Freeing pipeline|Interrupt: |Use Windows high-resolution)')


def cmd_filter(stats_path):
    # Ctrl-C reaches the whole pipe; keep reading until gst-launch-1.0 has finished
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(stats_path, "w", newline="") as out:
        writer = None
        for line in sys.stdin:
            m = STATS.search(line)
            p = PROGRESS.search(line)
            if m:
                fields = {k: v.strip('"') for k, _t, v in FIELD.findall(m.group(1))}
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(fields))
                    writer.writeheader()
                writer.writerow(fields)
                out.flush()
            elif p:
                print("  " + p.group(1).rstrip(), flush=True)
            elif not CHATTER.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
    return 0


def cmd_report(stats_path, labels_path, truth_path, seconds):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "..", "tests", "bench"))
    import isbi_eval

    with open(stats_path, newline="") as f:
        stats = {int(r["frame-number"]): r for r in csv.DictReader(f)}
    pred = isbi_eval.load_stack(labels_path)
    truth = isbi_eval.load_stack(truth_path)
    if pred.shape != truth.shape or len(stats) != len(truth):
        print(f"quickstart: expected {len(truth)} frames of {truth.shape[2]}x{truth.shape[1]}, "
              f"got {pred.shape[0]} label pages and {len(stats)} statistics messages",
              file=sys.stderr)
        return 1
    res = isbi_eval.evaluate_nuclei(pred, truth)

    print("  frame   nuclei found   in the truth   Dice")
    for r in res["frames"]:
        k = r["frame"]
        print(f"  {k + 1:5d}   {int(stats[k]['object-count']):12d}   "
              f"{r['objects_gt']:12d}   {r['dice']:.3f}")
    per_frame_ms = sum(float(s["processing-time"]) for s in stats.values()) / len(stats) / 1e6
    n, h, w = pred.shape
    print(f"Dice {res['stack']['dice']:.3f} against the ground truth "
          f"(1 = every pixel right; the frames were never trained on)")
    print(f"Time {seconds:.1f} s for {n} frames of {w}x{h}, loading the model included "
          f"({per_frame_ms:.0f} ms per frame in unetsegment)")
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "filter":
        return cmd_filter(argv[2])
    if len(argv) == 6 and argv[1] == "report":
        return cmd_report(argv[2], argv[3], argv[4], float(argv[5]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
