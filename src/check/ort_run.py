"""Run two ONNX models in onnxruntime on the same inputs and save their outputs (onnx-emp's
masked-equivalence for models tract cannot run). Embedded in the onnx-emp binary.

usage: ort_run.py --serve, then one request per stdin line, a JSON list of arguments:
       MODEL_A MODEL_B OUT_DIR NAME=FILE.npy ...   (MODEL_B "-": run MODEL_A only)
       --time BUDGET_S RUNS MODEL_A MODEL_B OUT_DIR NAME=FILE.npy ...
       --shapes MODEL_A - OUT_DIR NAME=FILE.npy ...

Optimisations off, CPU. Writes OUT_DIR/a_<i>.npy and OUT_DIR/b_<i>.npy (float32; a sequence of
maps, scikit-learn's ZipMap output, as rows of its values in key order) and answers
{"outputs": [names], "dtypes": [MODEL_A's output types, before the cast]}. With --time: latency
as a deployment sees it instead (onnxruntime's default optimisation level, 1 thread, CPU): one warm-up run each, then one run of each model in
turn until each has had BUDGET_S seconds (at least one run, at most 10 000), or exactly RUNS runs
when RUNS > 0; answers {"version": ..., "latency": [{"median_ms", "min_ms", "runs"} per model]}.
With --shapes: one run (optimisations off), answering {"shapes": {output name: dims}} and writing
nothing (onnx-emp's MAC count of a model whose every value it made an output).

One process serves many requests (onnx-emp's fidelity guard asks dozens); each answer is one
stdout line "@@onnx-emp " + JSON, {"ok": result} or {"error": message}. The first answer is {"ready": version} or, when a module is
missing, {"skipped": why} (then exit 77)."""
import json
import re
import sys
import time
import zlib

try:
    import numpy as np
    import onnxruntime as ort

    MISSING = None
except ImportError as e:
    MISSING = f"python module missing: {e.name}"

MARK = "@@onnx-emp "


def feeds_for(sess, feeds):
    """float16 inputs arrive as float32 (exactly): cast floats to the declared float type."""
    floats = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}
    declared = {i.name: floats.get(i.type) for i in sess.get_inputs()}
    return {k: v.astype(declared[k]) if declared.get(k) and v.dtype.kind == "f" else v for k, v in feeds.items()}


def as_array(o):
    """An output as an array: a sequence of maps (scikit-learn's ZipMap: one {class: probability}
    per row) becomes rows of its values in key order, a map its values in key order, strings
    integer codes."""
    if isinstance(o, dict):
        return np.asarray([o[k] for k in sorted(o)])
    if isinstance(o, list) and o and all(isinstance(r, dict) for r in o):
        keys = sorted(o[0])
        return np.asarray([[r[k] for k in keys] for r in o])
    a = np.asarray(o)
    if a.dtype.kind in "USO":
        # String labels (a classifier's class names): each string as an integer code (its CRC-32,
        # exact in float32), compared by equality like class ids.
        return np.vectorize(lambda v: zlib.crc32(str(v).encode()) & 0xFFFFFF, otypes=[np.int64])(a)
    return a


def run_rows(sess, feeds):
    """Run `feeds`; a model that fixes axis 0 of an input to 1 is run one row at a time when more
    rows are given, its outputs concatenated on axis 0."""
    n = max((v.shape[0] for i in sess.get_inputs() if i.shape and i.shape[0] == 1
             for v in [feeds.get(i.name)] if v is not None and v.ndim and v.shape[0] > 1), default=0)
    if n == 0:
        return [as_array(o) for o in sess.run(None, feeds)]
    split = {k for k, v in feeds.items() if v.ndim and v.shape[0] == n}
    parts = [[as_array(o) for o in sess.run(None, {k: v[r:r + 1] if k in split else v for k, v in feeds.items()})]
             for r in range(n)]
    return [np.concatenate([p[j] for p in parts], axis=0) if np.ndim(parts[0][j]) else parts[0][j]
            for j in range(len(parts[0]))]


def timed(paths, feeds, budget, runs):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in paths]
    run = [feeds_for(s, feeds) for s in sessions]

    def once(k):
        t = time.perf_counter()
        sessions[k].run(None, run[k])
        return (time.perf_counter() - t) * 1e3

    for k in range(len(sessions)):
        once(k)
    times = [[] for _ in sessions]
    start = time.perf_counter()

    def enough(t):
        if runs > 0:
            return len(t) >= runs
        return len(t) > 0 and (time.perf_counter() - start >= budget * len(sessions) or len(t) >= 10_000)

    while not all(enough(t) for t in times):
        for k, t in enumerate(times):
            if not enough(t):
                t.append(once(k))
    out = []
    for t in times:
        t.sort()
        n = len(t)
        median = t[n // 2] if n % 2 else (t[n // 2 - 1] + t[n // 2]) / 2
        out.append({"median_ms": median, "min_ms": t[0], "runs": n})
    return out


def request(args):
    timing, shapes = args[0] == "--time", args[0] == "--shapes"
    if timing:
        budget, runs, args = float(args[1]), int(args[2]), args[3:]
    elif shapes:
        args = args[1:]
    a, b, out = args[:3]
    feeds = {k: np.load(v) for k, v in (x.split("=", 1) for x in args[3:])}
    if timing:
        return {"version": ort.__version__, "latency": timed([a] if b == "-" else [a, b], feeds, budget, runs)}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    if shapes:
        sess = ort.InferenceSession(a, so, providers=["CPUExecutionProvider"])
        outs = run_rows(sess, feeds_for(sess, feeds))
        return {"shapes": {o.name: list(np.shape(v)) for o, v in zip(sess.get_outputs(), outs)
                           if o.type.startswith("tensor(")}}
    names, dtypes = [], []
    for tag, path in (("a", a), ("b", b)) if b != "-" else (("a", a),):
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = run_rows(sess, feeds_for(sess, feeds))
        if tag == "a":
            dtypes = [str(o.dtype) for o in outs]
        for i, o in enumerate(outs):
            np.save(f"{out}/{tag}_{i}.npy", o.astype(np.float32))
    return {"outputs": names, "dtypes": dtypes}


def answer(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def serve():
    if MISSING:
        answer({"skipped": MISSING})
        sys.exit(77)
    answer({"ready": ort.__version__})
    for line in sys.stdin:
        try:
            answer({"ok": request(json.loads(line))})
        except Exception as e:
            # The whole message on one line, without onnxruntime's "[ONNXRuntimeError] : 2 :
            # INVALID_ARGUMENT :" prefix (its last line alone was often "Please fix either the
            # inputs/outputs or the model.", without the reason before it).
            msg = " ".join(x.strip() for x in str(e).strip().splitlines() if x.strip())
            msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
            answer({"error": f"{type(e).__name__}: {msg[:600]}"})


def main():
    if sys.argv[1:] != ["--serve"]:
        sys.exit(__doc__)
    serve()


if __name__ == "__main__":
    main()
