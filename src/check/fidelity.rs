//! How close two models' outputs are, and classification accuracy.
//!
//! All sums run in f64 in a fixed order, so the numbers are the same on every run.

use anyhow::{bail, Result};
use ndarray::ArrayD;
use serde::{Serialize, Serializer};
use std::path::Path;

/// Finite numbers as numbers, NaN/±inf as `null` (JSON has no spelling for them).
pub(crate) fn finite<S: Serializer>(v: &f64, s: S) -> std::result::Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else {
        s.serialize_none()
    }
}

pub(crate) fn finite_opt<S: Serializer>(v: &Option<f64>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.is_finite() => s.serialize_f64(*x),
        _ => s.serialize_none(),
    }
}

/// Agreement of one output between a reference and another model.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct OutputFidelity {
    pub name: String,
    /// Shape of the reference output.
    pub shape: Vec<usize>,
    /// max |a − b|; +inf when one side is non-finite where the other is not.
    #[serde(serialize_with = "finite")]
    pub max_abs_err: f64,
    /// ‖a − b‖ / ‖a‖ (0 when both are all zero, +inf when only `a` is).
    #[serde(serialize_with = "finite")]
    pub rel_l2_err: f64,
    /// a·b / (‖a‖‖b‖); 1 when identical (also all zero), 0 when only one is all zero; NaN
    /// (null) when non-finite values disagree.
    #[serde(serialize_with = "finite")]
    pub cosine: f64,
    /// Fraction of rows (all axes but the last) whose argmax over the last axis agrees; only for
    /// rank ≥ 2 with at least 2 classes.
    /// For an integer output (`integer`): the fraction of its elements that are equal.
    #[serde(serialize_with = "finite_opt")]
    pub top1_agreement: Option<f64>,
    /// The output holds integers (class ids, indices): `top1_agreement` is the fraction of equal
    /// elements, and the errors and cosine treat the ids as numbers.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub integer: bool,
    /// Why the output could not be compared (shape mismatch, missing output). Numbers are then
    /// NaN (serialised as null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutputFidelity {
    fn failed(name: &str, shape: Vec<usize>, error: String) -> Self {
        OutputFidelity {
            name: name.to_string(),
            shape,
            max_abs_err: f64::NAN,
            rel_l2_err: f64::NAN,
            cosine: f64::NAN,
            top1_agreement: None,
            integer: false,
            error: Some(error),
        }
    }
}

/// The fraction of elements of `a` and `b` that are equal (None when they differ in shape or
/// are empty).
pub fn equal_fraction(a: &ArrayD<f32>, b: &ArrayD<f32>) -> Option<f64> {
    if a.shape() != b.shape() || a.is_empty() {
        return None;
    }
    Some(a.iter().zip(b.iter()).filter(|(x, y)| x == y).count() as f64 / a.len() as f64)
}

/// Index of the largest value of each row of the last axis (first on ties; NaN never wins).
pub fn argmax_rows(a: &ArrayD<f32>) -> Vec<usize> {
    let last = a.shape().last().copied().unwrap_or(1).max(1);
    let flat: Vec<f32> = a.iter().copied().collect();
    flat.chunks(last)
        .map(|row| {
            let mut best = 0;
            let mut bv = f32::NEG_INFINITY;
            let mut seen = false;
            for (i, &v) in row.iter().enumerate() {
                if !v.is_nan() && (!seen || v > bv) {
                    best = i;
                    bv = v;
                    seen = true;
                }
            }
            best
        })
        .collect()
}

fn one(name: &str, a: &ArrayD<f32>, b: &ArrayD<f32>) -> OutputFidelity {
    if a.shape() != b.shape() {
        return OutputFidelity::failed(
            name,
            a.shape().to_vec(),
            format!("shape mismatch: reference {:?}, other {:?}", a.shape(), b.shape()),
        );
    }
    let mut max_abs = 0f64;
    let (mut aa, mut bb, mut ab, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        let (x, y) = (x as f64, y as f64);
        if !(x.is_finite() && y.is_finite()) {
            // Same NaN/inf on both sides is agreement; anything else is an infinite error.
            let same = (x.is_nan() && y.is_nan()) || x == y;
            if !same {
                max_abs = f64::INFINITY;
                dd = f64::INFINITY;
            }
            continue;
        }
        let d = (x - y).abs();
        if d > max_abs {
            max_abs = d;
        }
        aa += x * x;
        bb += y * y;
        ab += x * y;
        dd += d * d;
    }
    let rel = if dd == 0.0 {
        0.0
    } else if aa == 0.0 {
        f64::INFINITY
    } else {
        dd.sqrt() / aa.sqrt()
    };
    let cosine = if dd.is_infinite() {
        f64::NAN
    } else if dd == 0.0 {
        // identical (including both all-zero)
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        // one rounding in the denominator (f32 data: aa·bb cannot overflow f64)
        (ab / (aa * bb).sqrt()).clamp(-1.0, 1.0)
    };
    let top1 = if a.ndim() >= 2 && a.shape().last().copied().unwrap_or(0) >= 2 {
        let (ra, rb) = (argmax_rows(a), argmax_rows(b));
        if ra.is_empty() {
            None
        } else {
            Some(ra.iter().zip(&rb).filter(|(x, y)| x == y).count() as f64 / ra.len() as f64)
        }
    } else {
        None
    };
    OutputFidelity {
        name: name.to_string(),
        shape: a.shape().to_vec(),
        max_abs_err: max_abs,
        rel_l2_err: rel,
        cosine,
        top1_agreement: top1,
        integer: false,
        error: None,
    }
}

/// Compare outputs pairwise. A missing or differently shaped output gives an entry with `error`.
pub fn compare(reference: &[ArrayD<f32>], other: &[ArrayD<f32>], output_names: &[String]) -> Vec<OutputFidelity> {
    let n = reference.len().max(other.len());
    (0..n)
        .map(|i| {
            let name = output_names.get(i).cloned().unwrap_or_else(|| format!("output{i}"));
            match (reference.get(i), other.get(i)) {
                (Some(a), Some(b)) => one(&name, a, b),
                (Some(a), None) => {
                    OutputFidelity::failed(&name, a.shape().to_vec(), "missing in the other model".into())
                }
                (None, Some(b)) => {
                    OutputFidelity::failed(&name, b.shape().to_vec(), "missing in the reference model".into())
                }
                (None, None) => OutputFidelity::failed(&name, vec![], "missing".into()),
            }
        })
        .collect()
}

/// Fraction of rows whose argmax over the last axis equals the label.
pub fn accuracy(logits: &ArrayD<f32>, labels: &[i64]) -> Result<f64> {
    if logits.ndim() == 0 {
        bail!("accuracy: output is a scalar");
    }
    let rows = argmax_rows(logits);
    if rows.len() != labels.len() {
        bail!("accuracy: output {:?} has {} rows but there are {} labels", logits.shape(), rows.len(), labels.len());
    }
    if labels.is_empty() {
        bail!("accuracy: no labels");
    }
    // A label the output has no class for is a mismatch (labels shifted by one, another task's),
    // not a miss: said, not scored 0 %.
    let classes = logits.shape().last().copied().unwrap_or(1);
    if let Some(l) = labels.iter().find(|&&l| l >= classes as i64) {
        bail!("accuracy: label {l}, but the output has {classes} classes (its last axis)");
    }
    // Negative labels are ignored (PyTorch's ignore_index, -100, on padding tokens).
    let counted = labels.iter().filter(|&&l| l >= 0).count();
    if counted == 0 {
        bail!("accuracy: every label is negative (ignored)");
    }
    let hit = rows.iter().zip(labels).filter(|(p, l)| **l >= 0 && **p as i64 == **l).count();
    Ok(hit as f64 / counted as f64)
}

/// Class labels from a `.npy`: integers of any type and shape (flattened), whole-number floats,
/// or float one-hot rows `[N, C]` (their argmax).
pub fn load_labels(path: &Path) -> Result<Vec<i64>> {
    super::inputs::read_labels(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;

    fn arr(shape: &[usize], v: Vec<f32>) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
    }

    /// A label past the classes is an error, not a miss; negative labels are ignored.
    #[test]
    fn labels_outside_the_classes_are_an_error_and_negative_ones_ignored() {
        let logits = arr(&[3, 2], vec![1., 0., 0., 1., 1., 0.]);
        assert_eq!(accuracy(&logits, &[0, 1, 1]).unwrap(), 2.0 / 3.0);
        let e = accuracy(&logits, &[0, 1, 2]).unwrap_err().to_string();
        assert!(e.contains("label 2, but the output has 2 classes"), "{e}");
        assert_eq!(accuracy(&logits, &[0, -100, 0]).unwrap(), 1.0);
        assert!(accuracy(&logits, &[-100, -100, -100]).is_err());
    }

    #[test]
    fn metrics() {
        let a = arr(&[2, 2], vec![1.0, 0.0, 0.0, 1.0]);
        let f = &compare(std::slice::from_ref(&a), std::slice::from_ref(&a), &["y".into()])[0];
        assert_eq!((f.max_abs_err, f.rel_l2_err, f.cosine, f.top1_agreement), (0.0, 0.0, 1.0, Some(1.0)));
        let b = arr(&[2, 2], vec![1.0, 0.0, 2.0, 1.0]);
        let f = &compare(std::slice::from_ref(&a), &[b], &["y".into()])[0];
        assert_eq!(f.max_abs_err, 2.0);
        assert!((f.rel_l2_err - 2.0 / 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(f.top1_agreement, Some(0.5));
        let z = arr(&[2, 2], vec![0.0; 4]);
        let f = &compare(std::slice::from_ref(&z), std::slice::from_ref(&z), &[])[0];
        assert_eq!((f.rel_l2_err, f.cosine), (0.0, 1.0));
        assert_eq!(f.name, "output0");
        let f = &compare(std::slice::from_ref(&a), &[arr(&[4], vec![0.0; 4])], &["y".into()])[0];
        assert!(f.error.as_deref().unwrap_or("").contains("shape mismatch"));
        let j = serde_json::to_string(f).unwrap();
        assert!(j.contains("\"max_abs_err\":null"), "{j}");
        let f = &compare(&[arr(&[3], vec![1.0, 2.0, 3.0])], &[arr(&[3], vec![1.0, 2.0, 3.0])], &[])[0];
        assert_eq!(f.top1_agreement, None);
        let f = &compare(&[arr(&[2], vec![f32::NAN, 1.0])], &[arr(&[2], vec![f32::NAN, 1.0])], &[])[0];
        assert_eq!(f.max_abs_err, 0.0);
        let f = &compare(&[arr(&[2], vec![0.5, 1.0])], &[arr(&[2], vec![f32::NAN, 1.0])], &[])[0];
        assert!(f.max_abs_err.is_infinite());
    }

    #[test]
    fn acc() {
        let l = arr(&[3, 2], vec![0.0, 1.0, 1.0, 0.0, 0.2, 0.1]);
        assert_eq!(accuracy(&l, &[1, 0, 1]).unwrap(), 2.0 / 3.0);
        assert!(accuracy(&l, &[1, 0]).is_err());
    }
}
