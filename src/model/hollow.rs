//! Copies of a model without the data of its big initializers, for rewrites that change a few
//! tensors and leave the rest as they are.
//!
//! A structural rewrite used to clone the whole model and edit the clone, so the input and the
//! output were both in memory at full size. [`clone_hollow`] copies everything but the data of
//! the chosen initializers (each "shell" keeps its name, type and dims, which is all a rewrite
//! reads of a tensor it does not change). The data comes back in one of three ways:
//! - a rewrite that changes a tensor in place asks for it with [`Hollow::fill_one`];
//! - one that only slices it records the slice on the shell ([`Hollow::slice_later`]);
//! - a new initializer that is a slice of an input one is a shell too ([`Hollow::derive`]).
//!
//! At the end [`Hollow::fill_moved`] moves each still-hollow tensor's original *whole* (every
//! field, as it was read) from the input, which the caller owns and no longer needs, slicing the
//! recorded ones in place as it goes, so the peak is the input plus one tensor.
//! [`Hollow::fill_cloned`] does the same from a borrowed input by copying (the library API, which
//! leaves its input alone). Either way the result is what a full clone edited the same way would
//! be. Shells the rewrite dropped are simply not filled; one it changed otherwise is an error.
//!
//! Every field of `ModelProto` and `GraphProto` is copied by an exhaustive destructuring, so a
//! field added to the protobuf definitions fails to compile here instead of being dropped.

use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, ModelProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};

/// Initializers with at least this many bytes of data are left out of a hollow copy.
pub const HOLLOW_MIN_BYTES: usize = 4096;

/// Kept positions along one axis, ascending. Shared: the tensors sliced by one set of units
/// (a Conv's weight and bias, a BatchNorm's four parameters, the next Conv's input axis) hold one
/// list.
pub type Keep = std::sync::Arc<[usize]>;

/// Slices along (axis, kept positions), in the order they were asked for.
type Slices = Vec<(usize, Keep)>;

/// The initializers of a hollow copy whose data is still left out, by name → index.
#[derive(Clone, Debug, Default)]
pub struct Hollow {
    slots: BTreeMap<String, usize>,
    /// Hollow initializers the rewrite slices: their shells already have the new dims; the data
    /// is sliced when it comes back, from the input, one tensor at a time.
    sliced: BTreeMap<String, (usize, Slices)>,
    /// New initializers (name in the copy) that are slices of an input initializer (index): the
    /// heads rewrite's sliced weights, under new names. Filled like the others, from a copy of
    /// the input's tensor while the copy still holds that tensor, else from the tensor itself.
    derived: Vec<(String, usize, Slices)>,
}

/// The original tensor with the recorded slices applied, as `tensor::slice_axis` on a copy would.
fn sliced(mut t: TensorProto, slices: &Slices) -> Result<TensorProto> {
    for (axis, keep) in slices {
        crate::model::tensor::slice_axis(&mut t, *axis, keep)?;
    }
    Ok(t)
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

/// Whether an initializer holds at least [`HOLLOW_MIN_BYTES`] of data.
pub fn big(t: &TensorProto) -> bool {
    data_bytes(t) >= HOLLOW_MIN_BYTES
}

/// A copy of `model` whose top-level initializers for which `leave_out` holds are shells (e.g.
/// [`big`]). A name given to two initializers is copied whole.
pub fn clone_hollow(model: &ModelProto, leave_out: impl Fn(&TensorProto) -> bool) -> (ModelProto, Hollow) {
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
        let mut seen = BTreeSet::new();
        let dup: BTreeSet<&String> = initializer.iter().map(|t| &t.name).filter(|n| !seen.insert(*n)).collect();
        let initializer = initializer
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if leave_out(t) && !hollow.slots.contains_key(&t.name) && !dup.contains(&t.name) {
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
    /// Whether `name` is a hollow initializer (sliced later or not).
    pub fn contains(&self, name: &str) -> bool {
        self.slots.contains_key(name) || self.sliced.contains_key(name)
    }

    /// Slice the hollow initializer `name` of `out` along `axis`, keeping positions `keep`
    /// (ascending), without its data: the shell gets the new dims now, the data is sliced when
    /// it comes back. `Ok(false)` (nothing done) when `name` is not hollow.
    pub fn slice_later(
        &mut self,
        out: &mut GraphProto,
        name: &str,
        axis: usize,
        keep: impl Into<Keep>,
    ) -> Result<bool> {
        let keep: Keep = keep.into();
        let Some(i) = self.slots.get(name).or_else(|| self.sliced.get(name).map(|s| &s.0)).copied() else {
            return Ok(false);
        };
        let o = position(out, name, i)?;
        let shell = &mut out.initializer[o];
        let Some(d) = shell.dims.get_mut(axis) else {
            bail!("tensor '{name}': axis {axis} out of range for dims {:?}", shell.dims)
        };
        if let Some(&k) = keep.iter().find(|&&k| k as i64 >= *d) {
            bail!("tensor '{name}': index {k} out of range on axis {axis} of dims {:?}", shell.dims);
        }
        *d = keep.len() as i64;
        self.slots.remove(name);
        self.sliced.entry(name.to_string()).or_insert_with(|| (i, Vec::new())).1.push((axis, keep));
        Ok(true)
    }

    /// Record that the copy's initializer `name` (a shell with the sliced dims) is the input's
    /// initializer `src` sliced along `slices`, in order.
    pub fn derive(&mut self, name: String, src: usize, slices: Slices) {
        self.derived.push((name, src, slices));
    }

    /// Give the hollow initializer `name` of `out` its data back (a copy from `src`, with any
    /// slices recorded for it applied), before a rewrite changes it. No-op when `name` is not
    /// hollow.
    pub fn fill_one(&mut self, out: &mut GraphProto, src: &GraphProto, name: &str) -> Result<()> {
        let (i, slices) = match (self.slots.remove(name), self.sliced.remove(name)) {
            (Some(i), _) => (i, Vec::new()),
            (None, Some(s)) => s,
            (None, None) => return Ok(()),
        };
        let t = src.initializer.get(i).filter(|t| t.name == name).context("hollow initializer moved")?;
        let o = position(out, name, i)?;
        out.initializer[o] = sliced(t.clone(), &slices)?;
        Ok(())
    }

    /// Where each still-hollow initializer is in `out` now, with its index in `src` and its
    /// slices. The rewrite may have dropped some (gone, nothing to fill) or appended others; every
    /// shell left must still be the input's tensor but for the recorded slices.
    ///
    /// Derived initializers come first, each with whether its input tensor may be taken (no
    /// shell of it and no later derived one needs it) rather than copied.
    fn places(self, out: &GraphProto, src: &GraphProto) -> Result<Vec<(usize, usize, Slices, bool)>> {
        let at: BTreeMap<&str, usize> = out.initializer.iter().enumerate().map(|(k, t)| (t.name.as_str(), k)).collect();
        let mut uses: BTreeMap<usize, usize> = BTreeMap::new();
        for (name, i) in &self.slots {
            if at.contains_key(name.as_str()) {
                *uses.entry(*i).or_default() += 1;
            }
        }
        for (name, (i, _)) in &self.sliced {
            if at.contains_key(name.as_str()) {
                *uses.entry(*i).or_default() += 1;
            }
        }
        let mut v = Vec::new();
        let live: Vec<_> = self.derived.into_iter().filter(|(n, _, _)| at.contains_key(n.as_str())).collect();
        for (_, i, _) in &live {
            *uses.entry(*i).or_default() += 1;
        }
        for (name, i, slices) in live {
            let o = at[name.as_str()];
            let Some(s) = src.initializer.get(i) else { bail!("internal: derived initializer '{name}' has no source") };
            if out.initializer[o].data_type != s.data_type {
                bail!("internal: derived initializer '{name}' changed type");
            }
            let n = uses.get_mut(&i).context("uses")?;
            *n -= 1;
            v.push((o, i, slices, *n == 0));
        }
        let all = self
            .slots
            .into_iter()
            .map(|(n, i)| (n, i, None))
            .chain(self.sliced.into_iter().map(|(n, (i, s))| (n, i, Some(s))));
        for (name, i, slices) in all {
            let Some(&o) = at.get(name.as_str()) else { continue };
            let (out_t, src_t) = (&out.initializer[o], src.initializer.get(i));
            let Some(src_t) = src_t.filter(|t| t.name == name) else {
                bail!("internal: hollow initializer '{name}' is not in the input model")
            };
            if out_t.data_type != src_t.data_type || (slices.is_none() && out_t.dims != src_t.dims) {
                bail!("internal: hollow initializer '{name}' was changed without its data");
            }
            v.push((o, i, slices.unwrap_or_default(), true));
        }
        Ok(v)
    }

    /// Move every still-hollow initializer's original from `src` (left with empty tensors there)
    /// into `out`, sliced as recorded. `src` must be the model `out` was cloned from. Each sliced
    /// tensor's original is freed as soon as its slice is made.
    pub fn fill_moved(self, out: &mut ModelProto, src: &mut ModelProto) -> Result<()> {
        let (o, s) = graphs(out, src)?;
        for (k, i, slices, take) in self.places(o, s)? {
            let t = if take { std::mem::take(&mut s.initializer[i]) } else { s.initializer[i].clone() };
            let name = std::mem::take(&mut o.initializer[k].name);
            o.initializer[k] = sliced(t, &slices)?;
            o.initializer[k].name = name;
        }
        Ok(())
    }

    /// As [`Hollow::fill_moved`], copying from a borrowed `src`.
    pub fn fill_cloned(self, out: &mut ModelProto, src: &ModelProto) -> Result<()> {
        let o = out.graph.as_mut().context("model has no graph")?;
        let s = src.graph.as_ref().context("model has no graph")?;
        for (k, i, slices, _) in self.places(o, s)? {
            let name = std::mem::take(&mut o.initializer[k].name);
            o.initializer[k] = sliced(s.initializer[i].clone(), &slices)?;
            o.initializer[k].name = name;
        }
        Ok(())
    }

    /// A filled copy of `out` (copied from `src`), leaving `out` and `self` as they are.
    pub fn filled_copy(&self, out: &ModelProto, src: &ModelProto) -> Result<ModelProto> {
        let mut m = out.clone();
        self.clone().fill_cloned(&mut m, src)?;
        Ok(m)
    }
}

/// Index of initializer `name` in `out`: `i` (its index in the input) unless the rewrite moved it.
fn position(out: &GraphProto, name: &str, i: usize) -> Result<usize> {
    if out.initializer.get(i).is_some_and(|t| t.name == name) {
        return Ok(i);
    }
    out.initializer.iter().position(|t| t.name == name).with_context(|| format!("hollow initializer '{name}' is gone"))
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
        let (mut h, hollow) = clone_hollow(&m, big);
        assert!(hollow.contains("w1") && hollow.contains("w3") && !hollow.contains("w0") && !hollow.contains("w2"));
        assert!(h.graph.initializer[1].raw_data.is_empty() && h.graph.initializer[3].float_data.is_empty());
        hollow.fill_cloned(&mut h, &m).unwrap();
        assert_eq!(h.write_to_bytes().unwrap(), m.write_to_bytes().unwrap());

        let mut src = m.clone();
        let (mut h, mut hollow) = clone_hollow(&src, |t| big(t) && t.name != "w3");
        assert!(!hollow.contains("w3"));
        let sg = src.graph.as_ref().unwrap().clone();
        hollow.fill_one(h.graph.as_mut().unwrap(), &sg, "w1").unwrap();
        h.graph.as_mut().unwrap().initializer[1].raw_data[0] = 99;
        hollow.fill_moved(&mut h, &mut src).unwrap();
        let mut want = m.clone();
        want.graph.as_mut().unwrap().initializer[1].raw_data[0] = 99;
        assert_eq!(h.write_to_bytes().unwrap(), want.write_to_bytes().unwrap());
    }

    /// Slicing a shell and then its data comes back gives what slicing a copy gives, whether
    /// the data comes back at the end (moved or copied) or early (the rewrite touches it again).
    #[test]
    fn slices_recorded_on_a_shell_are_applied_when_the_data_comes_back() {
        let mut m = model();
        {
            let t = &mut m.graph.as_mut().unwrap().initializer[1];
            t.dims = vec![20, 100];
        }
        let mut want = m.clone();
        let w = &mut want.graph.as_mut().unwrap().initializer[1];
        crate::model::tensor::slice_axis(w, 1, &[0, 5, 99]).unwrap();
        crate::model::tensor::slice_axis(w, 0, &[3, 4]).unwrap();
        let src = m.graph.as_ref().unwrap().clone();
        for how in 0..3 {
            let (mut h, mut hollow) = clone_hollow(&m, big);
            let g = h.graph.as_mut().unwrap();
            assert!(hollow.slice_later(g, "w1", 1, vec![0, 5, 99]).unwrap());
            assert!(hollow.slice_later(g, "w1", 0, vec![3, 4]).unwrap());
            assert_eq!(g.initializer[1].dims, vec![2, 3]);
            assert!(!hollow.slice_later(g, "w0", 0, vec![0]).unwrap(), "w0 is not hollow");
            assert!(hollow.slice_later(g, "w1", 0, vec![2]).is_err(), "index out of range");
            match how {
                0 => hollow.fill_moved(&mut h, &mut m.clone()).unwrap(),
                1 => hollow.fill_cloned(&mut h, &m).unwrap(),
                _ => {
                    hollow.fill_one(h.graph.as_mut().unwrap(), &src, "w1").unwrap();
                    assert!(!hollow.contains("w1"));
                    hollow.fill_cloned(&mut h, &m).unwrap();
                }
            }
            assert_eq!(h.write_to_bytes().unwrap(), want.write_to_bytes().unwrap(), "way {how}");
        }
    }

    /// A new initializer derived from an input one (the heads rewrite's sliced weights) is
    /// filled with the slice: taken from the input when nothing else needs that tensor, copied
    /// while a shell of it is still in the model.
    #[test]
    fn derived_initializers_are_sliced_from_the_input() {
        let m = model();
        let mut want_slice = m.graph.initializer[1].clone();
        crate::model::tensor::slice_axis(&mut want_slice, 0, &[1, 7]).unwrap();
        for keep_original in [false, true] {
            let (mut h, mut hollow) = clone_hollow(&m, big);
            let g = h.graph.as_mut().unwrap();
            let mut shell = TensorProto::new();
            shell.name = "w1.new".into();
            shell.data_type = 1;
            shell.dims = vec![2];
            g.initializer.push(shell);
            hollow.derive("w1.new".into(), 1, vec![(0, vec![1, 7].into())]);
            if !keep_original {
                g.initializer.remove(1);
            }
            let mut src = m.clone();
            hollow.fill_moved(&mut h, &mut src).unwrap();
            let g = h.graph.as_ref().unwrap();
            let got = g.initializer.iter().find(|t| t.name == "w1.new").unwrap();
            assert_eq!(got.raw_data, want_slice.raw_data);
            assert_eq!((got.dims.clone(), got.doc_string.clone()), (vec![2], want_slice.doc_string.clone()));
            if keep_original {
                assert_eq!(g.initializer[1], m.graph.initializer[1], "the original is still whole");
            } else {
                assert!(src.graph.initializer[1].raw_data.is_empty(), "taken, not copied");
            }
        }
    }

    #[test]
    fn a_changed_hollow_tensor_is_an_error() {
        let m = model();
        let (mut h, hollow) = clone_hollow(&m, big);
        h.graph.as_mut().unwrap().initializer[1].dims = vec![1000];
        assert!(hollow.fill_cloned(&mut h, &m).is_err());
        let (mut h, hollow) = clone_hollow(&m, big);
        h.graph.as_mut().unwrap().initializer[3].data_type = 10;
        assert!(hollow.fill_cloned(&mut h, &m).is_err());
    }

    /// A rewrite may drop initializers it orphaned (the heads rewrite does) or append new ones:
    /// the shells left are filled wherever they are now.
    #[test]
    fn dropped_and_appended_initializers_are_fine() {
        let m = model();
        let (mut h, hollow) = clone_hollow(&m, big);
        let g = h.graph.as_mut().unwrap();
        g.initializer.remove(1);
        let mut extra = TensorProto::new();
        extra.name = "new".into();
        g.initializer.insert(0, extra.clone());
        hollow.fill_cloned(&mut h, &m).unwrap();
        let mut want = m.clone();
        let wg = want.graph.as_mut().unwrap();
        wg.initializer.remove(1);
        wg.initializer.insert(0, extra);
        assert_eq!(h.write_to_bytes().unwrap(), want.write_to_bytes().unwrap());
    }
}
