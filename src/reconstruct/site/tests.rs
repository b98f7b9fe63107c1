//! Tests of [`super`]: sites found, shared and refused; layouts; sampling.
use super::sample;

/// Two layers reading one bias tensor, one directly and one through an `Identity` (an export
/// that stored equal biases once): per weight,
/// both are still reconstructed, their weights updated and the shared bias left as it is;
/// the channels refit, whose targets include the bias, is refused them.
#[test]
fn a_bias_other_layers_share_is_left_alone_and_the_weights_still_updated() {
    use crate::check::inputs::InputSpec;
    use crate::prune::weights::{prune_weights, WeightOptions};
    use std::path::Path;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mp = root.join("models/fmnist_mobilenet.onnx");
    let mut dense = crate::model::io::load(&mp).unwrap().proto;
    // The first two 1 × 1 convolutions of one width: the second reads the first's bias.
    let g = dense.graph.as_mut().unwrap();
    let dims = |g: &onnx_protobuf::GraphProto, n: &str| {
        g.initializer.iter().find(|t| t.name == n).map(|t| t.dims.clone()).unwrap_or_default()
    };
    let convs: Vec<usize> = (0..g.node.len())
        .filter(|&i| {
            let n = &g.node[i];
            let d = if n.op_type == "Conv" && n.input.len() == 3 { dims(g, &n.input[1]) } else { vec![] };
            d.len() == 4 && d[2..] == [1, 1] && d[1] >= 32
        })
        .collect();
    let (a, b) = convs
        .iter()
        .enumerate()
        .find_map(|(k, &a)| {
            let out = dims(g, &g.node[a].input[1])[0];
            convs[k + 1..].iter().find(|&&b| dims(g, &g.node[b].input[1])[0] == out).map(|&b| (a, b))
        })
        .unwrap();
    // The second reads it through an Identity, as torch.onnx writes shared constants.
    let shared = g.node[a].input[2].clone();
    g.node[b].input[2] = "shared_bias_copy".into();
    let mut id = onnx_protobuf::NodeProto::new();
    id.op_type = "Identity".into();
    id.input.push(shared.clone());
    id.output.push("shared_bias_copy".into());
    g.node.insert(b, id);
    let (wa, wb) = (g.node[a].input[1].clone(), g.node[b + 1].input[1].clone());
    for w in [&wa, &wb] {
        let s = super::find(&dense, w).unwrap();
        assert!(s.shared_bias && s.bias.is_none(), "{w}");
    }
    let mut pruned = dense.clone();
    let opts = WeightOptions::default();
    let rep = prune_weights(&mut pruned, &opts).unwrap();
    let names: Vec<String> = rep.tensors.iter().filter(|t| t.kept < t.n).map(|t| t.name.clone()).collect();
    assert!(names.contains(&wa) && names.contains(&wb), "{names:?}");
    let before = pruned.clone();
    let mut spec = InputSpec::default();
    spec.files.insert(String::new(), root.join("models/fmnist_calib_x.npy"));
    let calib = crate::calib::load_inputs(&mp, &spec).unwrap().sample_range(0, 64);
    let (reps, _) = super::super::obs::obs_all_with(&dense, &mut pruned, &names, &calib, false, true).unwrap();
    let tensor = |m: &onnx_protobuf::ModelProto, n: &str| {
        let t = m.graph.as_ref().unwrap().initializer.iter().find(|t| t.name == n).unwrap();
        crate::model::tensor::read_f64(t).unwrap()
    };
    for w in [&wa, &wb] {
        let r = reps.iter().find(|r| &r.weight == w).unwrap();
        assert!(r.method.starts_with("obs") && !r.method.ends_with("+bias"), "{r:?}");
        assert_ne!(tensor(&pruned, w), tensor(&before, w), "{w} was not updated");
    }
    assert_eq!(tensor(&pruned, &shared), tensor(&dense, &shared));
    // The channels refit leaves both layers alone, naming the bias.
    let refit = [wa.clone(), wb.clone()].map(|w| super::super::refit::RefitSite {
        weight: w,
        by_output: None,
        in_keep: vec![],
        out_keep: vec![],
    });
    let (mut m, mut p) = (dense.clone(), dense.clone());
    let (reps, _) = super::super::refit::refit_all_with(&dense, &mut m, &mut p, &refit, &calib, false, true).unwrap();
    assert!(
        reps.iter().all(|r| r.method == "skipped" && r.note.as_deref() == Some("the bias is shared with other layers")),
        "{reps:?}"
    );
}

/// `k` MatMuls applying one weight W [p, 1] to x [N, p] (x itself, then x + x, …), a Gemm
/// reading it too when `gemm`.
fn shared_matmuls(p: usize, k: usize, gemm: bool) -> onnx_protobuf::ModelProto {
    use crate::model::graph::{model_of, tensor_value_info};
    use crate::model::tensor::{dt, new_f32};
    let mut g = onnx_protobuf::GraphProto::new();
    g.input.push(tensor_value_info("x", dt::FLOAT, &[Some(2), Some(p as i64)], "N"));
    g.initializer.push(new_f32("W", &[p as i64, 1], &vec![0.5; p]));
    let node = |op: &str, ins: &[&str], out: &str| {
        let mut n = onnx_protobuf::NodeProto::new();
        n.op_type = op.into();
        n.name = out.into();
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output.push(out.into());
        n
    };
    let mut x = "x".to_string();
    for i in 0..k {
        g.node.push(node("MatMul", &[&x, "W"], &format!("y{i}")));
        g.output.push(tensor_value_info(&format!("y{i}"), dt::FLOAT, &[Some(2), Some(1)], "N"));
        g.node.push(node("Add", &[&x, &x], &format!("x{i}")));
        x = format!("x{i}");
    }
    if gemm {
        g.node.push(node("Gemm", &[&x, "W"], "yg"));
        g.output.push(tensor_value_info("yg", dt::FLOAT, &[Some(2), Some(1)], "N"));
    }
    model_of(g)
}

/// A weight several nodes apply the same way is one site with its other uses in `also`
/// (first in graph order); uses that apply it differently, or whose normal equations would
/// not fit [`super::MAX_SHARED_ELEMS`], are not; [`super::find`] never joins them.
#[test]
fn a_weight_applied_the_same_way_by_several_nodes_is_one_site() {
    let m = shared_matmuls(8, 3, false);
    let s = super::find_shared(&m, "W").unwrap();
    assert_eq!((s.input.as_str(), s.output.as_str()), ("x", "y0"));
    let also: Vec<(&str, &str)> = s.also.iter().map(|u| (u.input.as_str(), u.output.as_str())).collect();
    assert_eq!(also, [("x0", "y1"), ("x1", "y2")]);
    assert_eq!(s.label, "MatMul y0 (weight shared with 2 more nodes)");
    assert_eq!(super::find(&m, "W").unwrap_err(), "weight is used by 3 nodes");
    let differ = super::find_shared(&shared_matmuls(8, 1, true), "W").unwrap_err();
    assert_eq!(differ, "weight is used by 2 nodes that apply it differently");
    // 8 uses × 1500² = 18 M elements > 16.8 M.
    let big = super::find_shared(&shared_matmuls(1500, 8, false), "W").unwrap_err();
    assert!(big.starts_with("weight is used by 8 nodes: their normal equations (8 × 1500²"), "{big}");
    assert!(super::find_shared(&shared_matmuls(1500, 7, false), "W").is_ok());
}

/// Two Conv layers (16 → 32 channels, kernel 3, pads 1; 32 → 16, kernel 3, stride 2, pads
/// 1, with biases and a Relu between) as 1-D convolutions on x [N, 16, 20], or as the 2-D
/// ones of kernel [1, 3] on x [N, 16, 1, 20].
fn conv_pair(one_d: bool) -> onnx_protobuf::ModelProto {
    use crate::model::graph::{model_of, tensor_value_info};
    use crate::model::tensor::{dt, new_f32};
    // Without the 2-D form's leading spatial entry: weights [O, C, 1, k] → [O, C, k], pads
    // [0, 1, 0, 1] → [1, 1], strides [1, s] → [s].
    let sp = |v: &[i64]| match (one_d, v.len()) {
        (false, _) => v.to_vec(),
        (true, 4) if v[0] == 0 => vec![v[1], v[3]],
        (true, 4) => vec![v[0], v[1], v[3]],
        (true, _) => v[1..].to_vec(),
    };
    let wv = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| ((((i + seed) * 7919) % 211) as f32 - 105.0) / 150.0).collect()
    };
    let mut g = onnx_protobuf::GraphProto::new();
    g.name = "conv1d".into();
    let (x, y): (Vec<Option<i64>>, Vec<Option<i64>>) = if one_d {
        (vec![None, Some(16), Some(20)], vec![None, Some(16), Some(10)])
    } else {
        (vec![None, Some(16), Some(1), Some(20)], vec![None, Some(16), Some(1), Some(10)])
    };
    g.input.push(tensor_value_info("x", dt::FLOAT, &x, "N"));
    g.output.push(tensor_value_info("y", dt::FLOAT, &y, "N"));
    g.initializer.push(new_f32("w1", &sp(&[32, 16, 1, 3]), &wv(32 * 16 * 3, 1)));
    g.initializer.push(new_f32("b1", &[32], &wv(32, 2)));
    g.initializer.push(new_f32("w2", &sp(&[16, 32, 1, 3]), &wv(16 * 32 * 3, 3)));
    g.initializer.push(new_f32("b2", &[16], &wv(16, 4)));
    let conv = |name: &str, ins: [&str; 3], out: &str, stride: i64| {
        let mut n = onnx_protobuf::NodeProto::new();
        (n.op_type, n.name) = ("Conv".into(), name.into());
        n.input = ins.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.into()];
        let ints = |name: &str, v: Vec<i64>| {
            let mut a = onnx_protobuf::AttributeProto::new();
            (a.name, a.type_, a.ints) = (name.into(), protobuf::EnumOrUnknown::from_i32(7), v);
            a
        };
        n.attribute.push(ints("pads", sp(&[0, 1, 0, 1])));
        n.attribute.push(ints("strides", sp(&[1, stride])));
        n
    };
    g.node.push(conv("c1", ["x", "w1", "b1"], "h", 1));
    let mut relu = onnx_protobuf::NodeProto::new();
    (relu.op_type, relu.name, relu.input, relu.output) =
        ("Relu".into(), "r".into(), vec!["h".into()], vec!["hr".into()]);
    g.node.push(relu);
    g.node.push(conv("c2", ["hr", "w2", "b2"], "y", 2));
    model_of(g)
}

/// A 1-D Conv is reconstructed as the 2-D one of kernel [1, k] on [N, C, 1, T] is: the same
/// methods and the same updated weights (to tract's float rounding).
#[test]
fn a_one_d_conv_reconstructs_as_its_two_d_twin() {
    use crate::check::inputs::{Input, InputData, InputSource, Inputs};
    use crate::prune::weights::{prune_weights, WeightOptions};
    let x = ndarray::Array3::from_shape_fn((40, 16, 20), |(n, c, t)| {
        ((((n * 31 + c * 17 + t * 7) % 29) as f32) - 14.0) / 9.0
    });
    let inputs = |a: ndarray::ArrayD<f32>| Inputs {
        inputs: vec![Input {
            name: "x".into(),
            data: InputData::F32(a).into(),
            source: InputSource::Generated,
            sample_axis: 0,
        }],
        assumed: vec![],
        file_rows: None,
    };
    let mut runs = vec![];
    for one_d in [true, false] {
        let dense = conv_pair(one_d);
        let calib = if one_d { x.clone().into_dyn() } else { x.clone().insert_axis(ndarray::Axis(2)).into_dyn() };
        let mut pruned = dense.clone();
        let rep = prune_weights(&mut pruned, &WeightOptions::default()).unwrap();
        let names: Vec<String> = rep.tensors.iter().filter(|t| t.kept < t.n).map(|t| t.name.clone()).collect();
        assert_eq!(names, ["w1", "w2"]);
        for w in &names {
            let s = super::find(&dense, w).unwrap();
            assert!(matches!(s.layout, super::Layout::Conv2d { kernel: [1, 3], .. }), "{:?}", s.layout);
        }
        let (reps, _) =
            super::super::obs::obs_all_with(&dense, &mut pruned, &names, &inputs(calib), false, true).unwrap();
        let w: Vec<Vec<f64>> = names
            .iter()
            .map(|n| {
                let t = pruned.graph.as_ref().unwrap().initializer.iter().find(|t| &t.name == n).unwrap();
                crate::model::tensor::read_f64(t).unwrap()
            })
            .collect();
        runs.push((reps, w));
    }
    let ((r1, w1), (r2, w2)) = (&runs[0], &runs[1]);
    assert_eq!(r1.len(), 2);
    for (a, b) in r1.iter().zip(r2) {
        assert!(a.method.starts_with("obs") && a.err_after < a.err_before, "{a:?}");
        assert_eq!((&a.method, a.rows), (&b.method, b.rows));
    }
    for (a, b) in w1.iter().zip(w2) {
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff <= 1e-4 * scale, "max |Δw| {diff} (scale {scale})");
    }
}

#[test]
fn sample_is_deterministic_distinct_and_sorted() {
    let a = sample(100, 10, 42);
    assert_eq!(a, sample(100, 10, 42));
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a.iter().all(|&i| i < 100));
    assert_eq!(sample(5, 10, 1), vec![0, 1, 2, 3, 4]);
}
