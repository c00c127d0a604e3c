//! Images a stranger can send: decompression bombs inside small PNG files (a colour profile, a
//! compressed text chunk) are refused, or decoded, within the decoder's memory limit.

use std::io::Write;

use data::digit::{Limits, from_image_bytes};

use crate::{exclusive, peak_allocation};

/// A PNG chunk: length, type, data, CRC of type and data.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}

fn zlib(len: usize) -> Vec<u8> {
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..len >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

/// A 1x1 grey PNG with `extra` chunks before its pixels.
fn png_with(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]));
    for c in extra {
        out.extend_from_slice(c);
    }
    let mut pixels = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    pixels.write_all(&[0, 0]).unwrap();
    out.extend(chunk(b"IDAT", &pixels.finish().unwrap()));
    out.extend(chunk(b"IEND", &[]));
    out
}

#[test]
fn decompression_bombs_stay_within_the_memory_limit() {
    let _turn = exclusive();
    let limits = Limits { max_side: 2048, max_bytes: 32 << 20 };
    let bomb = zlib(400 << 20);
    let profile = [b"icc\0\0".as_slice(), &bomb].concat();
    let text = [b"comment\0\0".as_slice(), &bomb].concat();
    let international = [b"comment\0\x01\0\0\0".as_slice(), &bomb].concat();
    for (what, file) in [
        ("a 400 MiB colour profile (iCCP)", png_with(&[chunk(b"iCCP", &profile)])),
        ("a 400 MiB compressed text (zTXt)", png_with(&[chunk(b"zTXt", &text)])),
        ("a 400 MiB international text (iTXt)", png_with(&[chunk(b"iTXt", &international)])),
    ] {
        assert!(file.len() < 1 << 20, "{what}: {} bytes", file.len());
        let (peak, result) = peak_allocation(|| from_image_bytes(&file, limits));
        // The decoder's limit bounds each buffer it grows; growing one by doubling up to the
        // limit holds up to twice it at the peak. Plus its own state and the input's size.
        let bound = 2 * (32 << 20) + (4 << 20);
        assert!(peak <= bound, "{what}: {} MiB at the peak ({result:?})", peak >> 20);
    }
}
