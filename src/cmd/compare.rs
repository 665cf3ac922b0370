//! `polyhead compare`: does training the tasks together help them?
//!
//! For each seed it trains one multi-task model on every task and, with
//! the same settings and number of epochs, one single-task model per task
//! on that task's labels alone. Every model is scored after its final
//! epoch on the validation split (and the test split when there is one);
//! the table gives each arm's mean and sample standard deviation over the
//! seeds and their per-seed difference. Runs happen in this process, one
//! after another, over any [`Backend`].

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::data::{prepare_training, Prepared};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::cli::{CompareArgs, TrainArgs};
use crate::fsutil::{same_file, write_atomic};
use crate::model::init::initial_params;
use crate::model::network::Network;
use crate::model::Shape;
use crate::report::comparison::{
    Arms, Comparison, Named, Settings, SplitScores, Stat, TaskComparison, STD_NOTE,
};
use crate::rng::Rng;
use crate::train::weighting::Method;
use crate::train::{self, RunState, TrainConfig};
use crate::usage;

pub fn run(args: &CompareArgs) -> Result<()> {
    check_args(args)?;
    super::set_threads(args.train.threads)?;
    let comparison = match args.train.gpu {
        Some(gpu) => {
            let precision = args.train.precision.as_deref();
            compare_on(
                || crate::backend::cuda::open(gpu, precision, "--precision"),
                args,
            )?
        }
        None => compare_on(|| Ok(CpuBackend::new()), args)?,
    };
    super::show_text(&table(&comparison));
    if let Some(path) = &args.json {
        write_json(path, &comparison)?;
    }
    Ok(())
}

/// Flags of `train` that make no sense for a comparison, and why.
fn check_args(args: &CompareArgs) -> Result<()> {
    let t = &args.train;
    let unused = [
        (t.out.is_some(), "--out", "no model is kept"),
        (t.resume.is_some(), "--resume", "every run starts afresh"),
        (
            t.checkpoint_every.is_some() || t.ckpt_dir.is_some() || t.keep_last.is_some(),
            "--checkpoint-every/--ckpt-dir/--keep-last",
            "no model is kept",
        ),
        (
            t.metrics_out.is_some(),
            "--metrics-out",
            "use --json for the comparison",
        ),
        (
            t.monitor.is_some() || t.early_stop_patience.is_some(),
            "--monitor/--early-stop-patience",
            "both arms train for the same --epochs",
        ),
    ];
    for (given, flag, why) in unused {
        if given {
            usage!("{flag} is not used by compare: {why}");
        }
    }
    if args.seeds == 0 {
        usage!("--seeds must be at least 1");
    }
    // Found now rather than after every run has trained.
    if let Some(json) = &args.json {
        let folder = json.parent().filter(|p| !p.as_os_str().is_empty());
        if json.is_dir() || folder.is_some_and(|f| !f.is_dir()) {
            usage!(
                "--json {}: not a file in an existing folder",
                json.display()
            );
        }
        if let Some(input) = super::data::input_files(t)
            .iter()
            .find(|i| same_file(i, json))
        {
            usage!("--json would overwrite the input file {}", input.display());
        }
    }
    let positive = [
        ("--embed-dim", t.embed_dim),
        ("--filters", t.filters),
        ("--kernel-size", t.kernel_size),
        ("--hidden", t.hidden),
        ("--max-len", t.max_len),
        ("--epochs", t.epochs),
        ("--batch-size", t.batch_size),
        ("--vocab-size", t.vocab_size),
    ];
    for (flag, value) in positive {
        if value == 0 {
            usage!("{flag} must be at least 1");
        }
    }
    if !(t.lr > 0.0 && t.lr.is_finite()) {
        usage!("--lr must be a positive number, got {}", t.lr);
    }
    if !(0.0..1.0).contains(&t.dropout) {
        usage!("--dropout must be in [0, 1), got {}", t.dropout);
    }
    if let Err(e) = Method::parse(&t.weighting) {
        usage!("--weighting: {e}");
    }
    Ok(())
}

/// Accuracy and macro-F1 of each task of one model, on one split.
type SplitResult = Vec<(f64, f64)>;

/// What one training run gives.
struct RunResult {
    seconds: f64,
    valid: SplitResult,
    test: Option<SplitResult>,
}

/// Runs both arms for every seed on backends made by `new_backend`.
pub fn compare_on<B: Backend>(
    new_backend: impl Fn() -> Result<B>,
    args: &CompareArgs,
) -> Result<Comparison> {
    let quiet = args.train.quiet;
    let say = |line: String| {
        if !quiet {
            crate::say!("{line}");
        }
    };
    let multi_data = prepare_training(&args.train)?;
    if multi_data.valid.is_none() {
        usage!(
            "compare needs a validation split: pass --valid FILE, or a --data folder with valid.*"
        );
    }
    for warning in &multi_data.warnings {
        crate::say!("polyhead: warning: {warning}");
    }
    say(multi_data.summary());
    let task_names: Vec<String> = multi_data.tasks.iter().map(|(n, _)| n.clone()).collect();
    let single_data = task_names
        .iter()
        .map(|task| {
            let mut single = args.train.clone();
            single.tasks = Some(vec![task.clone()]);
            prepare_training(&single)
        })
        .collect::<Result<Vec<Prepared>>>()?;

    let seeds: Vec<u64> = (0..args.seeds as u64)
        .map(|i| args.train.seed.wrapping_add(i))
        .collect();
    let describe = new_backend()?.describe();
    say(format!(
        "comparing on {describe}: {} x (1 multi-task + {} single-task models), \
         {} each, weighting {}",
        super::count(seeds.len(), "seed"),
        task_names.len(),
        super::count(args.train.epochs, "epoch"),
        args.train.weighting
    ));
    let mut multi_runs = Vec::with_capacity(seeds.len());
    let mut single_runs: Vec<Vec<RunResult>> = task_names.iter().map(|_| Vec::new()).collect();
    for &seed in &seeds {
        let run = train_once(new_backend()?, &args.train, &multi_data, seed)?;
        say(run_line(seed, "multi-task", &task_names, &run));
        multi_runs.push(run);
        for (t, data) in single_data.iter().enumerate() {
            let run = train_once(new_backend()?, &args.train, data, seed)?;
            say(run_line(seed, "single-task", &task_names[t..=t], &run));
            single_runs[t].push(run);
        }
    }

    let seconds =
        |runs: &[RunResult]| Stat::of(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>());
    let tasks = multi_data
        .tasks
        .iter()
        .enumerate()
        .map(|(t, (name, classes))| {
            let singles = &single_runs[t];
            let valid = |r: &RunResult, i: usize| Some(r.valid[i]);
            let test = |r: &RunResult, i: usize| r.test.as_ref().map(|s| s[i]);
            let comparison = TaskComparison {
                classes: classes.len(),
                single_task_seconds: seconds(singles),
                valid: paired_split(&multi_runs, t, singles, valid).unwrap_or_else(no_split),
                test: paired_split(&multi_runs, t, singles, test),
            };
            (name.clone(), comparison)
        })
        .collect();

    let t = &args.train;
    Ok(Comparison {
        settings: Settings {
            data: data_sources(t),
            seeds,
            epochs: t.epochs,
            batch_size: t.batch_size,
            // Through the decimal text, so 1e-3 stays 0.001 rather than
            // the nearest f32's expansion.
            lr: t.lr.to_string().parse().unwrap_or(t.lr as f64),
            weighting: t.weighting.clone(),
            embed_dim: t.embed_dim,
            filters: t.filters,
            kernel_size: t.kernel_size,
            hidden: t.hidden,
            max_len: t.max_len,
            dropout: t.dropout.to_string().parse().unwrap_or(t.dropout as f64),
            backend: describe,
        },
        std: STD_NOTE.to_string(),
        multi_task_seconds: seconds(&multi_runs),
        tasks: Named(tasks),
    })
}

/// Task `task`'s scores on one split (picked by `pick`) of the multi-task
/// runs against its single-task runs; `None` when the split was not scored.
fn paired_split(
    multi: &[RunResult],
    task: usize,
    single: &[RunResult],
    pick: impl Fn(&RunResult, usize) -> Option<(f64, f64)>,
) -> Option<SplitScores> {
    let multi: Vec<(f64, f64)> = multi.iter().map(|r| pick(r, task)).collect::<Option<_>>()?;
    let single: Vec<(f64, f64)> = single.iter().map(|r| pick(r, 0)).collect::<Option<_>>()?;
    let column = |runs: &[(f64, f64)], accuracy: bool| -> Vec<f64> {
        runs.iter()
            .map(|s| if accuracy { s.0 } else { s.1 })
            .collect()
    };
    Some(SplitScores {
        accuracy: Arms::new(&column(&multi, true), &column(&single, true)),
        macro_f1: Arms::new(&column(&multi, false), &column(&single, false)),
    })
}

/// Scores of a split no run was scored on: every figure undefined.
fn no_split() -> SplitScores {
    SplitScores {
        accuracy: Arms::new(&[], &[]),
        macro_f1: Arms::new(&[], &[]),
    }
}

/// Trains a fresh model on `data` with the settings of `args` and `seed`,
/// silently, and scores it after the final epoch.
fn train_once<B: Backend>(
    backend: B,
    args: &TrainArgs,
    data: &Prepared,
    seed: u64,
) -> Result<RunResult> {
    let config = super::train::model_config(args, data);
    let task_names = config.task_names();
    let mut train_config = train_config(args, &task_names)?;
    train_config.class_weights = super::train::class_weights(args, data, false)?;
    let shape = Shape::new(config.dims(data.vocab.len()));

    let started = Instant::now();
    crate::model::init::check_fits(&shape)?;
    let params = initial_params(&shape, &mut Rng::derived(seed, 0, 0));
    let rows = args.batch_size.max(train_config.eval_batch);
    let max_width = data.max_width(args.kernel_size);
    let mut net = Network::new(backend, shape, &params, rows, max_width)?;
    let mut state = RunState::new(&train_config, seed);
    let reports = train::train(
        &mut net,
        &data.train,
        data.valid.as_ref(),
        &task_names,
        &train_config,
        &mut state,
        &mut |_, _| Ok(()),
    )?;
    let seconds = started.elapsed().as_secs_f64();

    let Some(last) = reports.last() else {
        anyhow::bail!("training ran no epoch");
    };
    let valid = last
        .valid
        .iter()
        .map(|(_, s)| (s.accuracy, s.macro_f1))
        .collect();
    let test = match &data.test {
        Some(test) => {
            let eval = train::evaluate(&mut net, test, train_config.eval_batch)?;
            let scores = eval.confusions.iter().map(|c| {
                let s = c.scores(&[]);
                (s.accuracy, s.macro_f1)
            });
            Some(scores.collect())
        }
        None => None,
    };
    Ok(RunResult {
        seconds,
        valid,
        test,
    })
}

/// The optimisation settings of one arm. `--task-weights` entries for
/// tasks the arm does not train are ignored, so a single-task model keeps
/// its task's weight.
fn train_config(args: &TrainArgs, task_names: &[String]) -> Result<TrainConfig> {
    let mut arm = args.clone();
    arm.task_weights.retain(|item| {
        item.split_once('=')
            .is_none_or(|(task, _)| task_names.iter().any(|n| n == task))
    });
    let mut config = super::train::train_config(&arm, task_names)?;
    config.checkpoint_every = None;
    config.monitor = None;
    Ok(config)
}

/// The data files as the flags name them.
fn data_sources(args: &TrainArgs) -> Vec<String> {
    let named = [
        ("train", &args.train),
        ("valid", &args.valid),
        ("test", &args.test),
    ];
    let mut sources: Vec<String> = named
        .iter()
        .flat_map(|(what, specs)| specs.iter().map(move |s| format!("{what}: {s}")))
        .collect();
    if let Some(data) = &args.data {
        sources.push(format!("data: {}", data.display()));
    }
    if sources.is_empty() {
        vec!["clothing-reviews (embedded)".to_string()]
    } else {
        sources
    }
}

fn run_line(seed: u64, arm: &str, tasks: &[String], run: &RunResult) -> String {
    let scores: Vec<String> = tasks
        .iter()
        .zip(&run.valid)
        .map(|(name, (acc, f1))| format!("{name} acc {acc:.4} F1 {f1:.4}"))
        .collect();
    format!(
        "seed {seed} {arm:<11} {:8.2} s | valid {}",
        run.seconds,
        scores.join(" | ")
    )
}

/// The comparison as a plain-text table.
pub fn table(c: &Comparison) -> String {
    let s = &c.settings;
    let seeds: Vec<String> = s.seeds.iter().map(u64::to_string).collect();
    let mut out = format!(
        "multi-task against single-task models, seeds {} ({} each, weighting {})\n\
         figures: mean ± {}\n",
        seeds.join(", "),
        super::count(s.epochs, "epoch"),
        s.weighting,
        c.std
    );
    let width = c
        .tasks
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    for split in TaskComparison::SPLITS {
        if c.tasks.iter().all(|(_, t)| t.split(split).is_none()) {
            continue;
        }
        out += &format!(
            "\n{split}\n{:width$}  {:8}  {:>17}  {:>17}  {:>17}\n",
            "task", "metric", "multi-task", "single-task", "multi - single"
        );
        for (name, task) in c.tasks.iter() {
            let Some(scores) = task.split(split) else {
                continue;
            };
            for (metric, arms) in [
                ("accuracy", &scores.accuracy),
                ("macro-F1", &scores.macro_f1),
            ] {
                let label = if metric == "accuracy" {
                    name.as_str()
                } else {
                    ""
                };
                out += &format!(
                    "{label:width$}  {metric:8}  {:>17}  {:>17}  {:>17}\n",
                    arms.multi_task.display(4, false),
                    arms.single_task.display(4, false),
                    arms.difference.display(4, true)
                );
            }
        }
    }
    let width = width.max("sum of single-task models".len());
    let seconds_digits = if c.multi_task_seconds.mean.unwrap_or(0.0) < 10.0 {
        3
    } else {
        1
    };
    out += &format!(
        "\nwall time per model\n{:width$}  {:>17}\n",
        "model", "seconds"
    );
    out += &format!(
        "{:width$}  {:>17}\n",
        "multi-task (all tasks)",
        c.multi_task_seconds.display(seconds_digits, false)
    );
    let mut single_total = vec![0.0; s.seeds.len()];
    for (name, task) in c.tasks.iter() {
        out += &format!(
            "{name:width$}  {:>17}\n",
            task.single_task_seconds.display(seconds_digits, false)
        );
        for (total, v) in single_total
            .iter_mut()
            .zip(&task.single_task_seconds.values)
        {
            *total += v.unwrap_or(0.0);
        }
    }
    out += &format!(
        "{:width$}  {:>17}\n",
        "sum of single-task models",
        Stat::of(&single_total).display(seconds_digits, false)
    );
    out
}

fn write_json(path: &Path, comparison: &Comparison) -> Result<()> {
    let mut text = serde_json::to_string_pretty(comparison)?;
    text.push('\n');
    write_atomic(path, text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
