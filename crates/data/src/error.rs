use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading a data set.
///
/// Each variant names the file and the fault, so that its one-line `Display` is enough for a
/// user to find and fix the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file does not exist.
    #[error("{path}: file not found")]
    NotFound {
        /// The missing file (for MNIST, the plain name; the `.gz` name was tried too).
        path: PathBuf,
    },
    /// Neither the plain nor the `.gz` form of a data set's file is in its folder.
    #[error("{dir}: neither {name} nor {name}.gz found")]
    MissingFile {
        /// The folder searched.
        dir: PathBuf,
        /// The file's canonical name.
        name: String,
    },
    /// The file exists but could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The file starts like gzip but does not decompress.
    #[error("{path}: corrupt or truncated gzip data: {source}")]
    Gzip {
        /// The file being read.
        path: PathBuf,
        /// The decompressor's error.
        source: io::Error,
    },
    /// The first four bytes are not the magic number of the expected IDX type.
    #[error("{path}: bad magic 0x{found:08x}, expected 0x{expected:08x} ({what})")]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The magic number found.
        found: u32,
        /// The magic number expected.
        expected: u32,
        /// What the expected magic stands for.
        what: &'static str,
    },
    /// The file is an IDX file of unsigned bytes, but with the wrong number of dimensions.
    #[error("{path}: {found} dimensions, expected {expected}")]
    WrongRank {
        /// The file being read.
        path: PathBuf,
        /// The number of dimensions in the header.
        found: u8,
        /// The number of dimensions expected.
        expected: u8,
    },
    /// The file ends inside the header.
    #[error("{path}: truncated header: {have} bytes, the header needs {need}")]
    TruncatedHeader {
        /// The file being read.
        path: PathBuf,
        /// Bytes present.
        have: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The body is shorter than the header's dimensions say.
    #[error("{path}: truncated body: dimensions {dims:?} need {need} bytes, found {have}")]
    TruncatedBody {
        /// The file being read.
        path: PathBuf,
        /// The dimensions from the header.
        dims: Vec<u32>,
        /// Bytes the body needs.
        need: u64,
        /// Bytes present.
        have: u64,
    },
    /// The body is longer than the header's dimensions say.
    #[error("{path}: {extra} trailing bytes after the {need} bytes that dimensions {dims:?} describe")]
    TrailingBytes {
        /// The file being read.
        path: PathBuf,
        /// The dimensions from the header.
        dims: Vec<u32>,
        /// Bytes the body needs.
        need: u64,
        /// Bytes beyond that.
        extra: u64,
    },
    /// The product of the dimensions does not fit in memory's address space.
    #[error("{path}: dimensions {dims:?} overflow the address space")]
    DimensionOverflow {
        /// The file being read.
        path: PathBuf,
        /// The dimensions from the header.
        dims: Vec<u32>,
    },
    /// A dimension that must be positive is zero.
    #[error("{path}: dimensions {dims:?} describe empty images")]
    EmptyImages {
        /// The file being read.
        path: PathBuf,
        /// The dimensions from the header.
        dims: Vec<u32>,
    },
    /// A label is below the first class's label (EMNIST Letters' labels start at 1).
    #[error("{path}: label {label} at index {index} is below {first}, the first class's label")]
    LabelBelowFirst {
        /// The label file.
        path: PathBuf,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
        /// The first class's label.
        first: u8,
    },
    /// The class names file does not name each class once.
    #[error("{path}: {found} class names, one per line, where the labels have {expected} classes")]
    ClassNames {
        /// The class names file.
        path: PathBuf,
        /// Names found.
        found: usize,
        /// Classes in the labels.
        expected: usize,
    },
    /// A line of the class names file cannot name a class.
    #[error("{path}: {why}")]
    BadClassName {
        /// The class names file.
        path: PathBuf,
        /// What is wrong, and on which line.
        why: String,
    },
    /// A label is not a valid class.
    #[error("{path}: label {label} at index {index} is outside 0..={max}")]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Position of the first bad label.
        index: usize,
        /// Its value.
        label: u8,
        /// The largest valid label.
        max: u8,
    },
    /// Images and labels disagree on the number of samples.
    #[error("{images}: {image_count} images, but {labels}: {label_count} labels")]
    CountMismatch {
        /// The image file.
        images: PathBuf,
        /// Number of images.
        image_count: usize,
        /// The label file.
        labels: PathBuf,
        /// Number of labels.
        label_count: usize,
    },
    /// A test set whose images are not the size of the training set's.
    #[error("{path}: images of {}x{} pixels, but the training images are {}x{}", found.0, found.1, expected.0, expected.1)]
    ShapeMismatch {
        /// The test images' file.
        path: PathBuf,
        /// Its image size, rows by columns.
        found: (usize, usize),
        /// The training images' size.
        expected: (usize, usize),
    },
}
