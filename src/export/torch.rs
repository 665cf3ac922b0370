//! PyTorch export: one Python file defining `PolyheadModel` (submodules
//! named like the model file's tensors), polyhead's tokenizer in pure
//! Python, and `load(path) -> (model, tokenizer)`, which reads the
//! safetensors model file with the standard library alone.
//!
//! The file is the template `polyhead_torch.py` with the model file's
//! location filled in; the weights stay in the model file, so the two
//! travel together.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{check_task_names, write_output};
use crate::model::Model;

const TEMPLATE: &str = include_str!("polyhead_torch.py");
const PLACEHOLDER: &str = "__POLYHEAD_MODEL_FILE__";

/// Writes the PyTorch module for `model` (read from `model_path`) to `out`.
pub fn export_torch(model: &Model, model_path: &Path, out: &Path) -> Result<()> {
    let source = torch_source(model, model_path, out)?;
    write_output(out, source.as_bytes())
}

/// The Python source written by [`export_torch`].
pub fn torch_source(model: &Model, model_path: &Path, out: &Path) -> Result<String> {
    check_task_names(model)?;
    for task in &model.config.tasks {
        if task.name.contains('.') {
            bail!(
                "task name {:?} contains '.', which a PyTorch module name cannot; \
                 the ONNX export has no such limit",
                task.name
            );
        }
    }
    let reference = model_reference(model_path, out)?;
    // A JSON string is also a valid Python string literal.
    let literal = serde_json::to_string(&reference.to_string_lossy())?;
    Ok(TEMPLATE.replacen(PLACEHOLDER, &literal, 1))
}

/// The model file as the module will find it: its name alone when it sits
/// in the module's folder, its absolute path otherwise.
fn model_reference(model_path: &Path, out: &Path) -> Result<PathBuf> {
    let model_path = model_path
        .canonicalize()
        .with_context(|| format!("cannot find model {}", model_path.display()))?;
    let out_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_dir = out_dir.canonicalize().with_context(|| {
        format!(
            "cannot write {}: no folder {}",
            out.display(),
            out_dir.display()
        )
    })?;
    match (model_path.parent(), model_path.file_name()) {
        (Some(parent), Some(name)) if parent == out_dir => Ok(PathBuf::from(name)),
        _ => Ok(model_path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_has_exactly_one_placeholder() {
        assert_eq!(TEMPLATE.matches(PLACEHOLDER).count(), 1);
    }

    #[test]
    fn model_beside_the_module_is_named_relatively() {
        let dir = std::env::temp_dir().join(format!("polyhead-torch-ref-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let model = dir.join("m.safetensors");
        std::fs::write(&model, b"x").unwrap();
        let beside = model_reference(&model, &dir.join("m.py")).unwrap();
        assert_eq!(beside, PathBuf::from("m.safetensors"));
        let elsewhere = model_reference(&model, &dir.join("sub/m.py")).unwrap();
        assert!(elsewhere.is_absolute() && elsewhere.ends_with("m.safetensors"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
