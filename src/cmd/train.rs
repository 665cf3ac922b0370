//! `polyhead train`: read the data, build the model, train, report, save.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::data::{prepare_training, Prepared};
use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::cli::TrainArgs;
use crate::model::init::initial_params;
use crate::model::network::{AdamConfig, Network};
use crate::model::{Model, ModelConfig, TaskConfig};
use crate::rng::Rng;
use crate::train::weighting::Method;
use crate::train::{self, EpochReport, Event, TrainConfig};
use crate::usage;

pub fn run(args: &TrainArgs) -> Result<()> {
    check_args(args)?;
    super::set_threads(args.threads)?;
    if let Some(gpu) = args.gpu {
        usage!("--gpu {gpu}: this build of polyhead has no CUDA backend; train on the CPU without --gpu");
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
    ];
    for (flag, value) in positive {
        if value == 0 {
            usage!("{flag} must be at least 1");
        }
    }
    if !(args.lr > 0.0 && args.lr.is_finite()) {
        usage!("--lr must be a positive number, got {}", args.lr);
    }
    if !(0.0..1.0).contains(&args.dropout) {
        usage!("--dropout must be in [0, 1), got {}", args.dropout);
    }
    Ok(())
}

fn train_on<B: Backend>(backend: B, args: &TrainArgs) -> Result<()> {
    let quiet = args.quiet;
    let say = |line: String| {
        if !quiet {
            eprintln!("{line}");
        }
    };

    let started = Instant::now();
    let data = prepare_training(args)?;
    for warning in &data.warnings {
        eprintln!("polyhead: warning: {warning}");
    }
    say(data.summary());
    say(format!(
        "read and tokenised in {:.2} s",
        started.elapsed().as_secs_f64()
    ));

    let config = ModelConfig {
        embed_dim: args.embed_dim,
        filters: args.filters,
        kernel_size: args.kernel_size,
        max_len: args.max_len,
        lowercase: true,
        tasks: data
            .tasks
            .iter()
            .map(|(name, classes)| TaskConfig {
                name: name.clone(),
                hidden: args.hidden,
                classes: classes.clone(),
            })
            .collect(),
    };
    let mut rng = Rng::new(args.seed);
    let mut init_rng = rng.fork(1);
    let shape = crate::model::Shape::new(config.dims(data.vocab.len()));
    let params = initial_params(&shape, &mut init_rng);
    let max_width = data.max_width(args.kernel_size);
    let describe = backend.describe();
    let mut net = Network::new(
        backend,
        shape.clone(),
        &params,
        args.batch_size.max(256),
        max_width,
    )?;
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
        "training: {} epochs, batch {}, Adam lr {}, seed {}, dropout {}",
        args.epochs, args.batch_size, args.lr, args.seed, args.dropout
    ));

    let task_names = config.task_names();
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        adam: AdamConfig {
            lr: args.lr,
            ..AdamConfig::default()
        },
        dropout: args.dropout,
        task_weights: vec![1.0; task_names.len()],
        weighting: Method::Equal,
        eval_batch: 256,
    };
    let mut metrics = match &args.metrics_out {
        Some(path) => {
            Some(File::create(path).with_context(|| format!("cannot create {}", path.display()))?)
        }
        None => None,
    };
    let mut display = Display::new(quiet);
    let vocab = data.vocab.clone();
    let out = args.out.clone();

    let mut observe = |net: &mut Network<B>, event: Event<'_>| -> Result<()> {
        display.event(&event);
        if let Event::EpochEnd(report) = event {
            let model = Model::new(config.clone(), vocab.clone(), net.params_to_host()?)?;
            model.save(&out)?;
            if let Some(file) = metrics.as_mut() {
                writeln!(file, "{}", serde_json::to_string(report)?)
                    .and_then(|()| file.flush())
                    .context("cannot write the metrics file")?;
            }
        }
        Ok(())
    };
    train::train(
        &mut net,
        &data.train,
        data.valid.as_ref(),
        &task_names,
        &train_config,
        &mut rng,
        &mut observe,
    )?;
    say(format!("model written to {}", args.out.display()));

    if let Some(test) = &data.test {
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
        eprintln!("test: {}", line.join(" | "));
    }
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
                eprintln!("{}", epoch_line(report));
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
    for (name, s) in &report.valid {
        line += &format!(" | {name} acc {:.4} F1 {:.4}", s.accuracy, s.macro_f1);
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
