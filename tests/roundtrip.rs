//! Lossless I/O: load → save → load gives a semantically identical model (every field, unknown
//! fields included: `ModelProto: PartialEq` compares them all).
use onnx_emp::model::{io, wire};
use onnx_protobuf::Message;
use std::path::{Path, PathBuf};

fn onnx_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "onnx")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn check_roundtrip(p: &Path) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("rt.onnx");
    let a = io::load(p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
    io::save(a.proto.clone(), &out, &io::SaveOptions { external: a.external.clone() }).unwrap();
    let b = io::load(&out).unwrap();
    assert!(a.proto == b.proto, "{}: round trip changed the model", p.display());
    // Re-encoding the re-loaded model is a fixed point, byte for byte.
    assert_eq!(a.proto.write_to_bytes().unwrap(), b.proto.write_to_bytes().unwrap());
    // And the original bytes decode to the same message we wrote, explicit defaults included:
    // the proto2 presence of every scalar written with its default value (`domain: ""`, `i: 0`)
    // is the same in both files, so `onnx.load(in) == onnx.load(out)` (tests/python checks that).
    if a.external.is_empty() {
        let orig_bytes = std::fs::read(p).unwrap();
        let orig = io::parse(&orig_bytes).unwrap();
        assert!(orig == b.proto, "{}: saved model differs from the original message", p.display());
        let defaults = |bytes: &[u8]| {
            let mut r = wire::scan_presence(bytes).unwrap().1;
            r.sort_by(|x, y| (&x.path, x.field).cmp(&(&y.path, y.field)));
            r.dedup();
            r
        };
        assert_eq!(
            defaults(&orig_bytes),
            defaults(&std::fs::read(&out).unwrap()),
            "{}: explicit default values were not kept",
            p.display()
        );
    }
}

#[test]
fn roundtrip_project_models() {
    let mut files = onnx_files(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models")));
    assert!(files.len() >= 5, "models/ should hold the project's models");
    let zoo = onnx_files(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/zoo")));
    assert!(zoo.len() >= 10, "models/zoo should hold the architecture zoo");
    files.extend(zoo);
    for p in files {
        check_roundtrip(&p);
    }
}

#[test]
fn roundtrip_shared_models() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/models"));
    if !dir.is_dir() {
        eprintln!("skipped: {} is absent", dir.display());
        return;
    }
    for p in onnx_files(dir) {
        check_roundtrip(&p);
    }
}

#[test]
fn external_data_roundtrip_and_confinement() {
    let tmp = tempfile::tempdir().unwrap();
    let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/digits_mlp.onnx"));
    let a = io::load(src).unwrap();
    // Write with every initializer external.
    let names = a.proto.graph.initializer.iter().map(|t| t.name.clone()).collect();
    let ext = tmp.path().join("ext.onnx");
    io::save(a.proto.clone(), &ext, &io::SaveOptions { external: names }).unwrap();
    assert!(tmp.path().join("ext.onnx.data").is_file());
    let b = io::load(&ext).unwrap();
    assert_eq!(b.external.len(), a.proto.graph.initializer.len());
    assert!(a.proto.graph.initializer == b.proto.graph.initializer);
    // Saving again keeps the same tensors external.
    let ext2 = tmp.path().join("ext2.onnx");
    io::save(b.proto.clone(), &ext2, &io::SaveOptions { external: b.external.clone() }).unwrap();
    let c = io::load(&ext2).unwrap();
    assert!(c.proto == b.proto);
    // A location that leaves the folder is refused.
    let mut bad = onnx_protobuf::ModelProto::parse_from_bytes(&std::fs::read(&ext).unwrap()).unwrap();
    bad.graph.as_mut().unwrap().initializer[0].external_data[0].value = "../ext.onnx.data".into();
    let sub = tmp.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("bad.onnx"), bad.write_to_bytes().unwrap()).unwrap();
    let e = io::load(&sub.join("bad.onnx")).unwrap_err();
    assert!(format!("{e:#}").contains("leaves the model's folder"), "{e:#}");
}
