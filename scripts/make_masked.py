#!/usr/bin/env python3
"""A model pruned elsewhere with masks, as users bring them: train a Fashion-MNIST net (models/
make_trained.py's architectures and data) 2 epochs dense, mask 30 % of every Conv's output
channels with torch's `ln_structured` (L2, dim 0), fine-tune 1 epoch under the masks, remove the
reparametrisation and export (BatchNorm folded: each zeroed channel emits its β, a constant).

    python3 scripts/make_masked.py resnet|mobilenet [AMOUNT] [OUT_DIR]   (default 0.3, target/masked)

Then, e.g.:
    ./target/release/onnx-emp target/masked/resnet_masked.onnx o.onnx --structured channels \
        --inputs models/fmnist_test_x.npy --labels models/fmnist_test_y.npy --no-latency [--round-to 1]

About 5 min (ResNet) and 13 min (MobileNetV2) on 2 cores. Seeded; torch's kernels may still
differ between machines, so the figures are reproduced in kind, not to the digit.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))
import make_trained as mt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.utils.prune as prune  # noqa: E402

torch.set_num_threads(1)
name = sys.argv[1]
amount = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
out_dir = sys.argv[3] if len(sys.argv) > 3 else "target/masked"
cls = {"resnet": mt.ResNet, "mobilenet": mt.MobileNet}[name]
xtr, ytr, xca, yca, xte, yte = mt.load_data()
torch.manual_seed(7)
t0 = time.time()
m = mt.train(cls(), xtr, ytr, 2, 3e-3, 1e-4, 7)
print("dense test accuracy", mt.accuracy(m(torch.from_numpy(xte)).detach().numpy(), yte), flush=True)
for mod in m.modules():
    if isinstance(mod, nn.Conv2d):
        prune.ln_structured(mod, "weight", amount=amount, n=2, dim=0)
m = mt.train(m, xtr, ytr, 1, 1e-3, 1e-4, 8)
for mod in m.modules():
    if isinstance(mod, nn.Conv2d):
        prune.remove(mod, "weight")
with torch.no_grad():
    ref = m(torch.from_numpy(xte)).numpy()
print("masked test accuracy", mt.accuracy(ref, yte), f"{time.time() - t0:.0f} s", flush=True)
os.makedirs(out_dir, exist_ok=True)
path = os.path.join(out_dir, f"{name}_masked.onnx")
torch.onnx.export(m, (torch.from_numpy(xte[:2]),), path, dynamo=False, opset_version=17,
                  input_names=["x"], output_names=["logits"],
                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
print("wrote", path)
