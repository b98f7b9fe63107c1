//! The per-op rule table for structural (channel / hidden-unit) dependency analysis.
//!
//! Every ONNX op the analysis understands has ONE entry in [`TABLE`], saying how the op carries a
//! channel axis from its inputs to its outputs. Ops that are not in the table are barriers: a
//! tracked tensor that reaches them blocks its group (never assumed element-wise).
//!
//! Teaching a new element-wise op is one line: its name, `Kind::Unary(f)` or `Kind::Broadcast(f)`
//! with `f` evaluating the op on the constant a removed unit still emits (used for compensation;
//! return `None` when the value cannot be known, which keeps such units).

use crate::model::graph::{attr, attr_f, attr_i, attr_s};
use onnx_protobuf::NodeProto;

/// Evaluate a unary op on a constant. `scalars[i]` is the value of input `i` when it is a scalar
/// constant (Clip min/max); `None` when absent or not a scalar constant.
pub type UnaryFn = fn(&NodeProto, &[Option<f64>], f64) -> Option<f64>;
/// Evaluate a broadcasting element-wise op on two constants (n-ary ops fold left).
pub type BinaryFn = fn(f64, f64) -> Option<f64>;
/// Evaluate act(x + bias) for an activation with an optional fused bias.
pub type BiasActFn = fn(&NodeProto, f64) -> f64;

/// How an op carries the channel axis.
#[derive(Clone, Copy)]
pub enum Kind {
    /// y = f(x): one data input (slot 0), same axis, other inputs must be scalar constants.
    Unary(UnaryFn),
    /// Element-wise with numpy broadcasting over all inputs: per-channel constants are sliced,
    /// scalar constants left, tracked inputs joined (residual Add, SE Mul, SiLU).
    Broadcast(BinaryFn),
    /// Conv: consumer on the input axis 1 (or pass-through when depthwise), source on output 1.
    Conv,
    ConvTranspose,
    Gemm,
    /// MatMul with a constant 2-D right operand.
    MatMul,
    BatchNorm,
    InstanceNorm,
    /// GroupNormalization: the channels of a group are one unit; whole groups go
    /// (`groups/group_norm.rs`).
    GroupNorm,
    /// Spatial pooling, channel axis 1 unchanged. The flag: does a constant stay that constant.
    Pool(PoolKind),
    Reduce(ReduceKind),
    Concat,
    Split,
    /// Constant bounds (edited), or bounds computed from the sliced tensor's own channel count
    /// as a chunk (`groups/shuffle.rs`: the chunks keep equal counts).
    Slice,
    Pad,
    Resize,
    Flatten,
    /// Channel axis kept, merged into a flatten, or split into [g, C/g] by a channel shuffle
    /// (Reshape → Transpose swapping the two → Reshape back: `groups/shuffle.rs`).
    Reshape,
    Squeeze,
    Unsqueeze,
    Transpose,
    /// Expand of a tracked tensor: the other dims broadcast, the channel axis keeps its place
    /// (aligned on the last axis) when its shape entry is 1, the channel count (edited), or read
    /// off a tensor of the same width (`groups/array.rs`).
    Expand,
    Gather,
    /// Softmax-like op normalising along its `axis` attribute (barrier on the channel axis).
    AlongAxis,
    /// LayerNormalization, RMSNormalization (and onnxruntime's SimplifiedLayerNormalization):
    /// carries the channel axis when it normalises over exactly that (last) axis (scale and bias
    /// sliced; the pruned model normalises over the kept units, the masked model is given the same
    /// normalisation: `Edit::Norm`), or over later axes only; a barrier when it normalises over
    /// the channel axis and others.
    LayerNorm,
    /// onnxruntime's SkipLayerNormalization: `LayerNorm(input + skip + bias)` over the last axis;
    /// input and skip are joined as a residual Add is, gamma, beta and bias sliced, and the masked
    /// model is given the same normalisation over the kept units (`Edit::Norm`).
    /// SkipSimplifiedLayerNormalization (RMSNorm of `input + skip`) likewise, without its bias
    /// input (onnxruntime versions disagree on whether they add it: a barrier).
    SkipLayerNorm,
    /// onnxruntime's fused Attention: its input's last axis is contracted by the packed QKV weight
    /// [d, 3·hidden] (a consumer, the bias input 2 taking the folds); the heads are heads mode's.
    MsAttention,
    /// onnxruntime's EmbedLayerNormalization: the embedding tables' sum, normalised over its last
    /// axis: a source of the residual stream (tables' columns, gamma and beta sliced; the masked
    /// model normalises the op's embedding_sum over the kept units: `Edit::Norm`).
    EmbedLayerNorm,
    /// Shape: a barrier unless the channel axis is outside [start, end).
    Shape,
    /// y = act(x + bias) with an optional constant per-channel bias (input 1) on the last axis:
    /// onnxruntime's fused activations (com.microsoft BiasGelu, FastGelu, ...).
    BiasAct(BiasActFn),
    /// QuantizeLinear (false) / DequantizeLinear (true) of an activation with a per-tensor scale
    /// and zero point: an element-wise map (round half to even, saturate to the zero point's type).
    Quant(bool),
    /// LSTM / GRU / RNN with this many gates: hidden units are sources (see `groups/rnn.rs`).
    Recurrent(usize),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PoolKind {
    Max,
    Average,
    GlobalAverage,
    GlobalMax,
    Lp,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReduceKind {
    /// Mean / Max / Min of a constant is that constant.
    KeepsConstant,
    /// Sum-like: zero stays zero, other constants scale with the (unknown) count.
    ZeroOnly,
    /// Anything else (LogSumExp, Prod): the value is unknown.
    Unknown,
}

/// The table. Default ONNX domain only.
pub const TABLE: &[(&str, Kind)] = &[
    // unary element-wise
    ("Relu", Kind::Unary(|_, _, x| Some(x.max(0.0)))),
    ("Sigmoid", Kind::Unary(|_, _, x| Some(sigmoid(x)))),
    ("Tanh", Kind::Unary(|_, _, x| Some(x.tanh()))),
    ("Erf", Kind::Unary(|_, _, x| Some(erf(x)))),
    ("Exp", Kind::Unary(|_, _, x| Some(x.exp()))),
    ("Log", Kind::Unary(|_, _, x| if x > 0.0 { Some(x.ln()) } else { None })),
    ("Abs", Kind::Unary(|_, _, x| Some(x.abs()))),
    ("Neg", Kind::Unary(|_, _, x| Some(-x))),
    ("Sqrt", Kind::Unary(|_, _, x| if x >= 0.0 { Some(x.sqrt()) } else { None })),
    ("Reciprocal", Kind::Unary(|_, _, x| if x != 0.0 { Some(1.0 / x) } else { None })),
    ("Floor", Kind::Unary(|_, _, x| Some(x.floor()))),
    ("Ceil", Kind::Unary(|_, _, x| Some(x.ceil()))),
    (
        "Sign",
        Kind::Unary(|_, _, x| {
            Some(if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            })
        }),
    ),
    ("Sin", Kind::Unary(|_, _, x| Some(x.sin()))),
    ("Cos", Kind::Unary(|_, _, x| Some(x.cos()))),
    ("Softplus", Kind::Unary(|_, _, x| Some(softplus(x)))),
    ("Softsign", Kind::Unary(|_, _, x| Some(x / (1.0 + x.abs())))),
    ("Mish", Kind::Unary(|_, _, x| Some(x * softplus(x).tanh()))),
    ("HardSigmoid", Kind::Unary(|n, _, x| Some(hard_sigmoid(n, x)))),
    ("HardSwish", Kind::Unary(|_, _, x| Some(x * (x / 6.0 + 0.5).clamp(0.0, 1.0)))),
    ("LeakyRelu", Kind::Unary(|n, _, x| Some(if x >= 0.0 { x } else { f(n, "alpha", 0.01) * x }))),
    ("Elu", Kind::Unary(|n, _, x| Some(if x >= 0.0 { x } else { f(n, "alpha", 1.0) * (x.exp() - 1.0) }))),
    (
        "Celu",
        Kind::Unary(|n, _, x| {
            let a = f(n, "alpha", 1.0);
            Some(x.max(0.0) + (a * ((x / a).exp() - 1.0)).min(0.0))
        }),
    ),
    (
        "Selu",
        Kind::Unary(|n, _, x| {
            let (a, g) = (f(n, "alpha", 1.673_263_192_176_818_8), f(n, "gamma", 1.050_701_022_148_132_3));
            Some(g * if x > 0.0 { x } else { a * (x.exp() - 1.0) })
        }),
    ),
    ("ThresholdedRelu", Kind::Unary(|n, _, x| Some(if x > f(n, "alpha", 1.0) { x } else { 0.0 }))),
    ("Gelu", Kind::Unary(|n, _, x| Some(gelu(n, x)))),
    ("Clip", Kind::Unary(clip)),
    ("Identity", Kind::Unary(|_, _, x| Some(x))),
    ("Dropout", Kind::Unary(|_, _, x| Some(x))),
    ("Cast", Kind::Unary(cast)),
    // broadcasting element-wise
    ("Add", Kind::Broadcast(|a, b| Some(a + b))),
    ("Sub", Kind::Broadcast(|a, b| Some(a - b))),
    ("Mul", Kind::Broadcast(|a, b| Some(a * b))),
    ("Div", Kind::Broadcast(|a, b| if b != 0.0 { Some(a / b) } else { None })),
    ("Pow", Kind::Broadcast(|a, b| Some(a.powf(b)).filter(|v| v.is_finite()))),
    ("Max", Kind::Broadcast(|a, b| Some(a.max(b)))),
    ("Min", Kind::Broadcast(|a, b| Some(a.min(b)))),
    ("Sum", Kind::Broadcast(|a, b| Some(a + b))),
    ("PRelu", Kind::Broadcast(|x, s| Some(if x >= 0.0 { x } else { s * x }))),
    // structural
    ("Conv", Kind::Conv),
    ("ConvTranspose", Kind::ConvTranspose),
    ("Gemm", Kind::Gemm),
    ("MatMul", Kind::MatMul),
    ("BatchNormalization", Kind::BatchNorm),
    ("InstanceNormalization", Kind::InstanceNorm),
    ("GroupNormalization", Kind::GroupNorm),
    ("MaxPool", Kind::Pool(PoolKind::Max)),
    ("AveragePool", Kind::Pool(PoolKind::Average)),
    ("GlobalAveragePool", Kind::Pool(PoolKind::GlobalAverage)),
    ("GlobalMaxPool", Kind::Pool(PoolKind::GlobalMax)),
    ("LpPool", Kind::Pool(PoolKind::Lp)),
    ("GlobalLpPool", Kind::Pool(PoolKind::Lp)),
    ("ReduceMean", Kind::Reduce(ReduceKind::KeepsConstant)),
    ("ReduceMax", Kind::Reduce(ReduceKind::KeepsConstant)),
    ("ReduceMin", Kind::Reduce(ReduceKind::KeepsConstant)),
    ("ReduceSum", Kind::Reduce(ReduceKind::ZeroOnly)),
    ("ReduceL1", Kind::Reduce(ReduceKind::ZeroOnly)),
    ("ReduceL2", Kind::Reduce(ReduceKind::ZeroOnly)),
    ("ReduceSumSquare", Kind::Reduce(ReduceKind::ZeroOnly)),
    ("ReduceProd", Kind::Reduce(ReduceKind::Unknown)),
    ("ReduceLogSumExp", Kind::Reduce(ReduceKind::Unknown)),
    ("Concat", Kind::Concat),
    ("Split", Kind::Split),
    ("Slice", Kind::Slice),
    ("Pad", Kind::Pad),
    ("Resize", Kind::Resize),
    ("Upsample", Kind::Resize),
    ("Flatten", Kind::Flatten),
    ("Reshape", Kind::Reshape),
    ("Squeeze", Kind::Squeeze),
    ("Unsqueeze", Kind::Unsqueeze),
    ("Transpose", Kind::Transpose),
    ("Expand", Kind::Expand),
    ("Gather", Kind::Gather),
    ("Softmax", Kind::AlongAxis),
    ("LogSoftmax", Kind::AlongAxis),
    ("Hardmax", Kind::AlongAxis),
    ("LayerNormalization", Kind::LayerNorm),
    ("RMSNormalization", Kind::LayerNorm),
    // onnxruntime's RMSNorm, registered in the ONNX domain (its transformer optimizer writes it).
    ("SimplifiedLayerNormalization", Kind::LayerNorm),
    ("Shape", Kind::Shape),
    ("QuantizeLinear", Kind::Quant(false)),
    ("DequantizeLinear", Kind::Quant(true)),
    ("LSTM", Kind::Recurrent(4)),
    ("GRU", Kind::Recurrent(3)),
    ("RNN", Kind::Recurrent(1)),
];

/// onnxruntime's contrib ops (domain `com.microsoft`) as its transformer optimizer emits them.
pub const MS_TABLE: &[(&str, Kind)] = &[
    // BiasGelu(x, bias) = Gelu(x + bias), erf form.
    ("BiasGelu", Kind::BiasAct(|_, x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)))),
    // FastGelu(x[, bias]): the tanh approximation.
    ("FastGelu", Kind::BiasAct(|_, x| gelu_tanh(x))),
    ("Gelu", Kind::BiasAct(|_, x| 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)))),
    ("QuickGelu", Kind::BiasAct(|n, x| x * sigmoid(f(n, "alpha", 1.702) * x))),
    ("SkipLayerNormalization", Kind::SkipLayerNorm),
    ("SkipSimplifiedLayerNormalization", Kind::SkipLayerNorm),
    ("Attention", Kind::MsAttention),
    ("EmbedLayerNormalization", Kind::EmbedLayerNorm),
];

/// The rule for a node, `None` for a barrier (unknown op or unknown domain).
pub fn lookup(n: &NodeProto) -> Option<Kind> {
    let table = match n.domain.as_str() {
        "" | "ai.onnx" => TABLE,
        "com.microsoft" => MS_TABLE,
        _ => return None,
    };
    table.iter().find(|(op, _)| *op == n.op_type).map(|(_, k)| *k)
}

fn f(n: &NodeProto, name: &str, default: f64) -> f64 {
    attr_f(n, name).map(f64::from).unwrap_or(default)
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    if x > 30.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

fn hard_sigmoid(n: &NodeProto, x: f64) -> f64 {
    (f(n, "alpha", 0.2) * x + f(n, "beta", 0.5)).clamp(0.0, 1.0)
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn gelu(n: &NodeProto, x: f64) -> f64 {
    if attr_s(n, "approximate").as_deref() == Some("tanh") {
        gelu_tanh(x)
    } else {
        0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
    }
}

/// Clip: bounds from attributes (opset < 11) or scalar constant inputs 1 and 2.
fn clip(n: &NodeProto, scalars: &[Option<f64>], x: f64) -> Option<f64> {
    let lo = if n.input.len() > 1 && !n.input[1].is_empty() {
        scalars.get(1).copied().flatten()?
    } else {
        attr(n, "min").map(|a| a.f as f64).unwrap_or(f64::NEG_INFINITY)
    };
    let hi = if n.input.len() > 2 && !n.input[2].is_empty() {
        scalars.get(2).copied().flatten()?
    } else {
        attr(n, "max").map(|a| a.f as f64).unwrap_or(f64::INFINITY)
    };
    Some(x.max(lo).min(hi))
}

/// Cast to a float type keeps the value; to another type only zero is known to survive.
fn cast(n: &NodeProto, _: &[Option<f64>], x: f64) -> Option<f64> {
    let to = attr_i(n, "to").unwrap_or(0) as i32;
    if crate::model::tensor::is_float(to) || x == 0.0 {
        Some(x)
    } else {
        None
    }
}

/// erf in f64: Taylor series for |x| < 3, continued fraction for erfc beyond (error < 1e-13).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let v = if a < 3.0 {
        let mut term = a; // a^(2n+1)/n! with alternating sign
        let mut sum = a;
        let x2 = a * a;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let t = term / (2 * n + 1) as f64;
            sum += t;
            if t.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else if a > 27.0 {
        1.0
    } else {
        // erfc(a) = exp(-a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + ...))))
        let mut fr = a;
        for k in (1..=80).rev() {
            fr = a + (k as f64 / 2.0) / fr;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / fr
    };
    if x < 0.0 {
        -v
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_values() {
        // reference values from the standard tables
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.5, 0.999_999_256_901_627_7),
        ] {
            assert!((erf(x) - e).abs() < 1e-12, "erf({x}) = {} vs {e}", erf(x));
            assert!((erf(-x) + e).abs() < 1e-12);
        }
    }

    #[test]
    fn table_has_no_duplicates() {
        let mut ms: Vec<_> = MS_TABLE.iter().map(|(n, _)| *n).collect();
        ms.sort();
        let l = ms.len();
        ms.dedup();
        assert_eq!(l, ms.len());
        let mut names: Vec<_> = TABLE.iter().map(|(n, _)| *n).collect();
        names.sort();
        let len = names.len();
        names.dedup();
        assert_eq!(len, names.len());
    }
}
