//! AVX-512F micro-kernels: a 12 x 32 block of `C` in 24 zmm registers.
//!
//! Per step of the depth the kernel loads one 32-float panel row (two zmm)
//! and broadcasts one float from each of 12 rows of `A`, for 24 FMAs. Two
//! FMA units retire those in 12 cycles while the 14 loads need 7, so the
//! loop is bound by the FMA units, as it should be. 24 accumulators + 2
//! panel registers + 1 broadcast leave room for the epilogue's bias,
//! running maximum and argmax without spilling in the inner loop.

use std::arch::x86_64::*;

use super::{with_rows, Operands};

/// Columns per panel.
pub const NR: usize = 32;
/// Rows per register block.
const MR: usize = 12;

/// `R` rows x `NR` columns of `bias + A B`, accumulated in registers.
///
/// # Safety
/// The CPU must have avx512f; `op.check(row0 + R, NR)` must hold.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate<const R: usize>(op: &Operands<'_>, row0: usize) -> [[__m512; 2]; R] {
    let bias = op.bias.as_ptr();
    let init = [_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16))];
    let mut acc = [init; R];
    let a = op.a.as_ptr().add(row0 * op.lda);
    let mut b = op.panel.as_ptr();
    for kk in 0..op.k {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, acc_row) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(i * op.lda + kk));
            acc_row[0] = _mm512_fmadd_ps(x, b0, acc_row[0]);
            acc_row[1] = _mm512_fmadd_ps(x, b1, acc_row[1]);
        }
        b = b.add(NR);
    }
    acc
}

/// Folds rows `row0..row0 + R` into the running maximum and its row.
/// Strictly greater wins, so a tie keeps the earlier row.
#[inline]
#[target_feature(enable = "avx512f")]
fn merge<const R: usize>(
    acc: &[[__m512; 2]; R],
    row0: usize,
    best: &mut [__m512; 2],
    arg: &mut [__m512i; 2],
) {
    for (i, row) in acc.iter().enumerate() {
        let index = _mm512_set1_epi32((row0 + i) as i32);
        for half in 0..2 {
            let greater = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(row[half], best[half]);
            best[half] = _mm512_mask_mov_ps(best[half], greater, row[half]);
            arg[half] = _mm512_mask_mov_epi32(arg[half], greater, index);
        }
    }
}

/// See [`super::max_rows`].
///
/// # Safety
/// The CPU must have avx512f; `op.check(rows, NR)` must hold and `best`
/// and `arg` hold at least `NR` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn max_rows(op: Operands<'_>, rows: usize, best: &mut [f32], arg: &mut [i32]) {
    let mut top = [_mm512_set1_ps(f32::NEG_INFINITY); 2];
    let mut at = [_mm512_setzero_si512(); 2];
    let mut row0 = 0;
    while row0 + MR <= rows {
        merge(&accumulate::<MR>(&op, row0), row0, &mut top, &mut at);
        row0 += MR;
    }
    with_rows!(
        rows - row0,
        R => merge(&accumulate::<R>(&op, row0), row0, &mut top, &mut at),
        [1 2 3 4 5 6 7 8 9 10 11]
    );
    _mm512_storeu_ps(best.as_mut_ptr(), top[0]);
    _mm512_storeu_ps(best.as_mut_ptr().add(16), top[1]);
    _mm512_storeu_si512(arg.as_mut_ptr().cast(), at[0]);
    _mm512_storeu_si512(arg.as_mut_ptr().add(16).cast(), at[1]);
}

/// Lanes `0..n` of a 16-lane mask.
fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// Stores `R` rows, ReLU applied if asked; masked-off lanes are not touched.
///
/// # Safety
/// The CPU must have avx512f; the enabled lanes of rows `0..R` of `c`
/// (`ldc` apart) must be valid for writes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn write<const R: usize>(
    acc: &[[__m512; 2]; R],
    c: *mut f32,
    ldc: usize,
    relu: bool,
    masks: [__mmask16; 2],
) {
    let zero = _mm512_setzero_ps();
    for (i, row) in acc.iter().enumerate() {
        for half in 0..2 {
            // max(0, x) with x second, so a NaN stays NaN.
            let v = if relu {
                _mm512_max_ps(zero, row[half])
            } else {
                row[half]
            };
            // wrapping_add: the second half's address may lie past `c` when
            // its mask is empty, and is then never dereferenced.
            _mm512_mask_storeu_ps(c.wrapping_add(i * ldc + 16 * half), masks[half], v);
        }
    }
}

/// See [`super::gemm`]: `C[i * ldc + col]` for `i < rows`, `col < cols`.
///
/// # Safety
/// The CPU must have avx512f; `op.check(rows, NR)` must hold, `cols <= NR`
/// and `c.len() >= (rows - 1) * ldc + cols`.
#[target_feature(enable = "avx512f")]
pub unsafe fn store(
    op: Operands<'_>,
    rows: usize,
    relu: bool,
    c: &mut [f32],
    ldc: usize,
    cols: usize,
) {
    let masks = [lane_mask(cols), lane_mask(cols.saturating_sub(16))];
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
        [1 2 3 4 5 6 7 8 9 10 11]
    );
}
