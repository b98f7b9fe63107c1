#!/usr/bin/env python3
"""Latency of dense vs pruned models in onnxruntime, measured interleaved.

Usage: python3 scripts/ort_latency.py DENSE.onnx PRUNED.onnx [PRUNED2.onnx ...] [--x X.npy]
       [--batch 1] [--budget 3] [--threads 1]

onnxruntime runs at its default optimisation level (ORT_ENABLE_ALL, as a user gets it), on
`--threads` intra-op threads. Runs alternate between the models (dense, pruned, dense, ...) so
that machine noise hits all of them alike, until the time budget is spent; the median per
model is printed as JSON: {"path": ms, ...} plus the ratio pruned/dense.
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnxruntime as ort


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds(sess, x, batch):
    out = {}
    for i in sess.get_inputs():
        if x is not None and len(sess.get_inputs()) == 1:
            out[i.name] = x[:batch]
        else:
            shape = [batch if not isinstance(d, int) else d for d in i.shape]
            out[i.name] = np.random.RandomState(0).rand(*shape).astype(np.float32)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--x")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    x = np.load(a.x) if a.x else None
    sess = [session(p, a.threads) for p in a.models]
    fd = [feeds(s, x, a.batch) for s in sess]
    for s, f in zip(sess, fd):  # warm-up
        for _ in range(3):
            s.run(None, f)
    times = [[] for _ in sess]
    t_end = time.perf_counter() + a.budget
    while time.perf_counter() < t_end or min(len(t) for t in times) < 5:
        for k, (s, f) in enumerate(zip(sess, fd)):
            t0 = time.perf_counter()
            s.run(None, f)
            times[k].append((time.perf_counter() - t0) * 1e3)
    med = [statistics.median(t) for t in times]
    out = {"runs": len(times[0]), "median_ms": dict(zip(a.models, med)),
           "ratio_to_first": [m / med[0] for m in med]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
