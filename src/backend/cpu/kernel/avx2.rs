//! AVX2+FMA micro-kernels: a 6 x 16 block of `C` in 12 ymm registers.
//!
//! Per step of the depth: two 8-float panel loads, six broadcasts of `A`,
//! 12 FMAs (6 cycles on two FMA units). 12 accumulators, 2 panel registers
//! and 1 broadcast use 15 of the 16 ymm registers; the epilogue's running
//! maximum and argmax live outside the depth loop.

use std::arch::x86_64::*;

use super::{with_rows, Operands};

/// Columns per panel.
pub const NR: usize = 16;
/// Rows per register block.
const MR: usize = 6;

/// `R` rows x `NR` columns of `bias + A B`, accumulated in registers.
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(row0 + R, NR)` must hold.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate<const R: usize>(op: &Operands<'_>, row0: usize) -> [[__m256; 2]; R] {
    let bias = op.bias.as_ptr();
    let init = [_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))];
    let mut acc = [init; R];
    let a = op.a.as_ptr().add(row0 * op.lda);
    let mut b = op.panel.as_ptr();
    for kk in 0..op.k {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_ps(*a.add(i * op.lda + kk));
            acc_row[0] = _mm256_fmadd_ps(x, b0, acc_row[0]);
            acc_row[1] = _mm256_fmadd_ps(x, b1, acc_row[1]);
        }
        b = b.add(NR);
    }
    acc
}

/// Folds rows `row0..row0 + R` into the running maximum and its row.
/// Strictly greater wins, so a tie keeps the earlier row.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn merge<const R: usize>(
    acc: &[[__m256; 2]; R],
    row0: usize,
    best: &mut [__m256; 2],
    arg: &mut [__m256; 2],
) {
    for (i, row) in acc.iter().enumerate() {
        // The row index travels as the bits of an int32 in a float lane.
        let index = _mm256_castsi256_ps(_mm256_set1_epi32((row0 + i) as i32));
        for half in 0..2 {
            let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(row[half], best[half]);
            best[half] = _mm256_blendv_ps(best[half], row[half], greater);
            arg[half] = _mm256_blendv_ps(arg[half], index, greater);
        }
    }
}

/// See [`super::max_rows`].
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(rows, NR)` must hold and
/// `best` and `arg` hold at least `NR` values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn max_rows(op: Operands<'_>, rows: usize, best: &mut [f32], arg: &mut [i32]) {
    let mut top = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    let mut at = [_mm256_setzero_ps(); 2];
    let mut row0 = 0;
    while row0 + MR <= rows {
        merge(&accumulate::<MR>(&op, row0), row0, &mut top, &mut at);
        row0 += MR;
    }
    with_rows!(
        rows - row0,
        R => merge(&accumulate::<R>(&op, row0), row0, &mut top, &mut at),
        [1 2 3 4 5]
    );
    _mm256_storeu_ps(best.as_mut_ptr(), top[0]);
    _mm256_storeu_ps(best.as_mut_ptr().add(8), top[1]);
    _mm256_storeu_ps(arg.as_mut_ptr().cast(), at[0]);
    _mm256_storeu_ps(arg.as_mut_ptr().add(8).cast(), at[1]);
}

/// Lanes `0..n` of an 8-lane store mask (all bits set = store).
#[target_feature(enable = "avx2")]
fn lane_mask(n: usize) -> __m256i {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), lanes)
}

/// Stores `R` rows, ReLU applied if asked; masked-off lanes are not touched.
///
/// # Safety
/// The CPU must have avx2 and fma; the enabled lanes of rows `0..R` of `c`
/// (`ldc` apart) must be valid for writes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn write<const R: usize>(
    acc: &[[__m256; 2]; R],
    c: *mut f32,
    ldc: usize,
    relu: bool,
    masks: [__m256i; 2],
) {
    let zero = _mm256_setzero_ps();
    for (i, row) in acc.iter().enumerate() {
        for half in 0..2 {
            // max(0, x) with x second, so a NaN stays NaN.
            let v = if relu {
                _mm256_max_ps(zero, row[half])
            } else {
                row[half]
            };
            // wrapping_add: the second half's address may lie past `c` when
            // its mask is empty, and is then never dereferenced.
            _mm256_maskstore_ps(c.wrapping_add(i * ldc + 8 * half), masks[half], v);
        }
    }
}

/// See [`super::gemm`]: `C[i * ldc + col]` for `i < rows`, `col < cols`.
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(rows, NR)` must hold,
/// `cols <= NR` and `c.len() >= (rows - 1) * ldc + cols`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn store(
    op: Operands<'_>,
    rows: usize,
    relu: bool,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(8))];
    let c = c.as_mut_ptr();
    let mut row0 = 0;
    while row0 + MR <= rows {
        write(
            &accumulate::<MR>(&op, row0),
            c.add(row0 * ldc),
            ldc,
            relu,
            masks,
        );
        row0 += MR;
    }
    with_rows!(
        rows - row0,
        R => write(&accumulate::<R>(&op, row0), c.add(row0 * ldc), ldc, relu, masks),
        [1 2 3 4 5]
    );
}
