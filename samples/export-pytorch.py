#!/usr/bin/python3
"""Export U-Net weights trained in PyTorch to a gst-unet model file (.safetensors).

  samples/export-pytorch.py STATE_DICT.pt OUT.safetensors --depth 4 --base-filters 64 \
      [--in-channels 1] [--classes 2] [--padding valid|same] [--batch-norm] \
      [--rename OLD=NEW ...] [--normalization JSON] [--class-names a,b,...]

STATE_DICT.pt is what `torch.save(model.state_dict(), path)` wrote (a whole pickled
module or a checkpoint dict with a "state_dict"/"model" entry also works). Its tensor
names must follow the contract in README.md ("Models") — `enc.{i}.conv1.weight` …
`head.bias` — or be mapped to it with --rename prefixes (e.g. `--rename down=enc
--rename up=dec`, applied to every name that starts with OLD). The weights are
checked strictly against the architecture you give: every contract tensor present,
every shape right, nothing unknown (PyTorch's `num_batches_tracked` is dropped).
--normalization is the `unet.normalization` JSON that reproduces how raw pixels
became network input in your training (see engine/unet.h), e.g.
'{"mode":"range","min":0,"max":65535}'; default: percentile 1..99.8 per frame.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "tests", "reference"))
import unet_ref  # noqa: E402  (the PyTorch module with the contract's tensor names)


def load_state_dict(path):
    obj = torch.load(path, map_location="cpu")
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        return obj
    raise SystemExit(f"{path}: neither a state_dict nor a module")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("state_dict")
    ap.add_argument("output")
    ap.add_argument("--depth", type=int, required=True)
    ap.add_argument("--base-filters", type=int, required=True)
    ap.add_argument("--in-channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--padding", choices=["valid", "same"], default="valid")
    ap.add_argument("--batch-norm", action="store_true")
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW")
    ap.add_argument("--normalization",
                    default='{"mode":"percentile","low":1.0,"high":99.8}')
    ap.add_argument("--class-names", default=None)
    args = ap.parse_args(argv)

    cfg = unet_ref.make_config(args.in_channels, args.classes, args.depth,
                               args.base_filters, args.padding, args.batch_norm, 0.0)
    model = unet_ref.UNetRef(cfg)
    want = {k: v.shape for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}

    renames = []
    for r in args.rename:
        old, sep, new = r.partition("=")
        if not sep:
            raise SystemExit(f"--rename {r}: expected OLD=NEW")
        renames.append((old, new))

    src = {}
    for name, t in load_state_dict(args.state_dict).items():
        if name.endswith("num_batches_tracked"):
            continue
        for old, new in renames:
            if name.startswith(old):
                name = new + name[len(old):]
                break
        src[name] = t

    errors = [f"missing tensor {k} {tuple(s)}" for k, s in want.items() if k not in src]
    errors += [f"unknown tensor {k} (not in the contract for this architecture)"
               for k in src if k not in want]
    errors += [f"{k}: shape {tuple(src[k].shape)}, the architecture needs {tuple(s)}"
               for k, s in want.items() if k in src and tuple(src[k].shape) != tuple(s)]
    if errors:
        raise SystemExit("cannot export:\n  " + "\n  ".join(errors))

    with torch.no_grad():
        model.load_state_dict({k: v.float() for k, v in src.items()}, strict=False)
    norm = json.loads(args.normalization)
    names = args.class_names.split(",") if args.class_names else None
    unet_ref.save_model(model, args.output, normalization=norm, classes=names)
    print(f"wrote {args.output}: depth {args.depth}, {args.base_filters} base filters, "
          f"{args.padding}, {unet_ref.parameter_count(model)} parameters")


if __name__ == "__main__":
    main()
