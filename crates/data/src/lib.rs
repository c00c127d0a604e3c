//! MNIST in, as batches out. [`Mnist::load`] reads the four IDX files (plain or `.gz`) from a
//! folder into two [`Dataset`]s, which keep pixels as `u8`; a [`Loader`] then walks a data set
//! (or a subset from [`split_indices`]) in a seeded order that changes every epoch, filling a
//! reused [`Batch`] with `f32` pixels in `[0, 1]`.
//!
//! `data` depends on no machine-learning crate: it only reads files and makes batches.
//! Every malformed file is reported as a [`DataError`] naming the file and the fault.

mod batch;
mod error;
mod idx;
mod mnist;

pub use batch::{Batch, Loader, Order, pixel_to_f32, split_indices};
pub use error::DataError;
pub use idx::{IdxU8, parse_idx_u8, read_idx_u8};
pub use mnist::{CLASSES, Dataset, FILES, Mnist, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS, locate};
