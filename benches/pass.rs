//! Benchmark of the pass itself (load → prune → save, no verification) against copying the file.
//!
//!   cargo bench --bench pass                      # largest model found in models/ and ../shared/models
//!   cargo bench --bench pass -- path/to/model.onnx [--scope unit|layer|global]
//!   cargo bench --bench pass -- --generate 1600 DIR   # write a synthetic transformer-like model
//!                                                    # (≈ MB megabytes, external data) into DIR
//!   scripts/bench.sh                                 # all of the above, as in the README
//!
//! Prints model size, copy time (`std::fs::copy`: an in-kernel copy), the time to read all the
//! bytes into memory and write them to a new file (the I/O any pass that holds the model does),
//! time per stage, the ratios, and peak RSS. Default scope: global (the paper's protocol; the CLI default is now normalized, which adds one
//! per-tensor sum pass).
//! One model per process so that peak RSS belongs to that model.

use onnx_emp::model::io::{self, SaveOptions};
use onnx_emp::model::tensor;
use onnx_emp::prune::weights::{prune_weights, Include, Scope, WeightOptions};
use onnx_protobuf::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, ValueInfoProto};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse::<f64>().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn file_bytes(p: &Path) -> u64 {
    let mut n = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let data = PathBuf::from(format!("{}.data", p.display()));
    n += std::fs::metadata(data).map(|m| m.len()).unwrap_or(0);
    n
}

/// Median of 3: read the model file and its data file into memory, write them to new files.
fn read_write_secs(src: &Path, dir: &Path) -> f64 {
    let mut v = Vec::new();
    let data = PathBuf::from(format!("{}.data", src.display()));
    for i in 0..3 {
        let t = Instant::now();
        let a = std::fs::read(src).unwrap();
        let b = if data.exists() { std::fs::read(&data).unwrap() } else { Vec::new() };
        std::fs::write(dir.join(format!("rw{i}.onnx")), &a).unwrap();
        if !b.is_empty() {
            std::fs::write(dir.join(format!("rw{i}.onnx.data")), &b).unwrap();
        }
        drop((a, b));
        v.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(dir.join(format!("rw{i}.onnx")));
        let _ = std::fs::remove_file(dir.join(format!("rw{i}.onnx.data")));
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[1]
}

fn copy_secs(src: &Path, dir: &Path) -> f64 {
    // Median of 3 copies of the model file and its data file.
    let mut v = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        std::fs::copy(src, dir.join(format!("copy{i}.onnx"))).unwrap();
        let data = PathBuf::from(format!("{}.data", src.display()));
        if data.exists() {
            std::fs::copy(&data, dir.join(format!("copy{i}.onnx.data"))).unwrap();
        }
        v.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(dir.join(format!("copy{i}.onnx")));
        let _ = std::fs::remove_file(dir.join(format!("copy{i}.onnx.data")));
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[1]
}

/// A transformer-like stack of MatMul weights (≈ `mb` megabytes of f32), all external.
fn generate(mb: usize, dir: &Path) -> PathBuf {
    let d = 1024usize;
    let per_layer = 2 * d * 4 * d * 4; // W1 [d,4d] and W2 [4d,d], f32
    let layers = (mb * 1_000_000).div_ceil(per_layer).max(1);
    let mut g = GraphProto::new();
    g.name = "synthetic".into();
    let mut vi = ValueInfoProto::new();
    vi.name = "x".into();
    g.input.push(vi);
    let mut prev = "x".to_string();
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    };
    let mut external = std::collections::BTreeSet::new();
    for l in 0..layers {
        for (k, (a, b)) in [(d, 4 * d), (4 * d, d)].into_iter().enumerate() {
            let name = format!("layer{l}.w{k}");
            let vals: Vec<f32> = (0..a * b).map(|_| rnd()).collect();
            g.initializer.push(tensor::new_f32(&name, &[a as i64, b as i64], &vals));
            external.insert(name.clone());
            let mut n = NodeProto::new();
            n.op_type = "MatMul".into();
            n.name = format!("layer{l}.mm{k}");
            n.input = vec![prev.clone(), name];
            prev = format!("layer{l}.h{k}");
            n.output = vec![prev.clone()];
            g.node.push(n);
        }
    }
    let mut vo = ValueInfoProto::new();
    vo.name = prev;
    g.output.push(vo);
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    let p = dir.join(format!("synthetic_{mb}mb.onnx"));
    io::save(m, &p, &SaveOptions { external }).unwrap();
    p
}

fn largest_model() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all: Vec<PathBuf> = ["models", "../shared/models"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    all.sort_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0));
    all.pop()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_TMP").unwrap_or_else(|_| std::env::temp_dir().display().to_string()))
            .unwrap();
    let mut scope = Scope::Global;
    let mut model = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--generate" => {
                let mb: usize = args[i + 1].parse().expect("--generate MB");
                let t = Instant::now();
                // Generation runs in its own process so it does not count in the pass's peak RSS.
                let dir = PathBuf::from(args.get(i + 2).cloned().unwrap_or_else(|| "target/bench-models".into()));
                std::fs::create_dir_all(&dir).unwrap();
                let p = generate(mb, &dir);
                println!(
                    "generated {} ({:.1} MB) in {:.1} s",
                    p.display(),
                    file_bytes(&p) as f64 / 1e6,
                    t.elapsed().as_secs_f64()
                );
                return;
            }
            "--scope" => {
                scope = match args[i + 1].as_str() {
                    "layer" => Scope::Layer,
                    "global" => Scope::Global,
                    _ => Scope::Unit,
                };
                i += 1;
            }
            p => model = Some(PathBuf::from(p)),
        }
        i += 1;
    }
    let Some(model) = model.or_else(largest_model) else {
        eprintln!("no model found");
        return;
    };
    let rss0 = peak_rss_mb();
    let size = file_bytes(&model);
    let copy = copy_secs(&model, tmp.path());
    let rw = read_write_secs(&model, tmp.path());
    // The baselines must not count in the pass's peak RSS: reset the high-water mark (Linux).
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let t = Instant::now();
    let loaded = io::load(&model).unwrap();
    let load = t.elapsed().as_secs_f64();
    let mut m = loaded.proto;
    let t = Instant::now();
    let opts =
        WeightOptions { beta: 1.0, scope, include: Include::default(), scores: BTreeMap::new(), fixed_ratio: None };
    let r = prune_weights(&mut m, &opts).unwrap();
    let prune = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let out = tmp.path().join("out.onnx");
    io::save(m, &out, &SaveOptions { external: loaded.external }).unwrap();
    let save = t.elapsed().as_secs_f64();
    let total = load + prune + save;
    println!("model        {}", model.display());
    println!("size         {:.1} MB", size as f64 / 1e6);
    println!(
        "scope        {scope:?}, {} tensors, {} weights, kept {}",
        r.tensors.len(),
        r.candidates_elems,
        r.kept_elems
    );
    println!("copy         {:.3} s", copy);
    println!("read+write   {:.3} s", rw);
    println!("load         {:.3} s", load);
    println!("prune        {:.3} s", prune);
    println!("save         {:.3} s", save);
    println!("pass total   {:.3} s = {:.2} × copy = {:.2} × read+write", total, total / copy, total / rw);
    let peak = peak_rss_mb();
    if !reset {
        println!("(peak RSS could not be reset after the read+write baseline: it may be that one)");
    }
    println!(
        "peak RSS     {:.0} MB = {:.2} × model bytes (process baseline {:.0} MB)",
        peak,
        peak * 1048576.0 / size as f64,
        rss0
    );
}
