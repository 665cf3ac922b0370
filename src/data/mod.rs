//! Reading labelled tables, tokenising, vocabulary and batching.

pub mod dataset;
pub mod table;
pub mod tokenizer;
pub mod tokens;
pub mod vocab;
