#!/usr/bin/env python3
"""Does a channels cut pay off at deployment size? (issue 11's latency rule on full-size CNNs.)

The Fashion-MNIST nets and the zoo run in microseconds, where fixed per-op costs hide any cut.
This runs the ImageNet-size torchvision CNNs that `scripts/make_bench_cnn.py --latency` exports
(random weights, 224 × 224, nothing downloaded: MobileNetV2, EfficientNet-B0, ResNet-18/50, and
the DenseNet-121, EfficientNet-B2/B3/B4, ConvNeXt-Tiny and ShuffleNet V2 that issue 11 names) through `onnx-emp --structured channels` at each
β and `--round-to`, and times dense vs pruned interleaved in both engines: tract (the CLI's own
latency measurement, 1 thread) and onnxruntime (the CLI's too: default optimisation level, 1
thread, batch 1). For each row it prints the MACs cut, both latency ratios, and the
issue's rule: where MACs drop by ≥ 10 %, latency should drop by ≥ 0.8 × that (ratio ≤ 1 − 0.8 ×
cut). Machine noise on shared cores is a few percent: read the verdicts near the line as such.

    python3 scripts/make_bench_cnn.py --latency [--qdq] target/bench-models
    cargo build --release && python3 scripts/latency_cnn.py [--dir target/bench-models]
        [--betas 0.8] [--round-to auto,16] [--budget 6] [--models mobilenet_v2,resnet18,...]
        [--floors default,bottleneck]

--models resnet18_qdq,mobilenet_v2_qdq,resnet18_bn,mobilenet_v2_bn: the QDQ-quantized CNNs
(`make_bench_cnn.py --qdq`) and the float models they were quantized from.
--floors: one row per entry, `default` for the floors as they are, any other value passed as
`--include VALUE` (`bottleneck`: cut the bottlenecks of depthwise nets, as before that floor).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
MODELS = ["mobilenet_v2", "efficientnet_b0", "resnet18", "resnet50",
          "densenet121", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4", "convnext_tiny", "shufflenet_v2_x1_0"]


def ort_ratio(report, pruned):
    """pruned / dense latency in onnxruntime, as the CLI timed it in the same run."""
    o = report["timing"].get("latency_onnxruntime")
    if not o:
        notes = [n for n in report["verification"]["notes"] if "onnxruntime" in n]
        sys.exit(f"no onnxruntime latency for {pruned}: {notes}")
    return o["pruned"]["median_ms"] / o["dense"]["median_ms"]


def rule_line(cut):
    """Issue 11's rule: where MACs drop by ≥ 10 % (cut ≥ 0.10), latency ratio ≤ this; else None."""
    return 1 - 0.8 * cut if cut >= 0.10 else None


def verdict(ratio, cut):
    need = rule_line(cut)
    if need is None:
        return "n/a (< 10 %)"
    return f"{'ok' if ratio <= need else 'MISS'} (≤ {need:.3f})"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.path.join(ROOT, "target", "bench-models"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--betas", default="0.8")
    ap.add_argument("--round-to", default="auto,16")
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per engine and row")
    ap.add_argument("--floors", default="default", help="default, or values for --include (comma separated)")
    a = ap.parse_args()
    rows = []
    print("| model | β | `--round-to` | floors | MACs cut | tract dense → pruned (ratio) | rule, tract | ORT ratio | rule, ORT |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models.split(","):
            dense = os.path.join(a.dir, f"{m}.onnx")
            if not os.path.exists(dense):
                flag = "--qdq" if m.endswith(("_qdq", "_bn")) else "--latency"
                sys.exit(f"{dense} missing: run python3 scripts/make_bench_cnn.py {flag} {a.dir}")
            for beta in a.betas.split(","):
                for r, fl in [(r, f) for r in a.round_to.split(",") for f in a.floors.split(",")]:
                    out, rep = os.path.join(tmp, f"{m}_{beta}_{r}_{fl}.onnx"), os.path.join(tmp, "r.json")
                    cmd = [BIN, dense, out, "--structured", "channels", "--beta", beta, "--round-to", r,
                           "--latency-budget", str(a.budget), "--report", rep, "--force", "--quiet"]
                    if fl != "default":
                        cmd += ["--include", fl]
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    if p.returncode != 0:
                        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
                    rj = json.load(open(rep))
                    cut = 1 - rj["macs_after"] / rj["macs_before"]
                    t = rj["timing"]
                    orr = ort_ratio(rj, out)
                    if not t.get("latency_dense") or not t.get("latency_pruned"):
                        # A model tract cannot run is timed in onnxruntime only (LeViT).
                        print(f"| {m} | {beta} | {r} | {fl} | {100 * cut:.1f} % | not timed (tract cannot run it) | "
                              f"n/a | {orr:.3f}× | {verdict(orr, cut)} |", flush=True)
                        continue
                    ld, lp = t["latency_dense"]["median_ms"], t["latency_pruned"]["median_ms"]
                    tr = lp / ld
                    rows.append((m, beta, r if fl == "default" else f"{r}, --include {fl}", cut, tr, orr))
                    print(f"| {m} | {beta} | {r} | {fl} | {100 * cut:.1f} % | {ld:.1f} → {lp:.1f} ms ({tr:.3f}×) | "
                          f"{verdict(tr, cut)} | {orr:.3f}× | {verdict(orr, cut)} |", flush=True)
    # Share of the MACs cut that each engine turned into time, per row (1.0 = latency fell as much).
    print()
    for m, beta, r, cut, tr, orr in rows:
        if cut > 0:
            print(f"{m} β={beta} round-to {r}: latency realises {(1 - tr) / cut:.2f} (tract), "
                  f"{(1 - orr) / cut:.2f} (ORT) of the MACs cut (rule: ≥ 0.80)")


if __name__ == "__main__":
    main()
