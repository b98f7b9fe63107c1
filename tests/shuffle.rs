//! Channel shuffle (Reshape → Transpose → Reshape) and chunked Slices with bounds computed from
//! the channel count: small hand-built models, each rewrite proven pruned == masked (tract, and
//! onnxruntime when available), each refusal checked for its reason. The exported ShuffleNet is
//! `zoo_shufflenet` in tests/zoo.rs.

#[path = "common/build.rs"]
mod build;
#[path = "common/prove.rs"]
mod prove;
use build::*;

use onnx_emp::model::graph::GraphIndex;
use onnx_emp::model::tensor;
use onnx_emp::prune::channels::prune_channels;
use onnx_emp::prune::{Floor, RoundTo, StructOptions, StructuralResult};
use onnx_protobuf::{ModelProto, TensorProto};

const X: [i64; 4] = [1, 3, 5, 5];

fn opts() -> StructOptions {
    StructOptions { floor: Floor::OFF, round_to: RoundTo::Multiple(1), ..Default::default() }
}

fn ints(name: &str, v: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.dims = vec![v.len() as i64];
    t.int64_data = v.to_vec();
    t
}

/// A 0-d int64 constant (what `Gather(Shape(x), k)` with a scalar index returns).
fn scalar(name: &str, v: i64) -> TensorProto {
    let mut t = ints(name, &[v]);
    t.dims.clear();
    t
}

fn read(m: &ModelProto, name: &str) -> Vec<i64> {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    tensor::read_i64(ix.weight(g, name).unwrap_or_else(|| panic!("'{name}' not found"))).unwrap()
}

fn dims(m: &ModelProto, name: &str) -> Vec<i64> {
    let g = m.graph.as_ref().unwrap();
    let ix = GraphIndex::build(g).unwrap();
    ix.weight(g, name).unwrap_or_else(|| panic!("'{name}' not found")).dims.clone()
}

fn blocked(r: &StructuralResult) -> Vec<String> {
    r.groups.iter().filter_map(|g| g.blocked.clone()).collect()
}

/// Conv A (8 channels) → shuffle → Conv B with literal targets; `perm` is the Transpose's. The
/// shuffled tensor's shape is declared (as onnx shape inference writes it): literal batch and
/// spatial entries are checked against it.
fn literal_shuffle(perm: &[i64]) -> ModelProto {
    literal_shuffle_with(perm, &[1, 2, 4, 5, 5], true)
}

fn literal_shuffle_with(perm: &[i64], t5: &[i64], declared: bool) -> ModelProto {
    let mut m = mk_model(
        vec![
            nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
            nd("Reshape", "split", &["a", "t5"], &["r"], vec![]),
            nd("Transpose", "swap", &["r"], &["t"], vec![attr_ints("perm", perm)]),
            nd("Reshape", "merge", &["t", "t4"], &["s"], vec![]),
            nd("Conv", "B", &["s", "wb"], &["y"], vec![]),
        ],
        vec![
            w("wa", &[8, 3, 1, 1], &[1., 0.01, 1., 1., 1., 0.01, 1., 1.], 1),
            w("wb", &[2, 8, 1, 1], &ones(2), 2),
            ints("t5", t5),
            ints("t4", &[1, 8, 5, 5]),
        ],
        &X,
        &["y"],
    );
    if declared {
        m.graph.as_mut().unwrap().value_info.push(vi("a", Some(&[1, 8, 5, 5])));
    }
    m
}

/// Conv A (8 channels) → shuffle over 2 groups → Conv B. Channels 1 and 5 (index 1 of each group)
/// are weak: the shuffle keeps the same index in every group, so both go, and the literal
/// targets [1, 2, 4, 5, 5] / [1, 8, 5, 5] become [1, 2, 3, 5, 5] / [1, 6, 5, 5].
#[test]
fn shuffle_with_literal_targets_removes_one_index_from_every_group() {
    let m = literal_shuffle(&[0, 2, 1, 3, 4]);
    let o = prove_x(&m, &X, &opts());
    let a = o.result.groups.iter().find(|g| g.id == "A").unwrap();
    assert!(a.blocked.is_none(), "{a:?}");
    assert_eq!((a.n, a.kept, a.removed.clone()), (4, 3, vec![1]), "one unit per shuffle index");
    let p = &o.result.pruned;
    assert_eq!(dims(p, "wa")[0], 6);
    assert_eq!(read(p, "t5"), vec![1, 2, 3, 5, 5]);
    assert_eq!(read(p, "t4"), vec![1, 6, 5, 5]);
    assert_eq!(dims(p, "wb")[1], 6);
}

/// Without value_info (torch's export writes none) the literal batch is checked against the batch
/// carried from the graph input through the Conv.
#[test]
fn shuffle_literal_batch_is_checked_against_the_carried_batch() {
    let o = prove_x(&literal_shuffle_with(&[0, 2, 1, 3, 4], &[1, 2, 4, 5, 5], false), &X, &opts());
    let p = &o.result.pruned;
    assert_eq!((read(p, "t5"), read(p, "t4")), (vec![1, 2, 3, 5, 5], vec![1, 6, 5, 5]));
    // [5, 2, 4, 5, 1] holds as many elements but moves a spatial dim into the batch: no channel
    // shuffle, refused.
    let r = prune_channels(&literal_shuffle_with(&[0, 2, 1, 3, 4], &[5, 2, 4, 5, 1], false), &opts()).unwrap();
    let b = blocked(&r);
    assert!(b.iter().any(|r| r.contains("channel shuffle: ")), "{b:#?}");
}

/// The same shuffle with a Transpose that does not swap the two split axes is no channel shuffle:
/// the general Reshape rules apply to it (as to attention's `[L·N, E]` → `[L, N, E]` → Transpose →
/// Reshape, which the shuffle rule used to refuse), and they refuse this one: it splits the
/// channel axis.
#[test]
fn shuffle_with_another_permutation_is_refused() {
    let m = literal_shuffle(&[0, 1, 2, 4, 3]);
    let r = prune_channels(&m, &opts()).unwrap();
    let b = blocked(&r);
    assert!(b.iter().any(|r| r.contains("reshape moves the channel axis") && r.contains("'split'")), "{b:#?}");
}

/// `x.chunk(d, dim=1)` as torch exports it: bounds ⌊(C + d − 1)/d⌋ · k computed from Shape(x),
/// the first two chunks into two convolutions. `scale` sets Conv A's channel norms.
fn chunk_model(divisor: i64, scale: &[f32]) -> ModelProto {
    let chunk = (8 + divisor - 1) / divisor;
    let nodes = vec![
        nd("Conv", "A", &["x", "wa"], &["a"], vec![]),
        nd("Shape", "shape", &["a"], &["sh"], vec![]),
        nd("Gather", "c", &["sh", "one"], &["c"], vec![attr_i("axis", 0)]),
        nd("Add", "c1", &["c", "plus"], &["c1"], vec![]),
        nd("Div", "part", &["c1", "div"], &["h"], vec![]),
        nd("Mul", "end1", &["h", "k1"], &["e1"], vec![]),
        nd("Mul", "end2", &["h", "k2"], &["e2"], vec![]),
        nd("Unsqueeze", "u1", &["e1", "zero"], &["e1v"], vec![]),
        nd("Unsqueeze", "u2", &["e2", "zero"], &["e2v"], vec![]),
        nd("Slice", "lo", &["a", "zero", "e1v", "axis"], &["lo"], vec![]),
        nd("Slice", "hi", &["a", "e1v", "e2v", "axis"], &["hi"], vec![]),
        nd("Conv", "B", &["lo", "wb"], &["yb"], vec![]),
        nd("Conv", "C", &["hi", "wc"], &["yc"], vec![]),
        nd("Add", "sum", &["yb", "yc"], &["y"], vec![]),
    ];
    let inits = vec![
        w("wa", &[8, 3, 1, 1], scale, 1),
        w("wb", &[2, chunk, 1, 1], &ones(2), 2),
        w("wc", &[2, chunk, 1, 1], &ones(2), 3),
        scalar("one", 1),
        scalar("plus", divisor - 1),
        scalar("div", divisor),
        scalar("k1", 1),
        scalar("k2", 2),
        ints("zero", &[0]),
        ints("axis", &[1]),
    ];
    mk_model(nodes, inits, &X, &["y"])
}

/// The constant now feeding input `slot` of node `node` (a computed bound replaced by the rewrite).
fn bound(m: &ModelProto, node: &str, slot: usize) -> Vec<i64> {
    let n = m.graph.as_ref().unwrap().node.iter().find(|n| n.name == node).unwrap();
    read(m, &n.input[slot])
}

/// Both weak channels sit in the first half: the halves keep 2 and 4 channels, and the computed
/// bounds (which would say 3 and 6 on the pruned width) are fed as the constants 2 and 6.
#[test]
fn computed_chunk_bounds_become_the_kept_counts() {
    let m = chunk_model(2, &[1., 0.01, 0.02, 1., 1., 1., 1., 1.]);
    let o = prove_x(&m, &X, &opts());
    let a = o.result.groups.iter().find(|g| g.id == "A").unwrap();
    assert!(a.blocked.is_none(), "{a:?}");
    assert_eq!((a.n, a.kept, a.removed.clone()), (8, 6, vec![1, 2]));
    let p = &o.result.pruned;
    assert_eq!((dims(p, "wa")[0], dims(p, "wb")[1], dims(p, "wc")[1]), (6, 2, 4));
    assert_eq!((bound(p, "lo", 2), bound(p, "hi", 1), bound(p, "hi", 2)), (vec![2], vec![2], vec![6]));
    // The bound chain nothing reads any more goes with its constants; the rest is as it was.
    let g = p.graph.as_ref().unwrap();
    let names: Vec<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["A", "lo", "hi", "B", "C", "sum"]);
    for gone in ["one", "plus", "div", "k1", "k2"] {
        assert!(g.initializer.iter().all(|t| t.name != gone), "{gone} left behind");
    }
    assert!(g.initializer.iter().any(|t| t.name == "zero") && g.initializer.iter().any(|t| t.name == "axis"));
}

/// Bounds ⌊(C + 2)/3⌋ · k on 8 channels (chunks of 3, 3 and 2; the last unused): the same.
#[test]
fn computed_bounds_of_uneven_chunks_become_the_kept_counts() {
    let m = chunk_model(3, &[1., 1., 1., 0.01, 1., 1., 1., 1.]);
    let o = prove_x(&m, &X, &opts());
    let a = o.result.groups.iter().find(|g| g.id == "A").unwrap();
    assert!(a.removed.contains(&3), "{a:?}");
    let kept_before = |b: usize| (b - a.removed.iter().filter(|&&r| r < b).count()) as i64;
    let p = &o.result.pruned;
    assert_eq!(
        (bound(p, "lo", 2), bound(p, "hi", 1), bound(p, "hi", 2)),
        (vec![kept_before(3)], vec![kept_before(3)], vec![kept_before(6)])
    );
    assert_eq!(dims(p, "wc")[1], kept_before(6) - kept_before(3));
}

/// Nothing removed from the sliced axis: the computed bounds stay as they were.
#[test]
fn computed_bounds_stay_when_the_axis_is_whole() {
    let m = chunk_model(2, &ones(8));
    let o = prove_x(&m, &X, &StructOptions { beta: 2.0, ..opts() });
    let p = &o.result.pruned;
    assert_eq!(dims(p, "wa")[0], 8);
    let lo = p.graph.as_ref().unwrap().node.iter().find(|n| n.name == "lo").unwrap();
    assert_eq!(lo.input[2], "e1v");
}

/// A bound computed from the channel count that slices another axis cannot follow the pruned
/// width: blocked, with the reason.
#[test]
fn a_channel_count_bounding_another_axis_is_refused() {
    let mut m = chunk_model(2, &[1., 0.01, 1., 1., 1., 0.02, 1., 1.]);
    let g = m.graph.as_mut().unwrap();
    g.initializer.retain(|t| t.name != "axis");
    g.initializer.push(ints("axis", &[2]));
    let r = prune_channels(&m, &opts()).unwrap();
    let b = blocked(&r);
    assert!(b.iter().any(|r| r.contains("'lo'") && r.contains("slice another way")), "{b:#?}");
}
