#!/usr/bin/env python3
"""Edge CNNs from timm at their deployment sizes (2026-12-07): 37 architectures that mobile and
embedded pipelines ship (MobileNetV3/V4, EfficientNet-Lite, GhostNet, RepViT, FastViT, MobileViT,
EfficientViT, EdgeNeXt, LeViT, RegNet, HRNet, MixNet, Res2Net, ...), random weights
(`pretrained=False`: nothing is downloaded) with BatchNorm statistics and affines drawn as a
trained net has them (not 0 / 1), exported by torch.onnx (TorchScript path, opset 17) at the
input size timm's config names (224, 256 or 106). Deterministic (seed 0). Not committed.

  python3 -m pip install timm          # PyPI; brings torchvision
  python3 scripts/make_timm_bench.py target/timm-models [--models a,b] [--check]
  cargo build --release && python3 scripts/latency_cnn.py --dir target/timm-models --round-to auto \
      --budget 4 --models mobilenetv3_small_100,mixnet_s,...

--check: runs `onnx-emp --structured channels --beta 0.7` (a forced cut; tract verifies and
proves masked-equivalence, the run fails otherwise) on each model and onnx.checker's full check on
the output, one line per model.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings

import onnx
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
MODELS = ("mobilenetv3_small_100 tf_mobilenetv3_small_100 mobilenetv4_conv_small mobilenetv4_hybrid_medium "
          "efficientnet_lite0 ghostnet_100 ghostnetv2_100 repvit_m1 fastvit_t8 mobilevit_xxs mobilevitv2_050 "
          "efficientvit_b0 efficientvit_m0 efficientformerv2_s0 edgenext_xx_small levit_128s regnetx_002 "
          "regnety_002 hrnet_w18_small convnextv2_atto mobileone_s0 lcnet_050 tinynet_e rexnet_100 resnet18d "
          "dla34 hardcorenas_a mixnet_s fbnetc_100 semnasnet_100 res2net50_14w_8s ese_vovnet19b_dw "
          "inception_next_atto poolformerv2_s12 starnet_s1 shvit_s1 rdnet_tiny").split()


def export(name, path):
    import timm
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False).eval()
    size = m.default_cfg.get("input_size", (3, 224, 224))
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.3, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, torch.randn(1, *size), path, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["logits"])
    return size


def check(name, path):
    with tempfile.TemporaryDirectory() as d:
        out, rep = os.path.join(d, "out.onnx"), os.path.join(d, "r.json")
        p = subprocess.run([BIN, path, out, "--structured", "channels", "--beta", "0.7", "--no-latency",
                            "--report", rep, "-q"], capture_output=True, text=True)
        if p.returncode != 0:
            return f"FAILED (exit {p.returncode}): {p.stderr.strip()[:300]}"
        r = json.load(open(rep))
        eq = r["equivalence"][0] if r["equivalence"] else {}
        prunable = sum(1 for g in r["groups"] if not g.get("blocked"))
        try:
            onnx.checker.check_model(out, full_check=True)
            chk = "checker ok"
        except Exception as e:  # noqa: BLE001 (reported)
            chk = f"CHECKER FAILED: {str(e)[:200]}"
        cut = 1 - r["macs_after"] / r["macs_before"]
        return (f"{prunable}/{len(r['groups'])} groups prunable, MACs −{100 * cut:.1f} %, masked rel L2 "
                f"{eq.get('max_rel_l2_err', float('nan')):.1e}, {chk}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=os.path.join(ROOT, "target", "timm-models"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    for name in a.models.split(","):
        path = os.path.join(a.dir, f"{name}.onnx")
        if not os.path.exists(path):
            size = export(name, path)
            print(f"{name}: exported at {size[1]} × {size[2]}", flush=True)
        if a.check:
            print(f"{name}: {check(name, path)}", flush=True)


if __name__ == "__main__":
    main()
