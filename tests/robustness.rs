//! Issue 7: broken or hostile models never crash the library, never hang, never read outside the
//! model's folder, never allocate by an unchecked size, and never yield a bad file.
//!
//! Every case of `common::corpus` is written to its own folder and run in process: `io::load`,
//! `GraphIndex::build`, `prune_weights` with each scope (and with every optional role), and for
//! valid models a save and a reload of the result. Each case runs in a thread under
//! `catch_unwind`, with a timeout, an inotify watch on the file outside its folder and an
//! allocation guard (peak live bytes per case, hard cap for the process).

mod common;

use common::analyse::{self, one_line, Outcome};
use common::corpus::{self, Case, Expect};
use common::guard::{self, Guard, Watch};
use onnx_emp::model::io;
use onnx_emp::prune::weights::{prune_weights, Include, Scope, WeightOptions};
use onnx_protobuf::Message;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: Guard = Guard;

/// Tests that measure allocation peaks run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// A case must finish within this (dev profile, 2 shared cores).
const TIMEOUT: Duration = Duration::from_secs(10);

/// Peak live bytes a case may use: a fixed allowance plus a multiple of its files' size. Hostile
/// sizes in fields (2^40 elements, 2^64 offsets) must not show up here.
fn alloc_budget(case_bytes: usize) -> usize {
    (64 << 20) + 64 * case_bytes
}

/// What one case did, stage by stage.
#[derive(Debug)]
enum Run {
    LoadError(String),
    Analysed(Outcome),
}

fn run_case(path: &Path) -> Run {
    let loaded = match io::load(path) {
        Ok(l) => l,
        Err(e) => return Run::LoadError(one_line(&e)),
    };
    let outcome = analyse::analyse_model(&loaded.proto);
    if let Outcome::Pruned(results) = &outcome {
        if results.iter().all(|r| r.is_ok()) {
            // The file-level round trip of a result: save beside the input's folder (external
            // tensors stay external), load again, same message.
            let mut m = loaded.proto.clone();
            let opts = WeightOptions {
                beta: 1.0,
                scope: Scope::Unit,
                include: Include { small: true, ..Include::default() },
                scores: Default::default(),
                fixed_ratio: None,
            };
            prune_weights(&mut m, &opts).unwrap();
            let out_dir = tempfile::tempdir().unwrap();
            let out = out_dir.path().join("pruned.onnx");
            io::save(m.clone(), &out, &io::SaveOptions { external: loaded.external.clone() })
                .unwrap_or_else(|e| panic!("saving a pruned valid model: {e:#}"));
            let back = io::load(&out).unwrap_or_else(|e| panic!("the saved pruned model does not load: {e:#}"));
            assert!(
                back.proto.write_to_bytes().unwrap() == m.write_to_bytes().unwrap(),
                "save/load changed the pruned model"
            );
            assert_eq!(back.external, loaded.external, "external tensors changed on save");
        }
    }
    Run::Analysed(outcome)
}

/// Check a case's run against its expectation; Ok(summary) or Err(why).
fn judge(case: &Case, run: &Run) -> Result<String, String> {
    match (&case.expect, run) {
        (Expect::Valid, Run::Analysed(Outcome::Pruned(rs))) if rs.iter().all(|r| r.is_ok()) => {
            Ok(format!("ok, kept {:?}", rs.iter().map(|r| *r.as_ref().unwrap()).collect::<Vec<_>>()))
        }
        (Expect::Valid, r) => Err(format!("expected a valid model, got {r:?}")),
        (Expect::Error(needle), Run::LoadError(e)) => {
            if !e.contains(corpus::MODEL) {
                return Err(format!("load error does not name the file: {e}"));
            }
            if !e.contains(needle) {
                return Err(format!("error does not mention {needle:?}: {e}"));
            }
            Ok(format!("load error: {e}"))
        }
        (Expect::Error(needle), Run::Analysed(o)) => {
            let errors: Vec<&str> = match o {
                Outcome::ParseError(e) | Outcome::IndexError(e) => vec![e.as_str()],
                Outcome::Pruned(rs) => {
                    if let Some(ok) = rs.iter().find(|r| r.is_ok()) {
                        return Err(format!("expected an error, but a prune run succeeded ({ok:?}): {rs:?}"));
                    }
                    rs.iter().map(|r| r.as_ref().unwrap_err().as_str()).collect()
                }
            };
            for e in &errors {
                if !e.contains(needle) {
                    return Err(format!("error does not mention {needle:?}: {e}"));
                }
            }
            Ok(format!("error: {}", errors[0]))
        }
    }
}

fn case_bytes(case: &Case) -> usize {
    case.model.len()
        + case.extra.iter().map(|x| if let corpus::Extra::File(_, b) = x { b.len() } else { 0 }).sum::<usize>()
}

#[test]
fn corpus_of_broken_and_hostile_models() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cases = corpus::cases();
    assert!(cases.len() >= 50, "the corpus should hold at least 50 cases, has {}", cases.len());
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), cases.len(), "case names must be unique");

    let root = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut lines = Vec::new();
    for case in cases {
        // Each case gets its own parent folder: the bait file `outside.bin` is watched there.
        let parent = root.path().join(format!("p_{}", case.name));
        std::fs::create_dir_all(&parent).unwrap();
        let path = corpus::write_case(&case, &parent).unwrap();
        let watch = Watch::new(&parent);
        let base = guard::reset_peak();
        let start = Instant::now();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        std::thread::Builder::new()
            .name(case.name.to_string())
            .spawn(move || {
                let r = catch_unwind(AssertUnwindSafe(|| run_case(&p)));
                let _ = tx.send(r.map_err(|e| {
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                }));
            })
            .unwrap();
        let verdict = match rx.recv_timeout(TIMEOUT) {
            Err(_) => Err(format!("did not finish within {TIMEOUT:?} (hang)")),
            Ok(Err(panic)) => Err(format!("PANIC: {panic}")),
            Ok(Ok(run)) => judge(&case, &run),
        };
        let elapsed = start.elapsed();
        let peak = guard::peak().saturating_sub(base);
        let mut verdict = verdict;
        let budget = alloc_budget(case_bytes(&case));
        if verdict.is_ok() && peak > budget {
            verdict = Err(format!("allocated {peak} bytes at peak, budget {budget}"));
        }
        let touched: Vec<String> = watch.touched().into_iter().filter(|n| n == corpus::OUTSIDE).collect();
        if !touched.is_empty() {
            verdict = Err(format!("opened or read {} outside the model's folder", corpus::OUTSIDE));
        }
        let line = format!(
            "{:<32} {:<15} {:>7.1} ms {:>8} KiB  {}",
            case.name,
            case.category,
            elapsed.as_secs_f64() * 1e3,
            peak >> 10,
            match &verdict {
                Ok(s) => s.clone(),
                Err(e) => format!("FAIL: {e}"),
            }
        );
        lines.push(line);
        if let Err(e) = verdict {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    eprintln!("{}", lines.join("\n"));
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

/// The corpus holds a case for each category the issue lists.
#[test]
fn corpus_covers_the_categories() {
    let cases = corpus::cases();
    for cat in ["bytes", "tensors", "graph", "attributes", "external data", "valid"] {
        assert!(cases.iter().filter(|c| c.category == cat).count() >= 3, "category {cat}");
    }
    let errors = cases.iter().filter(|c| c.expect != Expect::Valid).count();
    let valid = cases.len() - errors;
    assert!(errors >= 50 && valid >= 10, "{errors} error cases, {valid} valid cases");
}

/// A failed save leaves nothing behind: no output, no temp file, no data file.
#[test]
fn failed_save_leaves_no_partial_output() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = corpus::model("digits_mlp.onnx");
    let dir = tempfile::tempdir().unwrap();
    // The output path is an existing folder.
    let out = dir.path().join("out.onnx");
    std::fs::create_dir(&out).unwrap();
    let all = m.graph.initializer.iter().map(|t| t.name.clone()).collect();
    let e = io::save(m.clone(), &out, &io::SaveOptions { external: all }).unwrap_err();
    assert!(!format!("{e:#}").contains('\n'));
    let left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, vec!["out.onnx".to_string()], "left behind");
    assert!(std::fs::read_dir(&out).unwrap().next().is_none(), "wrote into the folder");
    // The data file's name is taken by a folder: refused before anything is written.
    let out2 = dir.path().join("two.onnx");
    std::fs::create_dir(dir.path().join("two.onnx.data")).unwrap();
    let all = m.graph.initializer.iter().map(|t| t.name.clone()).collect();
    io::save(m.clone(), &out2, &io::SaveOptions { external: all }).unwrap_err();
    assert!(!out2.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "temp files left behind");
    // A folder that does not exist: nothing is created.
    let e = io::save(m, &dir.path().join("no/such/dir/x.onnx"), &io::SaveOptions::default()).unwrap_err();
    assert!(format!("{e:#}").contains("cannot create"), "{e:#}");
    assert!(!dir.path().join("no").exists());
}

/// A model built in memory (not parsed, so protobuf's depth limit did not apply) with subgraphs
/// nested far deeper than any file can hold is refused by `validate`, not a stack overflow.
#[test]
fn deep_in_memory_model_is_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let bytes = corpus::cases().into_iter().find(|c| c.name == "if_nested_8").unwrap().model;
    let mut m = onnx_protobuf::ModelProto::parse_from_bytes(&bytes).unwrap();
    onnx_emp::model::validate::validate(&m).unwrap();
    // Wrap the top graph in 60 more levels of If.
    for i in 0..60 {
        let g = m.graph.take().unwrap();
        let mut n = corpus::node("If", &format!("wrap{i}"), &["cond"], &[&format!("w{i}")]);
        n.attribute.push(corpus::attr_g("then_branch", g));
        let mut top = onnx_protobuf::GraphProto::new();
        top.node.push(n);
        let mut cond = onnx_protobuf::TensorProto::new();
        cond.name = "cond".into();
        cond.data_type = 9;
        cond.raw_data = vec![1];
        top.initializer.push(cond);
        m.graph = Some(top).into();
    }
    let e = onnx_emp::model::validate::validate(&m).unwrap_err();
    assert!(format!("{e:#}").contains("nested deeper"), "{e:#}");
}

/// A 3 GiB (sparse) model file is refused from its size, before anything is read.
#[test]
fn model_file_over_2gib_is_refused_unread() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.onnx");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    let base = guard::reset_peak();
    let e = io::load(&p).unwrap_err();
    assert!(guard::peak() - base < 1 << 20, "allocated {} bytes", guard::peak() - base);
    let msg = one_line(&e);
    assert!(msg.contains("huge.onnx") && msg.contains("2 GiB"), "{msg}");
}
