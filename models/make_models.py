#!/usr/bin/env python3
"""Regenerate the small ONNX test models and data in this folder.

Usage (from the repository root):  python3 models/make_models.py

Everything is trained from scratch on scikit-learn's bundled `load_digits`
dataset (1797 8x8 grey-scale images of hand-written digits, 10 classes), so
nothing is downloaded.  The script is deterministic: fixed seeds, one CPU
thread, torch deterministic algorithms.  It writes, next to itself:

  * digits_mlp.onnx, digits_cnn.onnx, digits_cnn_flatten.onnx,
    digits_lstm.onnx, digits_transformer.onnx, yolo_block.onnx
  * digits_{test,calib}_{x64,x8x8,x1x8x8,y}.npy
  * manifest.json (machine-readable summary) and README.md

Every model is checked with onnx.checker (full_check), strict ONNX shape
inference and onnxruntime (all graph optimisations disabled) against torch.
"""
import collections
import hashlib
import json
import math
import os
import platform
import random
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import onnx
import onnxruntime as ort
import sklearn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

OUT = os.path.dirname(os.path.abspath(__file__))
OPSET = 17
SEED = 0
N_TEST = 360
N_CALIB = 256
TOL = 1e-4

warnings.filterwarnings("ignore")  # legacy-exporter deprecation chatter
torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)
random.seed(SEED)
np.random.seed(SEED)
torch.manual_seed(SEED)


# --------------------------------------------------------------------------- data
def load_data():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)          # [1797, 64] in [0, 1]
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=N_TEST, stratify=y, random_state=0)
    x_ca, y_ca = x_tr[:N_CALIB], y_tr[:N_CALIB]
    return (np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_te), y_te,
            np.ascontiguousarray(x_ca), y_ca)


def views(x64):
    n = x64.shape[0]
    return {
        "x64": np.ascontiguousarray(x64.reshape(n, 64), dtype=np.float32),
        "x8x8": np.ascontiguousarray(x64.reshape(n, 8, 8), dtype=np.float32),
        "x1x8x8": np.ascontiguousarray(x64.reshape(n, 1, 8, 8), dtype=np.float32),
    }


# --------------------------------------------------------------------------- models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout))


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = conv_bn(c, c)
        self.b = conv_bn(c, c)

    def forward(self, x):
        y = F.relu(self.a(x))
        y = self.b(y)
        return F.relu(y + x)


class CNN(nn.Module):
    """stem -> residual block -> depthwise/pointwise -> 2-branch concat -> maxpool -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 16)                    # Conv+BN (+ReLU) 1->16
        self.res = ResBlock(16)                       # Conv-BN-ReLU-Conv-BN + identity, ReLU
        self.dw = conv_bn(16, 16, 3, groups=16)       # depthwise 3x3 (group=16)
        self.pw = conv_bn(16, 32, 1)                  # pointwise 1x1 16->32
        self.br1 = nn.Conv2d(32, 16, 1)               # branch 1: 1x1
        self.br2 = nn.Conv2d(32, 16, 3, padding=1)    # branch 2: 3x3
        self.pool = nn.MaxPool2d(2)                   # 8x8 -> 4x4
        self.gap = nn.AdaptiveAvgPool2d(1)            # GlobalAveragePool
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.res(x)
        x = F.relu(self.dw(x))
        x = F.relu(self.pw(x))
        x = torch.cat([F.relu(self.br1(x)), F.relu(self.br2(x))], dim=1)
        x = self.pool(x)
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


class CNNFlatten(nn.Module):
    """Conv-BN-ReLU x2 -> MaxPool(2) -> Flatten -> Linear(16*4*4,32) -> ReLU -> Linear(32,10)."""

    def __init__(self):
        super().__init__()
        self.c1 = conv_bn(1, 16)
        self.c2 = conv_bn(16, 16)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class LSTMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(8, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):                  # x: [B, 8 rows (time), 8 cols (features)]
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer written out by hand (no nn.MultiheadAttention)."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.ln1 = nn.LayerNorm(d)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.scale = 1.0 / math.sqrt(self.dh)

    def forward(self, x):
        B, T, D = x.shape
        h = self.ln1(x)
        q = self.q(h).reshape(B, T, self.h, self.dh).transpose(1, 2)   # [B,H,T,dh]
        k = self.k(h).reshape(B, T, self.h, self.dh).transpose(1, 2)
        v = self.v(h).reshape(B, T, self.h, self.dh).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(a)
        x = x + self.ff2(F.gelu(self.ff1(self.ln2(x))))
        return x


class Transformer(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.randn(1, 8, d) * 0.02)
        self.layers = nn.ModuleList([EncoderLayer(d), EncoderLayer(d)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):                  # x: [B, 8 tokens (rows), 8 features]
        x = self.embed(x) + self.pos
        for layer in self.layers:
            x = layer(x)
        x = self.ln(x).mean(dim=1)
        return self.head(x)


class ConvSiLU(nn.Module):
    """Conv2d followed by SiLU written explicitly as x * sigmoid(x) (-> Sigmoid + Mul)."""

    def __init__(self, cin, cout, k=1, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)

    def forward(self, x):
        x = self.conv(x)
        return x * torch.sigmoid(x)


class C2f(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.half = c // 2
        self.cv1 = ConvSiLU(c, c, 1)
        self.m1 = ConvSiLU(self.half, self.half, 3)
        self.m2 = ConvSiLU(self.half, self.half, 3)
        self.cv2 = ConvSiLU(3 * self.half, c, 1)

    def forward(self, x):
        y1, y2 = torch.split(self.cv1(x), self.half, dim=1)
        y3 = self.m2(self.m1(y2))
        return self.cv2(torch.cat([y1, y2, y3], dim=1))


class YoloBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvSiLU(1, 16, 3)
        self.c2f = C2f(16)
        self.down = ConvSiLU(16, 32, 3, stride=2)       # 8x8 -> 4x4
        self.up = nn.Upsample(scale_factor=2, mode="nearest")  # -> Resize, 4x4 -> 8x8
        self.fuse = ConvSiLU(48, 32, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        c = self.c2f(x)
        u = self.up(self.down(c))
        x = self.fuse(torch.cat([u, c], dim=1))
        x = torch.flatten(self.gap(x), 1)
        return self.fc(x)


# (file stem, class, input view, epochs, lr, weight decay, export kwargs, required ops)
BN_EXPORT = dict(training=torch.onnx.TrainingMode.PRESERVE)  # model is in eval(); PRESERVE skips the
                                                              # eval peephole that folds BN into Conv
SPECS = [
    ("digits_mlp", MLP, "x64", 40, 2e-3, 0.0, {}, ["Gemm", "Relu"]),
    ("digits_cnn", CNN, "x1x8x8", 30, 3e-3, 0.0, BN_EXPORT,
     ["Conv", "BatchNormalization", "Relu", "Add", "Concat", "MaxPool", "GlobalAveragePool",
      "Flatten", "Gemm"]),
    ("digits_cnn_flatten", CNNFlatten, "x1x8x8", 30, 3e-3, 0.0, BN_EXPORT,
     ["Conv", "BatchNormalization", "Relu", "MaxPool", "Flatten", "Gemm"]),
    ("digits_lstm", LSTMNet, "x8x8", 100, 5e-3, 0.0, {}, ["LSTM", "Gemm"]),
    ("digits_transformer", Transformer, "x8x8", 80, 3e-3, 1e-4, {},
     ["MatMul", "Add", "Reshape", "Transpose", "Softmax", "LayerNormalization", "Erf",
      "ReduceMean", "Shape", "Gather", "Concat", "Gemm"]),
    ("yolo_block", YoloBlock, "x1x8x8", 100, 5e-3, 0.0, {},
     ["Conv", "Sigmoid", "Mul", "Split", "Concat", "Resize", "GlobalAveragePool", "Flatten",
      "Gemm"]),
]


# --------------------------------------------------------------------------- train / eval
def train(model, x, y, epochs, lr, wd, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    steps_per_epoch = math.ceil(len(x) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


def ort_session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def shape_str(vi):
    dims = [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
    return "[" + ", ".join(str(d) for d in dims) + "]"


def main():
    t0 = time.time()
    x_tr, y_tr, x_te, y_te, x_ca, y_ca = load_data()
    tr, te, ca = views(x_tr), views(x_te), views(x_ca)

    data_files = {}
    for split, v, yy in (("test", te, y_te), ("calib", ca, y_ca)):
        for key, arr in v.items():
            fn = f"digits_{split}_{key}.npy"
            np.save(os.path.join(OUT, fn), arr.astype(np.float32))
            data_files[fn] = list(arr.shape)
        fn = f"digits_{split}_y.npy"
        np.save(os.path.join(OUT, fn), yy.astype(np.int64))
        data_files[fn] = list(yy.shape)

    results = []
    for i, (name, cls, view, epochs, lr, wd, exp_kw, required) in enumerate(SPECS):
        t1 = time.time()
        seed = SEED + 1000 * (i + 1)
        torch.manual_seed(seed)
        model = train(cls(), tr[view], y_tr, epochs, lr, wd, seed)
        n_params = sum(p.numel() for p in model.parameters())

        with torch.no_grad():
            ref = model(torch.from_numpy(te[view])).numpy()
        torch_acc = float((ref.argmax(1) == y_te).mean())

        path = os.path.join(OUT, name + ".onnx")
        dummy = torch.from_numpy(te[view][:2])
        torch.onnx.export(
            model, (dummy,), path, dynamo=False, opset_version=OPSET,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            **exp_kw)

        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        onnx.shape_inference.infer_shapes(m, strict_mode=True, check_type=True, data_prop=True)
        assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
        ops = collections.Counter(n.op_type for n in m.graph.node)
        missing = [op for op in required if op not in ops]
        assert not missing, f"{name}: missing ops {missing}; got {dict(ops)}"
        for bad in ("Silu", "HardSigmoid", "HardSwish", "Gelu", "Attention"):
            assert bad not in ops, f"{name}: unexpected fused op {bad}"
        if name == "digits_cnn":
            groups = [a.i for n in m.graph.node if n.op_type == "Conv"
                      for a in n.attribute if a.name == "group"]
            assert 16 in groups, f"no depthwise conv: {groups}"
        assert len(m.graph.input) == 1 and m.graph.input[0].name == "x"
        assert len(m.graph.output) == 1 and m.graph.output[0].name == "logits"
        assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert m.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        for init in m.graph.initializer:
            assert init.data_location != onnx.TensorProto.EXTERNAL

        sess = ort_session(path)
        out = sess.run(["logits"], {"x": te[view]})[0]
        diff = float(np.abs(out - ref).max())
        assert diff < TOL, f"{name}: ORT vs torch max abs diff {diff}"
        acc = float((out.argmax(1) == y_te).mean())
        out_c = sess.run(["logits"], {"x": ca[view]})[0]
        calib_acc = float((out_c.argmax(1) == y_ca).mean())
        # batch-1 run exercises the dynamic batch axis
        out1 = sess.run(["logits"], {"x": te[view][:1]})[0]
        assert out1.shape == (1, 10) and np.abs(out1 - ref[:1]).max() < TOL

        n_init = sum(int(np.prod(t.dims)) for t in m.graph.initializer)
        size = os.path.getsize(path)
        assert size < 1 << 20, f"{name}: {size} bytes"
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        r = dict(
            file=name + ".onnx", input_view=view,
            test_x=f"digits_test_{view}.npy", calib_x=f"digits_calib_{view}.npy",
            input=f"x {shape_str(m.graph.input[0])}", output=f"logits {shape_str(m.graph.output[0])}",
            params=n_params, initializer_elems=n_init, nodes=len(m.graph.node),
            op_types=dict(sorted(ops.items())), test_acc=acc, torch_test_acc=torch_acc,
            calib_acc=calib_acc, max_abs_diff_vs_torch=diff, size_bytes=size, sha256=sha,
            epochs=epochs, lr=lr, weight_decay=wd, train_seconds=round(time.time() - t1, 1))
        results.append(r)
        print(f"{name:20s} acc={acc:.4f} (torch {torch_acc:.4f}) diff={diff:.2e} "
              f"params={n_params} size={size} t={r['train_seconds']}s ops={dict(ops)}", flush=True)

    versions = {
        "python": platform.python_version(), "torch": torch.__version__,
        "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "scikit-learn": sklearn.__version__, "numpy": np.__version__,
    }
    manifest = dict(opset=OPSET, versions=versions, data=data_files,
                    split=dict(n_train=len(y_tr), n_test=len(y_te), n_calib=len(y_ca),
                               method="train_test_split(test_size=360, stratify=y, random_state=0); "
                                      "calib = first 256 rows of the training split; x = pixels/16"),
                    models=results)
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    write_readme(results, versions, data_files)
    print(f"done in {time.time() - t0:.1f}s")


DESCRIPTIONS = {
    "digits_mlp": "MLP: Linear(64,128) -> ReLU -> Linear(128,64) -> ReLU -> Linear(64,10).",
    "digits_cnn": (
        "CNN: stem Conv(1->16,3x3,pad1)+BN+ReLU; residual block Conv-BN-ReLU-Conv-BN (16ch) + "
        "identity Add, ReLU; depthwise Conv(16,3x3,group=16)+BN+ReLU; pointwise Conv(16->32,1x1)+BN+ReLU; "
        "two branches Conv1x1(32->16)+ReLU and Conv3x3(32->16)+ReLU concatenated on the channel axis "
        "(32ch); MaxPool 2x2 (8x8->4x4); GlobalAveragePool; Flatten; Linear(32,10). Convs before BN "
        "have no bias; BatchNormalization nodes are kept (not folded)."),
    "digits_cnn_flatten": (
        "CNN with Flatten->Gemm head: Conv(1->16,3x3)+BN+ReLU; Conv(16->16,3x3)+BN+ReLU; MaxPool 2x2; "
        "Flatten (16*4*4=256); Linear(256,32); ReLU; Linear(32,10)."),
    "digits_lstm": (
        "LSTM: the 8 image rows are 8 time steps of 8 features; nn.LSTM(8,32,batch_first) -> "
        "output at last time step -> Linear(32,10). Exported as one ONNX LSTM op (plus Transpose/"
        "Squeeze/Gather plumbing)."),
    "digits_transformer": (
        "Transformer: 8 tokens (rows) of 8 features; Linear(8,32) embedding + learned positional "
        "embedding [1,8,32]; 2 hand-written pre-LN encoder layers (LayerNorm; separate q/k/v "
        "Linear(32,32); reshape [B,T,4,8] -> transpose -> q@k^T * 1/sqrt(8) -> Softmax -> @v -> "
        "transpose -> reshape [B,T,32] -> out-proj Linear(32,32) -> residual; LayerNorm -> "
        "Linear(32,64) -> GELU (erf form: Div/Erf/Add/Mul) -> Linear(64,32) -> residual); final "
        "LayerNorm; mean over tokens (ReduceMean); Linear(32,10). Reshape targets are built at run "
        "time from Shape/Gather/Unsqueeze/Concat chains."),
    "yolo_block": (
        "YOLO-style block: Conv(1->16,3x3)+SiLU; C2f: Conv1x1(16->16)+SiLU -> Split into 2x8ch -> "
        "second half through two Conv3x3(8->8)+SiLU -> Concat[half1, half2, conv-out] (24ch) -> "
        "Conv1x1(24->16)+SiLU; downsample Conv3x3 stride 2 (16->32)+SiLU (4x4); nearest Upsample x2 "
        "(Resize) back to 8x8; Concat with the C2f output (48ch); Conv1x1(48->32)+SiLU; "
        "GlobalAveragePool; Flatten; Linear(32,10). SiLU is written as x*sigmoid(x), so it appears "
        "as Sigmoid + Mul node pairs."),
}


def write_readme(results, versions, data_files):
    L = []
    L.append("# Test models\n")
    L.append("Small ONNX models trained by this project on real data, for testing the pruner "
             "end to end (structure handling *and* accuracy after pruning). Everything in this "
             "folder is generated by `make_models.py`; do not edit by hand.\n")
    L.append("All models: opset 17 (default domain only), float32, weights stored as initializers "
             "inside the file (no external data), one input `x` and one output `logits` "
             "(`[batch, 10]`, unnormalised class scores), dynamic batch dimension named `batch`. "
             "Exported with the TorchScript (legacy) exporter `torch.onnx.export(..., dynamo=False)`. "
             "Every model passes `onnx.checker.check_model(full_check=True)` and "
             "`onnx.shape_inference.infer_shapes(strict_mode=True)`, and its onnxruntime output "
             "(graph optimisations disabled) matches torch within 1e-4 on the whole test set.\n")
    L.append("## Data\n")
    L.append("scikit-learn's bundled `load_digits` (1797 8x8 images of hand-written digits, "
             "10 classes). Pixels are divided by 16, so inputs are in [0, 1]. Split: "
             "`train_test_split(test_size=360, stratify=y, random_state=0)` -> 1437 train / 360 test; "
             "the calibration set is the first 256 rows of the training split (so it was seen in "
             "training; it is meant for activation statistics, not for measuring accuracy).\n")
    L.append("| file | dtype | shape |\n|---|---|---|")
    for fn, shp in data_files.items():
        dt = "int64" if fn.endswith("_y.npy") else "float32"
        L.append(f"| `{fn}` | {dt} | {shp} |")
    L.append("\nThe three `x` layouts hold the same images: `x64` is the flat row-major 64-pixel "
             "vector, `x8x8` is [N, rows, cols], `x1x8x8` is [N, 1 channel, 8, 8]. Labels are 0-9.\n")
    L.append("## Models\n")
    L.append("| model | input file (test / calib) | input | output | params | ONNX nodes | "
             "test accuracy (ONNX) | size |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        L.append(f"| `{r['file']}` | `{r['test_x']}` / `{r['calib_x']}` | `{r['input']}` | "
                 f"`{r['output']}` | {r['params']:,} | {r['nodes']} | {100 * r['test_acc']:.2f} % "
                 f"({round(r['test_acc'] * 360)}/360) | {r['size_bytes']:,} B |")
    L.append("\n`params` = trainable torch parameters (BatchNorm running mean/var are extra "
             "initializers). Test labels: `digits_test_y.npy`; calibration labels: "
             "`digits_calib_y.npy`.\n")
    for r in results:
        stem = r["file"][:-5]
        L.append(f"### `{r['file']}`\n")
        L.append(DESCRIPTIONS[stem] + "\n")
        ops = ", ".join(f"{k} x{v}" for k, v in r["op_types"].items())
        L.append(f"Op types: {ops}.\n")
        L.append(f"Training: Adam, one-cycle LR (max {r['lr']}), weight decay {r['weight_decay']}, "
                 f"batch 64, {r['epochs']} epochs. Test accuracy {100 * r['test_acc']:.2f} %, "
                 f"max |ONNX - torch| = {r['max_abs_diff_vs_torch']:.1e}.\n")
    L.append("`manifest.json` holds the same facts (accuracies, op counts, shapes, sha256) in "
             "machine-readable form.\n")
    L.append("## Export details worth knowing\n")
    L.append("\n".join([
        "- BatchNormalization survives only because the BN models are exported with "
        "`training=TrainingMode.PRESERVE` on an eval-mode model. With the default "
        "(`TrainingMode.EVAL` + constant folding) the legacy exporter's eval peephole folds "
        "every BN into the preceding Conv. The BN nodes have `training_mode=0`, epsilon 1e-5, "
        "and their Convs have no bias input.",
        "- `nn.Linear` on a 2-D input becomes `Gemm(transB=1)` with the torch `[out, in]` weight. "
        "On a 3-D input (the transformer) it becomes `MatMul` against a pre-transposed `[in, out]` "
        "initializer with an auto-generated name (`onnx::MatMul_NNN`), followed by `Add(bias, y)` "
        "(the bias is the *first* Add input).",
        "- LSTM: W/R/B are initializers named `onnx::LSTM_NNN` (`[1,128,8]`, `[1,128,32]`, "
        "`[1,256]`), with gates already in ONNX order (i, o, f, c). `initial_h`/`initial_c` are "
        "zeros built by Shape -> Gather -> Unsqueeze -> Concat -> ConstantOfShape from the batch "
        "size. The last time step is picked by `Gather(axis=1)` with a scalar index of **-1**.",
        "- Transformer: reshape targets come from `Shape -> Gather -> Unsqueeze -> Concat` chains; "
        "scalars and small index tensors are `Constant` nodes, not initializers. The "
        "`transpose(1,2)` followed by `transpose(-2,-1)` for k is merged into one "
        "`Transpose(perm=[0,2,3,1])`. The 1/sqrt(8) scale is a `Mul` by a Constant. GELU is the erf "
        "form (opset 17 has no Gelu op). The token mean is `ReduceMean(axes=[1], keepdims=0)` "
        "(axes as attribute, opset 17).",
        "- YOLO block: `Split(axis=1)` takes its sizes `[8, 8]` from a `Constant` node; `Resize` "
        "has an empty `roi` input and `scales` `[1,1,2,2]` from a `Constant` node "
        "(mode nearest, asymmetric, floor). SiLU stays as separate `Sigmoid` + `Mul` nodes.",
    ]) + "\n")
    L.append("## Regenerating\n")
    L.append("From the repository root:\n\n```\npython3 models/make_models.py\n```\n")
    L.append("It is deterministic (fixed seeds, `torch.set_num_threads(1)`, "
             "`torch.use_deterministic_algorithms(True)`) and takes about a minute on one CPU core. "
             "Produced with:\n")
    for k, v in versions.items():
        L.append(f"- {k} {v}")
    L.append("\nOther versions of torch may export slightly different graphs (node names, "
             "plumbing ops); other CPUs/BLAS builds may give slightly different weights.\n")
    L.append("## Licence\n")
    L.append("The digits data ships with scikit-learn (BSD-3-Clause licence; originally the UCI ML "
             "\"Optical Recognition of Handwritten Digits\" test set). The models and `.npy` files "
             "here are derived from it by `make_models.py`.")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    sys.exit(main())
