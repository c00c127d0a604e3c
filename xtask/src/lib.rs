//! The project's chores as a library, so that tests can run them in process:
//! [`fetch`] downloads and verifies MNIST, [`bench`](mod@bench) measures the `mnist` program,
//! [`loadtest`] measures `mnist serve` under load.

pub mod attack;
pub mod bench;
pub mod fetch;
pub mod loadtest;

use std::path::PathBuf;

/// The workspace root: the parent of this crate's folder.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where `fetch-data` stores MNIST and the other tasks read it, unless told otherwise:
/// `data/mnist` in the workspace (git-ignored).
pub fn default_data_dir() -> PathBuf {
    data_dir_for(data::MNIST)
}

/// Where `fetch-data --dataset NAME` stores a data set: `data/NAME` in the workspace.
pub fn data_dir_for(name: &str) -> PathBuf {
    repo_root().join("data").join(name)
}
