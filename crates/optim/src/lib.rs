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
mod schedule;
mod sgd;
mod state;

pub use adam::{Adam, AdamConfig};
pub use error::OptimError;
pub use schedule::{LrCurve, LrSchedule, STEP_GAMMA, ScheduleParseError, WARMUP_START};
pub use sgd::{Sgd, SgdConfig};

use nn::{Grads, Params, StateDict};

/// Updates parameters from their gradients.
pub trait Optimizer: Send {
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
    /// formed inside the update, without a pass over memory of its own: on two cores, adding
    /// the parts first and then stepping made an epoch of the notebook's recipe 2 to 7% slower.
    /// It is the fast path of a batch split across threads; the result is the step on the
    /// summed gradients:
    ///
    /// ```
    /// use ndarray::array;
    /// use nn::{Grads, Params, Tape};
    /// use optim::{Optimizer, Sgd, SgdConfig};
    ///
    /// let mut params = Params::new();
    /// let w = params.add("w", &[2, 2], vec![1.0, 0.0, 0.0, 1.0]);
    /// let (x, labels) = (array![[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]], [1, 0, 1, 0]);
    /// // The gradient of the batch's mean loss, from its two halves (as two threads compute
    /// // them), each scaled by its share of the batch.
    /// let grads_of = |rows: std::ops::Range<usize>, params: &Params| {
    ///     let mut tape = Tape::new();
    ///     let input = tape.input(x.slice(ndarray::s![rows.clone(), ..]));
    ///     let logits = tape.matmul_t(params, input, w);
    ///     let loss = tape.cross_entropy(logits, &labels[rows.clone()]);
    ///     let mut grads = Grads::new(params);
    ///     tape.backward_scaled(loss, rows.len() as f32 / 4.0, params, &mut grads);
    ///     grads
    /// };
    /// let parts = [grads_of(0..2, &params), grads_of(2..4, &params)];
    /// let mut whole = params.clone();
    /// let all = grads_of(0..4, &whole);
    ///
    /// let config = SgdConfig { lr: 0.1, ..SgdConfig::default() };
    /// Sgd::new(config).unwrap().step_sum(&mut params, &parts).unwrap();
    /// Sgd::new(config).unwrap().step(&mut whole, &all).unwrap();
    /// let (a, b) = (params.get(w).elements(), whole.get(w).elements());
    /// assert!(a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-6));
    /// ```
    ///
    /// # Errors
    /// As [`Optimizer::step`], for any part.
    fn step_sum(&mut self, params: &mut Params, parts: &[Grads]) -> Result<(), OptimError>;

    /// What defines this optimizer: its kind and hyperparameters, with the current learning
    /// rate.
    fn config(&self) -> OptimizerConfig;

    /// Changes the learning rate for the following steps (for schedules).
    fn set_learning_rate(&mut self, lr: f32);

    /// What the optimizer carries from step to step, like PyTorch's `optimizer.state_dict()`:
    /// its buffers as row-major tensors named `{parameter}.{buffer}` with PyTorch's buffer
    /// names (`fc1.weight.exp_avg`, `fc1.weight.exp_avg_sq`, `fc1.weight.momentum_buffer`), and
    /// in the metadata the step count and the config ([`OptimizerConfig::write_metadata`]).
    fn state_dict(&self, params: &Params) -> StateDict;

    /// Continues from a state saved by [`Optimizer::state_dict`] for `params`, as if this
    /// optimizer had taken those steps itself. The config is this optimizer's own.
    ///
    /// # Errors
    /// Buffers that are missing, unexpected, or of the wrong shape for `params`.
    fn load_state_dict(&mut self, state: &StateDict, params: &Params) -> Result<(), OptimError>;
}

/// Which optimizer, with its hyperparameters: what a training run saves to rebuild it.
///
/// ```
/// use optim::{AdamConfig, OptimizerConfig};
/// let config = OptimizerConfig::Adam(AdamConfig::default());
/// let mut state = nn::StateDict::new();
/// config.write_metadata(&mut state);
/// assert_eq!(OptimizerConfig::from_metadata(&state).unwrap(), config);
/// assert_eq!(config.to_string(), "adam lr=0.001 betas=(0.9, 0.999) eps=1e-8 weight_decay=0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerConfig {
    /// Adam or AdamW.
    Adam(AdamConfig),
    /// SGD.
    Sgd(SgdConfig),
}

impl Default for OptimizerConfig {
    /// `torch.optim.Adam()`'s defaults.
    fn default() -> Self {
        Self::Adam(AdamConfig::default())
    }
}

/// Metadata keys of an optimizer's config, as training checkpoints have always written them.
mod keys {
    pub(crate) const KIND: &str = "optimizer";
    pub(crate) const LR: &str = "lr";
    pub(crate) const BETA1: &str = "beta1";
    pub(crate) const BETA2: &str = "beta2";
    pub(crate) const EPS: &str = "eps";
    pub(crate) const WEIGHT_DECAY: &str = "weight_decay";
    pub(crate) const MOMENTUM: &str = "momentum";
    pub(crate) const DAMPENING: &str = "dampening";
    pub(crate) const NESTEROV: &str = "nesterov";
}

impl OptimizerConfig {
    /// An optimizer with this config and no state yet.
    ///
    /// # Errors
    /// A hyperparameter out of range.
    pub fn build(&self) -> Result<Box<dyn Optimizer>, OptimError> {
        Ok(match *self {
            Self::Adam(c) => Box::new(Adam::new(c)?),
            Self::Sgd(c) => Box::new(Sgd::new(c)?),
        })
    }

    /// Its name: `adam`, `adamw` (decoupled weight decay) or `sgd`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Adam(AdamConfig { weight_decay: WeightDecay::Decoupled(_), .. }) => "adamw",
            Self::Adam(_) => "adam",
            Self::Sgd(_) => "sgd",
        }
    }

    /// The learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            Self::Adam(c) => c.lr,
            Self::Sgd(c) => c.lr,
        }
    }

    /// The weight decay.
    pub fn weight_decay(&self) -> WeightDecay {
        match self {
            Self::Adam(c) => c.weight_decay,
            Self::Sgd(c) => c.weight_decay,
        }
    }

    /// Writes the config into `state`'s metadata, every float exactly (`{:?}` round-trips).
    pub fn write_metadata(&self, state: &mut StateDict) {
        let f = |v: f32| format!("{v:?}");
        state.set_meta(keys::WEIGHT_DECAY, self.weight_decay().to_metadata());
        state.set_meta(keys::LR, f(self.lr()));
        match self {
            Self::Adam(c) => {
                state.set_meta(keys::KIND, "adam");
                state.set_meta(keys::BETA1, f(c.betas.0));
                state.set_meta(keys::BETA2, f(c.betas.1));
                state.set_meta(keys::EPS, f(c.eps));
            }
            Self::Sgd(c) => {
                state.set_meta(keys::KIND, "sgd");
                state.set_meta(keys::MOMENTUM, f(c.momentum));
                state.set_meta(keys::DAMPENING, f(c.dampening));
                state.set_meta(keys::NESTEROV, c.nesterov.to_string());
            }
        }
    }

    /// Reads a config written by [`OptimizerConfig::write_metadata`].
    ///
    /// # Errors
    /// [`OptimError::BadState`] naming a missing or malformed entry.
    pub fn from_metadata(state: &StateDict) -> Result<Self, OptimError> {
        let bad = |e: nn::NnError| OptimError::BadState { reason: e.to_string() };
        let num = |key: &str| state.parse_meta::<f32>(key, "a number").map_err(bad);
        let weight_decay = WeightDecay::from_metadata(state.require_meta(keys::WEIGHT_DECAY).map_err(bad)?)?;
        let lr = num(keys::LR)?;
        let config = match state.require_meta(keys::KIND).map_err(bad)? {
            "adam" => Self::Adam(AdamConfig {
                lr,
                betas: (num(keys::BETA1)?, num(keys::BETA2)?),
                eps: num(keys::EPS)?,
                weight_decay,
            }),
            "sgd" => Self::Sgd(SgdConfig {
                lr,
                momentum: num(keys::MOMENTUM)?,
                dampening: num(keys::DAMPENING)?,
                nesterov: state.parse_meta::<bool>(keys::NESTEROV, "true or false").map_err(bad)?,
                weight_decay,
            }),
            other => return Err(OptimError::BadState { reason: format!("unknown optimizer {other:?}") }),
        };
        Ok(config)
    }
}

impl std::fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let decay = self.weight_decay().coefficient();
        match self {
            Self::Adam(c) => {
                write!(
                    f,
                    "{} lr={} betas=({}, {}) eps={:e} weight_decay={decay}",
                    self.name(),
                    c.lr,
                    c.betas.0,
                    c.betas.1,
                    c.eps
                )
            }
            Self::Sgd(c) => {
                write!(f, "sgd lr={} momentum={} weight_decay={decay}", c.lr, c.momentum)?;
                if c.dampening != 0.0 {
                    write!(f, " dampening={}", c.dampening)?;
                }
                if c.nesterov {
                    f.write_str(" nesterov")?;
                }
                Ok(())
            }
        }
    }
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

    /// The coefficient, whatever the kind (0 for none).
    pub fn coefficient(self) -> f32 {
        match self {
            Self::None => 0.0,
            Self::L2(l) | Self::Decoupled(l) => l,
        }
    }

    fn to_metadata(self) -> String {
        match self {
            Self::None => "none".into(),
            Self::L2(l) => format!("l2:{l:?}"),
            Self::Decoupled(l) => format!("decoupled:{l:?}"),
        }
    }

    fn from_metadata(s: &str) -> Result<Self, OptimError> {
        let bad = || OptimError::BadState { reason: format!("metadata weight_decay {s:?} is malformed") };
        let value = |v: &str| v.parse::<f32>().map_err(|_| bad());
        match s.split_once(':') {
            None if s == "none" => Ok(Self::None),
            Some(("l2", v)) => Ok(Self::L2(value(v)?)),
            Some(("decoupled", v)) => Ok(Self::Decoupled(value(v)?)),
            _ => Err(bad()),
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
