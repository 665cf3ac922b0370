//! The CUDA backend against the CPU backend, op by op and for whole
//! training steps, on fresh random inputs (the seed is printed; set
//! `POLYHEAD_TEST_SEED` to replay one). Every GPU output is poisoned with
//! NaN before the call that must write it, every comparison reports its
//! relative error (max |gpu - cpu| / max |cpu|) against the tolerance of
//! its precision, and a non-finite GPU value where the CPU's is finite
//! always fails.
//!
//! Without a CUDA driver or device each test prints
//! `skipped: <reason>` and returns. `POLYHEAD_TEST_GPU` picks the device
//! (default 0).

use half::{bf16, f16};
use polyhead::backend::cpu::CpuBackend;
use polyhead::backend::cuda::{probe_device, CudaBackend, Precision};
use polyhead::backend::{AdamStep, Backend, DeviceTexts, DropoutDraw, LazyRows, TokenBatch};
use polyhead::model::{Dims, HeadDims, Shape};

const FP32_TOLERANCE: f64 = 1e-5;
const HALF_TOLERANCE: f64 = 1e-2;
/// bf16/fp16 forward against the CPU on the same rounded weights: only the
/// summation order differs.
const ROUNDED_TOLERANCE: f64 = 1e-4;

fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
    println!("skipped: {reason}");
}

fn device() -> usize {
    std::env::var("POLYHEAD_TEST_GPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The GPU backend, or `None` after printing why the test is skipped.
fn gpu(precision: Precision) -> Option<CudaBackend> {
    match probe_device(device()) {
        Err(reason) => {
            skip(&reason.to_string());
            None
        }
        Ok(_) => Some(
            CudaBackend::new(device(), precision)
                .unwrap_or_else(|e| panic!("the probe found a device, but: {e:#}")),
        ),
    }
}

// ---------------------------------------------------------------------------
// Random inputs.

struct Rng(u64);

impl Rng {
    fn fresh(test: &str) -> Rng {
        let seed = std::env::var("POLYHEAD_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: seed {seed}");
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let x = self.0;
        (x ^ (x >> 33)).wrapping_mul(0xff51afd7ed558ccd) ^ (x >> 29)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
}

struct Case {
    shape: Shape,
    rows: usize,
    width: usize,
    tokens: Vec<i32>,
    lengths: Vec<i32>,
    params: Vec<f32>,
}

fn heads(list: &[(usize, usize)]) -> Vec<HeadDims> {
    list.iter()
        .map(|&(hidden, classes)| HeadDims { hidden, classes })
        .collect()
}

/// Shapes that exercise the kernels' tiles and tails: the bench shape,
/// odd sizes with several window tiles and filter blocks, a text exactly
/// the kernel wide, and more tasks than one launch of the heads takes.
fn shapes() -> Vec<(&'static str, Dims, usize, usize)> {
    vec![
        (
            "bench",
            Dims {
                vocab: 5000,
                embed: 128,
                filters: 128,
                kernel: 5,
                heads: heads(&[(128, 10), (128, 2)]),
            },
            40,
            128,
        ),
        (
            "odd",
            Dims {
                vocab: 777,
                embed: 100,
                filters: 200,
                kernel: 3,
                heads: heads(&[(37, 7), (5, 3), (64, 2)]),
            },
            19,
            300,
        ),
        (
            "narrow",
            Dims {
                vocab: 300,
                embed: 16,
                filters: 8,
                kernel: 9,
                heads: heads(&[(3, 2)]),
            },
            7,
            9,
        ),
        (
            "many-tasks",
            Dims {
                vocab: 200,
                embed: 32,
                filters: 24,
                kernel: 2,
                heads: (0..35)
                    .map(|i| HeadDims {
                        hidden: 3 + i % 5,
                        classes: 2 + i % 4,
                    })
                    .collect(),
            },
            30,
            16,
        ),
    ]
}

fn make_case(rng: &mut Rng, dims: Dims, rows: usize, width: usize) -> Case {
    let shape = Shape::new(dims);
    let d = &shape.dims;
    let mut params = vec![0.0; shape.len];
    // Row 0 is random too: padding must read it the same way on both sides.
    for v in &mut params[shape.embedding.range()] {
        *v = rng.unit() * 0.5;
    }
    let conv_scale = 1.0 / ((d.embed * d.kernel) as f32).sqrt();
    for v in &mut params[shape.conv_weight.range()] {
        *v = rng.unit() * conv_scale;
    }
    for v in &mut params[shape.conv_bias.range()] {
        *v = rng.unit() * 0.1;
    }
    let head_scale = 1.0 / (d.filters as f32).sqrt();
    for v in &mut params[shape.hidden_weights.offset..] {
        *v = rng.unit() * head_scale;
    }

    // Lengths cover the edges: empty, shorter than k, exactly the width.
    let edges = [0, 1, d.kernel.saturating_sub(1), d.kernel, width];
    let lengths: Vec<i32> = (0..rows)
        .map(|b| if b < edges.len() { edges[b] } else { rng.below(width + 1) } as i32)
        .collect();
    // Positions past a text's end hold stray ids: the length, not the
    // token, must decide what is read.
    let tokens = (0..rows * width)
        .map(|i| {
            let (b, p) = (i / width, i % width);
            if p < lengths[b] as usize && rng.below(10) == 0 {
                rng.below(3) as i32 // some padding and unknown ids inside texts
            } else {
                rng.below(d.vocab) as i32
            }
        })
        .collect();
    Case {
        shape,
        rows,
        width,
        tokens,
        lengths,
        params,
    }
}

/// Embedding and conv weight rounded as the GPU's working copy holds them.
fn rounded(case: &Case, precision: Precision) -> Vec<f32> {
    let mut params = case.params.clone();
    let end = case.shape.conv_weight.offset + case.shape.conv_weight.len;
    for v in &mut params[..end] {
        *v = match precision {
            Precision::Bf16 => bf16::from_f32(*v).to_f32(),
            Precision::Fp16 => f16::from_f32(*v).to_f32(),
            Precision::Fp32 => *v,
        };
    }
    params
}

// ---------------------------------------------------------------------------
// Moving data and comparing.

fn up<B: Backend>(be: &B, data: &[f32]) -> B::Floats {
    let mut buffer = be.floats(data.len()).unwrap();
    be.upload_floats(&mut buffer, data).unwrap();
    buffer
}

fn up_ints<B: Backend>(be: &B, data: &[i32]) -> B::Ints {
    let mut buffer = be.ints(data.len()).unwrap();
    be.upload_ints(&mut buffer, data).unwrap();
    buffer
}

fn down<B: Backend>(be: &B, buffer: &B::Floats, len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    be.download_floats(buffer, &mut out).unwrap();
    out
}

fn down_ints<B: Backend>(be: &B, buffer: &B::Ints, len: usize) -> Vec<i32> {
    let mut out = vec![0; len];
    be.download_ints(buffer, &mut out).unwrap();
    out
}

/// A GPU buffer of `len` NaNs.
fn poisoned(be: &CudaBackend, len: usize) -> <CudaBackend as Backend>::Floats {
    up(be, &vec![f32::NAN; len])
}

/// Relative error of `got` against `want`; fails above `tolerance` or on a
/// non-finite value where `want` is finite.
fn compare(what: &str, got: &[f32], want: &[f32], tolerance: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want
        .iter()
        .fold(0.0f64, |m, &x| m.max((x as f64).abs()))
        .max(1e-30);
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.is_finite() || !w.is_finite(),
            "{what}[{i}]: GPU gave {g} where the CPU gave {w} (output not written?)"
        );
        let err = (g as f64 - w as f64).abs();
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let rel = worst.0 / scale;
    println!(
        "  {what:<28} rel err {rel:.3e} (tolerance {tolerance:.0e}, {} values)",
        got.len()
    );
    assert!(
        rel <= tolerance,
        "{what}: relative error {rel:.3e} above {tolerance:.0e} at [{}]: gpu {} cpu {}",
        worst.1,
        got[worst.1],
        want[worst.1]
    );
    rel
}

fn batch<'a, B: Backend>(
    tokens: &'a B::Ints,
    lengths: &'a B::Ints,
    case: &Case,
) -> TokenBatch<'a, B> {
    TokenBatch {
        tokens,
        lengths,
        rows: case.rows,
        width: case.width,
    }
}

// ---------------------------------------------------------------------------
// Encoder forward.

/// z[b, t, f] in float64 from `params` (the CPU backend's token rules).
fn z64(case: &Case, params: &[f32], b: usize, t: usize, f: usize) -> f64 {
    let d = &case.shape.dims;
    let len = (case.lengths[b].max(0) as usize).min(case.width);
    let emb = &params[case.shape.embedding.range()];
    let w = &params[case.shape.conv_weight.range()];
    let mut z = params[case.shape.conv_bias.offset + f] as f64;
    for j in 0..d.kernel {
        let p = t + j;
        let token = if p < len {
            case.tokens[b * case.width + p] as usize
        } else {
            0
        };
        for dd in 0..d.embed {
            z += w[(f * d.embed + dd) * d.kernel + j] as f64 * emb[token * d.embed + dd] as f64;
        }
    }
    z
}

fn windows(case: &Case, b: usize) -> usize {
    let k = case.shape.dims.kernel;
    (case.lengths[b].max(0) as usize).min(case.width).max(k) - k + 1
}

/// Checks the GPU's h against the CPU's and its windows against the max:
/// a GPU window may differ from the CPU's only where both reach the max
/// to within the tolerance (near ties decided by rounding).
fn check_forward(
    label: &str,
    case: &Case,
    params: &[f32],
    gpu: (&[f32], &[i32]),
    cpu: (&[f32], &[i32]),
    tolerance: f64,
) {
    let filters = case.shape.dims.filters;
    compare(&format!("{label} h"), gpu.0, cpu.0, tolerance);
    let scale = cpu.0.iter().fold(1e-30f64, |m, &x| m.max(x as f64));
    let mut differing = 0;
    for b in 0..case.rows {
        for f in 0..filters {
            let (g, c) = (gpu.1[b * filters + f], cpu.1[b * filters + f]);
            assert!(
                g >= 0 && (g as usize) < windows(case, b),
                "{label}: window {g} of text {b} filter {f} is not one of its windows"
            );
            if g != c {
                differing += 1;
                let (zg, zc) = (
                    z64(case, params, b, g as usize, f),
                    z64(case, params, b, c as usize, f),
                );
                assert!(
                    (zg - zc).abs() <= tolerance * scale,
                    "{label}: text {b} filter {f}: GPU window {g} (z {zg}) vs CPU {c} (z {zc})"
                );
            }
        }
    }
    println!(
        "  {label} windows: {differing} of {} differ, all within a near tie",
        case.rows * filters
    );
}

fn forward_against_cpu(precision: Precision) {
    let Some(mut gpu) = gpu(precision) else {
        return;
    };
    let mut rng = Rng::fresh(&format!("encoder_forward_{precision}"));
    for (name, dims, rows, width) in shapes() {
        println!("shape {name}");
        let case = make_case(&mut rng, dims, rows, width);
        let filters = case.shape.dims.filters;
        let n = case.rows * filters;

        let tokens = up_ints(&gpu, &case.tokens);
        let lengths = up_ints(&gpu, &case.lengths);
        let params = up(&gpu, &case.params);
        let mut h = poisoned(&gpu, n);
        let mut win = up_ints(&gpu, &vec![-7; n]);
        gpu.encoder_forward(
            &case.shape,
            &params,
            &batch(&tokens, &lengths, &case),
            &mut h,
            &mut win,
        )
        .unwrap();
        let (h_gpu, win_gpu) = (down(&gpu, &h, n), down_ints(&gpu, &win, n));

        let mut cpu = CpuBackend::new();
        let reference = |cpu: &mut CpuBackend, params: &Vec<f32>| {
            let (mut h, mut win) = (vec![0.0; n], vec![0; n]);
            let batch = TokenBatch {
                tokens: &case.tokens,
                lengths: &case.lengths,
                rows,
                width,
            };
            cpu.encoder_forward(&case.shape, params, &batch, &mut h, &mut win)
                .unwrap();
            (h, win)
        };
        if precision == Precision::Fp32 {
            let (h_cpu, win_cpu) = reference(&mut cpu, &case.params);
            check_forward(
                "fp32",
                &case,
                &case.params,
                (&h_gpu, &win_gpu),
                (&h_cpu, &win_cpu),
                FP32_TOLERANCE,
            );
        } else {
            let rounded = rounded(&case, precision);
            let (h_cpu, win_cpu) = reference(&mut cpu, &rounded);
            check_forward(
                "rounded weights",
                &case,
                &rounded,
                (&h_gpu, &win_gpu),
                (&h_cpu, &win_cpu),
                ROUNDED_TOLERANCE,
            );
            let (h_cpu, _) = reference(&mut cpu, &case.params);
            compare("fp32 weights h", &h_gpu, &h_cpu, HALF_TOLERANCE);
        }
    }
}

#[test]
fn encoder_forward_fp32_matches_cpu() {
    forward_against_cpu(Precision::Fp32);
}

#[test]
fn encoder_forward_bf16_matches_cpu() {
    forward_against_cpu(Precision::Bf16);
}

#[test]
fn encoder_forward_fp16_matches_cpu() {
    forward_against_cpu(Precision::Fp16);
}

// ---------------------------------------------------------------------------
// Encoder backward.

/// Random h (about a third not positive), valid windows and dh.
fn backward_inputs(rng: &mut Rng, case: &Case) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let filters = case.shape.dims.filters;
    let n = case.rows * filters;
    let h = (0..n)
        .map(|_| rng.unit() + 0.3)
        .map(|x| if x < 0.0 { 0.0 } else { x })
        .collect();
    let win = (0..n)
        .map(|i| rng.below(windows(case, i / filters)) as i32)
        .collect();
    let dh = rng.floats(n, 1.0);
    (h, win, dh)
}

#[test]
fn encoder_backward_matches_cpu() {
    for precision in [Precision::Fp32, Precision::Bf16] {
        let Some(mut gpu) = gpu(precision) else {
            return;
        };
        let mut rng = Rng::fresh(&format!("encoder_backward_{precision}"));
        for (name, dims, rows, width) in shapes() {
            println!("shape {name} ({precision})");
            let shape_len = Shape::new(dims.clone()).len;
            let mut grads = poisoned(&gpu, shape_len);

            // Two batches through one gradient buffer: the second call must
            // leave exactly its own embedding gradient behind.
            for round in 0..2 {
                let case = make_case(&mut rng, dims.clone(), rows, width);
                let (h, win, dh) = backward_inputs(&mut rng, &case);
                let tokens = up_ints(&gpu, &case.tokens);
                let lengths = up_ints(&gpu, &case.lengths);
                let params = up(&gpu, &case.params);
                let (h_d, win_d, dh_d) = (up(&gpu, &h), up_ints(&gpu, &win), up(&gpu, &dh));
                gpu.encoder_backward(
                    &case.shape,
                    &params,
                    &batch(&tokens, &lengths, &case),
                    &h_d,
                    &win_d,
                    &dh_d,
                    &mut grads,
                )
                .unwrap();
                let got = down(&gpu, &grads, shape_len);

                let mut cpu = CpuBackend::new();
                let mut want = vec![0.0; shape_len];
                let cpu_batch = TokenBatch {
                    tokens: &case.tokens,
                    lengths: &case.lengths,
                    rows,
                    width,
                };
                cpu.encoder_backward(
                    &case.shape,
                    &case.params,
                    &cpu_batch,
                    &h,
                    &win,
                    &dh,
                    &mut want,
                )
                .unwrap();
                let s = &case.shape;
                for (what, span) in [
                    ("conv weight grad", s.conv_weight),
                    ("conv bias grad", s.conv_bias),
                    ("embedding grad", s.embedding),
                ] {
                    let label = format!("{what} (batch {round})");
                    compare(
                        &label,
                        &got[span.range()],
                        &want[span.range()],
                        FP32_TOLERANCE,
                    );
                }
                assert!(
                    got[..s.dims.embed].iter().all(|&x| x == 0.0),
                    "padding row has gradient"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Heads, loss, and the small ops.

fn labels_for(rng: &mut Rng, shape: &Shape, rows: usize) -> Vec<i32> {
    let mut labels = Vec::with_capacity(shape.tasks() * rows);
    for head in &shape.dims.heads {
        for _ in 0..rows {
            labels.push(if rng.below(5) == 0 {
                -1
            } else {
                rng.below(head.classes) as i32
            });
        }
    }
    labels
}

#[test]
fn heads_and_loss_match_cpu() {
    let Some(mut gpu) = gpu(Precision::Fp32) else {
        return;
    };
    let mut rng = Rng::fresh("heads_and_loss");
    for (name, dims, rows, width) in shapes() {
        println!("shape {name}");
        let case = make_case(&mut rng, dims, rows, width);
        let s = &case.shape;
        let (f, sum_h, sum_c, tasks) = (s.dims.filters, s.sum_hidden(), s.sum_classes(), s.tasks());
        let h: Vec<f32> = rng
            .floats(rows * f, 1.0)
            .iter()
            .map(|x| x.max(0.0))
            .collect();
        let mut cpu = CpuBackend::new();

        // Forward.
        let params = up(&gpu, &case.params);
        let h_d = up(&gpu, &h);
        let (mut hidden, mut logits) = (poisoned(&gpu, rows * sum_h), poisoned(&gpu, rows * sum_c));
        gpu.heads_forward(s, &params, &h_d, rows, &mut hidden, &mut logits)
            .unwrap();
        let (mut hidden_c, mut logits_c) = (vec![0.0; rows * sum_h], vec![0.0; rows * sum_c]);
        cpu.heads_forward(s, &case.params, &h, rows, &mut hidden_c, &mut logits_c)
            .unwrap();
        compare(
            "hidden",
            &down(&gpu, &hidden, rows * sum_h),
            &hidden_c,
            FP32_TOLERANCE,
        );
        compare(
            "logits",
            &down(&gpu, &logits, rows * sum_c),
            &logits_c,
            FP32_TOLERANCE,
        );

        // Loss on fresh logits (larger, to test the max subtraction).
        let logits_in = rng.floats(rows * sum_c, 8.0);
        let labels = labels_for(&mut rng, s, rows);
        let scales: Vec<f32> = (0..tasks).map(|_| rng.unit().abs() + 0.1).collect();
        let class_weights: Vec<f32> = (0..sum_c).map(|_| rng.unit().abs() + 0.5).collect();
        let logits_d = up(&gpu, &logits_in);
        let labels_d = up_ints(&gpu, &labels);
        let (mut dlogits, mut sums) = (poisoned(&gpu, rows * sum_c), poisoned(&gpu, tasks));
        gpu.softmax_cross_entropy(
            s,
            &logits_d,
            &labels_d,
            &up(&gpu, &class_weights),
            rows,
            &scales,
            &mut dlogits,
            &mut sums,
        )
        .unwrap();
        let (mut dlogits_c, mut sums_c) = (vec![0.0; rows * sum_c], vec![0.0; tasks]);
        cpu.softmax_cross_entropy(
            s,
            &logits_in,
            &labels,
            &class_weights,
            rows,
            &scales,
            &mut dlogits_c,
            &mut sums_c,
        )
        .unwrap();
        compare(
            "dlogits",
            &down(&gpu, &dlogits, rows * sum_c),
            &dlogits_c,
            FP32_TOLERANCE,
        );
        compare(
            "loss sums",
            &down(&gpu, &sums, tasks),
            &sums_c,
            FP32_TOLERANCE,
        );

        // Backward.
        let dlogits_in = rng.floats(rows * sum_c, 0.1);
        let dlogits_d = up(&gpu, &dlogits_in);
        let mut grads = poisoned(&gpu, s.len);
        let mut dh_tasks = poisoned(&gpu, tasks * rows * f);
        gpu.heads_backward(
            s,
            &params,
            &h_d,
            &hidden,
            &dlogits_d,
            rows,
            &mut grads,
            &mut dh_tasks,
        )
        .unwrap();
        let mut grads_c = vec![0.0; s.len];
        let mut dh_tasks_c = vec![0.0; tasks * rows * f];
        cpu.heads_backward(
            s,
            &case.params,
            &h,
            &hidden_c,
            &dlogits_in,
            rows,
            &mut grads_c,
            &mut dh_tasks_c,
        )
        .unwrap();
        let heads = s.hidden_weights.offset..s.len;
        compare(
            "head grads",
            &down(&gpu, &grads, s.len)[heads.clone()],
            &grads_c[heads],
            FP32_TOLERANCE,
        );
        let dh_gpu = down(&gpu, &dh_tasks, tasks * rows * f);
        compare("dh per task", &dh_gpu, &dh_tasks_c, FP32_TOLERANCE);

        // Combining tasks and their Gram matrix.
        let len = rows * f;
        let coeffs: Vec<f32> = (0..tasks).map(|_| rng.unit()).collect();
        let mut dh = poisoned(&gpu, len);
        gpu.combine_tasks(&dh_tasks, &coeffs, len, &mut dh).unwrap();
        let mut dh_c = vec![0.0; len];
        cpu.combine_tasks(&dh_tasks_c, &coeffs, len, &mut dh_c)
            .unwrap();
        compare("combined dh", &down(&gpu, &dh, len), &dh_c, FP32_TOLERANCE);

        let gram = gpu.task_gram(&dh_tasks, tasks, len).unwrap();
        let gram_c = cpu.task_gram(&dh_gpu, tasks, len).unwrap();
        let scale = gram_c.iter().fold(1e-300f64, |m, x| m.max(x.abs()));
        let err = gram
            .iter()
            .zip(&gram_c)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        println!(
            "  {:<28} rel err {err:.3e} (tolerance 1e-12)",
            "task Gram (float64)"
        );
        assert!(
            err <= 1e-12 && gram.iter().all(|x| x.is_finite()),
            "task Gram: {err}"
        );
    }
}

/// Batches gathered from a device-resident data set and dropout masks: both
/// are integer work, so the GPU must give exactly the CPU's values.
#[test]
fn gather_and_dropout_mask_match_cpu_exactly() {
    let Some(mut gpu) = gpu(Precision::Fp32) else {
        return;
    };
    let mut rng = Rng::fresh("gather_dropout");
    let mut cpu = CpuBackend::new();
    let (data_rows, tasks) = (500, 3);
    let mut tokens = Vec::new();
    let mut offsets = vec![0i32];
    for _ in 0..data_rows {
        let len = rng.below(40);
        tokens.extend((0..len).map(|_| 1 + rng.below(999) as i32));
        offsets.push(tokens.len() as i32);
    }
    let labels: Vec<i32> = (0..tasks * data_rows)
        .map(|_| rng.below(6) as i32 - 1)
        .collect();
    let order: Vec<i32> = (0..700).map(|_| rng.below(data_rows) as i32).collect();
    let (start, rows, width) = (rng.below(300), 256, 40);

    let cpu_texts = DeviceTexts::<CpuBackend> {
        tokens: tokens.clone(),
        offsets: offsets.clone(),
        labels: labels.clone(),
        rows: data_rows,
        tasks,
    };
    let (mut t_c, mut l_c, mut y_c) = (vec![0; rows * width], vec![0; rows], vec![0; tasks * rows]);
    cpu.gather_batch(
        &cpu_texts, &order, start, rows, width, &mut t_c, &mut l_c, &mut y_c,
    )
    .unwrap();

    let gpu_texts = DeviceTexts::<CudaBackend> {
        tokens: up_ints(&gpu, &tokens),
        offsets: up_ints(&gpu, &offsets),
        labels: up_ints(&gpu, &labels),
        rows: data_rows,
        tasks,
    };
    let poison = |n: usize| vec![i32::MIN; n];
    let mut t_d = up_ints(&gpu, &poison(rows * width));
    let mut l_d = up_ints(&gpu, &poison(rows));
    let mut y_d = up_ints(&gpu, &poison(tasks * rows));
    let order_d = up_ints(&gpu, &order);
    gpu.gather_batch(
        &gpu_texts, &order_d, start, rows, width, &mut t_d, &mut l_d, &mut y_d,
    )
    .unwrap();
    assert_eq!(down_ints(&gpu, &t_d, rows * width), t_c, "gathered tokens");
    assert_eq!(down_ints(&gpu, &l_d, rows), l_c, "gathered lengths");
    assert_eq!(down_ints(&gpu, &y_d, tasks * rows), y_c, "gathered labels");

    let len = 300_001;
    let draw = DropoutDraw::new(rng.next(), 0.35);
    let mut mask_c = vec![0.0; len];
    cpu.dropout_mask(&mut mask_c, len, &draw).unwrap();
    let mut mask_d = poisoned(&gpu, len);
    gpu.dropout_mask(&mut mask_d, len, &draw).unwrap();
    let got = down(&gpu, &mask_d, len);
    let same = got
        .iter()
        .zip(&mask_c)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "dropout masks differ");
    println!("gather and dropout: identical to the CPU");
}

/// LazyAdam's marks and masked update: the same rows marked, the same bits
/// written, unmarked rows untouched on both backends.
#[test]
fn lazy_adam_matches_cpu() {
    let Some(mut gpu) = gpu(Precision::Fp32) else {
        return;
    };
    let mut rng = Rng::fresh("lazy_adam");
    let (rows, width, tail) = (5003, 96, 12_345);
    let len = rows * width + tail;
    let mut cpu = CpuBackend::new();

    let (mut p, mut m, mut v) = (rng.floats(len, 1.0), vec![0.0; len], vec![0.0; len]);
    let (mut p_d, mut m_d, mut v_d) = (up(&gpu, &p), up(&gpu, &m), up(&gpu, &v));
    let (mut marks, mut marks_d) = (vec![0; rows], up_ints(&gpu, &vec![0; rows]));
    for step in 1..=3u64 {
        let tokens: Vec<i32> = (0..4000).map(|_| rng.below(rows) as i32).collect();
        let stamp = step as i32;
        cpu.mark_rows(&tokens, tokens.len(), &mut marks, stamp)
            .unwrap();
        gpu.mark_rows(&up_ints(&gpu, &tokens), tokens.len(), &mut marks_d, stamp)
            .unwrap();
        assert_eq!(
            down_ints(&gpu, &marks_d, rows),
            marks,
            "marks (step {step})"
        );

        let g = rng.floats(len, 0.01);
        let adam = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            grad_scale: 0.5,
        };
        let lazy_cpu = LazyRows {
            marks: &marks,
            stamp,
            rows,
            width,
        };
        cpu.adam(&mut p, &g, &mut m, &mut v, len, &adam, Some(&lazy_cpu))
            .unwrap();
        let lazy_gpu = LazyRows {
            marks: &marks_d,
            stamp,
            rows,
            width,
        };
        let g_d = up(&gpu, &g);
        gpu.adam(
            &mut p_d,
            &g_d,
            &mut m_d,
            &mut v_d,
            len,
            &adam,
            Some(&lazy_gpu),
        )
        .unwrap();
        let (pg, mg, vg) = (
            down(&gpu, &p_d, len),
            down(&gpu, &m_d, len),
            down(&gpu, &v_d, len),
        );
        compare(&format!("lazy adam params (step {step})"), &pg, &p, 1e-6);
        compare(&format!("lazy adam m (step {step})"), &mg, &m, 1e-6);
        compare(&format!("lazy adam v (step {step})"), &vg, &v, 1e-6);
    }
    let untouched = (0..rows).filter(|&r| marks[r] == 0).count();
    println!("  lazy adam: {untouched} of {rows} rows never marked, matching the CPU");
}

#[test]
fn multiply_adam_and_finite_check_match_cpu() {
    let Some(mut gpu) = gpu(Precision::Fp32) else {
        return;
    };
    let mut rng = Rng::fresh("small_ops");
    let len = 300_001; // not a multiple of any block size
    let mut cpu = CpuBackend::new();

    let (x, mask) = (rng.floats(len, 3.0), rng.floats(len, 1.0));
    let mut x_d = up(&gpu, &x);
    gpu.multiply(&mut x_d, &up(&gpu, &mask), len).unwrap();
    let mut x_c = x.clone();
    cpu.multiply(&mut x_c, &mask, len).unwrap();
    compare("multiply", &down(&gpu, &x_d, len), &x_c, FP32_TOLERANCE);

    let (mut p, mut m, mut v) = (rng.floats(len, 1.0), vec![0.0; len], vec![0.0; len]);
    let (mut p_d, mut m_d, mut v_d) = (up(&gpu, &p), up(&gpu, &m), up(&gpu, &v));
    let mut identical = true;
    for step in 1..=3u64 {
        let g = rng.floats(len, 0.01);
        let adam = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            grad_scale: 0.5,
        };
        gpu.adam(
            &mut p_d,
            &up(&gpu, &g),
            &mut m_d,
            &mut v_d,
            len,
            &adam,
            None,
        )
        .unwrap();
        cpu.adam(&mut p, &g, &mut m, &mut v, len, &adam, None)
            .unwrap();
        let (pg, mg, vg) = (
            down(&gpu, &p_d, len),
            down(&gpu, &m_d, len),
            down(&gpu, &v_d, len),
        );
        compare(&format!("adam params (step {step})"), &pg, &p, 1e-6);
        compare(&format!("adam m (step {step})"), &mg, &m, 1e-6);
        compare(&format!("adam v (step {step})"), &vg, &v, 1e-6);
        identical &= pg == p && mg == m && vg == v;
    }
    println!("  adam bit-identical to the CPU: {identical}");

    // Moments about to sink below the smallest normal float with zero
    // gradients (embedding rows no batch used): both backends store 0.
    let tiny: Vec<f32> = (0..len)
        .map(|_| f32::MIN_POSITIVE * (1.0 + rng.unit().abs()))
        .collect();
    let (mut m, mut v, zero) = (tiny.clone(), tiny.clone(), vec![0.0; len]);
    let (mut m_d, mut v_d) = (up(&gpu, &m), up(&gpu, &v));
    let adam = AdamStep {
        lr: 1e-3,
        beta1: 0.5,
        beta2: 0.5,
        eps: 1e-8,
        step: 4,
        grad_scale: 1.0,
    };
    gpu.adam(
        &mut p_d,
        &up(&gpu, &zero),
        &mut m_d,
        &mut v_d,
        len,
        &adam,
        None,
    )
    .unwrap();
    cpu.adam(&mut p, &zero, &mut m, &mut v, len, &adam, None)
        .unwrap();
    assert!(
        m.iter().all(|&x| x == 0.0),
        "the CPU kept a subnormal moment"
    );
    assert!(
        down(&gpu, &m_d, len) == m,
        "first moments differ near the flush"
    );
    assert!(
        down(&gpu, &v_d, len) == v,
        "second moments differ near the flush"
    );

    let mut values = rng.floats(len, 1.0);
    assert!(gpu.all_finite(&up(&gpu, &values), len).unwrap());
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let at = rng.below(len);
        let keep = values[at];
        values[at] = bad;
        assert!(
            !gpu.all_finite(&up(&gpu, &values), len).unwrap(),
            "{bad} at {at} not seen"
        );
        // Only the first `len - 1` values are asked about when it is last.
        values[at] = keep;
    }
    let mut tail = values.clone();
    tail.push(f32::NAN);
    assert!(
        gpu.all_finite(&up(&gpu, &tail), len).unwrap(),
        "looked past len"
    );
    println!("  all_finite: NaN, +inf, -inf found; a NaN past len ignored");
}

// ---------------------------------------------------------------------------
// Whole training steps.

/// Everything one training step needs on one backend.
struct Step<B: Backend> {
    tokens: B::Ints,
    lengths: B::Ints,
    labels: B::Ints,
    params: B::Floats,
    m: B::Floats,
    v: B::Floats,
    grads: B::Floats,
    h: B::Floats,
    win: B::Ints,
    hidden: B::Floats,
    logits: B::Floats,
    dlogits: B::Floats,
    loss_sums: B::Floats,
    dh_tasks: B::Floats,
    dh: B::Floats,
}

impl<B: Backend> Step<B> {
    fn new(be: &B, case: &Case, labels: &[i32]) -> Step<B> {
        let s = &case.shape;
        let (rows, f) = (case.rows, s.dims.filters);
        Step {
            tokens: up_ints(be, &case.tokens),
            lengths: up_ints(be, &case.lengths),
            labels: up_ints(be, labels),
            params: up(be, &case.params),
            m: be.floats(s.len).unwrap(),
            v: be.floats(s.len).unwrap(),
            grads: be.floats(s.len).unwrap(),
            h: be.floats(rows * f).unwrap(),
            win: be.ints(rows * f).unwrap(),
            hidden: be.floats(rows * s.sum_hidden()).unwrap(),
            logits: be.floats(rows * s.sum_classes()).unwrap(),
            dlogits: be.floats(rows * s.sum_classes()).unwrap(),
            loss_sums: be.floats(s.tasks()).unwrap(),
            dh_tasks: be.floats(s.tasks() * rows * f).unwrap(),
            dh: be.floats(rows * f).unwrap(),
        }
    }

    fn forward(&mut self, be: &mut B, case: &Case) {
        let batch = TokenBatch {
            tokens: &self.tokens,
            lengths: &self.lengths,
            rows: case.rows,
            width: case.width,
        };
        be.encoder_forward(
            &case.shape,
            &self.params,
            &batch,
            &mut self.h,
            &mut self.win,
        )
        .unwrap();
    }

    /// Everything after the encoder forward: heads, loss, backward, Adam.
    fn rest(&mut self, be: &mut B, case: &Case, scales: &[f32], step: u64) {
        let s = &case.shape;
        let rows = case.rows;
        let len = rows * s.dims.filters;
        be.heads_forward(
            s,
            &self.params,
            &self.h,
            rows,
            &mut self.hidden,
            &mut self.logits,
        )
        .unwrap();
        let class_weights = up(be, &vec![1.0; s.sum_classes()]);
        be.softmax_cross_entropy(
            s,
            &self.logits,
            &self.labels,
            &class_weights,
            rows,
            scales,
            &mut self.dlogits,
            &mut self.loss_sums,
        )
        .unwrap();
        be.heads_backward(
            s,
            &self.params,
            &self.h,
            &self.hidden,
            &self.dlogits,
            rows,
            &mut self.grads,
            &mut self.dh_tasks,
        )
        .unwrap();
        be.combine_tasks(&self.dh_tasks, &vec![1.0; s.tasks()], len, &mut self.dh)
            .unwrap();
        let batch = TokenBatch {
            tokens: &self.tokens,
            lengths: &self.lengths,
            rows,
            width: case.width,
        };
        be.encoder_backward(
            s,
            &self.params,
            &batch,
            &self.h,
            &self.win,
            &self.dh,
            &mut self.grads,
        )
        .unwrap();
        let adam = AdamStep {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step,
            grad_scale: 1.0,
        };
        be.adam(
            &mut self.params,
            &self.grads,
            &mut self.m,
            &mut self.v,
            s.len,
            &adam,
            None,
        )
        .unwrap();
    }
}

/// `w_i / n_i` per task with weights 1 (0 for a task with no label).
fn loss_scales(shape: &Shape, labels: &[i32], rows: usize) -> Vec<f32> {
    (0..shape.tasks())
        .map(|i| {
            let n = labels[i * rows..(i + 1) * rows]
                .iter()
                .filter(|&&y| y >= 0)
                .count();
            if n == 0 {
                0.0
            } else {
                1.0 / n as f32
            }
        })
        .collect()
}

fn training_step_against_cpu(precision: Precision) {
    let Some(mut gpu) = gpu(precision) else {
        return;
    };
    let mut rng = Rng::fresh(&format!("training_step_{precision}"));
    for (name, dims, rows, width) in shapes() {
        println!("shape {name} ({precision})");
        let case = make_case(&mut rng, dims, rows, width);
        let s = &case.shape;
        let n = rows * s.dims.filters;
        let labels = labels_for(&mut rng, s, rows);
        let scales = loss_scales(s, &labels, rows);
        let mut cpu = CpuBackend::new();
        let mut on_gpu = Step::new(&gpu, &case, &labels);
        let mut on_cpu = Step::new(&cpu, &case, &labels);

        // The GPU writes every output it owns: poison them all first.
        for buffer in [
            &mut on_gpu.grads,
            &mut on_gpu.h,
            &mut on_gpu.hidden,
            &mut on_gpu.logits,
            &mut on_gpu.dlogits,
            &mut on_gpu.loss_sums,
            &mut on_gpu.dh_tasks,
            &mut on_gpu.dh,
        ] {
            let len = buffer.len();
            gpu.upload_floats(buffer, &vec![f32::NAN; len]).unwrap();
        }

        // Forward: the CPU on the weights the GPU's arithmetic sees.
        on_gpu.forward(&mut gpu, &case);
        let forward_params = rounded(&case, precision);
        let keep = std::mem::replace(&mut on_cpu.params, forward_params.clone());
        on_cpu.forward(&mut cpu, &case);
        on_cpu.params = keep;
        let (h_gpu, win_gpu) = (down(&gpu, &on_gpu.h, n), down_ints(&gpu, &on_gpu.win, n));
        let forward_tol = if precision == Precision::Fp32 {
            FP32_TOLERANCE
        } else {
            ROUNDED_TOLERANCE
        };
        check_forward(
            "step",
            &case,
            &forward_params,
            (&h_gpu, &win_gpu),
            (&on_cpu.h, &on_cpu.win),
            forward_tol,
        );

        // The rest of the step, the CPU continuing from the GPU's forward
        // (checked just above): a near tie or a pooled value at zero that
        // rounding decided differently would otherwise change whole rows
        // of the gradients.
        on_cpu.h = h_gpu;
        on_cpu.win = win_gpu;
        // From here on both sides compute in fp32 from the same inputs.
        gpu_rest_and_compare(
            &mut gpu,
            &mut cpu,
            &mut on_gpu,
            &mut on_cpu,
            &case,
            &scales,
            FP32_TOLERANCE,
        );
    }
}

fn gpu_rest_and_compare(
    gpu: &mut CudaBackend,
    cpu: &mut CpuBackend,
    on_gpu: &mut Step<CudaBackend>,
    on_cpu: &mut Step<CpuBackend>,
    case: &Case,
    scales: &[f32],
    tol: f64,
) {
    let s = &case.shape;
    on_gpu.rest(gpu, case, scales, 1);
    on_cpu.rest(cpu, case, scales, 1);
    let rows = case.rows;
    compare(
        "step logits",
        &down(gpu, &on_gpu.logits, rows * s.sum_classes()),
        &on_cpu.logits,
        tol,
    );
    compare(
        "step loss sums",
        &down(gpu, &on_gpu.loss_sums, s.tasks()),
        &on_cpu.loss_sums,
        tol,
    );
    let grads = down(gpu, &on_gpu.grads, s.len);
    compare("step gradients", &grads, &on_cpu.grads, tol);

    // The first Adam step moves each parameter by about lr * sign(g), so a
    // gradient that is zero up to rounding may legitimately flip its sign:
    // compare the parameters where the CPU's gradient is clearly non-zero.
    let params = down(gpu, &on_gpu.params, s.len);
    let g_scale = on_cpu.grads.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let clear: Vec<usize> = (0..s.len)
        .filter(|&i| on_cpu.grads[i].abs() > 1e-3 * g_scale)
        .collect();
    let got: Vec<f32> = clear.iter().map(|&i| params[i]).collect();
    let want: Vec<f32> = clear.iter().map(|&i| on_cpu.params[i]).collect();
    let untouched: Vec<usize> = (0..s.len).filter(|&i| on_cpu.grads[i] == 0.0).collect();
    println!(
        "  ({} of {} parameters have a clearly non-zero gradient)",
        clear.len(),
        s.len
    );
    compare("step parameters", &got, &want, tol);
    for i in untouched {
        assert_eq!(
            params[i], on_cpu.params[i],
            "parameter {i} moved without gradient"
        );
    }
}

#[test]
fn training_step_fp32_matches_cpu() {
    training_step_against_cpu(Precision::Fp32);
}

#[test]
fn training_step_bf16_matches_cpu() {
    training_step_against_cpu(Precision::Bf16);
}

#[test]
fn training_step_fp16_matches_cpu() {
    training_step_against_cpu(Precision::Fp16);
}

// ---------------------------------------------------------------------------
// Determinism and the working copy.

/// Three steps from one seed; the final parameters, bit for bit.
fn three_steps(precision: Precision, seed_case: &Case, labels: &[i32]) -> Option<Vec<f32>> {
    let mut gpu = gpu(precision)?;
    let scales = loss_scales(&seed_case.shape, labels, seed_case.rows);
    let mut state = Step::new(&gpu, seed_case, labels);
    for step in 1..=3 {
        state.forward(&mut gpu, seed_case);
        state.rest(&mut gpu, seed_case, &scales, step);
    }
    Some(down(&gpu, &state.params, seed_case.shape.len))
}

#[test]
fn two_gpu_runs_with_one_seed_give_identical_bits() {
    for precision in [Precision::Fp32, Precision::Bf16, Precision::Fp16] {
        let mut rng = Rng::fresh(&format!("determinism_{precision}"));
        let (_, dims, rows, width) = shapes().remove(0);
        let case = make_case(&mut rng, dims, rows, width);
        let labels = labels_for(&mut rng, &case.shape, rows);
        let Some(first) = three_steps(precision, &case, &labels) else {
            return;
        };
        let Some(second) = three_steps(precision, &case, &labels) else {
            return;
        };
        let differing = first
            .iter()
            .zip(&second)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!(
            "  {precision}: {differing} of {} parameters differ after 3 steps",
            first.len()
        );
        assert_eq!(differing, 0, "{precision}: two runs with one seed differ");
        assert!(
            first != case.params,
            "{precision}: the steps changed nothing"
        );
    }
}

#[test]
fn adam_keeps_the_working_copy_equal_to_a_fresh_conversion() {
    for precision in [Precision::Bf16, Precision::Fp16] {
        let Some(mut gpu) = gpu(precision) else {
            return;
        };
        let mut rng = Rng::fresh(&format!("working_copy_{precision}"));
        let (_, dims, rows, width) = shapes().remove(1);
        let case = make_case(&mut rng, dims, rows, width);
        let labels = labels_for(&mut rng, &case.shape, rows);
        let scales = loss_scales(&case.shape, &labels, rows);
        let mut state = Step::new(&gpu, &case, &labels);
        state.forward(&mut gpu, &case);
        state.rest(&mut gpu, &case, &scales, 1); // Adam rewrites the copy

        let n = rows * case.shape.dims.filters;
        state.forward(&mut gpu, &case);
        let after_adam = down(&gpu, &state.h, n);
        // Re-uploading the same values marks the copy stale: rebuilt from fp32.
        let params = down(&gpu, &state.params, case.shape.len);
        gpu.upload_floats(&mut state.params, &params).unwrap();
        state.forward(&mut gpu, &case);
        let rebuilt = down(&gpu, &state.h, n);
        let same = after_adam
            .iter()
            .zip(&rebuilt)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        println!("  {precision}: forward after Adam equals forward after a rebuild: {same}");
        assert!(
            same,
            "{precision}: Adam's working copy differs from a fresh conversion"
        );
    }
}

#[test]
fn a_missing_device_is_an_error_not_a_panic() {
    // Holds on every machine: device 4096 does not exist.
    let err = match CudaBackend::new(4096, Precision::Bf16) {
        Ok(_) => panic!("device 4096 opened"),
        Err(e) => e.to_string(),
    };
    println!("  CudaBackend::new(4096): {err}");
    assert!(
        err.starts_with("no CUDA") || err.contains("CUDA driver") || err.contains("NVRTC"),
        "unexpected message: {err}"
    );
}
