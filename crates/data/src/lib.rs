//! MNIST in, as batches out. [`Mnist::load`] reads the four IDX files (plain or `.gz`) from a
//! folder into two [`Dataset`]s, which keep pixels as `u8`; a [`Loader`] then walks a data set
//! (or a subset from [`split_indices`]) in a seeded order that changes every epoch, filling a
//! reused [`Batch`] with `f32` pixels in `[0, 1]`.
//!
//! [`digit`] turns a picture of a digit (PNG or JPEG bytes, from a file or an upload) into
//! what an MNIST image looks like, within limits set before decoding.
//!
//! `data` depends on no machine-learning crate: it only reads files and images and makes
//! batches.
//! Every malformed file is reported as a [`DataError`] naming the file and the fault.

mod augment;
mod batch;
pub mod digit;
mod error;
mod idx;
mod mnist;
mod sets;
mod shuffle;

pub use augment::{Augment, AugmentError, fill_rows_augmented};
pub use batch::{Batch, Loader, Order, fill_labels, fill_rows, pixel_to_f32, split_indices, validation_count};
pub use error::DataError;
pub use idx::{IdxU8, parse_idx_u8, read_idx_u8};
pub use mnist::{Dataset, FILES, Mnist, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, load_test, locate};
pub use sets::{CLASS_NAMES_FILE, KNOWN_SETS, KnownSet, Layout, MNIST, class_name_fault, emnist_files, known_set};
pub use shuffle::shuffle;
