//! A model loaded from its file, ready to tokenise and predict on the CPU.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;

use crate::backend::cpu::CpuBackend;
use crate::data::tokenizer::Tokenizer;
use crate::model::network::{HostBatch, Network};
use crate::model::Model;
use crate::train::softmax;

/// Texts run through the network at once.
const BATCH: usize = 256;

pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    ids: HashMap<String, i32>,
    net: Network<CpuBackend>,
    batch: HostBatch,
}

impl LoadedModel {
    pub fn open(path: &Path) -> Result<LoadedModel> {
        let model = Model::load(path)?;
        let ids = model
            .vocab
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, w)| (w.clone(), i as i32))
            .collect();
        let max_width = model.config.max_len.max(model.config.kernel_size);
        let net = Network::new(
            CpuBackend::new(),
            model.shape.clone(),
            &model.params,
            BATCH,
            max_width,
        )?;
        Ok(LoadedModel {
            tokenizer: Tokenizer {
                lowercase: model.config.lowercase,
            },
            model,
            ids,
            net,
            batch: HostBatch::default(),
        })
    }

    /// Tokens of `text` (cut to the model's maximum length) and their ids,
    /// unknown words as 1.
    pub fn encode(&self, text: &str) -> (Vec<String>, Vec<i32>) {
        let mut tokens = self.tokenizer.tokens(text);
        tokens.truncate(self.model.config.max_len);
        let ids = tokens
            .iter()
            .map(|t| self.ids.get(t).copied().unwrap_or(1))
            .collect();
        (tokens, ids)
    }

    /// Per text, per task: class probabilities.
    pub fn probabilities<'a>(
        &mut self,
        texts: impl Iterator<Item = &'a [i32]>,
    ) -> Result<Vec<Vec<Vec<f64>>>> {
        let texts: Vec<&[i32]> = texts.collect();
        let shape = self.model.shape.clone();
        let sum_c = shape.sum_classes();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            self.batch.fill(chunk.iter().copied(), shape.dims.kernel);
            let logits = self.net.logits(&self.batch)?;
            for b in 0..chunk.len() {
                let row = &logits[b * sum_c..(b + 1) * sum_c];
                out.push(
                    shape
                        .dims
                        .heads
                        .iter()
                        .enumerate()
                        .map(|(i, h)| softmax(&row[shape.class_offset(i)..][..h.classes]))
                        .collect(),
                );
            }
        }
        Ok(out)
    }

    /// The network, for evaluation over encoded data.
    pub fn network(&mut self) -> &mut Network<CpuBackend> {
        &mut self.net
    }
}
