//! Layers as linear maps: where a weight is used, how its node maps an input row (a Gemm/MatMul
//! row, a Conv im2col patch) to an output row, and how to read and write the weight as an
//! `out × p` row-major matrix. Also the deterministic sampling of calibration positions.

use crate::model::graph::{attr_f, attr_i, attr_ints, node_label, GraphIndex};
use crate::model::tensor;
use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::{GraphProto, ModelProto};

/// How a node computes y = W z (+ b) on one row.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    /// 2-D Conv, weight [O, C/g, kh, kw]; z = the patch of one group's input channels. A 1-D
    /// Conv (weight [O, C/g, k], tensors [N, C, T]) is the 2-D one of kernel [1, k] on
    /// [N, C, 1, T] ([`spatial`]).
    Conv2d { group: usize, kernel: [usize; 2], strides: [usize; 2], pads: [usize; 2], dilations: [usize; 2] },
    /// Gemm with transA = 0: y = alpha · x B (+ beta · C); B [K, N] or [N, K] with transB.
    Gemm { trans_b: bool, alpha: f64, beta: f64 },
    /// MatMul x [..., K] @ W [K, N].
    MatMul,
    /// The input projection of an LSTM / GRU / RNN: W [dirs, G·H, I] (already `out × p` rows),
    /// its bias the first `gh` = G·H values of each direction's row of B [dirs, 2·G·H]. Every
    /// gate pre-activation is W x_t + Wb plus terms that do not read x (R h_{t-1} + Rb; a GRU's
    /// candidate gate multiplies only those by r): so the part x feeds is a linear layer on
    /// X [.., .., I] of its own, computed inside the node (the site is `internal`).
    Recurrent { dirs: usize, gh: usize },
}

/// The spatial size [H, W] of a Conv tensor: [N, C, H, W], or [N, C, T] as [1, T] (1-D).
pub fn spatial(shape: &[usize]) -> Option<[usize; 2]> {
    match shape {
        [_, _, h, w] => Some([*h, *w]),
        [_, _, t] => Some([1, *t]),
        _ => None,
    }
}

/// One weight tensor used by one node as a linear layer (or, from [`find_shared`], by several
/// the same way: `node` is the first in graph order, the others are in `also`).
#[derive(Clone, Debug)]
pub struct Site {
    pub node: usize,
    /// The weight's other uses, in graph order (empty unless from [`find_shared`]).
    pub also: Vec<Use>,
    pub label: String,
    pub layout: Layout,
    pub weight: String,
    /// The bias tensor (Conv input 2; Gemm C of shape [N]; the constant [N] of an Add that is
    /// the MatMul's only consumer).
    pub bias: Option<String>,
    /// x, and the value holding y including the bias.
    pub input: String,
    pub output: String,
    /// y is computed inside the node and held by no value (onnxruntime's Attention: its packed
    /// Q/K/V projection); `output` is then the node's output, and targets are computed from the
    /// dense input and weights.
    pub internal: bool,
    /// Output units (O or N) and features per output row (C/g·kh·kw, or K).
    pub out: usize,
    pub p: usize,
    /// A quantized weight (and bias): read dequantized, written quantized ([`super::quant`]).
    pub quant: Option<super::quant::Quant>,
    /// The layer's bias is a constant [O] vector other layers read too (an export's equal
    /// biases stored once, read directly or through an `Identity` each): `bias` is None and the
    /// bias stays as it is. Per weight the weights
    /// are still updated (their targets W z carry no bias); the channels refit, whose targets
    /// are the layer's outputs, bias included, leaves such a layer alone.
    pub shared_bias: bool,
}

/// Another node applying a shared site's weight: its x and the value holding its y.
#[derive(Clone, Debug, PartialEq)]
pub struct Use {
    pub node: usize,
    pub input: String,
    pub output: String,
}

impl Site {
    /// Every use of the weight, the site's own first: (x, the value holding y).
    pub fn uses(&self) -> impl Iterator<Item = (&String, &String)> {
        std::iter::once((&self.input, &self.output)).chain(self.also.iter().map(|u| (&u.input, &u.output)))
    }
}

/// Elements of the normal equations a shared weight's uses may hold together (uses × p², about
/// 12 bytes each in the refit: 192 MB): ALBERT's 768-wide attention projections, used by 12
/// layers, fit; its 3072-wide FFN output projection does not and is skipped with the reason.
pub const MAX_SHARED_ELEMS: usize = 1 << 24;

/// The start of the reason a quantized weight is not refitted (the report's; the run's note
/// counts them).
pub const QUANTIZED: &str = "quantized weight: ";

/// The site that uses `weight`, or why there is none. A weight several nodes read is not a site
/// here (see [`find_shared`]).
pub fn find(model: &ModelProto, weight: &str) -> std::result::Result<Site, String> {
    find_with(model, weight, false)
}

/// As [`find`], and a weight that several nodes apply as the same linear map (same op,
/// attributes and bias: CBAM's channel-gate MLP on the average- and the max-pooled channels,
/// weight-tied layers) is one site whose other uses are in [`Site::also`]: a refit fits it to
/// every use's rows at once. Quantized, recurrent and grouped uses are not joined.
pub fn find_shared(model: &ModelProto, weight: &str) -> std::result::Result<Site, String> {
    find_with(model, weight, true)
}

fn find_with(model: &ModelProto, weight: &str, shared: bool) -> std::result::Result<Site, String> {
    let g = model.graph.as_ref().ok_or("model has no graph")?;
    let ix = GraphIndex::build(g).map_err(|e| e.to_string())?;
    let users = ix.consumers_of(weight);
    match users.len() {
        1 => at(g, &ix, weight, users[0], 1),
        k if shared && k > 1 => {
            let mut sites =
                users.iter().map(|&u| at(g, &ix, weight, u, k)).collect::<std::result::Result<Vec<_>, _>>()?;
            sites.sort_by_key(|s| s.node);
            let first = sites.remove(0);
            let differs =
                |s: &Site| s.layout != first.layout || s.bias != first.bias || (s.out, s.p) != (first.out, first.p);
            if first.internal || first.shared_bias || first.quant.is_some() || groups(&first) > 1 {
                return Err(format!("weight is used by {k} nodes (a shared quantized, grouped or fused layer)"));
            }
            if sites.iter().any(differs) {
                return Err(format!("weight is used by {k} nodes that apply it differently"));
            }
            // Each use's sums are kept apart (p × p per use, see `refit`): bound them.
            let elems = k.saturating_mul(first.p).saturating_mul(first.p);
            if elems > MAX_SHARED_ELEMS {
                return Err(format!(
                    "weight is used by {k} nodes: their normal equations ({k} × {p}², {mb} MB) exceed the {max} MB kept for a shared weight",
                    p = first.p,
                    mb = (elems * 12) >> 20,
                    max = (MAX_SHARED_ELEMS * 12) >> 20
                ));
            }
            let also = sites.into_iter().map(|s| Use { node: s.node, input: s.input, output: s.output }).collect();
            let label =
                format!("{} (weight shared with {} more node{})", first.label, k - 1, if k > 2 { "s" } else { "" });
            Ok(Site { also, label, ..first })
        }
        k => Err(format!("weight is used by {k} nodes")),
    }
}

/// The site of `weight` at its user `(ni, slot)`, the weight and its bias each read by `readers`
/// nodes (1, or every use of a shared weight).
fn at(
    g: &GraphProto,
    ix: &GraphIndex,
    weight: &str,
    (ni, slot): (usize, usize),
    readers: usize,
) -> std::result::Result<Site, String> {
    let n = &g.node[ni];
    let label = format!("{} {}", n.op_type, node_label(n));
    let dom_ok = n.domain.is_empty() || n.domain == "ai.onnx";
    let (dims, mut quant) = match super::quant::weight(g, ix, weight) {
        Some(q) => {
            let (q, dims) = q?;
            (dims, Some(q))
        }
        None => {
            let t = ix.weight(g, weight).ok_or("not a constant")?;
            (tensor::shape(t).map_err(|e| e.to_string())?, None)
        }
    };
    // A quantized weight's scale must run along the layer's output units (or be one value).
    let out_axis = |axis: usize| -> std::result::Result<(), String> {
        match &quant {
            Some(q) if q.axis != axis && dims.get(q.axis).is_some_and(|&d| d != 1) => {
                let t = ix.weight(g, &q.scale).ok_or("not a constant")?;
                if tensor::numel(t).map_err(|e| e.to_string())? != 1 {
                    return Err(format!("{QUANTIZED}its scales run along axis {}, not the output units", q.axis));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    let x = n.input.first().cloned().unwrap_or_default();
    let y = n.output.first().cloned().unwrap_or_default();
    let recurrent = matches!(n.op_type.as_str(), "LSTM" | "GRU" | "RNN");
    if x.is_empty() || (y.is_empty() && !recurrent) || ix.is_constant(&x) {
        return Err("the layer's input is not a computed value".into());
    }
    let const_bias = |name: Option<&String>, len: usize, quant: &mut Option<super::quant::Quant>| -> Option<String> {
        let b = name.filter(|s| !s.is_empty())?;
        if let Some(q) = quant.as_mut() {
            if let Some(qb) = super::quant::bias(g, ix, b, len, q) {
                q.bias = Some(qb);
                return Some(b.clone());
            }
        }
        let bt = ix.weight(g, b)?;
        (ix.consumers_of(b).len() == readers && tensor::shape(bt).ok()? == vec![len]).then(|| b.clone())
    };
    // A float constant [len] that other nodes read too, directly or through an `Identity` per
    // reader as torch.onnx writes deduplicated constants (not a quantized layer's).
    let shared_const = |name: &str, len: usize, quant: &Option<super::quant::Quant>| -> bool {
        let mut src = name;
        for _ in 0..g.node.len() {
            match g.node.iter().find(|n| n.output.iter().any(|o| o == src)) {
                Some(n) if n.op_type == "Identity" && n.domain.is_empty() && !n.input.is_empty() => src = &n.input[0],
                _ => break,
            }
        }
        quant.is_none()
            && (src != name || ix.consumers_of(name).len() > readers)
            && ix.weight(g, src).is_some_and(|t| t.data_type == 1 && tensor::shape(t).ok() == Some(vec![len]))
    };
    let mut shared_bias = false;
    // (layout, bias, the value holding y, whether y is internal to the node, out, p)
    let (layout, bias, output, internal, out, p) = match (n.op_type.as_str(), slot, dom_ok) {
        ("Conv", 1, true) => {
            // 1-D (weight [O, C/g, k]) as 2-D with kernel [1, k]: its attributes get a leading
            // 1 (strides, dilations) or 0 (pads).
            let one_d = dims.len() == 3;
            if !(one_d || dims.len() == 4) {
                return Err(format!("{}-D Conv (1-D and 2-D are reconstructed)", dims.len().saturating_sub(2)));
            }
            let group = attr_i(n, "group").unwrap_or(1).max(1) as usize;
            let auto = crate::model::graph::attr_s(n, "auto_pad").unwrap_or_default();
            if !(auto.is_empty() || auto == "NOTSET" || auto == "VALID") {
                return Err(format!("auto_pad {auto}"));
            }
            let two = |name: &str, d: i64| -> std::result::Result<[usize; 2], String> {
                match (attr_ints(n, name), one_d) {
                    (None, _) => Ok([d as usize; 2]),
                    (Some([a]), true) if *a >= 0 => Ok([1, *a as usize]),
                    (Some([a, b]), false) if *a >= 0 && *b >= 0 => Ok([*a as usize, *b as usize]),
                    (Some(v), _) => Err(format!("{name} {v:?}")),
                }
            };
            let pads = match (attr_ints(n, "pads"), one_d) {
                (None, _) => [0, 0],
                (Some([a, b]), true) if a == b && *a >= 0 => [0, *a as usize],
                (Some([a, b, c, d]), false) if a == c && b == d && *a >= 0 && *b >= 0 => [*a as usize, *b as usize],
                (Some(v), _) => return Err(format!("asymmetric pads {v:?}")),
            };
            let kernel = if one_d { [1, dims[2]] } else { [dims[2], dims[3]] };
            let layout =
                Layout::Conv2d { group, kernel, strides: two("strides", 1)?, pads, dilations: two("dilations", 1)? };
            out_axis(0)?;
            let bias = const_bias(n.input.get(2), dims[0], &mut quant);
            if let (Some(b), None) = (n.input.get(2).filter(|s| !s.is_empty()), &bias) {
                if !shared_const(b, dims[0], &quant) {
                    return Err("the bias is not a constant [O] vector".into());
                }
                shared_bias = true;
            }
            (layout, bias, y, false, dims[0], dims[1] * kernel[0] * kernel[1])
        }
        ("Gemm", 1, true) => {
            if attr_i(n, "transA").unwrap_or(0) != 0 {
                return Err("Gemm with transA".into());
            }
            if dims.len() != 2 {
                return Err("Gemm weight is not 2-D".into());
            }
            let trans_b = attr_i(n, "transB").unwrap_or(0) != 0;
            let (out, p) = if trans_b { (dims[0], dims[1]) } else { (dims[1], dims[0]) };
            let alpha = attr_f(n, "alpha").unwrap_or(1.0) as f64;
            let beta = attr_f(n, "beta").unwrap_or(1.0) as f64;
            if alpha == 0.0 {
                return Err("Gemm with alpha 0".into());
            }
            out_axis(if trans_b { 0 } else { 1 })?;
            let bias = if beta != 0.0 { const_bias(n.input.get(2), out, &mut quant) } else { None };
            if let (Some(c), None, true) = (n.input.get(2).filter(|s| !s.is_empty()), &bias, beta != 0.0) {
                if !shared_const(c, out, &quant) {
                    return Err("the Gemm C input is not a constant [N] vector".into());
                }
                shared_bias = true;
            }
            (Layout::Gemm { trans_b, alpha, beta }, bias, y, false, out, p)
        }
        ("MatMul", 1, true) => {
            if dims.len() != 2 {
                return Err(format!("MatMul weight of rank {}", dims.len()));
            }
            let (p, out) = (dims[0], dims[1]);
            out_axis(1)?;
            // A bias Add right after: y = Add(MatMul, b) with b constant [N].
            let mut bias = None;
            let mut output = y.clone();
            if let [(ai, aslot)] = ix.consumers_of(&y) {
                let a = &g.node[*ai];
                if a.op_type == "Add" && a.input.len() == 2 {
                    if let Some(b) = const_bias(a.input.get(1 - aslot), out, &mut quant) {
                        bias = Some(b);
                        output = a.output.first().cloned().unwrap_or_default();
                    }
                }
            }
            (Layout::MatMul, bias, output, false, out, p)
        }
        ("MatMul", 0, true) => return Err("MatMul with a constant first operand".into()),
        ("LSTM" | "GRU" | "RNN", 1, true) => {
            if quant.is_some() {
                return Err(format!("{QUANTIZED}a quantized {} weight", n.op_type));
            }
            let [dirs, gh, p] = dims[..] else { return Err(format!("{} W of rank {}", n.op_type, dims.len())) };
            // B [dirs, 2·G·H]: W's part is the first half of each direction's row.
            let bias = match n.input.get(3).filter(|s| !s.is_empty()) {
                None => None,
                Some(b) => match ix.weight(g, b) {
                    Some(t) if ix.consumers_of(b).len() == 1 && tensor::shape(t).ok() == Some(vec![dirs, 2 * gh]) => {
                        Some(b.clone())
                    }
                    _ => return Err(format!("the {} bias is shared or not a constant [dirs, 2·G·H]", n.op_type)),
                },
            };
            // Y may be left out (a model reading only Y_h): the node's first named output.
            let output = n.output.iter().find(|o| !o.is_empty()).cloned().unwrap_or_default();
            (Layout::Recurrent { dirs, gh }, bias, output, true, dirs * gh, p)
        }
        // onnxruntime's Attention(input, weights [H_in, 3·H], bias [3·H], ...): its packed Q/K/V
        // projection is a MatMul with a bias whose output only the op sees.
        ("Attention", 1, false) if n.domain == "com.microsoft" => {
            if dims.len() != 2 {
                return Err(format!("Attention weight of rank {}", dims.len()));
            }
            if quant.is_some() {
                return Err(format!("{QUANTIZED}a quantized Attention weight"));
            }
            let (p, out) = (dims[0], dims[1]);
            let bias = const_bias(n.input.get(2), out, &mut quant);
            if n.input.get(2).is_some_and(|s| !s.is_empty()) && bias.is_none() {
                return Err("the Attention bias is shared or not a constant [3·H] vector".into());
            }
            (Layout::MatMul, bias, y, true, out, p)
        }
        (op, _, _) => return Err(format!("{op} weight")),
    };
    Ok(Site {
        node: ni,
        also: vec![],
        label,
        layout,
        weight: weight.into(),
        bias,
        input: x,
        output,
        internal,
        out,
        p,
        quant,
        shared_bias,
    })
}

/// Whether `n` is a layer whose weight (input 1) [`find`] can make a site of: Conv, Gemm, MatMul,
/// onnxruntime's Attention (its packed Q/K/V projection), the input projection of an LSTM, GRU
/// or RNN.
pub fn is_linear_node(n: &onnx_protobuf::NodeProto) -> bool {
    match n.domain.as_str() {
        "" | "ai.onnx" => matches!(n.op_type.as_str(), "Conv" | "Gemm" | "MatMul" | "LSTM" | "GRU" | "RNN"),
        "com.microsoft" => n.op_type == "Attention",
        _ => false,
    }
}

/// The weight as an `out × p` row-major f64 matrix (Conv: [O, C/g·kh·kw], the row is the filter).
pub fn read_rows(g: &GraphProto, s: &Site) -> Result<Vec<f64>> {
    let v = match &s.quant {
        Some(q) => super::quant::read(g, q)?,
        None => {
            let ix = GraphIndex::build(g)?;
            let t = ix.weight(g, &s.weight).with_context(|| format!("weight '{}'", s.weight))?;
            tensor::read_f64(t).with_context(|| format!("weight '{}'", s.weight))?
        }
    };
    Ok(match s.layout {
        Layout::Conv2d { .. } | Layout::Gemm { trans_b: true, .. } | Layout::Recurrent { .. } => v,
        Layout::Gemm { trans_b: false, .. } | Layout::MatMul => super::linalg::transpose(&v, s.p, s.out),
    })
}

/// Write an `out × p` row-major matrix back into the weight, in its dtype and encoding.
pub fn write_rows(g: &mut GraphProto, s: &Site, rows: &[f64]) -> Result<()> {
    let v = match s.layout {
        Layout::Conv2d { .. } | Layout::Gemm { trans_b: true, .. } | Layout::Recurrent { .. } => rows.to_vec(),
        Layout::Gemm { trans_b: false, .. } | Layout::MatMul => super::linalg::transpose(rows, s.out, s.p),
    };
    if let Some(q) = &s.quant {
        return super::quant::write(g, q, &v);
    }
    let ix = GraphIndex::build(g)?;
    let r = *ix.weights.get(&s.weight).with_context(|| format!("weight '{}'", s.weight))?;
    let t = crate::model::graph::weight_mut(g, r).context("weight vanished")?;
    tensor::write_f64(t, &v)
}

/// The bias as the model adds it (Gemm: beta · C), or zeros.
pub fn read_bias(g: &GraphProto, s: &Site) -> Result<Vec<f64>> {
    let Some(b) = &s.bias else { return Ok(vec![0.0; s.out]) };
    let mut v = match s.quant.as_ref().and_then(|q| q.bias.as_ref()) {
        Some(qb) => super::quant::read_bias(g, qb)?,
        None => {
            let ix = GraphIndex::build(g)?;
            tensor::read_f64(ix.weight(g, b).with_context(|| format!("bias '{b}'"))?)?
        }
    };
    match s.layout {
        Layout::Gemm { beta, .. } => v.iter_mut().for_each(|x| *x *= beta),
        // [dirs, 2·gh] → W's part of each direction, [dirs · gh].
        Layout::Recurrent { dirs, gh } => v = (0..dirs).flat_map(|d| v[d * 2 * gh..d * 2 * gh + gh].to_vec()).collect(),
        _ => {}
    }
    Ok(v)
}

/// Write the bias as the model adds it (Gemm: divided by beta).
pub fn write_bias(g: &mut GraphProto, s: &Site, vals: &[f64]) -> Result<()> {
    let Some(b) = &s.bias else { bail!("layer '{}' has no bias", s.label) };
    let mut v = vals.to_vec();
    match s.layout {
        Layout::Gemm { beta, .. } => v.iter_mut().for_each(|x| *x /= beta),
        // W's part of each direction's row of B; R's part stays.
        Layout::Recurrent { dirs, gh } => {
            let ix = GraphIndex::build(g)?;
            let mut all = tensor::read_f64(ix.weight(g, b).with_context(|| format!("bias '{b}'"))?)?;
            for d in 0..dirs {
                all[d * 2 * gh..d * 2 * gh + gh].copy_from_slice(&vals[d * gh..(d + 1) * gh]);
            }
            v = all;
        }
        _ => {}
    }
    if let Some(qb) = s.quant.as_ref().and_then(|q| q.bias.as_ref()) {
        return super::quant::write_bias(g, qb, &v);
    }
    let ix = GraphIndex::build(g)?;
    let r = *ix.weights.get(b).with_context(|| format!("bias '{b}'"))?;
    let t = crate::model::graph::weight_mut(g, r).context("bias vanished")?;
    tensor::write_f64(t, &v)
}

/// The multiplier between W's stored values and the map (Gemm: alpha).
pub fn weight_scale(s: &Site) -> f64 {
    match s.layout {
        Layout::Gemm { alpha, .. } => alpha,
        _ => 1.0,
    }
}

/// Deterministic sample of `k` distinct indices below `n` (all of them when k ≥ n), sorted.
pub fn sample(n: usize, k: usize, seed: u64) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut rng = crate::check::inputs::SplitMix64::new(seed);
    // Partial Fisher–Yates over an index vector (n is a spatial size or a token count: small).
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.below((n - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut s = idx[..k].to_vec();
    s.sort_unstable();
    s
}

/// Rows of one sample: for Conv, output positions (oh, ow) as a flat index into OH·OW; for
/// Gemm/MatMul, token positions (1 for a plain [N, K] input).
pub fn positions(s: &Site, x_shape: &[usize], y_shape: &[usize]) -> Result<usize> {
    match s.layout {
        Layout::Conv2d { .. } => match (spatial(x_shape), spatial(y_shape)) {
            (Some(_), Some([h, w])) if x_shape.len() == y_shape.len() => Ok(h * w),
            _ => bail!("{}: Conv tensors are not 3-D or 4-D", s.label),
        },
        Layout::Gemm { .. } => Ok(1),
        Layout::MatMul | Layout::Recurrent { .. } => {
            if x_shape.is_empty() || *x_shape.last().unwrap() != s.p {
                bail!("{}: input shape {x_shape:?} does not end in {}", s.label, s.p);
            }
            Ok(x_shape[1..x_shape.len() - 1].iter().product())
        }
    }
}

/// The input row of sample `n` at position `pos` for output group `grp` (Conv: the im2col patch
/// of that group's channels, zero outside the image), written into `z` (length p).
pub fn input_row(s: &Site, x: &ArrayD<f32>, n: usize, pos: usize, grp: usize, y_hw: [usize; 2], z: &mut [f64]) {
    match s.layout {
        Layout::Conv2d { group, kernel, strides, pads, dilations } => {
            let sh = x.shape();
            let [h, w] = spatial(sh).expect("a Conv input of 3 or 4 axes (positions checked it)");
            let c_all = sh[1];
            let cg = c_all / group;
            let (oh, ow) = (pos / y_hw[1], pos % y_hw[1]);
            // Flat indexing (the captured values are in standard layout): IxDyn indexing per
            // element was a tenth of a reconstruction's time.
            let flat = x.as_slice();
            let mut k = 0;
            for c in grp * cg..(grp + 1) * cg {
                let plane = (n * c_all + c) * h * w;
                for i in 0..kernel[0] {
                    let hi = (oh * strides[0] + i * dilations[0]) as isize - pads[0] as isize;
                    let row_ok = hi >= 0 && (hi as usize) < h;
                    for j in 0..kernel[1] {
                        let wj = (ow * strides[1] + j * dilations[1]) as isize - pads[1] as isize;
                        z[k] = if row_ok && wj >= 0 && (wj as usize) < w {
                            let at = plane + hi as usize * w + wj as usize;
                            match flat {
                                Some(f) => f[at] as f64,
                                None if sh.len() == 3 => x[IxDyn(&[n, c, wj as usize])] as f64,
                                None => x[IxDyn(&[n, c, hi as usize, wj as usize])] as f64,
                            }
                        } else {
                            0.0
                        };
                        k += 1;
                    }
                }
            }
        }
        Layout::Gemm { .. } => {
            for (k, zk) in z.iter_mut().enumerate() {
                *zk = x[IxDyn(&[n, k])] as f64;
            }
        }
        Layout::MatMul | Layout::Recurrent { .. } => {
            let flat = x.as_slice().expect("standard layout");
            let per: usize = x.shape()[1..].iter().product();
            let base = n * per + pos * s.p;
            for (k, zk) in z.iter_mut().enumerate() {
                *zk = flat[base + k] as f64;
            }
        }
    }
}

/// Every sampled input row of chunk `x` for group `grp`, in row order: `f(n, z)` for sample `n`
/// of the chunk (calibration row `row0 + n`) at each of its positions sampled with layer `k`'s
/// seed ([`super::row_seed`]), at most `per_sample` of them. `npos` and `y_hw` as
/// [`super::refit::sample_positions`] gives them.
#[allow(clippy::too_many_arguments)]
pub fn each_input_row(
    s: &Site,
    x: &ArrayD<f32>,
    k: usize,
    row0: usize,
    grp: usize,
    (npos, per_sample): (usize, usize),
    y_hw: [usize; 2],
    mut f: impl FnMut(usize, &[f64]) -> Result<()>,
) -> Result<()> {
    let mut z = vec![0.0; s.p];
    for n in 0..x.shape()[0] {
        for pos in sample(npos, per_sample, super::row_seed(k, row0 + n)) {
            input_row(s, x, n, pos, grp, y_hw, &mut z);
            f(n, &z)?;
        }
    }
    Ok(())
}

/// The output row of sample `n` at position `pos`: units `o0..o0+len` of y (with the bias).
pub fn output_row(s: &Site, y: &ArrayD<f32>, n: usize, pos: usize, o0: usize, out: &mut [f64]) {
    match s.layout {
        Layout::Conv2d { .. } => {
            let sh = y.shape();
            let hw: usize = sh[2..].iter().product();
            let flat = y.as_slice().expect("standard layout");
            for (k, v) in out.iter_mut().enumerate() {
                *v = flat[(n * sh[1] + o0 + k) * hw + pos] as f64;
            }
        }
        Layout::Gemm { .. } => {
            for (k, v) in out.iter_mut().enumerate() {
                *v = y[IxDyn(&[n, o0 + k])] as f64;
            }
        }
        Layout::MatMul | Layout::Recurrent { .. } => {
            let flat = y.as_slice().expect("standard layout");
            let per: usize = y.shape()[1..].iter().product();
            let base = n * per + pos * s.out + o0;
            for (k, v) in out.iter_mut().enumerate() {
                *v = flat[base + k] as f64;
            }
        }
    }
}

/// Groups of a site (Conv group, else 1).
pub fn groups(s: &Site) -> usize {
    match s.layout {
        Layout::Conv2d { group, .. } => group,
        _ => 1,
    }
}

#[cfg(test)]
mod tests;
