//! The inputs a model declares (graph inputs that are not initializers): name, element type,
//! dims (fixed, symbolic or unknown), and the bound of the table an integer input indexes; and
//! `--dim` values checked against them.
//!
//! Contract: read from the protobuf alone (tract's types, no external data); an input without a
//! tensor type or a shape is an error, not a guess; a `--dim` that names no free dim of the
//! inputs (a typo, or an axis the model fixes) is an error, never ignored.

use super::{DimSpec, InputInfo};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as PbDim;
use tract_onnx::prelude::Framework;

/// Parse a model file with tract's protobuf types (no external data needed for the graph).
pub(crate) fn read_proto(model_path: &Path) -> Result<pb::ModelProto> {
    tract_onnx::onnx()
        .proto_model_for_path(model_path)
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| format!("{}: cannot parse ONNX protobuf", model_path.display()))
}

pub(crate) fn inputs_of(proto: &pb::ModelProto) -> Result<Vec<InputInfo>> {
    let g = proto.graph.as_ref().context("model has no graph")?;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let bounds = crate::check::bounds::index_bounds(g);
    let mut out = vec![];
    for vi in &g.input {
        if inits.contains(vi.name.as_str()) {
            continue;
        }
        let Some(pb::type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            bail!("input '{}' has no tensor type", vi.name);
        };
        let dims = match &t.shape {
            None => bail!("input '{}' has no shape (rank unknown); cannot prepare data for it", vi.name),
            Some(s) => s
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(PbDim::DimValue(v)) if *v >= 0 => DimSpec::Fixed(*v),
                    Some(PbDim::DimParam(p)) if !p.is_empty() && p != "?" => DimSpec::Symbolic(p.clone()),
                    _ => DimSpec::Unknown,
                })
                .collect(),
        };
        let index_bound = bounds.get(&vi.name).copied();
        out.push(InputInfo { name: vi.name.clone(), elem_type: t.elem_type, dims, index_bound });
    }
    Ok(out)
}

/// The real inputs of a model (graph inputs that are not initializers), in order.
pub fn model_inputs(model_path: &Path) -> Result<Vec<InputInfo>> {
    let proto = read_proto(model_path)?;
    inputs_of(&proto).with_context(|| model_path.display().to_string())
}

pub(super) fn fmt_dims(dims: &[DimSpec]) -> String {
    let v: Vec<String> = dims
        .iter()
        .map(|d| match d {
            DimSpec::Fixed(v) => v.to_string(),
            DimSpec::Symbolic(s) => s.clone(),
            DimSpec::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", v.join(", "))
}

/// `--dim` values: positive, and each naming a free dim of the model's inputs (a symbol, `batch`,
/// or `input:axis` of an unnamed one); a typo, or an axis the model fixes, is an error.
pub fn check_dims(infos: &[InputInfo], dims: &BTreeMap<String, i64>) -> Result<()> {
    for (k, v) in dims {
        if *v <= 0 {
            bail!("--dim {k}={v}: dims must be positive");
        }
        // A name no free dim has (a typo, or an axis the model fixes) is an error, not ignored;
        // `batch` is always accepted (an unnamed axis 0).
        let free = |name: &str, axis: usize| {
            infos
                .iter()
                .any(|i| i.name == name && matches!(i.dims.get(axis), Some(DimSpec::Symbolic(_) | DimSpec::Unknown)))
        };
        let known = k == "batch"
            || infos.iter().any(|i| i.dims.iter().any(|d| matches!(d, DimSpec::Symbolic(s) if s == k)))
            || k.rsplit_once(':').is_some_and(|(n, a)| a.parse().is_ok_and(|a| free(n, a)));
        if !known {
            let names: Vec<String> = infos
                .iter()
                .flat_map(|i| {
                    i.dims.iter().enumerate().filter_map(move |(a, d)| match d {
                        DimSpec::Symbolic(s) => Some(s.clone()),
                        DimSpec::Unknown => Some(format!("{}:{a}", i.name)),
                        _ => None,
                    })
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let list = if names.is_empty() { "none: every dim is fixed".to_string() } else { names.join(", ") };
            bail!("--dim {k}={v}: the model's inputs have no free dim of that name (free dims: {list})");
        }
    }
    Ok(())
}
