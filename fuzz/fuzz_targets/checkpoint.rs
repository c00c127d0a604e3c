//! Checkpoint loading on arbitrary bytes, as a model and as a training state: it must return,
//! never panic, and a model it accepts must be usable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(mlp) = cli::checkpoint::parse(bytes) {
        // The model came from the bytes, so it is no larger than they are.
        let x = ndarray::Array2::<f32>::zeros((1, mlp.config().widths[0]));
        assert_eq!(mlp.predict(x.view()).len(), 1);
    }
    let _ = cli::checkpoint::parse_training(bytes);
});
