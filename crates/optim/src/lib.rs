//! Optimizers over a [`nn::Params`] set, with update rules identical to PyTorch's:
//! [`Sgd`] (`torch.optim.SGD`) and [`Adam`] (`torch.optim.Adam`, and `torch.optim.AdamW` with
//! [`WeightDecay::Decoupled`]). Build one from its config, whose `Default` is PyTorch's:
//!
//! ```
//! use optim::{Adam, AdamConfig};
//! let adam = Adam::new(AdamConfig { lr: 3e-4, ..AdamConfig::default() }).unwrap();
//! ```
//!
//! There is no `zero_grad`: `nn`'s backward pass overwrites every gradient in its
//! [`nn::Grads`], and a step refuses a parameter that no backward pass has reached
//! ([`OptimError::MissingGradient`]).

mod adam;
mod error;
mod sgd;
mod state;

pub use adam::{Adam, AdamConfig};
pub use error::OptimError;
pub use sgd::{Sgd, SgdConfig};

use nn::{Grads, Params};

/// Updates parameters from their gradients.
pub trait Optimizer {
    /// Takes one step over every parameter of `params`, with the gradients in `grads`.
    ///
    /// # Errors
    /// A parameter without a gradient, gradients for another parameter set, or parameters
    /// other than those of earlier steps. On error no parameter has changed.
    fn step(&mut self, params: &mut Params, grads: &Grads) -> Result<(), OptimError> {
        self.step_sum(params, std::slice::from_ref(grads))
    }

    /// Takes one step with the sum of `parts`, the gradients of the parts of one batch
    /// (computed on several threads, say), added in the order given. With two parts the sum is
    /// formed inside the update, without a pass of its own.
    ///
    /// # Errors
    /// As [`Optimizer::step`], for any part.
    fn step_sum(&mut self, params: &mut Params, parts: &[Grads]) -> Result<(), OptimError>;

    /// What the optimizer carries from step to step, for a checkpoint.
    fn state(&self) -> OptimState;

    /// Continues from a state saved by [`Optimizer::state`], as if this optimizer had taken
    /// those steps itself. The buffers are checked against the parameters at the next step.
    ///
    /// # Errors
    /// Buffers that are not this optimizer's.
    fn load_state(&mut self, state: OptimState) -> Result<(), OptimError>;

    /// The current learning rate.
    fn learning_rate(&self) -> f32;

    /// Changes the learning rate for the following steps (for schedules).
    fn set_learning_rate(&mut self, lr: f32);
}

/// What an optimizer carries from step to step: the number of steps taken and its buffers,
/// named `{parameter}.{buffer}` with PyTorch's buffer names (`exp_avg`, `exp_avg_sq`,
/// `momentum_buffer`), each in its parameter's storage order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimState {
    /// Steps taken.
    pub step: u64,
    /// Named buffers, parameter by parameter.
    pub buffers: Vec<(String, Vec<f32>)>,
}

/// How weight decay enters an update.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum WeightDecay {
    /// No weight decay.
    #[default]
    None,
    /// Add `λ·p` to the gradient (PyTorch's `weight_decay` for `Adam` and `SGD`).
    L2(f32),
    /// Shrink the weights by `1 - lr·λ` before the update (`AdamW`).
    Decoupled(f32),
}

impl WeightDecay {
    fn validate(self) -> Result<(), OptimError> {
        match self {
            Self::None => Ok(()),
            Self::L2(l) | Self::Decoupled(l) => error::check("weight decay", l, 0.0, false),
        }
    }

    /// The L2 coefficient to add to gradients and the factor to shrink weights by, if any.
    fn factors(self, lr: f32) -> (Option<f32>, Option<f32>) {
        match self {
            Self::None => (None, None),
            Self::L2(l) if l != 0.0 => (Some(l), None),
            Self::Decoupled(l) if l != 0.0 => (None, Some((1.0 - f64::from(lr) * f64::from(l)) as f32)),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
mod tests;
