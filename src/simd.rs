//! CPU dispatch for the streaming passes' loops.
//!
//! [`simd`] runs a closure compiled for AVX2 when the CPU has it, else for the build's baseline
//! (SSE2 on x86-64). The loops it wraps are plain Rust over lanes: wider vectors change their
//! speed, never their results (Rust neither contracts a·b + c into FMA nor reassociates sums), so
//! every figure stays bit-identical across CPUs and thread counts. What runs inside must inline
//! into it to be compiled at that level: [`vectorized!`] wraps an expression in an
//! `#[inline(always)]` closure, and the functions it calls are `#[inline(always)]` loops without
//! closures of their own.

/// Run `f` compiled for AVX2 when the CPU has it (the check is cached by std).
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `vectorized!(expr)`: `expr` evaluated inside [`simd`], in an `#[inline(always)]` closure.
macro_rules! vectorized {
    ($e:expr) => {
        $crate::simd::simd(
            #[inline(always)]
            || $e,
        )
    };
}
pub(crate) use vectorized;

#[cfg(test)]
mod tests {
    use super::simd;

    #[test]
    fn simd_runs_the_closure_once_and_returns_its_value() {
        let mut calls = 0;
        let xs: Vec<f64> = (0..1000).map(|i| i as f64 * 0.37).collect();
        let s = simd(|| {
            calls += 1;
            xs.iter().fold(-0.0, |a, &x| a + x * x)
        });
        assert_eq!(calls, 1);
        // Bit-identical to the same fold outside the dispatch.
        assert_eq!(s.to_bits(), xs.iter().fold(-0.0f64, |a, &x| a + x * x).to_bits());
    }
}
