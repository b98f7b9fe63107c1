#!/usr/bin/env python3
"""A quantized trained model for the tests and the README: `fmnist_mobilenet_qdq.onnx`, the
trained Fashion-MNIST MobileNetV2 (`fmnist_mobilenet.onnx`, from make_trained.py) quantized by
onnxruntime's `quantize_static` as edge pipelines ship models: QDQ format, int8 activations and
per-channel int8 weights, int32 biases, calibrated on the first 128 images of
`fmnist_calib_x.npy` (the same split the tool's --calibration uses; the test split is never seen).
And `digits_mlp_dynq.onnx`, the digits MLP quantized by `quantize_dynamic` (operator form:
MatMulInteger), which the tool refuses with what to do instead.

    python3 models/make_qdq.py
"""
import os

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    src = os.path.join(HERE, "fmnist_mobilenet.onnx")
    dst = os.path.join(HERE, "fmnist_mobilenet_qdq.onnx")
    x = np.load(os.path.join(HERE, "fmnist_calib_x.npy")).astype(np.float32)
    name = onnx.load(src).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: x[i:i + 1]} for i in range(128)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    m = onnx.load(dst)
    onnx.save(m, dst)  # normalise
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e3:.0f} kB)")

    # Operator-form quantization, which the tool does not prune and must say so (not a silent
    # no-op): the digits MLP dynamically quantized (MatMulInteger on int8 weights).
    src = os.path.join(HERE, "digits_mlp.onnx")
    dst = os.path.join(HERE, "digits_mlp_dynq.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    print(f"wrote {dst} ({os.path.getsize(dst) / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
