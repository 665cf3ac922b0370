//! Reading labelled tables, tokenising, vocabulary and batching.

pub mod dataset;
pub mod tokenizer;
