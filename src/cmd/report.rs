//! `polyhead report`: one self-contained HTML page from a run's metrics,
//! a model (scored per class on a labelled file) and a comparison.

use std::path::Path;

use anyhow::{Context, Result};

use super::data::encode_for_model;
use super::loaded::LoadedModel;
use crate::cli::{FormatArg, ReportArgs};
use crate::data::table::{read_table, Format};
use crate::fsutil::{same_file, write_atomic};
use crate::report::comparison::Comparison;
use crate::report::html::Page;
use crate::report::metrics::read_metrics;
use crate::report::sections;
use crate::train::evaluate;
use crate::usage;

pub fn run(args: &ReportArgs) -> Result<()> {
    if args.metrics.is_none() && args.model.is_none() && args.compare.is_none() {
        usage!("nothing to report: give --metrics, --model (with --data) or --compare");
    }
    let is_html = args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
    if !is_html {
        usage!("--out {}: a report is an .html file", args.out.display());
    }
    let inputs = [&args.metrics, &args.model, &args.data, &args.compare];
    if let Some(input) = inputs
        .into_iter()
        .flatten()
        .find(|i| same_file(i, &args.out))
    {
        usage!("--out would overwrite the input file {}", input.display());
    }
    super::set_threads(args.threads)?;
    let mut page = Page::new(&args.title);
    let mut inputs = Vec::new();

    if let Some(path) = &args.metrics {
        let epochs = read_metrics(path)?;
        sections::training(&mut page, &epochs)?;
        inputs.push(format!("metrics {}", path.display()));
    }
    if let Some(path) = &args.compare {
        let comparison = read_comparison(path)?;
        sections::comparison(&mut page, &comparison, &path.display().to_string())?;
        inputs.push(format!("comparison {}", path.display()));
    }
    if let Some(path) = &args.model {
        let mut loaded = LoadedModel::open(path)?;
        sections::model(&mut page, &loaded.model, &path.display().to_string());
        inputs.push(format!("model {}", path.display()));
        if let Some(data) = &args.data {
            class_scores(&mut page, &mut loaded, data, args)?;
            inputs.push(format!("data {}", data.display()));
        }
    }

    let html = page.finish(&format!(
        "polyhead {} from {}",
        env!("CARGO_PKG_VERSION"),
        inputs.join(", ")
    ));
    write_atomic(&args.out, html.as_bytes())?;
    crate::say!("report written to {}", args.out.display());
    Ok(())
}

/// Reads what `compare --json` wrote.
fn read_comparison(path: &Path) -> Result<Comparison> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "{}:{}:{}: not a comparison written by compare --json: {}",
            path.display(),
            err.line(),
            err.column(),
            err.to_string()
                .rsplit_once(" at line ")
                .map_or(err.to_string(), |(message, _)| message.to_string())
        )
    })
}

/// Scores the model on `data` and adds a section per task it has labels for.
fn class_scores(
    page: &mut Page,
    loaded: &mut LoadedModel,
    data: &Path,
    args: &ReportArgs,
) -> Result<()> {
    let format = args.format.map(|f| match f {
        FormatArg::Tsv => Format::Tsv,
        FormatArg::Csv => Format::Csv,
        FormatArg::Jsonl => Format::Jsonl,
    });
    let table = read_table(data, format)?;
    let config = loaded.model.config.clone();
    let names = config.task_names();
    let labelled: Vec<String> = names
        .iter()
        .filter(|n| table.columns.contains(n))
        .cloned()
        .collect();
    if labelled.is_empty() {
        usage!(
            "--data {}: no column for any of the model's tasks ({}); its columns: {}",
            data.display(),
            names.join(", "),
            table.columns.join(", ")
        );
    }
    let (encoded, summary) = encode_for_model(loaded, &table, &args.text_column, &labelled)?;
    let eval = evaluate(loaded.network(), &encoded, 256)?;
    for (i, task) in config.tasks.iter().enumerate() {
        if !labelled.contains(&task.name) {
            continue;
        }
        let classes = task.classes.iter().chain(&summary.unseen_labels[i]);
        let scores = eval.confusions[i].scores(&classes.cloned().collect::<Vec<_>>());
        sections::class_scores(page, &task.name, &table.source, &scores)?;
    }
    Ok(())
}
