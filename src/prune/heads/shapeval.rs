//! Evaluation of small shape computations (Shape → Gather/Slice → Concat → Reshape target,
//! sqrt(head_dim) scales, ...) in two "worlds": the original model, and the model after the
//! heads of one block are cut from H to H'. In the second world the only thing that changes is
//! the shape of the attention-path tensors (their head axis holds H' instead of H heads); every
//! constant and every other tensor's shape stays. Comparing a value across the two worlds tells
//! whether a reshape target follows the new head count by itself, must be rewritten, or (for a
//! scale) must not change at all.

use crate::model::graph::{attr, attr_i, attr_ints, GraphIndex};
use crate::model::tensor::{self, dt};
use anyhow::{bail, Context, Result};
use onnx_protobuf::{GraphProto, NodeProto};
use std::collections::HashMap;

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    I(Vec<i64>),
    F(Vec<f64>),
}

/// A small tensor value: its shape (rank 0 or 1 in practice) and elements.
#[derive(Clone, Debug, PartialEq)]
pub struct Val {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl Val {
    pub fn ints(&self) -> Result<&[i64]> {
        match &self.data {
            Data::I(v) => Ok(v),
            Data::F(_) => bail!("expected integers, found floats"),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            Data::I(v) => v.len(),
            Data::F(v) => v.len(),
        }
    }
    fn as_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::I(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F(v) => v.clone(),
        }
    }
}

/// Largest constant we read while evaluating shape arithmetic.
const MAX_CONST: usize = 4096;
/// Shape computations are short chains; deeper recursion means something unexpected.
const MAX_DEPTH: usize = 96;

/// Evaluator for one world and one probe.
pub struct Eval<'a> {
    g: &'a GraphProto,
    ix: &'a GraphIndex,
    shapes: &'a HashMap<String, Vec<usize>>,
    /// Attention-path tensors → axis holding the heads (their shape changes in world 1).
    tracked: &'a HashMap<String, usize>,
    h: usize,
    h_new: usize,
    opset: i64,
    memo: HashMap<String, Val>,
}

impl<'a> Eval<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        g: &'a GraphProto,
        ix: &'a GraphIndex,
        shapes: &'a HashMap<String, Vec<usize>>,
        tracked: &'a HashMap<String, usize>,
        h: usize,
        h_new: usize,
        opset: i64,
    ) -> Self {
        Eval { g, ix, shapes, tracked, h, h_new, opset, memo: HashMap::new() }
    }

    /// Shape of a tensor in this world.
    pub fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let mut s = self.shapes.get(name).cloned().with_context(|| format!("no shape known for '{name}'"))?;
        if let Some(&axis) = self.tracked.get(name) {
            let d = s.get_mut(axis).with_context(|| format!("'{name}': head axis {axis} out of range"))?;
            if self.h == 0 || *d % self.h != 0 {
                bail!("'{name}': dim {} on the head axis is not a multiple of {} heads", d, self.h);
            }
            *d = *d / self.h * self.h_new;
        }
        Ok(s)
    }

    pub fn eval(&mut self, name: &str) -> Result<Val> {
        self.eval_depth(name, 0)
    }

    fn eval_depth(&mut self, name: &str, depth: usize) -> Result<Val> {
        if let Some(v) = self.memo.get(name) {
            return Ok(v.clone());
        }
        if depth > MAX_DEPTH {
            bail!("shape computation of '{name}' is too deep");
        }
        let v = self.compute(name, depth).with_context(|| format!("evaluating '{name}'"))?;
        self.memo.insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn compute(&mut self, name: &str, depth: usize) -> Result<Val> {
        if self.ix.is_constant(name) {
            if let Some(t) = self.ix.weight(self.g, name) {
                return const_val(t);
            }
        }
        if self.ix.inputs.contains(name) {
            bail!("'{name}' is a graph input: its value is only known at run time");
        }
        let &ni = self.ix.producer.get(name).with_context(|| format!("'{name}' has no producer"))?;
        let n = &self.g.node[ni];
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            bail!("op {}:{} is not shape arithmetic", n.domain, n.op_type);
        }
        let out_shape = self.shapes.get(name).cloned();
        let arg = |this: &mut Self, i: usize| -> Result<Val> {
            let nm = n
                .input
                .get(i)
                .filter(|s| !s.is_empty())
                .with_context(|| format!("{}: missing input {i}", n.op_type))?;
            this.eval_depth(nm, depth + 1)
        };
        let v = match n.op_type.as_str() {
            "Constant" => constant_node(n)?,
            "Shape" => {
                let s = self.shape_of(&n.input[0])?;
                let r = s.len() as i64;
                let norm = |v: i64| if v < 0 { (v + r).clamp(0, r) } else { v.clamp(0, r) };
                let start = norm(attr_i(n, "start").unwrap_or(0)) as usize;
                let end = norm(attr_i(n, "end").unwrap_or(r)) as usize;
                let dims: Vec<i64> = s.get(start..end.max(start)).unwrap_or(&[]).iter().map(|&d| d as i64).collect();
                Val { shape: vec![dims.len()], data: Data::I(dims) }
            }
            "Identity" => arg(self, 0)?,
            "Unsqueeze" | "Squeeze" | "Reshape" | "Flatten" => {
                let x = arg(self, 0)?;
                let shape = out_shape.clone().context("output shape unknown")?;
                if shape.iter().product::<usize>() != x.len() {
                    bail!("{} changes the element count", n.op_type);
                }
                Val { shape, data: x.data }
            }
            "Cast" => {
                let x = arg(self, 0)?;
                let to = attr_i(n, "to").context("Cast without 'to'")? as i32;
                let data = if tensor::is_float(to) {
                    Data::F(x.as_f64())
                } else {
                    match x.data {
                        Data::I(v) => Data::I(v),
                        // Cast float → int truncates toward zero.
                        Data::F(v) => Data::I(v.iter().map(|&f| f.trunc() as i64).collect()),
                    }
                };
                Val { shape: x.shape, data }
            }
            "Gather" => {
                let x = arg(self, 0)?;
                let idx = arg(self, 1)?;
                if attr_i(n, "axis").unwrap_or(0) != 0 || x.shape.len() != 1 {
                    bail!("Gather on a non-vector");
                }
                let n_el = x.len() as i64;
                let mut pick = Vec::new();
                for &i in idx.ints()? {
                    let j = if i < 0 { i + n_el } else { i };
                    if j < 0 || j >= n_el {
                        bail!("Gather index {i} out of range");
                    }
                    pick.push(j as usize);
                }
                let data = match &x.data {
                    Data::I(v) => Data::I(pick.iter().map(|&j| v[j]).collect()),
                    Data::F(v) => Data::F(pick.iter().map(|&j| v[j]).collect()),
                };
                Val { shape: idx.shape.clone(), data }
            }
            "Slice" => {
                let x = arg(self, 0)?;
                if x.shape.len() != 1 {
                    bail!("Slice on a non-vector");
                }
                let (starts, ends, axes, steps) = if self.opset < 10 {
                    (
                        attr_ints(n, "starts").unwrap_or(&[]).to_vec(),
                        attr_ints(n, "ends").unwrap_or(&[]).to_vec(),
                        attr_ints(n, "axes").map(|a| a.to_vec()),
                        None,
                    )
                } else {
                    let s = arg(self, 1)?.ints()?.to_vec();
                    let e = arg(self, 2)?.ints()?.to_vec();
                    let a = if n.input.get(3).is_some_and(|s| !s.is_empty()) {
                        Some(arg(self, 3)?.ints()?.to_vec())
                    } else {
                        None
                    };
                    let st = if n.input.get(4).is_some_and(|s| !s.is_empty()) {
                        Some(arg(self, 4)?.ints()?.to_vec())
                    } else {
                        None
                    };
                    (s, e, a, st)
                };
                if starts.len() != 1
                    || ends.len() != 1
                    || axes.as_ref().is_some_and(|a| a.len() != 1 || (a[0] != 0 && a[0] != -1))
                {
                    bail!("Slice with several axes");
                }
                let step = steps.as_ref().map(|s| s[0]).unwrap_or(1);
                if step != 1 {
                    bail!("Slice with step {step}");
                }
                let (s, e) = clamp_range(starts[0], ends[0], x.len());
                let data = match &x.data {
                    Data::I(v) => Data::I(v[s..e].to_vec()),
                    Data::F(v) => Data::F(v[s..e].to_vec()),
                };
                Val { shape: vec![e - s], data }
            }
            "Concat" => {
                let mut ints = Vec::new();
                let mut floats = Vec::new();
                let mut any_f = false;
                for i in 0..n.input.len() {
                    let x = arg(self, i)?;
                    if x.shape.len() > 1 {
                        bail!("Concat of matrices");
                    }
                    match x.data {
                        Data::I(v) => ints.extend(v),
                        Data::F(v) => {
                            any_f = true;
                            floats.extend(v)
                        }
                    }
                }
                if any_f && !ints.is_empty() {
                    bail!("Concat of mixed types");
                }
                let data = if any_f { Data::F(floats) } else { Data::I(ints) };
                let len = match &data {
                    Data::I(v) => v.len(),
                    Data::F(v) => v.len(),
                };
                Val { shape: vec![len], data }
            }
            "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Max" | "Min" | "Pow" => {
                let a = arg(self, 0)?;
                let b = arg(self, 1)?;
                binary(&n.op_type, &a, &b, attr_i(n, "fmod").unwrap_or(0) != 0)?
            }
            "Sqrt" | "Neg" | "Floor" | "Ceil" | "Reciprocal" | "Abs" => {
                let x = arg(self, 0)?;
                unary(&n.op_type, x)?
            }
            op => bail!("op {op} is not shape arithmetic we evaluate"),
        };
        Ok(v)
    }
}

/// Clamp ONNX slice bounds (step 1) to [0, len].
pub fn clamp_range(start: i64, end: i64, len: usize) -> (usize, usize) {
    let l = len as i64;
    let norm = |v: i64| if v < 0 { (v + l).clamp(0, l) } else { v.clamp(0, l) };
    let s = norm(start) as usize;
    let e = norm(end) as usize;
    (s, e.max(s))
}

fn broadcast_len(a: &Val, b: &Val) -> Result<(usize, Vec<usize>)> {
    let (la, lb) = (a.len(), b.len());
    let n = if la == lb {
        la
    } else if la == 1 {
        lb
    } else if lb == 1 {
        la
    } else {
        bail!("cannot broadcast {la} and {lb} elements")
    };
    let shape = if a.shape.len() >= b.shape.len() { a.shape.clone() } else { b.shape.clone() };
    let shape = if shape.iter().product::<usize>() == n { shape } else { vec![n] };
    Ok((n, shape))
}

fn binary(op: &str, a: &Val, b: &Val, fmod: bool) -> Result<Val> {
    let (n, shape) = broadcast_len(a, b)?;
    let pick = |v: usize, i: usize| if v == 1 { 0 } else { i };
    let data = match (&a.data, &b.data) {
        (Data::I(x), Data::I(y)) if op != "Pow" => {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let (p, q) = (x[pick(x.len(), i)], y[pick(y.len(), i)]);
                out.push(
                    match op {
                        "Add" => p.checked_add(q),
                        "Sub" => p.checked_sub(q),
                        "Mul" => p.checked_mul(q),
                        // ONNX integer Div truncates like C.
                        "Div" => p.checked_div(q),
                        "Mod" if fmod => p.checked_rem(q),
                        "Mod" => p.checked_rem_euclid(q).map(|r| if q < 0 && r != 0 { r + q } else { r }),
                        "Max" => Some(p.max(q)),
                        _ => Some(p.min(q)),
                    }
                    .with_context(|| format!("{op} overflows or divides by zero"))?,
                );
            }
            Data::I(out)
        }
        (Data::F(_), Data::F(_)) | (Data::I(_), Data::I(_)) => {
            let (x, y) = (a.as_f64(), b.as_f64());
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                let (p, q) = (x[pick(x.len(), i)], y[pick(y.len(), i)]);
                out.push(match op {
                    "Add" => p + q,
                    "Sub" => p - q,
                    "Mul" => p * q,
                    "Div" => p / q,
                    "Mod" => p % q,
                    "Max" => p.max(q),
                    "Min" => p.min(q),
                    _ => p.powf(q),
                });
            }
            Data::F(out)
        }
        _ => bail!("{op} of mixed integer and float operands"),
    };
    Ok(Val { shape, data })
}

fn unary(op: &str, x: Val) -> Result<Val> {
    let data = match (op, x.data) {
        ("Neg", Data::I(v)) => Data::I(v.iter().map(|a| -a).collect()),
        ("Abs", Data::I(v)) => Data::I(v.iter().map(|a| a.abs()).collect()),
        (_, Data::I(_)) => bail!("{op} on integers"),
        (_, Data::F(v)) => Data::F(
            v.iter()
                .map(|&a| match op {
                    "Sqrt" => a.sqrt(),
                    "Neg" => -a,
                    "Floor" => a.floor(),
                    "Ceil" => a.ceil(),
                    "Abs" => a.abs(),
                    _ => 1.0 / a,
                })
                .collect(),
        ),
    };
    Ok(Val { shape: x.shape, data })
}

/// A constant tensor as a value (small integer or float tensors only).
pub fn const_val(t: &onnx_protobuf::TensorProto) -> Result<Val> {
    let shape = tensor::shape(t)?;
    if shape.iter().product::<usize>() > MAX_CONST {
        bail!("constant '{}' is too large for shape arithmetic", tensor::tname(t));
    }
    let data = if tensor::is_float(t.data_type) {
        Data::F(tensor::read_f64(t)?)
    } else if t.data_type == dt::STRING {
        bail!("string constant");
    } else {
        Data::I(tensor::read_i64(t)?)
    };
    Ok(Val { shape, data })
}

fn constant_node(n: &NodeProto) -> Result<Val> {
    if let Some(t) = attr(n, "value").and_then(|a| a.t.as_ref()) {
        return const_val(t);
    }
    if let Some(a) = attr(n, "value_int") {
        return Ok(Val { shape: vec![], data: Data::I(vec![a.i]) });
    }
    if let Some(a) = attr(n, "value_ints") {
        return Ok(Val { shape: vec![a.ints.len()], data: Data::I(a.ints.clone()) });
    }
    if let Some(a) = attr(n, "value_float") {
        return Ok(Val { shape: vec![], data: Data::F(vec![a.f as f64]) });
    }
    if let Some(a) = attr(n, "value_floats") {
        return Ok(Val { shape: vec![a.floats.len()], data: Data::F(a.floats.iter().map(|&f| f as f64).collect()) });
    }
    bail!("Constant node without a supported value attribute")
}
