//! Writing large outputs past the caches.
//!
//! The embedding gradient is `V x D` floats (15 MB at the bench shape) that
//! every backward must rewrite whole, and only the optimiser reads later.
//! Ordinary stores would first read every line from memory and then keep it
//! in the caches, evicting the backward's own working set (the conv taps);
//! streaming (non-temporal) stores write whole lines straight to memory.
//! They need 16-byte alignment and are weakly ordered, hence the aligned
//! body with plain head and tail, and [`fence`] before others may read.

/// Writes `src` (or zeros) into `dst` with streaming stores where aligned.
/// `src`, when given, is as long as `dst`.
#[inline(always)]
pub fn store(dst: &mut [f32], src: Option<&[f32]>) {
    let value = |i: usize| src.map_or(0.0, |s| s[i]);

    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_setzero_ps, _mm_stream_ps};

        let head = dst.as_ptr().align_offset(16).min(dst.len());
        let body_end = head + (dst.len() - head) / 4 * 4;
        for (i, slot) in dst[..head].iter_mut().enumerate() {
            *slot = value(i);
        }
        for i in (head..body_end).step_by(4) {
            // SAFETY: SSE is part of x86-64; `src` is as long as `dst`, and
            // i + 4 <= dst.len().
            let v = unsafe {
                match src {
                    Some(s) => _mm_loadu_ps(s.as_ptr().add(i)),
                    None => _mm_setzero_ps(),
                }
            };
            // SAFETY: dst[i..i + 4] is in bounds and 16-byte aligned (i is
            // past the head, in steps of 4 floats); SSE is part of x86-64.
            unsafe { _mm_stream_ps(dst.as_mut_ptr().add(i), v) };
        }
        for (i, slot) in dst.iter_mut().enumerate().skip(body_end) {
            *slot = value(i);
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    for (i, slot) in dst.iter_mut().enumerate() {
        *slot = value(i);
    }
}

/// Orders the streaming stores before anything that follows.
#[inline(always)]
pub fn fence() {
    // SAFETY: SSE is part of x86-64.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_every_element_at_every_alignment() {
        let src: Vec<f32> = (0..40).map(|i| i as f32 + 0.5).collect();
        for start in 0..4 {
            for len in [0, 1, 3, 4, 7, 16, 33] {
                let mut buf = [f32::NAN; 40];
                store(&mut buf[start..start + len], Some(&src[..len]));
                fence();
                assert_eq!(&buf[start..start + len], &src[..len]);
                assert!(buf[..start]
                    .iter()
                    .chain(&buf[start + len..])
                    .all(|v| v.is_nan()));
                store(&mut buf[start..start + len], None);
                fence();
                assert!(buf[start..start + len].iter().all(|&v| v == 0.0));
            }
        }
    }
}
