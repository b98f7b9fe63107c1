//! `onnx_emp._native`: the onnx-emp command line, callable from Python.
//!
//! Both functions take the argument list as the CLI does (program name first) and release the
//! GIL while the pass runs. Errors raise `onnx_emp.OnnxEmpError` (exit code 1) or `ValueError`
//! (bad usage, exit code 2) with the one-line message the CLI prints; `run_json`'s usage errors
//! name the options as `onnx_emp.prune`/`plan` take them ([`Keywords`]: `reconstruct=False`, not
//! `--no-reconstruct`).

use onnx_emp::flags::{Flag, Spelling};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(_native, OnnxEmpError, PyRuntimeError, "onnx-emp could not prune, verify or write the model.");

fn to_py(f: onnx_emp::cli::Failure) -> PyErr {
    match f.code {
        2 => PyValueError::new_err(f.message),
        _ => OnnxEmpError::new_err(f.message),
    }
}

/// The keyword arguments of `onnx_emp.prune` and `onnx_emp.plan` (python/onnx_emp/__init__.py
/// turns each into its flag).
struct Keywords;

impl Spelling for Keywords {
    fn flag(&self, f: Flag) -> String {
        match f {
            Flag::NoVerify => "verify=False",
            Flag::NoLatency => "latency=False",
            Flag::LatencyIn => "latency='tract' or 'onnxruntime'",
            Flag::NoReconstruct => "reconstruct=False",
            Flag::AllowMismatch => "allow_mismatch=True",
            Flag::AllowUnproven => "allow_unproven=True",
            Flag::SparseInitializers => "sparse_initializers=True",
            Flag::Force => "force=True",
            Flag::Dim => "dims",
            Flag::Plan => "plan()",
            _ => return keyword(f),
        }
        .to_string()
    }

    fn with_value(&self, f: Flag, value: &str) -> String {
        match (f, value.split_once('=')) {
            // `dims={'batch': 0}` is passed as `--dim batch=0`.
            (Flag::Dim, Some((k, v))) => format!("dims={{{}: {}}}", py_literal(k), py_literal(v)),
            (Flag::LatencyIn, _) => format!("latency={}", py_literal(value)),
            _ => format!("{}={}", keyword(f), py_literal(value)),
        }
    }
}

/// The keyword of a flag that takes a value: `--calibration-rows` → `calibration_rows`.
fn keyword(f: Flag) -> String {
    f.cli().trim_start_matches("--").replace('-', "_")
}

/// A value as Python writes it: a number as is, text quoted (text already quoted stays so).
fn py_literal(v: &str) -> String {
    let quoted = v.len() >= 2 && v.starts_with('\'') && v.ends_with('\'');
    if quoted || v.parse::<f64>().is_ok_and(f64::is_finite) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Run a command line without printing; return the JSON report (or `diff`'s text).
#[pyfunction]
fn run_json(py: Python<'_>, args: Vec<String>) -> PyResult<String> {
    py.allow_threads(|| onnx_emp::cli::run_to_json_as(args, &Keywords)).map_err(to_py)
}

/// Run a command line as the `onnx-emp` executable does (printing included); return its exit code.
#[pyfunction]
fn main(py: Python<'_>, args: Vec<String>) -> i32 {
    let code = py.allow_threads(|| onnx_emp::cli::main(args));
    // ExitCode has no accessor: compare with the three codes the CLI uses.
    if code == std::process::ExitCode::SUCCESS {
        0
    } else if code == std::process::ExitCode::from(2) {
        2
    } else {
        1
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_json, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add("OnnxEmpError", m.py().get_type::<OnnxEmpError>())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_named_as_the_python_keywords() {
        assert_eq!(Keywords.flag(Flag::NoReconstruct), "reconstruct=False");
        assert_eq!(Keywords.flag(Flag::CalibrationRows), "calibration_rows");
        assert_eq!(Keywords.with_value(Flag::Guard, "0.2"), "guard=0.2");
        assert_eq!(Keywords.with_value(Flag::Structured, "heads"), "structured='heads'");
        assert_eq!(Keywords.with_value(Flag::Include, "'bias,'"), "include='bias,'");
        assert_eq!(Keywords.with_value(Flag::Dim, "batch=0"), "dims={'batch': 0}");
        assert_eq!(Keywords.with_value(Flag::RoundTo, "auto"), "round_to='auto'");
        assert_eq!(Keywords.with_value(Flag::Inputs, "it's"), "inputs='it\\'s'");
        assert_eq!(Keywords.with_value(Flag::WeightInputs, "input"), "weight_inputs='input'");
        assert_eq!(Keywords.flag(Flag::SparseInitializers), "sparse_initializers=True");
    }
}
