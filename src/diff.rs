//! `onnx-emp diff A.onnx B.onnx`: a readable, deterministic summary of what changed between two
//! models (shapes of weights, small integer constants, attributes, nodes, value_info, params).

use crate::model::graph::{is_const, node_label};
use crate::model::tensor;
use onnx_protobuf::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Integer constants up to this many elements are shown with their values.
const SHOW_INTS: usize = 16;

/// A human-readable diff of two models' top-level graphs. Same inputs → same text.
pub fn graph_diff(a: &ModelProto, b: &ModelProto) -> String {
    let empty = GraphProto::new();
    let ga = a.graph.as_ref().unwrap_or(&empty);
    let gb = b.graph.as_ref().unwrap_or(&empty);
    let mut out = String::new();
    let (pa, pb) = (float_params(ga), float_params(gb));
    let pct = if pa > 0 { 100.0 * (pb as f64 - pa as f64) / pa as f64 } else { 0.0 };
    let (za, zb) = (float_nonzeros(ga), float_nonzeros(gb));
    let _ = writeln!(out, "params: {pa} → {pb} ({pct:+.1}%), non-zero {za} → {zb}");
    let reshaped = weight_lines(ga, gb);
    let shapes_changed = !reshaped.is_empty();
    section(&mut out, "weights", reshaped);
    // Per-weight pruning changes no shape: its zeros are what differs.
    let zeroed = zero_lines(ga, gb);
    let only_zeros = !zeroed.is_empty();
    let refit = zeroed.iter().any(|l| l.contains("other values changed"));
    section(&mut out, "values (same shape, zeroed or changed)", zeroed);
    let before_structure = out.lines().count();
    let (added, removed, changed) = node_lines(ga, gb);
    section(&mut out, "nodes added", added);
    section(&mut out, "nodes removed", removed);
    section(&mut out, "nodes changed", changed);
    section(&mut out, "value_info", value_lines(&ga.value_info, &gb.value_info));
    section(&mut out, "graph inputs", value_lines(&ga.input, &gb.input));
    section(&mut out, "graph outputs", value_lines(&ga.output, &gb.output));
    if out.lines().count() == before_structure && !shapes_changed && (only_zeros || before_structure == 1) {
        out.push_str(if refit {
            "no structural differences (weights zeroed or changed in place)\n"
        } else if only_zeros {
            "no structural differences (weights zeroed in place)\n"
        } else {
            "no structural differences\n"
        });
    }
    out
}

/// Zero elements of a float tensor (None when it is not float or cannot be read).
fn zeros(t: &TensorProto) -> Option<u64> {
    if !tensor::is_float(t.data_type) {
        return None;
    }
    let mut n = 0u64;
    tensor::for_each_f64(t, |x| n += (x == 0.0) as u64).ok()?;
    Some(n)
}

fn float_nonzeros(g: &GraphProto) -> u64 {
    weights(g)
        .values()
        .filter_map(|t| zeros(t).map(|z| (t.dims.iter().product::<i64>().max(0) as u64).saturating_sub(z)))
        .sum()
}

/// Float weights of the same shape in both whose values changed: their zeros (per-weight
/// pruning), and how many other values changed and by how much (reconstruction's refit, a folded
/// compensation).
fn zero_lines(ga: &GraphProto, gb: &GraphProto) -> Vec<String> {
    let (wa, wb) = (weights(ga), weights(gb));
    let mut lines = vec![];
    for (n, x) in &wa {
        let Some(y) = wb.get(n).filter(|y| y.dims == x.dims && y.data_type == x.data_type) else { continue };
        if !tensor::is_float(x.data_type) {
            continue;
        }
        let (Ok(a), Ok(b)) = (tensor::read_f64(x), tensor::read_f64(y)) else { continue };
        if a.len() != b.len() {
            continue;
        }
        let (mut za, mut zb, mut moved, mut num, mut den) = (0u64, 0u64, 0u64, 0.0f64, 0.0f64);
        for (&p, &q) in a.iter().zip(&b) {
            za += (p == 0.0) as u64;
            zb += (q == 0.0) as u64;
            // Changed, other than zeroed: NaN == NaN here (a NaN left alone is not a change).
            if q != 0.0 && p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()) {
                moved += 1;
            }
            num += (p - q) * (p - q);
            den += p * p;
        }
        if za == zb && moved == 0 {
            continue;
        }
        let size = a.len().max(1) as f64;
        let mut line = format!("{n} {}:", dims_str(&x.dims));
        if za != zb {
            let _ = write!(
                line,
                " {za} → {zb} zeros ({:.1} % → {:.1} %)",
                100.0 * za as f64 / size,
                100.0 * zb as f64 / size
            );
        }
        if moved > 0 {
            let rel = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
            let _ = write!(
                line,
                "{} {moved} other values changed (relative L2 change of the tensor {rel:.3e})",
                if za != zb { ";" } else { "" }
            );
        }
        lines.push(line);
    }
    lines
}

fn section(out: &mut String, title: &str, lines: Vec<String>) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "{title}:");
    for l in lines {
        let _ = writeln!(out, "  {l}");
    }
}

/// Every constant tensor of the graph by name: initializers and Constant-node values.
fn weights(g: &GraphProto) -> BTreeMap<String, &TensorProto> {
    let mut m = BTreeMap::new();
    for t in &g.initializer {
        m.insert(t.name.clone(), t);
    }
    for n in g.node.iter().filter(|n| is_const(n)) {
        if let (Some(o), Some(t)) =
            (n.output.first(), n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()))
        {
            m.insert(o.clone(), t);
        }
    }
    m
}

fn float_params(g: &GraphProto) -> u64 {
    weights(g)
        .values()
        .filter(|t| tensor::is_float(t.data_type))
        .map(|t| t.dims.iter().product::<i64>().max(0) as u64)
        .sum()
}

fn dims_str(d: &[i64]) -> String {
    format!("[{}]", d.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(","))
}

/// Dims, plus the values for small integer tensors.
fn describe(t: &TensorProto) -> String {
    let mut s = dims_str(&t.dims);
    if !tensor::is_float(t.data_type) {
        if let Ok(v) = tensor::read_i64(t) {
            if v.len() <= SHOW_INTS {
                let _ = write!(s, " = {v:?}");
            }
        }
    }
    s
}

fn weight_lines(ga: &GraphProto, gb: &GraphProto) -> Vec<String> {
    let (wa, wb) = (weights(ga), weights(gb));
    let mut lines = vec![];
    let names: BTreeSet<&String> = wa.keys().chain(wb.keys()).collect();
    for n in names {
        match (wa.get(n), wb.get(n)) {
            (Some(x), Some(y)) => {
                let (dx, dy) = (describe(x), describe(y));
                if dx != dy || x.data_type != y.data_type {
                    lines.push(format!("{n}: {dx} → {dy}"));
                }
            }
            (Some(x), None) => lines.push(format!("{n}: {} removed", describe(x))),
            (None, Some(y)) => lines.push(format!("{n}: added {} {}", describe(y), tensor::dtype_name(y.data_type))),
            (None, None) => {}
        }
    }
    lines
}

fn attr_str(a: &AttributeProto) -> String {
    match a.type_.value() {
        1 => format!("{}", a.f),
        2 => format!("{}", a.i),
        3 => format!("{:?}", String::from_utf8_lossy(&a.s)),
        4 => format!("tensor {}", a.t.as_ref().map(|t| dims_str(&t.dims)).unwrap_or_default()),
        5 => "<graph>".into(),
        6 => format!("{:?}", a.floats),
        7 => format!("{:?}", a.ints),
        _ => format!("<type {}>", a.type_.value()),
    }
}

fn node_key(n: &NodeProto) -> String {
    format!("{} '{}'", n.op_type, node_label(n))
}

fn node_lines(ga: &GraphProto, gb: &GraphProto) -> (Vec<String>, Vec<String>, Vec<String>) {
    fn index(g: &GraphProto) -> BTreeMap<String, &NodeProto> {
        g.node.iter().map(|n| (node_key(n), n)).collect()
    }
    let (na, nb) = (index(ga), index(gb));
    let mut added = vec![];
    let mut removed = vec![];
    let mut changed = vec![];
    for (k, n) in &nb {
        if !na.contains_key(k) {
            added.push(format!("{k}: {:?} → {:?}", n.input, n.output));
        }
    }
    for (k, x) in &na {
        let Some(y) = nb.get(k) else {
            removed.push(k.clone());
            continue;
        };
        if x.input != y.input {
            changed.push(format!("{k}: inputs {:?} → {:?}", x.input, y.input));
        }
        if x.output != y.output {
            changed.push(format!("{k}: outputs {:?} → {:?}", x.output, y.output));
        }
        let names: BTreeSet<&String> = x.attribute.iter().chain(&y.attribute).map(|a| &a.name).collect();
        for an in names {
            if is_const(x) && an == "value" {
                continue; // shown under weights
            }
            let fa = x.attribute.iter().find(|a| &a.name == an).map(attr_str);
            let fb = y.attribute.iter().find(|a| &a.name == an).map(attr_str);
            if fa != fb {
                let s = |v: Option<String>| v.unwrap_or_else(|| "(none)".into());
                changed.push(format!("{k}: {an} {} → {}", s(fa), s(fb)));
            }
        }
    }
    (added, removed, changed)
}

fn vi_str(v: &onnx_protobuf::ValueInfoProto) -> String {
    use onnx_protobuf::tensor_shape_proto::dimension::Value as D;
    use onnx_protobuf::type_proto::Value as T;
    match v.type_.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(t)) => match t.shape.as_ref() {
            Some(s) => {
                let d: Vec<String> = s
                    .dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(D::DimValue(x)) => x.to_string(),
                        Some(D::DimParam(p)) => p.clone(),
                        _ => "?".into(),
                    })
                    .collect();
                format!("{} [{}]", tensor::dtype_name(t.elem_type), d.join(","))
            }
            None => format!("{} (no shape)", tensor::dtype_name(t.elem_type)),
        },
        _ => "(not a tensor)".into(),
    }
}

fn value_lines(a: &[onnx_protobuf::ValueInfoProto], b: &[onnx_protobuf::ValueInfoProto]) -> Vec<String> {
    let ma: BTreeMap<&String, String> = a.iter().map(|v| (&v.name, vi_str(v))).collect();
    let mb: BTreeMap<&String, String> = b.iter().map(|v| (&v.name, vi_str(v))).collect();
    let names: BTreeSet<&&String> = ma.keys().chain(mb.keys()).collect();
    let mut lines = vec![];
    for n in names {
        match (ma.get(*n), mb.get(*n)) {
            (Some(x), Some(y)) if x != y => lines.push(format!("{n}: {x} → {y}")),
            (Some(x), None) => lines.push(format!("{n}: {x} removed")),
            (None, Some(y)) => lines.push(format!("{n}: added {y}")),
            _ => {}
        }
    }
    lines
}

/// `onnx-emp diff A B`: load both models (external data included) and diff them.
pub fn diff_files(a: &std::path::Path, b: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let mut ma = crate::model::io::load(a)?;
    let mut mb = crate::model::io::load(b)?;
    // Weights stored as sparse initializers (`--sparse-initializers`) are compared dense: they
    // were "removed" before.
    let mut head = String::new();
    for (p, m) in [(a, &mut ma.proto), (b, &mut mb.proto)] {
        let n = crate::model::sparse::densify_initializers(m)
            .with_context(|| format!("{}: sparse initializers", p.display()))?;
        if n > 0 {
            head += &format!("({}: {n} weight(s) stored as sparse initializers, compared dense)\n", p.display());
        }
    }
    Ok(format!("--- {}\n+++ {}\n{head}{}", a.display(), b.display(), graph_diff(&ma.proto, &mb.proto)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_models_have_no_diff() {
        let mut m = ModelProto::new();
        let mut g = GraphProto::new();
        g.initializer.push(tensor::new_f32("w", &[2, 2], &[1., 2., 3., 4.]));
        m.graph = Some(g).into();
        let d = graph_diff(&m, &m);
        assert!(d.contains("params: 4 → 4 (+0.0%), non-zero 4 → 4"), "{d}");
        assert!(d.contains("no structural differences\n") && !d.contains("zeros"), "{d}");
        // Per-weight pruning: same shapes, zeros counted.
        let mut z = m.clone();
        z.graph.as_mut().unwrap().initializer[0] = tensor::new_f32("w", &[2, 2], &[1., 0., 0., 4.]);
        let d = graph_diff(&m, &z);
        assert!(d.contains("non-zero 4 → 2") && d.contains("w [2,2]: 0 → 2 zeros (0.0 % → 50.0 %)"), "{d}");
        assert!(d.contains("no structural differences (weights zeroed in place)"), "{d}");
        // Reconstruction: zeros and other values changed; a refit alone is a difference too.
        let mut r = m.clone();
        r.graph.as_mut().unwrap().initializer[0] = tensor::new_f32("w", &[2, 2], &[1., 0., 0., 4.5]);
        let d = graph_diff(&m, &r);
        assert!(d.contains("w [2,2]: 0 → 2 zeros (0.0 % → 50.0 %); 1 other values changed"), "{d}");
        assert!(d.contains("(weights zeroed or changed in place)"), "{d}");
        let mut v = m.clone();
        v.graph.as_mut().unwrap().initializer[0] = tensor::new_f32("w", &[2, 2], &[1., 2., 3., 5.]);
        let d = graph_diff(&m, &v);
        assert!(d.contains("w [2,2]: 1 other values changed (relative L2 change of the tensor 1.826e-1)"), "{d}");
        // A weight whose shape changed is a structural difference, whatever else changed in place.
        let mut c = v.clone();
        c.graph.as_mut().unwrap().initializer.push(tensor::new_f32("b", &[1], &[1.]));
        let mut cb = c.clone();
        cb.graph.as_mut().unwrap().initializer[1] = tensor::new_f32("b", &[2], &[1., 2.]);
        let d = graph_diff(&c, &cb);
        assert!(d.contains("b: [1] → [2]") && !d.contains("no structural differences"), "{d}");
    }
}
