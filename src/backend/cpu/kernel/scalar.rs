//! Portable micro-kernels: a 4 x 16 block of `C` in arrays the compiler
//! keeps in (baseline SSE) registers. The fallback for CPUs without AVX2,
//! and the reference the vector paths are tested against.

use super::{with_rows, Operands};

/// Columns per panel.
pub const NR: usize = 16;
/// Rows per register block.
const MR: usize = 4;

/// `R` rows x `NR` columns of `bias + A B`.
fn accumulate<const R: usize>(op: &Operands<'_>, row0: usize) -> [[f32; NR]; R] {
    let init: [f32; NR] = op.bias[..NR].try_into().expect("bias holds a panel");
    let mut acc = [init; R];
    let rows: [&[f32]; R] = std::array::from_fn(|i| &op.a[(row0 + i) * op.lda..][..op.k]);
    for (kk, b) in op.panel.chunks_exact(NR).take(op.k).enumerate() {
        for (acc_row, a_row) in acc.iter_mut().zip(&rows) {
            let x = a_row[kk];
            for (c, &w) in acc_row.iter_mut().zip(b) {
                *c += x * w;
            }
        }
    }
    acc
}

fn merge<const R: usize>(acc: &[[f32; NR]; R], row0: usize, best: &mut [f32], arg: &mut [i32]) {
    for (i, row) in acc.iter().enumerate() {
        for ((top, at), &z) in best.iter_mut().zip(arg.iter_mut()).zip(row) {
            if z > *top {
                *top = z;
                *at = (row0 + i) as i32;
            }
        }
    }
}

/// See [`super::max_rows`].
pub fn max_rows(op: Operands<'_>, rows: usize, best: &mut [f32], arg: &mut [i32]) {
    let (best, arg) = (&mut best[..NR], &mut arg[..NR]);
    best.fill(f32::NEG_INFINITY);
    arg.fill(0);
    let mut row0 = 0;
    while row0 + MR <= rows {
        merge(&accumulate::<MR>(&op, row0), row0, best, arg);
        row0 += MR;
    }
    with_rows!(
        rows - row0,
        R => merge(&accumulate::<R>(&op, row0), row0, best, arg),
        [1 2 3]
    );
}

fn write<const R: usize>(acc: &[[f32; NR]; R], c: &mut [f32], ldc: usize, relu: bool, cols: usize) {
    for (i, row) in acc.iter().enumerate() {
        let out = &mut c[i * ldc..][..cols];
        for (o, &z) in out.iter_mut().zip(row) {
            // A NaN stays NaN (`z < 0.0` is false for it).
            *o = if relu && z < 0.0 { 0.0 } else { z };
        }
    }
}

/// See [`super::gemm`]: `C[i * ldc + col]` for `i < rows`, `col < cols`.
pub fn store(op: Operands<'_>, rows: usize, relu: bool, c: &mut [f32], ldc: usize, cols: usize) {
    let mut row0 = 0;
    while row0 + MR <= rows {
        write(
            &accumulate::<MR>(&op, row0),
            &mut c[row0 * ldc..],
            ldc,
            relu,
            cols,
        );
        row0 += MR;
    }
    with_rows!(
        rows - row0,
        R => write(&accumulate::<R>(&op, row0), &mut c[row0 * ldc..], ldc, relu, cols),
        [1 2 3]
    );
}
