//! Export to other runtimes: an ONNX graph of the whole model, or a small
//! PyTorch module (with the tokenizer in pure Python) that reads the model
//! file itself.
//!
//! Both compute the model's function exactly as polyhead does (same
//! padding rule, same valid windows) and take token ids in the same
//! convention: one text per row, right-padded with 0, unknown words 1.
//! Beside every exported file goes `<stem>.vocab.json`, the vocabulary,
//! label names, configuration and tokenizer reference in one JSON object,
//! so that a program can turn text into ids and class indices into labels
//! without polyhead. The ONNX file also carries the same strings in its
//! `metadata_props`.

pub mod onnx;
pub mod proto;
pub mod torch;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::fsutil::write_atomic;
use crate::model::Model;

pub use onnx::export_onnx;
pub use torch::export_torch;

pub use crate::data::tokenizer::TOKENIZER_VERSION;

/// What `polyhead export --format` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Onnx,
    Torch,
}

impl FromStr for ExportFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<ExportFormat> {
        match s {
            "onnx" => Ok(ExportFormat::Onnx),
            "torch" => Ok(ExportFormat::Torch),
            other => bail!("unknown export format {other:?} (expected onnx or torch)"),
        }
    }
}

/// Loads the model at `model_path` and writes it as `format` ("onnx" or
/// "torch") to `out`, with the vocabulary sidecar beside it.
pub fn run_export(model_path: &Path, format: &str, out: &Path) -> Result<()> {
    let format: ExportFormat = format.parse()?;
    let sidecar = sidecar_path(out)?;
    for written in [out, sidecar.as_path()] {
        if same_file(model_path, written) {
            crate::usage!(
                "--out {}: the export would write {}, the model file (--model); choose \
                 another --out",
                out.display(),
                written.display()
            );
        }
    }
    check_extension(format, out)?;
    let model = Model::load(model_path)?;
    match format {
        ExportFormat::Onnx => export_onnx(&model, out)?,
        ExportFormat::Torch => export_torch(&model, model_path, out)?,
    }
    write_sidecar(&model, &sidecar)
}

/// An `--out` whose extension names another format (`model.onnx` for the
/// PyTorch file) would mislead whoever opens it later; any other name is
/// the user's choice.
fn check_extension(format: ExportFormat, out: &Path) -> Result<()> {
    let expected = match format {
        ExportFormat::Onnx => "onnx",
        ExportFormat::Torch => "py",
    };
    let known = [
        "onnx",
        "py",
        "pt",
        "pth",
        "safetensors",
        "tsv",
        "tab",
        "csv",
        "jsonl",
        "ndjson",
        "json",
        "txt",
    ];
    let extension = out.extension().map(|e| e.to_string_lossy().to_lowercase());
    if let Some(extension) = extension.filter(|e| known.contains(&e.as_str()) && e != expected) {
        crate::usage!(
            "--out {}: a .{extension} name for the {} export; use a .{expected} name",
            out.display(),
            match format {
                ExportFormat::Onnx => "ONNX",
                ExportFormat::Torch => "PyTorch (Python source)",
            }
        );
    }
    Ok(())
}

/// `dir/name.vocab.json` for an export written to `dir/name.ext`.
pub fn sidecar_path(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().map(|n| n.to_string_lossy());
    match name {
        Some(name) if !name.ends_with(".vocab.json") => Ok(out.with_extension("vocab.json")),
        _ => bail!(
            "{}: choose another output name (the vocabulary goes to NAME.vocab.json beside it)",
            out.display()
        ),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The sidecar object: vocabulary, labels, configuration, tokenizer.
pub fn sidecar_json(model: &Model) -> Result<serde_json::Value> {
    let labels: serde_json::Map<String, serde_json::Value> = model
        .config
        .tasks
        .iter()
        .map(|t| (t.name.clone(), json!(t.classes)))
        .collect();
    Ok(json!({
        "format": "polyhead",
        "vocab": model.vocab,
        "labels": labels,
        "config": serde_json::to_value(&model.config)?,
        "tokenizer": tokenizer_json(model),
    }))
}

/// Writes the sidecar to `path` (atomically).
pub fn write_sidecar(model: &Model, path: &Path) -> Result<()> {
    let text = serde_json::to_string(&sidecar_json(model)?)?;
    write_output(path, text.as_bytes())
}

/// What a runtime needs to reproduce the token ids.
fn tokenizer_json(model: &Model) -> serde_json::Value {
    json!({
        "rule": "polyhead",
        "version": TOKENIZER_VERSION,
        "lowercase": model.config.lowercase,
        "max_len": model.config.max_len,
        "padding_id": 0,
        "unknown_id": 1,
    })
}

/// The model file's metadata (same keys, same strings) plus `tokenizer`,
/// in a fixed order.
pub fn metadata_entries(model: &Model) -> Result<Vec<(String, String)>> {
    let mut stored: Vec<(String, String)> = model.metadata()?.into_iter().collect();
    stored.sort();
    if !stored.iter().any(|(key, _)| key == "tokenizer") {
        stored.push((
            "tokenizer".to_string(),
            serde_json::to_string(&tokenizer_json(model))?,
        ));
    }
    Ok(stored)
}

/// Task names become output names (ONNX) or module names (PyTorch): an
/// empty one can be neither.
fn check_task_names(model: &Model) -> Result<()> {
    if model.config.tasks.iter().any(|t| t.name.is_empty()) {
        bail!("the model has a task with an empty name, which cannot be exported");
    }
    Ok(())
}

fn write_output(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
