use thiserror::Error;

/// Why a set of parameters, or a file of them, cannot become a model.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum NnError {
    /// The layer widths do not describe a network.
    #[error("invalid widths {widths:?}: {reason}")]
    InvalidWidths {
        /// The widths given.
        widths: Vec<usize>,
        /// What is wrong with them.
        reason: &'static str,
    },
    /// A parameter the model needs is absent.
    #[error("missing parameter {name}")]
    MissingParam {
        /// Its name.
        name: String,
    },
    /// A parameter has the wrong shape for the model.
    #[error("parameter {name} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Its name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape given.
        found: Vec<usize>,
    },
    /// A weight that should be a matrix is not.
    #[error("parameter {name} has shape {shape:?}, expected 2 dimensions")]
    NotAMatrix {
        /// Its name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A parameter the model does not have.
    #[error("unexpected parameter {name}")]
    UnexpectedParam {
        /// Its name.
        name: String,
    },
    /// A list of layers that does not describe a model.
    #[error("{reason}")]
    BadLayers {
        /// The layer and what is wrong with it.
        reason: String,
    },
    /// Bytes that are not a whole, valid safetensors file.
    #[error("not a safetensors file: {reason}")]
    NotSafetensors {
        /// What the reader found wrong.
        reason: String,
    },
    /// A tensor of a type other than the one expected (f32 for values, i64 for counters).
    #[error("tensor {name} is {dtype}, expected {expected}")]
    WrongDtype {
        /// Its name.
        name: String,
        /// Its type.
        dtype: String,
        /// The type expected.
        expected: &'static str,
    },
    /// A metadata entry that a reader needs is absent.
    #[error("metadata {key} is missing")]
    MissingMetadata {
        /// The key.
        key: String,
    },
    /// A metadata entry whose value does not parse.
    #[error("metadata {key} {value:?} is not {expected}")]
    BadMetadata {
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}
