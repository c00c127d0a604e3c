use thiserror::Error;

/// Why an optimizer cannot be built or cannot take a step.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum OptimError {
    /// A hyperparameter is out of its range.
    #[error("invalid {name} {value}: {expected}")]
    InvalidConfig {
        /// The hyperparameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        expected: &'static str,
    },
    /// A parameter has no gradient: no backward pass has reached it.
    #[error("parameter {name} has no gradient: run a backward pass that reaches it before stepping")]
    MissingGradient {
        /// The parameter.
        name: String,
    },
    /// The gradients are not shaped like the parameters.
    #[error("gradients for another parameter set: {grads} gradients for {params} parameters, or of other sizes")]
    GradsMismatch {
        /// Parameters given.
        params: usize,
        /// Gradient buffers given.
        grads: usize,
    },
    /// A saved state that does not describe this optimizer's buffers.
    #[error("invalid optimizer state: {reason}")]
    BadState {
        /// What is wrong.
        reason: String,
    },
    /// The parameters differ from those the optimizer's state was built for.
    #[error("parameter {index} is {found}, but the optimizer's state is for {expected}")]
    ParamsChanged {
        /// The position of the first difference.
        index: usize,
        /// What the state was built for (`name [len]`).
        expected: String,
        /// What was given.
        found: String,
    },
}

/// Checks that `value` is finite and at least `min` (or above it, when `strict`).
pub(crate) fn check(name: &'static str, value: f32, min: f32, strict: bool) -> Result<(), OptimError> {
    let ok = value.is_finite() && if strict { value > min } else { value >= min };
    if ok {
        return Ok(());
    }
    let expected = match (min == 0.0, strict) {
        (true, true) => "must be finite and positive",
        (true, false) => "must be finite and non-negative",
        _ => "out of range",
    };
    Err(OptimError::InvalidConfig { name, value: f64::from(value), expected })
}

/// Checks that `value` is in `[0, 1)`.
pub(crate) fn check_unit(name: &'static str, value: f32) -> Result<(), OptimError> {
    if (0.0..1.0).contains(&value) {
        return Ok(());
    }
    Err(OptimError::InvalidConfig { name, value: f64::from(value), expected: "must be in [0, 1)" })
}
