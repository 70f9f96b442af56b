"""The engines a user would pick instead of gst-unet on a CPU, for the benches.

* Debian's PyTorch (/usr/bin/python3), always there (it also exports the ONNX file).
* ONNX Runtime and OpenVINO from PyPI, installed by the bench itself into a virtual
  environment (default ~/.cache/gst-unet-bench/venv, or --venv) with pip; skipped
  with a note when they cannot be installed (no network, no wheel for this Python).
* PyTorch 2.x from PyPI only with --pypi-torch: PyPI's Linux torch wheel depends on
  the multi-GB CUDA packages (the CPU-only wheel lives on download.pytorch.org, not
  on PyPI), so it is installed only when asked for.

Every peer runs as its own child process with one protocol (see SERVE_CHILD): it
loads the model, prints "ready", then per "run" line on stdin does one forward of
the same input and prints the milliseconds; "quit" writes the probabilities (float32,
raw) and exits. So contenders alternate round by round in one bench run.
"""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEBIAN_PY = "/usr/bin/python3"
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "gst-unet-bench", "venv")
PYPI_PACKAGES = ["numpy", "onnxruntime", "openvino", "tifffile"]

# The export: unet_ref's model (float32, our weights), softmax/sigmoid head included,
# so every engine returns probabilities. The tile size is fixed (the one given); the
# batch is a dynamic axis.
EXPORT_CHILD = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
import unet_ref
net, _ = unet_ref.load_model(sys.argv[2], dtype=torch.float32)
net.eval()
class Prob(torch.nn.Module):
    def __init__(self, m):
        super().__init__(); self.m = m
    def forward(self, x):
        y = self.m(x)
        return torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
s = int(sys.argv[4])
x = torch.zeros(1, net.cfg["in_channels"], s, s)
torch.onnx.export(Prob(net), x, sys.argv[3], input_names=["x"], output_names=["p"],
                  dynamic_axes={"x": {0: "n"}, "p": {0: "n"}},
                  opset_version=13, do_constant_folding=True)
"""

# One forward per "run" line. argv: engine model.(safetensors|onnx) x.raw shape
# threads out.raw refdir. shape: n,c,h,w of the float32 input.
SERVE_CHILD = r"""
import sys, time, json
import numpy as np
engine, model, xpath, shape, threads, out, refdir = sys.argv[1:8]
shape = tuple(int(v) for v in shape.split(","))
threads = int(threads)
x = np.fromfile(xpath, dtype="<f4").reshape(shape)
version = ""
if engine.startswith("torch"):
    import torch
    sys.path.insert(0, refdir)
    import unet_ref
    torch.set_num_threads(threads)
    net, _ = unet_ref.load_model(model, dtype=torch.float32)
    net.eval()
    xt = torch.from_numpy(x)
    if engine.endswith("channels_last"):
        net = net.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    def fwd():
        with torch.no_grad():
            y = net(xt)
            y = torch.sigmoid(y) if y.shape[1] == 1 else torch.softmax(y, dim=1)
            return y.contiguous().numpy()
    version = "PyTorch " + torch.__version__
elif engine == "onnxruntime":
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    def fwd():
        return sess.run(None, {"x": x})[0]
    version = "ONNX Runtime " + ort.__version__
elif engine == "openvino":
    import openvino as ov
    core = ov.Core()
    m = core.read_model(model)
    m.reshape({"x": list(shape)})
    cm = core.compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                       "PERFORMANCE_HINT": "LATENCY",
                                       "INFERENCE_PRECISION_HINT": "f32",
                                       "NUM_STREAMS": 1})
    req = cm.create_infer_request()
    def fwd():
        req.infer({"x": x})
        return req.get_output_tensor(0).data.copy()
    version = "OpenVINO " + ov.__version__
else:
    raise SystemExit("unknown engine " + engine)
y = fwd()                       # warm-up
print("ready " + json.dumps(version), flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    t = time.perf_counter(); y = fwd(); ms = (time.perf_counter() - t) * 1e3
    print("%.3f" % ms, flush=True)
np.ascontiguousarray(y, dtype="<f4").tofile(out)
"""


def note(msg):
    print("note: " + msg, file=sys.stderr, flush=True)


def venv_python(venv, packages, install=True):
    """Python of `venv` with `packages` importable, creating/installing as needed
    (pip from PyPI). Returns (python path or None, list of importable modules)."""
    py = os.path.join(venv, "bin", "python")
    if install and not os.path.exists(py):
        os.makedirs(os.path.dirname(venv), exist_ok=True)
        r = subprocess.run([DEBIAN_PY, "-m", "venv", venv], capture_output=True, text=True)
        if r.returncode != 0:
            note("cannot create the virtual environment %s: %s" % (venv, r.stderr.strip()))
            return None, []
    if not os.path.exists(py):
        note("no virtual environment at %s (run without --no-install)" % venv)
        return None, []
    have = []
    for pkg in packages:
        mod = {"onnxruntime": "onnxruntime", "openvino": "openvino", "numpy": "numpy",
               "tifffile": "tifffile", "torch": "torch"}[pkg]
        ok = subprocess.run([py, "-c", "import " + mod], capture_output=True).returncode == 0
        if not ok and install:
            r = subprocess.run([py, "-m", "pip", "install", "-q", pkg],
                               capture_output=True, text=True)
            if r.returncode != 0:
                note("pip install %s failed, skipped: %s" % (pkg, r.stderr.strip()[-300:]))
                continue
            ok = subprocess.run([py, "-c", "import " + mod],
                                capture_output=True).returncode == 0
        if ok:
            have.append(pkg)
        else:
            note("%s is not importable in %s, skipped" % (pkg, venv))
    return py, have


def export_onnx(model_path, onnx_path, size):
    """Our weights (safetensors) -> ONNX with Debian's PyTorch. True on success."""
    r = subprocess.run([DEBIAN_PY, "-c", EXPORT_CHILD, os.path.join(ROOT, "tests", "reference"),
                        model_path, onnx_path, str(size)], capture_output=True, text=True)
    if r.returncode != 0:
        note("ONNX export failed: " + r.stderr.strip()[-500:])
        return False
    return True


def peer_list(args, onnx_ok):
    """[(label, python, engine)] of the peers available for this run."""
    peers = [("PyTorch (Debian) NCHW", DEBIAN_PY, "torch"),
             ("PyTorch (Debian) channels_last", DEBIAN_PY, "torch_channels_last")]
    wanted = ["numpy", "tifffile", "onnxruntime", "openvino"]
    if args.pypi_torch:
        wanted.append("torch")
    py, have = venv_python(args.venv, wanted, install=not args.no_install)
    if py is None or "numpy" not in have:
        note("no PyPI engines: the virtual environment is unusable")
        return peers, None
    if not onnx_ok:
        note("ONNX Runtime and OpenVINO skipped: no ONNX file")
    else:
        if "onnxruntime" in have:
            peers.append(("ONNX Runtime (PyPI)", py, "onnxruntime"))
        if "openvino" in have:
            peers.append(("OpenVINO (PyPI) f32 LATENCY", py, "openvino"))
    if args.pypi_torch and "torch" in have:
        peers.append(("PyTorch (PyPI) channels_last", py, "torch_channels_last"))
    elif not args.pypi_torch:
        note("PyTorch 2.x from PyPI skipped: its Linux wheel pulls the multi-GB CUDA "
             "packages (the CPU wheel is not on PyPI); --pypi-torch installs it anyway")
    return peers, py


def add_args(ap):
    ap.add_argument("--venv", default=DEFAULT_VENV,
                    help="virtual environment for the PyPI engines (created if missing)")
    ap.add_argument("--no-install", action="store_true",
                    help="use the virtual environment as it is; install nothing")
    ap.add_argument("--pypi-torch", action="store_true",
                    help="also PyTorch 2.x from PyPI (installs the CUDA wheels, GBs)")
