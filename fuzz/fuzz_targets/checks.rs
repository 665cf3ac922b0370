//! What each fuzz target checks, shared with tests/hostile_fuzz_replay.rs,
//! which replays the inputs the fuzzer once crashed on (kept under
//! tests/hostile/fuzz/<target>/) without needing cargo-fuzz.

// Each target, and the replay test, uses only some of these.
#![allow(dead_code)]

use std::collections::HashSet;

use polyhead::checkpoint::Checkpoint;
use polyhead::data::table::{read_table_from, Format, Table, MAX_LINE_BYTES};
use polyhead::data::tokenizer::Tokenizer;
use polyhead::model::{Model, Shape};

/// Reads `bytes` as `format`; on success checks the table's invariants,
/// on failure that the error names the source and fits on one line.
pub fn table(bytes: &[u8], format: Format) {
    match read_table_from(bytes, "fuzz-input", format) {
        Ok(table) => check_table(&table, format),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.starts_with("fuzz-input"),
                "error without source: {text}"
            );
            assert!(!text.contains('\n'), "error on several lines: {text:?}");
        }
    }
}

fn check_table(table: &Table, format: Format) {
    assert!(!table.columns.is_empty(), "a table without columns");
    let mut names: Vec<&String> = table.columns.iter().collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), table.columns.len(), "duplicate column names");
    assert!(
        table.columns.iter().all(|c| !c.is_empty()),
        "empty column name"
    );

    let mut last_line = 0;
    for row in &table.rows {
        assert!(row.line > last_line, "records out of order");
        last_line = row.line;
        let mut last_column = None;
        for (column, value) in row.values() {
            assert!(column < table.columns.len(), "cell past the header");
            assert!(last_column < Some(column), "cells out of order");
            last_column = Some(column);
            assert!(!value.trim().is_empty(), "a blank cell kept as a value");
            assert!(value.len() <= MAX_LINE_BYTES, "cell longer than the cap");
            // JSON may spell a NUL character as an escape; raw NUL bytes
            // are refused in every format.
            if format != Format::Jsonl {
                assert!(!value.contains('\0'), "NUL byte in a cell");
            }
            assert_eq!(row.cell(column), Some(value), "cell lookup disagrees");
        }
    }
}

/// Tokens are non-empty, hold no space or dropped character, are made of
/// the (lower-cased) input's characters, and do not depend on spaces
/// around the text; both ways of getting them agree.
pub fn tokenizer(text: &str) {
    for lowercase in [false, true] {
        let tokenizer = Tokenizer { lowercase };
        let tokens = tokenizer.tokens(text);
        let source: HashSet<char> = if lowercase {
            text.to_lowercase().chars().collect()
        } else {
            text.chars().collect()
        };
        let mut streamed = Vec::new();
        tokenizer.for_each_token(text, |t| streamed.push(t.to_string()));
        assert_eq!(tokens, streamed, "tokens and for_each_token disagree");
        for token in &tokens {
            assert!(!token.is_empty(), "empty token");
            assert!(
                !token.chars().any(|c| c.is_whitespace() || c == '\u{200B}'),
                "space inside token {token:?}"
            );
            assert!(
                token.chars().all(|c| source.contains(&c)),
                "token {token:?} has characters not in the input"
            );
        }
        assert_eq!(tokenizer.tokens(&format!(" {text} ")), tokens);
    }
}

/// A model read without error fits in its bytes, holds finite values, and
/// saves and loads back to itself.
pub fn model_file(bytes: &[u8]) {
    if let Ok(model) = Model::from_bytes(bytes) {
        assert!(
            model.params.len() * 4 <= bytes.len(),
            "more parameters than bytes"
        );
        assert!(model.params.iter().all(|v| v.is_finite()));
        let saved = model.to_bytes().expect("a loaded model saves");
        let back = Model::from_bytes(&saved).expect("a saved model loads");
        assert_eq!(back, model, "save and load changed the model");
    }
}

/// A run state read without error has tensors of the size its
/// configuration implies and one entry per task in its per-task lists.
pub fn run_state(bytes: &[u8]) {
    if let Ok(state) = Checkpoint::from_bytes(bytes) {
        let shape = Shape::new(state.config.dims(state.vocab.len()));
        assert_eq!(state.params.len(), shape.len);
        assert_eq!(state.m.len(), shape.len);
        assert_eq!(state.v.len(), shape.len);
        assert!(state.v.iter().all(|v| *v >= 0.0 && v.is_finite()));
        assert_eq!(state.run.mix_total.len(), state.config.tasks.len());
        let _ = state.check_progress(usize::MAX);
        let _ = state.check_progress(0);
    }
}
