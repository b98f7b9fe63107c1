#!/usr/bin/env python3
"""Does a pruned model still quantize? (issue 11: "a pruned model must still quantize, and a
quantized one should prune".)

For each trained Fashion-MNIST CNN in models/: prune the float model with EMP's structured cut
and reconstruction (`onnx-emp --structured channels --beta 0.8 --calibration`), then quantize
both the dense and the pruned float model with onnxruntime's `quantize_static` (QDQ format,
int8 activations, per-channel int8 weights, calibrated on the first 128 calibration images),
and measure in onnxruntime (default optimisation level, 1 thread): test accuracy of all four
models, and the int8 models' latency, pruned vs dense, interleaved at batch 1. For comparison,
the other order: quantize first, then prune the QDQ model (`--beta 0.8 --calibration`: the
refit reads the int8 weights dequantized and writes them back requantized, `src/reconstruct/quant.rs`).

    cargo build --release && python3 scripts/quantize_pruned.py [--budget 3] [models...]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

ort.set_default_logger_severity(3)  # no warnings about the quantizer's unused Clip constants
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
MODELS = ["fmnist_mobilenet", "fmnist_resnet", "fmnist_shufflenet"]


def quantize(src, dst, calib):
    name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 1]} for i in range(min(128, len(calib)))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def accuracy(path, x, y):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {name: x[i:i + 100]})[0].argmax(-1) for i in range(0, len(x), 100)])
    return float((pred == y).mean())


def prune(src, dst, extra):
    rep = dst + ".json"
    cmd = [BIN, src, dst, "--structured", "channels", "--beta", "0.8", "--calibration",
           os.path.join(ROOT, "models", "fmnist_calib_x.npy"), "--no-latency", "--quiet", "--force",
           "--report", rep] + extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    r = json.load(open(rep))
    return 1 - r["macs_after"] / r["macs_before"], r


def main():
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 3.0
    names = [a for a in sys.argv[1:] if not a.startswith("--") and not a.replace(".", "").isdigit()] or MODELS
    calib = np.load(os.path.join(ROOT, "models", "fmnist_calib_x.npy")).astype(np.float32)
    x = np.load(os.path.join(ROOT, "models", "fmnist_test_x.npy")).astype(np.float32)
    y = np.load(os.path.join(ROOT, "models", "fmnist_test_y.npy"))
    import ort_latency as ol
    import statistics
    import time

    print("| model | dense float | dense int8 | pruned float (MACs cut) | pruned, then int8 | int8 latency pruned/dense (ORT) | int8, then pruned + reconstruction (MACs cut) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for m in names:
            dense = os.path.join(ROOT, "models", f"{m}.onnx")
            p = lambda tag: os.path.join(d, f"{m}_{tag}.onnx")
            cut, _ = prune(dense, p("pruned"), [])
            quantize(dense, p("dense_q"), calib)
            quantize(p("pruned"), p("pruned_q"), calib)
            _, rq = prune(p("dense_q"), p("q_pruned"), [])
            accs = [accuracy(q, x, y) for q in (dense, p("dense_q"), p("pruned"), p("pruned_q"), p("q_pruned"))]
            # int8 latency, interleaved at batch 1
            sess = [ol.session(q, 1) for q in (p("dense_q"), p("pruned_q"))]
            feeds = [ol.feeds(s, x, 1) for s in sess]
            times = [[], []]
            t0 = time.time()
            while time.time() - t0 < 2 * budget:
                for i, (s, f) in enumerate(zip(sess, feeds)):
                    t = time.perf_counter()
                    s.run(None, f)
                    times[i].append(time.perf_counter() - t)
            ratio = statistics.median(times[1]) / statistics.median(times[0])
            skipped = sum(1 for l in (rq.get("reconstruction") or {}).get("layers", []) if l["method"] == "skipped")
            qcut = 1 - rq["macs_after"] / rq["macs_before"]
            pct = lambda a: f"{100 * a:.1f}"
            print(f"| {m} | {pct(accs[0])} | {pct(accs[1])} | {pct(accs[2])} (−{100 * cut:.1f} %) | "
                  f"**{pct(accs[3])}** | {ratio:.2f}× | **{pct(accs[4])}** (−{100 * qcut:.1f} %; {skipped} layers not refitted) |", flush=True)


if __name__ == "__main__":
    main()
