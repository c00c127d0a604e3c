//! Stochastic gradient descent with momentum, dampening and Nesterov, as `torch.optim.SGD`.

use nn::{Grads, Params, StateDict};

use crate::error::{check, check_unit};
use crate::state::{GradSum, Slots, check_grads};
use crate::{OptimError, Optimizer, OptimizerConfig, WeightDecay};

/// PyTorch's name for SGD's buffer per parameter.
const BUFFERS: [&str; 1] = ["momentum_buffer"];

/// SGD's hyperparameters; the default is plain SGD with lr 0.01.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor; 0 for none.
    pub momentum: f32,
    /// Dampening of the momentum's new gradient.
    pub dampening: f32,
    /// Nesterov momentum (needs `momentum > 0` and `dampening == 0`, as in PyTorch).
    pub nesterov: bool,
    /// `L2` is `torch.optim.SGD(weight_decay=…)`; `Decoupled` shrinks the weights by
    /// `1 - lr·λ` before the update (SGDW).
    pub weight_decay: WeightDecay,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.01, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: WeightDecay::None }
    }
}

impl SgdConfig {
    /// Checks every hyperparameter's range, and Nesterov's conditions.
    ///
    /// # Errors
    /// [`OptimError::InvalidConfig`] naming the first problem.
    pub fn validate(&self) -> Result<(), OptimError> {
        check("learning rate", self.lr, 0.0, false)?;
        check("momentum", self.momentum, 0.0, false)?;
        check_unit("dampening", self.dampening)?;
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return Err(OptimError::InvalidConfig {
                name: "nesterov momentum",
                value: f64::from(self.momentum),
                expected: "needs momentum > 0 and dampening 0",
            });
        }
        self.weight_decay.validate()
    }
}

/// SGD exactly as `torch.optim.SGD` computes it:
///
/// ```text
/// g = grad + λ·p                                        (L2 weight decay)
/// b = g on the first step, else μ·b + (1 - τ)·g         (momentum μ, dampening τ)
/// g = g + μ·b if Nesterov, else b                        (when μ ≠ 0)
/// p -= lr·g
/// ```
#[derive(Debug, Clone)]
pub struct Sgd {
    config: SgdConfig,
    /// One momentum buffer per parameter, made on the first step when momentum is on.
    slots: Slots,
    steps: u64,
    /// Where more than two gradient parts are added up.
    scratch: Vec<f32>,
}

impl Sgd {
    /// An optimizer with no state yet.
    ///
    /// # Errors
    /// A hyperparameter out of range.
    pub fn new(config: SgdConfig) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self { config, slots: Slots::default(), steps: 0, scratch: Vec::new() })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
}

impl Optimizer for Sgd {
    fn step_sum(&mut self, params: &mut Params, parts: &[Grads]) -> Result<(), OptimError> {
        check_grads(params, parts)?;
        let SgdConfig { lr, momentum, dampening, nesterov, weight_decay } = self.config;
        let (l2, shrink) = weight_decay.factors(lr);
        let first = self.steps == 0;
        if momentum != 0.0 {
            self.slots.bind(params, 1)?;
        }
        let one_minus_dampening = (1.0 - f64::from(dampening)) as f32;
        for (i, (id, param)) in params.ids().zip(params.iter_mut()).enumerate() {
            let grad = GradSum::of(parts, id, &mut self.scratch);
            let mut buf = self.slots.buffers.get_mut(i).map(Vec::as_mut_slice);
            for (j, p) in param.elements_mut().iter_mut().enumerate() {
                let g = grad.at(j);
                if let Some(shrink) = shrink {
                    *p *= shrink;
                }
                let mut d = if let Some(l2) = l2 { g + l2 * *p } else { g };
                if let Some(buf) = buf.as_deref_mut() {
                    let b = &mut buf[j];
                    *b = if first { d } else { *b * momentum + one_minus_dampening * d };
                    d = if nesterov { d + momentum * *b } else { *b };
                }
                *p += -lr * d;
            }
        }
        self.steps += 1;
        Ok(())
    }

    fn config(&self) -> OptimizerConfig {
        OptimizerConfig::Sgd(self.config)
    }

    fn state_dict(&self, params: &Params) -> StateDict {
        let mut state = self.slots.export(params, &BUFFERS, self.steps);
        Optimizer::config(self).write_metadata(&mut state);
        state
    }

    fn load_state_dict(&mut self, state: &StateDict, params: &Params) -> Result<(), OptimError> {
        let (step, slots) = Slots::import(state, params, &BUFFERS, self.config.momentum != 0.0)?;
        self.steps = step;
        self.slots = slots;
        Ok(())
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.config.lr = lr;
    }
}
