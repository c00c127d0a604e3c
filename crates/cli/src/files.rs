//! Reading the command line's inputs and writing its outputs, with errors that name the flag
//! or the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use data::{DataError, Dataset, Mnist};
use nn::{Sequential, StateDict};

/// Loads the data set, with a hint on how to get it when files are missing.
pub(crate) fn load_mnist(dir: &Path) -> Result<Mnist> {
    Mnist::load(dir).map_err(with_hint)
}

/// Loads the test set alone (the training files may be absent) for `classes` classes, and
/// their names, with a hint on how to get it when files are missing.
pub(crate) fn load_test_set(dir: &Path, classes: usize) -> Result<(Dataset, Vec<String>)> {
    data::load_test(dir, classes).map_err(with_hint)
}

fn with_hint(e: DataError) -> anyhow::Error {
    match e {
        DataError::MissingFile { .. } => {
            anyhow!("{e}; run `cargo xtask fetch-data` or point --data-dir at a folder with MNIST")
        }
        other => other.into(),
    }
}

/// Reads a model file (or the model of a training checkpoint), of any architecture: the model,
/// and the whole file as a `state_dict` for its metadata.
pub(crate) fn load_model_file(path: &Path) -> Result<(Sequential, StateDict)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let state = StateDict::from_safetensors(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let model = train::model_from_state(state.clone()).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((model, state))
}

/// The class names the model file at `path` records for its `classes` classes, if any. Names
/// that do not fit are left aside with a one-line warning: the classes are then numbered.
pub(crate) fn recorded_class_names(path: &Path, state: &StateDict, classes: usize) -> Option<Vec<String>> {
    train::recorded_class_names(state, classes).unwrap_or_else(|e| {
        eprintln!("warning: {}: {e}; the classes are numbered instead", path.display());
        None
    })
}

/// Writes `path` whole or not at all; the error names `flag`.
pub(crate) fn write_output(
    flag: &str,
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    atomic_file::write(path, write).map_err(|e| anyhow!("{flag} {e}"))
}

/// Refuses two flags that name one file, which would leave only the last written of them (or
/// write over the input being read): `files` are each flag with its path, if given. Paths
/// written in place (a device, a pipe, a standard stream) may be shared.
pub(crate) fn check_distinct(files: &[(&str, Option<&Path>)]) -> Result<()> {
    let mut seen: Vec<(&str, &Path, PathBuf)> = Vec::new();
    for &(flag, path) in files {
        let Some(path) = path else { continue };
        let file = match atomic_file::target(path) {
            Ok(atomic_file::Target::File(file)) => resolved(&file),
            // Written in place, or an error that writing it will report.
            _ => continue,
        };
        if let Some((other, ..)) = seen.iter().find(|(.., earlier)| *earlier == file) {
            return Err(crate::UsageError(format!(
                "{other} and {flag} name the same file, {}: give each its own",
                path.display()
            ))
            .into());
        }
        seen.push((flag, path, file));
    }
    Ok(())
}

/// The file `path` names, however spelled: its folder's links and `.` and `..` resolved.
fn resolved(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (parent.canonicalize(), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}
