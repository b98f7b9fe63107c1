#!/usr/bin/env python3
"""Reproduce the previous release's tables (the README's *Earlier measurements*, in full in
docs/figures.md): runs the onnx-emp binary on the models in models/ (and, when
present, ../shared/models) and prints markdown. Standard library only.

  cargo build --release && python3 scripts/measure.py [weights|calibration|criteria|channels|heads|all]
"""
import json, os, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
SHARED = os.path.join(ROOT, "..", "shared", "models")
M = lambda f: os.path.join("models", f)
TRAINED = [
    ("digits_mlp", "digits_test_x64", "digits_calib_x64"),
    ("digits_cnn", "digits_test_x1x8x8", "digits_calib_x1x8x8"),
    ("digits_cnn_flatten", "digits_test_x1x8x8", "digits_calib_x1x8x8"),
    ("digits_lstm", "digits_test_x8x8", "digits_calib_x8x8"),
    ("digits_transformer", "digits_test_x8x8", "digits_calib_x8x8"),
    ("yolo_block", "digits_test_x1x8x8", "digits_calib_x1x8x8"),
]


def run(model, args, latency=False):
    with tempfile.TemporaryDirectory() as d:
        rep = os.path.join(d, "r.json")
        cmd = [BIN, model, os.path.join(d, "out.onnx"), "--report", rep, "--quiet"] + args
        if not latency:
            cmd.append("--no-latency")
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode != 0:
            return {"error": p.stderr.strip()}
        return json.load(open(rep))


def acc(r):
    v = r.get("verification") or {}
    if v.get("accuracy_dense") is None:
        return "n/a"
    return f"{100*v['accuracy_dense']:.2f} → {100*v['accuracy_pruned']:.2f}"


def sparsity(r):
    w = r["weights"]
    return 100 * (1 - w["kept_elems"] / w["candidates_elems"])


def weights_table():
    print("| model | scope | sparsity | accuracy dense → pruned (%) |")
    print("|---|---|---|---|")
    for m, x, _ in TRAINED:
        for s in ["unit", "layer", "global"]:
            r = run(M(m + ".onnx"), ["--scope", s, "--inputs", M(x + ".npy"), "--labels", M("digits_test_y.npy")])
            if "error" in r:
                print(f"| {m} | {s} | error | {r['error']} |")
                continue
            print(f"| {m} | {s} | {sparsity(r):.1f} % | {acc(r)} |")


def calibration_table():
    """criterion × scope at β = 1, plus magnitude at a fixed ratio (EMP's sparsity and 50 %)."""
    print("| model | criterion | scope | sparsity | accuracy (%) |")
    print("|---|---|---|---|---|")
    for m, x, c in TRAINED:
        base = ["--inputs", M(x + ".npy"), "--labels", M("digits_test_y.npy"), "--calibration", M(c + ".npy")]
        for crit in ["magnitude", "wanda"]:
            for s in ["unit", "layer"]:
                r = run(M(m + ".onnx"), base + ["--criterion", crit, "--scope", s])
                if "error" in r:
                    print(f"| {m} | {crit} | {s} | error | {r['error'][:80]} |")
                    continue
                print(f"| {m} | {crit} | {s} | {sparsity(r):.1f} % | {acc(r)} |")
                if crit == "wanda" and s == "layer":
                    sp = sparsity(r) / 100
                    for ratio, label in [(sp, f"magnitude @ EMP-wanda's {100*sp:.1f} %"), (0.5, "magnitude @ 50 %")]:
                        r2 = run(M(m + ".onnx"), base + ["--criterion", "magnitude", "--scope", "layer", "--ratio", f"{ratio:.6f}"])
                        if "error" in r2:
                            print(f"| {m} | {label} | layer | error | {r2['error'][:80]} |")
                        else:
                            print(f"| {m} | {label} | layer | {sparsity(r2):.1f} % | {acc(r2)} |")


def structured_criteria_table():
    """channels: l2 vs activation; heads: weight vs activation (calibrated on the training split)."""
    print("| model | mode | criterion | MACs cut | params cut | accuracy (%) |")
    print("|---|---|---|---|---|---|")
    for m, x, c in TRAINED:
        base = ["--inputs", M(x + ".npy"), "--labels", M("digits_test_y.npy"), "--calibration", M(c + ".npy")]
        modes = [("channels", ["l2", "activation"])]
        if m == "digits_transformer":
            modes.append(("heads", ["weight", "activation"]))
        for mode, crits in modes:
            for crit in crits:
                r = run(M(m + ".onnx"), base + ["--structured", mode, "--criterion", crit])
                if "error" in r:
                    print(f"| {m} | {mode} | {crit} | error: {r['error'][:80]} | | |")
                    continue
                mc = 100 * (1 - r["macs_after"] / r["macs_before"]) if r.get("macs_before") else float("nan")
                pc = 100 * (1 - r["params"]["after"] / r["params"]["before"])
                print(f"| {m} | {mode} | {crit} | {mc:.1f} % | {pc:.1f} % | {acc(r)} |")


def struct_row(name, model, args, labels=None, mode="channels"):
    r = run(model, ["--structured", mode] + args, latency=True)
    if "error" in r:
        print(f"| {name} | error: {r['error'][:120]} | | | | |")
        return
    g = [x for x in r["groups"]]
    pr = sum(1 for x in g if x["blocked"] is None)
    macs = f"{r['macs_before']:,} → {r['macs_after']:,}" if r.get("macs_before") else "n/a"
    eq = r["equivalence"]
    err = max((e["max_rel_l2_err"] for e in eq if e["status"] == "ok"), default=None)
    if err is not None:
        err = f"{err:.1e}"
    elif any("cannot run" in (e.get("reason") or "") for e in eq):
        err = "tract gap: skipped (onnxruntime: see tests/heads.rs)"
    else:
        err = "skipped: " + "; ".join((e.get("reason") or "")[:60] for e in eq)
    t = r["timing"]
    lat = f"{t['latency_dense']['median_ms']:.3f} → {t['latency_pruned']['median_ms']:.3f}" if t.get("latency_dense") and t.get("latency_pruned") else "n/a"
    a = acc(r) if labels else "n/a"
    p = r["params"]
    print(f"| {name} | {pr}/{len(g)} | {p['before']:,} → {p['after']:,} | {macs} | {a} | {err} | {lat} |")


def structured_table(mode):
    print("| model | groups prunable/total | params | MACs | accuracy (%) | masked rel. error | tract latency ms |")
    print("|---|---|---|---|---|---|---|")
    for m, x, _ in TRAINED:
        if mode == "heads" and m != "digits_transformer":
            continue
        struct_row(m, M(m + ".onnx"), ["--inputs", M(x + ".npy"), "--labels", M("digits_test_y.npy")], labels=True, mode=mode)
    if mode == "heads":
        for f in ["bert_ms_attention", "mha_ms", "attention_onnx23"]:
            struct_row(f, M(f + ".onnx"), [], mode=mode)
    if os.path.isdir(SHARED):
        for f in sorted(os.listdir(SHARED)):
            if not f.endswith(".onnx") or f.startswith("magika"):
                continue
            if mode == "heads" and not f.startswith("tiny_"):
                continue
            dims = ["--dim", "batch=1"]
            if f.startswith("ppocr"):
                dims += ["--dim", "x:2=48", "--dim", "x:3=192"]
            struct_row(f[:-5], os.path.join(SHARED, f), dims, mode=mode)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("weights", "all"):
        weights_table()
    if what in ("calibration", "all"):
        calibration_table()
    if what in ("criteria", "calibration", "all"):
        structured_criteria_table()
    if what in ("channels", "all"):
        structured_table("channels")
    if what in ("heads", "all"):
        structured_table("heads")
