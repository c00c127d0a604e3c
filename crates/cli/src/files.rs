//! Reading the command line's inputs and writing its outputs, with errors that name the flag
//! or the file.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use data::{DataError, Mnist};
use nn::{Sequential, StateDict};

/// Loads the data set, with a hint on how to get it when files are missing.
pub(crate) fn load_mnist(dir: &Path) -> Result<Mnist> {
    Mnist::load(dir).map_err(|e| match e {
        DataError::MissingFile { .. } => {
            anyhow!("{e}; run `cargo xtask fetch-data` or point --data-dir at a folder with MNIST")
        }
        other => other.into(),
    })
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
