//! Write the robustness corpus to a folder, for CLI tests and for seeding the fuzzer.
//!
//!     cargo run --example make_corpus -- OUT_DIR [--seeds SEED_DIR]
//!
//! OUT_DIR gets one folder per case (`<name>/model.onnx` plus the files the case needs),
//! `outside.bin` (the file hostile external-data locations point to: nothing may read it) and
//! `manifest.json`: per case its name, category, description, expectation ("valid" or "error"),
//! the text the error must contain, and whether tract is expected to run it. SEED_DIR gets the
//! small valid models the fuzzer starts from, plus every case's model.onnx under 4 KiB.

#[path = "../tests/common/corpus/mod.rs"]
mod corpus;

use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("usage: make_corpus OUT_DIR [--seeds SEED_DIR]");
        std::process::exit(2);
    };
    let seeds = args.iter().position(|a| a == "--seeds").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    std::fs::create_dir_all(&out).unwrap();
    let cases = corpus::cases();
    let mut manifest = Vec::new();
    for c in &cases {
        corpus::write_case(c, &out).unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let (expect, needle) = match &c.expect {
            corpus::Expect::Valid => ("valid", ""),
            corpus::Expect::Error(n) => ("error", *n),
        };
        manifest.push(serde_json::json!({
            "name": c.name,
            "category": c.category,
            "what": c.what,
            "model": format!("{}/{}", c.name, corpus::MODEL),
            "expect": expect,
            "error_contains": needle,
            "tract": c.tract,
        }));
    }
    std::fs::write(out.join("manifest.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    if let Some(dir) = seeds {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, b) in corpus::seeds() {
            std::fs::write(dir.join(format!("seed_{name}.onnx")), b).unwrap();
        }
        for c in cases.iter().filter(|c| c.model.len() < 4 << 10) {
            std::fs::write(dir.join(format!("case_{}.onnx", c.name)), &c.model).unwrap();
        }
    }
    println!("{} cases written to {}", cases.len(), out.display());
}
