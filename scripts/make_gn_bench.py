#!/usr/bin/env python3
"""A ResNet-50-style GroupNorm CNN at 224 × 224 for checking GroupNorm pruning at deployment
size: the stem (7 × 7 conv, GroupNorm, max pool), three bottleneck blocks at 256 wide and two at
512 (ResNet-50's first two stages), GroupNorm(32, C) after every conv as ResNet-GN and Detectron's
heads use it (groups of 2, 4, 8 and 16 channels), random weights and GroupNorm affines (seeded).
Written twice into the given folder: `r50gn.onnx` (TorchScript, opset 17: Reshape →
InstanceNormalization → Reshape → Mul → Add) and `r50gn_op.onnx` (dynamo, opset 21:
GroupNormalization). Not committed (5.6 MB each).

  python3 scripts/make_gn_bench.py target/gn
  ./target/release/onnx-emp target/gn/r50gn.onnx out.onnx --structured channels --beta 0.7 --include stem
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


def gn(c):
    return nn.GroupNorm(32, c)


class Bottleneck(nn.Module):
    def __init__(self, cin, mid, cout, stride):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(cin, mid, 1, bias=False), gn(mid)
        self.c2, self.n2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), gn(mid)
        self.c3, self.n3 = nn.Conv2d(mid, cout, 1, bias=False), gn(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), gn(cout))

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = F.relu(self.n2(self.c2(y)))
        y = self.n3(self.c3(y))
        return F.relu(y + (x if self.sc is None else self.sc(x)))


class ResNetGN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), gn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.l1 = nn.Sequential(Bottleneck(64, 64, 256, 1), Bottleneck(256, 64, 256, 1), Bottleneck(256, 64, 256, 1))
        self.l2 = nn.Sequential(Bottleneck(256, 128, 512, 2), Bottleneck(512, 128, 512, 1))
        self.fc = nn.Linear(512, 1000)

    def forward(self, x):
        return self.fc(self.l2(self.l1(self.stem(x))).mean((2, 3)))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/gn"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    m = ResNetGN().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.GroupNorm):
                mod.weight.copy_(1 + 0.2 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(m, (x,), os.path.join(out, "r50gn.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(m, (x,), os.path.join(out, "r50gn_op.onnx"), dynamo=True, opset_version=21,
                      input_names=["x"], output_names=["y"], dynamic_shapes=({0: batch},), external_data=False)


if __name__ == "__main__":
    main()
