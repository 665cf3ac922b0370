//! The CSV reader on arbitrary bytes: an error or a well-formed table,
//! never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhead::data::table::Format;

mod checks;

fuzz_target!(|bytes: &[u8]| checks::table(bytes, Format::Csv));
