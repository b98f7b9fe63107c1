//! Read-only facts about the graph that the rules need: default opset, topological order,
//! declared shapes, constants (through Identity/Reshape aliases), inferred ranks, and the
//! arithmetic of Reshape / Unsqueeze dims.

use super::*;

/// Opset of the default domain.
pub fn default_opset(opsets: &[onnx_protobuf::OperatorSetIdProto]) -> i64 {
    opsets.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version).unwrap_or(1)
}

/// Nodes in a topological order (stable: lowest index first among ready nodes).
pub fn topo_order(g: &GraphProto, ix: &GraphIndex) -> Result<Vec<usize>> {
    let n = g.node.len();
    let mut indeg = vec![0usize; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (ni, node) in g.node.iter().enumerate() {
        for i in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = ix.producer.get(i) {
                if p != ni {
                    indeg[ni] += 1;
                    succ[p].push(ni);
                }
            }
        }
    }
    let mut heap: BinaryHeap<Reverse<usize>> = (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(i)) = heap.pop() {
        out.push(i);
        for &s in &succ[i] {
            indeg[s] -= 1;
            if indeg[s] == 0 {
                heap.push(Reverse(s));
            }
        }
    }
    if out.len() != n {
        bail!("the graph has a cycle (or a node consumes its own output)");
    }
    Ok(out)
}

/// Static dims from graph inputs, outputs and value_info (None = dynamic or unknown).
pub fn declared_shapes(g: &GraphProto) -> HashMap<String, Vec<Option<usize>>> {
    let mut m = HashMap::new();
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(s) = value_dims(v) {
            m.insert(v.name.clone(), s);
        }
    }
    m
}

pub fn value_dims(v: &ValueInfoProto) -> Option<Vec<Option<usize>>> {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    let Some(T::TensorType(t)) = v.type_.as_ref().and_then(|t| t.value.as_ref()) else { return None };
    let s = t.shape.as_ref()?;
    Some(
        s.dim
            .iter()
            .map(|d| match &d.value {
                Some(D::DimValue(x)) if *x >= 0 => Some(*x as usize),
                _ => None,
            })
            .collect(),
    )
}

/// Read-only facts about the graph the rules need.
pub struct Ctx<'a> {
    pub g: &'a GraphProto,
    pub ix: &'a GraphIndex,
    pub opset: i64,
    pub order: Vec<usize>,
    pub consts: BTreeMap<String, ConstInfo>,
    pub ranks: HashMap<String, usize>,
    pub shapes: HashMap<String, Vec<Option<usize>>>,
    /// Static dim 0 (the batch) of values whose shape is not declared, carried from the graph
    /// inputs through ops that keep axis 0 ([`Ctx::infer_batch`]).
    pub batch: HashMap<String, usize>,
    /// Small integer values computed from constants only (torch's `Mod(2, 3)` Slice bounds), for
    /// reading shape arithmetic: read-only, they are not tensors a rewrite could edit.
    pub folded_ints: HashMap<String, Vec<i64>>,
}

impl<'a> Ctx<'a> {
    pub fn new(g: &'a GraphProto, ix: &'a GraphIndex, opset: i64) -> Result<Self> {
        let order = topo_order(g, ix)?;
        let shapes = declared_shapes(g);
        let mut ctx = Ctx {
            g,
            ix,
            opset,
            order,
            consts: BTreeMap::new(),
            ranks: HashMap::new(),
            shapes,
            batch: HashMap::new(),
            folded_ints: HashMap::new(),
        };
        ctx.find_consts();
        ctx.fold_ints();
        ctx.infer_ranks();
        ctx.infer_batch();
        Ok(ctx)
    }

    pub fn base_tensor(&self, name: &str) -> Option<&'a TensorProto> {
        let c = self.consts.get(name)?;
        self.ix.weight(self.g, &c.base)
    }

    /// Values of a constant as f64 (float or integer data; a quantized view dequantized).
    pub fn const_vals(&self, name: &str) -> Option<Vec<f64>> {
        let t = self.base_tensor(name)?;
        let raw = if tensor::is_float(t.data_type) {
            tensor::read_f64(t).ok()
        } else {
            tensor::read_i64(t).ok().map(|v| v.into_iter().map(|x| x as f64).collect())
        }?;
        match self.consts.get(name).and_then(|c| c.dq.as_ref()) {
            None => Some(raw),
            Some(dq) => {
                let scale = self.const_vals(&dq.scale)?;
                let dims = self.dims(name)?;
                Some(match dq.axis {
                    None => raw.iter().map(|q| q * scale[0]).collect(),
                    Some(a) => {
                        let inner: usize = dims[a + 1..].iter().product();
                        raw.iter().enumerate().map(|(i, q)| q * scale[(i / inner) % dims[a]]).collect()
                    }
                })
            }
        }
    }

    /// Values of a constant, or of a Concat (axis 0) of 1-D constants (exporters build Resize
    /// scales that way: Concat([1, 1], [2, 2])). Read-only: such a value cannot be edited.
    pub fn folded_vals(&self, name: &str) -> Option<Vec<f64>> {
        if let Some(v) = self.const_vals(name) {
            return Some(v);
        }
        let &p = self.ix.producer.get(name)?;
        let n = &self.g.node[p];
        if n.op_type != "Concat" || !n.domain.is_empty() || attr_i(n, "axis").is_some_and(|a| a != 0 && a != -1) {
            return None;
        }
        let mut out = vec![];
        for i in &n.input {
            if self.dims(i)?.len() != 1 {
                return None;
            }
            out.extend(self.const_vals(i)?);
        }
        Some(out)
    }

    /// Integer values of a constant or of a small computation on constants only
    /// ([`Ctx::folded_ints`]); read-only.
    pub fn int_vals(&self, name: &str) -> Option<Vec<i64>> {
        self.const_ints(name).or_else(|| self.folded_ints.get(name).cloned())
    }

    /// Fold element-wise integer arithmetic and reshapes of small integer constants (at most 64
    /// elements), in graph order.
    fn fold_ints(&mut self) {
        for &ni in &self.order {
            let n = &self.g.node[ni];
            let std = n.domain.is_empty() || n.domain == "ai.onnx";
            let Some(out) = n.output.first().filter(|o| !o.is_empty() && n.output.len() == 1) else { continue };
            if !std || self.consts.contains_key(out) {
                continue;
            }
            let arg = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).and_then(|s| self.int_vals(s));
            let v: Option<Vec<i64>> = match n.op_type.as_str() {
                "Add" | "Sub" | "Mul" | "Div" | "Mod" => (|| {
                    let (a, b) = (arg(0)?, arg(1)?);
                    if a.len() != b.len() && a.len() != 1 && b.len() != 1 {
                        return None;
                    }
                    let len = a.len().max(b.len());
                    (0..len)
                        .map(|i| {
                            let (x, y) = (a[i % a.len()], b[i % b.len()]);
                            match n.op_type.as_str() {
                                "Add" => x.checked_add(y),
                                "Sub" => x.checked_sub(y),
                                "Mul" => x.checked_mul(y),
                                // ONNX integer Div truncates; Mod (fmod = 0) takes the divisor's sign.
                                "Div" => x.checked_div(y),
                                _ if attr_i(n, "fmod").unwrap_or(0) != 0 => x.checked_rem(y),
                                _ => x.checked_rem(y).map(|r| if r != 0 && (r < 0) != (y < 0) { r + y } else { r }),
                            }
                        })
                        .collect()
                })(),
                "Reshape" | "Unsqueeze" | "Squeeze" | "Identity" => arg(0),
                _ => None,
            };
            if let Some(v) = v.filter(|v| v.len() <= 64) {
                self.folded_ints.insert(out.clone(), v);
            }
        }
    }

    pub fn const_ints(&self, name: &str) -> Option<Vec<i64>> {
        let Some(t) = self.base_tensor(name) else {
            // A Constant node with `value_ints` / `value_int` (dynamo's spelling of a shape or
            // axes vector; it holds no tensor).
            let n = self.ix.producer.get(name).map(|&ni| &self.g.node[ni]).filter(|n| is_const(n))?;
            return match n.attribute.first().filter(|_| n.attribute.len() == 1) {
                Some(a) if a.name == "value_ints" => Some(a.ints.clone()),
                Some(a) if a.name == "value_int" => Some(vec![a.i]),
                _ => None,
            };
        };
        if tensor::is_float(t.data_type) || self.consts.get(name).is_some_and(|c| c.dq.is_some()) {
            return None;
        }
        tensor::read_i64(t).ok()
    }

    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.consts.get(name).map(|c| c.dims.as_slice())
    }

    /// The weight `name` reads unchanged through `Identity` nodes only (torch.onnx's way of
    /// writing a parameter several modules share), or None (not an alias, or a Reshape,
    /// Unsqueeze or DequantizeLinear on the way).
    pub fn identity_base(&self, name: &str) -> Option<&str> {
        let c = self.consts.get(name)?;
        let identity = |ni: usize| {
            let n = &self.g.node[ni];
            n.op_type == "Identity" && n.domain.is_empty()
        };
        let through = c.chain.iter().all(|x| self.consts.get(x).and_then(|k| k.alias_node).is_some_and(identity));
        (c.dq.is_none() && c.alias_node.is_some_and(identity) && through).then_some(c.base.as_str())
    }

    pub fn scalar(&self, name: &str) -> Option<f64> {
        let d = self.dims(name)?;
        if d.iter().product::<usize>() != 1 {
            return None;
        }
        self.const_vals(name)?.first().copied()
    }

    pub(super) fn is_output(&self, name: &str) -> bool {
        self.ix.outputs.contains(name)
    }

    /// Constants: initializers and Constant nodes (not graph inputs), plus names computed from
    /// them by shape-only nodes, resolved to the tensor that holds the data.
    pub(super) fn find_consts(&mut self) {
        for (name, r) in &self.ix.weights {
            if self.ix.inputs.contains(name) {
                continue;
            }
            if let Some(t) = crate::model::graph::weight(self.g, *r) {
                if let Ok(d) = tensor::shape(t) {
                    self.consts.insert(
                        name.clone(),
                        ConstInfo { base: name.clone(), dims: d, alias_node: None, chain: vec![], dq: None },
                    );
                }
            }
        }
        for &ni in &self.order.clone() {
            let n = &self.g.node[ni];
            if n.output.len() != 1
                || n.output[0].is_empty()
                || self.is_output(&n.output[0])
                || self.consts.contains_key(&n.output[0])
            {
                continue;
            }
            let Some(src) = inp(n, 0).and_then(|s| self.consts.get(s)).cloned() else { continue };
            if n.op_type == "DequantizeLinear" && n.domain.is_empty() {
                if let Some(dq) = self.dq_view(ni, &src) {
                    let info = ConstInfo {
                        base: src.base.clone(),
                        dims: src.dims.clone(),
                        alias_node: None,
                        chain: vec![],
                        dq: Some(dq),
                    };
                    self.consts.insert(n.output[0].clone(), info);
                }
                continue;
            }
            if src.dq.is_some() {
                continue; // no aliases of quantized views
            }
            let dims = match n.op_type.as_str() {
                "Identity" if n.domain.is_empty() => Some(src.dims.clone()),
                "Reshape" if n.domain.is_empty() => inp(n, 1).and_then(|s| self.const_ints(s)).and_then(|t| {
                    let allowzero = attr_i(n, "allowzero").unwrap_or(0) != 0;
                    reshape_dims(&src.dims, &t, allowzero)
                }),
                "Unsqueeze" if n.domain.is_empty() => self.axes_of(n).and_then(|ax| unsqueeze_dims(&src.dims, &ax)),
                _ => None,
            };
            if let Some(dims) = dims {
                let mut chain = src.chain.clone();
                if src.alias_node.is_some() {
                    chain.push(inp(n, 0).unwrap_or_default().to_string());
                }
                self.consts.insert(
                    n.output[0].clone(),
                    ConstInfo { base: src.base.clone(), dims, alias_node: Some(ni), chain, dq: None },
                );
            }
        }
    }

    /// A DequantizeLinear of an integer initializer that the rewrite can slice (the shared
    /// predicate [`crate::model::qdq::symmetric_dq`]), straight from the initializer.
    fn dq_view(&self, ni: usize, src: &ConstInfo) -> Option<Dq> {
        let n = &self.g.node[ni];
        if src.alias_node.is_some() || src.dq.is_some() {
            return None;
        }
        let p = crate::model::qdq::symmetric_dq(self.g, self.ix, n).ok()?;
        Some(Dq { node: ni, scale: p.scale.to_string(), zp: p.zero_point.map(|s| s.to_string()), axis: p.axis })
    }

    /// `axes` of Squeeze/Unsqueeze/Reduce: attribute (older opsets) or constant input 1.
    pub fn axes_of(&self, n: &NodeProto) -> Option<Vec<i64>> {
        if let Some(a) = attr_ints(n, "axes") {
            return Some(a.to_vec());
        }
        inp(n, 1).and_then(|s| self.const_ints(s))
    }

    pub fn rank(&self, name: &str) -> Option<usize> {
        if let Some(c) = self.consts.get(name) {
            return Some(c.dims.len());
        }
        self.ranks.get(name).copied()
    }

    /// Dim 0 of a value: declared, or carried by [`Ctx::infer_batch`].
    pub fn dim0(&self, name: &str) -> Option<usize> {
        self.shapes.get(name).and_then(|d| d.first().copied().flatten()).or_else(|| self.batch.get(name).copied())
    }

    /// Carry a static dim 0 from the graph inputs through the ops that keep axis 0 (convolutions,
    /// normalisations, pooling, element-wise ops, Concat / Transpose / Reshape that leave it in
    /// place), so that a literal batch in a Reshape target can be checked on an export without
    /// value_info. Anything else stops it: no entry means unknown.
    pub(super) fn infer_batch(&mut self) {
        for &ni in &self.order.clone() {
            let n = &self.g.node[ni];
            let Some(out) = n.output.first().filter(|o| !o.is_empty() && !self.shapes.contains_key(*o)) else {
                continue;
            };
            let d0 = |s: Option<&str>| s.and_then(|s| self.dim0(s));
            let rank = |s: &str| self.rank(s);
            let b = match rules::lookup(n) {
                _ if keeps_batch_of_input(n) => d0(inp(n, 0)),
                Some(Kind::Broadcast(_)) => {
                    // Inputs of the output's rank must agree; constants of lower rank or with
                    // dim 0 = 1 broadcast.
                    let r = n.input.iter().filter_map(|i| rank(i)).max();
                    let mut found = None;
                    let mut ok = r.is_some();
                    for i in n.input.iter().filter(|i| !i.is_empty()) {
                        let full = rank(i) == r;
                        match (full, self.consts.get(i.as_str())) {
                            (false, Some(_)) => {}
                            (true, Some(c)) if c.dims.first() == Some(&1) => {}
                            (true, None) => match self.dim0(i) {
                                Some(v) if found.is_none_or(|f| f == v) => found = Some(v),
                                _ => ok = false,
                            },
                            _ => ok = false,
                        }
                    }
                    found.filter(|_| ok)
                }
                Some(Kind::Concat)
                    if attr_i(n, "axis").is_some_and(|a| a != 0 && rank(out).is_none_or(|r| a != -(r as i64))) =>
                {
                    let v: Option<Vec<usize>> = n.input.iter().map(|i| self.dim0(i)).collect();
                    v.filter(|v| v.windows(2).all(|w| w[0] == w[1])).and_then(|v| v.first().copied())
                }
                Some(Kind::Slice) => {
                    let axes =
                        attr_ints(n, "axes").map(|a| a.to_vec()).or_else(|| inp(n, 3).and_then(|s| self.const_ints(s)));
                    let r = inp(n, 0).and_then(rank);
                    let keeps0 = axes.zip(r).is_some_and(|(ax, r)| ax.iter().all(|&x| x != 0 && x != -(r as i64)));
                    d0(inp(n, 0)).filter(|_| keeps0)
                }
                Some(Kind::Split) => {
                    let r = inp(n, 0).and_then(rank);
                    let axis = attr_i(n, "axis").unwrap_or(0);
                    let b = d0(inp(n, 0)).filter(|_| r.is_some_and(|r| axis != 0 && axis != -(r as i64)));
                    if let Some(b) = b {
                        for o in n.output.iter().skip(1).filter(|o| !o.is_empty()) {
                            self.batch.insert(o.clone(), b);
                        }
                    }
                    b
                }
                Some(Kind::Reshape) => {
                    let t = inp(n, 1).and_then(|s| self.const_ints(s));
                    let zero_copies = attr_i(n, "allowzero").unwrap_or(0) == 0;
                    match t.as_deref().and_then(|t| t.first()) {
                        Some(0) if zero_copies => d0(inp(n, 0)),
                        Some(&v) if v > 0 => Some(v as usize),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(b) = b {
                self.batch.insert(out.clone(), b);
            }
        }
    }

    /// Light rank inference: enough to place a channel axis under broadcasting and
    /// negative axes. Unknown stays unknown (then the rules block).
    pub(super) fn infer_ranks(&mut self) {
        for (k, v) in &self.shapes {
            self.ranks.insert(k.clone(), v.len());
        }
        let mut lens: HashMap<String, usize> = HashMap::new(); // lengths of 1-D int vectors
        for &ni in &self.order.clone() {
            let n = &self.g.node[ni];
            let r0 = inp(n, 0).and_then(|s| self.rank(s));
            let ms = n.domain == "com.microsoft";
            let out: Option<usize> = match n.op_type.as_str() {
                // onnxruntime's transformer-optimizer ops: output 0 has the rank of input 0.
                "SkipLayerNormalization"
                | "SkipSimplifiedLayerNormalization"
                | "SimplifiedLayerNormalization"
                | "BiasGelu"
                | "FastGelu"
                | "Gelu"
                | "QuickGelu"
                | "BiasAdd"
                | "Attention"
                | "MultiHeadAttention"
                    if ms =>
                {
                    r0
                }
                "EmbedLayerNormalization" if ms => Some(3),
                _ if ms => None,
                // scikit-learn's preprocessing (skl2onnx): element-wise, output 0 as input 0.
                "Scaler" | "Normalizer" | "Binarizer" | "Imputer" if n.domain == "ai.onnx.ml" => r0,
                _ if !n.domain.is_empty() && n.domain != "ai.onnx" => None,
                "Constant" => n.output.first().and_then(|o| self.consts.get(o)).map(|c| c.dims.len()),
                "Gemm" | "Flatten" => Some(2),
                "Shape" => {
                    if let (Some(r), Some(o)) = (r0, n.output.first()) {
                        let s = norm_bound(attr_i(n, "start").unwrap_or(0), r);
                        let e = norm_bound(attr_i(n, "end").unwrap_or(r as i64), r);
                        lens.insert(o.clone(), e.saturating_sub(s));
                    }
                    Some(1)
                }
                "Size" => Some(0),
                "Range" | "NonZero" => Some(if n.op_type == "Range" { 1 } else { 2 }),
                "MatMul" => {
                    let r1 = inp(n, 1).and_then(|s| self.rank(s));
                    match (r0, r1) {
                        (Some(1), Some(b)) => Some(b.saturating_sub(1)),
                        (Some(a), Some(1)) => Some(a.saturating_sub(1)),
                        (Some(a), Some(b)) => Some(a.max(b)),
                        _ => None,
                    }
                }
                "Reshape" => {
                    inp(n, 1).and_then(|s| self.dims(s).map(|d| d.iter().product()).or_else(|| lens.get(s).copied()))
                }
                "ConstantOfShape" | "Expand" => {
                    let s = inp(n, if n.op_type == "Expand" { 1 } else { 0 });
                    let l = s.and_then(|s| self.dims(s).map(|d| d.iter().product()).or_else(|| lens.get(s).copied()));
                    if n.op_type == "Expand" {
                        l.zip(r0).map(|(a, b)| a.max(b))
                    } else {
                        l
                    }
                }
                "Squeeze" => self.axes_of(n).zip(r0).map(|(a, r)| r.saturating_sub(a.len())),
                "Unsqueeze" => {
                    let a = self.axes_of(n);
                    if let (Some(a), Some(o)) = (&a, n.output.first()) {
                        if r0 == Some(0) && a.len() == 1 {
                            lens.insert(o.clone(), 1);
                        }
                    }
                    a.zip(r0).map(|(a, r)| r + a.len())
                }
                "Gather" => inp(n, 1).and_then(|s| self.rank(s)).zip(r0).map(|(q, r)| (r + q).saturating_sub(1)),
                "Concat" => {
                    if let Some(o) = n.output.first() {
                        let parts: Option<Vec<usize>> = n
                            .input
                            .iter()
                            .map(|s| {
                                self.dims(s).filter(|d| d.len() == 1).map(|d| d[0]).or_else(|| lens.get(s).copied())
                            })
                            .collect();
                        if let Some(p) = parts {
                            lens.insert(o.clone(), p.iter().sum());
                        }
                    }
                    n.input.iter().find_map(|s| self.rank(s))
                }
                op if op.starts_with("Reduce") || op == "ArgMax" || op == "ArgMin" => {
                    let keep = attr_i(n, "keepdims").unwrap_or(1) != 0;
                    if keep {
                        r0
                    } else if op.starts_with("Arg") {
                        r0.map(|r| r.saturating_sub(1))
                    } else {
                        match self.axes_of(n) {
                            Some(a) if !a.is_empty() => r0.map(|r| r.saturating_sub(a.len())),
                            _ => Some(0),
                        }
                    }
                }
                "Cast" => {
                    if let (Some(i), Some(o)) = (inp(n, 0), n.output.first()) {
                        if let Some(&l) = lens.get(i) {
                            lens.insert(o.clone(), l);
                        }
                    }
                    r0
                }
                op if is_elementwise_op(op) => {
                    let rs: Option<Vec<usize>> =
                        n.input.iter().filter(|s| !s.is_empty()).map(|s| self.rank(s)).collect();
                    rs.and_then(|v| v.into_iter().max())
                }
                "Split"
                | "Slice"
                | "Transpose"
                | "Softmax"
                | "LogSoftmax"
                | "LayerNormalization"
                | "RMSNormalization"
                | "SimplifiedLayerNormalization"
                | "Conv"
                | "ConvTranspose"
                | "BatchNormalization"
                | "InstanceNormalization"
                | "MaxPool"
                | "AveragePool"
                | "GlobalAveragePool"
                | "GlobalMaxPool"
                | "LpPool"
                | "GlobalLpPool"
                | "Pad"
                | "Resize"
                | "Upsample"
                | "Tile"
                | "Dropout"
                | "GatherElements"
                | "CumSum"
                | "LRN"
                | "Einsum"
                | "Trilu"
                | "IsNaN"
                | "IsInf"
                | "Not"
                | "QuantizeLinear"
                | "DequantizeLinear" => r0,
                _ => {
                    if rules::lookup(n).is_some_and(|k| matches!(k, Kind::Unary(_))) {
                        r0
                    } else {
                        None
                    }
                }
            };
            // Element-wise ops on shape vectors keep their length (Where/Equal/Mul on [k] vectors).
            if out == Some(1) && n.output.len() == 1 && is_elementwise_op(&n.op_type) {
                let len_of =
                    |s: &str| self.dims(s).map(|d| d.iter().product::<usize>()).or_else(|| lens.get(s).copied());
                if let Some(l) = n.input.iter().filter(|s| !s.is_empty()).filter_map(|s| len_of(s)).max() {
                    lens.insert(n.output[0].clone(), l);
                }
            }
            if let Some(r) = out {
                for (k, o) in n.output.iter().enumerate() {
                    if o.is_empty() || self.ranks.contains_key(o) {
                        continue;
                    }
                    // Secondary outputs of these ops have other ranks; only output 0 is known
                    // (and EmbedLayerNormalization's embedding_sum, output 2, like output 0).
                    if k > 0 && !(n.op_type == "Split" || (n.op_type == "EmbedLayerNormalization" && k == 2)) {
                        continue;
                    }
                    self.ranks.insert(o.clone(), r);
                }
            }
        }
    }
}

/// Ops whose output keeps its first input's dim 0 (the batch) in place: activations,
/// convolutions, normalisations, pooling, activation quantization, a Transpose that leaves axis 0.
pub(super) fn keeps_batch_of_input(n: &NodeProto) -> bool {
    match rules::lookup(n) {
        Some(
            Kind::Unary(_)
            | Kind::Conv
            | Kind::ConvTranspose
            | Kind::BatchNorm
            | Kind::InstanceNorm
            | Kind::LayerNorm
            | Kind::Pool(_)
            | Kind::Quant(_),
        ) => true,
        Some(Kind::Transpose) => attr_ints(n, "perm").is_some_and(|p| p.first() == Some(&0)),
        _ => false,
    }
}

/// Broadcasting element-wise ops (for rank inference only).
pub(super) fn is_elementwise_op(op: &str) -> bool {
    matches!(
        op,
        "Where"
            | "Add"
            | "Sub"
            | "Mul"
            | "Div"
            | "Pow"
            | "Max"
            | "Min"
            | "Sum"
            | "Mean"
            | "Equal"
            | "Less"
            | "Greater"
            | "LessOrEqual"
            | "GreaterOrEqual"
            | "And"
            | "Or"
            | "Xor"
            | "Mod"
            | "PRelu"
            | "BitShift"
    )
}

pub(super) fn norm_bound(v: i64, r: usize) -> usize {
    let r = r as i64;
    (if v < 0 { v + r } else { v }).clamp(0, r) as usize
}

/// Output dims of a Reshape of known input dims (None when ill-formed).
pub fn reshape_dims(input: &[usize], target: &[i64], allowzero: bool) -> Option<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(target.len());
    let mut infer = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 if !allowzero => out.push(*input.get(i)?),
            -1 if infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t >= 0 => out.push(t as usize),
            _ => return None,
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return None;
        }
        out[i] = total / known;
    }
    (out.iter().product::<usize>() == total).then_some(out)
}

pub(super) fn unsqueeze_dims(input: &[usize], axes: &[i64]) -> Option<Vec<usize>> {
    let r = input.len() + axes.len();
    let mut ax: Vec<usize> = axes.iter().map(|&a| norm_axis(a, r)).collect::<Option<_>>()?;
    ax.sort_unstable();
    ax.dedup();
    if ax.len() != axes.len() {
        return None;
    }
    let mut it = input.iter();
    (0..r).map(|i| if ax.contains(&i) { Some(1) } else { it.next().copied() }).collect::<Option<Vec<_>>>()
}
