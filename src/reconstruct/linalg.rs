//! Dense linear algebra of reconstruction: running normal equations (Gram matrices in f32 and
//! f64) and ridge least squares. Pure math on `faer` (Cholesky); nothing here knows about ONNX.
//! The OBS update under a fixed mask is [`super::obs_factor`].
//!
//! Determinism: every product runs through faer with a fixed split of the work, so the same
//! inputs on the same machine give bit-identical results.

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::solvers::Solve;
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};

/// Running normal equations of y ≈ Xᵀ z over rows: z has `p` features, y has `q` targets.
/// G = Σ z zᵀ, C = Σ z yᵀ, yy = Σ ‖y‖².
#[derive(Clone, Debug)]
pub struct Normal {
    pub g: Mat<f64>,
    pub c: Mat<f64>,
    pub yy: f64,
    pub rows: usize,
}

impl Normal {
    pub fn new(p: usize, q: usize) -> Self {
        Normal { g: Mat::zeros(p, p), c: Mat::zeros(p, q), yy: 0.0, rows: 0 }
    }

    pub fn p(&self) -> usize {
        self.g.nrows()
    }

    /// Add the rows of `z` (rows × p) with their targets `y` (rows × q).
    pub fn add(&mut self, z: MatRef<'_, f64>, y: MatRef<'_, f64>) {
        assert_eq!(z.nrows(), y.nrows());
        assert_eq!(z.ncols(), self.p());
        assert_eq!(y.ncols(), self.c.ncols());
        if z.nrows() == 0 {
            return;
        }
        gram_add(self.g.as_mut(), z, 1.0);
        matmul(self.c.as_mut(), Accum::Add, z.transpose(), y, 1.0, par());
        let mut s = 0.0;
        for j in 0..y.ncols() {
            for i in 0..y.nrows() {
                let v = y[(i, j)];
                s += v * v;
            }
        }
        self.yy += s;
        self.rows += z.nrows();
    }

    /// Σ ‖y − Xᵀ z‖² over the rows added, for a candidate X (p × q):
    /// yy − 2 tr(Xᵀ C) + tr(Xᵀ G X).
    pub fn sse(&self, x: MatRef<'_, f64>) -> f64 {
        let gx = &self.g * x;
        let mut t1 = 0.0;
        let mut t2 = 0.0;
        for j in 0..x.ncols() {
            for i in 0..x.nrows() {
                t1 += x[(i, j)] * self.c[(i, j)];
                t2 += x[(i, j)] * gx[(i, j)];
            }
        }
        (self.yy - 2.0 * t1 + t2).max(0.0)
    }
}

/// [`Normal`] accumulated in f32, as SparseGPT accumulates H: half the cost of f64 products and
/// far below the damping in precision. For the rows a solve is fitted on; rows that judge
/// candidates (by differences of large sums) stay in f64. ‖y‖² and the column sums Σz, Σy are
/// kept in f64 (a mean or a bias column must not lose them).
#[derive(Clone, Debug)]
pub struct Normal32 {
    g: Mat<f32>,
    c: Mat<f32>,
    yy: f64,
    rows: usize,
    sz: Vec<f64>,
    sy: Vec<f64>,
}

impl Normal32 {
    pub fn new(p: usize, q: usize) -> Self {
        Normal32 { g: Mat::zeros(p, p), c: Mat::zeros(p, q), yy: 0.0, rows: 0, sz: vec![0.0; p], sy: vec![0.0; q] }
    }

    /// Add `r` rows: z (r × p) and y (r × q), row-major.
    pub fn add(&mut self, z: &[f64], y: &[f64], r: usize) {
        let (p, q) = (self.sz.len(), self.sy.len());
        assert_eq!((z.len(), y.len()), (r * p, r * q));
        if r == 0 {
            return;
        }
        for row in z.chunks_exact(p.max(1)) {
            for (s, v) in self.sz.iter_mut().zip(row) {
                *s += v;
            }
        }
        for row in y.chunks_exact(q.max(1)) {
            for (s, v) in self.sy.iter_mut().zip(row) {
                *s += v;
                self.yy += v * v;
            }
        }
        let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let y32: Vec<f32> = y.iter().map(|&v| v as f32).collect();
        let zm = MatRef::from_row_major_slice(&z32, r, p);
        let ym = MatRef::from_row_major_slice(&y32, r, q);
        gram_add_lower(self.g.as_mut(), zm, 1.0f32);
        matmul(self.c.as_mut(), Accum::Add, zm.transpose(), ym, 1.0f32, par());
        self.rows += r;
    }

    /// The f64 normal equations, and the f64 column sums (Σz, Σy).
    pub fn into_normal(self) -> (Normal, Vec<f64>, Vec<f64>) {
        // G holds its lower triangle (see [`gram_add_lower`]).
        let g = Mat::from_fn(self.g.nrows(), self.g.ncols(), |a, b| self.g[(a.max(b), a.min(b))] as f64);
        let c = Mat::from_fn(self.c.nrows(), self.c.ncols(), |a, b| self.c[(a, b)] as f64);
        (Normal { g, c, yy: self.yy, rows: self.rows }, self.sz, self.sy)
    }
}

fn par() -> Par {
    Par::rayon(0)
}

/// G += zᵀ z (G symmetric, p × p; z: rows × p): only the lower triangle is multiplied, then
/// mirrored, so it costs half a full product (H of a 3072-wide layer on 6,560 rows: 1.59 →
/// 0.80 s). The result is exactly symmetric and deterministic; it may differ from a full product
/// in the last bits. Accumulating over many calls, use [`gram_add_lower`] and mirror once.
pub fn gram_add<T: faer::traits::ComplexField + Copy>(mut g: MatMut<'_, T>, z: MatRef<'_, T>, one: T) {
    gram_add_lower(g.as_mut(), z, one);
    mirror_lower(g);
}

/// The lower triangle (diagonal included) of G += zᵀ z; the strict upper triangle is left as
/// it was. For sums over many chunks of rows: mirroring a 3072-wide G after each chunk of 512
/// rows cost as much as the product.
pub fn gram_add_lower<T: faer::traits::ComplexField + Copy>(g: MatMut<'_, T>, z: MatRef<'_, T>, one: T) {
    let p = g.nrows();
    assert_eq!((g.ncols(), z.ncols()), (p, p));
    if z.nrows() == 0 {
        return;
    }
    triangular::matmul(
        g,
        BlockStructure::TriangularLower,
        Accum::Add,
        z.transpose(),
        BlockStructure::Rectangular,
        z,
        BlockStructure::Rectangular,
        one,
        par(),
    );
}

/// H = Σ z zᵀ over rows given one at a time, accumulated in f32 (as SparseGPT accumulates H:
/// half the cost of f64 products, far below the damping in precision) in products of
/// [`Self::BATCH`] rows: a calibration chunk of a few samples gives a few hundred rows, and one
/// product per chunk ran at half the speed. The batches do not depend on how rows arrive.
pub struct Gram32 {
    g: Mat<f32>,
    buf: Vec<f32>,
    rows: usize,
}

impl Gram32 {
    /// Rows per product.
    pub const BATCH: usize = 2048;

    pub fn new(p: usize) -> Self {
        Gram32 { g: Mat::zeros(p, p), buf: vec![], rows: 0 }
    }

    /// Rows added so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn add_row(&mut self, z: &[f64]) {
        let p = self.g.nrows();
        assert_eq!(z.len(), p);
        self.buf.extend(z.iter().map(|&v| v as f32));
        self.rows += 1;
        if self.buf.len() >= Self::BATCH * p.max(1) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let p = self.g.nrows();
        if p > 0 && !self.buf.is_empty() {
            let z = MatRef::from_row_major_slice(&self.buf, self.buf.len() / p, p);
            gram_add_lower(self.g.as_mut(), z, 1.0f32);
        }
        self.buf.clear();
    }

    /// H in f64, symmetric.
    pub fn finish(mut self) -> Mat<f64> {
        self.flush();
        let g = &self.g;
        Mat::from_fn(g.nrows(), g.ncols(), |a, b| g[(a.max(b), a.min(b))] as f64)
    }
}

/// Copy the strict lower triangle of a square matrix onto the upper one.
pub fn mirror_lower<T: Copy>(mut g: MatMut<'_, T>) {
    for j in 0..g.ncols() {
        for i in j + 1..g.nrows() {
            let v = g[(i, j)];
            g[(j, i)] = v;
        }
    }
}

/// The mean of the diagonal of a square matrix (0 for an empty one).
/// A row-major `rows` × `cols` table transposed (row-major `cols` × `rows`).
pub fn transpose(v: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

pub fn mean_diag(g: MatRef<'_, f64>) -> f64 {
    let n = g.nrows();
    if n == 0 {
        return 0.0;
    }
    (0..n).map(|i| g[(i, i)]).sum::<f64>() / n as f64
}

/// Ridge least squares: X = (G + diag(λ))⁻¹ C. `None` when the system is not positive definite
/// (or not finite).
pub fn ridge(g: MatRef<'_, f64>, c: MatRef<'_, f64>, lambda: &[f64]) -> Option<Mat<f64>> {
    let p = g.nrows();
    assert_eq!(lambda.len(), p);
    let mut a = g.to_owned();
    for (i, l) in lambda.iter().enumerate() {
        a[(i, i)] += l;
    }
    let llt = a.llt(Side::Lower).ok()?;
    let mut x = c.to_owned();
    llt.solve_in_place(x.as_mut());
    let finite = (0..x.ncols()).all(|j| (0..x.nrows()).all(|i| x[(i, j)].is_finite()));
    finite.then_some(x)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        }
    }

    /// ‖(W − W′) X‖² with X given as rows × p.
    pub(crate) fn out_err(w: &[f64], w2: &[f64], out: usize, p: usize, x: &Mat<f64>) -> f64 {
        let mut e = 0.0;
        for r in 0..x.nrows() {
            for o in 0..out {
                let mut d = 0.0;
                for j in 0..p {
                    d += (w[o * p + j] - w2[o * p + j]) * x[(r, j)];
                }
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn ridge_recovers_an_exact_linear_map() {
        let mut r = rng(7);
        let (n, p, q) = (200, 6, 3);
        let z = Mat::from_fn(n, p, |_, _| r());
        let xt = Mat::from_fn(p, q, |_, _| r());
        let y = &z * &xt;
        let mut ne = Normal::new(p, q);
        ne.add(z.as_ref().subrows(0, 120), y.as_ref().subrows(0, 120));
        ne.add(z.as_ref().subrows(120, 80), y.as_ref().subrows(120, 80));
        let x = ridge(ne.g.as_ref(), ne.c.as_ref(), &vec![1e-12; p]).unwrap();
        for i in 0..p {
            for j in 0..q {
                assert!((x[(i, j)] - xt[(i, j)]).abs() < 1e-8);
            }
        }
        assert!(ne.sse(x.as_ref()) < 1e-12);
        assert!(ne.sse(Mat::<f64>::zeros(p, q).as_ref()) > 1.0);
    }

    #[test]
    fn sse_matches_direct_evaluation() {
        let mut r = rng(3);
        let (n, p, q) = (50, 4, 2);
        let z = Mat::from_fn(n, p, |_, _| r());
        let y = Mat::from_fn(n, q, |_, _| r());
        let x = Mat::from_fn(p, q, |_, _| r());
        let mut ne = Normal::new(p, q);
        ne.add(z.as_ref(), y.as_ref());
        let pred = &z * &x;
        let mut direct = 0.0;
        for i in 0..n {
            for j in 0..q {
                direct += (y[(i, j)] - pred[(i, j)]).powi(2);
            }
        }
        assert!((ne.sse(x.as_ref()) - direct).abs() < 1e-9 * direct.max(1.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Rows one at a time, in batches, give the full product.
        #[test]
        fn gram32_equals_the_full_product(seed in 1u64..u64::MAX, rows in 0usize..5000, p in 1usize..6) {
            let mut r = rng(seed);
            let z = Mat::from_fn(rows, p, |_, _| r());
            let mut g = Gram32::new(p);
            for i in 0..rows {
                g.add_row(&(0..p).map(|j| z[(i, j)]).collect::<Vec<_>>());
            }
            prop_assert_eq!(g.rows(), rows);
            let h = g.finish();
            let full = z.transpose() * &z;
            prop_assert!(h == h.transpose().to_owned());
            for i in 0..p {
                for j in 0..p {
                    prop_assert!((h[(i, j)] - full[(i, j)]).abs() <= 1e-4 * (1.0 + full[(i, i)].max(full[(j, j)])));
                }
            }
        }

        /// Ridge never has a higher training error than the zero map plus its penalty.
        #[test]
        fn ridge_fits_at_least_as_well_as_zero(seed in 1u64..u64::MAX, p in 1usize..8, q in 1usize..4) {
            let mut r = rng(seed);
            let z = Mat::from_fn(4 * p + 3, p, |_, _| r());
            let y = Mat::from_fn(4 * p + 3, q, |_, _| r());
            let mut ne = Normal::new(p, q);
            ne.add(z.as_ref(), y.as_ref());
            let x = ridge(ne.g.as_ref(), ne.c.as_ref(), &vec![1e-3; p]).unwrap();
            prop_assert!(ne.sse(x.as_ref()) <= ne.sse(Mat::<f64>::zeros(p, q).as_ref()) + 1e-9);
        }

        /// The half-product Gram matrix is exactly symmetric and equals the full product zᵀz to
        /// rounding, in f64 and f32, also when accumulated over several row chunks.
        #[test]
        fn gram_add_equals_the_full_product(seed in 1u64..u64::MAX, rows in 0usize..90, p in 1usize..70) {
            let mut r = rng(seed);
            let z = Mat::from_fn(rows, p, |_, _| r());
            let mut full = Mat::<f64>::from_fn(p, p, |i, j| if i == j { 1.0 } else { 0.0 });
            let mut half = full.clone();
            for lo in (0..rows).step_by(37) {
                let zc = z.as_ref().subrows(lo, 37.min(rows - lo));
                matmul(full.as_mut(), Accum::Add, zc.transpose(), zc, 1.0, par());
                gram_add(half.as_mut(), zc, 1.0);
            }
            let close = |a: &Mat<f64>, b: &Mat<f64>, tol: f64| {
                (0..p).all(|i| (0..p).all(|j| (a[(i, j)] - b[(i, j)]).abs() <= tol * (1.0 + a[(i, i)].abs().max(a[(j, j)].abs()))))
            };
            prop_assert!(half == half.transpose().to_owned());
            prop_assert!(close(&full, &half, 1e-12));
            let z32 = Mat::from_fn(rows, p, |i, j| z[(i, j)] as f32);
            let mut full32 = Mat::<f32>::zeros(p, p);
            let mut half32 = Mat::<f32>::zeros(p, p);
            matmul(full32.as_mut(), Accum::Add, z32.transpose(), z32.as_ref(), 1.0f32, par());
            gram_add(half32.as_mut(), z32.as_ref(), 1.0f32);
            prop_assert!(half32 == half32.transpose().to_owned());
            let (f, h) = (full32.as_ref().to_owned(), half32.as_ref().to_owned());
            let (f, h) = (Mat::from_fn(p, p, |i, j| f[(i, j)] as f64), Mat::from_fn(p, p, |i, j| h[(i, j)] as f64));
            prop_assert!(close(&f, &h, 1e-5));
        }
    }
}
