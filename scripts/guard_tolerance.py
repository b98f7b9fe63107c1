#!/usr/bin/env python3
"""How the fidelity guard's tolerance was chosen: for each trained model in models/ and each β,
EMP's cut as is (`--beta B --guard off`, no calibration) measured two ways with onnxruntime:
the outputs' relative L2 error on 256 standard-normal inputs (what the guard sees) and the
test accuracy change in points (what a user sees).

    cargo build --release && python3 scripts/guard_tolerance.py [1.0 1.2 1.3 ...]
        [--structured channels|heads] [--models a,b]

--structured: the same for a structural mode's cut (default: per-weight); --models: only these.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "onnx-emp")
MODELS = {  # model: (test inputs, labels)
    "yolo_block": ("digits_test_x1x8x8", "digits_test_y"),
    "digits_lstm": ("digits_test_x8x8", "digits_test_y"),
    "digits_cnn": ("digits_test_x1x8x8", "digits_test_y"),
    "digits_mlp": ("digits_test_x64", "digits_test_y"),
    "digits_cnn_flatten": ("digits_test_x1x8x8", "digits_test_y"),
    "digits_transformer": ("digits_test_x8x8", "digits_test_y"),
    "fmnist_mobilenet": ("fmnist_test_x", "fmnist_test_y"),
    "fmnist_resnet": ("fmnist_test_x", "fmnist_test_y"),
    "fmnist_vit": ("fmnist_test_x", "fmnist_test_y"),
    "fmnist_shufflenet": ("fmnist_test_x", "fmnist_test_y"),
}


def logits(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def option(name):
    if name not in sys.argv:
        return None
    i = sys.argv.index(name)
    value = sys.argv[i + 1]
    del sys.argv[i:i + 2]
    return value


def main():
    mode = option("--structured")
    only = option("--models")
    betas = [float(b) for b in sys.argv[1:]] or [1.0, 1.2, 1.3]
    models = {m: v for m, v in MODELS.items() if not only or m in only.split(",")}
    tmp = tempfile.mkdtemp()
    print("| model | " + " | ".join(f"β = {b}" for b in betas) + " |")
    print("|---|" + "---|" * len(betas))
    for m, (x, y) in models.items():
        tx = np.load(os.path.join(ROOT, "models", f"{x}.npy"))
        ty = np.load(os.path.join(ROOT, "models", f"{y}.npy"))
        r = np.random.default_rng(0).standard_normal((256,) + tx.shape[1:]).astype(np.float32)
        dense = os.path.join(ROOT, "models", f"{m}.onnx")
        d_t, d_r = logits(dense, tx), logits(dense, r)
        cells = []
        for b in betas:
            out = os.path.join(tmp, f"{m}-{b}.onnx")
            extra = ["--structured", mode] if mode else []
            subprocess.run([BIN, dense, out, "--force", "--no-verify", "--quiet", "--beta", str(b), "--guard", "off"]
                           + extra, check=True)
            p_t, p_r = logits(out, tx), logits(out, r)
            lost = 100 * ((d_t.argmax(1) == ty).mean() - (p_t.argmax(1) == ty).mean())
            cells.append(f"{rel(d_r, p_r):.2f} → {-lost:+.1f}")
        print(f"| {m} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
