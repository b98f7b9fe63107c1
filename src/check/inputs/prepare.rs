//! Putting it together: the inputs of a model as an [`InputSpec`] says, in its input order. Which
//! `.npy` or `.npz` array feeds which input (by name; one array for a one-input model), the data
//! read (at most `max_rows` samples, evenly spaced or the first) and checked against the declared
//! rank, fixed dims and the symbols the inputs share, then every input no file gives generated
//! from the seed at the dims `--dim`, the files or the defaults fix.
//!
//! Contract: a file that does not fit the model is an error naming the file and the input, never
//! replaced by generated data; every default taken, cast made or array left unread is said in
//! [`Inputs::assumed`]; nothing larger than [`MAX_GENERATED_BYTES`] is generated.

use super::declared::{check_dims, fmt_dims, model_inputs};
use super::files::{convert, evenly_spaced, npz_names, read_npy_file_picking, read_npz_array};
use super::generate::generate;
use super::{
    DimSpec, Input, InputData, InputInfo, InputSource, InputSpec, Inputs, DEFAULT_DIM, DEFAULT_SEQ, DEFAULT_SPATIAL,
    NO_SAMPLE_AXIS,
};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn is_seq_like(sym: &str) -> bool {
    let l = sym.to_ascii_lowercase();
    ["seq", "len", "time", "token", "step"].iter().any(|k| l.contains(k))
}

/// Build the inputs of `model_path` as `spec` says.
pub fn prepare_inputs(model_path: &Path, spec: &InputSpec) -> Result<Inputs> {
    let infos = model_inputs(model_path)?;
    prepare_for(&infos, spec).with_context(|| model_path.display().to_string())
}

/// How a file source is named in messages: the `.npy` path, or `file.npz['array']`.
fn source_name(source: &InputSource, npz_array: &BTreeMap<String, String>, name: &str) -> String {
    match source {
        InputSource::Npy(p) => p.display().to_string(),
        InputSource::Npz(p) => format!("{}['{}']", p.display(), npz_array.get(name).map_or(name, |s| s.as_str())),
        InputSource::Generated => String::new(),
    }
}

/// The largest input generated from random data (`--dim batch=100000000` asked for 25.6 GB and
/// the allocation aborted the process).
pub const MAX_GENERATED_BYTES: usize = 1 << 30;

/// [`prepare_inputs`] on an already known input list.
pub fn prepare_for(infos: &[InputInfo], spec: &InputSpec) -> Result<Inputs> {
    if infos.is_empty() {
        bail!("the model has no inputs");
    }
    check_dims(infos, &spec.dims)?;
    // Which file feeds which input.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (k, p) in &spec.files {
        if k.is_empty() {
            if infos.len() != 1 {
                let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                bail!(
                    "{}: the model has {} inputs ({}); give files as name=file.npy",
                    p.display(),
                    infos.len(),
                    names.join(", ")
                );
            }
            files.insert(infos[0].name.clone(), p.clone());
        } else if infos.iter().any(|i| &i.name == k) {
            files.insert(k.clone(), p.clone());
        } else {
            let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
            bail!("{k}={}: the model has no input '{k}' (inputs: {})", p.display(), names.join(", "));
        }
    }

    // Which array of the .npz feeds which input: its own name. A file that names none of the
    // inputs is an error (it would silently be replaced by generated data), except one array for
    // a model of one input (`np.savez(f, x)` names it `arr_0`).
    let mut npz_array: BTreeMap<String, String> = BTreeMap::new();
    let mut unread: Vec<String> = vec![];
    if let Some(z) = &spec.npz {
        let held = npz_names(z)?;
        for info in infos.iter().filter(|i| !files.contains_key(&i.name)) {
            if held.contains(&info.name) {
                npz_array.insert(info.name.clone(), info.name.clone());
            }
        }
        if npz_array.is_empty() {
            match (infos, held.as_slice()) {
                ([only], [one]) if !files.contains_key(&only.name) => {
                    npz_array.insert(only.name.clone(), one.clone());
                }
                _ => {
                    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                    bail!(
                        "{}: no array named like the model's inputs ({}); it holds: {}. Save one array per input \
                         under the input's name (np.savez(f, {}=...))",
                        z.display(),
                        names.join(", "),
                        if held.is_empty() { "nothing".into() } else { held.join(", ") },
                        names.first().copied().unwrap_or("x")
                    );
                }
            }
        }
        // Arrays that feed no input (labels saved beside the samples): said, not dropped in
        // silence.
        let fed: Vec<&String> = npz_array.values().collect();
        let rest: Vec<&str> = held.iter().filter(|h| !fed.contains(h)).map(|h| h.as_str()).collect();
        if !rest.is_empty() {
            let first = infos.first().map_or("", |i| i.name.as_str());
            unread.push(format!(
                "input '{first}' comes from {}, whose arrays {} feed no input: ignored",
                z.display(),
                rest.join(", ")
            ));
        }
    }

    let axes = sample_axes(infos);
    // Read the given data, checking rank, fixed dims and symbol consistency.
    let mut sym_vals: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut data: Vec<Option<(InputData, InputSource)>> = Vec::with_capacity(infos.len());
    let mut casts: Vec<String> = vec![];
    // With `max_rows`: the first input's rows and the ones read, once its file had more.
    let mut sampled: Option<(usize, Vec<usize>)> = None;
    for (k, info) in infos.iter().enumerate() {
        let mut pick = |shape: &[usize]| -> Option<Vec<usize>> {
            // One sample (a model without a batch axis): its axis 0 is not cut to `max_rows`.
            if axes[k] == NO_SAMPLE_AXIS {
                return None;
            }
            let n = *shape.first()?;
            if k == 0 && spec.max_rows > 0 && n > spec.max_rows {
                let idx = if spec.first_rows { (0..spec.max_rows).collect() } else { evenly_spaced(n, spec.max_rows) };
                sampled = Some((n, idx));
            }
            sampled.as_ref().filter(|(rows, _)| *rows == n).map(|(_, idx)| idx.clone())
        };
        let found = if let Some(p) = files.get(&info.name) {
            Some((read_npy_file_picking(p, &mut pick)?, InputSource::Npy(p.clone())))
        } else if let (Some(z), Some(array)) = (&spec.npz, npz_array.get(&info.name)) {
            read_npz_array(z, array)?.map(|a| {
                let a = match pick(a.shape()) {
                    Some(idx) => a.pick(&idx),
                    None => a,
                };
                (a, InputSource::Npz(z.clone()))
            })
        } else {
            None
        };
        let Some((arr, source)) = found else {
            data.push(None);
            continue;
        };
        // An input whose samples lie on another axis: the same samples picked there.
        let arr = match &sampled {
            Some((n, idx)) if axes[k] > 0 && arr.shape().get(axes[k]) == Some(n) => arr.pick_on(axes[k], idx),
            _ => arr,
        };
        let shape = arr.shape().to_vec();
        let what = source_name(&source, &npz_array, &info.name);
        if shape.first() == Some(&0) {
            bail!("input '{}': {what} holds no samples (axis 0 is 0)", info.name);
        }
        if shape.len() != info.dims.len() {
            // One more axis in front, the rest as declared: samples for a model that has no batch
            // axis, which runs one sample per run and is not split along one here.
            let stacked = shape.len() == info.dims.len() + 1
                && info.dims.iter().zip(&shape[1..]).all(|(d, &s)| !matches!(d, DimSpec::Fixed(v) if *v as usize != s));
            bail!(
                "input '{}': {what} has shape {shape:?} (rank {}) but the model expects {} (rank {}){}",
                info.name,
                shape.len(),
                fmt_dims(&info.dims),
                info.dims.len(),
                if stacked {
                    ": the model has no batch axis, so a file holds one sample of it (re-export it with a batch \
                     axis to verify or calibrate on many)"
                } else {
                    ""
                }
            );
        }
        for (axis, (d, &s)) in info.dims.iter().zip(&shape).enumerate() {
            match d {
                // A model that fixes its batch to 1 runs a file of many rows one row at a time
                // (`run/chunks.rs`; onnxruntime's worker likewise).
                DimSpec::Fixed(1) if axis == 0 && s > 1 => {}
                DimSpec::Fixed(v) if *v as usize != s => bail!(
                    "input '{}': {what} has shape {shape:?} but the model fixes axis {axis} to {v} (expects {}){}",
                    info.name,
                    fmt_dims(&info.dims),
                    if axis == 0 {
                        // Only a batch of 1 is taken as a batch axis: a fixed axis 0 above 1 may
                        // be a sequence or a channel axis, and splitting a file along it would
                        // run a different computation.
                        format!(
                            ": pass exactly {v} rows, or export the model with a free batch axis \
                             (torch.onnx.export(..., dynamic_axes={{'{}': {{0: 'batch'}}}}))",
                            info.name
                        )
                    } else {
                        String::new()
                    }
                ),
                DimSpec::Symbolic(sym) => {
                    if let Some((prev, by)) = sym_vals.get(sym) {
                        if *prev != s {
                            bail!("dim '{sym}' is {prev} in {by} but {s} in input '{}' ({what})", info.name);
                        }
                    } else {
                        if let Some(v) = spec.dims.get(sym) {
                            if *v as usize != s {
                                bail!("--dim {sym}={v} but input '{}' ({what}) has {sym}={s}", info.name);
                            }
                        }
                        sym_vals.insert(sym.clone(), (s, format!("input '{}'", info.name)));
                    }
                }
                _ => {}
            }
        }
        let from = arr.dtype();
        let conv = convert(&info.name, arr, info.elem_type).with_context(|| what.clone())?;
        // Integer data for a float input (raw uint8 pixels for a normalised image model) is
        // cast as it is: said, since nothing scales it.
        if !from.starts_with("float") && crate::model::tensor::is_float(info.elem_type) {
            casts.push(format!(
                "input '{}': the file holds {from}, read as {} with its values as they are (not scaled)",
                info.name,
                crate::model::tensor::dtype_name(info.elem_type)
            ));
        }
        data.push(Some((conv, source)));
    }

    // Generate the rest (said so when other inputs came from files).
    let mut assumed = casts;
    assumed.extend(unread);
    let any_given = data.iter().any(|d| d.is_some());
    let mut inputs = Vec::with_capacity(infos.len());
    for ((info, given), &sample_axis) in infos.iter().zip(data).zip(&axes) {
        if let Some((d, source)) = given {
            inputs.push(Input { name: info.name.clone(), data: Arc::new(d), source, sample_axis });
            continue;
        }
        let mut shape = Vec::with_capacity(info.dims.len());
        let image = info.dims.len() == 4
            && crate::model::tensor::is_float(info.elem_type)
            && matches!(info.dims[1], DimSpec::Fixed(c) if (1..=4).contains(&c));
        let other = |axis: usize| if image && axis >= 2 { DEFAULT_SPATIAL } else { DEFAULT_DIM };
        for (axis, d) in info.dims.iter().enumerate() {
            let by_axis = spec.dims.get(&format!("{}:{axis}", info.name)).map(|v| *v as usize);
            let v = match d {
                DimSpec::Fixed(v) => *v as usize,
                DimSpec::Symbolic(sym) => {
                    if let Some(v) = by_axis {
                        v
                    } else if let Some((v, _)) = sym_vals.get(sym) {
                        *v
                    } else if let Some(v) = spec.dims.get(sym) {
                        *v as usize
                    } else {
                        let v = if axis == 0 {
                            spec.default_batch.max(1)
                        } else if is_seq_like(sym) {
                            DEFAULT_SEQ
                        } else {
                            other(axis)
                        };
                        assumed.push(format!("{sym}={v} (default)"));
                        v
                    }
                }
                DimSpec::Unknown => {
                    if let Some(v) = by_axis {
                        v
                    } else if let (0, Some(v)) = (axis, spec.dims.get("batch")) {
                        *v as usize
                    } else {
                        let v = if axis == 0 { spec.default_batch.max(1) } else { other(axis) };
                        assumed.push(format!("{}:{axis}={v} (unnamed dim, default)", info.name));
                        v
                    }
                }
            };
            if let DimSpec::Symbolic(sym) = d {
                sym_vals.entry(sym.clone()).or_insert((v, format!("input '{}'", info.name)));
            }
            shape.push(v);
        }
        let n = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        let bytes = n.and_then(|n| n.checked_mul(crate::model::tensor::elem_size(info.elem_type).unwrap_or(8)));
        match (n, bytes) {
            (Some(n), Some(b)) if n as u64 <= crate::model::tensor::MAX_ELEMS && b <= MAX_GENERATED_BYTES => {}
            _ => bail!(
                "input '{}': shape {shape:?} is too large to generate (over {} GiB): give smaller dims (--dim) \
                 or the data (--inputs)",
                info.name,
                MAX_GENERATED_BYTES >> 30
            ),
        }
        let d = generate(&info.name, info.elem_type, &shape, spec.seed, info.index_bound)?;
        if any_given {
            assumed.push(format!("input '{}' generated (no file gives it)", info.name));
        }
        inputs.push(Input { name: info.name.clone(), data: Arc::new(d), source: InputSource::Generated, sample_axis });
    }
    assumed.dedup();
    Ok(Inputs { inputs, assumed, file_rows: sampled.map(|(n, _)| n) })
}

/// Each input's samples axis: where it declares the symbol the first input's axis 0 has (an
/// LSTM's initial state `[1, batch, H]`), else 0.
fn sample_axes(infos: &[InputInfo]) -> Vec<usize> {
    if infos.first().is_some_and(|i| matches!(i.dims.as_slice(), [DimSpec::Fixed(v)] if *v > 1)) {
        return vec![NO_SAMPLE_AXIS; infos.len()];
    }
    let Some(DimSpec::Symbolic(sym)) = infos.first().and_then(|i| i.dims.first()) else {
        return vec![0; infos.len()];
    };
    infos
        .iter()
        .map(|i| i.dims.iter().position(|d| matches!(d, DimSpec::Symbolic(s) if s == sym)).unwrap_or(0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tensor::dt;
    use ndarray::{ArrayD, IxDyn};

    fn info(name: &str, elem: i32, dims: Vec<DimSpec>) -> InputInfo {
        InputInfo { name: name.into(), elem_type: elem, dims, index_bound: None }
    }

    #[test]
    fn generates_by_name_and_symbol() {
        let infos = vec![
            info("input_ids", dt::INT64, vec![DimSpec::Symbolic("batch".into()), DimSpec::Symbolic("seq".into())]),
            info("attention_mask", dt::INT64, vec![DimSpec::Symbolic("batch".into()), DimSpec::Symbolic("seq".into())]),
        ];
        let mut spec = InputSpec::default();
        spec.dims.insert("batch".into(), 3);
        let a = prepare_for(&infos, &spec).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[3, DEFAULT_SEQ]);
        match (&*a.inputs[0].data, &*a.inputs[1].data) {
            (InputData::I64(ids), InputData::I64(mask)) => {
                assert!(ids.iter().all(|v| (0..100).contains(v)));
                assert!(ids.iter().any(|v| *v > 1));
                assert!(mask.iter().all(|v| *v == 1));
            }
            _ => panic!("wrong types"),
        }
        assert_eq!(a.assumed, vec!["seq=8 (default)".to_string()]);
        // Same seed, same data; another seed, other data.
        let b = prepare_for(&infos, &spec).unwrap();
        let c = prepare_for(&infos, &InputSpec { seed: 1, ..spec.clone() }).unwrap();
        let ids = |x: &Inputs| match &*x.inputs[0].data {
            InputData::I64(a) => a.clone(),
            _ => unreachable!(),
        };
        assert_eq!(ids(&a), ids(&b));
        assert_ne!(ids(&a), ids(&c));
    }

    #[test]
    fn an_image_input_of_unknown_size_gets_a_size_a_cnn_can_run() {
        let sym = |s: &str| DimSpec::Symbolic(s.into());
        let img = info("images", dt::FLOAT, vec![sym("batch"), DimSpec::Fixed(3), sym("height"), sym("width")]);
        let a = prepare_for(std::slice::from_ref(&img), &InputSpec::default()).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[1, 3, DEFAULT_SPATIAL, DEFAULT_SPATIAL]);
        assert_eq!(a.assumed, ["batch=1 (default)", "height=224 (default)", "width=224 (default)"]);
        // --dim still decides.
        let mut spec = InputSpec::default();
        spec.dims.insert("height".into(), 64);
        assert_eq!(prepare_for(&[img], &spec).unwrap().inputs[0].data.shape(), &[1, 3, 64, DEFAULT_SPATIAL]);
        // Not an image (many channels, or not float): the plain default.
        let feat = info("f", dt::FLOAT, vec![sym("batch"), DimSpec::Fixed(64), sym("h"), sym("w")]);
        assert_eq!(prepare_for(&[feat], &InputSpec::default()).unwrap().inputs[0].data.shape(), &[1, 64, 1, 1]);
    }

    /// An `.npz` feeds each input from the array of its name; one array for a one-input model
    /// whatever its name (`np.savez(f, x)` calls it `arr_0`); a file that names none of several
    /// inputs is an error naming both lists, never replaced by generated data unnoticed; an input
    /// no file gives is generated and said so.
    #[test]
    fn npz_arrays_are_matched_to_inputs_by_name_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let npz = |file: &str, arrays: &[&str]| {
            let p = dir.path().join(file);
            let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&p).unwrap());
            for a in arrays {
                w.add_array(*a, &ArrayD::<f32>::zeros(IxDyn(&[5, 4]))).unwrap();
            }
            w.finish().unwrap();
            InputSpec { npz: Some(p), ..Default::default() }
        };
        let batch = || DimSpec::Symbolic("batch".into());
        let one = vec![info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)])];
        let a = prepare_for(&one, &npz("pos.npz", &["arr_0"])).unwrap();
        assert_eq!(a.inputs[0].data.shape(), &[5, 4]);
        assert!(matches!(a.inputs[0].source, InputSource::Npz(_)));
        let two = vec![
            info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)]),
            info("y", dt::FLOAT, vec![batch(), DimSpec::Fixed(4)]),
        ];
        let e = format!("{:#}", prepare_for(&two, &npz("wrong.npz", &["a", "b"])).unwrap_err());
        assert!(e.contains("no array named like the model's inputs (x, y)") && e.contains("it holds: a, b"), "{e}");
        // Two arrays for one input, neither named after it: ambiguous, refused.
        assert!(prepare_for(&one, &npz("two.npz", &["a", "b"])).is_err());
        let part = prepare_for(&two, &npz("part.npz", &["y"])).unwrap();
        assert!(matches!(part.inputs[0].source, InputSource::Generated));
        assert_eq!(part.inputs[0].data.shape(), &[5, 4], "the batch comes from the given input");
        assert!(part.assumed.contains(&"input 'x' generated (no file gives it)".to_string()), "{:?}", part.assumed);
        // All generated (no file at all): no such note.
        assert!(prepare_for(&two, &InputSpec::default()).unwrap().assumed.iter().all(|a| !a.contains("generated")));
    }

    /// `max_rows` reads evenly spaced rows from the files: the same rows from a `.npy` viewed in
    /// place, a big-endian or Fortran-order one (read, then picked) and an `.npz`; from every
    /// input with the first one's rows (the mask here), not from one without (the table).
    #[test]
    fn max_rows_reads_evenly_spaced_rows_from_the_files() {
        use ndarray_npy::WriteNpyExt;
        assert_eq!(evenly_spaced(10, 4), vec![0, 2, 5, 7]);
        assert_eq!(evenly_spaced(3, 4), vec![0, 1, 2]);
        assert_eq!(evenly_spaced(5, 0), vec![0, 1, 2, 3, 4]);
        for (n, k) in [(7, 3), (1000, 512), (513, 512), (2, 1)] {
            let v = evenly_spaced(n, k);
            assert_eq!(v.len(), k);
            assert!(v.windows(2).all(|w| w[0] < w[1]) && v[0] == 0 && v[k - 1] < n, "{n} {k} {v:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        // Row r holds r in every element.
        let x = ArrayD::<f32>::from_shape_fn(IxDyn(&[10, 3]), |i| i[0] as f32);
        let save = |file: &str, bytes: &dyn Fn(&mut std::fs::File)| {
            let p = dir.path().join(file);
            bytes(&mut std::fs::File::create(&p).unwrap());
            p
        };
        let plain = save("x.npy", &|f| x.write_npy(f).unwrap());
        let fortran = save("xf.npy", &|f| x.t().as_standard_layout().t().write_npy(f).unwrap());
        // A big-endian float32 .npy (numpy's '>f4'), written by hand.
        let big = save("xb.npy", &|f| {
            use std::io::Write;
            let mut h = "{'descr': '>f4', 'fortran_order': False, 'shape': (10, 3), }".to_string();
            while !(10 + h.len() + 1).is_multiple_of(64) {
                h.push(' ');
            }
            h.push('\n');
            f.write_all(b"\x93NUMPY\x01\x00").unwrap();
            f.write_all(&(h.len() as u16).to_le_bytes()).unwrap();
            f.write_all(h.as_bytes()).unwrap();
            for v in x.iter() {
                f.write_all(&v.to_be_bytes()).unwrap();
            }
        });
        let mask =
            save("m.npy", &|f| ArrayD::<i64>::from_shape_fn(IxDyn(&[10, 2]), |i| i[0] as i64).write_npy(f).unwrap());
        let table = save("t.npy", &|f| ArrayD::<f32>::zeros(IxDyn(&[1, 5])).write_npy(f).unwrap());
        let batch = || DimSpec::Symbolic("batch".into());
        let infos = vec![
            info("x", dt::FLOAT, vec![batch(), DimSpec::Fixed(3)]),
            info("mask", dt::INT64, vec![batch(), DimSpec::Fixed(2)]),
            info("table", dt::FLOAT, vec![DimSpec::Fixed(1), DimSpec::Fixed(5)]),
        ];
        let rows_of = |a: &Inputs, k: usize| -> Vec<f64> {
            match &*a.inputs[k].data {
                InputData::F32(d) => d.outer_iter().map(|r| r.iter().next().copied().unwrap_or(-1.0) as f64).collect(),
                InputData::I64(d) => d.outer_iter().map(|r| r.iter().next().copied().unwrap_or(-1) as f64).collect(),
                _ => unreachable!(),
            }
        };
        for x_file in [&plain, &fortran, &big] {
            let mut spec = InputSpec { max_rows: 4, ..Default::default() };
            spec.files.insert("x".into(), x_file.clone());
            spec.files.insert("mask".into(), mask.clone());
            spec.files.insert("table".into(), table.clone());
            let a = prepare_for(&infos, &spec).unwrap();
            assert_eq!(a.file_rows, Some(10));
            assert_eq!(rows_of(&a, 0), vec![0.0, 2.0, 5.0, 7.0], "{}", x_file.display());
            assert_eq!(rows_of(&a, 1), vec![0.0, 2.0, 5.0, 7.0]);
            assert_eq!(a.inputs[2].data.shape(), &[1, 5]);
            // Without a cap (or with one above the rows) every row is read.
            let all = prepare_for(&infos, &InputSpec { max_rows: 0, ..spec.clone() }).unwrap();
            assert_eq!((all.rows(), all.file_rows), (10, None));
            assert_eq!(prepare_for(&infos, &InputSpec { max_rows: 10, ..spec }).unwrap().rows(), 10);
        }
        let z = dir.path().join("x.npz");
        let mut w = ndarray_npy::NpzWriter::new(std::fs::File::create(&z).unwrap());
        w.add_array("x", &x).unwrap();
        w.finish().unwrap();
        let a = prepare_for(&infos[..1], &InputSpec { npz: Some(z), max_rows: 4, ..Default::default() }).unwrap();
        assert_eq!((rows_of(&a, 0), a.file_rows), (vec![0.0, 2.0, 5.0, 7.0], Some(10)));
    }

    #[test]
    fn file_shape_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let arr = ArrayD::<f64>::zeros(IxDyn(&[5, 64]));
        ndarray_npy::write_npy(&p, &arr).unwrap();
        let infos = vec![info("x", dt::FLOAT, vec![DimSpec::Symbolic("batch".into()), DimSpec::Fixed(64)])];
        let mut spec = InputSpec::default();
        spec.files.insert(String::new(), p.clone());
        let a = prepare_for(&infos, &spec).unwrap();
        assert!(matches!(&*a.inputs[0].data, InputData::F32(x) if x.shape() == [5, 64]));

        let bad = vec![info("x", dt::FLOAT, vec![DimSpec::Symbolic("batch".into()), DimSpec::Fixed(32)])];
        let e = format!("{:#}", prepare_for(&bad, &spec).unwrap_err());
        assert!(e.contains("input 'x'") && e.contains("axis 1"), "{e}");
        let bad = vec![info("x", dt::FLOAT, vec![DimSpec::Unknown])];
        let e = format!("{:#}", prepare_for(&bad, &spec).unwrap_err());
        assert!(e.contains("rank"), "{e}");
        let ints = vec![info("x", dt::INT64, vec![DimSpec::Unknown, DimSpec::Unknown])];
        let e = format!("{:#}", prepare_for(&ints, &spec).unwrap_err());
        assert!(e.contains("int64") && e.contains("float64"), "{e}");
        let mut spec2 = spec.clone();
        spec2.dims.insert("batch".into(), 4);
        let e = format!("{:#}", prepare_for(&infos, &spec2).unwrap_err());
        assert!(e.contains("batch=4"), "{e}");
    }
}
