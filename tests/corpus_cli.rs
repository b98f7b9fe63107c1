//! Issue 7 through the command line: every corpus case in every mode (per-weight, channels,
//! heads) ends with exit code 0 (a valid model, output loads again) or 1 (one-line error, no
//! output file, no staging folder left) — never a panic (101), a signal, or a hang.

mod common;

use assert_cmd::Command;
use common::corpus::{self, Expect};
use std::time::Duration;

// The corpus' weights are tiny: `--include small` makes them per-weight candidates, so the
// pruning path (not just the "nothing to prune" refusal) runs on every case.
const MODES: &[&[&str]] = &[&["--include", "small"], &["--structured", "channels"], &["--structured", "heads"]];

#[test]
fn every_case_every_mode() {
    let root = tempfile::tempdir().unwrap();
    let cases = corpus::cases();
    assert!(cases.len() >= 50);
    let mut failures = Vec::new();
    for case in &cases {
        let case_dir = root.path().join("cases");
        std::fs::create_dir_all(&case_dir).unwrap();
        let model = corpus::write_case(case, &case_dir).unwrap();
        for mode in MODES {
            let out_dir = tempfile::tempdir().unwrap();
            let out = out_dir.path().join("out.onnx");
            let verify = matches!(case.expect, Expect::Valid) && case.tract && mode[0] == "--include";
            let mut c = Command::cargo_bin("onnx-emp").unwrap();
            c.arg(&model).arg(&out).args(*mode).arg("--no-latency").timeout(Duration::from_secs(60));
            if !verify {
                c.arg("--no-verify");
            }
            let o = c.output().unwrap();
            let code = o.status.code();
            let err = String::from_utf8_lossy(&o.stderr).into_owned();
            let label = format!("{} {:?}", case.name, mode);
            let leftovers: Vec<String> = std::fs::read_dir(out_dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".onnx-emp-") || n.starts_with(".tmp"))
                .collect();
            if !leftovers.is_empty() {
                failures.push(format!("{label}: left {leftovers:?}"));
            }
            match code {
                Some(0) => {
                    if let Expect::Error(want) = case.expect {
                        failures.push(format!("{label}: accepted, expected an error about {want:?}"));
                    } else if let Err(e) = onnx_emp::model::io::load(&out) {
                        failures.push(format!("{label}: output does not load: {e:#}"));
                    }
                }
                Some(1) => {
                    if out.exists() {
                        failures.push(format!("{label}: output written despite exit 1"));
                    }
                    if err.trim().lines().count() != 1 || !err.starts_with("error: ") {
                        failures.push(format!("{label}: error not one line: {err:?}"));
                    }
                    if matches!(case.expect, Expect::Valid) && mode[0] == "--include" {
                        failures.push(format!("{label}: valid model refused: {}", err.trim()));
                    }
                }
                other => failures.push(format!("{label}: exit {other:?} (timeout or crash): {}", err.trim())),
            }
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}
