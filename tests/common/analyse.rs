//! The in-process pipeline that the fuzz target (`fuzz/fuzz_targets/load_and_analyse.rs`), the
//! fuzz smoke test and the corpus test run on untrusted bytes, with the checks on its results.
//!
//! `load_and_analyse` panics only when the library misbehaves: a panic inside the library, an
//! error message that spans several lines, or a pruned model that is not a valid model with the
//! same structure as its input (a "bad file"). Errors from the library are a normal outcome.
#![allow(dead_code)]

use onnx_emp::model::graph::{self, GraphIndex};
use onnx_emp::model::{io, tensor};
use onnx_emp::prune::weights::{prune_weights, Include, Scope, WeightOptions, WeightsReport};
use onnx_protobuf::{GraphProto, Message, ModelProto};
use std::collections::BTreeSet;

/// What happened to one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Refused at parse/validation, with the message.
    ParseError(String),
    /// Parsed, but `GraphIndex::build` refused it.
    IndexError(String),
    /// Parsed and indexed; per prune run: `Ok(kept elements)` or the error message.
    Pruned(Vec<Result<usize, String>>),
}

impl Outcome {
    /// The first error message, if any stage failed.
    pub fn first_error(&self) -> Option<&str> {
        match self {
            Outcome::ParseError(e) | Outcome::IndexError(e) => Some(e),
            Outcome::Pruned(v) => v.iter().find_map(|r| r.as_ref().err().map(|s| s.as_str())),
        }
    }
}

/// The prune runs made on every model: each scope, plus `unit` with every optional role.
pub fn runs() -> Vec<WeightOptions> {
    let all = Include { bias: true, norm: true, embedding: true, small: true };
    let opt =
        |scope, include| WeightOptions { beta: 1.0, scope, include, scores: Default::default(), fixed_ratio: None };
    // Small Conv filters are included so the corpus' tiny convolutions reach the pruning code.
    let small = || Include { small: true, ..Include::default() };
    vec![opt(Scope::Unit, small()), opt(Scope::Layer, small()), opt(Scope::Normalized, small()), opt(Scope::Unit, all)]
}

/// An error as the CLI prints it: one line, context chain included.
pub fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    assert!(!s.contains('\n') && !s.is_empty(), "error message is not one line: {s:?}");
    s
}

/// bytes → `io::parse` → `GraphIndex::build` → `prune_weights` for each of `runs()`, then the
/// structural modes ([`structural`]).
pub fn load_and_analyse(bytes: &[u8]) -> Outcome {
    let model = match io::parse(bytes) {
        Ok(m) => m,
        Err(e) => return Outcome::ParseError(one_line(&e)),
    };
    analyse_model(&model)
}

/// The part after parsing (the corpus test loads from files with `io::load` first).
pub fn analyse_model(model: &ModelProto) -> Outcome {
    let g = model.graph.as_ref().expect("parse/load guarantee a graph");
    if let Err(e) = GraphIndex::build(g) {
        return Outcome::IndexError(one_line(&e));
    }
    let mut results = Vec::new();
    for opts in runs() {
        let mut m = model.clone();
        match prune_weights(&mut m, &opts) {
            Ok(report) => {
                check_pruned(model, &m, &report);
                results.push(Ok(report.kept_elems));
            }
            Err(e) => {
                results.push(Err(one_line(&e)));
            }
        }
    }
    structural(model);
    Outcome::Pruned(results)
}

/// The structural modes at a forced cut (β = 0.7, floors off, no rounding, so that units are
/// really removed): channels and heads; and channels at β = 1.3 rounded up to multiples of 4,
/// which keeps dead units (a mutation's zeroed rows) to align, so that they carry removed ones
/// into padded convolutions. Errors are a normal outcome (one line); a result must be a good
/// file: the pruned and the masked model encode, parse and validate again, the masked model
/// keeps the input's graph (its inputs, outputs and every value it produces), the pruned one
/// never has more parameters, and every group's kept count is within 1..=n.
pub fn structural(model: &ModelProto) {
    use onnx_emp::prune::{channels, heads, Floor, RoundTo, StructOptions};
    let opts = StructOptions { beta: 0.7, floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() };
    let aligned = StructOptions { beta: 1.3, round_to: RoundTo::Multiple(4), ..opts.clone() };
    for (mode, r) in [
        ("channels", channels::prune_channels(model, &opts)),
        ("heads", heads::prune_heads(model, &opts)),
        ("channels aligned", channels::prune_channels(model, &aligned)),
    ] {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                one_line(&e);
                continue;
            }
        };
        for (what, m) in [("pruned", &r.pruned), ("masked", r.masked())] {
            let bytes = m.write_to_bytes().unwrap_or_else(|e| panic!("{mode}: {what} model does not encode: {e}"));
            let again =
                io::parse(&bytes).unwrap_or_else(|e| panic!("{mode}: {what} model does not parse again: {e:#}"));
            assert!(same(&again, m), "{mode}: {what} model does not survive encode/decode");
            GraphIndex::build(again.graph.as_ref().unwrap())
                .unwrap_or_else(|e| panic!("{mode}: {what} model does not index: {e:#}"));
        }
        // The masked model keeps the input's graph: the same inputs and outputs, and every value
        // a node of the input produces is still produced (by a node, or as an initializer when a
        // constant's alias is given its own data), though by other nodes where the rewrite wrote
        // something out (a LayerNormalization over a pruned axis, a bias Add after a MatMul).
        let produced = |m: &ModelProto, inits: bool| -> BTreeSet<String> {
            let g = m.graph.as_ref();
            let nodes = g.map_or(&[][..], |g| &g.node[..]).iter().flat_map(|n| n.output.iter().cloned());
            let inits = g.map_or(&[][..], |g| &g.initializer[..]).iter().filter(|_| inits).map(|t| t.name.clone());
            nodes.chain(inits).filter(|s| !s.is_empty()).collect()
        };
        let io = |m: &ModelProto| {
            let g = m.graph.as_ref();
            let names = |v: &[onnx_protobuf::ValueInfoProto]| v.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
            (g.map(|g| names(&g.input)), g.map(|g| names(&g.output)))
        };
        assert_eq!(io(r.masked()), io(model), "{mode}: the masked model changed the graph's inputs or outputs");
        let (before, after) = (produced(model, false), produced(r.masked(), true));
        let lost: Vec<&String> = before.difference(&after).collect();
        assert!(lost.is_empty(), "{mode}: the masked model no longer produces {lost:?}");
        assert!(
            heads::param_count(&r.pruned) <= heads::param_count(model),
            "{mode}: params grew {} → {}",
            heads::param_count(model),
            heads::param_count(&r.pruned)
        );
        for g in &r.groups {
            assert!(g.kept <= g.n && (g.kept >= 1 || g.n == 0), "{mode}: group {} keeps {} of {}", g.id, g.kept, g.n);
        }
    }
}

/// A pruned model is a good file: it encodes, parses and validates again, has the same graph
/// structure, and every weight value is either unchanged or zero.
pub fn check_pruned(before: &ModelProto, after: &ModelProto, report: &WeightsReport) {
    let bytes = after.write_to_bytes().expect("a pruned model encodes");
    let again = io::parse(&bytes).unwrap_or_else(|e| panic!("pruned model does not parse again: {e:#}"));
    // Not bytes: protobuf writes unknown fields in hash-map order. Not plain `==` either: a NaN
    // is not equal to itself.
    assert!(same(&again, after), "pruned model does not survive encode/decode");
    let (gb, ga) = (before.graph.as_ref().unwrap(), after.graph.as_ref().unwrap());
    assert_eq!(gb.node.len(), ga.node.len(), "per-weight pruning changed the node count");
    assert_eq!(gb.initializer.len(), ga.initializer.len(), "per-weight pruning changed the initializers");
    for (tb, ta) in gb.initializer.iter().zip(&ga.initializer) {
        assert_eq!((&tb.name, &tb.dims, tb.data_type), (&ta.name, &ta.dims, ta.data_type), "tensor header changed");
    }
    let ix = GraphIndex::build(gb).unwrap();
    let mut total = 0usize;
    for r in &report.tensors {
        let wref = ix.weights[&r.name];
        let (tb, ta) = (graph::weight(gb, wref).unwrap(), graph::weight(ga, wref).unwrap());
        let (vb, va) = (tensor::read_f64(tb).unwrap(), tensor::read_f64(ta).unwrap());
        assert_eq!(vb.len(), va.len());
        assert_eq!(r.n, vb.len(), "report size of '{}'", r.name);
        for (x, y) in vb.iter().zip(&va) {
            // f16/bf16 round trips are exact for unchanged values; pruned ones are +0.
            assert!(x.to_bits() == y.to_bits() || *y == 0.0, "tensor '{}': {x} became {y}", r.name);
        }
        assert!(r.kept <= r.n, "tensor '{}': kept {} of {}", r.name, r.kept, r.n);
        total += r.n;
    }
    assert_eq!(total, report.candidates_elems);
}

/// Message equality with every NaN float field (typed tensor data, float attributes) made equal.
pub fn same(a: &ModelProto, b: &ModelProto) -> bool {
    if a == b {
        return true;
    }
    let (mut a, mut b) = (a.clone(), b.clone());
    denan(&mut a);
    denan(&mut b);
    a == b
}

fn denan(m: &mut ModelProto) {
    fn fix32(v: &mut f32) {
        if v.is_nan() {
            *v = 0.125;
        }
    }
    fn graph(g: &mut GraphProto) {
        for n in g.node.iter_mut() {
            for a in n.attribute.iter_mut() {
                fix32(&mut a.f);
                a.floats.iter_mut().for_each(fix32);
                for sg in a.g.as_mut().into_iter().chain(a.graphs.iter_mut()) {
                    graph(sg);
                }
            }
        }
    }
    io::for_each_tensor_mut(m, &mut |t| {
        t.float_data.iter_mut().for_each(fix32);
        t.double_data.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.125);
    });
    if let Some(g) = m.graph.as_mut() {
        graph(g);
    }
    for f in m.functions.iter_mut() {
        for n in f.node.iter_mut() {
            for a in n.attribute.iter_mut() {
                fix32(&mut a.f);
                a.floats.iter_mut().for_each(fix32);
            }
        }
    }
}
