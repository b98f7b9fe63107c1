//! Weights listed as graph inputs too.
//!
//! ONNX IR 3 and earlier required every initializer to be a graph input as well, and PyTorch's
//! `keep_initializers_as_inputs=True` (the legacy exporter's default for opset < 9) still writes
//! models that way. Such an initializer is only the input's default value: a caller may feed
//! another, so [`super::graph::GraphIndex::is_constant`] does not treat it as a weight, and
//! nothing in the model would be pruned. Nearly every such model means them as weights (tract
//! reads them as constants; onnxruntime warns that they block its optimisations).
//!
//! Contract: [`detach`] removes those inputs from the graph's input list (the pass then sees
//! plain initializers); [`restore`] puts them back at their places in the written model, each
//! declared with the shape and type its (possibly pruned) initializer now has. An input whose
//! initializer the pass removed is dropped, and in an IR < 4 model every new initializer is
//! declared an input too, as the format requires. Nothing else in the input list changes.

use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{type_proto, ModelProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto};
use std::collections::HashSet;

/// The graph inputs [`detach`] took out of a model.
#[derive(Clone, Debug, Default)]
pub struct Detached {
    /// (position in the original input list, its declaration), in list order.
    entries: Vec<(usize, ValueInfoProto)>,
    /// The initializers' names when they were detached.
    names: HashSet<String>,
}

/// What [`restore`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Inputs declared again with a new shape (their initializer was pruned).
    pub reshaped: Vec<String>,
    /// Inputs dropped: the pass removed their initializer.
    pub dropped: Vec<String>,
    /// New initializers declared as inputs (IR < 4).
    pub added: Vec<String>,
}

impl Detached {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// How many graph inputs have an initializer of the same name.
pub fn count(m: &ModelProto) -> usize {
    let Some(g) = m.graph.as_ref() else { return 0 };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    g.input.iter().filter(|v| inits.contains(v.name.as_str())).count()
}

/// Take the graph inputs that have an initializer of the same name out of the input list.
pub fn detach(m: &mut ModelProto) -> Detached {
    let Some(g) = m.graph.as_mut() else { return Detached::default() };
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    if !g.input.iter().any(|v| inits.contains(v.name.as_str())) {
        return Detached::default();
    }
    let mut entries = Vec::new();
    let mut kept = Vec::new();
    for (i, v) in std::mem::take(&mut g.input).into_iter().enumerate() {
        if inits.contains(v.name.as_str()) {
            entries.push((i, v));
        } else {
            kept.push(v);
        }
    }
    g.input = kept;
    Detached { entries, names: g.initializer.iter().map(|t| t.name.clone()).collect() }
}

/// A rewrite that gives a weight new values under a fresh name (heads: `W.heads`, the original
/// dropped once nothing reads it): the one new initializer named `name.…`, renamed back to
/// `name` with every read of it, so that the input keeps its name. False when there is none, or
/// more than one.
fn take_back_name(g: &mut onnx_protobuf::GraphProto, name: &str, before: &HashSet<String>) -> bool {
    let prefix = format!("{name}.");
    let fresh: Vec<usize> = (0..g.initializer.len())
        .filter(|&i| g.initializer[i].name.starts_with(&prefix) && !before.contains(&g.initializer[i].name))
        .collect();
    let [i] = fresh[..] else { return false };
    let new = std::mem::replace(&mut g.initializer[i].name, name.to_string());
    for n in g.node.iter_mut() {
        for x in n.input.iter_mut().filter(|x| **x == new) {
            *x = name.to_string();
        }
    }
    for v in g.value_info.iter_mut().filter(|v| v.name == new) {
        v.name = name.to_string();
    }
    true
}

/// Put the detached inputs back into `m`, at their original places, declared as their
/// initializers now are.
pub fn restore(m: &mut ModelProto, d: &Detached) -> Restored {
    let mut r = Restored::default();
    let ir = m.ir_version;
    let Some(g) = m.graph.as_mut() else { return r };
    if d.entries.is_empty() && ir >= 4 {
        return r;
    }
    let mut inputs = std::mem::take(&mut g.input);
    let mut removed = 0usize;
    for (pos, v) in &d.entries {
        if !g.initializer.iter().any(|t| t.name == v.name) && !take_back_name(g, &v.name, &d.names) {
            r.dropped.push(v.name.clone());
            removed += 1;
            continue;
        }
        let Some(t) = g.initializer.iter().find(|t| t.name == v.name) else { continue };
        let mut v = v.clone();
        if !declares(&v, t) {
            v.type_ = Some(tensor_type(t)).into();
            r.reshaped.push(v.name.clone());
        }
        // Inserting in increasing original position rebuilds the original order.
        inputs.insert((pos - removed).min(inputs.len()), v);
    }
    if ir < 4 {
        let declared: HashSet<String> = inputs.iter().map(|v| v.name.clone()).collect();
        for t in g.initializer.iter().filter(|t| !declared.contains(&t.name)) {
            let mut v = ValueInfoProto::new();
            v.name = t.name.clone();
            v.type_ = Some(tensor_type(t)).into();
            inputs.push(v);
            r.added.push(t.name.clone());
        }
    }
    g.input = inputs;
    r
}

/// Whether `v` declares what `t` is: its element type, and a shape that is absent or matches
/// `t`'s dims (a named or unset dim matches any size).
fn declares(v: &ValueInfoProto, t: &TensorProto) -> bool {
    let Some(type_proto::Value::TensorType(tt)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else {
        return false;
    };
    if tt.elem_type != t.data_type {
        return false;
    }
    let Some(shape) = tt.shape.as_ref() else { return true };
    shape.dim.len() == t.dims.len()
        && shape.dim.iter().zip(&t.dims).all(|(d, &n)| match &d.value {
            Some(dimension::Value::DimValue(v)) => *v == n,
            _ => true,
        })
}

fn tensor_type(t: &TensorProto) -> TypeProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = t
        .dims
        .iter()
        .map(|&n| {
            let mut d = Dimension::new();
            d.value = Some(dimension::Value::DimValue(n));
            d
        })
        .collect();
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = t.data_type;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    ty
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::tensor_value_info;

    fn init(name: &str, dims: &[i64]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.data_type = 1;
        t.dims = dims.to_vec();
        t
    }

    fn model(ir: i64) -> ModelProto {
        let mut m = ModelProto::new();
        m.ir_version = ir;
        let mut g = onnx_protobuf::GraphProto::new();
        g.input.push(tensor_value_info("w", 1, &[Some(8), Some(4)], ""));
        g.input.push(tensor_value_info("x", 1, &[None, Some(4)], "N"));
        g.input.push(tensor_value_info("b", 1, &[Some(8)], ""));
        g.input.push(tensor_value_info("s", 1, &[Some(8)], ""));
        g.initializer = vec![init("w", &[8, 4]), init("b", &[8]), init("s", &[8])];
        m.graph = Some(g).into();
        m
    }

    fn names(m: &ModelProto) -> Vec<&str> {
        m.graph.as_ref().unwrap().input.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn detach_then_restore_unchanged_gives_the_same_inputs() {
        let mut m = model(6);
        let orig = m.clone();
        let d = detach(&mut m);
        assert_eq!(d.len(), 3);
        assert_eq!(names(&m), ["x"]);
        let r = restore(&mut m, &d);
        assert_eq!(r, Restored::default());
        assert_eq!(m, orig);
    }

    #[test]
    fn a_pruned_weight_is_declared_with_its_new_shape_and_a_removed_one_is_dropped() {
        let mut m = model(6);
        let d = detach(&mut m);
        let g = m.graph.as_mut().unwrap();
        g.initializer[0].dims = vec![5, 4];
        g.initializer.retain(|t| t.name != "b");
        g.initializer.push(init("new_bias", &[5]));
        let r = restore(&mut m, &d);
        assert_eq!(r.reshaped, ["w"]);
        assert_eq!(r.dropped, ["b"]);
        assert!(r.added.is_empty(), "IR 6 does not need initializers declared");
        assert_eq!(names(&m), ["w", "x", "s"]);
        let w = &m.graph.as_ref().unwrap().input[0];
        assert!(declares(w, &init("w", &[5, 4])));
        assert!(!declares(w, &init("w", &[8, 4])));
    }

    #[test]
    fn a_weight_rewritten_under_a_fresh_name_takes_its_name_back() {
        let mut m = model(6);
        let d = detach(&mut m);
        let g = m.graph.as_mut().unwrap();
        let mut n = onnx_protobuf::NodeProto::new();
        n.input = vec!["x".into(), "w.heads".into()];
        g.node.push(n);
        g.initializer.retain(|t| t.name != "w");
        g.initializer.push(init("w.heads", &[6, 4]));
        let r = restore(&mut m, &d);
        assert_eq!((r.dropped.len(), r.reshaped.clone()), (0, vec!["w".to_string()]));
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[0].input, ["x", "w"]);
        assert!(g.initializer.iter().any(|t| t.name == "w" && t.dims == [6, 4]));
        assert_eq!(names(&m), ["w", "x", "b", "s"]);
    }

    #[test]
    fn an_ir3_model_declares_every_initializer() {
        let mut m = model(3);
        let d = detach(&mut m);
        m.graph.as_mut().unwrap().initializer.push(init("new_bias", &[8]));
        let r = restore(&mut m, &d);
        assert_eq!(r.added, ["new_bias"]);
        assert_eq!(names(&m), ["w", "x", "b", "s", "new_bias"]);
    }

    #[test]
    fn a_named_dim_matches_any_size() {
        let v = tensor_value_info("w", 1, &[None, Some(4)], "n");
        assert!(declares(&v, &init("w", &[3, 4])));
        assert!(!declares(&v, &init("w", &[3, 5])));
        assert!(!declares(&v, &init("w", &[3])));
    }
}
