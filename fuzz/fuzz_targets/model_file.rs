//! The model loader on arbitrary bytes: an error or a model that saves
//! and loads back to itself, never a panic or an allocation beyond the
//! input's size.

#![no_main]

use libfuzzer_sys::fuzz_target;
use polyhead::model::Model;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(model) = Model::from_bytes(bytes) {
        assert!(model.params.len() * 4 <= bytes.len(), "more parameters than bytes");
        assert!(model.params.iter().all(|v| v.is_finite()));
        let saved = model.to_bytes().expect("a loaded model saves");
        let back = Model::from_bytes(&saved).expect("a saved model loads");
        assert_eq!(back, model, "save and load changed the model");
    }
});
