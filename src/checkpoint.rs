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
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::fsutil::write_atomic;
use crate::model::ModelConfig;
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
        let bytes = safetensors::serialize(views, Some(meta))?;
        write_atomic(path, &bytes)
            .with_context(|| format!("cannot save the run state {}", path.display()))
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let shown = path.display();
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read the run state {shown}"))?;
        Checkpoint::from_bytes(&bytes).with_context(|| format!("{shown}: not a usable run state"))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let tensors = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow::anyhow!("invalid safetensors file: {e}"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| -> Result<&String> {
            meta.get(key)
                .with_context(|| format!("metadata has no \"{key}\" entry"))
        };
        if field("format")? != FORMAT || field("format_version")? != &FORMAT_VERSION.to_string() {
            bail!("not a polyhead run state of format version {FORMAT_VERSION}");
        }
        let options: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(field("options")?).context("metadata \"options\" is not valid")?;
        let read = |name: &str| -> Result<Vec<f32>> {
            let view = tensors
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("tensor {name} is missing"))?;
            if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
                bail!("tensor {name} must be a flat F32 tensor");
            }
            Ok(view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        let (params, m, v) = (read("params")?, read("adam.m")?, read("adam.v")?);
        if m.len() != params.len() || v.len() != params.len() {
            bail!("the Adam moments do not match the parameters in size");
        }
        Ok(Checkpoint {
            run: serde_json::from_str(field("run")?).context("metadata \"run\" is not valid")?,
            step: field("step")?
                .parse()
                .context("metadata \"step\" is not a number")?,
            config: serde_json::from_str(field("config")?)
                .context("metadata \"config\" is not valid")?,
            vocab: serde_json::from_str(field("vocab")?)
                .context("metadata \"vocab\" is not valid")?,
            options: options
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or("").to_string()))
                .collect(),
            data_fingerprint: field("data_fingerprint")?.clone(),
            params,
            m,
            v,
        })
    }
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
