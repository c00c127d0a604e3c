//! The IDX format: a big-endian header (`0x00 0x00 type rank`, then `rank` u32 dimensions)
//! followed by the body, row-major. Only the unsigned-byte type (`0x08`) is read here.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use crate::DataError;

/// The IDX type code for unsigned bytes.
const TYPE_U8: u32 = 0x08;
/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Deflate cannot expand data by more than about 1032:1, so a gzip file of `n` bytes can never
/// hold a body longer than this many times `n`: a safe bound for a first allocation.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// An IDX file of unsigned bytes: its dimensions and its body in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxU8 {
    /// The dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The body: exactly the product of `dims` bytes.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes with `rank` dimensions, plain or gzip-compressed
/// (recognised by its first bytes, not by its name).
///
/// The header's claimed size is checked against the file's real length before the body is
/// allocated, so a hostile header cannot make this allocate more than the input justifies.
///
/// # Errors
/// A [`DataError`] naming `path` and the fault: missing or unreadable file, corrupt gzip,
/// wrong magic or rank, truncated header or body, trailing bytes, overflowing dimensions.
pub fn read_idx_u8(path: &Path, rank: u8) -> Result<IdxU8, DataError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DataError::NotFound { path: path.to_owned() },
        _ => DataError::Io { path: path.to_owned(), source },
    })?;
    let len = file.metadata().map_err(|source| DataError::Io { path: path.to_owned(), source })?.len();
    from_reader(BufReader::new(file), len, rank, path)
}

/// Parses an IDX file of unsigned bytes held in memory, plain or gzip-compressed.
/// `path` is only used to name the source in errors.
///
/// ```
/// use std::path::Path;
/// // Magic 0x00000801 (unsigned bytes, one dimension), 3 items.
/// let labels = [0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1];
/// let idx = data::parse_idx_u8(&labels, 1, Path::new("labels")).unwrap();
/// assert_eq!((idx.dims, idx.data), (vec![3], vec![7, 2, 1]));
/// let err = data::parse_idx_u8(&labels[..9], 1, Path::new("labels")).unwrap_err();
/// assert!(err.to_string().starts_with("labels: "), "{err}");
/// ```
///
/// # Errors
/// As [`read_idx_u8`], except that nothing is read from disk.
pub fn parse_idx_u8(bytes: &[u8], rank: u8, path: &Path) -> Result<IdxU8, DataError> {
    from_reader(bytes, bytes.len() as u64, rank, path)
}

/// Decodes `len` bytes of `reader`, plain or gzip-compressed (recognised by its first bytes).
fn from_reader(mut reader: impl BufRead, len: u64, rank: u8, path: &Path) -> Result<IdxU8, DataError> {
    let io_err = |source| DataError::Io { path: path.to_owned(), source };
    if reader.fill_buf().map_err(io_err)?.starts_with(&GZIP_MAGIC) {
        let gz_err = |source| DataError::Gzip { path: path.to_owned(), source };
        let body_bound = len.saturating_mul(MAX_DEFLATE_RATIO);
        decode(MultiGzDecoder::new(reader), Length::AtMost(body_bound), rank, path, gz_err)
    } else {
        decode(reader, Length::Exact(len), rank, path, io_err)
    }
}

/// What is known of the input's length before reading it.
enum Length {
    /// The whole input is exactly this long (a plain file).
    Exact(u64),
    /// The decompressed input cannot be longer than this (a gzip file).
    AtMost(u64),
}

fn decode<R: Read>(
    mut reader: R,
    length: Length,
    rank: u8,
    path: &Path,
    read_err: impl Fn(io::Error) -> DataError,
) -> Result<IdxU8, DataError> {
    let header_len = 4 + 4 * usize::from(rank);
    let mut header = vec![0u8; header_len];
    let have = read_full(&mut reader, &mut header[..4]).map_err(&read_err)?;
    let truncated_header = |have| DataError::TruncatedHeader { path: path.to_owned(), have, need: header_len };
    if have < 4 {
        return Err(truncated_header(have));
    }
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let expected = (TYPE_U8 << 8) | u32::from(rank);
    if magic != expected {
        if magic >> 8 == TYPE_U8 {
            return Err(DataError::WrongRank { path: path.to_owned(), found: header[3], expected: rank });
        }
        return Err(DataError::BadMagic { path: path.to_owned(), found: magic, expected, what: "IDX, unsigned bytes" });
    }
    let have = 4 + read_full(&mut reader, &mut header[4..]).map_err(&read_err)?;
    if have < header_len {
        return Err(truncated_header(have));
    }
    let dims: Vec<u32> = header[4..].chunks_exact(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).collect();
    let need = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .filter(|&n| usize::try_from(n).is_ok() && n <= isize::MAX as u64)
        .ok_or_else(|| DataError::DimensionOverflow { path: path.to_owned(), dims: dims.clone() })?;
    let truncated_body = |have| DataError::TruncatedBody { path: path.to_owned(), dims: dims.clone(), need, have };
    let trailing = |extra| DataError::TrailingBytes { path: path.to_owned(), dims: dims.clone(), need, extra };

    let data = match length {
        Length::Exact(len) => {
            let have = len.saturating_sub(header_len as u64);
            if have < need {
                return Err(truncated_body(have));
            }
            if have > need {
                return Err(trailing(have - need));
            }
            let mut data = vec![0u8; need as usize];
            let got = read_full(&mut reader, &mut data).map_err(&read_err)?;
            if got < data.len() {
                // The file shrank while being read.
                return Err(truncated_body(got as u64));
            }
            data
        }
        Length::AtMost(bound) => {
            let mut data = Vec::with_capacity(need.min(bound) as usize);
            reader.by_ref().take(need).read_to_end(&mut data).map_err(&read_err)?;
            if (data.len() as u64) < need {
                return Err(truncated_body(data.len() as u64));
            }
            let extra = io::copy(&mut reader, &mut io::sink()).map_err(&read_err)?;
            if extra > 0 {
                return Err(trailing(extra));
            }
            data
        }
    };
    Ok(IdxU8 { dims: dims.iter().map(|&d| d as usize).collect(), data })
}

/// Reads until `buf` is full or the input ends; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds an IDX file of unsigned bytes: header, then `body`.
    pub(crate) fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn parse(bytes: &[u8], rank: u8) -> Result<IdxU8, DataError> {
        parse_idx_u8(bytes, rank, Path::new("x.idx"))
    }

    #[test]
    fn reads_plain_and_gzip_alike() {
        let file = idx_bytes(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let plain = parse(&file, 2).unwrap();
        assert_eq!(plain.dims, vec![2, 3]);
        assert_eq!(plain.data, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(parse(&gzip(&file), 2).unwrap(), plain);
    }

    #[test]
    fn reads_from_disk_with_the_path_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.gz");
        std::fs::write(&path, gzip(&idx_bytes(&[3], &[7, 8, 9]))).unwrap();
        assert_eq!(read_idx_u8(&path, 1).unwrap().data, vec![7, 8, 9]);

        let missing = dir.path().join("nope");
        let err = read_idx_u8(&missing, 1).unwrap_err();
        assert!(matches!(err, DataError::NotFound { .. }));
        assert_eq!(err.to_string(), format!("{}: file not found", missing.display()));
    }

    #[test]
    fn rejects_a_wrong_magic() {
        let mut file = idx_bytes(&[1], &[0]);
        file[2] = 0x0D; // float type
        let err = parse(&file, 1).unwrap_err();
        assert_eq!(err.to_string(), "x.idx: bad magic 0x00000d01, expected 0x00000801 (IDX, unsigned bytes)");
    }

    #[test]
    fn rejects_a_wrong_rank() {
        let err = parse(&idx_bytes(&[1, 1], &[0]), 1).unwrap_err();
        assert!(matches!(err, DataError::WrongRank { found: 2, expected: 1, .. }), "{err}");
    }

    #[test]
    fn rejects_truncated_headers() {
        let file = idx_bytes(&[5, 2, 2], &[]);
        for len in 0..file.len() {
            let err = parse(&file[..len], 3).unwrap_err();
            if len < 4 {
                assert!(matches!(err, DataError::TruncatedHeader { have, need: 16, .. } if have == len), "{err}");
            } else {
                assert!(matches!(err, DataError::TruncatedHeader { need: 16, .. }), "{len}: {err}");
            }
        }
    }

    #[test]
    fn rejects_truncated_and_overlong_bodies_plain_and_gzip() {
        let short = idx_bytes(&[4], &[1, 2, 3]);
        let long = idx_bytes(&[2], &[1, 2, 3]);
        for (bytes, gz) in [(short.clone(), false), (gzip(&short), true)] {
            let err = parse(&bytes, 1).unwrap_err();
            assert!(matches!(err, DataError::TruncatedBody { need: 4, have: 3, .. }), "gz={gz}: {err}");
        }
        for (bytes, gz) in [(long.clone(), false), (gzip(&long), true)] {
            let err = parse(&bytes, 1).unwrap_err();
            assert!(matches!(err, DataError::TrailingBytes { need: 2, extra: 1, .. }), "gz={gz}: {err}");
        }
    }

    #[test]
    fn rejects_dimensions_whose_product_overflows_without_allocating() {
        let file = idx_bytes(&[u32::MAX, u32::MAX, u32::MAX], &[0; 8]);
        let err = parse(&file, 3).unwrap_err();
        assert!(matches!(err, DataError::DimensionOverflow { .. }), "{err}");
        // A huge but representable claim on a tiny file is a truncation, found before allocating.
        let err = parse(&idx_bytes(&[u32::MAX, 4], &[0; 8]), 2).unwrap_err();
        assert!(matches!(err, DataError::TruncatedBody { have: 8, .. }), "{err}");
        let err = parse(&gzip(&idx_bytes(&[u32::MAX, 4], &[0; 8])), 2).unwrap_err();
        assert!(matches!(err, DataError::TruncatedBody { have: 8, .. }), "{err}");
    }

    #[test]
    fn names_corrupt_and_truncated_gzip() {
        let gz = gzip(&idx_bytes(&[64], &[3; 64]));
        let err = parse(&gz[..gz.len() - 6], 1).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
        assert!(err.to_string().starts_with("x.idx: corrupt or truncated gzip data"), "{err}");
        let mut bad = gz.clone();
        bad[12] ^= 0xff;
        let err = parse(&bad, 1).unwrap_err();
        assert!(matches!(err, DataError::Gzip { .. }), "{err}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn valid() -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 2];
        out.extend(0..12u8);
        out
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64), rank in 0u8..5) {
            let _ = parse_idx_u8(&bytes, rank, Path::new("p"));
        }

        #[test]
        fn every_truncation_of_a_valid_file_is_an_error(len in 0usize..28) {
            let file = valid();
            prop_assert!(parse_idx_u8(&file[..len], 3, Path::new("p")).is_err());
        }

        #[test]
        fn every_header_bit_flip_is_an_error(bit in 0usize..128) {
            // Any flipped bit changes the magic, the rank or one dimension, and with it the
            // body length the header claims.
            let mut file = valid();
            file[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(parse_idx_u8(&file, 3, Path::new("p")).is_err());
        }
    }
}
