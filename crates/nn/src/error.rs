use thiserror::Error;

/// Why a set of parameters cannot become a model.
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
    /// A parameter the model does not have.
    #[error("unexpected parameter {name}")]
    UnexpectedParam {
        /// Its name.
        name: String,
    },
}
