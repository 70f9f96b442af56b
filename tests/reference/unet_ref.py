"""PyTorch reference of the gst-unet network contract (network.md / DESIGN.md).

An independent, plain implementation used by the conformance tests:

* ``UNetRef(cfg)`` -- nn.Module whose ``state_dict()`` keys are exactly the contract
  names (``enc.{i}.conv1.weight``, ``bottom.bn2.running_var``, ``dec.{i}.up.weight``,
  ``head.bias`` ...; BatchNorm adds PyTorch's ``*.num_batches_tracked``, which the
  engine's loader ignores).
* ``random_model(cfg, seed)`` -- random weights, non-zero biases, random BN affine
  parameters and running statistics, so every tensor matters in a comparison.
* ``save_safetensors`` / ``load_safetensors`` -- a pure-Python (struct + json)
  safetensors writer/reader; writes F32, F16 or BF16 (the engine must load all
  three) and reads F32/F16/BF16/I64.
* ``save_model`` / ``load_model`` -- a model file per the contract (``__metadata__``
  ``unet.config`` etc.).
* ``probabilities(model, x)`` -- float64 forward: softmax over classes, or the
  sigmoid foreground probability when classes == 1.

Config dicts use the ``unet.config`` JSON keys: in_channels, classes, depth,
base_filters, padding ("valid"|"same"), batch_norm, dropout.

Use Debian's torch with /usr/bin/python3.
"""

import json
import struct

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

CONFIG_KEYS = ("in_channels", "classes", "depth", "base_filters", "padding",
               "batch_norm", "dropout")


def make_config(in_channels=1, classes=2, depth=4, base_filters=64, padding="valid",
                batch_norm=False, dropout=0.0):
    return dict(in_channels=in_channels, classes=classes, depth=depth,
                base_filters=base_filters, padding=padding, batch_norm=batch_norm,
                dropout=dropout)


class Block(nn.Module):
    """Two 3x3 convs (bias) [+ BatchNorm2d] + ReLU; optional 2x2 up-conv in front."""

    def __init__(self, cin, cout, padding, batch_norm, up_from=None, device=None):
        super().__init__()
        if up_from is not None:
            # ConvTranspose2d(F_{i+1} -> F_i, 2, stride 2), no activation after it
            self.up = nn.ConvTranspose2d(up_from, cout, kernel_size=2, stride=2,
                                         device=device)
        pad = 1 if padding == "same" else 0
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=pad, bias=True, device=device)
        if batch_norm:
            self.bn1 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1, device=device)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=pad, bias=True, device=device)
        if batch_norm:
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1, device=device)
        self.batch_norm = batch_norm

    def forward(self, x):
        x = self.conv1(x)
        if self.batch_norm:
            x = self.bn1(x)
        x = F.relu(x)
        x = self.conv2(x)
        if self.batch_norm:
            x = self.bn2(x)
        return F.relu(x)


def center_crop(e, h, w):
    """Crop (B,C,H,W) `e` to h x w at offset ((H-h)//2, (W-w)//2)."""
    dh = (e.shape[2] - h) // 2
    dw = (e.shape[3] - w) // 2
    return e[:, :, dh:dh + h, dw:dw + w]


class UNetRef(nn.Module):
    """device="meta" builds a shape-only module (geometry checks of big configs)."""

    def __init__(self, cfg, device=None):
        super().__init__()
        for k in CONFIG_KEYS:
            if k not in cfg:
                raise KeyError(k)
        self.cfg = dict(cfg)
        D, B = cfg["depth"], cfg["base_filters"]
        pad, bn = cfg["padding"], cfg["batch_norm"]
        f = [B << i for i in range(D + 1)]
        self.enc = nn.ModuleList(
            [Block(cfg["in_channels"] if i == 0 else f[i - 1], f[i], pad, bn,
                   device=device) for i in range(D)])
        self.bottom = Block(f[D - 1], f[D], pad, bn, device=device)
        self.dropout = nn.Dropout(cfg["dropout"])
        # dec[i] works at level i (dec.{i}.up: F_{i+1} -> F_i); run from D-1 down to 0
        self.dec = nn.ModuleList(
            [Block(2 * f[i], f[i], pad, bn, up_from=f[i + 1], device=device)
             for i in range(D)])
        self.head = nn.Conv2d(f[0], cfg["classes"], 1, bias=True, device=device)

    def forward(self, x, strict=True):
        """Logits. strict: raise ValueError where the contract's geometry says the
        input size is illegal (odd size before a pooling, or a size < 1)."""
        skips = []
        for i, blk in enumerate(self.enc):
            x = blk(x)
            if strict and (x.shape[2] % 2 or x.shape[3] % 2):
                raise ValueError(f"odd size {tuple(x.shape[2:])} before pooling {i}")
            skips.append(x)
            x = F.max_pool2d(x, 2, 2)
        x = self.dropout(self.bottom(x))
        for i in reversed(range(len(self.dec))):
            blk = self.dec[i]
            u = blk.up(x)
            c = center_crop(skips[i], u.shape[2], u.shape[3])
            x = blk(torch.cat([c, u], dim=1))
        return self.head(x)


def _conv_fan_in(w, transposed):
    # ConvTranspose2d 2x2 stride 2: one tap per input channel per output pixel
    return w.shape[0] if transposed else w.shape[1] * w.shape[2] * w.shape[3]


def random_model(cfg, seed, bn_stats=True, dtype=torch.float64):
    """UNetRef with random weights (std sqrt(2/fan_in)), biases ~ U(-0.1, 0.1) and,
    with batch norm, gamma ~ U(0.5, 1.5), beta ~ U(-0.2, 0.2), running_mean ~
    N(0, 0.1), running_var ~ U(0.5, 2) (identity stats when bn_stats is False)."""
    g = torch.Generator().manual_seed(seed)
    m = UNetRef(cfg).to(dtype)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                t = isinstance(mod, nn.ConvTranspose2d)
                std = (2.0 / _conv_fan_in(mod.weight, t)) ** 0.5
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g,
                                             dtype=dtype) * std)
                mod.bias.copy_((torch.rand(mod.bias.shape, generator=g,
                                           dtype=dtype) - 0.5) * 0.2)
            elif isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(torch.rand(n, generator=g, dtype=dtype) + 0.5)
                mod.bias.copy_((torch.rand(n, generator=g, dtype=dtype) - 0.5) * 0.4)
                if bn_stats:
                    mod.running_mean.copy_(torch.randn(n, generator=g, dtype=dtype) * 0.1)
                    mod.running_var.copy_(torch.rand(n, generator=g, dtype=dtype) * 1.5
                                          + 0.5)
    m.eval()
    return m


def contract_state(model):
    """Contract tensors only (no num_batches_tracked), name -> float ndarray."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()
            if not k.endswith(".num_batches_tracked")}


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def probabilities(model, x):
    """float64 forward in eval mode; x (B,C,H,W) ndarray or tensor."""
    model = model.double().eval()
    with torch.no_grad():
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        logits = model(xt)
        if model.cfg["classes"] == 1:
            return torch.sigmoid(logits).numpy()
        return torch.softmax(logits, dim=1).numpy()


# ------------------------------------------------------------- safetensors --

_DTYPE_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "F64": 8, "I32": 4,
               "U8": 1}


def _encode(arr, dtype):
    a = np.ascontiguousarray(arr)
    if dtype == "F32":
        return a.astype("<f4").tobytes()
    if dtype == "F16":
        return a.astype("<f2").tobytes()
    if dtype == "BF16":
        # round to nearest even, as torch does
        t = torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    if dtype == "I64":
        return a.astype("<i8").tobytes()
    raise ValueError(dtype)


def serialize_safetensors(tensors, metadata=None, dtype="F32", dtypes=None):
    """bytes of a safetensors file. tensors: name -> array (written in the given
    order); dtype: default dtype for floats; dtypes: per-name override."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    off = 0
    for name, arr in tensors.items():
        a = np.asarray(arr)
        dt = (dtypes or {}).get(name, "I64" if a.dtype.kind in "iu" else dtype)
        b = _encode(a, dt)
        header[name] = {"dtype": dt, "shape": list(a.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def save_safetensors(path, tensors, metadata=None, dtype="F32", dtypes=None):
    with open(path, "wb") as f:
        f.write(serialize_safetensors(tensors, metadata, dtype, dtypes))


def parse_safetensors(data):
    """(tensors name -> ndarray (float32 for float dtypes, int64 for I64), metadata)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    buf = data[8 + n:]
    meta = header.pop("__metadata__", {}) or {}
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = buf[b:end]
        shape = tuple(e["shape"])
        dt = e["dtype"]
        if dt == "F32":
            a = np.frombuffer(raw, "<f4")
        elif dt == "F16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "I64":
            a = np.frombuffer(raw, "<i8")
        else:
            raise ValueError(f"{name}: dtype {dt}")
        out[name] = a.reshape(shape).copy()
    return out, meta


def load_safetensors(path):
    with open(path, "rb") as f:
        return parse_safetensors(f.read())


def save_model(model, path, dtype="F32", normalization=None, classes=None,
               include_num_batches_tracked=False, extra_metadata=None):
    """A model file per the contract. normalization: dict (unet.normalization)."""
    meta = {"unet.config": json.dumps(model.cfg)}
    if normalization is not None:
        meta["unet.normalization"] = json.dumps(normalization)
    if classes is not None:
        meta["unet.classes"] = json.dumps(classes)
    meta.update(extra_metadata or {})
    tensors = {}
    for k, v in model.state_dict().items():
        if k.endswith(".num_batches_tracked"):
            if include_num_batches_tracked:
                tensors[k] = v.cpu().numpy().astype(np.int64)
            continue
        tensors[k] = v.detach().cpu().numpy().astype(np.float32)
    save_safetensors(path, tensors, meta, dtype=dtype)


def load_model(path, dtype=torch.float64):
    tensors, meta = load_safetensors(path)
    cfg = json.loads(meta["unet.config"])
    m = UNetRef(cfg).to(dtype)
    sd = m.state_dict()
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith("optim."):
                continue
            sd[k].copy_(torch.from_numpy(np.asarray(v)))
    m.eval()
    return m, meta
