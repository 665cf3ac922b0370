//! The JSONL reader on arbitrary bytes: an error or a well-formed table,
//! never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhead::data::table::Format;

#[path = "table_invariants.rs"]
mod table_invariants;

fuzz_target!(|bytes: &[u8]| table_invariants::check(bytes, Format::Jsonl));
