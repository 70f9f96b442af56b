"""The engine's geometry and parameter layout against the PyTorch reference.

    test_geometry_torch.py UNET_GEOMETRY_TOOL

For configs over depth 1-5, base 4-64, valid/same, batch norm on/off, classes
1/2/3 and 1/3 input channels, compares the C side (tests/tools/unet-geometry) with
tests/reference/unet_ref.py's UNetRef:
  * tensor names and shapes == state_dict (minus num_batches_tracked), exactly;
  * parameter count == sum of PyTorch parameter sizes;
  * for every input size in a sweep: C says legal <=> the reference forward runs
    (strict mode: no odd size before a pooling, no size < 1), and the output size
    equals PyTorch's output shape;
  * input_for_output == the smallest swept legal input whose output is >= o;
  * forward FLOPs == 2 x multiply-adds counted by hooks on the reference.
Shapes come from meta tensors (no arithmetic), so big configs cost nothing.
Exit status 0 on success, 1 with a list of mismatches.
"""

import itertools
import json
import os
import subprocess
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.environ.get("UNET_SOURCE_ROOT",
                                               os.path.join(HERE, "..", "..")),
                                "tests", "reference"))
import unet_ref  # noqa: E402

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def c_geometry(tool, cfg, max_size):
    out = subprocess.run([tool, json.dumps(cfg), str(max_size)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def torch_output(model, cfg, s, other):
    """Output edge of an s x other input, or -1 where the reference refuses it."""
    x = torch.empty(1, cfg["in_channels"], s, other, device="meta")
    try:
        with torch.no_grad():
            y = model(x, strict=True)
    except (ValueError, RuntimeError):
        return -1
    if y.shape[2] < 1:
        return -1
    assert y.shape[0] == 1 and y.shape[1] == cfg["classes"]
    return int(y.shape[2])


def torch_flops(model, cfg, s):
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.ConvTranspose2d):
            cin, cout = mod.in_channels, mod.out_channels
            kh, kw = mod.kernel_size
            # each input pixel scatters cin x cout x kh x kw multiply-adds
            total[0] += 2 * cin * cout * kh * kw * inp[0].shape[2] * inp[0].shape[3]
        elif isinstance(mod, nn.Conv2d):
            cin, cout = mod.in_channels, mod.out_channels
            kh, kw = mod.kernel_size
            total[0] += 2 * cin * cout * kh * kw * out.shape[2] * out.shape[3]

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.empty(1, cfg["in_channels"], s, s, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def configs():
    # every depth x padding x batch-norm combination, the other axes rotating so
    # each value of base/classes/channels appears with several depths
    bases = [4, 8, 16, 32, 64]
    out = []
    for n, (depth, padding, bn) in enumerate(itertools.product(
            range(1, 6), ["valid", "same"], [False, True])):
        out.append(unet_ref.make_config(
            in_channels=[1, 3][n % 2], classes=[1, 2, 3][n % 3], depth=depth,
            base_filters=bases[(n // 2) % 5], padding=padding, batch_norm=bn,
            dropout=[0.0, 0.5][n % 2]))
    out.append(unet_ref.make_config())                   # the classic net
    out.append(unet_ref.make_config(depth=5, base_filters=64, batch_norm=True,
                                    padding="same", classes=3, in_channels=3))
    return out


def main():
    tool = sys.argv[1]
    swept = set()
    for cfg in configs():
        name = json.dumps(cfg, separators=(",", ":"))
        model = unet_ref.UNetRef(cfg, device="meta").eval()
        step = 1 << cfg["depth"]
        # quick call to learn min_input, then a sweep three steps past it
        g0 = c_geometry(tool, cfg, 1)
        max_size = g0["min_input"] + 3 * step + 3
        g = c_geometry(tool, cfg, max_size)

        # layout
        sd = {k: list(v.shape) for k, v in model.state_dict().items()
              if not k.endswith(".num_batches_tracked")}
        c_layout = {t["name"]: t["shape"] for t in g["tensors"]}
        check(len(g["tensors"]) == len(c_layout), f"{name}: duplicate tensor names")
        check(sd == c_layout, f"{name}: layout differs: only C "
              f"{sorted(set(c_layout) - set(sd))}, only torch "
              f"{sorted(set(sd) - set(c_layout))}, shapes "
              f"{[k for k in sd if k in c_layout and sd[k] != c_layout[k]]}")
        check(g["parameter_count"] == unet_ref.parameter_count(model),
              f"{name}: parameters C {g['parameter_count']} vs torch "
              f"{unet_ref.parameter_count(model)}")
        check(g["step"] == step, f"{name}: step {g['step']}")

        # sizes: full sweep once per (depth, padding); spot checks otherwise
        key = (cfg["depth"], cfg["padding"])
        sizes = dict((s, o) for s, o in g["sizes"])
        if key not in swept:
            swept.add(key)
            probe = sorted(sizes)
        else:
            legal = [s for s in sorted(sizes) if sizes[s] > 0][:3]
            probe = legal + [legal[0] - 1, legal[0] + 1, legal[0] - step]
            probe = [s for s in probe if s >= 1]
        other = g["min_input"]
        torch_out = {}
        for s in probe:
            t = torch_output(model, cfg, s, other)
            torch_out[s] = t
            check(sizes[s] == t, f"{name}: input {s}: C output {sizes[s]}, torch {t}")
        check(g["min_input"] == min(s for s in torch_out if torch_out[s] > 0),
              f"{name}: min_input {g['min_input']}")
        if key in swept and probe == sorted(sizes):
            # border: input - output is constant over the legal sizes
            legal = [s for s in probe if torch_out[s] > 0]
            for s in legal:
                check(s - torch_out[s] == 2 * g["border"],
                      f"{name}: border {g['border']} but {s} -> {torch_out[s]}")
            top = max(torch_out[s] for s in legal)
            for o, inp in g["input_for_output"]:
                if o > top:
                    break
                want = min(s for s in legal if torch_out[s] >= o)
                check(inp == want, f"{name}: input_for_output({o}) C {inp} vs {want}")

        # FLOPs at the smallest legal input
        tf = torch_flops(model, cfg, g["min_input"])
        check(abs(g["flops"] - tf) <= 1e-9 * tf,
              f"{name}: flops C {g['flops']} vs torch {tf}")

    if failures:
        print(f"{len(failures)} mismatches:")
        for f in failures[:50]:
            print("  " + f)
        return 1
    print(f"geometry, layout, parameter count and FLOPs agree with PyTorch for "
          f"{len(configs())} configs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
