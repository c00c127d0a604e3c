//! Model and training-state loading on arbitrary bytes: it must return, never panic, and a
//! model it accepts must be usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nn::{Model, Sequential};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(mlp) = train::load_model::<Sequential>(bytes) {
        // The model came from the bytes, so it is no larger than they are.
        let x = ndarray::Array2::<f32>::zeros((1, mlp.input_width()));
        assert_eq!(mlp.predict(x.view()).len(), 1);
    }
    let _ = train::TrainingState::<Sequential>::from_safetensors(bytes);
});
