//! Stochastic gradient descent with momentum, dampening and Nesterov, as `torch.optim.SGD`.

use nn::{Grads, Params, StateDict};
use simd::Simd;

use crate::error::{check, check_unit};
use crate::state::{GradSum, Slots, check_grads, flush_subnormal};
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
        if momentum != 0.0 {
            self.slots.bind(params, 1)?;
        }
        let one_minus_dampening = (1.0 - f64::from(dampening)) as f32;
        let step = SgdStep {
            lr,
            momentum,
            one_minus_dampening,
            nesterov,
            l2,
            shrink,
            first: self.steps == 0,
            simd: Simd::get(),
        };
        for (i, (id, param)) in params.ids().zip(params.iter_mut()).enumerate() {
            let grad = GradSum::of(parts, id, &mut self.scratch);
            match self.slots.buffers.get_mut(i) {
                Some(buffer) => step.apply(param.elements_mut(), grad, Some(&mut buffer[..])),
                None => step.apply(param.elements_mut(), grad, None),
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

/// One SGD step's constants, applied element by element.
#[derive(Debug, Clone, Copy)]
struct SgdStep {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    nesterov: bool,
    l2: Option<f32>,
    shrink: Option<f32>,
    /// The first step sets each momentum buffer to the gradient.
    first: bool,
    /// The vector level the update is compiled for.
    simd: Simd,
}

impl SgdStep {
    /// Updates `p` from `g`, with momentum buffer `buf` when momentum is on, split across the
    /// rayon pool when large. Each element is updated alone, so the split changes no result.
    fn apply(&self, p: &mut [f32], g: GradSum, buf: Option<&mut [f32]>) {
        /// Elements per thread below which an update is not split.
        const PARALLEL_MIN: usize = 4096;
        if p.len() >= 2 * PARALLEL_MIN && rayon::current_num_threads() > 1 {
            let mid = p.len() / 2;
            let (p0, p1) = p.split_at_mut(mid);
            let (g0, g1) = g.split_at(mid);
            let (b0, b1) = match buf {
                Some(b) => {
                    let (b0, b1) = b.split_at_mut(mid);
                    (Some(b0), Some(b1))
                }
                None => (None, None),
            };
            rayon::join(|| self.apply(p0, g0, b0), || self.apply(p1, g1, b1));
            return;
        }
        match g {
            GradSum::One(g) => self.apply_simd(p, |i| g[i], buf),
            GradSum::Two(a, b) => self.apply_simd(p, |i| a[i] + b[i], buf),
        }
    }

    /// The update compiled for the level in force. Every level computes the same operations in
    /// the same order (no fused multiply-add), so results do not depend on the CPU.
    #[inline(always)]
    fn apply_simd(&self, p: &mut [f32], g: impl Fn(usize) -> f32, buf: Option<&mut [f32]>) {
        simd::dispatch!(self.simd, V => self.apply_portable(p, g, buf))
    }

    /// With the conditions tested once, outside the loops, so that each loop vectorises.
    #[inline(always)]
    fn apply_portable(&self, p: &mut [f32], g: impl Fn(usize) -> f32, buf: Option<&mut [f32]>) {
        let decayed = |pi: &mut f32, gi: f32| {
            if let Some(shrink) = self.shrink {
                *pi *= shrink;
            }
            if let Some(l2) = self.l2 { gi + l2 * *pi } else { gi }
        };
        let Some(buf) = buf else {
            for (i, pi) in p.iter_mut().enumerate() {
                let d = decayed(pi, g(i));
                *pi += -self.lr * d;
            }
            return;
        };
        let buf = &mut buf[..p.len()];
        let (momentum, lr) = (self.momentum, self.lr);
        match (self.first, self.nesterov) {
            (true, nesterov) => {
                for (i, (pi, b)) in p.iter_mut().zip(buf.iter_mut()).enumerate() {
                    let d = decayed(pi, g(i));
                    *b = flush_subnormal(d);
                    *pi += -lr * if nesterov { d + momentum * *b } else { *b };
                }
            }
            (false, false) => {
                for (i, (pi, b)) in p.iter_mut().zip(buf.iter_mut()).enumerate() {
                    let d = decayed(pi, g(i));
                    *b = flush_subnormal(*b * momentum + self.one_minus_dampening * d);
                    *pi += -lr * *b;
                }
            }
            (false, true) => {
                for (i, (pi, b)) in p.iter_mut().zip(buf.iter_mut()).enumerate() {
                    let d = decayed(pi, g(i));
                    *b = flush_subnormal(*b * momentum + self.one_minus_dampening * d);
                    *pi += -lr * (d + momentum * *b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_updates_to_the_same_bits() {
        let n = 1000 + 7;
        let wave = |k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 0.3).collect() };
        let (p0, g, h, b0) = (wave(0.7), wave(1.3), wave(0.4), wave(2.1));
        for (momentum, nesterov, first, shrink, l2) in [
            (0.0, false, false, None, None),
            (0.9, false, true, Some(0.999), None),
            (0.9, false, false, None, Some(0.01)),
            (0.9, true, false, None, None),
        ] {
            let mut want: Option<(Vec<u32>, Vec<u32>)> = None;
            for simd in Simd::every() {
                let step = SgdStep { lr: 0.01, momentum, one_minus_dampening: 1.0, nesterov, l2, shrink, first, simd };
                let (mut p, mut b) = (p0.clone(), b0.clone());
                let buf = (momentum != 0.0).then_some(&mut b[..]);
                step.apply(&mut p, GradSum::Two(&g, &h), buf);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let got = (bits(&p), bits(&b));
                assert_eq!(
                    want.get_or_insert_with(|| got.clone()),
                    &got,
                    "{simd}, momentum {momentum}, nesterov {nesterov}"
                );
            }
        }
    }
}
