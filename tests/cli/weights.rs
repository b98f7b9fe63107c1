//! Per-weight runs of every trained model: report snapshots, scopes, byte-identical reruns, β sweeps.
use super::*;

#[test]
fn weights_default_scope_every_model() {
    for (m, d) in MODELS {
        let r = run(m, d, &[]);
        snapshot(&format!("weights_default_{m}"), &stable(&r.report));
        assert_eq!(r.report["scope"], "normalized");
        let (a, b) = accuracy(&r.report);
        assert!(a > 0.95, "{m}: dense accuracy {a}");
        // The guarded default keeps each within 3 points (see the guard's own test below).
        assert!(b > a - 0.03, "{m}: accuracy {a} → {b}");
        let sp = 1.0
            - r.report["params"]["nonzero_after"].as_f64().unwrap()
                / r.report["params"]["nonzero_before"].as_f64().unwrap();
        assert!(sp > 0.1 && sp < 0.6, "{m}: sparsity {sp}");
        assert!(r.stdout.contains("accuracy"), "{}", r.stdout);
        assert!(r.out.is_file());
    }
}

#[test]
fn weights_layer_and_global_scopes() {
    for scope in ["unit", "layer", "global"] {
        let r = run("digits_mlp", "digits_test_x64", &["--scope", scope]);
        snapshot(&format!("weights_{scope}_digits_mlp"), &stable(&r.report));
        assert_eq!(r.report["scope"], scope);
        let (a, b) = accuracy(&r.report);
        assert!(b > a - 0.1, "{scope}: {a} → {b}");
    }
}

#[test]
fn same_input_same_bytes() {
    let a = run("digits_cnn", "digits_test_x1x8x8", &[]);
    let b = run("digits_cnn", "digits_test_x1x8x8", &[]);
    assert_eq!(std::fs::read(&a.out).unwrap(), std::fs::read(&b.out).unwrap());
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("timing");
        v.as_object_mut().unwrap().remove("output");
        serde_json::to_string(&v).unwrap()
    };
    assert_eq!(strip(&a.report), strip(&b.report));
}

#[test]
fn beta_sweeps_monotonically() {
    let mut last = 0.0;
    for beta in ["1.5", "1", "0.75", "0.5"] {
        let r = run("digits_mlp", "digits_test_x64", &["--beta", beta, "--no-verify"]);
        let w = &r.report["weights"];
        let sp = 1.0 - w["kept_elems"].as_f64().unwrap() / w["candidates_elems"].as_f64().unwrap();
        assert!(sp >= last, "β={beta}: sparsity {sp} < {last}");
        last = sp;
    }
}
