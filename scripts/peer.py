#!/usr/bin/env python3
"""Python peer of the pass, for scripts/bench.sh: onnx.load → global EMP over |w| of every float
initializer of rank ≥ 2 (numpy) → zero → onnx.save. What a user would write without onnx-emp.
  python3 scripts/peer.py IN OUT
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

m = onnx.load(sys.argv[1])  # external data is loaded too
ws = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2]
arrs = [numpy_helper.to_array(t) for t in ws]
s = np.concatenate([np.abs(a).ravel().astype(np.float64) for a in arrs])
w = s / s.sum()
keep = max(1, min(len(s), int(np.floor(1.0 / np.sum(w * w)))))
thr = np.partition(s, len(s) - keep)[len(s) - keep]
for t, a in zip(ws, arrs):
    t.CopyFrom(numpy_helper.from_array(np.where(np.abs(a) >= thr, a, 0).astype(np.float32), t.name))
big = sum(a.nbytes for a in arrs) > 1.5e9
onnx.save(m, sys.argv[2], save_as_external_data=big)
print(f"peer: kept {keep} of {len(s)}")
