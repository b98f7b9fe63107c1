//! Load and re-save a model unchanged: `cargo run --example roundtrip -- IN OUT`.
//! Used to cross-check lossless I/O with other tools (e.g. Python's onnx).
fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        eprintln!("usage: roundtrip IN OUT");
        std::process::exit(2);
    }
    if let Err(e) = onnx_emp::run::roundtrip(a[1].as_ref(), a[2].as_ref()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
