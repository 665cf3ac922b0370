//! polyhead: multi-task text classification with one shared CNN encoder
//! (word embeddings, Conv1D, ReLU, global max-pool) and a small head per
//! task, trained together on the CPU or on NVIDIA GPUs.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod cmd;
pub mod data;
pub mod export;
pub mod fsutil;
pub mod hash;
pub mod model;
pub mod report;
pub mod rng;
pub mod train;
