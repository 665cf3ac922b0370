//! Register-blocked matrix-product micro-kernels, one set per [`SimdPath`].
//!
//! Every dense product of the CPU backend is `C = A B (+ bias)` with `A`
//! given as rows of `k` floats that start `lda` floats apart, and `B` packed
//! into column panels: panel `p` holds columns `p * NR .. (p + 1) * NR` as `k`
//! rows of `NR` contiguous floats (`[panels][k][NR]`, zero past the last
//! column). A micro-kernel keeps an `MR x NR` block of `C` in registers for
//! the depth: per step it loads one panel row and broadcasts one value of
//! each of the `MR` rows of `A`. For the max epilogue the depth is cut into
//! blocks of 128 so a panel block stays in L1 while all row blocks pass over
//! it; the sums wait in a small buffer between depth blocks.
//!
//! `lda` may be smaller than `k`: the convolution's rows are a text's
//! windows, `k * D` consecutive floats of its gathered embedding rows, one
//! window every `D` floats. So the convolution is this same product over
//! overlapping rows, with no im2col copy.
//!
//! Two epilogues:
//! - [`max_rows`]: the running maximum of every column over all rows of `A`
//!   and the first row reaching it, kept in registers (the max-pool over
//!   windows; the `[windows, F]` activations are never stored);
//! - [`gemm`]: add the bias, optionally apply ReLU, and store `C`.
//!
//! Every element of `C` is one chain of multiply-adds in `k` order started
//! from the bias, whatever the blocking, so results do not depend on how rows
//! are split between threads, and identical rows give identical values (ties
//! in the max are exact).
//!
//! | path     | MR x NR | accumulators   |
//! |----------|---------|----------------|
//! | avx512   | 14 x 32 | 28 zmm of 32   |
//! | avx2+fma |  6 x 16 | 12 ymm of 16   |
//! | scalar   |  4 x 16 | compiler's own |

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use super::simd::{Isa, SimdPath};

/// The widest panel of any path: stack buffers of this size fit them all.
pub const MAX_NR: usize = 32;

/// Expands `$body` with `$rows` as a constant `$r` for each listed value, so
/// a micro-kernel can finish the rows left over after its full `MR` blocks.
macro_rules! with_rows {
    ($rows:expr, $r:ident => $body:expr, [$($n:literal)*]) => {
        match $rows {
            0 => {}
            $($n => {
                const $r: usize = $n;
                $body
            })*
            _ => unreachable!("leftover rows exceed the micro-kernel's height"),
        }
    };
}

pub(crate) use with_rows;

/// The inputs every micro-kernel reads.
#[derive(Clone, Copy)]
pub struct Operands<'a> {
    /// Row `i` of `A` is `a[i * lda..][..k]`.
    pub a: &'a [f32],
    pub lda: usize,
    /// The depth of the product.
    pub k: usize,
    /// One packed panel of `B`: `k` rows of `NR` floats.
    pub panel: &'a [f32],
    /// `NR` floats added to every row of the panel's columns.
    pub bias: &'a [f32],
}

impl Operands<'_> {
    /// Panics unless `rows` rows of `A` and a whole panel of width `nr` are
    /// in bounds: the micro-kernels rely on this to read without checks.
    fn check(&self, rows: usize, nr: usize) {
        assert!(rows > 0, "a product needs at least one row");
        assert!(
            self.a.len() >= (rows - 1) * self.lda + self.k,
            "A is too short"
        );
        assert!(self.panel.len() >= self.k * nr, "the panel is too short");
        assert!(self.bias.len() >= nr, "the bias is too short");
    }
}

/// Columns per packed panel of `B` on this path.
pub fn panel_width(path: SimdPath) -> usize {
    match path.isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::NR,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => avx2::NR,
        _ => scalar::NR,
    }
}

/// Floats needed to pack a `[k, n]` matrix for `path`.
pub fn packed_len(path: SimdPath, k: usize, n: usize) -> usize {
    n.div_ceil(panel_width(path)) * k * panel_width(path)
}

/// Packs the `[k, n]` matrix whose element `(kk, col)` is `value(kk, col)`
/// into `out` as column panels (see the module doc), zero past column `n`.
pub fn pack(
    path: SimdPath,
    k: usize,
    n: usize,
    out: &mut Vec<f32>,
    value: impl Fn(usize, usize) -> f32,
) {
    let nr = panel_width(path);
    let out = super::grow(out, packed_len(path, k, n));
    if k == 0 {
        return;
    }
    for (p, panel) in out.chunks_exact_mut(k * nr).enumerate() {
        for (kk, row) in panel.chunks_exact_mut(nr).enumerate() {
            for (lane, slot) in row.iter_mut().enumerate() {
                let col = p * nr + lane;
                *slot = if col < n { value(kk, col) } else { 0.0 };
            }
        }
    }
}

/// Packs a bias of `n` columns to whole panels, zero past column `n`.
pub fn pack_bias(path: SimdPath, n: usize, out: &mut Vec<f32>, value: impl Fn(usize) -> f32) {
    let nr = panel_width(path);
    let out = super::grow(out, n.div_ceil(nr) * nr);
    for (col, slot) in out.iter_mut().enumerate() {
        *slot = if col < n { value(col) } else { 0.0 };
    }
}

/// For each of the panel's `NR` columns, the maximum over rows `0..rows` of
/// `bias + A B` into `best`, and the first row reaching it into `arg`.
/// Values that are not greater than `-inf` never win (`best` stays `-inf`,
/// `arg` 0). `partial` is scratch of at least `rows * NR` floats.
pub fn max_rows(
    path: SimdPath,
    op: Operands<'_>,
    rows: usize,
    partial: &mut [f32],
    best: &mut [f32],
    arg: &mut [i32],
) {
    let nr = panel_width(path);
    op.check(rows, nr);
    assert!(
        best.len() >= nr && arg.len() >= nr,
        "max outputs shorter than a panel"
    );
    assert!(
        partial.len() >= rows * nr,
        "partial sums shorter than the rows"
    );
    assert!(
        i32::try_from(rows).is_ok(),
        "too many rows for an i32 index"
    );
    match path.isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path proves avx512f; `check` and the assertions above
        // are the bounds the kernel relies on.
        Isa::Avx512 => unsafe { avx512::max_rows(op, rows, partial, best, arg) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path proves avx2 and fma; bounds checked as above.
        Isa::Avx2Fma => unsafe { avx2::max_rows(op, rows, partial, best, arg) },
        _ => scalar::max_rows(op, rows, best, arg),
    }
}

/// A product `C [m, n] = act(A [m, k] B [k, n] + bias)` with `B` and the
/// bias packed by [`pack`] and [`pack_bias`].
#[derive(Clone, Copy)]
pub struct Gemm<'a> {
    pub a: &'a [f32],
    pub lda: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub packed: &'a [f32],
    pub bias: &'a [f32],
    pub relu: bool,
}

/// Rows per parallel task of [`gemm_parallel`]: a multiple of every path's
/// MR, so only the last block has leftover rows.
const ROWS_PER_TASK: usize = 48;

/// Writes `C[i * ldc + col]` for `i < m`, `col < n`; nothing else of `c`.
pub fn gemm(path: SimdPath, g: &Gemm<'_>, c: &mut [f32], ldc: usize) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    let nr = panel_width(path);
    assert!(
        ldc >= g.n && c.len() >= (g.m - 1) * ldc + g.n,
        "C is too short"
    );
    assert!(
        g.packed.len() >= packed_len(path, g.k, g.n),
        "B is not packed whole"
    );
    for p in 0..g.n.div_ceil(nr) {
        let op = Operands {
            a: g.a,
            lda: g.lda,
            k: g.k,
            panel: &g.packed[p * g.k * nr..][..g.k * nr],
            bias: &g.bias[p * nr..],
        };
        op.check(g.m, nr);
        let cols = nr.min(g.n - p * nr);
        let c = &mut c[p * nr..];
        match path.isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the path proves avx512f; `check` and the C assertion
            // above bound every read and write.
            Isa::Avx512 => unsafe { avx512::store(op, g.m, g.relu, c, ldc, cols) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the path proves avx2 and fma; bounds checked as above.
            Isa::Avx2Fma => unsafe { avx2::store(op, g.m, g.relu, c, ldc, cols) },
            _ => scalar::store(op, g.m, g.relu, c, ldc, cols),
        }
    }
}

/// [`gemm`] split over blocks of rows with rayon. Each element is computed
/// exactly as by [`gemm`], so the result is the same for any thread count.
pub fn gemm_parallel(path: SimdPath, g: &Gemm<'_>, c: &mut [f32], ldc: usize) {
    use rayon::prelude::*;

    if g.m == 0 || g.n == 0 {
        return;
    }
    let c = &mut c[..(g.m - 1) * ldc + g.n];
    c.par_chunks_mut(ROWS_PER_TASK * ldc)
        .enumerate()
        .for_each(|(block, c)| {
            let first = block * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(g.m - first);
            let part = Gemm {
                a: &g.a[first * g.lda..],
                m: rows,
                ..*g
            };
            gemm(path, &part, c, ldc);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic, dependency-free stream of values in [-1, 1).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_path_multiplies_like_the_definition() {
        for path in SimdPath::available() {
            for (m, k, n, lda) in [(1, 1, 1, 1), (13, 7, 33, 9), (50, 20, 70, 20), (5, 0, 3, 2)] {
                let a = values(1, m * lda + k);
                let b = values(2, k * n);
                let bias_values = values(3, n);
                let (mut packed, mut bias) = (Vec::new(), Vec::new());
                pack(path, k, n, &mut packed, |kk, col| b[kk * n + col]);
                pack_bias(path, n, &mut bias, |col| bias_values[col]);
                let ldc = n + 2;
                let mut c = vec![f32::NAN; m * ldc];
                let g = Gemm {
                    a: &a,
                    lda,
                    m,
                    k,
                    n,
                    packed: &packed,
                    bias: &bias,
                    relu: true,
                };
                gemm_parallel(path, &g, &mut c, ldc);
                for i in 0..m {
                    for col in 0..ldc {
                        let got = c[i * ldc + col];
                        if col >= n {
                            assert!(got.is_nan(), "{} wrote past column n", path.name());
                            continue;
                        }
                        let mut want = bias_values[col] as f64;
                        for kk in 0..k {
                            want += a[i * lda + kk] as f64 * b[kk * n + col] as f64;
                        }
                        let want = want.max(0.0);
                        let err = (got as f64 - want).abs();
                        assert!(
                            err <= 1e-5 * (1.0 + want.abs()),
                            "{} ({i},{col})",
                            path.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_path_finds_the_first_maximum() {
        for path in SimdPath::available() {
            let nr = panel_width(path);
            for rows in [1, 5, 12, 13, 30] {
                let (k, lda) = (6, 2);
                let mut a = values(4, rows * lda + k);
                // Rows 1 and rows - 1 are copies of row 0: a tie at the top
                // must go to the earliest row.
                let first: Vec<f32> = a[..k].to_vec();
                for r in [1, rows - 1] {
                    if r > 0 {
                        a[r * lda..r * lda + k].copy_from_slice(&first);
                    }
                }
                let b = values(5, k * nr);
                let (mut packed, mut bias) = (Vec::new(), Vec::new());
                pack(path, k, nr, &mut packed, |kk, col| b[kk * nr + col]);
                pack_bias(path, nr, &mut bias, |_| 0.0);
                let op = Operands {
                    a: &a,
                    lda,
                    k,
                    panel: &packed,
                    bias: &bias,
                };
                let (mut best, mut arg) = ([0.0; MAX_NR], [0; MAX_NR]);
                let mut partial = vec![0.0; rows * nr];
                max_rows(
                    path,
                    op,
                    rows,
                    &mut partial,
                    &mut best[..nr],
                    &mut arg[..nr],
                );
                for col in 0..nr {
                    let z = |r: usize| {
                        (0..k)
                            .map(|kk| a[r * lda + kk] as f64 * b[kk * nr + col] as f64)
                            .sum()
                    };
                    let top = (0..rows).map(z).fold(f64::NEG_INFINITY, f64::max);
                    let won = arg[col] as usize;
                    assert!((z(won) - top).abs() < 1e-5, "{} col {col}", path.name());
                    assert!(
                        (best[col] as f64 - top).abs() < 1e-5,
                        "{} col {col}",
                        path.name()
                    );
                    if won != 0 && rows > 1 {
                        assert!(
                            z(0) < top - 1e-6,
                            "tie not given to row 0 ({})",
                            path.name()
                        );
                    }
                }
            }
        }
    }
}
