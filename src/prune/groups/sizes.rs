//! Dependency analysis, symbolic sizes: each dim of a value as a literal or as a dim of a graph
//! input, carried forward through the ops that keep, permute or copy dims (element-wise ops,
//! normalisations, Transpose, Reshape targets read off `Shape`, Concat, Slice, ...).
//!
//! What it is for: a Reshape whose target reads its lead dims off *another* tensor (`b, c, h, w =
//! x.shape` … `y.reshape(b, c, h, w)`, as TorchScript writes attention inside a CNN) keeps the
//! channel axis in place when each of those dims has the size of the input's dim at that place.
//! Sizes are compared only off the tracked axes, which the cut does not change.
//!
//! Contract: a size is recorded only when it holds for every value the graph inputs' symbolic
//! dims can take; anything the rules below do not follow is unknown (None), never guessed.

use super::*;

/// One dim: a literal, or dim `axis` of graph input `name` (a symbolic dim, such as the batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Size {
    Lit(i64),
    Var(String, usize),
}

impl Analyzer<'_, '_> {
    /// Size of dim `axis` of value `name`: inferred, else a graph input's or a constant's
    /// declared dim, else a static dim of its value_info.
    pub(super) fn size(&self, name: &str, axis: usize) -> Option<Size> {
        if let Some(s) = self.sizes.get(name) {
            return s.get(axis).cloned().flatten();
        }
        if let Some(d) = self.ctx.dims(name) {
            return d.get(axis).map(|&v| Size::Lit(v as i64));
        }
        let declared = self.ctx.shapes.get(name).and_then(|d| d.get(axis).copied());
        if self.ctx.ix.inputs.contains(name) {
            return match declared {
                Some(Some(v)) => Some(Size::Lit(v as i64)),
                Some(None) => Some(Size::Var(name.to_string(), axis)),
                None => None,
            };
        }
        declared.flatten().map(|v| Size::Lit(v as i64))
    }

    /// The rank of a value: the context's, else the length of its inferred sizes (a Reshape or
    /// Expand whose shape is read off `Shape`, which the context's rank inference does not follow).
    pub(super) fn rank(&self, name: &str) -> Option<usize> {
        self.ctx.rank(name).or_else(|| self.sizes.get(name).map(|s| s.len()))
    }

    fn sizes_of(&self, name: &str) -> Option<Vec<Option<Size>>> {
        if let Some(s) = self.sizes.get(name) {
            return Some(s.clone());
        }
        let r = self.ctx.rank(name)?;
        Some((0..r).map(|a| self.size(name, a)).collect())
    }

    /// Record the sizes of node `n`'s outputs that follow from its inputs' (see the module doc).
    pub(super) fn infer_sizes(&mut self, n: &NodeProto) {
        let unique = |ax: &Vec<usize>| ax.iter().collect::<BTreeSet<_>>().len() == ax.len();
        let Some(out) = n.output.first().filter(|o| !o.is_empty()) else { return };
        let x = || inp(n, 0).and_then(|i| self.sizes_of(i));
        // The output's rank: inferred by the context, else the target's length for a Reshape,
        // else the data input's for the ops that keep it (a Reshape read off `Shape` has none
        // in the context).
        let rank = self.ctx.rank(out).or_else(|| match rules::lookup(n) {
            Some(Kind::Reshape) => inp(n, 1).and_then(|t| {
                self.ctx.const_ints(t).map(|v| v.len()).or_else(|| self.shape_vecs.get(t).map(|v| v.len()))
            }),
            Some(Kind::Broadcast(_)) => {
                n.input.iter().filter(|i| !i.is_empty()).map(|i| self.sizes_of(i).map(|v| v.len())).max().flatten()
            }
            Some(Kind::Gemm) => Some(2),
            Some(Kind::MatMul) if inp(n, 1).and_then(|b| self.ctx.rank(b)).is_some_and(|rb| rb <= 2) => {
                x().map(|v| v.len()).filter(|&r| r >= 2)
            }
            Some(Kind::Expand) => {
                let x = x().map(|v| v.len());
                x.zip(self.expand_shape(n).map(|v| v.len())).map(|(a, b)| a.max(b))
            }
            Some(k) if keeps_shape(k) => x().map(|v| v.len()),
            Some(
                Kind::Conv
                | Kind::ConvTranspose
                | Kind::Pool(_)
                | Kind::Transpose
                | Kind::Concat
                | Kind::Slice
                | Kind::Split,
            ) => x().map(|v| v.len()),
            _ => None,
        });
        let Some(r) = rank else { return };
        let same = |v: Option<Vec<Option<Size>>>| v.filter(|v| v.len() == r);
        let unknown = || vec![None; r];
        let v: Option<Vec<Option<Size>>> = match rules::lookup(n) {
            Some(k) if keeps_shape(k) => same(x()),
            // Batch only: the channels and the spatial dims change.
            Some(Kind::Conv | Kind::ConvTranspose | Kind::Pool(_)) => x().filter(|v| v.len() == r && r > 0).map(|v| {
                let mut o = unknown();
                o[0] = v[0].clone();
                o
            }),
            Some(Kind::Broadcast(_)) => Some(self.broadcast_sizes(n, r)),
            Some(Kind::Expand) => self.expand_sizes(n, r),
            Some(Kind::Transpose) => x().filter(|v| v.len() == r).and_then(|v| {
                let perm: Vec<i64> = match attr_ints(n, "perm") {
                    Some(p) => p.to_vec(),
                    None => (0..r as i64).rev().collect(),
                };
                (perm.len() == r)
                    .then(|| perm.iter().map(|&p| usize::try_from(p).ok().and_then(|p| v.get(p).cloned().flatten())))
                    .map(|it| it.collect())
            }),
            Some(Kind::Reshape) => self.reshape_sizes(n, r),
            Some(Kind::Gemm) => {
                let a = x().filter(|v| v.len() == 2);
                a.map(|a| vec![a[usize::from(attr_i(n, "transA").unwrap_or(0) != 0)].clone(), None]).filter(|_| r == 2)
            }
            // The lead (batch) dims are A's when B is a matrix (a higher-rank B broadcasts).
            Some(Kind::MatMul) if inp(n, 1).and_then(|b| self.ctx.rank(b)).is_some_and(|rb| rb <= 2) => {
                x().filter(|v| v.len() == r && r >= 2).map(|mut v| {
                    v[r - 1] = None;
                    v
                })
            }
            Some(Kind::Concat) => {
                let axis = attr_i(n, "axis").and_then(|a| norm_axis(a, r));
                x().filter(|v| v.len() == r).zip(axis).map(|(mut v, a)| {
                    v[a] = None;
                    v
                })
            }
            Some(Kind::Slice | Kind::Split) => {
                let axes: Option<Vec<usize>> = if n.op_type == "Split" {
                    Some(vec![attr_i(n, "axis").unwrap_or(0)])
                } else {
                    attr_ints(n, "axes").map(|a| a.to_vec()).or_else(|| inp(n, 3).and_then(|s| self.ctx.const_ints(s)))
                }
                .and_then(|ax| ax.iter().map(|&a| norm_axis(a, r)).collect());
                x().filter(|v| v.len() == r).zip(axes).map(|(mut v, ax)| {
                    for a in ax {
                        v[a] = None;
                    }
                    v
                })
            }
            Some(Kind::Unsqueeze) => {
                let axes: Option<Vec<usize>> =
                    self.ctx.axes_of(n).and_then(|ax| ax.iter().map(|&a| norm_axis(a, r)).collect());
                x().zip(axes).filter(|(v, ax)| v.len() + ax.len() == r && unique(ax)).map(|(v, ax)| {
                    let mut it = v.into_iter();
                    (0..r).map(|i| if ax.contains(&i) { Some(Size::Lit(1)) } else { it.next().flatten() }).collect()
                })
            }
            Some(Kind::Squeeze) => {
                let xr = inp(n, 0).and_then(|i| self.ctx.rank(i));
                let axes: Option<Vec<usize>> =
                    xr.and_then(|xr| self.ctx.axes_of(n).and_then(|ax| ax.iter().map(|&a| norm_axis(a, xr)).collect()));
                x().zip(axes)
                    .filter(|(v, ax)| v.len() == r + ax.len() && unique(ax))
                    .map(|(v, ax)| v.into_iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, s)| s).collect())
            }
            _ => None,
        };
        if let Some(v) = v.filter(|v| v.len() == r && v.iter().any(|s| s.is_some())) {
            let outs: Vec<String> = match rules::lookup(n) {
                Some(Kind::Split) => n.output.iter().filter(|o| !o.is_empty()).cloned().collect(),
                _ => vec![out.clone()],
            };
            for o in outs {
                self.sizes.insert(o, v.clone());
            }
        }
    }

    /// Numpy broadcasting, aligned on the last axis: a dim is the one size its inputs agree on,
    /// literal 1s aside; unknown when an input's dim there is unknown or two sizes differ.
    fn broadcast_sizes(&self, n: &NodeProto, r: usize) -> Vec<Option<Size>> {
        let ins: Option<Vec<Vec<Option<Size>>>> =
            n.input.iter().filter(|i| !i.is_empty()).map(|i| self.sizes_of(i)).collect();
        broadcast(ins, r)
    }

    /// An Expand's output dims: its input's broadcast with its shape's entries.
    fn expand_sizes(&self, n: &NodeProto, r: usize) -> Option<Vec<Option<Size>>> {
        let x = self.sizes_of(inp(n, 0)?)?;
        let shape = self.expand_shape(n)?;
        let shape: Vec<Option<Size>> = (shape.iter())
            .map(|e| match e {
                Sym::Lit(v, _) if *v >= 1 => Some(Size::Lit(*v)),
                Sym::Dim(name, j) => self.size(name, *j),
                _ => None,
            })
            .collect();
        Some(broadcast(Some(vec![x, shape]), r))
    }

    fn expand_shape(&self, n: &NodeProto) -> Option<Vec<Sym>> {
        let s = inp(n, 1)?;
        match self.ctx.const_ints(s) {
            Some(v) => Some(v.iter().map(|&v| Sym::Lit(v, None)).collect()),
            None => self.shape_vecs.get(s).cloned(),
        }
    }
}

/// Ops whose output has their data input's shape.
fn keeps_shape(k: Kind) -> bool {
    matches!(
        k,
        Kind::Unary(_)
            | Kind::BatchNorm
            | Kind::InstanceNorm
            | Kind::GroupNorm
            | Kind::LayerNorm
            | Kind::AlongAxis
            | Kind::Quant(_)
            | Kind::BiasAct(_)
    )
}

/// Numpy broadcasting of `ins` to rank `r` (see [`Analyzer::broadcast_sizes`]).
fn broadcast(ins: Option<Vec<Vec<Option<Size>>>>, r: usize) -> Vec<Option<Size>> {
    let Some(ins) = ins.filter(|v| v.iter().all(|s| s.len() <= r)) else { return vec![None; r] };
    (0..r)
        .map(|a| {
            let mut found: Option<Size> = None;
            for s in &ins {
                let Some(k) = (a + s.len()).checked_sub(r) else { continue };
                match &s[k] {
                    Some(Size::Lit(1)) => {}
                    Some(v) if found.as_ref().is_none_or(|f| f == v) => found = Some(v.clone()),
                    _ => return None,
                }
            }
            Some(found.unwrap_or(Size::Lit(1)))
        })
        .collect()
}

impl Analyzer<'_, '_> {
    /// A Reshape's output dims from its target: literals, a 0 copying the input's dim (without
    /// allowzero), and dims read off `Shape` of any value whose size is known.
    fn reshape_sizes(&self, n: &NodeProto, r: usize) -> Option<Vec<Option<Size>>> {
        let tname = inp(n, 1)?;
        let target: Vec<Sym> = match self.ctx.const_ints(tname) {
            Some(v) => v.iter().map(|&v| Sym::Lit(v, None)).collect(),
            None => self.shape_vecs.get(tname)?.clone(),
        };
        let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
        let me = inp(n, 0)?;
        (target.len() == r).then(|| {
            (target.iter().enumerate())
                .map(|(i, e)| match e {
                    Sym::Lit(0, _) if !allowzero => self.size(me, i),
                    Sym::Lit(v, _) if *v > 0 => Some(Size::Lit(*v)),
                    Sym::Dim(name, j) => self.size(name, *j),
                    _ => None,
                })
                .collect()
        })
    }

    /// Whether dim `i` of `a` and dim `j` of `b` are known to be of the same size.
    pub(super) fn same_size(&self, a: &str, i: usize, b: &str, j: usize) -> bool {
        matches!((self.size(a, i), self.size(b, j)), (Some(x), Some(y)) if x == y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::GraphIndex;

    fn node(op: &str, ins: &[&str], out: &str, attrs: Vec<onnx_protobuf::AttributeProto>) -> NodeProto {
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = out.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        n.attribute = attrs;
        n
    }

    fn ints(name: &str, v: &[i64]) -> onnx_protobuf::AttributeProto {
        let mut a = onnx_protobuf::AttributeProto::new();
        a.name = name.into();
        a.type_ = onnx_protobuf::attribute_proto::AttributeType::INTS.into();
        a.ints = v.to_vec();
        a
    }

    fn input(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
        use onnx_protobuf::tensor_shape_proto::{dimension::Value, Dimension};
        let mut v = ValueInfoProto::new();
        v.name = name.into();
        let t = v.type_.mut_or_insert_default().mut_tensor_type();
        t.elem_type = 1;
        for d in dims {
            let mut dim = Dimension::new();
            dim.value = Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("batch".into()),
            });
            t.shape.mut_or_insert_default().dim.push(dim);
        }
        v
    }

    /// `n, c, h, w = b.shape` … `y.transpose(1, 2).reshape(n, c, h, w)`: the batch of the value
    /// reshaped is found to be `b`'s (both dim 0 of input `x`), through a flatten to tokens, a
    /// Transpose to [L, N, E], its Reshape to [L·N, E] and back, and a Transpose to [N, E, L].
    #[test]
    fn the_batch_is_followed_through_transposes_and_reshapes_read_off_shape() {
        let mut g = GraphProto::new();
        g.input.push(input("x", &[None, Some(8), Some(4), Some(4)]));
        let shape = |of: &str, out: &str| node("Shape", &[of], out, vec![]);
        g.node = vec![
            node("Relu", &["x"], "b", vec![]),
            shape("b", "sb"),
            node("Reshape", &["b", "flat"], "t0", vec![]), // [N, C, H·W]: the literal [0, 8, 16]
            node("Transpose", &["t0"], "t", vec![ints("perm", &[2, 0, 1])]), // [L, N, E]
            shape("t", "st"),
            node("Reshape", &["t", "lne"], "rows", vec![]), // [L·N, E]: the literal [-1, 8]
            node("Reshape", &["rows", "st"], "back", vec![]), // [L, N, E] read off Shape(t)
            node("Transpose", &["back"], "y", vec![ints("perm", &[1, 2, 0])]), // [N, E, L]
        ];
        for (name, v) in [("flat", vec![0i64, 8, 16]), ("lne", vec![-1, 8])] {
            let mut t = TensorProto::new();
            t.name = name.into();
            t.data_type = 7;
            t.dims = vec![v.len() as i64];
            t.int64_data = v;
            g.initializer.push(t);
        }
        let ix = GraphIndex::build(&g).unwrap();
        let ctx = Ctx::new(&g, &ix, 17).unwrap();
        let dead = DeadRows::default();
        let mut a = Analyzer::new(&ctx, &dead);
        for &ni in &ctx.order {
            a.node(ni);
        }
        let batch = Some(Size::Var("x".into(), 0));
        assert_eq!(a.size("b", 0), batch);
        assert_eq!(a.size("t", 1), batch);
        assert_eq!(a.size("t", 0), Some(Size::Lit(16)));
        assert_eq!(a.size("rows", 0), None, "L·N is a product: not followed");
        assert_eq!(a.size("back", 1), batch);
        assert_eq!(a.size("y", 0), batch);
        assert!(a.same_size("y", 0, "b", 0));
        assert!(!a.same_size("y", 2, "b", 2), "16 against 4");
    }
}
