//! The `onnx-emp` command: everything is in [`onnx_emp::cli`] (shared with the Python package).
fn main() -> std::process::ExitCode {
    onnx_emp::interrupt::install();
    onnx_emp::cli::main(std::env::args_os())
}
