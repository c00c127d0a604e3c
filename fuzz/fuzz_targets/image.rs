//! Image decoding and MNIST-style preprocessing on arbitrary bytes (what `predict` reads and
//! `mnist serve` receives): it must return, never panic, and stay within its limits; an image it
//! accepts gives 784 values in [0, 1].
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let limits = data::digit::Limits { max_side: 1024, max_bytes: 16 << 20 };
    if let Ok(pixels) = data::digit::from_image_bytes(bytes, limits) {
        assert_eq!(pixels.len(), 784);
        assert!(pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    }
});
