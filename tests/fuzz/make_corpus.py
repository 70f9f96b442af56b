"""Writes tests/fuzz/corpus/: small valid and malformed model files, the seeds of
the libFuzzer target and the inputs of the fuzz-regress test.

    /usr/bin/python3 tests/fuzz/make_corpus.py [OUT_DIR]

Deterministic; re-run after changing it and commit the result.
"""
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import unet_ref as U  # noqa: E402


def tiny(bn, padding="same", classes=1, in_channels=1):
    return U.random_model(U.make_config(in_channels=in_channels, classes=classes,
                                        depth=1, base_filters=1, padding=padding,
                                        batch_norm=bn), seed=1)


def model_bytes(m, dtype="F32", nbt=False, extra=None, meta=None):
    meta_all = {"unet.config": json.dumps(m.cfg)}
    meta_all.update(meta or {})
    t = {}
    for k, v in m.state_dict().items():
        if k.endswith(".num_batches_tracked"):
            if nbt:
                t[k] = v.numpy()
            continue
        t[k] = v.float().numpy()
    t.update(extra or {})
    return U.serialize_safetensors(t, meta_all, dtype=dtype)


def with_header(data, edit):
    (n,) = struct.unpack("<Q", data[:8])
    h = json.loads(data[8:8 + n])
    edit(h)
    hb = json.dumps(h).encode()
    return struct.pack("<Q", len(hb)) + hb + data[8 + n:]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    files = {}
    m = tiny(False, "valid", 2)
    mb = tiny(True, "same", 1, 3)
    import numpy as np
    files["valid-f32"] = model_bytes(m)
    files["valid-f16-bn"] = model_bytes(mb, "F16", nbt=True,
                                        meta={"unet.normalization":
                                              '{"mode":"range","min":0,"max":255}'})
    files["valid-bf16-optim"] = model_bytes(mb, "BF16", extra={
        "optim.m": np.zeros((3, 2), np.float32)})
    good = files["valid-f32"]

    def set_(key, field, value):
        return with_header(good, lambda h: h[key].__setitem__(field, value))

    files["overlap"] = set_("head.bias", "data_offsets", [0, 8])
    files["out-of-range"] = set_("head.bias", "data_offsets", [1 << 40, (1 << 40) + 8])
    files["wrong-shape"] = set_("head.weight", "shape", [2, 1, 1])
    files["unknown-dtype"] = set_("head.bias", "dtype", "F64")
    files["huge-shape"] = set_("head.bias", "shape", [1 << 31, 1 << 31, 1 << 31])
    files["bad-config"] = with_header(good, lambda h: h["__metadata__"].__setitem__(
        "unet.config", '{"depth": 1e400}'))
    files["big-config"] = with_header(good, lambda h: h["__metadata__"].__setitem__(
        "unet.config", json.dumps(U.make_config(depth=16, base_filters=1))))
    files["unknown-tensor"] = with_header(good, lambda h: h.__setitem__(
        "extra", {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}))
    files["missing"] = with_header(good, lambda h: h.pop("head.bias"))
    files["header-too-long"] = struct.pack("<Q", 1 << 62) + good[8:]
    files["truncated"] = good[:len(good) // 2]
    files["deep"] = struct.pack("<Q", 20008) + b'{"a":' + b"[" * 20003
    files["nul"] = struct.pack("<Q", 4) + b'{\x00}}'
    files["bad-utf8"] = struct.pack("<Q", 8) + b'{"\xff":1}'
    # what the reference reader refuses (strict JSON, contiguous data)
    (n,) = struct.unpack("<Q", good[:8])
    header, data = good[8:8 + n].rstrip(b" "), good[8 + n:]

    def raw(h, d=data):
        return struct.pack("<Q", len(h)) + h + d

    last = json.loads(header)["head.bias"]["data_offsets"]
    bias = ('"head.bias":' + json.dumps(json.loads(header)["head.bias"],
                                        separators=(",", ":"))).encode()
    files["hex-number"] = raw(header.replace(b"[0,", b"[0x0,", 1))
    files["single-quotes"] = raw(header.replace(b'"head.bias"', b"'head.bias'", 1))
    files["trailing-object"] = raw(header + b"{}")
    files["duplicate-key"] = raw(header[:-1] + b"," + bias + b"}")
    files["duplicate-escaped"] = raw(header[:-1] + b"," + bias.replace(
        b"head.bias", b"head.bi\\u0061s") + b"}")
    files["escaped-nul"] = raw(header.replace(b'"head.bias"', b'"head.bias\\u0000x"', 1))
    files["lone-surrogate"] = raw(header.replace(b'"head.bias"', b'"head.bias\\ud800"', 1))
    files["gap"] = with_header(good + b"\0" * 4, lambda h: h["head.bias"].__setitem__(
        "data_offsets", [last[0] + 4, last[1] + 4]))
    files["trailing-bytes"] = good + b"\0" * 4
    for name, data in files.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
