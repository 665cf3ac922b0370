//! The resumable state of a training run, in a second safetensors file
//! beside the model (`model.safetensors` -> `model.state.safetensors`).
//!
//! It holds the flat parameters and both Adam moments as tensors, and in
//! its metadata the run state (epoch, position, losses so far, loss
//! weighting, seed), the model configuration and vocabulary, and a
//! fingerprint of the data and of every option that shapes training, so a
//! resumed run can refuse data or options that differ. The file is written
//! atomically and validated fully on reading, like the model file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, Metadata, TensorView};
use safetensors::SafeTensors;

use crate::fsutil::write_atomic;
use crate::model::file::{
    check_config, parse_vocab, read_f32s, read_regular_file, sorted_header, MAX_FILE_BYTES,
};
use crate::model::network::LossScale;
use crate::model::{ModelConfig, Shape};
use crate::train::RunState;

const FORMAT: &str = "polyhead-state";
const FORMAT_VERSION: u32 = 1;

/// Everything needed to continue a run.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub run: RunState,
    /// Adam steps taken.
    pub step: u64,
    pub config: ModelConfig,
    pub vocab: Vec<String>,
    /// Options that shape training, by flag name, as given.
    pub options: Vec<(String, String)>,
    /// Hash of the encoded training data and label lists.
    pub data_fingerprint: String,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// The state file that belongs to `model`.
pub fn state_path(model: &Path) -> PathBuf {
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".safetensors").unwrap_or(&name);
    model.with_file_name(format!("{stem}.state.safetensors"))
}

/// A folder of checkpoints, one file per save point, named by position
/// (`ckpt-e000003-b000000012.state.safetensors`: epoch 3, 12 batches done),
/// of which the newest `keep_last` are kept.
pub struct CheckpointDir {
    dir: PathBuf,
    keep_last: usize,
}

const CHECKPOINT_PREFIX: &str = "ckpt-e";
const CHECKPOINT_SUFFIX: &str = ".state.safetensors";

impl CheckpointDir {
    /// Creates `dir` if needed and removes temporaries that an interrupted
    /// save left there.
    pub fn open(dir: &Path, keep_last: usize) -> Result<CheckpointDir> {
        if keep_last == 0 {
            bail!("at least one checkpoint must be kept");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--ckpt-dir {}: cannot create the folder", dir.display()))?;
        let hidden = format!(".{CHECKPOINT_PREFIX}");
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&hidden) && name.contains(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
            keep_last,
        })
    }

    /// Writes `checkpoint` as a new file (atomically), reads it back, and
    /// only then deletes the oldest files beyond `keep_last`: the newest
    /// file kept is always one known to load.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<PathBuf> {
        let name = format!(
            "{CHECKPOINT_PREFIX}{:06}-b{:09}{CHECKPOINT_SUFFIX}",
            checkpoint.run.epoch, checkpoint.run.batches_done
        );
        let path = self.dir.join(name);
        checkpoint.save(&path)?;
        Checkpoint::load(&path).with_context(|| {
            format!(
                "the checkpoint just written does not read back; older ones in {} are kept",
                self.dir.display()
            )
        })?;
        for old in checkpoints_in(&self.dir)?.into_iter().skip(self.keep_last) {
            let _ = std::fs::remove_file(old);
        }
        Ok(path)
    }
}

/// The checkpoint files in `dir`, newest position first.
pub fn checkpoints_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the checkpoint folder {}", dir.display()))?;
    let mut found: Vec<((u64, u64), PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let position = name
                .strip_prefix(CHECKPOINT_PREFIX)?
                .strip_suffix(CHECKPOINT_SUFFIX)?
                .split_once("-b")
                .and_then(|(e, b)| Some((e.parse().ok()?, b.parse().ok()?)))?;
            Some((position, entry.path()))
        })
        .collect();
    found.sort_by_key(|(position, _)| std::cmp::Reverse(*position));
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// The newest checkpoint in `dir` that loads and validates. Each newer one
/// that does not is passed to `skipped` with the reason.
pub fn newest_valid(
    dir: &Path,
    skipped: &mut dyn FnMut(&Path, &anyhow::Error),
) -> Result<(PathBuf, Checkpoint)> {
    let files = checkpoints_in(dir)?;
    if files.is_empty() {
        bail!(
            "{}: no checkpoint ({CHECKPOINT_PREFIX}*{CHECKPOINT_SUFFIX}) in this folder",
            dir.display()
        );
    }
    for file in &files {
        match Checkpoint::load(file) {
            Ok(checkpoint) => return Ok((file.clone(), checkpoint)),
            Err(error) => skipped(file, &error),
        }
    }
    bail!(
        "{}: none of its {} checkpoints is valid",
        dir.display(),
        files.len()
    )
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.params.len();
        let mut views = Vec::new();
        for (name, values) in [
            ("params", &self.params),
            ("adam.m", &self.m),
            ("adam.v", &self.v),
        ] {
            let bytes: &[u8] = bytemuck::cast_slice(values);
            views.push((
                name.to_string(),
                TensorView::new(Dtype::F32, vec![n], bytes)?,
            ));
        }
        let options: serde_json::Map<String, serde_json::Value> = self
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        let meta = HashMap::from([
            ("checksum".to_string(), self.checksum()),
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("run".to_string(), serde_json::to_string(&self.run)?),
            ("step".to_string(), self.step.to_string()),
            ("config".to_string(), serde_json::to_string(&self.config)?),
            ("vocab".to_string(), serde_json::to_string(&self.vocab)?),
            ("options".to_string(), serde_json::to_string(&options)?),
            (
                "data_fingerprint".to_string(),
                self.data_fingerprint.clone(),
            ),
        ]);
        let bytes = sorted_header(safetensors::serialize(views, Some(meta))?)?;
        write_atomic(path, &bytes)
            .with_context(|| format!("cannot save the run state {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let shown = path.display();
        let bytes = read_regular_file(path, MAX_STATE_BYTES)
            .with_context(|| format!("cannot read the run state {shown}"))?;
        Checkpoint::from_bytes(&bytes).with_context(|| format!("{shown}: not a usable run state"))
    }

    /// The state in `bytes`, validated as fully as a model file: the
    /// configuration and vocabulary, the tensors against the parameter
    /// count they imply (checked before anything is read), finite values,
    /// and the run state's per-task lists against the number of tasks.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let data = &bytes[8 + header_len..];
        let meta = header.metadata().as_ref();
        let field = |key: &str| -> Result<&String> {
            meta.and_then(|m| m.get(key))
                .with_context(|| format!("metadata has no \"{key}\" entry"))
        };
        if field("format")? != FORMAT || field("format_version")? != &FORMAT_VERSION.to_string() {
            bail!("not a polyhead run state of format version {FORMAT_VERSION}");
        }
        let config: ModelConfig =
            serde_json::from_str(field("config")?).context("metadata \"config\" is not valid")?;
        check_config(&config)?;

        // The parameter count bounds the vocabulary (V * D <= count) before
        // it is read, as the embedding's rows do in a model file.
        let count = flat_len(&header, "params")?;
        let Some(words) = vocab_size_for(&config, count) else {
            bail!("tensor params holds {count} values: no vocabulary size gives that many");
        };
        let vocab = parse_vocab(field("vocab")?, words, "words the parameter count implies")?;
        let shape = Shape::new(config.dims(vocab.len()));
        let mut tensors = Vec::with_capacity(3);
        for name in ["params", "adam.m", "adam.v"] {
            let len = flat_len(&header, name)?;
            if len != shape.len {
                bail!(
                    "tensor {name} holds {len} values, the configuration needs {}",
                    shape.len
                );
            }
            let (start, end) = header
                .info(name)
                .map(|i| i.data_offsets)
                .unwrap_or_default();
            let mut values = vec![0.0f32; len];
            read_f32s(&data[start..end], &mut values);
            if values.iter().any(|v| !v.is_finite()) {
                bail!("tensor {name} holds a non-finite value");
            }
            tensors.push(values);
        }
        if tensors[2].iter().any(|&v| v < 0.0) {
            bail!("tensor adam.v holds a negative value (a second moment cannot be)");
        }
        if header.tensors().len() != 3 {
            let extra = header
                .offset_keys()
                .into_iter()
                .find(|n| !["params", "adam.m", "adam.v"].contains(&n.as_str()));
            bail!("unexpected tensor {}", extra.unwrap_or_default());
        }

        let options: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(field("options")?).context("metadata \"options\" is not valid")?;
        let options = options
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(v) => Ok((k, v)),
                _ => bail!("metadata \"options\": {k} is not a string"),
            })
            .collect::<Result<Vec<_>>>()?;
        let run: serde_json::Value =
            serde_json::from_str(field("run")?).context("metadata \"run\" is not valid")?;
        check_run(&run, config.tasks.len()).context("metadata \"run\" is not valid")?;
        let v = tensors.pop().unwrap_or_default();
        let m = tensors.pop().unwrap_or_default();
        let params = tensors.pop().unwrap_or_default();
        let checkpoint = Checkpoint {
            run: serde_json::from_value(run).context("metadata \"run\" is not valid")?,
            step: field("step")?
                .parse()
                .context("metadata \"step\" is not a number")?,
            config,
            vocab,
            options,
            data_fingerprint: field("data_fingerprint")?.clone(),
            params,
            m,
            v,
        };
        // Last, so that a damaged file reports what is wrong with it first;
        // this catches what no structural check can, such as flipped bits.
        let stored = field("checksum")?;
        let actual = if stored.len() == 16 {
            checkpoint.legacy_checksum()
        } else {
            checkpoint.checksum()
        };
        if stored != &actual {
            bail!("checksum {stored} in the metadata, but the tensors hash to {actual}");
        }
        Ok(checkpoint)
    }

    /// A 128-bit hash of the three tensors' bytes, in hex.
    fn checksum(&self) -> String {
        let tensors = [&self.params, &self.m, &self.v];
        let parts: Vec<&[u8]> = tensors.iter().map(|t| bytemuck::cast_slice(t)).collect();
        crate::hash::hex_of(&parts)
    }

    /// The 64-bit checksum of state files written before [`Self::checksum`]
    /// (16 hex digits), still verified so those runs can be resumed.
    fn legacy_checksum(&self) -> String {
        let mut hash = Fingerprint::default();
        for values in [&self.params, &self.m, &self.v] {
            hash.words(bytemuck::cast_slice(values));
        }
        hash.hex()
    }
}

impl Checkpoint {
    /// The run's position must lie within its data: at most
    /// `batches_per_epoch` batches done in the epoch, and no more Adam
    /// steps than batches trained so far (a damaged count would skip the
    /// rest of the data or overflow the step counter).
    pub fn check_progress(&self, batches_per_epoch: usize) -> Result<()> {
        let run = &self.run;
        if run.batches_done > batches_per_epoch {
            bail!(
                "{} batches of epoch {} are done, but an epoch has {batches_per_epoch}",
                run.batches_done,
                run.epoch
            );
        }
        let trained = (run.epoch as u64 - 1)
            .checked_mul(batches_per_epoch as u64)
            .and_then(|n| n.checked_add(run.batches_done as u64));
        if trained.is_none_or(|n| self.step > n) {
            bail!(
                "{} Adam steps recorded, more than the batches trained up to epoch {}, batch {}",
                self.step,
                run.epoch,
                run.batches_done
            );
        }
        Ok(())
    }
}

/// Largest run-state file read: parameters and two moments of the largest
/// model, plus metadata.
const MAX_STATE_BYTES: u64 = 4 * MAX_FILE_BYTES;

/// The length of the flat F32 tensor `name`.
fn flat_len(header: &Metadata, name: &str) -> Result<usize> {
    let info = header
        .info(name)
        .with_context(|| format!("tensor {name} is missing"))?;
    match info.shape[..] {
        [len] if info.dtype == Dtype::F32 => Ok(len),
        _ => bail!(
            "tensor {name} is {:?} {:?}, expected a flat F32 tensor",
            info.dtype,
            info.shape
        ),
    }
}

/// The vocabulary size at which `config` has `count` parameters, if any.
fn vocab_size_for(config: &ModelConfig, count: usize) -> Option<usize> {
    let embedding = count.checked_sub(Shape::new(config.dims(0)).len)?;
    (embedding % config.embed_dim == 0).then_some(embedding / config.embed_dim)
}

/// The run state's per-task lists must have one entry per task: training
/// indexes them by task, so a damaged list would fail far from its cause.
fn check_run(run: &serde_json::Value, tasks: usize) -> Result<()> {
    let per_task = |name: &str, value: &serde_json::Value| -> Result<()> {
        match value.as_array() {
            Some(list) if list.len() == tasks => Ok(()),
            _ => bail!("{name} must be a list of {tasks} values, one per task"),
        }
    };
    if run["epoch"].as_u64().is_none_or(|e| e < 1) {
        bail!("epoch must be a number from 1");
    }
    per_task("mix_total", &run["mix_total"])?;
    if !run["loss_scale"].is_null() {
        let scale: LossScale = serde_json::from_value(run["loss_scale"].clone())
            .context("loss_scale is not a scale and a step count")?;
        if !scale.is_valid() {
            bail!("loss_scale {scale:?} is not a power of two in range");
        }
    }
    let Some(weighting) = run["weighting"].as_object() else {
        bail!("weighting is missing");
    };
    // Every list in the weighting state is per task, except the history of
    // per-task epoch losses, which holds one such list per epoch.
    for (key, value) in weighting {
        match (key.as_str(), value.as_array()) {
            ("epoch_losses", Some(epochs)) => {
                for epoch in epochs {
                    per_task("weighting.epoch_losses[..]", epoch)?;
                }
            }
            (_, Some(_)) => per_task(&format!("weighting.{key}"), value)?,
            _ => {}
        }
    }
    Ok(())
}

/// FNV-1a, 64 bits: a stable hash of the data for the fingerprint (the
/// standard library's hasher may change between Rust releases).
#[derive(Clone, Copy, Debug)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Eight bytes at a time (the tail byte by byte), as the checksums of
    /// older state files were computed. A change in the high bits of a word
    /// reaches only the high bits of the hash, so this is no checksum for
    /// new content: [`crate::hash`] is.
    pub fn words(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            self.0 = (self.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.bytes(chunks.remainder());
    }

    pub fn ints(&mut self, values: &[i32]) {
        self.bytes(bytemuck::cast_slice(values));
    }

    pub fn text(&mut self, text: &str) {
        self.bytes(&(text.len() as u64).to_le_bytes());
        self.bytes(text.as_bytes());
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_sits_beside_the_model() {
        assert_eq!(
            state_path(Path::new("out/m.safetensors")),
            Path::new("out/m.state.safetensors")
        );
        assert_eq!(
            state_path(Path::new("model.bin")),
            Path::new("model.bin.state.safetensors")
        );
    }

    #[test]
    fn a_stored_loss_scale_must_be_one_scaling_could_reach() {
        let run = |scale: serde_json::Value| {
            serde_json::json!({
                "epoch": 1,
                "mix_total": [0.0],
                "weighting": {},
                "loss_scale": scale,
            })
        };
        let good = serde_json::json!({"scale": 65536.0, "good_steps": 12});
        assert!(check_run(&run(good), 1).is_ok());
        assert!(check_run(&run(serde_json::Value::Null), 1).is_ok());
        for bad in [
            serde_json::json!({"scale": 3.0, "good_steps": 0}),
            serde_json::json!({"scale": 1.0e30, "good_steps": 0}),
            serde_json::json!({"scale": 1024.0, "good_steps": 5000}),
            serde_json::json!({"scale": -2.0, "good_steps": 0}),
            serde_json::json!(7),
        ] {
            let error = check_run(&run(bad.clone()), 1).unwrap_err();
            assert!(
                format!("{error:#}").contains("loss_scale"),
                "{bad}: {error:#}"
            );
        }
    }

    #[test]
    fn fingerprint_is_stable() {
        let mut f = Fingerprint::default();
        f.text("abc");
        f.ints(&[1, 2, 3]);
        assert_eq!(f.hex(), {
            let mut g = Fingerprint::default();
            g.text("abc");
            g.ints(&[1, 2, 3]);
            g.hex()
        });
        let mut h = Fingerprint::default();
        h.text("abd");
        assert_ne!(f.hex(), h.hex());
    }
}
