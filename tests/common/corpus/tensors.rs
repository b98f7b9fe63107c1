//! Cases: broken tensors (data sizes, dims, element types, non-finite weights, data locations,
//! sparse initializers).
use super::*;

pub(super) fn tensor_cases(v: &mut Vec<Case>) {
    let c = "tensors";
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = mlp();
        f(&mut m);
        enc(&m)
    };
    v.push(case(
        "raw_data_short",
        c,
        "fc1.weight raw_data 4 bytes short of its dims",
        with(&|m| {
            init(m, "fc1.weight").raw_data.truncate(32768 - 4);
        }),
        err("'fc1.weight'"),
    ));
    v.push(case(
        "raw_data_long",
        c,
        "fc3.bias raw_data longer than its dims",
        with(&|m| {
            init(m, "fc3.bias").raw_data.extend_from_slice(&[0; 8]);
        }),
        err("'fc3.bias'"),
    ));
    v.push(case(
        "dims_2pow40_elements",
        c,
        "fc1.weight dims [2^20, 2^20]",
        with(&|m| {
            init(m, "fc1.weight").dims = vec![1 << 20, 1 << 20];
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_2pow62",
        c,
        "fc2.weight dims [2^62]",
        with(&|m| {
            init(m, "fc2.weight").dims = vec![1 << 62];
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_overflow_i64",
        c,
        "fc2.weight dims [2^62, 2^62, 16] overflow a u64 product",
        with(&|m| {
            init(m, "fc2.weight").dims = vec![1 << 62, 1 << 62, 16];
        }),
        err("'fc2.weight'"),
    ));
    v.push(case(
        "dims_zero_times_2pow62",
        c,
        "an empty fc1.weight with dims [0, 2^62]",
        with(&|m| {
            let t = init(m, "fc1.weight");
            t.dims = vec![0, 1 << 62];
            t.raw_data.clear();
        }),
        err("too many elements"),
    ));
    v.push(case(
        "dims_negative",
        c,
        "fc1.weight dims [-1, 64]",
        with(&|m| {
            init(m, "fc1.weight").dims = vec![-1, 64];
        }),
        err("negative"),
    ));
    v.push(case(
        "dtype_999",
        c,
        "fc1.weight of data type 999",
        with(&|m| {
            init(m, "fc1.weight").data_type = 999;
        }),
        err("unknown data type 999"),
    ));
    v.push(case(
        "dtype_undefined",
        c,
        "fc3.bias of data type 0",
        with(&|m| {
            init(m, "fc3.bias").data_type = 0;
        }),
        err("'fc3.bias'"),
    ));
    v.push(case(
        "float_data_short",
        c,
        "fc3.weight in float_data, one value missing",
        with(&|m| {
            let t = init(m, "fc3.weight");
            let vals: Vec<f32> =
                t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            t.raw_data.clear();
            t.float_data = vals[..vals.len() - 1].to_vec();
        }),
        err("'fc3.weight'"),
    ));
    v.push(case(
        "no_data",
        c,
        "fc2.bias without any data",
        with(&|m| {
            init(m, "fc2.bias").raw_data.clear();
        }),
        err("'fc2.bias'"),
    ));
    v.push(case(
        "nan_weight",
        c,
        "a NaN in fc2.weight",
        with(&|m| {
            init(m, "fc2.weight").raw_data[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        }),
        err("'fc2.weight'"),
    ));
    v.push(case(
        "inf_weight",
        c,
        "+Inf in fc1.weight",
        with(&|m| {
            init(m, "fc1.weight").raw_data[0..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
        }),
        err("'fc1.weight'"),
    ));
    let mut w = f32_tensor("W16", &[4, 3], &[]);
    w.data_type = 10;
    w.raw_data = ramp(12).iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect();
    w.raw_data[6..8].copy_from_slice(&half::f16::NEG_INFINITY.to_le_bytes());
    v.push(case("f16_inf_weight", c, "-Inf in a float16 MatMul weight", enc(&tiny_matmul(w, 4, 3)), err("'W16'")));
    v.push(case(
        "gemm_transb_1d_weight",
        c,
        "Gemm with transB=1 and a 1-D weight",
        with(&|m| {
            init(m, "fc3.weight").dims = vec![640];
        }),
        err("'fc3.weight'"),
    ));
    let mut m = cnn();
    let t = init(&mut m, "stem.0.weight");
    t.data_type = 7;
    t.raw_data = (0..144i64).flat_map(|i| (i - 72).to_le_bytes()).collect();
    v.push(case("conv_weight_int64", c, "Conv weight stored as int64", enc(&m), err("'stem.0.weight'")));
    let mut w = TensorProto::new();
    w.name = "Wstr".into();
    w.data_type = 8;
    w.dims = vec![4, 3];
    w.string_data = (0..12).map(|i| format!("w{i}").into_bytes()).collect();
    let mut m = tiny_matmul(w, 4, 3);
    gm(&mut m).input[0] = vi("x", 1, &[1, 4]);
    gm(&mut m).output[0] = vi("y", 1, &[1, 3]);
    v.push(case("matmul_weight_string", c, "MatMul weight of type string", enc(&m), err("'Wstr'")));
    let mut w = f32_tensor("Wstr2", &[4, 3], &ramp(12));
    w.data_type = 8;
    v.push(case(
        "string_tensor_raw_data",
        c,
        "a string tensor with raw_data instead of strings",
        enc(&tiny_matmul(w, 4, 3)),
        err("'Wstr2'"),
    ));
    v.push(case(
        "data_location_7",
        c,
        "fc1.bias with data_location 7",
        with(&|m| {
            init(m, "fc1.bias").data_location = protobuf::EnumOrUnknown::from_i32(7);
        }),
        err("data_location"),
    ));
    v.push(case(
        "sparse_initializer_no_indices",
        c,
        "a sparse initializer without indices",
        with(&|m| {
            let mut s = SparseTensorProto::new();
            s.values = Some(f32_tensor("sp", &[2], &[1.0, 2.0])).into();
            s.dims = vec![5];
            gm(m).sparse_initializer.push(s);
        }),
        err("sparse"),
    ));
}
