//! The model: its dimensions, parameters, forward and backward passes (over
//! the [`Backend`](crate::backend::Backend) trait) and its file format.

mod shape;

pub use shape::{Dims, HeadDims, HeadSpans, Shape, Span};
