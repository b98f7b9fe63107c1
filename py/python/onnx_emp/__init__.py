"""onnx-emp: prune ONNX models with Effective Model Pruning (EMP).

    import onnx_emp
    report = onnx_emp.prune("model.onnx", "pruned.onnx", structured="channels",
                            calibration="calib.npy", inputs="test.npy", labels="labels.npy")
    print(report["params"], report["verification"]["accuracy_pruned"])

`prune` runs exactly what the `onnx-emp` command runs (same defaults, same checks) and returns
the JSON report as a dict. `plan` returns the decision only, without writing a model. Errors
raise `OnnxEmpError` (or `ValueError` for a bad argument, named by its keyword: `reconstruct=False
has no effect without calibration`) with the command's one-line message.
The GIL is released while the pass runs.
"""

import json
import os
import sys
import tempfile

try:
    from . import _native
    from ._native import OnnxEmpError
except ImportError as e:  # pragma: no cover
    raise ImportError(
        "onnx_emp's compiled module is missing: install the package (pip install .) or build it in place "
        "(maturin develop, from the repository's py/ folder)"
    ) from e

__all__ = ["prune", "plan", "OnnxEmpError"]


def _path(x):
    return os.fspath(x)


def _data_args(flag, value, tmp, stem):
    """--inputs/--calibration: a path, one array (single-input model) or {name: array}."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [flag, _path(value)]
    import numpy as np

    if isinstance(value, dict):
        out = []
        for name, arr in value.items():
            if isinstance(arr, (str, os.PathLike)):
                out += [flag, f"{name}={_path(arr)}"]
                continue
            f = os.path.join(tmp, f"{stem}-{len(out)}.npy")
            np.save(f, _array(arr, f"{stem}[{name!r}]"))
            out += [flag, f"{name}={f}"]
        return out
    f = os.path.join(tmp, f"{stem}.npy")
    np.save(f, _array(value, stem))
    return [flag, f]


def _array(value, what):
    """A numeric array, or a TypeError naming the argument."""
    import numpy as np

    a = np.asarray(value)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a path, a numeric array or a dict of them, not {type(value).__name__}")
    return a


def _untemp(text, tmp):
    """The command names the files a call wrote for it: say what they were instead."""
    import re

    def name(m):
        f = m.group(1)
        return "<model bytes>" if f == "input.onnx" else f"<array {os.path.splitext(f)[0]}>"

    return re.sub(re.escape(os.path.join(tmp, "")) + r"([\w.\-]+)", name, text)


def _args(tmp, input, structured, beta, scope, criterion, calibration, inputs, labels, verify, latency,
          round_to, include, ratio, reconstruct, dims, seed, report_html, guard=None, calibration_rows=None,
          weight_inputs=None):
    if isinstance(input, (bytes, bytearray, memoryview)):
        f = os.path.join(tmp, "input.onnx")
        with open(f, "wb") as fh:
            fh.write(bytes(input))
        input = f
    a = [_path(input)]
    if structured is not None:
        a += ["--structured", structured]
    if beta is not None:
        a.append(f"--beta={float(beta)!r}")
    if guard is not None:
        a.append(f"--guard={'off' if guard is False or guard == 'off' else repr(float(guard))}")
    if scope is not None:
        a += ["--scope", scope]
    if criterion is not None:
        a += ["--criterion", criterion]
    a += _data_args("--calibration", calibration, tmp, "calibration")
    if calibration_rows is not None:
        a += ["--calibration-rows", str(int(calibration_rows))]
    a += _data_args("--inputs", inputs, tmp, "inputs")
    if labels is not None:
        if not isinstance(labels, (str, os.PathLike)):
            import numpy as np

            f = os.path.join(tmp, "labels.npy")
            np.save(f, _array(labels, "labels"))
            labels = f
        a += ["--labels", _path(labels)]
    if not verify:
        a.append("--no-verify")
    if isinstance(latency, str):
        if latency not in ("tract", "onnxruntime"):
            raise ValueError(f"latency={latency!r}: True, False, 'tract' or 'onnxruntime'")
        a += ["--latency-in", latency]
    elif not latency:
        a.append("--no-latency")
    if round_to is not None:
        a += ["--round-to", str(round_to)]
    if weight_inputs is not None:
        a += ["--weight-inputs", weight_inputs]
    if include:
        a += ["--include", include if isinstance(include, str) else ",".join(include)]
    if ratio is not None:
        a.append(f"--ratio={float(ratio)!r}")
    if not reconstruct:
        a.append("--no-reconstruct")
    for k, v in (dims or {}).items():
        a += ["--dim", f"{k}={int(v)}"]
    a += ["--seed", str(int(seed))]
    if report_html is not None:
        a += ["--html", _path(report_html)]
    return a


def prune(input, output, *, structured=None, beta=None, scope=None, criterion=None, calibration=None,
          inputs=None, labels=None, verify=True, latency=True, round_to=None, include=None, ratio=None,
          reconstruct=True, dims=None, seed=0, html=None, force=False, allow_mismatch=False,
          sparse_initializers=False, guard=None, allow_unproven=False, calibration_rows=None,
          weight_inputs=None, latency_budget=None, latency_runs=None):
    """Prune `input` (a path, or the serialized model as bytes) into `output`; return the report.

    structured: None (per-weight), "channels", "heads" or "heads,channels".
    beta: None keeps the default (1, which the fidelity guard may raise on runs without reconstruction);
    a number is written as is. guard: a tolerance, or "off"/False (None: the default 0.1).
    calibration, inputs: a path as the CLI takes it, one numpy array, or {input name: array}.
    calibration_rows: use at most this many calibration samples (None: the command's default, 512;
    0: all). weight_inputs: "constant" (default) or "input", for weights listed as graph inputs too.
    labels: a path or an array of class ids (or one-hot rows). dims: {symbol: size} for dynamic dimensions.
    latency: True (tract and onnxruntime), False (none), "tract" or "onnxruntime" (that engine only);
    latency_budget: seconds per engine (None: 2), latency_runs: time exactly that many runs instead.
    Other keywords mirror the command's flags (`onnx-emp --help`).
    """
    with tempfile.TemporaryDirectory(prefix="onnx-emp-") as tmp:
        a = _args(tmp, input, structured, beta, scope, criterion, calibration, inputs, labels, verify, latency,
                  round_to, include, ratio, reconstruct, dims, seed, html, guard, calibration_rows,
                  weight_inputs)
        a.insert(1, _path(output))
        if force:
            a.append("--force")
        if allow_mismatch:
            a.append("--allow-mismatch")
        if allow_unproven:
            a.append("--allow-unproven")
        if sparse_initializers:
            a.append("--sparse-initializers")
        if latency_budget is not None:
            a += ["--latency-budget", repr(float(latency_budget))]
        if latency_runs is not None:
            a += ["--latency-runs", str(int(latency_runs))]
        return json.loads(_run(["onnx-emp"] + a, tmp))


def plan(input, *, structured=None, beta=None, scope=None, criterion=None, calibration=None, inputs=None,
         verify=True, round_to=None, include=None, ratio=None, dims=None, seed=0, html=None):
    """The decision only (groups, N_eff, kept, params, MACs): no model written, nothing verified."""
    with tempfile.TemporaryDirectory(prefix="onnx-emp-") as tmp:
        a = _args(tmp, input, structured, beta, scope, criterion, calibration, inputs, None, verify, True,
                  round_to, include, ratio, True, dims, seed, html)
        return json.loads(_run(["onnx-emp", "plan"] + a, tmp))


def _ort_python():
    """Where tract cannot run a model, its proof and checks run in onnxruntime through a Python:
    this interpreter (the environment the package is installed in) unless ONNX_EMP_PYTHON says
    otherwise."""
    os.environ.setdefault("ONNX_EMP_PYTHON", sys.executable)


def _run(argv, tmp=None):
    _ort_python()
    try:
        out = _native.run_json(argv)
    except (OnnxEmpError, ValueError) as e:
        if tmp is None:
            raise
        raise type(e)(_untemp(str(e), tmp)) from None
    return out if tmp is None else _untemp(out, tmp)


def _console():
    """The `onnx-emp` command installed by pip."""
    _ort_python()
    sys.exit(_native.main(["onnx-emp"] + sys.argv[1:]))
