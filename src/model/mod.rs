//! The model: its dimensions, parameters, forward and backward passes (over
//! the [`Backend`](crate::backend::Backend) trait) and its file format.

pub mod file;
pub mod init;
pub mod network;
mod shape;

pub use file::{Model, ModelConfig, TaskConfig};
pub use shape::{Dims, HeadDims, HeadSpans, Shape, Span};
