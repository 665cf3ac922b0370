//! The model file: one `.safetensors` holding the fp32 weights under their
//! PyTorch names and, in the metadata, everything else needed to predict.
//!
//! Metadata keys (all values are strings, as safetensors requires):
//! - `format`: `polyhead`; `format_version`: `1`;
//! - `config`: JSON [`ModelConfig`] (sizes, tokenizer settings, tasks with
//!   their hidden width and class names in index order);
//! - `vocab`: JSON array of words, index = token id (`<pad>`, `<unk>` first);
//! - `labels`: JSON object, task name -> class names (a copy of the classes
//!   in `config`, in the form other runtimes read most easily).
//!
//! Everything read back is treated as hostile: safetensors validates the
//! header and offsets, and this module checks every tensor's presence,
//! dtype and shape against the configuration before any value is used.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::model::{Dims, HeadDims, Shape};

pub const FORMAT_VERSION: u32 = 1;

/// Largest model file read (a guard against reading a wrong, huge file).
const MAX_FILE_BYTES: u64 = 8 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskConfig {
    pub name: String,
    pub hidden: usize,
    pub classes: Vec<String>,
}

/// Everything about a model except its weights and vocabulary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub embed_dim: usize,
    pub filters: usize,
    pub kernel_size: usize,
    /// Texts are cut to this many tokens.
    pub max_len: usize,
    /// Tokenizer setting: lower-case before splitting.
    pub lowercase: bool,
    pub tasks: Vec<TaskConfig>,
}

impl ModelConfig {
    pub fn dims(&self, vocab: usize) -> Dims {
        Dims {
            vocab,
            embed: self.embed_dim,
            filters: self.filters,
            kernel: self.kernel_size,
            heads: self
                .tasks
                .iter()
                .map(|t| HeadDims {
                    hidden: t.hidden,
                    classes: t.classes.len(),
                })
                .collect(),
        }
    }

    pub fn task_names(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.name.clone()).collect()
    }
}

/// A whole model: configuration, vocabulary and flat parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub config: ModelConfig,
    pub vocab: Vec<String>,
    pub shape: Shape,
    pub params: Vec<f32>,
}

impl Model {
    pub fn new(config: ModelConfig, vocab: Vec<String>, params: Vec<f32>) -> Result<Model> {
        let shape = Shape::new(config.dims(vocab.len()));
        if params.len() != shape.len {
            bail!("{} parameters for a model of {}", params.len(), shape.len);
        }
        Ok(Model {
            config,
            vocab,
            shape,
            params,
        })
    }

    /// The metadata stored in the file.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let labels: serde_json::Map<String, serde_json::Value> = self
            .config
            .tasks
            .iter()
            .map(|t| (t.name.clone(), serde_json::json!(t.classes)))
            .collect();
        Ok(HashMap::from([
            ("format".to_string(), "polyhead".to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("config".to_string(), serde_json::to_string(&self.config)?),
            ("vocab".to_string(), serde_json::to_string(&self.vocab)?),
            ("labels".to_string(), serde_json::to_string(&labels)?),
        ]))
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let names = self.config.task_names();
        let tensors = self.shape.named_tensors(&names);
        let mut views = Vec::with_capacity(tensors.len());
        for (name, dims, span) in &tensors {
            let bytes: &[u8] = bytemuck::cast_slice(&self.params[span.range()]);
            views.push((
                name.clone(),
                TensorView::new(Dtype::F32, dims.clone(), bytes)?,
            ));
        }
        Ok(safetensors::serialize(views, Some(self.metadata()?))?)
    }

    /// Writes the model atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
            .with_context(|| format!("cannot save the model to {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Model> {
        let shown = path.display();
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read model {shown}"))?
            .len();
        if size > MAX_FILE_BYTES {
            bail!("{shown}: {size} bytes is larger than any model file ({MAX_FILE_BYTES})");
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read model {shown}"))?;
        Model::from_bytes(&bytes).with_context(|| format!("{shown}: not a usable polyhead model"))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| -> Result<&String> {
            meta.get(key)
                .with_context(|| format!("metadata has no \"{key}\" entry"))
        };

        if field("format")? != "polyhead" {
            bail!(
                "metadata \"format\" is {:?}, not \"polyhead\"",
                field("format")?
            );
        }
        let version: u32 = field("format_version")?
            .parse()
            .context("metadata \"format_version\" is not a number")?;
        if version != FORMAT_VERSION {
            bail!("format version {version} is not supported (this build reads {FORMAT_VERSION})");
        }
        let config: ModelConfig =
            serde_json::from_str(field("config")?).context("metadata \"config\" is not valid")?;
        let vocab: Vec<String> =
            serde_json::from_str(field("vocab")?).context("metadata \"vocab\" is not valid")?;
        check_config(&config, &vocab)?;

        let shape = Shape::new(config.dims(vocab.len()));
        let mut params = vec![0.0f32; shape.len];
        let expected = shape.named_tensors(&config.task_names());
        for (name, dims, span) in &expected {
            let view = tensors
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("tensor {name} is missing"))?;
            if view.dtype() != Dtype::F32 {
                bail!("tensor {name} is {:?}, expected F32", view.dtype());
            }
            if view.shape() != dims.as_slice() {
                bail!(
                    "tensor {name} has shape {:?}, the metadata implies {:?}",
                    view.shape(),
                    dims
                );
            }
            for (out, chunk) in params[span.range()]
                .iter_mut()
                .zip(view.data().chunks_exact(4))
            {
                *out = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            }
        }
        if tensors.len() != expected.len() {
            let known: Vec<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
            let extra = tensors.names().into_iter().find(|n| !known.contains(n));
            bail!(
                "unexpected tensor {}",
                extra.map_or("?".to_string(), |n| n.to_string())
            );
        }
        if let Some(bad) = params.iter().position(|v| !v.is_finite()) {
            let (name, _, _) = expected
                .iter()
                .find(|(_, _, s)| s.range().contains(&bad))
                .expect("spans tile");
            bail!("tensor {name} holds a non-finite value");
        }
        Ok(Model {
            config,
            vocab,
            shape,
            params,
        })
    }
}

fn check_config(config: &ModelConfig, vocab: &[String]) -> Result<()> {
    let sizes = [
        ("embed_dim", config.embed_dim),
        ("filters", config.filters),
        ("kernel_size", config.kernel_size),
        ("max_len", config.max_len),
    ];
    for (name, value) in sizes {
        if value == 0 || value > 1 << 16 {
            bail!("config {name} = {value} is out of range");
        }
    }
    if vocab.len() < 2 || vocab[0] != "<pad>" || vocab[1] != "<unk>" {
        bail!("vocab must start with \"<pad>\", \"<unk>\"");
    }
    if config.tasks.is_empty() {
        bail!("config has no tasks");
    }
    for task in &config.tasks {
        if task.classes.is_empty() || task.hidden == 0 || task.hidden > 1 << 16 {
            bail!(
                "task {} has {} classes and hidden {}",
                task.name,
                task.classes.len(),
                task.hidden
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_model() -> Model {
        let config = ModelConfig {
            embed_dim: 4,
            filters: 3,
            kernel_size: 2,
            max_len: 16,
            lowercase: true,
            tasks: vec![
                TaskConfig {
                    name: "topic".into(),
                    hidden: 5,
                    classes: vec!["a".into(), "b".into()],
                },
                TaskConfig {
                    name: "mood".into(),
                    hidden: 2,
                    classes: vec!["x".into(); 3],
                },
            ],
        };
        let vocab: Vec<String> = ["<pad>", "<unk>", "hello"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let len = Shape::new(config.dims(vocab.len())).len;
        let params = (0..len).map(|i| i as f32 * 0.25 - 3.0).collect();
        Model::new(config, vocab, params).unwrap()
    }

    #[test]
    fn round_trip_is_exact() {
        let model = small_model();
        let back = Model::from_bytes(&model.to_bytes().unwrap()).unwrap();
        assert_eq!(back, model);
    }

    #[test]
    fn shape_disagreeing_with_metadata_is_named() {
        let mut model = small_model();
        let bytes = model.to_bytes().unwrap();
        model.config.filters = 4;
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.insert(
            "config".into(),
            serde_json::to_string(&model.config).unwrap(),
        );
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let views: Vec<(String, TensorView)> = tensors.tensors();
        let altered = safetensors::serialize(views, Some(meta)).unwrap();
        let err = Model::from_bytes(&altered).unwrap_err().to_string();
        assert!(
            err.contains("tensor conv.weight has shape [3, 4, 2]"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_rejected() {
        let bytes = small_model().to_bytes().unwrap();
        let err = Model::from_bytes(&bytes[..bytes.len() - 8])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid safetensors file"), "{err}");
    }
}
