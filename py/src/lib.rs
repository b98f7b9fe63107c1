//! `onnx_emp._native`: the onnx-emp command line, callable from Python.
//!
//! Both functions take the argument list as the CLI does (program name first) and release the
//! GIL while the pass runs. Errors raise `onnx_emp.OnnxEmpError` (exit code 1) or `ValueError`
//! (bad usage, exit code 2) with the same one-line message the CLI prints.

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

/// Run a command line without printing; return the JSON report (or `diff`'s text).
#[pyfunction]
fn run_json(py: Python<'_>, args: Vec<String>) -> PyResult<String> {
    py.allow_threads(|| onnx_emp::cli::run_to_json(args)).map_err(to_py)
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
