"""Half-precision copies of trained models, as users make them for GPU/NPU targets:
onnxconverter-common's float16 conversion with the inputs and outputs kept float32 (a Cast after
each input and before each output).

    pip install onnx onnxconverter-common
    python3 models/make_fp16.py        # writes models/digits_cnn_fp16.onnx

tests/reconstruct.rs runs it with calibration data: reconstruction runs it as a float32 copy
(tract's x86 half-precision matmuls are a scalar fallback) and writes float16 weights back.
"""
import os

import onnx
from onnxconverter_common import float16

HERE = os.path.dirname(os.path.abspath(__file__))

for name in ("digits_cnn",):
    m = onnx.load(os.path.join(HERE, f"{name}.onnx"))
    h = float16.convert_float_to_float16(m, keep_io_types=True)
    onnx.checker.check_model(h, full_check=True)
    onnx.save(h, os.path.join(HERE, f"{name}_fp16.onnx"))
    print(f"{name}_fp16.onnx", os.path.getsize(os.path.join(HERE, f"{name}_fp16.onnx")), "bytes")
