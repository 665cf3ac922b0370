//! `polyhead train`: read the data, build the model, train, report, save.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::data::{prepare_training, Prepared};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::checkpoint::{newest_valid, state_path, Checkpoint, CheckpointDir};
use crate::cli::{OptimizerArg, TrainArgs};
use crate::fsutil::{remove_stale_temporaries, same_file};
use crate::model::file::MAX_SIZE;
use crate::model::init::initial_params;
use crate::model::network::{AdamConfig, Network};
use crate::model::{Model, ModelConfig, TaskConfig};
use crate::rng::Rng;
use crate::train::weighting::Method;
use crate::train::{self, EpochReport, Event, Monitor, RunState, Sampling, TrainConfig};
use crate::usage;

/// Checkpoints `--ckpt-dir` keeps unless `--keep-last` says otherwise.
const DEFAULT_KEEP_LAST: usize = 3;

pub fn run(args: &TrainArgs) -> Result<()> {
    check_args(args)?;
    super::set_threads(args.threads)?;
    if let Some(gpu) = args.gpu {
        let backend = crate::backend::cuda::open(gpu, args.precision.as_deref(), "--precision")?;
        return train_on(backend, args);
    }
    train_on(CpuBackend::new(), args)
}

fn check_args(args: &TrainArgs) -> Result<()> {
    let positive = [
        ("--embed-dim", args.embed_dim),
        ("--filters", args.filters),
        ("--kernel-size", args.kernel_size),
        ("--hidden", args.hidden),
        ("--max-len", args.max_len),
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--vocab-size", args.vocab_size),
    ];
    for (flag, value) in positive {
        if value == 0 {
            usage!("{flag} must be at least 1");
        }
    }
    if let Some(tasks) = &args.tasks {
        if let Some(twice) = tasks
            .iter()
            .enumerate()
            .find(|(i, t)| tasks[..*i].contains(t))
        {
            usage!("--tasks names {:?} twice", twice.1);
        }
    }
    // Sizes past what a model file may hold would train a model no command
    // can load.
    let sizes = [
        ("--embed-dim", args.embed_dim),
        ("--filters", args.filters),
        ("--kernel-size", args.kernel_size),
        ("--hidden", args.hidden),
        ("--max-len", args.max_len),
    ];
    for (flag, value) in sizes {
        if value > MAX_SIZE {
            usage!("{flag} must be at most {MAX_SIZE}, got {value}");
        }
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        usage!("--lr must be a positive number, got {}", args.lr);
    }
    if !(0.0..1.0).contains(&args.dropout) {
        usage!("--dropout must be in [0, 1), got {}", args.dropout);
    }
    if args.checkpoint_every == Some(0) {
        usage!("--checkpoint-every must be at least 1");
    }
    if args.early_stop_patience == Some(0) {
        usage!("--early-stop-patience must be at least 1");
    }
    check_outputs(args)?;
    match (&args.ckpt_dir, args.keep_last) {
        (None, Some(_)) => usage!("--keep-last needs --ckpt-dir"),
        (_, Some(0)) => usage!("--keep-last must be at least 1"),
        (Some(dir), _) if dir.exists() && !dir.is_dir() => {
            usage!("--ckpt-dir {}: not a folder", dir.display())
        }
        _ => {}
    }
    // Found now rather than when the first epoch is saved.
    if let Some(out) = &args.out {
        if out.is_dir() {
            usage!("--out {}: is a directory; give a file name", out.display());
        }
        let folder = out.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) {
            usage!("--out {}: the folder does not exist", out.display());
        }
    }
    Ok(())
}

/// The model file: `--out`, else the model being resumed, else
/// `model.safetensors`.
fn out_path(args: &TrainArgs) -> PathBuf {
    match (&args.out, &args.resume) {
        (Some(out), _) => out.clone(),
        (None, Some(resumed)) if !resumed.is_dir() => resumed.clone(),
        _ => PathBuf::from("model.safetensors"),
    }
}

/// No file the run writes may be one it reads, or another it writes.
fn check_outputs(args: &TrainArgs) -> Result<()> {
    let out = out_path(args);
    let mut outputs = vec![("--out", out.clone()), ("the state file", state_path(&out))];
    if let Some(metrics) = &args.metrics_out {
        outputs.push(("--metrics-out", metrics.clone()));
    }
    for input in super::data::input_files(args) {
        if let Some((flag, _)) = outputs.iter().find(|(_, o)| same_file(o, &input)) {
            usage!("{flag} would overwrite the input file {}", input.display());
        }
    }
    for (i, (flag, path)) in outputs.iter().enumerate() {
        if let Some((other, _)) = outputs[i + 1..].iter().find(|(_, o)| same_file(o, path)) {
            usage!("{flag} and {other} name the same file {}", path.display());
        }
    }
    Ok(())
}

fn train_on<B: Backend>(backend: B, args: &TrainArgs) -> Result<()> {
    let quiet = args.quiet;
    let say = |line: String| {
        if !quiet {
            crate::say!("{line}");
        }
    };
    let out = out_path(args);
    let state_file = state_path(&out);
    remove_stale_temporaries(&out);
    remove_stale_temporaries(&state_file);
    // A run resumed from a checkpoint folder goes on saving there.
    let resumed_dir = args.resume.as_ref().filter(|r| r.is_dir());
    let ckpt_dir = match args.ckpt_dir.as_ref().or(resumed_dir) {
        Some(dir) => Some(CheckpointDir::open(
            dir,
            args.keep_last.unwrap_or(DEFAULT_KEEP_LAST),
        )?),
        None => None,
    };
    let resumed = match &args.resume {
        Some(dir) if dir.is_dir() => {
            // The error names the file.
            let mut skipped = |_: &Path, error: &anyhow::Error| {
                crate::say!("polyhead: warning: skipping a checkpoint: {error:#}");
            };
            Some(newest_valid(dir, &mut skipped)?)
        }
        Some(model) if model.to_string_lossy().ends_with(".state.safetensors") => {
            let stem = model
                .to_string_lossy()
                .replace(".state.safetensors", ".safetensors");
            usage!(
                "--resume {}: that is a state file; pass the model file ({stem}) or a \
                 checkpoint folder",
                model.display()
            );
        }
        Some(model) => {
            let file = state_path(model);
            Some((file.clone(), Checkpoint::load(&file)?))
        }
        None => None,
    };

    let started = Instant::now();
    let data = prepare_training(args)?;
    for warning in &data.warnings {
        crate::say!("polyhead: warning: {warning}");
    }
    say(data.summary());
    let seconds = started.elapsed().as_secs_f64();
    say(match data.tables_cached {
        0 => format!("read and tokenised in {seconds:.2} s"),
        n => format!(
            "read in {seconds:.2} s; tokens of {n} of {} from the token cache",
            super::count(data.tables, "table")
        ),
    });

    let config = model_config(args, &data);
    let task_names = config.task_names();
    let mut train_config = train_config(args, &task_names)?;
    train_config.class_weights = class_weights(args, &data, true)?;
    let options = training_options(args);
    let fingerprint = data.fingerprint();
    let shape = crate::model::Shape::new(config.dims(data.vocab.len()));
    let max_width = data.max_width(args.kernel_size);
    // Buffers for a training batch (never more rows than the data has) or
    // an evaluation batch of 256.
    let rows = args.batch_size.min(data.train.rows()).max(256);
    let describe = backend.describe();

    let (mut net, mut state) = match resumed {
        Some((file, checkpoint)) => {
            let batches = data.train.rows().div_ceil(args.batch_size);
            check_resumable(&checkpoint, &options, &fingerprint, batches, &file)?;
            let mut net =
                Network::new(backend, shape.clone(), &checkpoint.params, rows, max_width)?;
            net.set_moments(&checkpoint.m, &checkpoint.v, checkpoint.step)?;
            say(format!(
                "resuming at epoch {}, batch {} (step {}) from {}",
                checkpoint.run.epoch,
                checkpoint.run.batches_done,
                checkpoint.step,
                file.display()
            ));
            (net, checkpoint.run)
        }
        None => {
            crate::model::init::check_fits(&shape)?;
            let params = initial_params(&shape, &mut Rng::derived(args.seed, 0, 0));
            let net = Network::new(backend, shape.clone(), &params, rows, max_width)?;
            (net, RunState::new(&train_config, args.seed))
        }
    };
    if state.epoch > args.epochs {
        say(format!(
            "the run is already complete ({})",
            super::count(args.epochs, "epoch")
        ));
        return Ok(());
    }
    say(format!(
        "model: {} parameters (vocabulary {} + 2, D {}, F {}, k {}, H {}), {describe}",
        shape.len,
        data.vocab.len() - 2,
        args.embed_dim,
        args.filters,
        args.kernel_size,
        args.hidden
    ));
    say(format!(
        "training: {}, batch {}, {} lr {}, seed {}, dropout {}, weighting {}",
        super::count(args.epochs, "epoch"),
        args.batch_size,
        match args.optimizer {
            OptimizerArg::Adam => "Adam",
            OptimizerArg::LazyAdam => "LazyAdam",
        },
        args.lr,
        args.seed,
        args.dropout,
        args.weighting
    ));

    let mut metrics = match &args.metrics_out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(args.resume.is_some())
                .write(true)
                .truncate(args.resume.is_none())
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => None,
    };
    let mut display = Display::new(quiet);
    let keep_best = train_config.monitor.is_some();
    let save_model = |net: &Network<B>| -> Result<()> {
        Model::new(config.clone(), data.vocab.clone(), net.params_to_host()?)?.save(&out)
    };

    let mut observe = |net: &mut Network<B>, event: Event<'_>| -> Result<()> {
        display.event(&event);
        match event {
            Event::Best(_) => save_model(net)?,
            Event::EpochEnd(report) => {
                if let Some(file) = metrics.as_mut() {
                    writeln!(file, "{}", serde_json::to_string(report)?)
                        .and_then(|()| file.flush())
                        .context("cannot write the metrics file")?;
                }
            }
            Event::Checkpoint(run) => {
                if !keep_best {
                    save_model(net)?;
                }
                let (m, v) = net.moments_to_host()?;
                let checkpoint = Checkpoint {
                    run: run.clone(),
                    step: net.step,
                    config: config.clone(),
                    vocab: data.vocab.clone(),
                    options: options.clone(),
                    data_fingerprint: fingerprint.clone(),
                    params: net.params_to_host()?,
                    m,
                    v,
                };
                match &ckpt_dir {
                    Some(dir) => {
                        dir.save(&checkpoint)?;
                    }
                    None => checkpoint.save(&state_file)?,
                }
            }
            Event::Stopped { epoch } => say(format!(
                "early stop after epoch {epoch}: no improvement for the patience set"
            )),
            _ => {}
        }
        Ok(())
    };
    train::train(
        &mut net,
        &data.train,
        data.valid.as_ref(),
        &task_names,
        &train_config,
        &mut state,
        &mut observe,
    )?;
    match state.best {
        Some((epoch, _)) => say(format!(
            "best model (epoch {epoch}) written to {}",
            out.display()
        )),
        None => say(format!("model written to {}", out.display())),
    }

    if let Some(test) = &data.test {
        if keep_best {
            net.set_params(&Model::load(&out)?.params)?;
        }
        let eval = train::evaluate(&mut net, test, 256)?;
        let line: Vec<String> = eval
            .confusions
            .iter()
            .zip(&task_names)
            .map(|(c, name)| {
                let s = c.scores(&[]);
                format!("{name} acc {:.4} F1 {:.4}", s.accuracy, s.macro_f1)
            })
            .collect();
        crate::say!("test: {}", line.join(" | "));
    }
    Ok(())
}

/// The optimisation settings the flags ask for.
pub(crate) fn train_config(args: &TrainArgs, task_names: &[String]) -> Result<TrainConfig> {
    let weighting = match Method::parse(&args.weighting) {
        Ok(m) => m,
        Err(e) => usage!("--weighting: {e}"),
    };
    let mut task_weights = vec![1.0f32; task_names.len()];
    for item in &args.task_weights {
        let parsed = item
            .split_once('=')
            .and_then(|(t, w)| Some((t, w.parse::<f32>().ok()?)));
        let Some((task, weight)) = parsed else {
            usage!("--task-weights: expected TASK=WEIGHT, got {item:?}");
        };
        let Some(i) = task_names.iter().position(|n| n == task) else {
            usage!(
                "--task-weights: no task {task:?} (tasks: {})",
                task_names.join(", ")
            );
        };
        if !(weight >= 0.0 && weight.is_finite()) {
            usage!("--task-weights: the weight of {task} must be a finite number >= 0");
        }
        task_weights[i] = weight;
    }
    if task_weights.iter().all(|&w| w == 0.0) {
        usage!("--task-weights: every task weighs 0, so nothing would train");
    }
    let monitor = match (&args.monitor, args.early_stop_patience) {
        (None, None) => None,
        (spec, patience) => {
            let spec = spec.as_deref().unwrap_or("valid_loss");
            let (task, metric) = match spec.split_once(':') {
                _ if spec == "valid_loss" => (None, "loss".to_string()),
                Some((task, metric)) if metric == "macro_f1" || metric == "accuracy" => {
                    let Some(i) = task_names.iter().position(|n| n == task) else {
                        usage!(
                            "--monitor: no task {task:?} (tasks: {})",
                            task_names.join(", ")
                        );
                    };
                    (Some(i), metric.to_string())
                }
                _ => usage!(
                    "--monitor: expected TASK:macro_f1, TASK:accuracy or valid_loss, got {spec:?}"
                ),
            };
            Some(Monitor {
                task,
                metric,
                patience,
            })
        }
    };
    let Some(sampling) = Sampling::parse(&args.task_sampling) else {
        usage!(
            "--task-sampling: expected proportional or temperature:T, got {:?}",
            args.task_sampling
        );
    };
    Ok(TrainConfig {
        class_weights: None,
        sampling,
        epochs: args.epochs,
        batch_size: args.batch_size,
        adam: AdamConfig {
            lr: args.lr,
            lazy_embedding: args.optimizer == OptimizerArg::LazyAdam,
            ..AdamConfig::default()
        },
        dropout: args.dropout,
        task_weights,
        weighting,
        eval_batch: 256,
        checkpoint_every: args.checkpoint_every,
        monitor,
    })
}

/// The model the flags and the data describe.
pub(crate) fn model_config(args: &TrainArgs, data: &Prepared) -> ModelConfig {
    let task = |(name, classes): &(String, Vec<String>)| TaskConfig {
        name: name.clone(),
        hidden: args.hidden,
        classes: classes.clone(),
    };
    ModelConfig {
        embed_dim: args.embed_dim,
        filters: args.filters,
        kernel_size: args.kernel_size,
        max_len: args.max_len,
        lowercase: true,
        tasks: data.tasks.iter().map(task).collect(),
    }
}

/// Per-class loss weights from `--class-weight` (`[sum C]` in task order),
/// or `None` when none is asked for. Specs naming a task the data lacks are
/// an error when `strict`, else ignored (a single-task model in `compare`).
pub(crate) fn class_weights(
    args: &TrainArgs,
    data: &Prepared,
    strict: bool,
) -> Result<Option<Vec<f32>>> {
    if args.class_weight.is_empty() {
        return Ok(None);
    }
    let mut weights: Vec<Vec<f32>> = data.tasks.iter().map(|(_, c)| vec![1.0; c.len()]).collect();
    let task_index = |task: &str| data.tasks.iter().position(|(name, _)| name == task);
    for spec in &args.class_weight {
        let (target, value) = match spec.split_once('=') {
            Some((target, value)) => (Some(target), value),
            None => (None, spec.as_str()),
        };
        match (target, value) {
            (None, "balanced") => {
                for (task, labels) in weights.iter_mut().zip(&data.train.labels) {
                    *task = balanced(labels, task.len());
                }
            }
            (Some(task), "balanced") if !task.contains(':') => match task_index(task) {
                Some(i) => weights[i] = balanced(&data.train.labels[i], weights[i].len()),
                None if strict => usage!("--class-weight {spec}: no task {task:?}"),
                None => {}
            },
            (Some(target), value) if target.contains(':') => {
                let (task, class) = target.split_once(':').unwrap_or_default();
                let Ok(w) = value.parse::<f32>() else {
                    usage!("--class-weight {spec}: {value:?} is not a number");
                };
                if !(w >= 0.0 && w.is_finite()) {
                    usage!("--class-weight {spec}: a weight must be a finite number >= 0");
                }
                let Some(i) = task_index(task) else {
                    if strict {
                        usage!("--class-weight {spec}: no task {task:?}");
                    }
                    continue;
                };
                let Some(c) = data.tasks[i].1.iter().position(|name| name == class) else {
                    usage!("--class-weight {spec}: task {task} has no class {class:?}");
                };
                weights[i][c] = w;
            }
            _ => usage!(
                "--class-weight: expected balanced, TASK=balanced or TASK:CLASS=W, got {spec:?}"
            ),
        }
    }
    Ok(Some(weights.concat()))
}

/// `n / (C * n_c)` for each class `c` of a task's training labels.
fn balanced(labels: &[i32], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for &y in labels.iter().filter(|&&y| y >= 0) {
        counts[y as usize] += 1;
    }
    let n: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&k| {
            if k == 0 {
                1.0
            } else {
                (n as f64 / (classes * k) as f64) as f32
            }
        })
        .collect()
}

/// The options that shape the trained weights, as the user gave them; a
/// resumed run must repeat them.
fn training_options(args: &TrainArgs) -> Vec<(String, String)> {
    let tasks = args.tasks.as_ref().map(|t| t.join(",")).unwrap_or_default();
    [
        ("--text-column", args.text_column.clone()),
        ("--tasks", tasks),
        ("--embed-dim", args.embed_dim.to_string()),
        ("--filters", args.filters.to_string()),
        ("--kernel-size", args.kernel_size.to_string()),
        ("--hidden", args.hidden.to_string()),
        ("--max-len", args.max_len.to_string()),
        ("--vocab-size", args.vocab_size.to_string()),
        ("--min-count", args.min_count.to_string()),
        ("--epochs", args.epochs.to_string()),
        ("--batch-size", args.batch_size.to_string()),
        ("--lr", args.lr.to_string()),
        ("--optimizer", args.optimizer.name().to_string()),
        ("--seed", args.seed.to_string()),
        ("--dropout", args.dropout.to_string()),
        ("--weighting", args.weighting.clone()),
        ("--task-weights", args.task_weights.join(",")),
        ("--task-sampling", args.task_sampling.clone()),
        ("--class-weight", args.class_weight.join(" ")),
        ("--gpu", args.gpu.map(|g| g.to_string()).unwrap_or_default()),
        ("--precision", args.precision.clone().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn check_resumable(
    checkpoint: &Checkpoint,
    options: &[(String, String)],
    fingerprint: &str,
    batches_per_epoch: usize,
    state_file: &Path,
) -> Result<()> {
    let shown = state_file.display();
    for (flag, value) in options {
        let saved = checkpoint
            .options
            .iter()
            .find(|(k, _)| k == flag)
            .map(|(_, v)| v.as_str())
            // State files from before --optimizer existed were trained by Adam.
            .or((flag == "--optimizer").then_some("adam"));
        if saved != Some(value.as_str()) {
            usage!(
                "--resume: {flag} is {value:?} here but {:?} in the run being resumed ({shown})",
                saved.unwrap_or("")
            );
        }
    }
    if checkpoint.data_fingerprint != fingerprint {
        usage!(
            "--resume: the training data (--train/--data, --vocab-size, --min-count) differs \
             from the run being resumed ({shown})"
        );
    }
    checkpoint
        .check_progress(batches_per_epoch)
        .with_context(|| format!("{shown}: not a usable run state"))?;
    Ok(())
}

/// The per-epoch output: a progress bar when stderr is a terminal, one
/// plain line per epoch otherwise.
struct Display {
    quiet: bool,
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Display {
    fn new(quiet: bool) -> Display {
        Display {
            quiet,
            bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn event(&mut self, event: &Event<'_>) {
        if self.quiet {
            return;
        }
        match event {
            Event::EpochStart { epoch, batches } if self.terminal => {
                let bar = ProgressBar::new(*batches as u64);
                let template = format!(
                    "epoch {epoch:>3} [{{bar:30}}] {{pos}}/{{len}} {{per_sec}} {{msg}} ETA {{eta}}"
                );
                if let Ok(style) = ProgressStyle::with_template(&template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                self.bar = Some(bar);
            }
            Event::Batch { done, loss } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*done as u64);
                    bar.set_message(format!("loss {loss:.4}"));
                }
            }
            Event::EpochEnd(report) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                crate::say!("{}", epoch_line(report));
            }
            _ => {}
        }
    }
}

fn epoch_line(report: &EpochReport) -> String {
    let mut line = format!("epoch {:>3} loss {:.4}", report.epoch, report.train_loss);
    if let Some(loss) = report.valid_loss {
        line += &format!(" valid_loss {loss:.4}");
    }
    // A task without labels in the validation data has no score.
    let score = |x: f64| {
        if x.is_nan() {
            "-".to_string()
        } else {
            format!("{x:.4}")
        }
    };
    for (name, s) in &report.valid {
        line += &format!(
            " | {name} acc {} F1 {}",
            score(s.accuracy),
            score(s.macro_f1)
        );
    }
    let weights: Vec<String> = report
        .loss_weights
        .iter()
        .map(|(_, w)| format!("{w:.3}"))
        .collect();
    if report
        .loss_weights
        .iter()
        .any(|(_, w)| (w - 1.0).abs() > 1e-9)
    {
        line += &format!(" | weights {}", weights.join(","));
    }
    if let (Some(scale), Some(skipped)) = (report.loss_scale, report.skipped_steps) {
        line += &format!(" | loss scale {scale} ({skipped} steps skipped)");
    }
    line += &format!(
        " | {:.2} s {:.0} ex/s",
        report.seconds, report.examples_per_second
    );
    line
}

impl Prepared {
    /// Widest batch the data can produce.
    pub fn max_width(&self, kernel: usize) -> usize {
        [Some(&self.train), self.valid.as_ref(), self.test.as_ref()]
            .into_iter()
            .flatten()
            .flat_map(|e| (0..e.rows()).map(|r| e.text(r).len()))
            .max()
            .unwrap_or(0)
            .max(kernel)
    }
}
