//! The run-state loader on arbitrary bytes: an error or a state whose
//! tensors fit its configuration, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

mod checks;

fuzz_target!(|bytes: &[u8]| checks::run_state(bytes));
