//! Files a hostile client sends: small on the wire, large or slow once decoded. For the tests
//! and the load test's attack mode, which must show that the decoders stay within their limits.

use std::io::Write;

/// A PNG chunk: length, type, data, CRC of type and data.
pub fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = u32::try_from(data.len()).expect("a chunk under 4 GiB").to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}

/// A zlib stream that inflates to `len` zero bytes (about a thousandth of that in size).
pub fn zlib_zeros(len: usize) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        encoder.write_all(&zeros[..n]).expect("writing to memory");
        left -= n;
    }
    encoder.finish().expect("writing to memory")
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// A PNG's header chunk: `side` x `side`, `depth` bits, `colour` type (0 grey, 6 RGBA).
fn png_header(side: u32, depth: u8, colour: u8) -> Vec<u8> {
    let mut ihdr = side.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&side.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    png_chunk(b"IHDR", &ihdr)
}

/// A 1x1 grey PNG with `extra` chunks between its header and its pixels.
pub fn png_with(extra: &[Vec<u8>]) -> Vec<u8> {
    let mut out = PNG_SIGNATURE.to_vec();
    out.extend(png_header(1, 8, 0));
    for chunk in extra {
        out.extend_from_slice(chunk);
    }
    out.extend(png_chunk(b"IDAT", &zlib_zeros(2)));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// A 1x1 PNG whose colour profile (iCCP) inflates to `inflated` bytes.
pub fn png_profile_bomb(inflated: usize) -> Vec<u8> {
    png_with(&[png_chunk(b"iCCP", &[b"icc\0\0".as_slice(), &zlib_zeros(inflated)].concat())])
}

/// A 1x1 PNG whose compressed text (zTXt) inflates to `inflated` bytes.
pub fn png_text_bomb(inflated: usize) -> Vec<u8> {
    png_with(&[png_chunk(b"zTXt", &[b"comment\0\0".as_slice(), &zlib_zeros(inflated)].concat())])
}

/// A 1x1 PNG whose compressed international text (iTXt) inflates to `inflated` bytes.
pub fn png_international_text_bomb(inflated: usize) -> Vec<u8> {
    png_with(&[png_chunk(b"iTXt", &[b"comment\0\x01\0\0\0".as_slice(), &zlib_zeros(inflated)].concat())])
}

/// A `side` x `side` PNG of 16-bit RGBA, every pixel transparent black: 8 bytes a pixel once
/// decoded (32 MiB at 2048 a side) from about a thousandth of that, and blank in the end. Its
/// pixels come in IDAT chunks of at most `chunk` bytes: one chunk, or thousands of tiny ones.
pub fn png_large(side: u32, chunk: usize) -> Vec<u8> {
    let row = 1 + side as usize * 8;
    let pixels = zlib_zeros(row * side as usize);
    let mut out = PNG_SIGNATURE.to_vec();
    out.extend(png_header(side, 16, 6));
    for part in pixels.chunks(chunk.max(1)) {
        out.extend(png_chunk(b"IDAT", part));
    }
    out.extend(png_chunk(b"IEND", &[]));
    out
}

/// Bits into bytes as a JPEG's entropy-coded data wants them: most significant first, a zero
/// byte stuffed after every 0xFF, the last byte padded with ones.
#[derive(Default)]
struct JpegBits {
    bytes: Vec<u8>,
    acc: u32,
    len: u32,
}

impl JpegBits {
    fn put(&mut self, value: u32, bits: u32) {
        for i in (0..bits).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.len += 1;
            if self.len == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let b = self.acc as u8;
        self.bytes.push(b);
        if b == 0xFF {
            self.bytes.push(0);
        }
        (self.acc, self.len) = (0, 0);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.len > 0 {
            let pad = 8 - self.len;
            self.put((1 << pad) - 1, pad);
        }
        self.bytes
    }
}

/// A JPEG segment: marker, then length and body.
fn jpeg_segment(marker: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xFF, marker];
    out.extend_from_slice(&u16::try_from(body.len() + 2).expect("a short segment").to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A grey progressive JPEG, `side` x `side`, of `scans` scans: the DC coefficients once, then
/// the same AC band again and again, each scan a few bytes (end-of-band runs over every
/// block) that a decoder must still walk block by block. Flat grey once decoded.
pub fn jpeg_many_scans(side: u16, scans: usize) -> Vec<u8> {
    let blocks = usize::from(side.div_ceil(8)).pow(2);
    let mut out = vec![0xFF, 0xD8];
    out.extend(jpeg_segment(0xDB, &[[0u8].as_slice(), &[1; 64]].concat()));
    let [hi, lo] = side.to_be_bytes();
    // SOF2: progressive, 8 bits, one component sampled 1x1 with table 0.
    out.extend(jpeg_segment(0xC2, &[8, hi, lo, hi, lo, 1, 1, 0x11, 0]));
    // DC table 0: one code, "0", for a difference of size 0. AC table 0: the fifteen
    // end-of-band runs (symbol R << 4: a run of 2^R plus R more bits), four bits each.
    let mut dht = vec![0x00, 1];
    dht.extend_from_slice(&[0; 15]);
    dht.push(0x00);
    dht.extend_from_slice(&[0x10, 0, 0, 0, 15]);
    dht.extend_from_slice(&[0; 12]);
    dht.extend((0..15u8).map(|r| r << 4));
    out.extend(jpeg_segment(0xC4, &dht));
    // The DC scan: one bit a block.
    out.extend(jpeg_segment(0xDA, &[1, 1, 0x00, 0, 0, 0]));
    let mut dc = JpegBits::default();
    for _ in 0..blocks {
        dc.put(0, 1);
    }
    out.extend(dc.finish());
    // Each AC scan: runs of empty blocks, of up to 32767, covering them all.
    let mut ac = JpegBits::default();
    let mut left = blocks;
    while left > 0 {
        let run = left.min(32767);
        let r = run.ilog2();
        ac.put(r, 4);
        ac.put((run - (1 << r)) as u32, r);
        left -= run;
    }
    let ac = ac.finish();
    for _ in 1..scans {
        out.extend(jpeg_segment(0xDA, &[1, 1, 0x00, 1, 63, 0]));
        out.extend_from_slice(&ac);
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}
