//! Seeded input data, reproducible bit for bit on every platform: splitmix64, normal samples as
//! an Irwin–Hall sum of 12 uniforms (only additions of exactly representable numbers), integers
//! by the input's name and the graph's bounds ([`super::super::bounds`]).

use super::InputData;
use crate::model::tensor::{dt, dtype_name};
use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};

/// splitmix64: tiny, fast, and identical everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    /// Approximately N(0, 1): Irwin–Hall sum of 12 uniforms minus 6 (mean 0, variance 1,
    /// support [-6, 6]). Pure IEEE additions: bit-identical on every platform.
    pub fn normal(&mut self) -> f64 {
        let mut s = 0.0;
        for _ in 0..12 {
            s += self.uniform();
        }
        s - 6.0
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // 128-bit multiply-shift (Lemire); the tiny bias is irrelevant here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// FNV-1a, so each input gets its own stream from one seed.
fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum IntKind {
    /// all ones (attention masks)
    Ones,
    /// [0, n)
    Below(u64),
    /// 0, 1, 2, ... along the last axis (position ids)
    Arange,
    /// A name that says nothing: [0, bound) when the graph bounds it (the rows of the table it
    /// indexes, the values a one-hot encoding of it matches), else 0/1.
    Unnamed,
}

fn int_kind(name: &str) -> IntKind {
    let l = name.to_ascii_lowercase();
    if l.contains("mask") {
        IntKind::Ones
    } else if l.contains("position") {
        IntKind::Arange
    } else if l.contains("token_type") || l.contains("segment") {
        IntKind::Below(2)
    } else if l.contains("ids") || l.contains("token") {
        IntKind::Below(100)
    } else {
        IntKind::Unnamed
    }
}

/// Seeded data for one input; integers follow the input's name ([`int_kind`]), kept below `bound`
/// (the rows of the table it indexes, the values it is one-hot compared with) when there is one;
/// an input whose name says nothing spans that bound.
pub(super) fn generate(name: &str, elem: i32, shape: &[usize], seed: u64, bound: Option<u64>) -> Result<InputData> {
    let n: usize = shape.iter().product();
    let mut rng = SplitMix64::new(seed ^ name_hash(name));
    let sh = IxDyn(shape);
    let ints = || -> Vec<i64> {
        let mut rng = rng.clone();
        let cap = |k: u64| bound.map_or(k, |b| k.min(b)).max(1);
        match int_kind(name) {
            IntKind::Ones => vec![1; n],
            IntKind::Below(k) => (0..n).map(|_| rng.below(cap(k)) as i64).collect(),
            IntKind::Unnamed => (0..n).map(|_| rng.below(bound.unwrap_or(2).max(1)) as i64).collect(),
            IntKind::Arange => {
                let last = shape.last().copied().unwrap_or(1).max(1) as u64;
                (0..n).map(|i| (i as u64 % cap(last)) as i64).collect()
            }
        }
    };
    let arr = |v: Vec<i64>| ArrayD::from_shape_vec(sh.clone(), v).context("shape");
    Ok(match elem {
        dt::FLOAT => InputData::F32(ArrayD::from_shape_vec(sh.clone(), (0..n).map(|_| rng.normal() as f32).collect())?),
        dt::DOUBLE => InputData::F64(ArrayD::from_shape_vec(sh.clone(), (0..n).map(|_| rng.normal()).collect())?),
        dt::FLOAT16 => InputData::F16(ArrayD::from_shape_vec(
            sh.clone(),
            (0..n).map(|_| half::f16::from_f64(rng.normal())).collect(),
        )?),
        dt::INT64 => InputData::I64(arr(ints())?),
        dt::INT32 => InputData::I32(arr(ints())?.mapv(|x| x as i32)),
        dt::INT8 => InputData::I8(arr(ints())?.mapv(|x| x as i8)),
        dt::UINT8 => InputData::U8(arr(ints())?.mapv(|x| x as u8)),
        dt::BOOL => InputData::Bool(arr(ints())?.mapv(|x| x != 0)),
        other => bail!("input '{name}': cannot generate data of type {}", dtype_name(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_stable() {
        let mut r = SplitMix64::new(0);
        // Reference values of splitmix64 with seed 0.
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(42);
        let v: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var - 1.0).abs() < 0.05, "{var}");
    }
}
