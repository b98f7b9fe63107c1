#!/usr/bin/env python3
"""Train the over-parameterised Fashion-MNIST models used to measure pruning fidelity.

Usage (from the repository root):  python3 models/make_trained.py [NAME ...]
(NAME: train only those models; the data files are written every time, identically)

Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist), 28x28 grey images, 10 classes; nothing is downloaded.
Pixels are scaled to [0, 1] and standardised with the training mean/std inside the model input
convention (x = (p/255 - 0.2860) / 0.3530).

Splits (disjoint):
  * train: 15,000 images of the official training set (seeded shuffle);
  * calibration: 256 images of the official training set that are NOT used for training
    (`fmnist_calib_x.npy`, labels `fmnist_calib_y.npy`);
  * test: the first 1,000 images of the official test set (`fmnist_test_x.npy`, `fmnist_test_y.npy`).

Models (opset 17, TorchScript exporter, BatchNorm folded into Conv on export, dynamic batch):
  * fmnist_mobilenet.onnx: MobileNetV2-style (inverted residuals, depthwise 3x3, ReLU6, BN);
  * fmnist_resnet.onnx: ResNet-style (basic blocks with BN and 1x1 projection shortcuts);
  * fmnist_vit.onnx: a small ViT (4x4 patch Conv embedding, 2 pre-LN encoder blocks, 4 heads);
  * fmnist_resnet_gn.onnx: fmnist_resnet with GroupNorm(8, C) instead of BatchNorm;
  * fmnist_shufflenet.onnx: ShuffleNet V2 units (torchvision's, channel split + channel shuffle),
    widths 116 and 232 (torchvision's 1.0x);
  * fmnist_cbam.onnx, fmnist_coordatt.onnx: two conv stages (64, 128) with a CBAM or a
    coordinate-attention block each (make_zoo.py's blocks);
  * fmnist_poolformer.onnx: make_zoo.py's PoolFormer (GroupNorm(1, C) streams), 1-channel stem.

Deterministic: fixed seeds, deterministic torch algorithms. Each export is checked with
onnx.checker (full check) and onnxruntime (optimisations off) against torch within 1e-4.
"""
import gzip
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import onnx
import onnxruntime as ort

OUT = os.path.dirname(os.path.abspath(__file__))
DATA = "/usr/share/datasets/fashion-mnist"
OPSET = 17
SEED = 0
N_TRAIN = 15000
N_CALIB = 256
N_TEST = 1000
MEAN, STD = 0.2860, 0.3530

warnings.filterwarnings("ignore")
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
torch.use_deterministic_algorithms(True)


def read_idx(name):
    with gzip.open(os.path.join(DATA, name), "rb") as f:
        b = f.read()
    magic = int.from_bytes(b[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(b[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(b, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data():
    xtr = read_idx("train-images-idx3-ubyte.gz")
    ytr = read_idx("train-labels-idx1-ubyte.gz").astype(np.int64)
    xte = read_idx("t10k-images-idx3-ubyte.gz")
    yte = read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    perm = np.random.RandomState(SEED).permutation(len(xtr))
    tr, ca = perm[:N_TRAIN], perm[N_TRAIN:N_TRAIN + N_CALIB]

    def norm(x):
        return ((x.astype(np.float32) / 255.0 - MEAN) / STD)[:, None, :, :].astype(np.float32)

    return (norm(xtr[tr]), ytr[tr], norm(xtr[ca]), ytr[ca], norm(xte[:N_TEST]), yte[:N_TEST])


# --------------------------------------------------------------------------- models
def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        self.res = stride == 1 and cin == cout
        layers = []
        if t != 1:
            layers.append(conv_bn(cin, hid, 1))
        layers += [conv_bn(hid, hid, 3, stride, groups=hid), conv_bn(hid, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.res else y


class MobileNet(nn.Module):
    # (expansion t, out channels c, repeats n, first stride s), MobileNetV2's table scaled down
    CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 2, 1), (6, 96, 1, 2)]

    def __init__(self):
        super().__init__()
        layers = [conv_bn(1, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.CFG:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 320, 1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(320, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def group_norm(c):
    """GroupNorm(8, C): groups of 4, 8 and 16 channels at widths 32, 64 and 128."""
    return nn.GroupNorm(8, c)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, norm=nn.BatchNorm2d):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = norm(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class ResNet(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), norm(32), nn.ReLU())
        self.layers = nn.Sequential(
            BasicBlock(32, 32, 1, norm), BasicBlock(32, 32, 1, norm),
            BasicBlock(32, 64, 2, norm), BasicBlock(64, 64, 1, norm),
            BasicBlock(64, 128, 2, norm), BasicBlock(128, 128, 1, norm))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(self.layers(self.stem(x)).mean((2, 3)))


class EncoderLayer(nn.Module):
    """Pre-LN encoder layer written out with MatMuls (no fused attention)."""

    def __init__(self, d, heads, ff):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.ln1 = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d)
        self.ff1 = nn.Linear(d, ff)
        self.ff2 = nn.Linear(ff, d)
        self.scale = 1.0 / math.sqrt(self.dh)

    def forward(self, x):
        B, T, D = x.shape
        h = self.ln1(x)
        q = self.q(h).reshape(B, T, self.h, self.dh).transpose(1, 2)
        k = self.k(h).reshape(B, T, self.h, self.dh).transpose(1, 2)
        v = self.v(h).reshape(B, T, self.h, self.dh).transpose(1, 2)
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.o(a)
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self, d=64, heads=4, ff=256, depth=2):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 49, d) * 0.02)
        self.layers = nn.ModuleList([EncoderLayer(d, heads, ff) for _ in range(depth)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln(x).mean(dim=1))


class ShuffleNet(nn.Module):
    """ShuffleNet V2 (torchvision's own InvertedResidual: channel split by chunk, channel shuffle
    by view/transpose/view) at torchvision's 1.0x widths 116 and 232, for 28x28 inputs: stride-1
    stem, no max pool, two stages."""

    def __init__(self):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual as Unit
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.stage2 = nn.Sequential(Unit(24, 116, 2), Unit(116, 116, 1), Unit(116, 116, 1))
        self.stage3 = nn.Sequential(Unit(116, 232, 2), Unit(232, 232, 1), Unit(232, 232, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(232, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU())
        self.fc = nn.Linear(512, 10)

    def forward(self, x):
        return self.fc(self.conv5(self.stage3(self.stage2(self.stem(x)))).mean((2, 3)))


SPECS = [
    # name, class, epochs, lr, weight decay
    ("fmnist_mobilenet", MobileNet, 5, 4e-3, 1e-4),
    ("fmnist_resnet", ResNet, 4, 3e-3, 1e-4),
    ("fmnist_vit", ViT, 8, 2e-3, 5e-2),
    ("fmnist_shufflenet", ShuffleNet, 4, 4e-3, 1e-4),
    # fmnist_resnet with GroupNorm(8, C) for every BatchNorm (ResNet-GN, as detection heads and
    # small-batch training use it): not foldable, exported as Reshape → InstanceNormalization →
    # Reshape → Mul → Add.
    ("fmnist_resnet_gn", lambda: ResNet(group_norm), 4, 3e-3, 1e-4),
    # Attention blocks inside CNNs, built from models/make_zoo.py's blocks (the zoo proves them
    # prunable on random weights; these say whether pruning them is useful): two conv stages of
    # 64 and 128 channels with a 2 × 2 max-pool between, a CBAM block (channel gate: one MLP
    # applied to the average- and the max-pooled channels; spatial gate: the channels' max and
    # mean per pixel) or a coordinate-attention block after each stage.
    ("fmnist_cbam", lambda: attention_net("CBAM"), 3, 4e-3, 1e-4),
    ("fmnist_coordatt", lambda: attention_net("CoordAtt"), 3, 4e-3, 1e-4),
    # zoo_poolformer's PoolFormer (GroupNorm(1, C) on its residual streams), a 1-channel 4 × 4 stem.
    ("fmnist_poolformer", lambda: poolformer(), 3, 4e-3, 1e-4),
]


def attention_net(block):
    import make_zoo
    return make_zoo.AttentionNet(getattr(make_zoo, block), cin=1, widths=(64, 128), pool=True)


def poolformer():
    import make_zoo
    m = make_zoo.PoolFormerNet()
    m.stem = nn.Conv2d(1, 32, 4, 4)
    return m


def train(model, x, y, epochs, lr, wd, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    bs = 128
    steps = math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.15)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), bs):
            idx = perm[i:i + bs]
            xb = xt[idx]
            # light augmentation: random horizontal flip
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  epoch {ep + 1}/{epochs} loss {loss.item():.3f}", flush=True)
    model.eval()
    return model


def accuracy(logits, y):
    return float((logits.argmax(1) == y).mean())


def main():
    only = sys.argv[1:]
    xtr, ytr, xca, yca, xte, yte = load_data()
    for fn, arr in (("fmnist_calib_x.npy", xca), ("fmnist_calib_y.npy", yca),
                    ("fmnist_test_x.npy", xte), ("fmnist_test_y.npy", yte)):
        np.save(os.path.join(OUT, fn), arr)
    manifest_path = os.path.join(OUT, "trained_manifest.json")
    manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
    for i, (name, cls, epochs, lr, wd) in enumerate(SPECS):
        if only and name not in only:
            continue
        t0 = time.time()
        seed = SEED + 100 * (i + 1)
        torch.manual_seed(seed)
        print(f"{name}: training", flush=True)
        model = train(cls(), xtr, ytr, epochs, lr, wd, seed)
        with torch.no_grad():
            ref = model(torch.from_numpy(xte)).numpy()
        path = os.path.join(OUT, name + ".onnx")
        torch.onnx.export(model, (torch.from_numpy(xte[:2]),), path, dynamo=False, opset_version=OPSET,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        got = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]).run(None, {"x": xte})[0]
        err = float(np.abs(got - ref).max() / max(1e-6, np.abs(ref).max()))
        assert err < 1e-4, f"{name}: onnxruntime differs from torch by {err}"
        n_params = sum(p.numel() for p in model.parameters())
        manifest[name] = {
            "params": n_params,
            "epochs": epochs,
            "torch_test_acc": accuracy(ref, yte),
            "onnx_test_acc": accuracy(got, yte),
            "onnx_calib_acc": accuracy(ort.InferenceSession(path, so).run(None, {"x": xca})[0], yca),
            "bytes": os.path.getsize(path),
            "nodes": len(m.graph.node),
            "train_seconds": round(time.time() - t0, 1),
        }
        print(f"{name}: {manifest[name]}", flush=True)
    manifest["_data"] = {"train": N_TRAIN, "calib": N_CALIB, "test": N_TEST, "torch": torch.__version__,
                         "source": "Debian dataset-fashion-mnist"}
    json.dump(manifest, open(manifest_path, "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
