//! The IDX parser on arbitrary bytes: the first byte picks the expected number of dimensions,
//! the rest is the file (plain or gzip). It must return, never panic, and what it accepts must
//! be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&rank, bytes)) = input.split_first() else { return };
    if let Ok(idx) = data::parse_idx_u8(bytes, rank % 5, std::path::Path::new("fuzz")) {
        assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>());
        assert_eq!(idx.dims.len(), usize::from(rank % 5));
    }
});
