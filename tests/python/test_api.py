"""The Python package, installed into a fresh virtual environment (scripts/test_python.sh).

Runs the API on the trained models in models/ and checks that it returns what the command
reports, takes numpy arrays and bytes, raises with the command's one-line messages, writes
nothing for a plan, and releases the GIL while the pass runs.
"""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import onnx_emp

ROOT = Path(__file__).resolve().parents[2]
M = ROOT / "models"


def test_per_weight_with_paths_matches_the_command(tmp_path):
    out = tmp_path / "mlp.onnx"
    r = onnx_emp.prune(M / "digits_mlp.onnx", out, inputs=M / "digits_test_x64.npy",
                       labels=M / "digits_test_y.npy", latency=False)
    assert out.is_file()
    assert r["mode"] == "weights" and r["scope"] == "normalized"
    assert r["params"]["nonzero_after"] < r["params"]["nonzero_before"]
    assert r["verification"]["accuracy_pruned"] > 0.9
    # the same run through the installed command gives the same decision
    rep = tmp_path / "cli.json"
    subprocess.run([Path(sys.executable).parent / "onnx-emp", str(M / "digits_mlp.onnx"), str(tmp_path / "cli.onnx"),
                    "--inputs", str(M / "digits_test_x64.npy"), "--no-latency", "--quiet", "--report", str(rep)],
                   check=True)
    cli = json.loads(rep.read_text())
    assert cli["weights"] == r["weights"]
    assert (tmp_path / "cli.onnx").read_bytes() == out.read_bytes()


def test_the_fidelity_guard_keeps_a_small_net_within_its_tolerance(tmp_path):
    test = np.load(M / "digits_test_x1x8x8.npy")
    labels = np.load(M / "digits_test_y.npy")
    guarded = onnx_emp.prune(M / "yolo_block.onnx", tmp_path / "g.onnx", inputs=test, labels=labels, latency=False)
    g = guarded["guard"]
    assert g["trials"][0]["beta"] == 1.0 and not g["trials"][0]["pass"]
    assert guarded["beta"] == g["beta"] > 1.0
    assert any(t["pass"] and t["beta"] == g["beta"] and t["rel_l2"] <= 0.1 for t in g["trials"])
    unguarded = onnx_emp.prune(M / "yolo_block.onnx", tmp_path / "u.onnx", inputs=test, labels=labels,
                               latency=False, guard="off")
    assert "guard" not in unguarded and unguarded["beta"] == 1.0
    v, u = guarded["verification"], unguarded["verification"]
    assert v["accuracy_dense"] - v["accuracy_pruned"] <= 0.03 < u["accuracy_dense"] - u["accuracy_pruned"]
    # An explicit beta is written as asked.
    explicit = onnx_emp.prune(M / "yolo_block.onnx", tmp_path / "e.onnx", beta=1.0, verify=False)
    assert "guard" not in explicit and explicit["weights"] == unguarded["weights"]


def test_channels_with_numpy_arrays_reconstructs(tmp_path):
    cal = np.load(M / "digits_calib_x1x8x8.npy")
    test = np.load(M / "digits_test_x1x8x8.npy")
    labels = np.load(M / "digits_test_y.npy")
    # round_to=8: auto rounds yolo_block's 24 of 32 channels to 32 (the nearest multiple of 16).
    r = onnx_emp.prune(M / "yolo_block.onnx", tmp_path / "y.onnx", structured="channels", beta=0.8,
                       calibration={"x": cal}, inputs=test, labels=labels, latency=False, round_to=8)
    assert r["reconstruction"]["samples"] == len(cal)
    assert all(e["pass"] for e in r["equivalence"])
    assert r["params"]["after"] < r["params"]["before"]
    assert r["verification"]["accuracy_pruned"] > 0.9


def test_input_as_bytes_and_html(tmp_path):
    data = (M / "digits_transformer.onnx").read_bytes()
    page = tmp_path / "r.html"
    r = onnx_emp.prune(data, tmp_path / "t.onnx", structured="heads", verify=False, html=page)
    assert any(g["kind"] == "heads" for g in r["groups"])
    assert page.read_text().startswith("<!DOCTYPE html>")
    # The file the call wrote for the bytes is gone: the report says what it was.
    assert r["input"]["path"] == "<model bytes>"


def test_plan_writes_no_model(tmp_path):
    before = set(os.listdir(tmp_path))
    p = onnx_emp.plan(M / "fmnist_resnet.onnx", structured="channels", beta=0.8)
    assert p["plan"] is True and p["macs_after"] < p["macs_before"]
    assert any(g["kept"] < g["n"] for g in p["groups"])
    assert set(os.listdir(tmp_path)) == before


def test_errors_carry_the_command_message(tmp_path):
    with pytest.raises(onnx_emp.OnnxEmpError, match="no such file"):
        onnx_emp.prune(tmp_path / "missing.onnx", tmp_path / "o.onnx")
    with pytest.raises(ValueError, match="beta=-1: must be"):
        onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", beta=-1)
    with pytest.raises(onnx_emp.OnnxEmpError, match="calibration"):
        onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", criterion="wanda")
    # An array that does not fit is named as the array it is, not as the call's temporary file.
    with pytest.raises(onnx_emp.OnnxEmpError, match="<array inputs>") as e:
        onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", inputs=np.zeros((2, 3), np.float32))
    assert "onnx-emp-" not in str(e.value)
    with pytest.raises(TypeError, match="inputs"):
        onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", inputs=object())
    assert not (tmp_path / "o.onnx").exists()


def test_usage_errors_name_the_keyword_arguments(tmp_path):
    """A call that would do nothing, or a bad value, is named as the call spells it: the command's
    checks, with the keywords in place of its flags ("--no-reconstruct has no effect" before)."""
    for kwargs, says in [
        (dict(reconstruct=False), "reconstruct=False has no effect without calibration"),
        (dict(calibration_rows=100), "calibration_rows has no effect without calibration"),
        (dict(latency=False, latency_runs=3), "latency_runs has no effect with latency=False"),
        (dict(verify=False, latency="tract"), "has no effect with verify=False"),
        (dict(beta=0.9, guard=0.2), "guard=0.2 has no effect with beta: its cut is written as asked"),
        (dict(verify=False, guard=0.2), "guard=0.2 has no effect with verify=False"),
        (dict(structured="channels", verify=False, allow_mismatch=True),
         "allow_mismatch=True has no effect with verify=False"),
        (dict(round_to=8), "round_to has no effect per weight"),
        (dict(structured="heads", include="narrow"), "include='narrow' has no effect with structured='heads'"),
        (dict(include="bias,"), "include='bias,': an empty item"),
        (dict(structured="heads", ratio=0.5), "ratio is a baseline for per-weight mode and structured='channels'"),
        (dict(beta=0.5, ratio=0.5), "ratio prunes a fixed fraction instead of EMP's count: beta has no effect"),
        (dict(dims={"batch": 0}), "dims={'batch': 0}:"),
        (dict(structured="rows"), "structured='rows': expected one of"),
    ]:
        with pytest.raises(ValueError) as e:
            onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", **kwargs)
        assert says in str(e.value) and "--" not in str(e.value), (kwargs, str(e.value))
    with pytest.raises(ValueError, match="round_to has no effect per weight"):
        onnx_emp.plan(M / "digits_mlp.onnx", round_to="auto")
    assert not (tmp_path / "o.onnx").exists()


def test_report_notes_name_the_keyword_arguments():
    """The report's notes name the options as prune()/plan() take them: `include='stem'`, not
    `--include stem` (the notes named the command's flags before 2026-12-06)."""
    r = onnx_emp.plan(M / "fmnist_mobilenet.onnx", structured="channels")
    notes = [n for g in r["groups"] for n in g["notes"]] + r["notes"]
    assert any("(include='stem' prunes it)" in n for n in notes), notes
    assert any("round_to='auto'" in n for n in notes), notes
    assert not any(re.search(r"(^|[\s(])--[a-z]", n) for n in notes), notes


def test_a_model_tract_cannot_run_is_proven_in_this_environments_onnxruntime(tmp_path, monkeypatch):
    """tract cannot run com.microsoft Attention: the proof runs in onnxruntime through this
    interpreter (the package's environment), whatever `python3` on the PATH has. With no Python
    that can, the rewrite is refused unless allow_unproven."""
    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("ONNX_EMP_PYTHON", raising=False)
    r = onnx_emp.prune(M / "bert_ms_attention.onnx", tmp_path / "b.onnx", structured="channels", beta=0.7,
                       latency=False)
    e = r["equivalence"][0]
    assert (e["status"], e["engine"], e["pass"]) == ("ok", "onnxruntime", True), e
    monkeypatch.setenv("ONNX_EMP_PYTHON", str(tmp_path / "no-such-python"))
    with pytest.raises(onnx_emp.OnnxEmpError, match="could not be proven"):
        onnx_emp.prune(M / "bert_ms_attention.onnx", tmp_path / "u.onnx", structured="channels", beta=0.7)
    assert not (tmp_path / "u.onnx").exists()
    r = onnx_emp.prune(M / "bert_ms_attention.onnx", tmp_path / "u.onnx", structured="channels", beta=0.7,
                       allow_unproven=True)
    assert r["equivalence"][0]["status"] == "skipped" and (tmp_path / "u.onnx").is_file()


def test_the_gil_is_released(tmp_path):
    done = []
    t = threading.Thread(target=lambda: done.append(onnx_emp.prune(
        M / "fmnist_mobilenet.onnx", tmp_path / "m.onnx", inputs=M / "fmnist_test_x.npy", latency=False)))
    t.start()
    spins = 0
    while t.is_alive():
        spins += 1
    t.join()
    assert done and spins > 10_000, spins


def test_command_help():
    exe = Path(sys.executable).parent / "onnx-emp"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--structured" in out and "plan" in out


def _all_models():
    shared = ROOT.parent / "shared" / "models"
    found = sorted(M.glob("*.onnx")) + sorted((M / "zoo").glob("*.onnx"))
    found += sorted(shared.glob("*.onnx")) if shared.is_dir() else []
    assert len(found) >= 10
    return found


@pytest.mark.parametrize("model", _all_models(), ids=lambda p: p.name)
def test_keep_all_run_is_lossless_under_proto2_equality(model, tmp_path):
    """A run that keeps every weight writes a model equal to its input as `onnx` sees it:
    explicit defaults (`domain: ""`, `i: 0`) and unknown fields included."""
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "same.onnx"
    try:
        onnx_emp.prune(model, out, beta=1000.0, verify=False)
    except Exception as e:
        if "quantized in operator form" in str(e):
            # Nothing any mode prunes (QOperator / dynamic quantization): refused, nothing written.
            assert not out.exists()
            return
        # A QDQ model has no float weights for per-weight mode: use channels.
        assert "no prunable weights" in str(e), e
        onnx_emp.prune(model, out, beta=1000.0, verify=False, structured="channels")
    assert onnx.load(str(model)) == onnx.load(str(out))


def test_sparse_initializers_shrink_the_file_and_onnxruntime_gives_the_same_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    src = M / "fmnist_resnet.onnx"
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    rd = onnx_emp.prune(src, dense, ratio=0.9, verify=False)
    rs = onnx_emp.prune(src, sparse, ratio=0.9, verify=False, sparse_initializers=True)
    assert rd["weights"] == rs["weights"]
    s = rs["sparse_initializers"]
    assert s["tensors"] > 0 and s["sparse_bytes"] < s["dense_bytes"]
    # The file shrinks by what the payloads saved (float32 + INT64 index = 12 bytes per kept weight).
    saved = dense.stat().st_size - sparse.stat().st_size
    assert saved >= 0.99 * (s["dense_bytes"] - s["sparse_bytes"])
    assert rs["output"]["bytes"] == sparse.stat().st_size
    # At 90 % zeros the weights take ~0.3 of their dense bytes.
    assert sparse.stat().st_size < 0.5 * src.stat().st_size
    m = onnx.load(str(sparse))
    assert len(m.graph.sparse_initializer) == s["tensors"]
    # onnx's checker accepts it; its shape inference (full_check) types a sparse initializer as a
    # sparse tensor, which dense ops refuse, while onnxruntime densifies it at load.
    onnx.checker.check_model(m)
    x = np.load(M / "fmnist_test_x.npy")[:64]
    outs = []
    for p in (dense, sparse):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, {sess.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    # A sparse-stored model can be pruned again: its sparse weights are read dense.
    again = onnx_emp.prune(sparse, tmp_path / "again.onnx", beta=1000.0, latency=False,
                           inputs=x[:8])
    assert any("sparse initializer(s) read as dense" in n for n in again["notes"])
    assert again["verification"]["outputs"][0]["max_abs_err"] == 0.0


def test_latency_in_one_engine(tmp_path):
    """latency="tract" times tract only (--latency-in tract); the onnxruntime figure is absent."""
    r = onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "t.onnx", beta=1.0, inputs=M / "digits_test_x64.npy",
                       latency="tract")
    t = r["timing"]
    assert t["latency_dense"]["runs"] >= 1 and t.get("latency_onnxruntime") is None
    # latency_runs (--latency-runs) times exactly that many runs in each engine.
    r = onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "n.onnx", beta=1.0, inputs=M / "digits_test_x64.npy",
                       latency="tract", latency_runs=7)
    assert r["timing"]["latency_dense"]["runs"] == r["timing"]["latency_pruned"]["runs"] == 7
    with pytest.raises(ValueError, match="latency='gpu'"):
        onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "x.onnx", beta=1.0, latency="gpu")


def test_calibration_rows_and_one_hot_labels(tmp_path):
    x = np.load(M / "digits_calib_x64.npy")
    y = np.load(M / "digits_test_y.npy")
    r = onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "o.onnx", calibration=x, calibration_rows=100,
                       inputs=M / "digits_test_x64.npy", labels=np.eye(10, dtype=np.float32)[y], latency=False)
    assert "100 of 256 rows" in r["calibration"]
    assert r["reconstruction"]["samples"] == 80
    same = onnx_emp.prune(M / "digits_mlp.onnx", tmp_path / "p.onnx", calibration=x, calibration_rows=100,
                          inputs=M / "digits_test_x64.npy", labels=y, latency=False)
    assert r["verification"]["accuracy_pruned"] == same["verification"]["accuracy_pruned"] > 0.9
