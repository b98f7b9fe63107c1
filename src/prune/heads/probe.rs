//! Concrete tensor shapes of a model at a chosen input size, from tract's type analysis.
//!
//! Head discovery needs the shape of every tensor on an attention path (to follow the head
//! index through Reshape/Transpose exactly) and of the tensors whose `Shape` feeds a reshape
//! target. tract's inference analysis gives them without running the model. Two probes with
//! different sizes for every dynamic input dimension tell dims that follow the input (batch,
//! sequence) from fixed ones.

use anyhow::{anyhow, bail, Context, Result};
use onnx_protobuf::{Message, ModelProto};
use std::collections::{BTreeMap, HashMap};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::{Factoid, InferenceModelExt};

/// Shapes (and small integer constant values) of the named values of one probe.
#[derive(Debug, Default, Clone)]
pub struct Probe {
    pub shapes: HashMap<String, Vec<usize>>,
    /// Values tract folded to constants (integer tensors of at most 64 elements): a cross-check
    /// for our own shape arithmetic.
    pub ints: HashMap<String, Vec<i64>>,
    /// The size chosen for each dynamic input dimension (by dim_param name or "input:axis").
    pub dims: BTreeMap<String, usize>,
}

/// Sizes for the dynamic dims of each probe: distinct per dimension name and per probe, away
/// from the small numbers (1, 2, 4, 8, ...) that head counts and head sizes use.
const PROBE_SIZES: [[usize; 6]; 2] = [[3, 5, 7, 11, 13, 6], [5, 9, 10, 6, 12, 7]];

fn datum_type(elem: i32) -> Option<DatumType> {
    Some(match elem {
        1 => f32::datum_type(),
        2 => u8::datum_type(),
        3 => i8::datum_type(),
        6 => i32::datum_type(),
        7 => i64::datum_type(),
        9 => bool::datum_type(),
        10 => f16::datum_type(),
        11 => f64::datum_type(),
        _ => return None,
    })
}

/// Run tract's analysis with probe `which` (0 or 1). Errors (and tract panics) become `Err`.
///
/// First on a light copy whose big float initializers are graph inputs of the same type and
/// shape (shapes do not depend on their values; copying and re-parsing them cost several times
/// the model's bytes), then, if tract cannot analyse that, on the whole model.
pub fn probe(model: &ModelProto, which: usize) -> Result<Probe> {
    probe_or(model, which, &|| Ok(model.clone()))
}

/// [`probe`] where the whole model, when the light copy fails, is `full()` (for a model whose
/// big float initializers are shells without data: only their dims are read by the light copy).
pub fn probe_or(model: &ModelProto, which: usize, full: &dyn Fn() -> Result<ModelProto>) -> Result<Probe> {
    if let Some(light) = light_copy(model) {
        if let Ok(p) = probe_model(light, which) {
            return Ok(p);
        }
    }
    probe_model(full()?, which)
}

/// An initializer the light copy turns into a graph input (its values are never read).
pub fn light_input(t: &onnx_protobuf::TensorProto) -> bool {
    use crate::model::tensor::{dt, numel};
    matches!(t.data_type, dt::FLOAT | dt::FLOAT16 | dt::BFLOAT16 | dt::DOUBLE)
        && t.dims.iter().all(|&d| d > 0)
        && numel(t).is_ok_and(|n| n >= LIGHT_MIN_ELEMS)
}

fn probe_model(m: ModelProto, which: usize) -> Result<Probe> {
    let m = shape_stand_ins(m);
    let bytes = m.write_to_bytes().map_err(|e| anyhow!("encoding the model: {e}"))?;
    let run = std::panic::catch_unwind(move || probe_inner(&m, &bytes, which));
    match run {
        Ok(r) => r,
        Err(_) => bail!("tract panicked while analysing the model"),
    }
}

/// Float initializers of at least this many elements become inputs in the light copy.
const LIGHT_MIN_ELEMS: usize = 1024;

/// The model without its big float initializers' data: each becomes a graph input with its
/// element type and full shape. `None` when there is none to leave out.
fn light_copy(model: &ModelProto) -> Option<ModelProto> {
    use onnx_protobuf::GraphProto;
    let g = model.graph.as_ref()?;
    let big = light_input;
    if !g.initializer.iter().any(big) {
        return None;
    }
    let mut lg = GraphProto::new();
    lg.name = g.name.clone();
    lg.node = g.node.clone();
    lg.output = g.output.clone();
    lg.value_info = g.value_info.clone();
    lg.sparse_initializer = g.sparse_initializer.clone();
    let mut inputs = g.input.clone();
    for t in &g.initializer {
        if !big(t) {
            lg.initializer.push(t.clone());
            continue;
        }
        let dims: Vec<Option<i64>> = t.dims.iter().map(|&d| Some(d)).collect();
        let vi = crate::model::graph::tensor_value_info(&t.name, t.data_type, &dims, "");
        // An IR < 4 model also lists its initializers as inputs: replace that entry.
        match inputs.iter_mut().find(|i| i.name == t.name) {
            Some(i) => *i = vi,
            None => inputs.push(vi),
        }
    }
    lg.input = inputs;
    Some(crate::model::graph::model_around(model, lg))
}

/// tract 0.23 has no ONNX `Attention`: for the analysis only, each 4-D one (heads on axis 1, no
/// past state) is replaced by MatMul(Softmax(MatMul(Q, Kᵀ)), V), which has the same output shape
/// [B, H, Sq, Dv] (K and V averaged over their heads first, so that grouped-query shapes broadcast).
/// The values are never used, only the shapes.
fn shape_stand_ins(mut m: ModelProto) -> ModelProto {
    use onnx_protobuf::NodeProto;
    let Some(g) = m.graph.as_mut() else { return m };
    let is_4d = |n: &NodeProto| {
        n.op_type == "Attention"
            && (n.domain.is_empty() || n.domain == "ai.onnx")
            && crate::model::graph::attr_i(n, "q_num_heads").is_none()
            && n.input.len() >= 3
            && n.input[..3].iter().all(|s| !s.is_empty())
            && n.output.first().is_some_and(|o| !o.is_empty())
    };
    if !g.node.iter().any(is_4d) {
        return m;
    }
    let mk = |op: &str, ins: Vec<String>, out: String| {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.input = ins;
        n.output = vec![out];
        n
    };
    let old = std::mem::take(&mut g.node);
    for n in old {
        if !is_4d(&n) {
            g.node.push(n);
            continue;
        }
        // K and V averaged over their heads broadcast against any query head count (GQA too).
        let y = n.output[0].clone();
        let name = |k: &str| format!("{y}__probe_{k}");
        let mut axes = onnx_protobuf::TensorProto::new();
        axes.name = name("axes");
        axes.data_type = crate::model::tensor::dt::INT64;
        axes.dims = vec![1];
        axes.int64_data = vec![1];
        g.initializer.push(axes);
        g.node.push(mk("ReduceMean", vec![n.input[1].clone(), name("axes")], name("k")));
        g.node.push(mk("ReduceMean", vec![n.input[2].clone(), name("axes")], name("v")));
        let mut t = mk("Transpose", vec![name("k")], name("kt"));
        crate::model::graph::set_attr_ints(&mut t, "perm", &[0, 1, 3, 2]);
        g.node.push(t);
        g.node.push(mk("MatMul", vec![n.input[0].clone(), name("kt")], name("s")));
        g.node.push(mk("Softmax", vec![name("s")], name("p")));
        g.node.push(mk("MatMul", vec![name("p"), name("v")], y));
    }
    m
}

fn probe_inner(model: &ModelProto, bytes: &[u8], which: usize) -> Result<Probe> {
    use tract_onnx::tract_hir::prelude::tract_data::prelude::tvec;
    let g = model.graph.as_ref().context("model has no graph")?;
    let onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    let mut rd = bytes;
    let pb = onnx.proto_model_for_read(&mut rd).map_err(|e| anyhow!("tract cannot decode the model: {e:#}"))?;
    let parsed = onnx.parse(&pb, None).map_err(|e| anyhow!("tract cannot parse the model: {e:#}"))?;
    let mut im = parsed.model;
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = Probe::default();
    let mut next = 0usize;
    for inp in g.input.iter().filter(|i| !inits.contains(i.name.as_str())) {
        let Some(tt) = inp.type_.as_ref().filter(|t| t.has_tensor_type()).map(|t| t.tensor_type()) else {
            bail!("input '{}' is not a tensor", inp.name)
        };
        let dt = datum_type(tt.elem_type).with_context(|| format!("input '{}': unsupported type", inp.name))?;
        let Some(shape) = tt.shape.as_ref() else { bail!("input '{}' has no shape", inp.name) };
        let mut dims = tvec![];
        for (axis, d) in shape.dim.iter().enumerate() {
            let v = d.dim_value();
            if d.has_dim_value() && v > 0 {
                dims.push(v as usize);
                continue;
            }
            let key = if d.has_dim_param() && !d.dim_param().is_empty() {
                d.dim_param().to_string()
            } else {
                format!("{}:{axis}", inp.name)
            };
            let size = match out.dims.get(&key) {
                Some(&s) => s,
                None => {
                    let s = PROBE_SIZES[which % 2][next % 6];
                    next += 1;
                    out.dims.insert(key, s);
                    s
                }
            };
            dims.push(size);
        }
        let outlet =
            parsed.outlets_by_name.get(&inp.name).with_context(|| format!("input '{}' unknown to tract", inp.name))?;
        im.set_outlet_fact(*outlet, InferenceFact::dt_shape(dt, dims)).map_err(|e| anyhow!("{e:#}"))?;
    }
    im.analyse(false).map_err(|e| anyhow!("tract shape analysis failed: {e:#}"))?;
    for (name, outlet) in &parsed.outlets_by_name {
        let Ok(fact) = im.outlet_fact(*outlet) else { continue };
        if let Ok(Some(s)) = fact.shape.as_concrete_finite() {
            out.shapes.insert(name.clone(), s.to_vec());
        }
        if let Some(t) = fact.value.concretize() {
            if t.len() <= 64 && (t.datum_type() == i64::datum_type() || t.datum_type() == i32::datum_type()) {
                if let Ok(c) = t.cast_to::<i64>() {
                    if let Ok(s) = c.to_plain_array_view::<i64>() {
                        out.ints.insert(name.clone(), s.iter().copied().collect());
                    }
                }
            }
        }
    }
    Ok(out)
}
