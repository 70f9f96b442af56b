#!/usr/bin/python3
"""Element messages to CSV, and loss plots, for the pipelines/ scripts.

  trainlog.py csv [--message NAME] [--total N] < gst-launch-output > log.csv
      Reads `gst-launch-1.0 -m` output, keeps the element messages called NAME
      (default unettrain-progress; segment-stack.sh uses unetsegment-stats) and writes
      them as CSV (one row per message, one column per field, the header from the
      first message), row by row as they come; prints a short progress line per
      message on stderr. Checkpoint and model-swap messages get a short line; other
      bus messages are dropped unless they are warnings or errors (--verbose keeps all);
      everything else gst-launch prints is passed to stderr unchanged.

  trainlog.py plot loss.csv loss.png [--title TEXT]
      Plots every column whose name contains "loss" (log scale) against the iteration,
      and Dice columns on a second axis, to a PNG (python3-matplotlib).
"""

import argparse
import csv
import re
import signal
import sys

MSG = re.compile(r'^Got message #\d+ from element "[^"]*" \(element\): ([\w-]+), (.*?);?\s*$')
ANY_MSG = re.compile(r'^Got message #\d+ from \w+ "[^"]*" \((\w[\w-]*)\)')
FIELD = re.compile(r'([A-Za-z][\w-]*)=\(([\w]+)\)("(?:[^"\\]|\\.)*"|[^,]*)(?:,\s*|$)')


def parse_fields(text):
    """'a=(int)1, b=(double)0.5, c=(string)"x y"' -> {'a': '1', 'b': '0.5', 'c': 'x y'}"""
    out = {}
    for name, _typ, value in FIELD.findall(text):
        value = value.strip()
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        out[name] = value
    return out


def cmd_csv(args):
    # Ctrl-C in a terminal reaches the whole pipe: gst-launch-1.0 -e turns it into EOS
    # and drains the pipeline; this end must keep reading until it has finished
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    writer = None
    header = None
    rows = 0
    for line in sys.stdin:
        m = MSG.match(line)
        if not m or m.group(1) != args.message:
            if m and m.group(1) in ("unettrain-checkpoint", "unetsegment-model-swapped"):
                f = parse_fields(m.group(2))
                what = f.get("location") or f.get("model") or ""
                it = f" at iteration {f['iteration']}" if "iteration" in f else ""
                print(f"{m.group(1)}{it}: {what}", file=sys.stderr)
            elif args.verbose or not ANY_MSG.match(line) or \
                    ANY_MSG.match(line).group(1) in ("error", "warning"):
                sys.stderr.write(line)
            continue
        fields = parse_fields(m.group(2))
        if writer is None:
            header = list(fields)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(header)
        writer.writerow([fields.get(h, "") for h in header])
        sys.stdout.flush()
        rows += 1
        if args.quiet:
            continue
        total = f"/{args.total}" if args.total else ""
        if "iteration" in fields:
            shown = ", ".join(f"{k} {fields[k]}" for k in fields
                              if k in ("loss", "dice", "learning-rate", "samples-per-second",
                                       "val-dice"))
            print(f"train: iteration {fields['iteration']}{total}: {shown}", file=sys.stderr)
        elif "frame-number" in fields:
            shown = ""
            if "object-count" in fields:
                shown += f": {fields['object-count']} objects"
            if "processing-time" in fields:
                try:
                    shown += f", {int(fields['processing-time']) / 1e6:.1f} ms"
                except ValueError:
                    pass
            print(f"frame {int(fields['frame-number']) + 1}{total}{shown}", file=sys.stderr)
    if rows == 0:
        print(f"trainlog: no {args.message} messages seen", file=sys.stderr)
        return 1
    return 0


def cmd_plot(args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("trainlog: python3-matplotlib is not installed (apt-get install "
              "python3-matplotlib); the CSV is still there", file=sys.stderr)
        return 1
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"trainlog: {args.csv} has no rows", file=sys.stderr)
        return 1
    cols = list(rows[0])
    xcol = "iteration" if "iteration" in cols else cols[0]

    def series(col):
        xs, ys = [], []
        for r in rows:
            try:
                xs.append(float(r[xcol]))
                ys.append(float(r[col]))
            except (TypeError, ValueError):
                continue
        return xs, ys

    loss_cols = [c for c in cols if "loss" in c.lower()]
    dice_cols = [c for c in cols if "dice" in c.lower()]
    if not loss_cols and not dice_cols:
        print(f"trainlog: {args.csv} has no loss or Dice column (columns: {', '.join(cols)})",
              file=sys.stderr)
        return 1
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    lines = []
    for c in loss_cols:
        xs, ys = series(c)
        if ys and min(ys) > 0:
            ax.set_yscale("log")
        lines += ax.plot(xs, ys, color=f"C{len(lines)}", label=c)
    ax.set_xlabel(xcol)
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if dice_cols:
        ax2 = ax.twinx()
        for c in dice_cols:
            xs, ys = series(c)
            lines += ax2.plot(xs, ys, "--", color=f"C{len(lines)}", label=c)
        ax2.set_ylabel("Dice")
        ax2.set_ylim(0, 1)
    ax.legend(lines, [ln.get_label() for ln in lines], loc="center right")
    ax.set_title(args.title or "unettrain")
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"trainlog: wrote {args.png}", file=sys.stderr)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("csv", help="gst-launch -m output on stdin -> CSV on stdout")
    c.add_argument("--message", default="unettrain-progress",
                   help="element message to keep (default unettrain-progress)")
    c.add_argument("--total", type=int, help="total iterations or frames, for the progress lines")
    c.add_argument("--quiet", action="store_true", help="no progress line per message")
    c.add_argument("--verbose", action="store_true", help="pass every other bus message through")
    p = sub.add_parser("plot", help="CSV -> PNG plot")
    p.add_argument("csv")
    p.add_argument("png")
    p.add_argument("--title")
    args = ap.parse_args(argv)
    return cmd_csv(args) if args.cmd == "csv" else cmd_plot(args)


if __name__ == "__main__":
    sys.exit(main())
