#!/usr/bin/env python3
"""The pass against its floor, interleaved (issue 13): `cat MODEL MODEL.data > out` (read + write
through user memory), `cp`, and `onnx-emp MODEL out --no-verify` per scope, each run R times in
turn with the output removed and `sync` before every command; median and range of the wall time
(perf_counter around the process), the median's ratio to cat's median, and the peak RSS against
the model's bytes. Targets printed beside them: pass ≤ 2× cat, peak RSS ≤ 1.2× the model's bytes.

    python3 scripts/floors.py target/bench-models/synthetic_90mb.onnx [--runs 9] [--scopes normalized,global]
        [--out-dir /dev/shm]

Outputs go to a temporary folder next to the binary (the disk, as a user writes), or under
`--out-dir`: on a tmpfs such as /dev/shm every command writes to memory, which takes the disk's
writeback out of the comparison (on this VM it varies `cat` of 1.6 GB from 0.7 to 5 s).

`--grouped` runs each command R times in a row after one untimed run, instead of interleaving
them. On the VM measured, at 1.6 GB the command that runs right after another command's 1.6 GB
output was deleted often writes 3–15× slower (whichever command that is: `cat` in the
interleaved order, onnx-emp in a loop that alternates the other way), while each command run
after its own output is removed is steady.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def run(cmd, out_files):
    for f in out_files:
        if os.path.exists(f):
            os.remove(f)
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    return wall, rss_kb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--scopes", default="normalized")
    ap.add_argument("--binary", default="target/release/onnx-emp")
    ap.add_argument("--out-dir", default=None, help="where outputs are written (default: next to the binary)")
    ap.add_argument(
        "--grouped",
        action="store_true",
        help="each command's runs in a row, after one untimed run, instead of interleaved",
    )
    a = ap.parse_args()
    data = a.model + ".data"
    files = [a.model] + ([data] if os.path.exists(data) else [])
    size = sum(os.path.getsize(f) for f in files)
    where = a.out_dir or os.path.dirname(os.path.abspath(a.binary))
    with tempfile.TemporaryDirectory(dir=where) as d:
        out = os.path.join(d, "out.onnx")
        cmds = {"cat": (["sh", "-c", f"cat {' '.join(files)} > {out}"], [out])}
        cmds["cp"] = (["cp"] + files + [d + "/"], [os.path.join(d, os.path.basename(f)) for f in files])
        for s in a.scopes.split(","):
            cmds[f"onnx-emp --scope {s}"] = (
                [a.binary, a.model, out, "--no-verify", "--quiet", "--force", "--scope", s],
                [out, out + ".data"],
            )
        res = {k: [] for k in cmds}
        if a.grouped:
            for k, (cmd, outs) in cmds.items():
                run(cmd, outs)  # untimed: see --grouped
                for _ in range(a.runs):
                    res[k].append(run(cmd, outs))
                for f in outs:
                    if os.path.exists(f):
                        os.remove(f)
        else:
            for _ in range(a.runs):
                for k, (cmd, outs) in cmds.items():
                    res[k].append(run(cmd, outs))
        for k, (_, outs) in cmds.items():
            for f in outs:
                if os.path.exists(f):
                    os.remove(f)
    cat = statistics.median(w for w, _ in res["cat"])
    order = "grouped (in a row, after one untimed run)" if a.grouped else "interleaved"
    print(f"model {a.model}: {size / 1e6:.1f} MB, {a.runs} runs each, {order}, outputs in {where}")
    print(f"{'command':28} {'median s':>9} {'range s':>15} {'÷ cat':>7} {'peak RSS':>10} {'÷ bytes':>8}  (MB = 10^6 bytes)")
    for k, v in res.items():
        ws = [w for w, _ in v]
        med, rss = statistics.median(ws), max(r for _, r in v)
        floor = "   (target ≤ 2×, ≤ 1.2×)" if k.startswith("onnx-emp") else ""
        print(
            f"{k:28} {med:9.3f} {min(ws):7.3f}–{max(ws):<7.3f} {med / cat:6.2f}× {rss * 1024 / 1e6:7.1f} MB {rss * 1024 / size:7.3f}×{floor}"
        )


if __name__ == "__main__":
    main()
