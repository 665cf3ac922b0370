//! The tokenizer on arbitrary text: never a panic, and the token
//! invariants of checks::tokenizer.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|text: &str| checks::tokenizer(text));
