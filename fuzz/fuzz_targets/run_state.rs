//! The run-state loader on arbitrary bytes: an error or a state whose
//! tensors fit its configuration, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhead::checkpoint::Checkpoint;
use polyhead::model::Shape;

fuzz_target!(|bytes: &[u8]| {
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
});
