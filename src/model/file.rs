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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;
use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::data::vocab::check_words;
use crate::fsutil::write_atomic;
use crate::model::{Dims, HeadDims, Shape};

pub const FORMAT_VERSION: u32 = 1;

/// Largest size a model may have in any dimension (width, filters, kernel,
/// hidden units, text length): a bound on what a file can make the
/// loader allocate, and on what training accepts.
pub const MAX_SIZE: usize = 1 << 16;

/// Largest model file read (a guard against reading a wrong, huge file).
pub const MAX_FILE_BYTES: u64 = 8 << 30;

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
            ("checksum".to_string(), self.checksum()),
        ]))
    }

    /// A 128-bit hash of the parameters' bytes, in hex: catches what no
    /// structural check can, such as flipped bits in the weights.
    fn checksum(&self) -> String {
        crate::hash::hex_of(&[bytemuck::cast_slice(&self.params)])
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
        sorted_header(safetensors::serialize(views, Some(self.metadata()?))?)
    }

    /// Writes the model atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)
            .with_context(|| format!("cannot save the model to {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Model> {
        let shown = path.display();
        let bytes = read_regular_file(path, MAX_FILE_BYTES)
            .with_context(|| format!("cannot read model {shown}"))?;
        Model::from_bytes(&bytes).with_context(|| format!("{shown}: not a usable polyhead model"))
    }

    /// The model in `bytes`. Nothing is allocated in proportion to a size
    /// the file claims before that size is backed by tensor data actually
    /// present: the header is parsed once, the vocabulary may not list
    /// more words than `embedding.weight` has rows, and every tensor's
    /// presence, dtype and shape are checked before the parameters are.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let data = &bytes[8 + header_len..];
        let meta = header.metadata().as_ref();
        let field = |key: &str| -> Result<&String> {
            meta.and_then(|m| m.get(key))
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
        check_config(&config)?;
        // `labels` repeats the classes for other runtimes; one that
        // disagrees with `config` would mislead them.
        if let Ok(labels) = field("labels") {
            let stored: serde_json::Value =
                serde_json::from_str(labels).context("metadata \"labels\" is not valid JSON")?;
            let expected: serde_json::Map<String, serde_json::Value> = config
                .tasks
                .iter()
                .map(|t| (t.name.clone(), serde_json::json!(t.classes)))
                .collect();
            if stored != serde_json::Value::Object(expected) {
                bail!("metadata \"labels\" disagrees with the tasks and classes in \"config\"");
            }
        }
        let rows = tensor_rows(&header, "embedding.weight", config.embed_dim)?;
        let vocab = parse_vocab(field("vocab")?, rows, "rows of tensor embedding.weight")?;

        let shape = Shape::new(config.dims(vocab.len()));
        let expected = shape.named_tensors(&config.task_names());
        let mut located = Vec::with_capacity(expected.len());
        for (name, dims, span) in &expected {
            let info = header
                .info(name)
                .with_context(|| format!("tensor {name} is missing"))?;
            if info.dtype != Dtype::F32 {
                bail!("tensor {name} is {:?}, expected F32", info.dtype);
            }
            if info.shape != *dims {
                bail!(
                    "tensor {name} has shape {:?}, the metadata implies {:?}",
                    info.shape,
                    dims
                );
            }
            located.push((name, info.data_offsets, *span));
        }
        if header.tensors().len() != expected.len() {
            let known: HashSet<&str> = expected.iter().map(|(n, _, _)| n.as_str()).collect();
            let extra = header
                .offset_keys()
                .into_iter()
                .find(|n| !known.contains(n.as_str()));
            bail!("unexpected tensor {}", extra.unwrap_or_default());
        }

        // Every tensor above is distinct and backed by its bytes in `data`,
        // so this allocation is no larger than the file.
        let mut params = vec![0.0f32; shape.len];
        for (name, (start, end), span) in located {
            let out = &mut params[span.range()];
            read_f32s(&data[start..end], out);
            if out.iter().any(|v| !v.is_finite()) {
                bail!("tensor {name} holds a non-finite value");
            }
        }
        let model = Model {
            config,
            vocab,
            shape,
            params,
        };

        // Files from other tools may carry no checksum; one that is there
        // must match.
        if let Ok(stored) = field("checksum") {
            let actual = model.checksum();
            if *stored != actual {
                bail!(
                    "checksum {stored} in the metadata, but the weights hash to {actual} (if \
                     they were changed on purpose, remove the \"checksum\" entry)"
                );
            }
        }
        Ok(model)
    }
}

/// A safetensors file with its header's keys in sorted order: the library
/// writes the metadata in hash-map order, which differs between runs, and
/// equal models should be equal files. The header stays padded to a
/// multiple of 8 bytes, so the tensors keep their alignment.
pub fn sorted_header(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let header_len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| n <= bytes.len() - 8)
        .context("a serialized model without a header")?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len])?;
    let mut text = serde_json::to_string(&sort_keys(header))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let data = &bytes[8 + header_len..];
    let mut out = Vec::with_capacity(8 + text.len() + data.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            entries
                .into_iter()
                .map(|(key, value)| (key, sort_keys(value)))
                .collect()
        }
        other => other,
    }
}

/// Reads a whole regular file of at most `limit` bytes. A directory, a
/// device or a pipe is refused, before opening it: reading `/dev/zero`
/// would never end, and opening a named pipe waits for a writer.
pub fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let info = std::fs::metadata(path)?;
    if info.is_dir() {
        bail!("it is a directory, not a file");
    }
    if !info.is_file() {
        bail!("it is not a regular file");
    }
    if info.len() > limit {
        bail!(
            "{} bytes is larger than any file of this kind ({limit})",
            info.len()
        );
    }
    let mut bytes = Vec::with_capacity(info.len() as usize);
    File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        bail!("it grew past {limit} bytes while being read");
    }
    Ok(bytes)
}

/// Little-endian f32 values from `bytes` into `out` (same element count).
pub fn read_f32s(bytes: &[u8], out: &mut [f32]) {
    for (value, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
}

/// The first dimension of the 2-D F32 tensor `name` whose second is
/// `width`: a count backed by `rows * width * 4` bytes in the file.
fn tensor_rows(header: &Metadata, name: &str, width: usize) -> Result<usize> {
    let info = header
        .info(name)
        .with_context(|| format!("tensor {name} is missing"))?;
    match info.shape[..] {
        [rows, w] if w == width && info.dtype == Dtype::F32 => Ok(rows),
        _ => bail!(
            "tensor {name} is {:?} {:?}, expected F32 [rows, {width}]",
            info.dtype,
            info.shape
        ),
    }
}

/// The metadata's `vocab`: a JSON array of at most `limit` words (the rows
/// the weights have for them), starting with the two specials, no word
/// twice. Reading stops at the first word past the limit, so a vocabulary
/// blown up in a damaged or hostile file costs no more memory than the
/// weights it claims to describe.
pub fn parse_vocab(text: &str, limit: usize, what: &str) -> Result<Vec<String>> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let words = BoundedWords { limit, what }
        .deserialize(&mut reader)
        .and_then(|words| reader.end().map(|()| words))
        .map_err(|e| anyhow::anyhow!("metadata \"vocab\" is not valid: {}", json_reason(&e)))?;
    if words.len() != limit {
        bail!(
            "metadata \"vocab\" has {} words for {limit} {what}",
            words.len()
        );
    }
    check_words(&words).map_err(|e| anyhow::anyhow!("metadata \"vocab\" is not valid: {e}"))?;
    Ok(words)
}

/// A JSON error without serde_json's position inside the metadata string
/// when the position says nothing (a rule broken, not a syntax error).
fn json_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rsplit_once(" at line ") {
        Some((reason, _)) if e.is_data() => reason.to_string(),
        _ => full,
    }
}

/// Deserialises a JSON array of strings, failing past `limit` of them.
struct BoundedWords<'a> {
    limit: usize,
    what: &'a str,
}

impl<'de> DeserializeSeed<'de> for BoundedWords<'_> {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedWords<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of words")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        // The length hint comes from the file, so it sizes nothing.
        let mut words = Vec::new();
        while let Some(word) = seq.next_element::<String>()? {
            if words.len() == self.limit {
                let msg = format!("more words than the {} {}", self.limit, self.what);
                return Err(de::Error::custom(msg));
            }
            words.push(word);
        }
        Ok(words)
    }
}

/// Sizes in range, at least one task, task names and each task's class
/// names distinct (two tasks of one name would share tensor names; a class
/// listed twice could never be told apart).
pub fn check_config(config: &ModelConfig) -> Result<()> {
    let sizes = [
        ("embed_dim", config.embed_dim),
        ("filters", config.filters),
        ("kernel_size", config.kernel_size),
        ("max_len", config.max_len),
    ];
    for (name, value) in sizes {
        if value == 0 || value > MAX_SIZE {
            bail!("config {name} = {value} is out of range");
        }
    }
    if config.tasks.is_empty() {
        bail!("config has no tasks");
    }
    let mut names = HashSet::new();
    for task in &config.tasks {
        if !names.insert(task.name.as_str()) {
            bail!("config lists task {:?} twice", task.name);
        }
        if task.classes.is_empty() || task.hidden == 0 || task.hidden > MAX_SIZE {
            bail!(
                "task {} has {} classes and hidden {}",
                task.name,
                task.classes.len(),
                task.hidden
            );
        }
        let mut classes = HashSet::new();
        if let Some(twice) = task.classes.iter().find(|c| !classes.insert(c.as_str())) {
            bail!("task {} lists class {twice:?} twice", task.name);
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
                    classes: vec!["x".into(), "y".into(), "z".into()],
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

    /// The model's bytes with its metadata changed by `edit`.
    fn with_metadata(model: &Model, edit: impl FnOnce(&mut HashMap<String, String>)) -> Vec<u8> {
        let mut meta = model.metadata().unwrap();
        edit(&mut meta);
        let names = model.config.task_names();
        let views: Vec<(String, TensorView)> = model
            .shape
            .named_tensors(&names)
            .into_iter()
            .map(|(name, dims, span)| {
                let bytes: &[u8] = bytemuck::cast_slice(&model.params[span.range()]);
                (name, TensorView::new(Dtype::F32, dims, bytes).unwrap())
            })
            .collect();
        safetensors::serialize(views, Some(meta)).unwrap()
    }

    #[test]
    fn checksum_must_match_when_present() {
        let model = small_model();
        assert_eq!(
            Model::from_bytes(&model.to_bytes().unwrap()).unwrap(),
            model
        );

        let without = with_metadata(&model, |m| {
            m.remove("checksum");
        });
        assert_eq!(Model::from_bytes(&without).unwrap(), model);

        let mut changed = model.clone();
        changed.params[7] = -changed.params[7];
        let stale = with_metadata(&changed, |m| {
            m.insert("checksum".into(), model.checksum());
        });
        let err = Model::from_bytes(&stale).unwrap_err().to_string();
        assert!(err.contains("but the weights hash to"), "{err}");
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
