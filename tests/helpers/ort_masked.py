#!/usr/bin/env python3
"""Check a head-pruned model against its masked twin with onnxruntime (optimisations off).

usage: ort_masked.py MASKED PRUNED [DENSE]

- onnx.checker.check_model(full_check=True) and strict shape inference on PRUNED (contrib-op
  domains such as com.microsoft are skipped by the checker, as onnx does not know them);
- runs MASKED and PRUNED (and DENSE, if given) on the same deterministic random inputs
  (named dims: batch 2, everything else 7; int64 *_ids in [0, 100), int64 masks of ones with
  the last position of the first row zero; float inputs standard normal) with
  ORT_DISABLE_ALL, and prints one JSON line: max relative error masked vs pruned (max |a-b| /
  max |a|), and dense vs pruned when DENSE is given.

Exit status: 0 ok, 1 check failed, 77 skipped (onnx/onnxruntime/numpy missing).
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover
    print(json.dumps({"skipped": f"python module missing: {e.name}"}))
    sys.exit(77)


def feeds_for(sess):
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else (2 if "batch" in str(d) else 7) for d in i.shape]
        if i.type == "tensor(int64)":
            if "mask" in i.name:
                v = np.ones(shape, dtype=np.int64)
                if v.ndim == 2 and v.shape[1] > 1:
                    v[0, -1] = 0
            else:
                v = rng.integers(0, 100, shape, dtype=np.int64)
        elif i.type == "tensor(int32)":
            v = rng.integers(0, 100, shape).astype(np.int32)
        elif i.type == "tensor(bool)":
            v = np.ones(shape, dtype=bool)
        else:
            v = rng.standard_normal(shape).astype(np.float32)
        feeds[i.name] = v
    return feeds


def run(path, feeds=None):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = feeds if feeds is not None else feeds_for(sess)
    return sess.run(None, feeds), feeds


def rel(a, b):
    return float(max(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12) for x, y in zip(a, b)))


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    masked, pruned = sys.argv[1], sys.argv[2]
    m = onnx.load(pruned)
    onnx.checker.check_model(m, full_check=True)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    out_m, feeds = run(masked)
    out_p, _ = run(pruned, feeds)
    res = {"max_rel_masked_vs_pruned": rel(out_m, out_p), "outputs": [list(o.shape) for o in out_p]}
    if len(sys.argv) > 3:
        out_d, _ = run(sys.argv[3], feeds)
        res["max_rel_dense_vs_pruned"] = rel(out_d, out_p)
    print(json.dumps(res))
    sys.exit(0 if res["max_rel_masked_vs_pruned"] <= 1e-4 else 1)


if __name__ == "__main__":
    main()
