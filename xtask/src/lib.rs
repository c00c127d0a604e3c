//! The project's chores as a library, so that tests can run them in process:
//! [`fetch`] downloads and verifies MNIST.

pub mod fetch;

use std::path::PathBuf;

/// The workspace root: the parent of this crate's folder.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The folder of real MNIST files for tests: `$MNIST_DIR`, else `data/mnist` in the workspace,
/// if it holds the four files (plain or `.gz`).
///
/// Returns `None` so that a developer without the data can still run the other tests, except
/// on CI (`CI=true`), where missing data must fail the run rather than skip tests silently.
///
/// # Panics
/// When `CI=true` and the data cannot be found.
pub fn mnist_dir_for_tests() -> Option<PathBuf> {
    let dir =
        std::env::var_os("MNIST_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("data").join("mnist"));
    let complete = fetch::FILES.iter().all(|f| {
        let plain = dir.join(f.name);
        plain.exists() || plain.with_file_name(format!("{}.gz", f.name)).exists()
    });
    if complete {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true but MNIST was not found in {} (set MNIST_DIR)", dir.display());
    eprintln!("skipping a real-MNIST test: no MNIST in {} (set MNIST_DIR)", dir.display());
    None
}
