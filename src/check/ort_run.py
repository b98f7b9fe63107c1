"""Run two ONNX models in onnxruntime on the same inputs and save their outputs (onnx-emp's
masked-equivalence for models tract cannot run). Embedded in the onnx-emp binary.

usage: ort_run.py MODEL_A MODEL_B OUT_DIR NAME=FILE.npy ...   (MODEL_B "-": run MODEL_A only)

Optimisations off, CPU. Writes OUT_DIR/a_<i>.npy and OUT_DIR/b_<i>.npy (float32) and prints one
JSON line {"outputs": [names]}. Exit status 77: numpy or onnxruntime missing."""
import json
import sys

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as e:
    print(json.dumps({"skipped": f"python module missing: {e.name}"}))
    sys.exit(77)


FLOATS = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}


def main():
    a, b, out = sys.argv[1:4]
    feeds = {k: np.load(v) for k, v in (x.split("=", 1) for x in sys.argv[4:])}
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    names = []
    for tag, path in (("a", a), ("b", b)) if b != "-" else (("a", a),):
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        # float16 inputs arrive as float32 (exactly): cast floats to the declared float type.
        declared = {i.name: FLOATS.get(i.type) for i in sess.get_inputs()}
        run = {k: v.astype(declared[k]) if declared.get(k) and v.dtype.kind == "f" else v for k, v in feeds.items()}
        for i, o in enumerate(sess.run(None, run)):
            np.save(f"{out}/{tag}_{i}.npy", np.asarray(o, dtype=np.float32))
    print(json.dumps({"outputs": names}))


if __name__ == "__main__":
    main()
