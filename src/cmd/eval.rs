//! `polyhead eval`: score a model on a labelled table, per task.

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::data::encode_for_model;
use super::loaded::LoadedModel;
use crate::cli::EvalArgs;
use crate::data::table::read_table;
use crate::train::evaluate;
use crate::train::metrics::TaskScores;
use crate::usage;

pub fn run(args: &EvalArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    let mut loaded = LoadedModel::open(&args.model)?;
    let config = loaded.model.config.clone();
    let names = config.task_names();
    let selected: Vec<usize> = match &args.tasks {
        None => (0..names.len()).collect(),
        Some(wanted) => {
            let mut picked = Vec::new();
            for task in wanted {
                let Some(i) = names.iter().position(|n| n == task) else {
                    usage!(
                        "--tasks: the model has no task {task:?} (it has {})",
                        names.join(", ")
                    );
                };
                if picked.contains(&i) {
                    usage!("--tasks names {task:?} twice");
                }
                picked.push(i);
            }
            picked
        }
    };

    let format = args.format.map(|f| match f {
        crate::cli::FormatArg::Tsv => crate::data::table::Format::Tsv,
        crate::cli::FormatArg::Csv => crate::data::table::Format::Csv,
        crate::cli::FormatArg::Jsonl => crate::data::table::Format::Jsonl,
    });
    let table = read_table(&args.data, format)?;
    let text_column = args
        .text_column
        .clone()
        .unwrap_or_else(|| "text".to_string());
    let selected_names: Vec<String> = selected.iter().map(|&i| names[i].clone()).collect();
    let (encoded, summary) = encode_for_model(&loaded, &table, &text_column, &selected_names)?;

    let eval = evaluate(loaded.network(), &encoded, 256)?;
    let mut report = Map::new();
    for &i in &selected {
        let classes = config.tasks[i].classes.iter();
        let class_names: Vec<String> = classes.chain(&summary.unseen_labels[i]).cloned().collect();
        let scores = eval.confusions[i].scores(&class_names);
        if args.json {
            report.insert(names[i].clone(), serde_json::to_value(&scores)?);
        } else {
            super::show_text(&task_table(&names[i], &scores));
        }
    }
    if args.json {
        let object = json!({
            "model": args.model.display().to_string(),
            "data": table.source,
            "rows": encoded.rows(),
            "tasks": Value::Object(report),
        });
        crate::show!("{object}");
    }
    Ok(())
}

/// A readable report of one task's scores.
fn task_table(name: &str, s: &TaskScores) -> String {
    let mut out = format!("== {name}: {} labelled rows", s.labelled);
    if s.unknown_labels > 0 {
        out += &format!(
            " ({} row{} with a label unknown to the model, counted as errors)",
            s.unknown_labels,
            if s.unknown_labels == 1 { "" } else { "s" }
        );
    }
    out += "\n";
    if s.labelled == 0 {
        return out + "no labelled rows for this task in the file\n\n";
    }
    out += &format!(
        "accuracy {:.4}  macro-F1 {:.4}  weighted-F1 {:.4}\n",
        s.accuracy, s.macro_f1, s.weighted_f1
    );
    let width = s
        .classes
        .iter()
        .map(|c| c.class.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    out += &format!("{:width$}  precision  recall      F1  support\n", "class");
    for c in &s.classes {
        let note = if c.unseen {
            "  unseen in training, never predicted"
        } else if c.excluded {
            "  no support, excluded from macro-F1"
        } else if c.never_predicted {
            "  never predicted"
        } else {
            ""
        };
        out += &format!(
            "{:width$}  {:9.4}  {:6.4}  {:6.4}  {:7}{note}\n",
            c.class, c.precision, c.recall, c.f1, c.support
        );
    }
    out += "confusion (rows gold, columns predicted, in class order):\n";
    for (c, row) in s.classes.iter().zip(&s.confusion) {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:6}")).collect();
        out += &format!("{:width$}  {}\n", c.class, cells.join(""));
    }
    out + "\n"
}
