//! CPU backend benchmark at the PyTorch peer's bench shape.
//!
//! `cargo bench --bench cpu_ops -- [--threads 2] [--batch 256] [--steps 30]
//! [--warmup 5] [--lengths full|random|both]`
//!
//! Model: V 30000, D 128, F 128, k 5, hidden 128, tasks of 10 and 2 classes;
//! 4 distinct random batches of width 128 cycled, as the peer's `bench`
//! does. Lengths are all 128 (`full`) or uniform in [5, 128] (`random`).
//! Timed: the encoder forward alone, the model forward (encoder + heads),
//! and a whole training step (encoder forward, heads forward, loss, heads
//! backward, task combination, encoder backward, Adam), each as the median
//! (min, max) of `--steps` calls after `--warmup` untimed ones, plus the
//! median of each phase of the step. `conv GFLOP/s` is the peer's yardstick:
//! `2 * B * (L - k + 1) * F * D * k` over the median time, whatever the
//! lengths; `useful` counts only the windows inside the texts.
//!
//! The machines this runs on are shared, so each line is followed by the
//! scheduler's view (Linux only): the threads' on-CPU time per call divided
//! by the thread count (what the call would take with the cores to itself)
//! and the share of time the threads waited for a core. The phases are given
//! both ways too. The code path follows `POLYHEAD_CPU_PATH` (default: the
//! fastest).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use polyhead::backend::cpu::CpuBackend;
use polyhead::backend::{AdamStep, Backend, TokenBatch};
use polyhead::model::{Dims, HeadDims, Shape};

struct Options {
    threads: usize,
    batch: usize,
    steps: usize,
    warmup: usize,
    lengths: Vec<Lengths>,
}

#[derive(Clone, Copy, PartialEq)]
enum Lengths {
    Full,
    Random,
}

impl Lengths {
    fn name(self) -> &'static str {
        match self {
            Lengths::Full => "full",
            Lengths::Random => "random",
        }
    }
}

const WIDTH: usize = 128;
const BATCHES: usize = 4;

fn parse_options() -> Result<Options> {
    let mut options = Options {
        threads: 2,
        batch: 256,
        steps: 30,
        warmup: 5,
        lengths: vec![Lengths::Full, Lengths::Random],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<usize>()
                .with_context(|| format!("{flag} {value}"))
        };
        match flag.as_str() {
            "--threads" => options.threads = number()?,
            "--batch" => options.batch = number()?,
            "--steps" => options.steps = number()?,
            "--warmup" => options.warmup = number()?,
            "--lengths" => {
                options.lengths = match value.as_str() {
                    "full" => vec![Lengths::Full],
                    "random" => vec![Lengths::Random],
                    "both" => vec![Lengths::Full, Lengths::Random],
                    _ => bail!("--lengths {value}: expected full, random or both"),
                }
            }
            _ => bail!("unknown flag {flag}"),
        }
    }
    if options.steps == 0 || options.batch == 0 || options.threads == 0 {
        bail!("--steps, --batch and --threads must be positive");
    }
    Ok(options)
}

/// splitmix64: a small deterministic generator for the synthetic inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

struct Batch {
    tokens: Vec<i32>,
    lengths: Vec<i32>,
    labels: Vec<i32>,
    scales: Vec<f32>,
    windows: usize,
}

fn make_batch(rng: &mut Rng, shape: &Shape, rows: usize, lengths: Lengths) -> Batch {
    let (vocab, kernel) = (shape.dims.vocab, shape.dims.kernel);
    let mut tokens = vec![0; rows * WIDTH];
    let mut lens = Vec::with_capacity(rows);
    let mut windows = 0;
    for b in 0..rows {
        let len = match lengths {
            Lengths::Full => WIDTH,
            Lengths::Random => 5 + rng.below(WIDTH - 5 + 1),
        };
        for slot in &mut tokens[b * WIDTH..b * WIDTH + len] {
            *slot = 1 + rng.below(vocab - 1) as i32;
        }
        lens.push(len as i32);
        windows += len.max(kernel) - kernel + 1;
    }
    let tasks = shape.tasks();
    let mut labels = Vec::with_capacity(tasks * rows);
    let mut scales = Vec::with_capacity(tasks);
    for head in &shape.dims.heads {
        let mut labelled = 0;
        for _ in 0..rows {
            if rng.below(10) == 0 {
                labels.push(-1);
            } else {
                labels.push(rng.below(head.classes) as i32);
                labelled += 1;
            }
        }
        scales.push(if labelled == 0 {
            0.0
        } else {
            1.0 / labelled as f32
        });
    }
    Batch {
        tokens,
        lengths: lens,
        labels,
        scales,
        windows,
    }
}

/// Device buffers of one training step.
struct Work {
    params: Vec<f32>,
    grads: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    h: Vec<f32>,
    win: Vec<i32>,
    hidden: Vec<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    loss_sums: Vec<f32>,
    dh_tasks: Vec<f32>,
    dh: Vec<f32>,
    step: u64,
}

impl Work {
    fn new(shape: &Shape, rows: usize, rng: &mut Rng) -> Work {
        let d = &shape.dims;
        let mut params = vec![0.0; shape.len];
        for (i, p) in params.iter_mut().enumerate() {
            *p = rng.uniform(if i < shape.embedding.len { 1.0 } else { 0.05 });
        }
        params[..d.embed].fill(0.0);
        let tasks = shape.tasks();
        Work {
            grads: vec![0.0; shape.len],
            m: vec![0.0; shape.len],
            v: vec![0.0; shape.len],
            params,
            h: vec![0.0; rows * d.filters],
            win: vec![0; rows * d.filters],
            hidden: vec![0.0; rows * shape.sum_hidden()],
            logits: vec![0.0; rows * shape.sum_classes()],
            dlogits: vec![0.0; rows * shape.sum_classes()],
            loss_sums: vec![0.0; tasks],
            dh_tasks: vec![0.0; tasks * rows * d.filters],
            dh: vec![0.0; rows * d.filters],
            step: 0,
        }
    }
}

const PHASES: [&str; 7] = [
    "encoder fwd",
    "heads fwd",
    "loss",
    "heads bwd",
    "combine",
    "encoder bwd",
    "adam",
];

/// One training step; returns each phase's wall-clock time and the
/// on-CPU nanoseconds of all threads during it.
fn train_step(
    cpu: &mut CpuBackend,
    shape: &Shape,
    batch: &Batch,
    w: &mut Work,
) -> [(Duration, u64); 7] {
    let rows = batch.lengths.len();
    let tokens = TokenBatch {
        tokens: &batch.tokens,
        lengths: &batch.lengths,
        rows,
        width: WIDTH,
    };
    let tasks = shape.tasks();
    let len = rows * shape.dims.filters;
    let mut times = [(Duration::ZERO, 0); 7];
    let mut clock = (Instant::now(), scheduler_ns().0);
    let mut lap = |i: usize| {
        let now = (Instant::now(), scheduler_ns().0);
        times[i] = (now.0 - clock.0, now.1 - clock.1);
        clock = now;
    };
    let ok = "the bench's buffers fit its batches";
    cpu.encoder_forward(shape, &w.params, &tokens, &mut w.h, &mut w.win)
        .expect(ok);
    lap(0);
    cpu.heads_forward(shape, &w.params, &w.h, rows, &mut w.hidden, &mut w.logits)
        .expect(ok);
    lap(1);
    cpu.softmax_cross_entropy(
        shape,
        &w.logits,
        &batch.labels,
        &vec![1.0; shape.sum_classes()],
        rows,
        &batch.scales,
        &mut w.dlogits,
        &mut w.loss_sums,
    )
    .expect(ok);
    lap(2);
    cpu.heads_backward(
        shape,
        &w.params,
        &w.h,
        &w.hidden,
        &w.dlogits,
        rows,
        &mut w.grads,
        &mut w.dh_tasks,
    )
    .expect(ok);
    lap(3);
    cpu.combine_tasks(&w.dh_tasks, &vec![1.0; tasks], len, &mut w.dh)
        .expect(ok);
    lap(4);
    cpu.encoder_backward(shape, &w.params, &tokens, &w.h, &w.win, &w.dh, &mut w.grads)
        .expect(ok);
    lap(5);
    w.step += 1;
    let step = AdamStep {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: w.step,
        grad_scale: 1.0,
    };
    cpu.adam(
        &mut w.params,
        &w.grads,
        &mut w.m,
        &mut w.v,
        shape.len,
        &step,
        None,
    )
    .expect(ok);
    lap(6);
    times
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut seconds: Vec<f64>) -> Stats {
    seconds.sort_by(f64::total_cmp);
    Stats {
        median: seconds[seconds.len() / 2],
        min: seconds[0],
        max: seconds[seconds.len() - 1],
    }
}

/// Nanoseconds this process's threads have run on a CPU, and waited in the
/// run queue for one (Linux `/proc/self/task/*/schedstat`; zeros elsewhere).
/// The machine is shared: the wait says how much others took, and the run
/// time per call estimates the cost on cores of one's own.
fn scheduler_ns() -> (u64, u64) {
    let (mut run, mut wait) = (0, 0);
    let tasks = std::fs::read_dir("/proc/self/task").into_iter().flatten();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            let mut fields = text
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            run += fields.next().unwrap_or(0);
            wait += fields.next().unwrap_or(0);
        }
    }
    (run, wait)
}

/// Wall-clock times of the timed calls plus the scheduler's view of them.
struct Timed {
    seconds: Vec<f64>,
    run_ns: u64,
    wait_ns: u64,
}

/// Calls `call(i)` for `i` in `0..warmup + steps`, timing the last `steps`.
fn time_calls(warmup: usize, steps: usize, mut call: impl FnMut(usize)) -> Timed {
    let mut timed = Timed {
        seconds: Vec::new(),
        run_ns: 0,
        wait_ns: 0,
    };
    for i in 0..warmup + steps {
        let (run, wait) = scheduler_ns();
        let start = Instant::now();
        call(i);
        let seconds = start.elapsed().as_secs_f64();
        if i >= warmup {
            let (run_end, wait_end) = scheduler_ns();
            timed.seconds.push(seconds);
            timed.run_ns += run_end - run;
            timed.wait_ns += wait_end - wait;
        }
    }
    timed
}

/// One line: wall-clock median (min, max), examples and conv GFLOP/s at the
/// median; then the same from on-CPU time, and the share of time waited.
fn report(name: &str, timed: Timed, rows: usize, threads: usize, flop: (f64, f64)) {
    let (conv_flop, useful_flop) = flop;
    let calls = timed.seconds.len() as f64;
    let s = stats(timed.seconds);
    // On-CPU time per call spread over the threads: the wall time the call
    // would take with the cores to itself.
    let busy = timed.run_ns as f64 * 1e-9 / calls / threads as f64;
    let waited = timed.wait_ns as f64 / (timed.run_ns + timed.wait_ns).max(1) as f64;
    println!(
        "{name:<7} median {:7.2} ms (min {:6.2}, max {:6.2}) {:6.0} ex/s \
         conv {:5.1} GFLOP/s (useful {:5.1})",
        s.median * 1e3,
        s.min * 1e3,
        s.max * 1e3,
        rows as f64 / s.median,
        conv_flop / s.median * 1e-9,
        useful_flop / s.median * 1e-9,
    );
    println!(
        "        on-CPU {:7.2} ms per thread {:6.0} ex/s conv {:5.1} GFLOP/s | waited {:.0}%",
        busy * 1e3,
        rows as f64 / busy,
        conv_flop / busy * 1e-9,
        waited * 100.0,
    );
}

fn run(options: &Options, lengths: Lengths) {
    let shape = Shape::new(Dims {
        vocab: 30000,
        embed: 128,
        filters: 128,
        kernel: 5,
        heads: vec![
            HeadDims {
                hidden: 128,
                classes: 10,
            },
            HeadDims {
                hidden: 128,
                classes: 2,
            },
        ],
    });
    let d = &shape.dims;
    let rows = options.batch;
    let mut rng = Rng(0x5eed);
    let batches: Vec<Batch> = (0..BATCHES)
        .map(|_| make_batch(&mut rng, &shape, rows, lengths))
        .collect();
    let mut work = Work::new(&shape, rows, &mut rng);
    let mut cpu = CpuBackend::new();

    let per_window = 2.0 * (d.filters * d.embed * d.kernel) as f64;
    let conv_flop = per_window * (rows * (WIDTH - d.kernel + 1)) as f64;
    let useful = |b: &Batch| per_window * b.windows as f64;
    let useful_flop = batches.iter().map(useful).sum::<f64>() / BATCHES as f64;
    println!(
        "{}: B {rows} L {WIDTH} D {} F {} k {} V {} heads {:?}, lengths {}",
        cpu.describe(),
        d.embed,
        d.filters,
        d.kernel,
        d.vocab,
        d.heads
            .iter()
            .map(|h| (h.hidden, h.classes))
            .collect::<Vec<_>>(),
        lengths.name()
    );

    let (warmup, steps) = (options.warmup, options.steps);
    let (threads, flop) = (options.threads, (conv_flop, useful_flop));
    let ok = "the bench's buffers fit its batches";
    let tokens = |i: usize| {
        let batch = &batches[i % BATCHES];
        TokenBatch {
            tokens: &batch.tokens,
            lengths: &batch.lengths,
            rows,
            width: WIDTH,
        }
    };

    let encoder = time_calls(warmup, steps, |i| {
        let w = &mut work;
        cpu.encoder_forward(&shape, &w.params, &tokens(i), &mut w.h, &mut w.win)
            .expect(ok);
    });
    report("encoder", encoder, rows, threads, flop);

    let forward = time_calls(warmup, steps, |i| {
        let w = &mut work;
        cpu.encoder_forward(&shape, &w.params, &tokens(i), &mut w.h, &mut w.win)
            .expect(ok);
        cpu.heads_forward(&shape, &w.params, &w.h, rows, &mut w.hidden, &mut w.logits)
            .expect(ok);
    });
    report("forward", forward, rows, threads, flop);

    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut phases_on_cpu = [0u64; PHASES.len()];
    let step = time_calls(warmup, steps, |i| {
        let times = train_step(&mut cpu, &shape, &batches[i % BATCHES], &mut work);
        if i >= warmup {
            for (i, (wall, on_cpu)) in times.into_iter().enumerate() {
                phases[i].push(wall.as_secs_f64());
                phases_on_cpu[i] += on_cpu;
            }
        }
    });
    report("step", step, rows, threads, flop);
    let parts: Vec<String> = PHASES
        .iter()
        .zip(phases)
        .map(|(name, all)| format!("{name} {:.2}", stats(all).median * 1e3))
        .collect();
    println!("step phases, wall median ms: {}", parts.join(" | "));
    let parts: Vec<String> = PHASES
        .iter()
        .zip(phases_on_cpu)
        .map(|(name, ns)| format!("{name} {:.2}", ns as f64 * 1e-6 / steps as f64))
        .collect();
    println!(
        "step phases, on-CPU ms (all threads): {}",
        parts.join(" | ")
    );
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .context("starting the thread pool")?;
    pool.install(|| {
        for &lengths in &options.lengths {
            run(&options, lengths);
        }
    });
    Ok(())
}
