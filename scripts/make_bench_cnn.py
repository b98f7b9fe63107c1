#!/usr/bin/env python3
"""Big CNN exports for scripts/bench.sh (issue 13): torchvision DenseNet-161 and ResNet-50 with
random weights (weights=None: nothing is downloaded), exported by torch.onnx (TorchScript path,
opset 17) into the given folder. Deterministic (seed 0). Not committed (115 MB + 102 MB).

  python3 scripts/make_bench_cnn.py target/bench-models
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench-models"
os.makedirs(out, exist_ok=True)
for name in ["densenet161", "resnet50"]:
    path = os.path.join(out, f"{name}.onnx")
    if os.path.exists(path):
        continue
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(m, x, path, opset_version=17, input_names=["x"], output_names=["y"], dynamo=False)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
