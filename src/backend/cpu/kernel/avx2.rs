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
/// Depth per block of the max epilogue's product: a 128 x 16 panel block is
/// 8 KB.
const KC: usize = 128;

/// `init + A B` for `R` rows x `NR` columns, accumulated in registers.
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(row0 + R, NR)` must hold.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate<const R: usize>(
    op: &Operands<'_>,
    row0: usize,
    init: [[__m256; 2]; R],
) -> [[__m256; 2]; R] {
    let mut acc = init;
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

/// The bias, as the starting value of every row.
///
/// # Safety
/// The CPU must have avx2; `op.bias` holds `NR` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_rows<const R: usize>(op: &Operands<'_>) -> [[__m256; 2]; R] {
    let bias = op.bias.as_ptr();
    [[_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))]; R]
}

/// The running maximum over rows and the row that reached it, per column;
/// the row index travels as the bits of an int32 in a float lane.
struct Top {
    best: [__m256; 2],
    arg: [__m256; 2],
}

/// Folds rows `row0..row0 + R` into the running maximum and its row.
/// Strictly greater wins, so a tie keeps the earlier row.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn merge<const R: usize>(acc: &[[__m256; 2]; R], row0: usize, top: &mut Top) {
    for (i, row) in acc.iter().enumerate() {
        let index = _mm256_castsi256_ps(_mm256_set1_epi32((row0 + i) as i32));
        let halves = row.iter().zip(top.best.iter_mut()).zip(top.arg.iter_mut());
        for ((&z, best), arg) in halves {
            let greater = _mm256_cmp_ps::<_CMP_GT_OQ>(z, *best);
            *best = _mm256_blendv_ps(*best, z, greater);
            *arg = _mm256_blendv_ps(*arg, index, greater);
        }
    }
}

/// One depth block of rows `row0..row0 + R`: starts from the bias (first
/// block) or the partial sums, and ends in the maximum (last block) or the
/// partial sums.
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(row0 + R, NR)` must hold and
/// `partial` holds `(row0 + R) * NR` floats.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn depth_block<const R: usize>(
    op: &Operands<'_>,
    row0: usize,
    (first, last): (bool, bool),
    partial: *mut f32,
    top: &mut Top,
) {
    let rows = partial.add(row0 * NR);
    let init = if first {
        bias_rows::<R>(op)
    } else {
        std::array::from_fn(|i| {
            let row = rows.add(i * NR);
            [_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8))]
        })
    };
    let acc = accumulate::<R>(op, row0, init);
    if last {
        merge(&acc, row0, top);
    } else {
        for (i, acc_row) in acc.iter().enumerate() {
            let row = rows.add(i * NR);
            _mm256_storeu_ps(row, acc_row[0]);
            _mm256_storeu_ps(row.add(8), acc_row[1]);
        }
    }
}

/// See [`super::max_rows`]. The depth is split into blocks of [`KC`] so
/// the panel's block stays in L1 while every row block passes over it;
/// between blocks, the sums wait in `partial`.
///
/// # Safety
/// The CPU must have avx2 and fma; `op.check(rows, NR)` must hold, `best`
/// and `arg` hold at least `NR` values and `partial` at least `rows * NR`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn max_rows(
    op: Operands<'_>,
    rows: usize,
    partial: &mut [f32],
    best: &mut [f32],
    arg: &mut [i32],
) {
    let mut top = Top {
        best: [_mm256_set1_ps(f32::NEG_INFINITY); 2],
        arg: [_mm256_setzero_ps(); 2],
    };
    let partial = partial.as_mut_ptr();
    let mut k0 = 0;
    loop {
        let depth = KC.min(op.k - k0);
        let stages = (k0 == 0, k0 + depth == op.k);
        let block = Operands {
            a: &op.a[k0..],
            k: depth,
            panel: &op.panel[k0 * NR..],
            ..op
        };
        let mut row0 = 0;
        while row0 < rows {
            let count = MR.min(rows - row0);
            with_rows!(
                count,
                R => depth_block::<R>(&block, row0, stages, partial, &mut top),
                [1 2 3 4 5 6]
            );
            row0 += count;
        }
        if stages.1 {
            break;
        }
        k0 += depth;
    }
    _mm256_storeu_ps(best.as_mut_ptr(), top.best[0]);
    _mm256_storeu_ps(best.as_mut_ptr().add(8), top.best[1]);
    _mm256_storeu_ps(arg.as_mut_ptr().cast(), top.arg[0]);
    _mm256_storeu_ps(arg.as_mut_ptr().add(8).cast(), top.arg[1]);
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

/// Rows `row0..row0 + R` of `C`, stored from `c`.
///
/// # Safety
/// As for [`store`], for these rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_block<const R: usize>(
    op: &Operands<'_>,
    row0: usize,
    relu: bool,
    c: *mut f32,
    ldc: usize,
    masks: [__m256i; 2],
) {
    let acc = accumulate::<R>(op, row0, bias_rows(op));
    write(&acc, c, ldc, relu, masks);
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
    while row0 < rows {
        let count = MR.min(rows - row0);
        with_rows!(
            count,
            R => store_block::<R>(&op, row0, relu, c.add(row0 * ldc), ldc, masks),
            [1 2 3 4 5 6]
        );
        row0 += count;
    }
}
