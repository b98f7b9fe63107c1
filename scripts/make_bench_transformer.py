#!/usr/bin/env python3
"""Benchmark model for reconstruction timing: a BERT-like float32 encoder with random weights.

  python3 scripts/make_bench_transformer.py [OUTDIR]   (default: target/bench-models)

Writes OUTDIR/bench_transformer_100mb.onnx (opset 17, input "x" [batch, 64, 768] float embeddings,
dynamic axis "batch"; output "logits" [batch, 10] from token 0) plus bench_transformer_calib_x.npy (256 samples)
and bench_transformer_test_x.npy (8 samples), random normal. 4 post-norm encoder layers, d_model 768,
12 heads, FFN 3072, hand-written so the export is plain MatMul/Add/Softmax/LayerNormalization:
28.4 M parameters, ~113 MB. Seeded: same files on every run. Needs torch + onnxscript.
"""
import os
import sys

import numpy as np
import torch
from torch import nn

D, H, FF, LAYERS, SEQ, CLASSES = 768, 12, 3072, 4, 64, 10


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(D, FF), nn.Linear(FF, D)
        self.n1, self.n2 = nn.LayerNorm(D), nn.LayerNorm(D)

    def forward(self, x):
        b = x.shape[0]
        split = lambda t: t.reshape(b, SEQ, H, D // H).transpose(1, 2)  # [b, H, S, dh]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, dim=-1) @ v
        x = self.n1(x + self.o(a.transpose(1, 2).reshape(b, SEQ, D)))
        return self.n2(x + self.ff2(torch.relu(self.ff1(x))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*(Layer() for _ in range(LAYERS)))
        self.head = nn.Linear(D, CLASSES)

    def forward(self, x):
        return self.head(self.layers(x)[:, 0])  # CLS-style pooling (mean would need opset 18 ReduceMean)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "bench-models")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = Encoder().eval()
    path = os.path.join(out, "bench_transformer_100mb.onnx")
    torch.onnx.export(model, (torch.randn(2, SEQ, D),), path, opset_version=17,
                      input_names=["x"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, external_data=False)
    rng = np.random.default_rng(0)
    for name, n in (("calib", 256), ("test", 8)):
        np.save(os.path.join(out, f"bench_transformer_{name}_x.npy"),
                rng.standard_normal((n, SEQ, D), dtype=np.float32))
    params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {params} params, {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
