//! `polyhead predict`: one JSON object per input text on standard output,
//! in input order, nothing skipped.
//!
//! Each object holds the record's 1-based line number, each task's most
//! probable label with its probability (and the top K, or the whole
//! probability vector, when asked), and flags: `empty` for a text without
//! tokens (it is still predicted, from padding alone) and `all_oov` for a
//! text whose every token is unknown to the model.

use std::io::{BufRead, BufWriter, Write};

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use super::data::{read_records, InputRecord};
use super::loaded::LoadedModel;
use crate::cli::PredictArgs;
use crate::data::table::read_text_lines;
use crate::usage;

/// Texts predicted together.
const BATCH: usize = 256;

pub fn run(args: &PredictArgs) -> Result<()> {
    super::set_threads(args.threads)?;
    if args.top_k == Some(0) {
        usage!("--top-k must be at least 1");
    }
    let mut model = LoadedModel::open(&args.model)?;
    let records = read_records(args)?;

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let (mut empty, mut all_oov, mut tokens_total, mut unknown_total) = (0, 0, 0usize, 0usize);
    for chunk in records.chunks(BATCH) {
        let encoded: Vec<(Vec<String>, Vec<i32>)> =
            chunk.iter().map(|r| model.encode(&r.text)).collect();
        let probabilities = model.probabilities(encoded.iter().map(|(_, ids)| ids.as_slice()))?;
        for ((record, (tokens, ids)), probs) in chunk.iter().zip(&encoded).zip(&probabilities) {
            let unknown = ids.iter().filter(|&&id| id == 1).count();
            tokens_total += ids.len();
            unknown_total += unknown;
            let mut flags = Vec::new();
            if ids.is_empty() {
                flags.push("empty");
                empty += 1;
            } else if unknown == ids.len() {
                flags.push("all_oov");
                all_oov += 1;
            }
            let line = record_json(&model, args, record, tokens, ids, probs, &flags);
            writeln!(out, "{line}").context("cannot write to standard output")?;
        }
    }
    out.flush().context("cannot write to standard output")?;

    let oov_rate = if tokens_total == 0 {
        0.0
    } else {
        unknown_total as f64 / tokens_total as f64
    };
    crate::say!(
        "predicted {} ({empty} empty, {all_oov} all unknown words); \
         {:.1}% of tokens unknown to the model",
        super::count(records.len(), "text"),
        100.0 * oov_rate
    );
    Ok(())
}

fn record_json(
    model: &LoadedModel,
    args: &PredictArgs,
    record: &InputRecord,
    tokens: &[String],
    ids: &[i32],
    probs: &[Vec<f64>],
    flags: &[&str],
) -> Value {
    let mut tasks = Map::new();
    for (task, p) in model.model.config.tasks.iter().zip(probs) {
        let mut order: Vec<usize> = (0..p.len()).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let best = order[0];
        let mut entry = Map::new();
        entry.insert("label".into(), json!(task.classes[best]));
        entry.insert("probability".into(), json!(p[best]));
        if let Some(k) = args.top_k {
            let top: Vec<Value> = order
                .iter()
                .take(k)
                .map(|&c| json!({"label": task.classes[c], "probability": p[c]}))
                .collect();
            entry.insert("top".into(), Value::Array(top));
        }
        if args.probs {
            entry.insert("probabilities".into(), json!(p));
        }
        tasks.insert(task.name.clone(), Value::Object(entry));
    }
    let mut object = Map::new();
    object.insert("line".into(), json!(record.line));
    if let Some(id) = &record.id {
        object.insert("id".into(), json!(id));
    }
    object.insert("tasks".into(), Value::Object(tasks));
    object.insert("flags".into(), json!(flags));
    if args.explain_tokens {
        let shown: Vec<&str> = tokens
            .iter()
            .zip(ids)
            .map(|(t, &id)| if id == 1 { "<unk>" } else { t.as_str() })
            .collect();
        object.insert("tokens".into(), json!(shown));
        object.insert("ids".into(), json!(ids));
    }
    Value::Object(object)
}

/// Plain text input: one text per line, LF or CRLF, an optional BOM.
pub fn read_lines(reader: impl BufRead, source: &str) -> Result<Vec<InputRecord>> {
    let records = read_text_lines(reader, source)?;
    Ok(records
        .into_iter()
        .map(|record| InputRecord {
            line: record.line,
            id: None,
            text: record.cell(0).unwrap_or_default().to_string(),
        })
        .collect())
}
