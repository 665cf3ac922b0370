//! The model loader on arbitrary bytes: an error or a model that saves
//! and loads back to itself, never a panic or an allocation beyond the
//! input's size.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|bytes: &[u8]| checks::model_file(bytes));
