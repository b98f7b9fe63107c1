//! `--structured channels`: dependency analysis, EMP, rewrite. Every rewrite is proven by running
//! the pruned and the masked model on the same inputs (onnxruntime via tests/helpers/onnx_check.py
//! when python3 + onnx are available, and tract) and requiring ≤ 1e-4 relative difference.
//!
//! One test binary (`cargo test --test channels`), split by concept: the trained models and real
//! ones ([`trained`]), tensors and layers that share ([`sharing`]), rewrites per op ([`ops`]),
//! constant-emitting units folded away ([`dead`]), blocked groups and errors ([`barriers`]), and
//! the floors and alignment ([`floors`]). The helpers they share are here.

use onnx_emp::diff::graph_diff;
use onnx_emp::model::graph::{self, GraphIndex};
use onnx_emp::model::tensor;
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{Floor, GroupReport, StructOptions, StructScope, StructuralResult};

/// These tests prove rewrites on small widths: the narrow/stem floors would keep most groups
/// whole, so they are lifted (the floors have their own tests).
fn no_floor() -> StructOptions {
    StructOptions { floor: Floor::OFF, ..Default::default() }
}
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use std::path::PathBuf;
use std::process::Command;

#[path = "../common/prove.rs"]
mod prove;
use prove::*;
#[path = "../common/build.rs"]
mod build;
use build::*;

mod barriers;
mod dead;
mod floors;
mod ops;
mod sharing;
mod trained;

fn summary(groups: &[GroupReport]) -> String {
    groups
        .iter()
        .map(|g| {
            let state = match &g.blocked {
                Some(b) => format!("blocked: {b}"),
                None => format!("kept {}/{}", g.kept, g.n),
            };
            format!("{} [{}] n_eff={:.2} {state} {:?}", g.id, g.kind, g.n_eff, g.notes)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn digits(model: &str, x: &str) -> (ModelProto, Vec<(String, PathBuf)>, Vec<Input>) {
    let dir = root().join("models");
    let p = dir.join(x);
    (load(&dir.join(model)), vec![("x".into(), p.clone())], vec![npy(&p)])
}

/// Look up a weight (initializer or Constant) of a model by name.
fn weight<'a>(m: &'a ModelProto, name: &str) -> &'a TensorProto {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    ix.weight(g, name).unwrap_or_else(|| panic!("weight '{name}' not found"))
}

fn node<'a>(m: &'a ModelProto, name: &str) -> &'a NodeProto {
    m.graph.as_ref().unwrap().node.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("node '{name}' not found"))
}

fn group<'a>(r: &'a StructuralResult, id: &str) -> &'a GroupReport {
    r.groups.iter().find(|g| g.id == id).unwrap_or_else(|| panic!("no group '{id}' in\n{}", summary(&r.groups)))
}

const X4: [i64; 4] = [1, 3, 5, 5];

fn const_node(out: &str, t: TensorProto) -> NodeProto {
    let mut a = AttributeProto::new();
    a.name = "value".into();
    a.type_ = protobuf::EnumOrUnknown::from_i32(4);
    a.t = Some(t).into();
    nd("Constant", &format!("const_{out}"), &[], &[out], vec![a])
}
