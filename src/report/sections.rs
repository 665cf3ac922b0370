//! The report's sections: what each input contributes to the page.

use anyhow::Result;

use super::charts::{bar_chart, line_chart, Bar, LineChart, Series};
use super::comparison::{Arms, Comparison, SplitScores, TaskComparison};
use super::html::{escape, figure, paragraph, table, Cell, Page};
use super::metrics::EpochMetrics;
use crate::model::Model;
use crate::train::metrics::TaskScores;

/// Beyond this many classes a full confusion matrix is unreadable; the
/// most frequent confusions are listed instead.
const MATRIX_CLASSES: usize = 30;
const TOP_CONFUSIONS: usize = 25;

/// Task names in order of first appearance over the epochs.
fn task_names<'a, T: 'a>(
    epochs: &'a [EpochMetrics],
    pick: impl Fn(&'a EpochMetrics) -> &'a super::comparison::Named<T>,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for epoch in epochs {
        for (name, _) in pick(epoch).iter() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    names
}

/// One series per task of a per-epoch, per-task value.
fn task_series(
    epochs: &[EpochMetrics],
    names: &[String],
    value: impl Fn(&EpochMetrics, &str) -> Option<f64>,
) -> Vec<Series> {
    names
        .iter()
        .map(|name| Series {
            name: name.clone(),
            points: epochs
                .iter()
                .filter_map(|e| Some((e.epoch, value(e, name)?)))
                .collect(),
        })
        .collect()
}

/// A value of one epoch for one task.
type PerTask = fn(&EpochMetrics, &str) -> Option<f64>;

fn four(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |v| format!("{v:.4}"))
}

/// Summary, losses, validation scores and loss weights of one run.
pub fn training(page: &mut Page, epochs: &[EpochMetrics]) -> Result<()> {
    let tasks = task_names(epochs, |e| &e.valid);
    let Some(last) = epochs.last() else {
        return Ok(());
    };

    let seconds: f64 = epochs.iter().filter_map(|e| e.seconds).sum();
    let mut body = paragraph(&format!(
        "{} epochs (epoch {} to {}), {:.1} s of training in all; final training loss {}, \
         validation loss {}.",
        epochs.len(),
        epochs[0].epoch,
        last.epoch,
        seconds,
        four(last.train_loss),
        four(last.valid_loss)
    ));
    if tasks.is_empty() {
        body += &paragraph("The run had no validation split: no per-task scores.");
    } else {
        let rows: Vec<Vec<Cell>> = tasks
            .iter()
            .map(|name| {
                let score = |e: &EpochMetrics| e.valid.get(name).and_then(|s| s.macro_f1);
                let best = epochs
                    .iter()
                    .filter_map(|e| Some((e.epoch, score(e)?)))
                    .fold(None, |best: Option<(usize, f64)>, (epoch, f1)| match best {
                        Some((_, b)) if b >= f1 => best,
                        _ => Some((epoch, f1)),
                    });
                let final_scores = last.valid.get(name);
                vec![
                    Cell::text(name.clone()),
                    Cell::num(four(final_scores.and_then(|s| s.accuracy))),
                    Cell::num(four(final_scores.and_then(|s| s.macro_f1))),
                    Cell::num(best.map_or("n/a".to_string(), |(e, f)| format!("{f:.4} ({e})"))),
                ]
            })
            .collect();
        body += &table(
            &[
                "task",
                "final accuracy",
                "final macro-F1",
                "best macro-F1 (epoch)",
            ],
            &rows,
        );
    }
    page.section("Run summary", body);

    let losses = [
        Series {
            name: "training loss (mean over the epoch's batches)".to_string(),
            points: epochs
                .iter()
                .filter_map(|e| Some((e.epoch, e.train_loss?)))
                .collect(),
        },
        Series {
            name: "validation loss (after the epoch)".to_string(),
            points: epochs
                .iter()
                .filter_map(|e| Some((e.epoch, e.valid_loss?)))
                .collect(),
        },
    ];
    let present: Vec<Series> = losses
        .into_iter()
        .filter(|s| !s.points.is_empty())
        .collect();
    let chart = LineChart {
        y_label: "loss",
        series: &present,
        bounds: Some((0.0, f64::INFINITY)),
    };
    let body = match line_chart(&chart)? {
        Some(svg) => figure(
            "Training and validation loss per epoch",
            &names_of(&present),
            &svg,
            "Both are sums over tasks of each task's mean cross-entropy; the training loss is \
             weighted by the loss weights in force.",
        ),
        None => paragraph("No loss was recorded."),
    };
    page.section("Loss", body);

    if !tasks.is_empty() {
        let mut body = String::new();
        for (metric, label) in [("accuracy", "accuracy"), ("macro_f1", "macro-F1")] {
            let series = task_series(epochs, &tasks, |e, name| {
                let s = e.valid.get(name)?;
                if metric == "accuracy" {
                    s.accuracy
                } else {
                    s.macro_f1
                }
            });
            let chart = LineChart {
                y_label: label,
                series: &series,
                bounds: Some((0.0, 1.0)),
            };
            body += &match line_chart(&chart)? {
                Some(svg) => figure(&format!("Validation {label} per task"), &tasks, &svg, ""),
                None => paragraph(&format!("No task has a defined validation {label}.")),
            };
        }
        page.section("Validation scores", body);
    }

    let weighted = task_names(epochs, |e| &e.loss_weights);
    let mixed = task_names(epochs, |e| &e.gradient_mix);
    if !weighted.is_empty() || !mixed.is_empty() {
        let mut body = String::new();
        let charts: [(&[String], &str, &str, PerTask, &str); 2] = [
            (
                &weighted,
                "Loss weight per task (used in the epoch; mean over its steps if they move)",
                "weight",
                |e, name| e.loss_weights.get(name).copied().flatten(),
                "1 for every task throughout: the tasks' losses are weighted equally.",
            ),
            (
                &mixed,
                "Gradient mix per task (mean coefficient of the task's gradient in the encoder's)",
                "coefficient",
                |e, name| e.gradient_mix.get(name).copied().flatten(),
                "1 for every task throughout: the encoder receives the plain sum of the tasks' \
                 gradients (no GradNorm, PCGrad or MGDA-UB); the lines lie on top of each other.",
            ),
        ];
        for (names, title, y_label, value, all_one) in charts {
            let series = task_series(epochs, names, value);
            let constant_one = series
                .iter()
                .all(|s| s.points.iter().all(|p| (p.1 - 1.0).abs() < 1e-9));
            let note = if constant_one { all_one } else { "" };
            let chart = LineChart {
                y_label,
                series: &series,
                bounds: None,
            };
            if let Some(svg) = line_chart(&chart)? {
                body += &figure(title, names, &svg, note);
            }
        }
        page.section("Loss weighting", body);
    }
    Ok(())
}

fn names_of(series: &[Series]) -> Vec<String> {
    series.iter().map(|s| s.name.clone()).collect()
}

/// The model's configuration.
pub fn model(page: &mut Page, model: &Model, source: &str) {
    let c = &model.config;
    let mut body = paragraph(&format!(
        "{source}: {} parameters; vocabulary {} words + <pad> and <unk>; embedding {}, \
         {} filters of width {}, texts cut to {} tokens{}.",
        model.shape.len,
        model.vocab.len().saturating_sub(2),
        c.embed_dim,
        c.filters,
        c.kernel_size,
        c.max_len,
        if c.lowercase { ", lower-cased" } else { "" }
    ));
    let rows: Vec<Vec<Cell>> = c
        .tasks
        .iter()
        .map(|t| {
            vec![
                Cell::text(t.name.clone()),
                Cell::num(t.hidden.to_string()),
                Cell::num(t.classes.len().to_string()),
                Cell::text(t.classes.join(", ")),
            ]
        })
        .collect();
    body += &table(&["task", "hidden", "classes", "class names"], &rows);
    page.section("Model", body);
}

/// Per-class F1 and the confusion matrix of one task on a labelled file.
pub fn class_scores(page: &mut Page, task: &str, data: &str, scores: &TaskScores) -> Result<()> {
    let mut body = paragraph(&format!(
        "{data}: {} labelled rows{}; accuracy {}, macro-F1 {}, weighted F1 {}.",
        scores.labelled,
        if scores.unknown_labels > 0 {
            format!(
                " ({} with a label the model does not know, counted as errors)",
                scores.unknown_labels
            )
        } else {
            String::new()
        },
        four(finite(scores.accuracy)),
        four(finite(scores.macro_f1)),
        four(finite(scores.weighted_f1))
    ));
    if scores.labelled == 0 {
        body += &paragraph("The file has no label for this task.");
        page.section(&format!("Per-class scores: {task}"), body);
        return Ok(());
    }

    let bars: Vec<Bar> = scores
        .classes
        .iter()
        .map(|c| Bar {
            label: if c.unseen {
                format!("{} (unseen, {})", c.class, c.support)
            } else {
                format!("{} ({})", c.class, c.support)
            },
            value: c.f1,
            spread: None,
        })
        .collect();
    let excluded: Vec<&str> = scores
        .classes
        .iter()
        .filter(|c| c.excluded)
        .map(|c| c.class.as_str())
        .collect();
    let mut note = if excluded.is_empty() {
        "Support (rows whose gold label is the class) in brackets.".to_string()
    } else {
        format!(
            "Support in brackets. Neither in the gold labels nor predicted, so left out of \
             macro-F1: {}.",
            excluded.join(", ")
        )
    };
    if scores.classes.iter().any(|c| c.unseen) {
        note += " Unseen: a gold label training never had; the model cannot predict it, so \
                 its F1 is 0, and it counts in macro-F1.";
    }
    let svg = bar_chart(&bars, "F1", (0.0, 1.0))?;
    body += &figure(&format!("F1 per class: {task}"), &[], &svg, &note);

    let names: Vec<String> = scores
        .classes
        .iter()
        .map(|c| {
            if c.unseen {
                format!("{} (unseen)", c.class)
            } else {
                c.class.clone()
            }
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    if names.len() <= MATRIX_CLASSES {
        body += &confusion_matrix(&names, &scores.confusion);
    } else {
        body += &top_confusions(&names, &scores.confusion);
    }
    page.section(&format!("Per-class scores: {task}"), body);
    Ok(())
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Rows gold, columns predicted; each cell shaded by its share of the row.
fn confusion_matrix(names: &[&str], counts: &[Vec<u64>]) -> String {
    let mut out = String::from(
        "<p class=\"note\">Confusion matrix: rows are gold labels, columns predictions; \
         shading is the share of the row (blue: correct, red: errors).</p>\n\
         <div class=\"scroll\"><table class=\"confusion\">\n<thead><tr><th>gold \\ predicted</th>",
    );
    for name in names {
        out += &format!("<th>{}</th>", escape(name));
    }
    out += "</tr></thead>\n<tbody>\n";
    for (g, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        out += &format!("<tr><th>{}</th>", escape(names[g]));
        for (p, &n) in row.iter().enumerate() {
            let share = if total == 0 {
                0.0
            } else {
                n as f64 / total as f64
            };
            let (r, gr, b) = if g == p {
                (78, 121, 167)
            } else {
                (225, 87, 89)
            };
            let alpha = if n == 0 { 0.0 } else { 0.08 + 0.72 * share };
            let ink = if alpha > 0.5 { "#fff" } else { "#222" };
            out += &format!(
                "<td style=\"background:rgba({r},{gr},{b},{alpha:.2});color:{ink}\">{n}</td>"
            );
        }
        out += "</tr>\n";
    }
    out + "</tbody>\n</table></div>\n"
}

/// The most frequent (gold, predicted) errors.
fn top_confusions(names: &[&str], counts: &[Vec<u64>]) -> String {
    let mut errors: Vec<(u64, usize, usize)> = Vec::new();
    for (g, row) in counts.iter().enumerate() {
        for (p, &n) in row.iter().enumerate() {
            if g != p && n > 0 {
                errors.push((n, g, p));
            }
        }
    }
    errors.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let shown = errors.len().min(TOP_CONFUSIONS);
    let rows: Vec<Vec<Cell>> = errors[..shown]
        .iter()
        .map(|&(n, g, p)| {
            let total: u64 = counts[g].iter().sum();
            vec![
                Cell::text(names[g]),
                Cell::text(names[p]),
                Cell::num(n.to_string()),
                Cell::num(format!("{:.1} %", 100.0 * n as f64 / total as f64)),
            ]
        })
        .collect();
    let mut out = paragraph(&format!(
        "{} classes are too many for a readable matrix: the {shown} most frequent confusions \
         of {} kinds.",
        names.len(),
        errors.len()
    ));
    out += &table(
        &["gold", "predicted", "rows", "share of the gold class"],
        &rows,
    );
    out
}

/// The comparison table of `compare --json`, with charts of the
/// differences.
pub fn comparison(page: &mut Page, c: &Comparison, source: &str) -> Result<()> {
    let s = &c.settings;
    let seeds: Vec<String> = s.seeds.iter().map(u64::to_string).collect();
    let mut body = paragraph(&format!(
        "{source}: one multi-task model against one single-task model per task, seeds {}, \
         {} epochs, batch {}, Adam lr {}, weighting {}, dropout {}; {}; {}. Figures are \
         means ± the {}; the difference is taken per seed (the arms share each seed).",
        seeds.join(", "),
        s.epochs,
        s.batch_size,
        s.lr,
        s.weighting,
        s.dropout,
        s.data.join(", "),
        s.backend,
        c.std
    ));
    for split in TaskComparison::SPLITS {
        if c.tasks.iter().all(|(_, t)| t.split(split).is_none()) {
            continue;
        }
        let mut rows = Vec::new();
        for (name, task) in c.tasks.iter() {
            let Some(scores) = task.split(split) else {
                continue;
            };
            for (metric, arms) in [
                ("accuracy", &scores.accuracy),
                ("macro-F1", &scores.macro_f1),
            ] {
                rows.push(vec![
                    Cell::text(if metric == "accuracy" {
                        name.as_str()
                    } else {
                        ""
                    }),
                    Cell::text(metric),
                    Cell::num(arms.multi_task.display(4, false)),
                    Cell::num(arms.single_task.display(4, false)),
                    Cell::num(arms.difference.display(4, true)).with_class(verdict_class(arms)),
                ]);
            }
        }
        body += &format!(
            "<h3>{}</h3>\n",
            escape(&format!("Scores on the {split} split"))
        );
        body += &table(
            &[
                "task",
                "metric",
                "multi-task",
                "single-task",
                "multi − single",
            ],
            &rows,
        );
    }
    body += &paragraph(
        "A difference is shown in green or red when its mean is further from zero than its \
         standard deviation over seeds; otherwise the seeds disagree and it is grey.",
    );

    for (metric, pick) in [
        (
            "macro-F1",
            (|s: &SplitScores| &s.macro_f1) as fn(&SplitScores) -> &Arms,
        ),
        ("accuracy", |s: &SplitScores| &s.accuracy),
    ] {
        let bars: Vec<Bar> = c
            .tasks
            .iter()
            .filter_map(|(name, t)| {
                let d = &pick(&t.valid).difference;
                Some(Bar {
                    label: name.clone(),
                    value: d.mean?,
                    spread: d.std,
                })
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let reach = bars
            .iter()
            .map(|b| b.value.abs() + b.spread.unwrap_or(0.0))
            .fold(0.01, f64::max)
            * 1.3;
        let svg = bar_chart(&bars, &format!("multi − single, {metric}"), (-reach, reach))?;
        body += &figure(
            &format!("Validation {metric}: multi-task minus single-task, per task"),
            &[],
            &svg,
            "Bars: mean over seeds; whiskers: ± one standard deviation of the per-seed \
             difference.",
        );
    }

    let digits = if c.multi_task_seconds.mean.unwrap_or(0.0) < 10.0 {
        3
    } else {
        1
    };
    let mut rows = vec![vec![
        Cell::text("multi-task (all tasks)"),
        Cell::num(c.multi_task_seconds.display(digits, false)),
    ]];
    for (name, task) in c.tasks.iter() {
        rows.push(vec![
            Cell::text(format!("single-task: {name}")),
            Cell::num(task.single_task_seconds.display(digits, false)),
        ]);
    }
    body += "<h3>Wall time per model</h3>\n";
    body += &table(&["model", "seconds"], &rows);
    page.section("Multi-task against single-task", body);
    Ok(())
}

/// `good` or `bad` when the difference's mean clears its spread, else
/// `muted`.
fn verdict_class(arms: &Arms) -> &'static str {
    let d = &arms.difference;
    match (d.mean, d.std) {
        (Some(mean), Some(std)) if mean.abs() > std => {
            if mean > 0.0 {
                "good"
            } else {
                "bad"
            }
        }
        (Some(_), _) => "muted",
        _ => "",
    }
}
