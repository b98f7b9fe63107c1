//! Tensors and channels several layers share (hard cases of docs/structural.md on small hand-built
//! models): a residual chain to the output, shared biases, weights shared through Identity, cuts
//! that would add parameters, shared initializers.
use super::*;

#[test]
fn residual_chain_reaching_output_is_not_pruned() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "wb"], &["b"], vec![]),
            nd("Add", "add", &["b", "ra"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 1),
            w("wb", &[6, 6, 1, 1], &[1., 0.01, 1., 1., 0.01, 1.], 2),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert_eq!(g.members, vec!["A", "r", "B", "add"]);
    assert!(g.blocked.as_deref().unwrap().contains("graph output 'y'"), "{g:?}");
    assert_eq!(o.params.0, o.params.1);
}

/// A bias tensor two convolutions read (onnxslim deduplicates equal biases: a random-weight
/// YOLOv8n's zero biases made its whole backbone one group) does not tie their channels: each
/// group prunes its own, each reader gets its own sliced copy, and the shared tensor, read by no
/// one after, is gone.
#[test]
fn a_bias_shared_by_two_layers_does_not_tie_their_channels() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "b"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "B", &["a2", "wb", "b"], &["bo"], vec![]),
            nd("Relu", "rb", &["bo"], &["b2"], vec![]),
            nd("Conv", "C", &["b2", "wc"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[6, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1.], 1),
            w("wb", &[6, 6, 1, 1], &[1., 1., 1., 0.01, 1., 0.02], 2),
            w("wc", &[2, 6, 1, 1], &[1., 1.], 3),
            tensor::new_f32("b", &[6], &[0.1, -0.2, 0.3, 0.05, -0.1, 0.2]),
        ],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let (a, b) = (group(&o.result, "A"), group(&o.result, "B"));
    assert_eq!(
        (a.members.clone(), b.members.clone()),
        (vec!["A".into(), "ra".into(), "B".into()], vec!["B".into(), "rb".into(), "C".into()])
    );
    // Each group drops its own weak channels (EMP may take one more of the near-equal rest).
    assert!(a.removed.contains(&1), "{a:?}");
    assert!(b.removed.contains(&3) && b.removed.contains(&5) && !b.removed.contains(&1), "{b:?}");
    assert_ne!(a.removed, b.removed);
    let p = &o.result.pruned;
    let g = p.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type != "Identity"), "no alias left");
    let bias = |n: &str| g.node.iter().find(|x| x.name == n).unwrap().input[2].clone();
    let (ba, bb) = (bias("A"), bias("B"));
    assert_ne!(ba, bb);
    assert_eq!(
        (weight(p, &ba).dims.clone(), weight(p, &bb).dims.clone()),
        (vec![(6 - a.removed.len()) as i64], vec![(6 - b.removed.len()) as i64])
    );
    assert!(g.initializer.iter().all(|t| t.name != "b"), "the shared bias nobody reads is dropped");
    assert!(o.params.1 < o.params.0);
}

/// Layers that read one weight through an `Identity` each (torch.onnx's way of writing a module
/// applied several times, as ALBERT's layers are) are cut as one: they lose the same channels and
/// keep sharing the weight and its bias. Cut apart, each alias became a copy and the params grew
/// (33 664 → 99 968 on a four-layer MLP).
#[test]
fn layers_sharing_a_weight_through_identity_are_cut_as_one_and_keep_sharing_it() {
    let mut nodes = vec![];
    let mut x = "x".to_string();
    for l in 0..3 {
        for (a, src) in [("wa", "wa"), ("b", "b"), ("wb", "wb")] {
            nodes.push(nd("Identity", &format!("{a}{l}"), &[src], &[&format!("{a}{l}")], vec![]));
        }
        let (h, r, y) = (format!("h{l}"), format!("r{l}"), format!("y{l}"));
        nodes.push(nd("Conv", &format!("A{l}"), &[&x, &format!("wa{l}"), &format!("b{l}")], &[&h], vec![]));
        nodes.push(nd("Relu", &format!("ra{l}"), &[&h], &[&r], vec![]));
        nodes.push(nd("Conv", &format!("B{l}"), &[&r, &format!("wb{l}")], &[&y], vec![]));
        x = y;
    }
    let m = mk_model(
        nodes,
        vec![
            w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 0.02, 1., 1., 1.], 1),
            w("wb", &[3, 8, 1, 1], &[1., 1., 1.], 2),
            tensor::new_f32("b", &[8], &[0.1, -0.2, 0.3, 0.05, -0.1, 0.2, 0.0, 0.1]),
        ],
        &X4,
        &[&x],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A0");
    assert!(a.members.iter().any(|n| n == "B2"), "one group over the three layers: {}", summary(&o.result.groups));
    assert!(a.removed.contains(&1) && a.removed.contains(&4), "{a:?}");
    let p = &o.result.pruned;
    let g = p.graph.as_ref().unwrap();
    let kept = (8 - a.removed.len()) as i64;
    let dims = |n: &str| weight(p, n).dims.clone();
    assert_eq!((dims("wa"), dims("b"), dims("wb")), (vec![kept, 3, 1, 1], vec![kept], vec![3, kept, 1, 1]));
    assert_eq!(g.initializer.len(), 3, "no copies: {:?}", g.initializer.iter().map(|t| &t.name).collect::<Vec<_>>());
    assert_eq!(g.node.iter().filter(|n| n.op_type == "Identity").count(), 9, "the aliases stay");
    assert!(o.params.1 < o.params.0);
}

/// A cut whose copies and compensating biases would outweigh what it removes is not made:
/// parameters never grow (a 1-unit cut of a layer applied four times, whose removed unit's
/// relu(bias) is folded into a new bias of each second layer).
#[test]
fn a_cut_that_would_add_parameters_is_not_made() {
    let mut nodes = vec![];
    let mut x = "x".to_string();
    for l in 0..4 {
        nodes.push(nd("Identity", &format!("wa{l}"), &["wa"], &[&format!("wa{l}")], vec![]));
        nodes.push(nd("Identity", &format!("wb{l}"), &["wb"], &[&format!("wb{l}")], vec![]));
        let (h, hb, r, y) = (format!("h{l}"), format!("hb{l}"), format!("r{l}"), format!("y{l}"));
        nodes.push(nd("MatMul", &format!("A{l}"), &[&x, &format!("wa{l}")], &[&h], vec![]));
        nodes.push(nd("Add", &format!("ba{l}"), &[&h, &format!("b{l}")], &[&hb], vec![]));
        nodes.push(nd("Relu", &format!("ra{l}"), &[&hb], &[&r], vec![]));
        nodes.push(nd("MatMul", &format!("B{l}"), &[&r, &format!("wb{l}")], &[&y], vec![]));
        x = y;
    }
    // wa [4, 8]: hidden unit 1 is weak, the others near-equal; wb [8, 4].
    let va: Vec<f32> = (0..32).map(|i| if i % 8 == 1 { 0.01 } else { 1.0 + 0.05 * (i % 3) as f32 }).collect();
    let vb: Vec<f32> = (0..32).map(|i| 0.5 + 0.05 * (i % 4) as f32).collect();
    let mut inits = vec![tensor::new_f32("wa", &[4, 8], &va), tensor::new_f32("wb", &[8, 4], &vb)];
    // Own biases, non-zero: a removed unit emits relu(b), folded into a new bias of each B.
    inits.extend((0..4).map(|l| tensor::new_f32(&format!("b{l}"), &[8], &[0.5; 8])));
    let m = mk_model(nodes, inits, &[2, 4], &[&x]);
    let o = prove_x(&m, &[2, 4], &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A0");
    assert_eq!(a.kept, a.n, "{}", summary(&o.result.groups));
    assert!(a.notes.iter().any(|n| n.contains("more parameters than the input has")), "{:?}", a.notes);
    assert_eq!(o.params.1, o.params.0);
}

/// Untying a shared bias gives each changed reader a copy; when those copies beside the shared
/// tensor (still read by an unchanged reader) would outweigh what the cut removes, the layers stay
/// tied instead: parameters never grow.
#[test]
fn a_shared_bias_stays_tied_when_untying_it_would_add_parameters() {
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa", "sb"], &["a"], vec![]),
            nd("Relu", "ra", &["a"], &["a2"], vec![]),
            nd("Conv", "C", &["a2", "wc"], &["y"], vec![]),
            nd("Conv", "B", &["x", "wb", "sb"], &["y2"], vec![]),
        ],
        vec![
            // A cut of r of A's 16 channels removes 4·r weights and would add a copy of 16 − r
            // biases beside the 16 B still reads: more, for any r ≤ 3 (EMP cuts 1 or 2 here).
            w("wa", &[16, 3, 1, 1], &[1., 0.01, 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1., 1.], 1),
            w("wc", &[1, 16, 1, 1], &[1.], 2),
            w("wb", &[16, 3, 1, 1], &[1.; 16], 3),
            tensor::new_f32("sb", &[16], &[0.1; 16]),
        ],
        &X4,
        &["y", "y2"],
    );
    let o = prove_x(&m, &X4, &StructOptions { round_to: onnx_emp::prune::RoundTo::Multiple(1), ..no_floor() });
    let a = group(&o.result, "A");
    assert!(a.members.contains(&"B".to_string()) && a.blocked.is_some(), "tied to B, which reaches an output: {a:?}");
    assert_eq!(o.params.0, o.params.1);
    let g = o.result.pruned.graph.as_ref().unwrap();
    assert!(g.node.iter().all(|n| n.op_type != "Identity" && n.input.iter().all(|i| i != "sb_0")));
}

#[test]
fn shared_initializers() {
    // (one bias initializer used by two convs: a_bias_shared_by_two_layers_does_not_tie_their_channels)

    // one weight used by a conv on the graph input and by a conv on a pruned tensor: slicing its
    // input axis would break the first conv, so the group is blocked
    let m = mk_model(
        vec![
            nd("Conv", "A", &["x", "w"], &["a"], vec![]),
            nd("Relu", "r", &["a"], &["ra"], vec![]),
            nd("Conv", "B", &["ra", "w"], &["y"], vec![]),
        ],
        vec![w("w", &[3, 3, 1, 1], &[1., 0.01, 1.], 1)],
        &X4,
        &["y"],
    );
    let o = prove_x(&m, &X4, &no_floor());
    let g = group(&o.result, "A");
    assert!(g.blocked.as_deref().unwrap().contains("weight 'w' is also used by Conv node 'A'"), "{g:?}");
    assert_eq!(o.params.0, o.params.1);
}
