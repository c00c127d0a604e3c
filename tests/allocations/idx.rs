//! The IDX parser, plain and gzip.

use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use crate::{damage, exclusive, peak_allocation};

fn valid_idx() -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5];
    out.extend((0..60u8).map(|i| i.wrapping_mul(37)));
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The inflater's own state, whatever the input.
const DECODER_STATE: usize = 256 << 10;

/// Plain input: about its own size. Gzip input: no more than deflate's 1032:1 can expand it.
fn bound(input: &[u8]) -> usize {
    let factor = if input.starts_with(&[0x1f, 0x8b]) { 1032 } else { 2 };
    factor * input.len() + DECODER_STATE
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn hostile_idx_never_panics_nor_over_allocates(
        which in 0usize..4,
        cut in 0usize..200,
        flips in proptest::collection::vec(0usize..2000, 0..4),
        random in proptest::collection::vec(any::<u8>(), 0..200),
        rank in 0u8..4,
    ) {
        let _turn = exclusive();
        let valid = valid_idx();
        let input = match which {
            0 => random,
            1 => valid.clone(),
            2 => gzip(&valid),
            // A header claiming 2^32 - 1 images, in a file of a few bytes.
            _ => { let mut v = valid.clone(); v[4..8].copy_from_slice(&u32::MAX.to_be_bytes()); gzip(&v) }
        };
        let input = damage(input, &flips, cut);
        let (peak, parsed) = peak_allocation(|| data::parse_idx_u8(&input, rank, Path::new("x")));
        prop_assert!(peak <= bound(&input), "{} bytes in, {peak} allocated", input.len());
        if let Ok(idx) = parsed {
            prop_assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>());
        }
    }
}
