//! Copies of a model without the data of its big initializers, for rewrites that change a few
//! tensors and leave the rest as they are.
//!
//! A structural rewrite used to clone the whole model and edit the clone, so the input and the
//! output were both in memory at full size. [`clone_hollow`] copies everything but the data of
//! the big top-level initializers (each "hollow" copy keeps its name, type and dims, which is all
//! a rewrite reads of a tensor it does not change). A rewrite that does change one asks for it
//! back with [`Hollow::fill_one`]. At the end [`Hollow::fill_moved`] moves each still-hollow
//! tensor's original *whole* (every field, as it was read) from the input, which the caller owns
//! and no longer needs, so the peak is the input plus the changed tensors. [`Hollow::fill_cloned`]
//! does the same from a borrowed input by copying (the library API, which leaves its input
//! alone). Either way the result is what a full clone edited the same way would be.
//!
//! Every field of `ModelProto` and `GraphProto` is copied by an exhaustive destructuring, so a
//! field added to the protobuf definitions fails to compile here instead of being dropped.

use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};

/// Initializers with at least this many bytes of data are left out of a hollow copy.
pub const HOLLOW_MIN_BYTES: usize = 4096;

/// Names of the initializers of a hollow copy whose data is still left out, by index.
#[derive(Debug, Default)]
pub struct Hollow {
    slots: BTreeMap<String, usize>,
}

fn data_bytes(t: &TensorProto) -> usize {
    t.raw_data.len()
        + 4 * (t.float_data.len() + t.int32_data.len())
        + 8 * (t.int64_data.len() + t.double_data.len() + t.uint64_data.len())
        + t.string_data.iter().map(|s| s.len()).sum::<usize>()
}

/// Name, type and dims only: what a rewrite may read of a tensor it leaves unchanged.
fn shell(t: &TensorProto) -> TensorProto {
    let mut s = TensorProto::new();
    s.name = t.name.clone();
    s.data_type = t.data_type;
    s.dims = t.dims.clone();
    s
}

/// A copy of `model` whose top-level initializers of at least [`HOLLOW_MIN_BYTES`] are shells,
/// except those named in `keep` (the ones the rewrite is known to change, copied whole).
pub fn clone_hollow(model: &ModelProto, keep: &BTreeSet<String>) -> (ModelProto, Hollow) {
    let ModelProto {
        ir_version,
        opset_import,
        producer_name,
        producer_version,
        domain,
        model_version,
        doc_string,
        graph,
        metadata_props,
        training_info,
        functions,
        special_fields,
    } = model;
    let mut hollow = Hollow::default();
    let graph = graph.as_ref().map(|g| {
        let GraphProto {
            node,
            name,
            initializer,
            sparse_initializer,
            doc_string,
            input,
            output,
            value_info,
            quantization_annotation,
            metadata_props,
            special_fields,
        } = g;
        let initializer = initializer
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if data_bytes(t) >= HOLLOW_MIN_BYTES && !keep.contains(&t.name) && !hollow.slots.contains_key(&t.name) {
                    hollow.slots.insert(t.name.clone(), i);
                    shell(t)
                } else {
                    t.clone()
                }
            })
            .collect();
        GraphProto {
            node: node.clone(),
            name: name.clone(),
            initializer,
            sparse_initializer: sparse_initializer.clone(),
            doc_string: doc_string.clone(),
            input: input.clone(),
            output: output.clone(),
            value_info: value_info.clone(),
            quantization_annotation: quantization_annotation.clone(),
            metadata_props: metadata_props.clone(),
            special_fields: special_fields.clone(),
        }
    });
    let m = ModelProto {
        ir_version: *ir_version,
        opset_import: opset_import.clone(),
        producer_name: producer_name.clone(),
        producer_version: producer_version.clone(),
        domain: domain.clone(),
        model_version: *model_version,
        doc_string: doc_string.clone(),
        graph: graph.into(),
        metadata_props: metadata_props.clone(),
        training_info: training_info.clone(),
        functions: functions.clone(),
        special_fields: special_fields.clone(),
    };
    (m, hollow)
}

impl Hollow {
    /// Whether `name` is a hollow initializer.
    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name)
    }

    /// Give the hollow initializer `name` of `out` its data back (a copy from `src`), before a
    /// rewrite changes it. No-op when `name` is not hollow.
    pub fn fill_one(&mut self, out: &mut GraphProto, src: &GraphProto, name: &str) -> Result<()> {
        let Some(i) = self.slots.remove(name) else { return Ok(()) };
        let t = src.initializer.get(i).filter(|t| t.name == name).context("hollow initializer moved")?;
        let slot = out.initializer.get_mut(i).filter(|t| t.name == name).context("hollow initializer moved")?;
        *slot = t.clone();
        Ok(())
    }

    /// The rewrite kept its initializers at their indices (new ones are appended) and left every
    /// hollow one unchanged: check that before any data goes back.
    fn check(&self, out: &GraphProto, src: &GraphProto) -> Result<()> {
        for (name, &i) in &self.slots {
            let (Some(o), Some(s)) = (out.initializer.get(i), src.initializer.get(i)) else {
                bail!("internal: hollow initializer '{name}' is gone from the rewritten model")
            };
            if o.name != *name || s.name != *name || o.dims != s.dims || o.data_type != s.data_type {
                bail!("internal: hollow initializer '{name}' was changed without its data");
            }
        }
        Ok(())
    }

    /// Move every still-hollow initializer's original from `src` (left with empty tensors there)
    /// into `out`. `src` must be the model `out` was cloned from.
    pub fn fill_moved(self, out: &mut ModelProto, src: &mut ModelProto) -> Result<()> {
        let (o, s) = graphs(out, src)?;
        self.check(o, s)?;
        for (_, i) in self.slots {
            o.initializer[i] = std::mem::take(&mut s.initializer[i]);
        }
        Ok(())
    }

    /// As [`Hollow::fill_moved`], copying from a borrowed `src`.
    pub fn fill_cloned(self, out: &mut ModelProto, src: &ModelProto) -> Result<()> {
        let o = out.graph.as_mut().context("model has no graph")?;
        let s = src.graph.as_ref().context("model has no graph")?;
        self.check(o, s)?;
        for (_, i) in self.slots {
            o.initializer[i] = s.initializer[i].clone();
        }
        Ok(())
    }
}

fn graphs<'a>(out: &'a mut ModelProto, src: &'a mut ModelProto) -> Result<(&'a mut GraphProto, &'a mut GraphProto)> {
    Ok((out.graph.as_mut().context("model has no graph")?, src.graph.as_mut().context("model has no graph")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message;

    fn model() -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = 8;
        m.producer_name = "t".into();
        m.doc_string = "d".into();
        let mut g = GraphProto::new();
        g.name = "g".into();
        for (i, n) in [10usize, 2000, 1, 5000].into_iter().enumerate() {
            let mut t = TensorProto::new();
            t.name = format!("w{i}");
            t.data_type = 1;
            t.dims = vec![n as i64];
            t.doc_string = format!("doc {i}");
            if i == 3 {
                t.float_data = (0..n).map(|x| x as f32).collect();
            } else {
                t.raw_data = (0..4 * n).map(|x| x as u8).collect();
            }
            g.initializer.push(t);
        }
        m.graph = Some(g).into();
        m
    }

    #[test]
    fn filled_copies_are_the_original() {
        let m = model();
        let (mut h, hollow) = clone_hollow(&m, &BTreeSet::new());
        assert!(hollow.contains("w1") && hollow.contains("w3") && !hollow.contains("w0") && !hollow.contains("w2"));
        assert!(h.graph.initializer[1].raw_data.is_empty() && h.graph.initializer[3].float_data.is_empty());
        hollow.fill_cloned(&mut h, &m).unwrap();
        assert_eq!(h.write_to_bytes().unwrap(), m.write_to_bytes().unwrap());

        let mut src = m.clone();
        let keep: BTreeSet<String> = ["w3".to_string()].into();
        let (mut h, mut hollow) = clone_hollow(&src, &keep);
        assert!(!hollow.contains("w3"));
        let sg = src.graph.as_ref().unwrap().clone();
        hollow.fill_one(h.graph.as_mut().unwrap(), &sg, "w1").unwrap();
        h.graph.as_mut().unwrap().initializer[1].raw_data[0] = 99;
        hollow.fill_moved(&mut h, &mut src).unwrap();
        let mut want = m.clone();
        want.graph.as_mut().unwrap().initializer[1].raw_data[0] = 99;
        assert_eq!(h.write_to_bytes().unwrap(), want.write_to_bytes().unwrap());
    }

    #[test]
    fn a_changed_hollow_tensor_is_an_error() {
        let m = model();
        let (mut h, hollow) = clone_hollow(&m, &BTreeSet::new());
        h.graph.as_mut().unwrap().initializer[1].dims = vec![1000];
        assert!(hollow.fill_cloned(&mut h, &m).is_err());
        let (mut h, hollow) = clone_hollow(&m, &BTreeSet::new());
        h.graph.as_mut().unwrap().initializer.remove(0);
        assert!(hollow.fill_cloned(&mut h, &m).is_err());
    }
}
