//! A training step on the CPU backend allocates nothing once its scratch
//! buffers have grown. One test in its own process, counted by a global
//! allocator wrapper.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use polyhead::backend::cpu::{CpuBackend, SimdPath};
use polyhead::backend::{AdamStep, Backend, TokenBatch};
use polyhead::model::{Dims, HeadDims, Shape};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_training_step_allocates_nothing_once_warm() {
    let shape = Shape::new(Dims {
        vocab: 300,
        embed: 32,
        filters: 40,
        kernel: 3,
        heads: vec![
            HeadDims {
                hidden: 16,
                classes: 5,
            },
            HeadDims {
                hidden: 8,
                classes: 2,
            },
        ],
    });
    let (rows, width) = (70, 20);
    let mut tokens = vec![0i32; rows * width];
    let mut lengths = vec![0i32; rows];
    for b in 0..rows {
        let len = (b * 7) % (width + 1);
        lengths[b] = len as i32;
        for p in 0..len {
            tokens[b * width + p] = 1 + ((b * 31 + p * 17) % 299) as i32;
        }
    }
    let labels: Vec<i32> = (0..2 * rows).map(|i| (i % 3) as i32 - 1).collect();
    let filters = shape.dims.filters;
    let (sum_h, sum_c) = (shape.sum_hidden(), shape.sum_classes());
    let mut params: Vec<f32> = (0..shape.len)
        .map(|i| ((i * 7919) % 200) as f32 / 1000.0 - 0.1)
        .collect();
    params[..shape.dims.embed].fill(0.0);
    let mut grads = vec![0.0; shape.len];
    let (mut m, mut v) = (vec![0.0; shape.len], vec![0.0; shape.len]);
    let (mut h, mut win) = (vec![0.0; rows * filters], vec![0; rows * filters]);
    let (mut hidden, mut logits) = (vec![0.0; rows * sum_h], vec![0.0; rows * sum_c]);
    let (mut dlogits, mut loss_sums) = (vec![0.0; rows * sum_c], vec![0.0; 2]);
    let (mut dh_tasks, mut dh) = (vec![0.0; 2 * rows * filters], vec![0.0; rows * filters]);
    let class_weights = vec![1.0f32; shape.sum_classes()];
    let scales = [0.02f32, 0.03];
    let coeffs = [1.0f32, 1.0];

    // One pool for every path: workers allocate as they start and as they
    // exit, and the counter sees every thread.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // Workers start asynchronously: wait until every one has run something.
    pool.broadcast(|_| ());
    for path in SimdPath::available() {
        let mut cpu = CpuBackend::with_path(path);
        let counted = pool.install(|| {
            let mut step = |n: u64| {
                let batch = TokenBatch {
                    tokens: &tokens,
                    lengths: &lengths,
                    rows,
                    width,
                };
                cpu.encoder_forward(&shape, &params, &batch, &mut h, &mut win)
                    .unwrap();
                cpu.heads_forward(&shape, &params, &h, rows, &mut hidden, &mut logits)
                    .unwrap();
                cpu.softmax_cross_entropy(
                    &shape,
                    &logits,
                    &labels,
                    &class_weights,
                    rows,
                    &scales,
                    &mut dlogits,
                    &mut loss_sums,
                )
                .unwrap();
                cpu.heads_backward(
                    &shape,
                    &params,
                    &h,
                    &hidden,
                    &dlogits,
                    rows,
                    &mut grads,
                    &mut dh_tasks,
                )
                .unwrap();
                cpu.combine_tasks(&dh_tasks, &coeffs, rows * filters, &mut dh)
                    .unwrap();
                cpu.encoder_backward(&shape, &params, &batch, &h, &win, &dh, &mut grads)
                    .unwrap();
                let adam = AdamStep {
                    lr: 1e-3,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    step: n,
                    grad_scale: 1.0,
                };
                cpu.adam(&mut params, &grads, &mut m, &mut v, shape.len, &adam, None)
                    .unwrap();
                assert!(cpu.all_finite(&grads, shape.len).unwrap());
            };
            // The first step grows the backend's scratch; two more in case
            // anything grows on its second use.
            let start = ALLOCATIONS.load(Ordering::Relaxed);
            for n in 1..=3 {
                step(n);
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            for n in 4..=8 {
                step(n);
            }
            (before - start, ALLOCATIONS.load(Ordering::Relaxed) - before)
        });
        let (warm_up, counted) = counted;
        println!(
            "{}: {warm_up} allocations warming up, {counted} in 5 warm steps",
            path.name()
        );
        // The counter does see the backend's allocations.
        assert!(
            warm_up > 0,
            "{}: the allocation counter saw nothing",
            path.name()
        );
        assert_eq!(counted, 0, "{}: allocations in warm steps", path.name());
    }
}
