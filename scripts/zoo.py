#!/usr/bin/env python3
"""The architecture zoo (models/zoo) as a user runs it: the CLI with its defaults (--round-to
auto, floors on) at β = 1 and at a forced cut β = 0.7, then latency dense → pruned in tract and
in onnxruntime (default optimisation level, 1 thread, batch 1, dense and pruned interleaved), both
the CLI's own measurement (`timing` in its report), and the onnx.checker full check of the output.

  cargo build --release && python3 scripts/zoo.py [--budget 2] [--size 224] [--models zoo_qdq,...]

--size S: the zoo's image models re-exported with S × S inputs (same architectures and seeds,
models/make_zoo.py `image_zoo`, written to a temporary folder; needs torch) instead of the 32 × 32
models in models/zoo: at 32 × 32 they run in tens of microseconds, where fixed per-op costs hide
part of any cut.

Prints one markdown table. Speed is printed beside its floors: pruned ≤ dense + 3 %, and issue 11's
rule where MACs drop by ≥ 10 % (latency ratio ≤ 1 − 0.8 × cut); nothing is asserted here
(tests/zoo.rs asserts validity).
"""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ONNX_EMP_BIN", os.path.join(ROOT, "target", "release", "onnx-emp"))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def ort_ratio(report):
    """pruned / dense latency in onnxruntime, as the CLI timed it in the same run (None without it)."""
    o = (report.get("timing") or {}).get("latency_onnxruntime")
    return o["pruned"]["median_ms"] / o["dense"]["median_ms"] if o else None


def checker(path):
    try:
        import onnx
    except ImportError:
        return "n/a"
    try:
        onnx.checker.check_model(onnx.load(path), full_check=True)
        return "ok"
    except Exception as e:  # noqa: BLE001
        return "FAIL: " + str(e).splitlines()[0][:80]


def rule(cut, ratios):
    """Issue 11's rule for one row (`latency_cnn.rule_line`), both engines' ratios at once."""
    from latency_cnn import rule_line

    if cut is None:
        return "n/a"
    line = rule_line(cut)
    if line is None:
        return "n/a (cut < 10 %)"
    missed = [what for what, r in ratios if r is not None and r > line]
    return f"≤ {line:.3f}: " + (("missed in " + ", ".join(missed)) if missed else "ok")


def main():
    budget = float(sys.argv[sys.argv.index("--budget") + 1]) if "--budget" in sys.argv else 2.0
    with tempfile.TemporaryDirectory() as zoo_tmp:
        if "--size" in sys.argv:
            size = int(sys.argv[sys.argv.index("--size") + 1])
            sys.path.insert(0, os.path.join(ROOT, "models"))
            import make_zoo

            zoo = os.path.join(zoo_tmp, "zoo")
            man = make_zoo.image_zoo(zoo, size)
            print(f"(the zoo's image models at {size} × {size})\n")
        else:
            zoo = os.path.join(ROOT, "models", "zoo")
            man = json.load(open(os.path.join(zoo, "manifest.json")))
        if "--models" in sys.argv:
            keep = sys.argv[sys.argv.index("--models") + 1].split(",")
            man = {k: v for k, v in man.items() if k in keep}
        run(zoo, man, budget)


def run(zoo, man, budget):
    import numpy as np

    print("| model | mode | β | groups prunable | params | MACs cut | masked rel. error | checker | tract latency | ORT latency | rule (≤ 1 − 0.8 × cut) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst = []
    for name, spec in sorted(man.items()):
        mode = "heads" if name == "zoo_attention_4d" else "channels"
        with tempfile.TemporaryDirectory() as d:
            x = os.path.join(d, "x.npy")
            rng = np.random.default_rng(0)
            shape = [1] + spec["x"][1:]
            if spec.get("dtype") == "int64":
                np.save(x, rng.integers(0, spec["high"], shape).astype(np.int64))
            else:
                np.save(x, rng.standard_normal(shape).astype(np.float32))
            for beta in (1.0, 0.7):
                out, rep = os.path.join(d, "out.onnx"), os.path.join(d, "r.json")
                cmd = [BIN, os.path.join(zoo, name + ".onnx"), out, "--structured", mode,
                       "--beta", str(beta), "--inputs", f"x={x}", "--report", rep, "--quiet",
                       "--latency-budget", str(budget)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    print(f"| {name} | {mode} | {beta} | ERROR: {p.stderr.strip()[:120]} ||||||||")
                    continue
                r = json.load(open(rep))
                g = r["groups"]
                prunable = sum(1 for k in g if k.get("blocked") is None)
                pa = r["params"]
                mb, ma = r.get("macs_before"), r.get("macs_after")
                cutf = 1 - ma / mb if mb and ma else None
                cut = f"{100 * cutf:.1f} %" if cutf is not None else "n/a"
                eq = [e for e in r.get("equivalence") or [] if e.get("max_rel_l2_err") is not None]
                eqs = "; ".join(f"{e['max_rel_l2_err']:.1e} {'PASS' if e['pass'] else 'FAIL'}" for e in eq) or "skipped"
                t = r.get("timing") or {}
                ld, lp = t.get("latency_dense"), t.get("latency_pruned")
                tr = lp["median_ms"] / ld["median_ms"] if ld and lp else None
                orr = ort_ratio(r)
                chk = checker(out)
                for what, ratio in (("tract", tr), ("ORT", orr)):
                    if ratio is not None and pa["after"] < pa["before"]:
                        worst.append((ratio, f"{name} β={beta} {what}"))
                fmt = lambda t: f"{t:.2f}×" if t is not None else "n/a"
                tl = f"{ld['median_ms']:.3f} → {lp['median_ms']:.3f} ms ({fmt(tr)})" if tr else "n/a (tract cannot run it)"
                print(f"| {name} | {mode} | {beta} | {prunable}/{len(g)} | {pa['before']:,} → {pa['after']:,} | {cut} "
                      f"| {eqs} | {chk} | {tl} | {fmt(orr)} | {rule(cutf, [('tract', tr), ('ORT', orr)])} |")
    if worst:
        w = max(worst)
        print(f"\nslowest pruned/dense ratio: {w[0]:.2f}× ({w[1]}); floor: ≤ 1.03×")


if __name__ == "__main__":
    main()
