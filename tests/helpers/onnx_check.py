#!/usr/bin/env python3
"""Cross-check a structural rewrite with onnx + onnxruntime (independent of tract).

  python3 onnx_check.py PRUNED.onnx MASKED.onnx [--input NAME=FILE.npy ...] [--dim NAME=V ...] [--tol 1e-4]

Checks PRUNED (and MASKED) with onnx.checker (full_check) and strict shape inference, runs both
in onnxruntime with graph optimisations OFF (at the default level onnxruntime runs a Conv whose
input channels no longer match its weight and returns garbage), and compares every output:
rel = max|pruned - masked| / max(max|masked|, 1e-6). Prints one JSON line.

Exit codes: 0 ok, 1 check failed, 77 python packages missing (the caller skips).
"""
import json
import sys

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:  # pragma: no cover
    print(json.dumps({"skip": f"python packages missing: {e}"}))
    sys.exit(77)

DT = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
      "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def check(path):
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    onnx.shape_inference.infer_shapes(m, strict_mode=True, check_type=True)


def session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    args = sys.argv[1:]
    pos = [a for a in args if not a.startswith("--") and "=" not in a]
    opts = {}
    i = 0
    while i < len(args):
        if args[i] in ("--input", "--dim", "--tol"):
            opts.setdefault(args[i], []).append(args[i + 1])
            i += 2
        else:
            i += 1
    pruned, masked = pos[0], pos[1]
    tol = float(opts.get("--tol", ["1e-4"])[0])
    files = dict(s.split("=", 1) for s in opts.get("--input", []))
    dims = dict(s.split("=", 1) for s in opts.get("--dim", []))
    out = {"ok": False}
    try:
        check(pruned)
        check(masked)
    except Exception as e:
        out["error"] = "checker: " + str(e).splitlines()[0][:400]
        print(json.dumps(out))
        return 1
    rng = np.random.default_rng(0)
    sp, sm = session(pruned), session(masked)
    feed = {}
    for inp in sm.get_inputs():
        if inp.name in files:
            feed[inp.name] = np.load(files[inp.name])
            continue
        shape = [d if isinstance(d, int) and d > 0 else int(dims.get(str(d), 2)) for d in inp.shape]
        dt = DT.get(inp.type, np.float32)
        if np.issubdtype(dt, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dt)
        else:
            feed[inp.name] = rng.integers(0, 2, shape).astype(dt)
    yp, ym = sp.run(None, feed), sm.run(None, feed)
    worst = 0.0
    for a, b in zip(yp, ym):
        if a.shape != b.shape:
            out["error"] = f"output shapes differ: {a.shape} vs {b.shape}"
            print(json.dumps(out))
            return 1
        if np.issubdtype(b.dtype, np.floating) and b.size:
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            rel = float(np.max(np.abs(a64 - b64)) / max(float(np.max(np.abs(b64))), 1e-6))
            worst = max(worst, rel)
    out["rel"] = worst
    out["ok"] = worst <= tol
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
