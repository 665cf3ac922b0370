//! AVX-512F micro-kernels: a 14 x 32 block of `C` in 28 zmm registers.
//!
//! Per step of the depth the kernel loads one 32-float panel row (two zmm)
//! and broadcasts one float from each of 14 rows of `A`, for 28 FMAs. Two
//! FMA units retire those in 14 cycles while the 16 loads need 8, so the
//! loop is bound by the FMA units, as it should be. 28 accumulators, 2
//! panel registers and 1 broadcast use 31 of the 32 registers; the
//! epilogue's running maximum and argmax wait outside the depth loop.
//! (Measured on one core: 14 x 32 ran a few per cent faster than 12 x 32
//! and than 6 x 64.)

use std::arch::x86_64::*;

use super::{with_rows, Operands};

/// Columns per panel.
pub const NR: usize = 32;
/// Rows per register block.
const MR: usize = 14;
/// Depth per block of the max epilogue's product: a 128 x 32 panel block is
/// 16 KB, a third of L1.
const KC: usize = 128;

/// `init + A B` for `R` rows x `NR` columns, accumulated in registers.
///
/// # Safety
/// The CPU must have avx512f; `op.check(row0 + R, NR)` must hold.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate<const R: usize>(
    op: &Operands<'_>,
    row0: usize,
    init: [[__m512; 2]; R],
) -> [[__m512; 2]; R] {
    let mut acc = init;
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

/// The bias, as the starting value of every row.
///
/// # Safety
/// The CPU must have avx512f; `op.bias` holds `NR` values.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn bias_rows<const R: usize>(op: &Operands<'_>) -> [[__m512; 2]; R] {
    let bias = op.bias.as_ptr();
    [[_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16))]; R]
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

/// The running maximum over rows and the row that reached it, per column.
struct Top {
    best: [__m512; 2],
    arg: [__m512i; 2],
}

/// One depth block of rows `row0..row0 + R`: starts from the bias (first
/// block) or the partial sums, and ends in the maximum (last block) or the
/// partial sums.
///
/// # Safety
/// The CPU must have avx512f; `op.check(row0 + R, NR)` must hold and
/// `partial` holds `(row0 + R) * NR` floats.
#[inline]
#[target_feature(enable = "avx512f")]
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
            [_mm512_loadu_ps(row), _mm512_loadu_ps(row.add(16))]
        })
    };
    let acc = accumulate::<R>(op, row0, init);
    if last {
        merge(&acc, row0, &mut top.best, &mut top.arg);
    } else {
        for (i, acc_row) in acc.iter().enumerate() {
            let row = rows.add(i * NR);
            _mm512_storeu_ps(row, acc_row[0]);
            _mm512_storeu_ps(row.add(16), acc_row[1]);
        }
    }
}

/// See [`super::max_rows`]. The depth is split into blocks of [`KC`] so
/// the panel's block stays in L1 while every row block passes over it;
/// between blocks, the sums wait in `partial`.
///
/// # Safety
/// The CPU must have avx512f; `op.check(rows, NR)` must hold, `best` and
/// `arg` hold at least `NR` values and `partial` at least `rows * NR`.
#[target_feature(enable = "avx512f")]
pub unsafe fn max_rows(
    op: Operands<'_>,
    rows: usize,
    partial: &mut [f32],
    best: &mut [f32],
    arg: &mut [i32],
) {
    let mut top = Top {
        best: [_mm512_set1_ps(f32::NEG_INFINITY); 2],
        arg: [_mm512_setzero_si512(); 2],
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
                [1 2 3 4 5 6 7 8 9 10 11 12 13 14]
            );
            row0 += count;
        }
        if stages.1 {
            break;
        }
        k0 += depth;
    }
    _mm512_storeu_ps(best.as_mut_ptr(), top.best[0]);
    _mm512_storeu_ps(best.as_mut_ptr().add(16), top.best[1]);
    _mm512_storeu_si512(arg.as_mut_ptr().cast(), top.arg[0]);
    _mm512_storeu_si512(arg.as_mut_ptr().add(16).cast(), top.arg[1]);
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

/// Rows `row0..row0 + R` of `C`, stored from `c`.
///
/// # Safety
/// As for [`store`], for these rows.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_block<const R: usize>(
    op: &Operands<'_>,
    row0: usize,
    relu: bool,
    c: *mut f32,
    ldc: usize,
    masks: [__mmask16; 2],
) {
    let acc = accumulate::<R>(op, row0, bias_rows(op));
    write(&acc, c, ldc, relu, masks);
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
    while row0 < rows {
        let count = MR.min(rows - row0);
        with_rows!(
            count,
            R => store_block::<R>(&op, row0, relu, c.add(row0 * ldc), ldc, masks),
            [1 2 3 4 5 6 7 8 9 10 11 12 13 14]
        );
        row0 += count;
    }
}
