//! The project's chores as a library, so that tests can run them in process:
//! [`fetch`] downloads and verifies MNIST, [`bench`](mod@bench) measures the `mnist` program.

pub mod bench;
pub mod fetch;

use std::path::PathBuf;

/// Writes `path` whole or not at all: a temporary file in the same folder, renamed into place.
///
/// # Errors
/// The folder is not writable.
pub fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

/// The workspace root: the parent of this crate's folder.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The folder of real MNIST files for tests: `$MNIST_DIR`, else `data/mnist` in the workspace,
/// if it holds the four files (plain or `.gz`). See [`data_dir_for_tests`] for what happens
/// when it does not.
///
/// # Panics
/// When `CI=true` and the data cannot be found.
pub fn mnist_dir_for_tests() -> Option<PathBuf> {
    let names: Vec<String> = fetch::FILES.iter().map(|f| f.name.to_owned()).collect();
    data_dir_for_tests("MNIST_DIR", Some(repo_root().join("data").join("mnist")), &names)
}

/// The folder of PyTorch's reference numbers for tests (`tiny.json`,
/// `mlp_first_batch.safetensors`): `$TORCH_REFERENCE_DIR`. See [`data_dir_for_tests`].
///
/// # Panics
/// When `CI=true` and the files cannot be found.
pub fn reference_dir_for_tests() -> Option<PathBuf> {
    let names = ["tiny.json".to_owned(), "mlp_first_batch.safetensors".to_owned()];
    data_dir_for_tests("TORCH_REFERENCE_DIR", None, &names)
}

/// The folder named by the environment variable `var` (else `default`) if it holds every file
/// of `names` (each plain or with `.gz`).
///
/// Returns `None` so that a developer without the data can still run the other tests, except
/// on CI (`CI=true`), where missing data must fail the run rather than skip tests silently.
///
/// # Panics
/// When `CI=true` and the folder or a file is missing.
pub fn data_dir_for_tests(var: &str, default: Option<PathBuf>, names: &[String]) -> Option<PathBuf> {
    let dir = std::env::var_os(var).map(PathBuf::from).or(default);
    let complete = dir
        .as_ref()
        .is_some_and(|dir| names.iter().all(|name| dir.join(name).exists() || dir.join(format!("{name}.gz")).exists()));
    if complete {
        return dir;
    }
    let shown = dir.map_or_else(|| format!("${var} (unset)"), |d| d.display().to_string());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true but the test data was not found in {shown} (set {var})");
    eprintln!("skipping a test that needs data: not found in {shown} (set {var})");
    None
}
