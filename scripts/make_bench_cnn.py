#!/usr/bin/env python3
"""Big CNN exports for scripts/bench.sh (issue 13): torchvision DenseNet-161 and ResNet-50 with
random weights (weights=None: nothing is downloaded), exported by torch.onnx (TorchScript path,
opset 17) into the given folder. Deterministic (seed 0). Not committed (115 MB + 102 MB).
With --latency: the set that scripts/latency_cnn.py times (issue 11): MobileNetV2,
EfficientNet-B0, ResNet-18 and ResNet-50 (14 + 21 + 47 + 102 MB), and the architectures issue 11
names as slower after pruning or growing in params: DenseNet-121, EfficientNet-B2/B3/B4 and
ConvNeXt-Tiny (32 + 36 + 49 + 77 + 114 MB), and ShuffleNet V2 1.0× (9 MB: its channel shuffles
prune); all at 224 × 224.
With --qdq: ResNet-18 and MobileNetV2 quantized by onnxruntime's `quantize_static` (QDQ format,
int8 activations and per-channel int8 weights, calibrated on 16 seeded standard-normal images),
as edge pipelines ship them: `resnet18_qdq.onnx`, `mobilenet_v2_qdq.onnx`, quantized from
`{name}_bn.onnx` (random BatchNorm statistics, see `trained_like`) (issue 11: "a quantized one
should prune", at deployment size).
With --yolo: YOLOv8n (`yolov8n.onnx`, plain; `yolov8n_slim.onnx`, simplified by onnxslim;
`yolov8n_dynamic.onnx`, simplified with dynamic size) and YOLO11n (`yolo11n.onnx`, simplified) as
Ultralytics exports them at 640 × 640, random weights, if `ultralytics` is installed.

  python3 scripts/make_bench_cnn.py [--latency] [--qdq] [--yolo] target/bench-models
"""
import os
import sys

import torch
import torchvision

args = [a for a in sys.argv[1:] if not a.startswith("--")]
out = args[0] if args else "target/bench-models"
LATENCY = ["mobilenet_v2", "efficientnet_b0", "resnet18", "resnet50",
           "densenet121", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "convnext_tiny", "shufflenet_v2_x1_0"]
names = LATENCY if "--latency" in sys.argv else ["densenet161", "resnet50"]
QDQ = ["resnet18", "mobilenet_v2"]
if "--qdq" in sys.argv:
    names = sorted(set(names) | set(QDQ)) if "--latency" in sys.argv else QDQ
elif "--yolo" in sys.argv and "--latency" not in sys.argv:
    names = []
os.makedirs(out, exist_ok=True)
for name in names:
    path = os.path.join(out, f"{name}.onnx")
    if os.path.exists(path):
        continue
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(m, x, path, opset_version=17, input_names=["x"], output_names=["y"], dynamo=False)
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")


def qdq(src, path):
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(5)
            self.data = iter([{"x": rng.standard_normal([1, 3, 224, 224]).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(src, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def trained_like(name):
    """The torchvision model with seeded random BatchNorm statistics and affine parameters, as a
    trained net has them: with the default ones (mean 0, var 1, γ 1, β 0) every folded conv bias
    is zero, torch.onnx deduplicates the equal ones into Identity nodes, and the quantizer then
    shares one conv's dequantized bias with others, which no trained export does."""
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
            bn.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            bn.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return m


if "--qdq" in sys.argv:
    for name in QDQ:
        path = os.path.join(out, f"{name}_qdq.onnx")
        if os.path.exists(path):
            continue
        # The float model the QDQ one is quantized from, kept beside it for comparison.
        src = os.path.join(out, f"{name}_bn.onnx")
        torch.onnx.export(trained_like(name), torch.randn(1, 3, 224, 224), src, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamo=False)
        qdq(src, path)
        print(f"wrote {src}, {path} ({os.path.getsize(path) / 1e6:.1f} MB)")

if "--yolo" in sys.argv:
    # Ultralytics detectors as exported for edge deployment (640 × 640, opset 17), built from their
    # yaml with seeded random weights: nothing is downloaded. Needs `pip install ultralytics
    # opencv-python-headless onnxslim` (PyPI). yolov8n.onnx: not simplified; yolov8n_slim.onnx and
    # yolo11n.onnx: simplified by onnxslim, Ultralytics' default (it deduplicates equal biases);
    # yolov8n_dynamic.onnx: simplified, dynamic batch, height and width.
    import shutil
    import tempfile

    from ultralytics import YOLO
    for name, yaml, kw in [("yolov8n", "yolov8n.yaml", dict(simplify=False)),
                           ("yolov8n_slim", "yolov8n.yaml", dict(simplify=True)),
                           ("yolov8n_dynamic", "yolov8n.yaml", dict(simplify=True, dynamic=True)),
                           ("yolo11n", "yolo11n.yaml", dict(simplify=True))]:
        path = os.path.abspath(os.path.join(out, f"{name}.onnx"))
        if os.path.exists(path):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                torch.manual_seed(0)
                exported = YOLO(yaml).export(format="onnx", opset=17, imgsz=640, **kw)
                shutil.move(exported if os.path.isabs(exported) else os.path.join(tmp, exported), path)
            finally:
                os.chdir(cwd)
        print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
