//! Images a stranger can send: decompression bombs inside small files (a colour profile, a
//! compressed text chunk, 32 MiB of pixels in 32 KB, thousands of tiny IDAT chunks, a JPEG of
//! a hundred scans) are refused, or decoded, within a stated bound of memory.

use data::digit::{Limits, from_image_bytes};
use testkit::hostile;

use crate::{exclusive, peak_allocation};

/// What one image may cost at the peak with `limits`: the decoder's limit bounds each buffer
/// it grows, and growing one by doubling up to the limit holds up to twice it; plus its own
/// state and the input's size.
pub(crate) fn peak_bound(limits: Limits) -> usize {
    2 * limits.max_bytes as usize + (4 << 20)
}

#[test]
fn hostile_images_stay_within_the_stated_memory_bound() {
    let _turn = exclusive();
    let limits = Limits { max_side: 2048, max_bytes: 32 << 20 };
    for (what, file) in [
        ("a 400 MiB colour profile (iCCP)", hostile::png_profile_bomb(400 << 20)),
        ("a 400 MiB compressed text (zTXt)", hostile::png_text_bomb(400 << 20)),
        ("a 400 MiB international text (iTXt)", hostile::png_international_text_bomb(400 << 20)),
        ("2048x2048 16-bit RGBA pixels", hostile::png_large(2048, 1 << 20)),
        ("the same pixels in 16-byte IDAT chunks", hostile::png_large(2048, 16)),
        ("a 2048x2048 JPEG of 100 scans", hostile::jpeg_many_scans(2048, 100)),
        ("a 2048x2048 JPEG of 5000 scans", hostile::jpeg_many_scans(2048, 5000)),
    ] {
        assert!(file.len() < 2 << 20, "{what}: {} bytes", file.len());
        let started = std::time::Instant::now();
        let (peak, result) = peak_allocation(|| from_image_bytes(&file, limits));
        eprintln!("{what}: {} KiB, {:?}, peak {} MiB: {result:?}", file.len() >> 10, started.elapsed(), peak >> 20);
        assert!(peak <= peak_bound(limits), "{what}: {} MiB at the peak ({result:?})", peak >> 20);
        // None of them holds a digit.
        assert!(result.is_err(), "{what}: {result:?}");
    }
}
