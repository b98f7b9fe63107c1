#!/usr/bin/env python3
"""Where a pruned model's time goes in onnxruntime: per-node kernel time, dense vs pruned.

    python3 scripts/ort_profile.py DENSE.onnx PRUNED.onnx [--runs 300] [--top 25]
        [--cut TENSOR]

onnxruntime at its default optimisation level (as a user runs it), 1 thread, batch 1 (dynamic
dimensions = 1), seeded uniform inputs. Its profiler records each node's kernel time; the median
over `--runs` runs is printed per node (matched by the name onnxruntime gives it, fused nodes
included), slowest dense node first, then summed per op type. The `ratio` column is pruned/dense:
a node whose MACs fell but whose ratio stays near 1 is where a MACs cut does not become time.

--cut TENSOR: time only what follows TENSOR (e.g. a stem's output): both models are cut there
with onnx.utils.extract_model (TENSOR becomes the input, batch 1) into a temporary folder, so
that a part kept whole by a floor does not hide how the pruned part runs.
"""
import argparse
import collections
import json
import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort


def after(src, tensor, dst):
    """The part of `src` from `tensor` to the graph outputs, batch 1, no stale value_info."""
    outs = [o.name for o in onnx.load(src).graph.output]
    onnx.utils.extract_model(src, dst, [tensor], outs)
    m = onnx.load(dst)
    del m.graph.value_info[:]
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = 1
    onnx.save(m, dst)
    return dst


def profile(path, runs, tmp):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tmp, "ort")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(0)
    feeds = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = rng.rand(*shape).astype(np.float32)
    for _ in range(runs):
        s.run(None, feeds)
    with open(s.end_profiling()) as f:
        events = json.load(f)
    t = collections.defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            t[(e["name"][: -len("_kernel_time")], e["args"].get("op_name", "?"))].append(e["dur"])
    return {k: float(np.median(v)) for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dense")
    ap.add_argument("pruned")
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cut", help="time only what follows this tensor")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dense, pruned = a.dense, a.pruned
        if a.cut:
            dense = after(dense, a.cut, os.path.join(tmp, "dense.onnx"))
            pruned = after(pruned, a.cut, os.path.join(tmp, "pruned.onnx"))
        d, p = profile(dense, a.runs, tmp), profile(pruned, a.runs, tmp)
    td, tp = sum(d.values()), sum(p.values())
    print(f"kernel time, median per node over {a.runs} runs: {td:.0f} → {tp:.0f} µs ({tp / td:.3f}×)")
    print(f"{'dense µs':>9} {'pruned µs':>9} {'ratio':>6} {'share':>6}  op / node")
    for k in sorted(d, key=lambda k: -d[k])[: a.top]:
        pk = p.get(k)
        ratio = f"{pk / d[k]:.2f}" if pk is not None and d[k] > 0 else "  -"
        pk = f"{pk:9.1f}" if pk is not None else "        -"
        print(f"{d[k]:9.1f} {pk} {ratio:>6} {d[k] / td:6.1%}  {k[1]} {k[0]}")
    only = sorted(set(p) - set(d))
    if only:
        print(f"pruned only: {', '.join(f'{n} ({o})' for n, o in only)}")
    print("\nper op type:")
    by = collections.defaultdict(lambda: [0.0, 0.0])
    for k, v in d.items():
        by[k[1]][0] += v
    for k, v in p.items():
        by[k[1]][1] += v
    for op, (x, y) in sorted(by.items(), key=lambda kv: -kv[1][0]):
        ratio = f"{y / x:.2f}" if x > 0 else "  -"
        print(f"{x:9.1f} {y:9.1f} {ratio:>6} {x / td:6.1%}  {op}")


if __name__ == "__main__":
    main()
