//! Cases: broken node attributes (types, missing values, duplicates, names).
use super::*;

pub(super) fn attribute_cases(v: &mut Vec<Case>) {
    let c = "attributes";
    let with = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = mlp();
        f(&mut m);
        enc(&m)
    };
    let set = |m: &mut ModelProto, node: &str, a: AttributeProto| {
        let n = node_mut(m, node);
        n.attribute.retain(|x| x.name != a.name);
        n.attribute.push(a);
    };
    v.push(case(
        "transb_as_float",
        c,
        "Gemm transB given as a FLOAT 1.0",
        with(&|m| set(m, "/fc1/Gemm", attr_f("transB", 1.0))),
        err("transB"),
    ));
    v.push(case(
        "attr_type_value_mismatch",
        c,
        "transB of type INT holding a float",
        with(&|m| {
            let mut a = attr_i("transB", 0);
            a.f = 1.0;
            set(m, "/fc2/Gemm", a)
        }),
        err("transB"),
    ));
    v.push(case(
        "attr_unknown_type",
        c,
        "an attribute of type 99",
        with(&|m| {
            let mut a = attr_i("alpha", 1);
            a.type_ = ev(99);
            set(m, "/fc3/Gemm", a)
        }),
        err("unknown type 99"),
    ));
    v.push(case(
        "attr_tensor_without_value",
        c,
        "a Constant whose TENSOR attribute is empty",
        with(&|m| {
            let mut n = node("Constant", "k", &[], &["k_out"]);
            let mut a = attr_t("value", f32_tensor("kv", &[1], &[1.0]));
            a.t = None.into();
            n.attribute.push(a);
            gm(m).node.push(n);
        }),
        err("no value"),
    ));
    v.push(case(
        "attr_graph_without_value",
        c,
        "an If whose then_branch is of type GRAPH but empty",
        {
            let mut m = mlp_with_if(1);
            gm(&mut m).node.last_mut().unwrap().attribute[0].g = None.into();
            enc(&m)
        },
        err("then_branch"),
    ));
    v.push(case(
        "attr_duplicate",
        c,
        "transB given twice",
        with(&|m| {
            node_mut(m, "/fc1/Gemm").attribute.push(attr_i("transB", 0));
        }),
        err("given twice"),
    ));
    v.push(case(
        "attr_without_name",
        c,
        "an attribute without a name",
        with(&|m| {
            node_mut(m, "/Relu").attribute.push(attr_i("", 1));
        }),
        err("no name"),
    ));
    v.push(case(
        "attr_untyped",
        c,
        "an attribute with no type in an IR 8 model",
        with(&|m| {
            let mut a = attr_i("alpha", 2);
            a.type_ = ev(0);
            set(m, "/fc1/Gemm", a)
        }),
        err("no type"),
    ));
    v.push(case(
        "constant_value_wrong_kind",
        c,
        "a Constant 'value' of type FLOAT holding a tensor",
        with(&|m| {
            let mut n = node("Constant", "k", &[], &["k_out"]);
            let mut a = attr_t("value", f32_tensor("kv", &[1], &[1.0]));
            a.type_ = ev(1);
            n.attribute.push(a);
            gm(m).node.push(n);
        }),
        err("'value'"),
    ));
}
