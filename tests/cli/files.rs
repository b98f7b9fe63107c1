//! Files read and written: `--html`, `--sparse-initializers`, compressed `.npz`, calibration rows,
//! and written paths that never replace models, data, FIFOs or symlinks.
use super::*;

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// `--html` writes one self-contained page for every mode (and for `plan`): every group of the
/// JSON report by its exact name, heads as a grid, per-tensor sparsity, no external resource.
#[test]
fn html_report_is_self_contained_and_complete() {
    let cases: [(&str, &str, &[&str]); 4] = [
        ("digits_cnn", "digits_test_x1x8x8", &[]),
        ("yolo_block", "digits_test_x1x8x8", &["--structured", "channels", "--beta", "0.8"]),
        ("digits_transformer", "digits_test_x8x8", &["--structured", "heads,channels", "--beta", "1"]),
        ("digits_lstm", "digits_test_x8x8", &["--structured", "channels"]),
    ];
    for (model, data, extra) in cases {
        let dir = tempfile::tempdir().unwrap();
        let page = dir.path().join("r.html");
        let r = run(model, data, &[extra, &["--html", page.to_str().unwrap()]].concat());
        let h = std::fs::read_to_string(&page).unwrap();
        assert!(h.starts_with("<!DOCTYPE html>") && h.trim_end().ends_with("</html>"), "{model}");
        for bad in ["http:", "https:", "<script", "<link", "src=", "url(", "@import", "<img", "<iframe"] {
            assert!(!h.to_lowercase().contains(bad), "{model}: external resource marker {bad}");
        }
        for tag in ["svg", "table", "g", "tr", "ul"] {
            let open = h.matches(&format!("<{tag}>")).count() + h.matches(&format!("<{tag} ")).count();
            assert_eq!(open, h.matches(&format!("</{tag}>")).count(), "{model}: <{tag}> not balanced");
        }
        for g in r.report["groups"].as_array().unwrap() {
            let id = html_escape(g["id"].as_str().unwrap());
            assert!(h.contains(&format!("<td>{id}</td>")), "{model}: group {id} missing");
            if let Some(why) = g["blocked"].as_str() {
                assert!(h.contains(&html_escape(why)), "{model}: blocked reason of {id} missing");
            }
        }
        let removed_heads: usize = r.report["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == "heads")
            .map(|g| g["removed"].as_array().map(|a| a.len()).unwrap_or(0))
            .sum();
        assert_eq!(h.matches(": removed</title>").count(), removed_heads, "{model}");
        if extra.iter().any(|e| e.contains("heads")) {
            assert!(removed_heads > 0 && h.contains("<h2>Heads</h2>"), "{model}");
        }
        if let Some(w) = r.report["weights"].as_object() {
            for t in w["tensors"].as_array().unwrap() {
                assert!(h.contains(&html_escape(t["name"].as_str().unwrap())), "{model}");
            }
            assert!(h.contains("Per-layer sparsity"));
        }
        if let Some(trials) = r.report["guard"]["trials"].as_array() {
            // Default runs (digits_cnn's raised β; digits_lstm's channels passed at β = 1): every
            // trial is a row, one written.
            assert!(!trials.is_empty() && h.contains("Fidelity guard"), "{model}");
            assert_eq!(h.matches("<td>over</td>").count(), trials.iter().filter(|t| t["pass"] == false).count());
            assert_eq!(h.matches("<b>written</b>").count(), 1, "{model}");
        }
        assert!(h.contains("accuracy"), "{model}: fidelity figures missing");
    }
    // plan writes the page too
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("p.html");
    bin().args(["plan", "models/yolo_block.onnx", "--structured", "channels", "--html"]).arg(&page).assert().success();
    assert!(std::fs::read_to_string(&page).unwrap().contains("plan only"));
}

/// `--sparse-initializers`: the file shrinks by what sparse storage saves, the weights read back
/// are exactly the dense run's, and the run is deterministic.
#[test]
fn sparse_initializers_shrink_the_file_and_keep_every_value() {
    use onnx_emp::model::{io, sparse};
    let dense = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify"]);
    let sp = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify", "--sparse-initializers"]);
    let again = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify", "--sparse-initializers"]);
    assert_eq!(std::fs::read(&sp.out).unwrap(), std::fs::read(&again.out).unwrap());
    let s = &sp.report["sparse_initializers"];
    let (tensors, db, sb) =
        (s["tensors"].as_u64().unwrap(), s["dense_bytes"].as_u64().unwrap(), s["sparse_bytes"].as_u64().unwrap());
    assert!(tensors >= 1 && sb < db, "{s}");
    let (d_size, s_size) = (std::fs::metadata(&dense.out).unwrap().len(), std::fs::metadata(&sp.out).unwrap().len());
    assert_eq!(sp.report["output"]["bytes"].as_u64().unwrap(), s_size);
    assert!(d_size - s_size >= db - sb - 64 * tensors, "{d_size} → {s_size} for a payload saving of {}", db - sb);
    let mut back = io::load(&sp.out).unwrap().proto;
    assert_eq!(back.graph.as_ref().unwrap().sparse_initializer.len() as u64, tensors);
    sparse::densify_initializers(&mut back).unwrap();
    let want = io::load(&dense.out).unwrap().proto;
    let by_name = |m: &onnx_protobuf::ModelProto| {
        let mut v: Vec<(String, Vec<u8>)> =
            m.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name.clone(), t.raw_data.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(by_name(&back), by_name(&want));
    // `diff` and `plan` read them dense too (diff said every weight was removed; plan counted
    // no MACs).
    let d = bin().arg("diff").arg(&dense.out).arg(&sp.out).assert().success();
    let d = String::from_utf8_lossy(&d.get_output().stdout).to_string();
    assert!(
        d.contains("stored as sparse initializers, compared dense") && d.contains("no structural differences"),
        "{d}"
    );
    assert!(!d.contains("removed"), "{d}");
    let dp = dense.report["params"]["after"].as_u64().unwrap();
    assert!(d.contains(&format!("params: {dp} → {dp}")), "{d}");
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("plan.json");
    bin().arg("plan").arg(&sp.out).arg("--report").arg(&rep).assert().success();
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert!(p["macs_before"].as_u64() > Some(0), "{}", p["notes"]);
    // Without enough zeros nothing is stored sparse, and the report says why.
    let low = run("digits_mlp", "digits_test_x64", &["--no-verify", "--sparse-initializers"]);
    assert_eq!(low.report["sparse_initializers"]["tensors"], 0);
    assert!(low.stdout.contains("stored dense"), "{}", low.stdout);
}

/// A model whose weights are stored as sparse initializers (here: one `--sparse-initializers`
/// wrote) is pruned and verified dense, then written back with the same tensors sparse again
/// (lossless I/O; it came out dense before), each densifying to exactly what a run on the
/// dense-stored model writes; the report says so, its size is the file's, and the run is
/// deterministic. Channels mode too.
#[test]
fn sparse_initializers_of_the_input_stay_sparse() {
    use onnx_emp::model::{io, sparse};
    let stored = run("digits_mlp", "digits_test_x64", &["--ratio", "0.9", "--no-verify", "--sparse-initializers"]);
    let names = sparse::sparse_names(&io::load(&stored.out).unwrap().proto);
    assert_eq!(names.len(), 3, "{names:?}");
    let dense_stored = {
        let mut m = io::load(&stored.out).unwrap().proto;
        sparse::densify_initializers(&mut m).unwrap();
        let p = stored.out.with_file_name("dense_stored.onnx");
        io::save(m, &p, &Default::default()).unwrap();
        p
    };
    for extra in [&["--beta", "1"][..], &["--structured", "channels", "--beta", "0.8", "--guard", "off"][..]] {
        let prune = |input: &Path, out: &Path| {
            let rep = out.with_extension("json");
            let a = bin()
                .arg(input)
                .arg(out)
                .args(["--inputs", "models/digits_test_x64.npy", "--no-latency", "--report"])
                .arg(&rep)
                .args(extra)
                .assert()
                .success();
            let report: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
            (String::from_utf8_lossy(&a.get_output().stdout).into_owned(), report)
        };
        let dir = tempfile::tempdir().unwrap();
        let (a, b, d) = (dir.path().join("a.onnx"), dir.path().join("b.onnx"), dir.path().join("d.onnx"));
        let (stdout, report) = prune(&stored.out, &a);
        prune(&stored.out, &b);
        prune(&dense_stored, &d);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{extra:?}: not deterministic");
        assert!(
            stdout.contains("3 sparse initializer(s) read as dense tensors") && stdout.contains("written sparse again"),
            "{stdout}"
        );
        assert_eq!(report["output"]["bytes"].as_u64().unwrap(), std::fs::metadata(&a).unwrap().len());
        let mut back = io::load(&a).unwrap().proto;
        assert_eq!(sparse::sparse_names(&back), names, "{extra:?}");
        sparse::densify_initializers(&mut back).unwrap();
        let want = io::load(&d).unwrap().proto;
        let by_name = |m: &onnx_protobuf::ModelProto| {
            let mut v: Vec<(String, Vec<i64>, Vec<u8>)> = m
                .graph
                .as_ref()
                .unwrap()
                .initializer
                .iter()
                .map(|t| (t.name.clone(), t.dims.clone(), t.raw_data.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(by_name(&back), by_name(&want), "{extra:?}");
    }
}

/// `np.savez_compressed` files (deflate) are read like plain `.npz`, for `--inputs` and
/// `--calibration`: the same accuracy and cut as the `.npy` files they hold. Before, the zip
/// reader had no deflate: calibration failed, and verification was skipped with the model
/// written (exit 0).
#[test]
fn compressed_npz_files_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let pack = |from: &str, to: &str| {
        let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(Path::new(ROOT).join("models").join(from)).unwrap();
        let p = dir.path().join(to);
        let mut w = ndarray_npy::NpzWriter::new_compressed(std::fs::File::create(&p).unwrap());
        w.add_array("x", &a).unwrap();
        // Labels saved beside the samples feed no input: ignored, and said so.
        if to == "cal.npz" {
            w.add_array("y", &ndarray::Array1::<i64>::zeros(a.shape()[0])).unwrap();
        }
        w.finish().unwrap();
        p
    };
    let (x, cal) = (pack("digits_test_x64.npy", "x.npz"), pack("digits_calib_x64.npy", "cal.npz"));
    let go = |inputs: &Path, cal: &Path, out: &str| -> Value {
        let rep = dir.path().join(format!("{out}.json"));
        bin()
            .args(["models/digits_mlp.onnx"])
            .arg(dir.path().join(out))
            .arg("--inputs")
            .arg(inputs)
            .arg("--calibration")
            .arg(cal)
            .args(["--labels", "models/digits_test_y.npy", "--no-latency", "-q", "--report"])
            .arg(&rep)
            .assert()
            .success();
        serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap()
    };
    let packed = go(&x, &cal, "packed.onnx");
    let models = Path::new(ROOT).join("models");
    let plain = go(&models.join("digits_test_x64.npy"), &models.join("digits_calib_x64.npy"), "plain.onnx");
    assert_eq!(packed["verification"]["status"], "ok", "{}", packed["verification"]);
    assert_eq!(packed["verification"]["input_shapes"]["x"], serde_json::json!([360, 64]));
    for key in ["accuracy_dense", "accuracy_pruned"] {
        assert!(packed["verification"][key].is_number(), "{key}");
        assert_eq!(packed["verification"][key], plain["verification"][key], "{key}");
    }
    assert!(packed["reconstruction"]["samples"].as_u64() > Some(0));
    let notes = packed["notes"].to_string();
    assert!(notes.contains("whose arrays y feed no input: ignored"), "{notes}");
    assert_eq!(packed["weights"]["kept_elems"], plain["weights"]["kept_elems"]);
    let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
    assert_eq!(read("packed.onnx"), read("plain.onnx"));
}

/// A calibration file larger than `--calibration-rows` is subsampled evenly (the report's label
/// says how many of how many); 0 uses every row. Reconstruction's time grows with the rows while
/// its fidelity stops improving, so the default caps it (512).
#[test]
fn calibration_rows_cap_the_samples_used() {
    let rows = |extra: &[&str]| -> Value {
        let mut args = vec!["--calibration", "models/digits_calib_x64.npy", "--no-verify"];
        args.extend_from_slice(extra);
        report_of("digits_mlp", &args)
    };
    let capped = rows(&["--calibration-rows", "100"]);
    let label = capped["calibration"].as_str().unwrap();
    assert!(label.contains("100 of 256 rows, evenly spaced"), "{label}");
    // Per weight, the refit solves on the first four fifths of the rows it is given.
    assert_eq!(capped["reconstruction"]["samples"], 80);
    let all = rows(&["--calibration-rows", "0"]);
    assert!(all["calibration"].as_str().unwrap().ends_with("(256 rows)"), "{}", all["calibration"]);
    assert_eq!(all["reconstruction"]["samples"], 256 - 256 / 5);
    // The default (512) leaves these 256 rows whole.
    assert_eq!(rows(&[])["calibration"], all["calibration"]);
}

/// `--report` / `--html` never land on a model the run reads or writes (they replaced it with
/// JSON), nor on each other; a FIFO or a device (`--report /dev/stdout`) is written through, not
/// replaced by a regular file, and a symlinked output is written where the link points.
#[test]
fn written_paths_never_replace_models_data_fifos_or_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.onnx");
    std::fs::copy(Path::new(ROOT).join("models/digits_mlp.onnx"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let out = d.join("out.onnx");
    // The data files the run reads.
    for f in ["x.npy", "c.npy", "y.npy"] {
        let src = match f {
            "y.npy" => "models/digits_test_y.npy",
            "c.npy" => "models/digits_calib_x64.npy",
            _ => "models/digits_test_x64.npy",
        };
        std::fs::copy(Path::new(ROOT).join(src), d.join(f)).unwrap();
    }
    let data: Vec<Vec<u8>> = ["x.npy", "c.npy", "y.npy"].iter().map(|f| std::fs::read(d.join(f)).unwrap()).collect();
    let run = ["--inputs", "x.npy", "--labels", "y.npy", "--calibration", "c.npy"];
    for (o, args, needle) in [
        ("c.npy", vec![], "c.npy: that is a --calibration file the run reads"),
        ("y.npy", vec![], "y.npy: that is the --labels file the run reads"),
        ("x.npy", vec![], "x.npy: that is a --inputs file the run reads"),
        ("out.onnx", vec!["--report", "x.npy"], "--report x.npy: that is a --inputs file"),
        ("out.onnx", vec!["--html", "y.npy"], "--html y.npy: that is the --labels file"),
        ("out.onnx", vec!["--report", "c.npy"], "--report c.npy: that is a --calibration file"),
        // A report that cannot be written fails before anything runs, not after OUT is written.
        ("out.onnx", vec!["--report", "no/r.json"], "--report no/r.json: folder no does not exist"),
        ("out.onnx", vec!["--html", "."], "--html .: that is a folder"),
    ] {
        let a =
            bin().current_dir(d).args(["in.onnx", o, "--no-latency", "-q"]).args(run).args(&args).assert().failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(needle), "{o} {args:?}: {err}");
    }
    for (f, bytes) in ["x.npy", "c.npy", "y.npy"].iter().zip(&data) {
        assert_eq!(&std::fs::read(d.join(f)).unwrap(), bytes, "{f} was changed");
    }
    assert!(!out.exists());
    for (args, needle) in [
        (vec!["--report", "in.onnx"], "--report in.onnx: that is the input model"),
        (vec!["--html", "out.onnx"], "--html out.onnx: that is the output model"),
        (vec!["--report", "out.onnx.data"], "that is the output model's external data file"),
        (vec!["--report", "r.json", "--html", "r.json"], "--html r.json: that is the --report file"),
    ] {
        let a = bin().current_dir(d).args(["in.onnx", "out.onnx", "--no-latency", "-q"]).args(&args).assert().failure();
        let err = String::from_utf8_lossy(&a.get_output().stderr).to_string();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let a = bin().current_dir(d).args(["plan", "in.onnx", "--report", "in.onnx"]).assert().failure();
    assert!(String::from_utf8_lossy(&a.get_output().stderr).contains("that is the input model"));
    assert_eq!(std::fs::read(&input).unwrap(), before);
    assert!(!out.exists());
    // A symlinked report and output: written where they point, the links kept.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("real.json", d.join("link.json")).unwrap();
        std::os::unix::fs::symlink("real.onnx", d.join("link.onnx")).unwrap();
        bin()
            .current_dir(d)
            .args(["in.onnx", "link.onnx", "--no-latency", "-q", "--report", "link.json"])
            .assert()
            .success();
        assert!(d.join("link.json").is_symlink() && d.join("link.onnx").is_symlink());
        // A link into another filesystem (tmpfs, where the machine has one): staged beside its
        // target, so the final rename does not cross devices (it failed "cannot write").
        use std::os::unix::fs::MetadataExt;
        let shm = Path::new("/dev/shm");
        if shm.is_dir() && std::fs::metadata(shm).unwrap().dev() != std::fs::metadata(d).unwrap().dev() {
            let far = tempfile::tempdir_in(shm).unwrap();
            std::os::unix::fs::symlink(far.path().join("m.onnx"), d.join("far.onnx")).unwrap();
            bin().current_dir(d).args(["in.onnx", "far.onnx", "--no-latency", "-q"]).assert().success();
            onnx_emp::model::io::load(&far.path().join("m.onnx")).unwrap();
            assert!(d.join("far.onnx").is_symlink());
        }
        assert!(std::fs::read_to_string(d.join("real.json")).unwrap().contains("\"tool\""));
        onnx_emp::model::io::load(&d.join("real.onnx")).unwrap();
        // A FIFO: read by another process while the run writes into it.
        let fifo = d.join("r.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || std::fs::read_to_string(fifo).unwrap()
        });
        bin()
            .current_dir(d)
            .args(["in.onnx", "out.onnx", "--no-latency", "-q", "--report", "r.fifo"])
            .assert()
            .success();
        assert!(reader.join().unwrap().contains("\"tool\""));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    }
}
