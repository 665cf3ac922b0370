//! `polyhead bench`: times the encoder forward and whole training steps on
//! synthetic batches, in the same shape and with the same yardstick as the
//! PyTorch peer's `bench`, so the two outputs compare directly.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::cli::{BackendArg, BenchArgs, Lengths, OptimizerArg};
use crate::data::dataset::Encoded;
use crate::model::file::MAX_SIZE;
use crate::model::init::{check_fits, initial_params};
use crate::model::network::{AdamConfig, HostBatch, Network, Sum};
use crate::model::{Dims, HeadDims, Shape};
use crate::rng::Rng;
use crate::usage;

/// Distinct batches cycled through, as the peer does.
const BATCH_SETS: usize = 4;

pub fn run(args: &BenchArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let sizes = [
        ("--batch", args.batch),
        ("--steps", args.steps),
        ("--max-len", args.max_len),
        ("--embed-dim", args.embed_dim),
        ("--filters", args.filters),
        ("--kernel-size", args.kernel_size),
        ("--hidden", args.hidden),
    ];
    for (flag, value) in sizes {
        if value == 0 {
            usage!("{flag} must be at least 1");
        }
        if value > MAX_SIZE {
            usage!("{flag} must be at most {MAX_SIZE}, got {value}");
        }
    }
    if args.classes.is_empty() || args.classes.contains(&0) {
        usage!("--classes must list at least one task, each with at least 1 class");
    }
    if args.max_len < args.kernel_size {
        usage!(
            "--max-len must be at least --kernel-size ({})",
            args.kernel_size
        );
    }
    if args.vocab_size < 3 {
        usage!("--vocab-size must be at least 3 (padding, unknown and one word)");
    }
    match args.backend {
        BackendArg::Cpu => bench_on(CpuBackend::new(), args),
        BackendArg::Cuda => {
            let backend =
                crate::backend::cuda::open(args.gpu, args.precision.as_deref(), "--precision")?;
            bench_on(backend, args)
        }
    }
}

fn bench_on<B: Backend>(backend: B, args: &BenchArgs) -> Result<()> {
    let dims = Dims {
        vocab: args.vocab_size,
        embed: args.embed_dim,
        filters: args.filters,
        kernel: args.kernel_size,
        heads: args
            .classes
            .iter()
            .map(|&c| HeadDims {
                hidden: args.hidden,
                classes: c,
            })
            .collect(),
    };
    let shape = Shape::new(dims);
    let mut rng = Rng::new(args.seed);
    check_fits(&shape)?;
    let params = initial_params(&shape, &mut rng);
    let describe = backend.describe();
    let mut net = Network::new(backend, shape.clone(), &params, args.batch, args.max_len)?;
    let batches = synthetic_batches(args, &mut rng);
    let weights = vec![1.0; args.classes.len()];
    let adam = AdamConfig {
        lazy_embedding: args.optimizer == OptimizerArg::LazyAdam,
        ..AdamConfig::default()
    };

    let forward = time(args, |i| {
        net.logits(&batches[i % BATCH_SETS])?;
        net.backend.synchronize()
    })?;
    // Training steps gather their batch from a data set already on the
    // device, as `train` does.
    let data = as_data_set(&batches, args.classes.len());
    let texts = net.upload_texts(&data)?;
    let order: Vec<usize> = (0..data.rows()).collect();
    let device_order = net.upload_order(&order)?;
    let step = time(args, |i| {
        let start = (i % BATCH_SETS) * args.batch;
        let rows = &order[start..start + args.batch];
        let mix = &mut Sum;
        net.backward_rows(
            &texts,
            &data,
            &device_order,
            start,
            rows,
            &weights,
            mix,
            None,
        )?;
        net.adam_step(&adam)?;
        net.backend.synchronize()
    })?;

    let (b, l, k) = (
        args.batch as f64,
        args.max_len as f64,
        args.kernel_size as f64,
    );
    let per_window = 2.0 * (args.filters * args.embed_dim * args.kernel_size) as f64;
    let nominal_flop = per_window * b * (l - k + 1.0);
    let windows: usize = batches
        .iter()
        .flat_map(|batch| batch.lengths.iter())
        .map(|&n| (n as usize).max(args.kernel_size) - args.kernel_size + 1)
        .sum();
    let computed_flop = per_window * windows as f64 / BATCH_SETS as f64;

    let summary = |name: &str, times: &[f64]| {
        let median = median(times);
        let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = times.iter().cloned().fold(0.0, f64::max);
        if !args.json {
            crate::show!(
                "{name:8} median {:8.2} ms  (min {:.2}, max {:.2})  {:9.0} ex/s  \
                 conv-fwd {:6.1} GFLOP/s ({:.1} on the windows computed)",
                median * 1e3,
                min * 1e3,
                max * 1e3,
                b / median,
                nominal_flop / median / 1e9,
                computed_flop / median / 1e9,
            );
        }
        json!({
            "median_ms": median * 1e3,
            "min_ms": min * 1e3,
            "max_ms": max * 1e3,
            "examples_per_s": b / median,
            "tokens_per_s": b * l / median,
            "conv_fwd_gflop_per_s": nominal_flop / median / 1e9,
            "computed_conv_gflop_per_s": computed_flop / median / 1e9,
        })
    };
    if !args.json {
        crate::show!(
            "{describe}: B {} L {} D {} F {} k {} H {} V {} classes {:?}, lengths {}, {}",
            args.batch,
            args.max_len,
            args.embed_dim,
            args.filters,
            args.kernel_size,
            args.hidden,
            args.vocab_size,
            args.classes,
            format!("{:?}", args.lengths).to_lowercase(),
            args.optimizer.name()
        );
    }
    let forward = summary("forward", &forward);
    let step = summary("step", &step);
    let result = json!({
        "command": "bench",
        "backend": describe,
        "B": args.batch, "L": args.max_len, "D": args.embed_dim, "F": args.filters,
        "k": args.kernel_size, "H": args.hidden, "V": args.vocab_size,
        "classes": args.classes,
        "lengths": format!("{:?}", args.lengths).to_lowercase(),
        "warmup": args.warmup, "steps": args.steps,
        "optimizer": args.optimizer.name(),
        "threads": rayon::current_num_threads(),
        "cpu_path": crate::backend::cpu::simd_path(),
        "forward": forward,
        "step": step,
    });
    if args.json {
        crate::show!("{result}");
    }
    Ok(())
}

/// Random token batches of the bench shape; with random lengths each text
/// has a length uniform in `[k, L]` and padding after it.
fn synthetic_batches(args: &BenchArgs, rng: &mut Rng) -> Vec<HostBatch> {
    (0..BATCH_SETS)
        .map(|_| {
            let texts: Vec<Vec<i32>> = (0..args.batch)
                .map(|_| {
                    let len = match args.lengths {
                        Lengths::Full => args.max_len,
                        Lengths::Random => {
                            let span = (args.max_len - args.kernel_size + 1) as u64;
                            args.kernel_size + rng.below(span) as usize
                        }
                    };
                    let vocab = (args.vocab_size - 2) as u64;
                    (0..len).map(|_| 2 + rng.below(vocab) as i32).collect()
                })
                .collect();
            let mut batch = HostBatch::default();
            batch.fill(texts.iter().map(Vec::as_slice), args.kernel_size);
            for &classes in &args.classes {
                for _ in 0..args.batch {
                    batch.labels.push(rng.below(classes as u64) as i32);
                }
            }
            batch
        })
        .collect()
}

/// The batches back to back as one data set.
fn as_data_set(batches: &[HostBatch], tasks: usize) -> Encoded {
    let mut data = Encoded {
        tokens: Vec::new(),
        offsets: vec![0],
        labels: vec![Vec::new(); tasks],
        lines: Vec::new(),
        sources: Vec::new(),
    };
    for batch in batches {
        for (b, &len) in batch.lengths.iter().enumerate() {
            data.tokens
                .extend_from_slice(&batch.tokens[b * batch.width..][..len as usize]);
            data.offsets.push(data.tokens.len());
            data.lines.push(data.lines.len() + 1);
            data.sources.push(0);
        }
        for (i, labels) in data.labels.iter_mut().enumerate() {
            labels.extend_from_slice(&batch.labels[i * batch.rows..][..batch.rows]);
        }
    }
    data
}

/// Seconds per call of `run`, for `args.steps` calls after `args.warmup`.
fn time(args: &BenchArgs, mut run: impl FnMut(usize) -> Result<()>) -> Result<Vec<f64>> {
    for i in 0..args.warmup {
        run(i)?;
    }
    let mut times = Vec::with_capacity(args.steps);
    for i in 0..args.steps {
        let started = Instant::now();
        run(i)?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(times)
}

fn median(times: &[f64]) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}
