#!/usr/bin/env python3
"""Are the attention-in-CNN rules useful, not only valid? Trains three small nets on Fashion-MNIST
(the splits and trainer of models/make_trained.py: 15 000 training images, 3 epochs, seed 0,
THREADS torch threads, default 1) whose streams the zoo's random-weight models prove prunable:

  * cbam:  two conv stages (64, 128) with a CBAM block each (zoo_cbam's block);
  * coord: the same with coordinate attention (zoo_coordatt's block);
  * pool:  zoo_poolformer's PoolFormer (GroupNorm(1, C) streams) with a 1-channel 4 × 4 stem.

Each is exported (TorchScript, opset 17) to a temporary directory, not to models/, and pruned with
`--structured channels` twice: the default run, and β = 0.8 with the 256 calibration images
(reconstruction); accuracy on the 1 000 test images and MACs come from the JSON report.

  cargo build --release && python3 scripts/trained_attention.py [cbam coord pool]
"""
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
sys.path.insert(0, os.path.join(ROOT, "models"))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import make_trained as mt  # noqa: E402
import make_zoo as zoo  # noqa: E402


def stages(block):
    """zoo.AttentionNet at 28 × 28 grey: conv stages of 64 and 128 channels, a max-pool between."""
    return zoo.AttentionNet(block, cin=1, widths=(64, 128), pool=True)


def poolformer():
    m = zoo.PoolFormerNet()
    m.stem = nn.Conv2d(1, 32, 4, 4)
    return m


NETS = {"cbam": lambda: stages(zoo.CBAM), "coord": lambda: stages(zoo.CoordAtt), "pool": poolformer}


def prune(src, out, args):
    rep = out + ".json"
    d = os.path.join(ROOT, "models")
    cmd = [BIN, src, out, "--structured", "channels", "--inputs", f"{d}/fmnist_test_x.npy",
           "--labels", f"{d}/fmnist_test_y.npy", "--no-latency", "--report", rep, "--quiet"] + args
    subprocess.run(cmd, check=True)
    r = json.load(open(rep))
    v = r["verification"]
    return 1 - r["macs_after"] / r["macs_before"], v["accuracy_dense"], v["accuracy_pruned"]


def main():
    names = sys.argv[1:] or list(NETS)
    xtr, ytr, _, _, xte, yte = mt.load_data()
    calib = os.path.join(ROOT, "models", "fmnist_calib_x.npy")
    print("| net | dense (torch) | default: MACs cut → acc | β = 0.8 + calibration: MACs cut → acc |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            m = mt.train(NETS[name](), xtr, ytr, 3, 4e-3, 1e-4, 0)
            with torch.no_grad():
                acc = mt.accuracy(m(torch.from_numpy(xte)).numpy(), yte)
            src = os.path.join(tmp, f"{name}.onnx")
            torch.onnx.export(m, (torch.from_numpy(xte[:2]),), src, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}})
            cells = []
            for args in ([], ["--beta", "0.8", "--calibration", calib]):
                cut, dense, pruned = prune(src, os.path.join(tmp, f"{name}_out.onnx"), args)
                cells.append(f"{100 * cut:.1f} % → {100 * dense:.1f} → {100 * pruned:.1f} %")
            print(f"| {name} | {100 * acc:.1f} % | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
