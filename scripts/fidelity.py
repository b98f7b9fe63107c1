#!/usr/bin/env python3
"""Fidelity benchmark: accuracy dense → EMP → EMP + reconstruction (β = 1, and the default run
with calibration, which is held to the fidelity guard's tolerance), per mode, on every trained
model in models/, against magnitude / Wanda at equal sparsity and a fixed-ratio L2 channel prune
at (about) equal MACs; latency dense → pruned in tract and in onnxruntime (default optimisation
level, 1 thread, interleaved); the issue-10 targets printed beside each figure.

  cargo build --release && python3 scripts/fidelity.py [--quick] [MODEL ...]

--quick: the four Fashion-MNIST models only; MODEL names restrict the run to those models.
Needs numpy + onnxruntime for the ORT column.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

# name, test x, calibration x, test labels, modes
FMNIST = ("fmnist_test_x.npy", "fmnist_calib_x.npy", "fmnist_test_y.npy")
MODELS = [
    ("fmnist_mobilenet", *FMNIST, ["weights", "channels"]),
    ("fmnist_resnet", *FMNIST, ["weights", "channels"]),
    ("fmnist_vit", *FMNIST, ["weights", "heads", "channels"]),
    ("fmnist_shufflenet", *FMNIST, ["weights", "channels"]),
    # fmnist_resnet with GroupNorm(8, C) (TorchScript: Reshape → InstanceNormalization → Reshape)
    ("fmnist_resnet_gn", *FMNIST, ["weights", "channels"]),
    # attention blocks inside CNNs: CBAM (a channel-gate MLP shared by two poolings, a spatial
    # gate), coordinate attention, PoolFormer (GroupNorm(1, C) streams)
    ("fmnist_cbam", *FMNIST, ["weights", "channels"]),
    ("fmnist_coordatt", *FMNIST, ["weights", "channels"]),
    ("fmnist_poolformer", *FMNIST, ["weights", "channels"]),
    ("digits_mlp", "digits_test_x64.npy", "digits_calib_x64.npy", "digits_test_y.npy", ["weights", "channels"]),
    ("digits_cnn", "digits_test_x1x8x8.npy", "digits_calib_x1x8x8.npy", "digits_test_y.npy", ["weights", "channels"]),
    ("digits_cnn_flatten", "digits_test_x1x8x8.npy", "digits_calib_x1x8x8.npy", "digits_test_y.npy",
     ["weights", "channels"]),
    ("digits_lstm", "digits_test_x8x8.npy", "digits_calib_x8x8.npy", "digits_test_y.npy", ["weights"]),
    ("digits_transformer", "digits_test_x8x8.npy", "digits_calib_x8x8.npy", "digits_test_y.npy",
     ["weights", "heads", "channels"]),
    ("yolo_block", "digits_test_x1x8x8.npy", "digits_calib_x1x8x8.npy", "digits_test_y.npy", ["weights", "channels"]),
    # onnxruntime's fused ops (EmbedLayerNormalization, Attention, SkipLayerNormalization, BiasGelu):
    # run in onnxruntime (tract cannot), models/make_trained_bert.py
    ("digits_bert_ms", "digits_test_ids.npz", "digits_calib_ids.npz", "digits_test_y.npy", ["weights", "heads", "channels"]),
]


def run(model, out, args, latency=False):
    rep = out + ".json"
    cmd = [BIN, f"models/{model}.onnx", out, "--report", rep, "--quiet"] + args
    if not latency:
        cmd.append("--no-latency")
    t0 = time.time()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        return {"error": p.stderr.strip(), "wall": wall}
    r = json.load(open(rep))
    r["wall"] = wall
    return r


def acc(r):
    v = r.get("verification") or {}
    return v.get("accuracy_pruned")


def dense_acc(r):
    return (r.get("verification") or {}).get("accuracy_dense")


def sparsity(r):
    w = r["weights"]
    return 1 - w["kept_elems"] / w["candidates_elems"]


def macs_cut(r):
    return 1 - r["macs_after"] / r["macs_before"] if r.get("macs_before") else 0.0


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def ort_ratio(report):
    """pruned / dense latency in onnxruntime, as the CLI timed it in the same run (None without it)."""
    o = (report.get("timing") or {}).get("latency_onnxruntime")
    return o["pruned"]["median_ms"] / o["dense"]["median_ms"] if o else None


def held(r):
    """Whether a default run with calibration was held to the guard (pruned again, guarded)."""
    return any(n.startswith("held to the fidelity guard") for n in r.get("notes", []))


def cal_label(r, cut):
    """The default run with calibration: its cut → accuracy, and whether it was held."""
    return f"{pct(cut)} % → **{pct(acc(r))}**{' (held)' if held(r) else ''}"


def guard_label(r):
    """The default run's guard outcome: the β it wrote, or the groups its per-group pass cut."""
    g = r.get("guard") or {}
    if g.get("by_group"):
        p = g["groups"]
        return f"{r['beta']:.2f} on {len(p['cut'])}/{p['candidates']} groups"
    return f"{r['beta']:.2f}"


def main():
    quick = "--quick" in sys.argv
    names = [a for a in sys.argv[1:] if not a.startswith("--")]
    models = [m for m in MODELS if m[0].startswith("fmnist")] if quick else MODELS
    if names:
        models = [m for m in models if m[0] in names]
    tmp = tempfile.mkdtemp()
    W, C, H = [], [], []
    worst = {"w": [], "w_nocal": [], "c": [], "c_nocal": [], "c08": [], "h": [], "cal": []}
    for name, tx, cx, ty, modes in models:
        base = ["--inputs", f"models/{tx}", "--labels", f"models/{ty}"]
        cal = ["--calibration", f"models/{cx}"]
        o = lambda tag: os.path.join(tmp, f"{name}-{tag}.onnx")
        print(f"# {name}", file=sys.stderr, flush=True)
        if "weights" in modes:
            # EMP's cut as is (an explicit β is never moved by the guard), and the default run
            # without calibration (the fidelity guard may raise β).
            e = run(name, o("w"), base + ["--beta", "1"])
            g = run(name, o("wg"), base)
            er = run(name, o("wr"), base + cal + ["--beta", "1"])
            gr = run(name, o("wgr"), base + cal)
            if "error" in e or "error" in er or "error" in g or "error" in gr:
                W.append(f"| {name} | error: {e.get('error') or er.get('error') or g.get('error') or gr.get('error')} |")
                continue
            sp = sparsity(e)
            mag = run(name, o("mag"), base + ["--scope", "layer", "--ratio", f"{sp:.6f}"])
            wan = run(name, o("wan"), base + cal + ["--criterion", "wanda", "--ratio", f"{sp:.6f}", "--no-reconstruct"])
            d = dense_acc(e)
            worst["w_nocal"].append((d - acc(g), name))
            worst["w"].append((d - acc(er), name))
            worst["cal"].append((d - acc(gr), name))
            rt = er["timing"]["reconstruct_ms"] / 1e3
            W.append(f"| {name} | {pct(d)} | {g['beta']:.2f}, {pct(sparsity(g))} % → **{pct(acc(g))}** | "
                     f"{pct(sp)} % | {pct(acc(e))} | **{pct(acc(er))}** | {cal_label(gr, sparsity(gr))} | {pct(acc(mag))} | "
                     f"{pct(acc(wan)) if 'error' not in wan else 'n/a'} | {rt:.1f} s |")
        if "channels" in modes:
            rows = {}
            # The default run without calibration (the fidelity guard may raise β), EMP's cut as is
            # (an explicit β is never moved), and both with reconstruction.
            for tag, extra in (("g", []), ("b1", ["--beta", "1"]), ("b1r", ["--beta", "1"] + cal), ("gr", cal),
                               ("b08", ["--beta", "0.8"]), ("b08r", ["--beta", "0.8"] + cal)):
                rows[tag] = run(name, o(tag), ["--structured", "channels"] + base + extra, latency=tag == "b08r")
            if any("error" in r for r in rows.values()):
                C.append(f"| {name} | error: {[r['error'] for r in rows.values() if 'error' in r][0]} |")
            else:
                d = dense_acc(rows["b1"])
                target = macs_cut(rows["b08"])
                # fixed-ratio L2 at about the same MACs cut (coarse search over the ratio)
                best = None
                for r in [0.05 * k for k in range(1, 13)]:
                    fr = run(name, o(f"fr{r:.2f}"), ["--structured", "channels", "--ratio", f"{r:.2f}", "--round-to", "1"] + base)
                    if "error" in fr:
                        continue
                    if best is None or abs(macs_cut(fr) - target) < abs(macs_cut(best) - target):
                        best = fr
                worst["c"].append((d - acc(rows["b1r"]), name))
                worst["c_nocal"].append((d - acc(rows["g"]), name))
                worst["cal"].append((d - acc(rows["gr"]), name))
                if name.startswith("fmnist"):
                    worst["c08"].append((d - acc(rows["b08r"]), target, name))
                t = rows["b08r"]["timing"]
                tr = (t["latency_pruned"]["median_ms"] / t["latency_dense"]["median_ms"]) if t.get("latency_dense") else None
                orr = ort_ratio(rows["b08r"])
                C.append(
                    f"| {name} | {pct(d)} | {guard_label(rows['g'])}, {pct(macs_cut(rows['g']))} % → **{pct(acc(rows['g']))}** | "
                    f"{pct(macs_cut(rows['b1']))} % | {pct(acc(rows['b1']))} | **{pct(acc(rows['b1r']))}** | "
                    f"{cal_label(rows['gr'], macs_cut(rows['gr']))} | "
                    f"{pct(target)} % | {pct(acc(rows['b08']))} | **{pct(acc(rows['b08r']))}** | "
                    f"{pct(macs_cut(best)) if best else '—'} % → {pct(acc(best)) if best else '—'} | "
                    f"{'—' if tr is None else f'{tr:.2f}×'} | {'—' if orr is None else f'{orr:.2f}×'} | "
                    f"{rows['b08r']['timing']['reconstruct_ms'] / 1e3:.1f} s |")
        if "heads" in modes:
            hg = run(name, o("hg"), ["--structured", "heads"] + base)
            h = run(name, o("h"), ["--structured", "heads", "--beta", "1"] + base)
            hr = run(name, o("hr"), ["--structured", "heads", "--beta", "1"] + base + cal)
            hgr = run(name, o("hgr"), ["--structured", "heads"] + base + cal)
            if "error" in h or "error" in hr or "error" in hg or "error" in hgr:
                H.append(f"| {name} | error |")
            else:
                d = dense_acc(h)
                kept = sum(g["kept"] for g in h["groups"] if g["kind"] == "heads")
                n = sum(g["n"] for g in h["groups"] if g["kind"] == "heads")
                worst["h"].append((d - acc(hr), name))
                worst["c_nocal"].append((d - acc(hg), name))
                worst["cal"].append((d - acc(hgr), name))
                H.append(f"| {name} | {pct(d)} | {guard_label(hg)}, {pct(macs_cut(hg))} % → **{pct(acc(hg))}** | "
                         f"{kept}/{n} | {pct(macs_cut(h))} % | {pct(acc(h))} | **{pct(acc(hr))}** | {cal_label(hgr, macs_cut(hgr))} |")
    print("### Per-weight (default scope normalized), test accuracy %\n")
    print("| model | dense | default, no calibration (guard: β, sparsity → acc) | EMP β=1 sparsity | EMP β=1 | EMP β=1 + reconstruction | default with calibration (sparsity → acc) | magnitude @ same sparsity | Wanda @ same sparsity | reconstruction time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(W))
    print("\n### Channels (default --round-to auto), test accuracy %\n")
    print("| model | dense | default, no calibration (guard: β [on groups cut], MACs cut → acc) | β=1 MACs cut | β=1 | β=1 + recon | default with calibration (MACs cut → acc) | β=0.8 MACs cut | β=0.8 | β=0.8 + recon | fixed-ratio L2 (MACs cut → acc) | tract latency β=0.8 | ORT latency β=0.8 | recon time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(C))
    print("\n### Heads (global), test accuracy %\n")
    print("| model | dense | default, no calibration (guard: β [on groups cut], MACs cut → acc) | heads kept β=1 | MACs cut β=1 | EMP β=1 | EMP β=1 + reconstruction | default with calibration (MACs cut → acc) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(H))
    print("\n### Targets (issue 10): measured | floor\n")
    fmt = lambda xs: max(xs)[1] if xs else "—"
    for key, what, floor in (("w", "per-weight β=1 + reconstruction, worst loss (points)", 1.0),
                             ("w_nocal", "default per-weight without calibration, worst loss (points)", 3.0),
                             ("c", "channels β=1 + reconstruction, worst loss (points)", 1.0),
                             ("c_nocal", "default channels/heads without calibration, worst loss (points)", 3.0),
                             ("h", "heads β=1 + reconstruction, worst loss (points)", 1.0),
                             ("cal", "default with calibration (held to the guard), every mode, worst loss (points)", 1.0)):
        xs = worst[key]
        if xs:
            m = max(xs)
            print(f"- {what}: {100 * m[0]:.1f} ({m[1]}) | ≤ {floor:.0f}")
    for loss, cut, name in worst["c08"]:
        print(f"- channels β=0.8 + reconstruction, {name}: MACs −{100 * cut:.1f} % at {100 * loss:.1f} points | ≥ 20 % at ≤ 2")


if __name__ == "__main__":
    main()
