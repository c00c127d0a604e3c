//! Adam and AdamW, with PyTorch's update rule and bias correction.

use nn::{Grads, Params, StateDict};

use crate::error::{check, check_unit};
use crate::state::{GradSum, Slots, check_grads, flush_subnormal};
use crate::{OptimError, Optimizer, OptimizerConfig, WeightDecay};

/// PyTorch's names for Adam's two buffers per parameter.
const BUFFERS: [&str; 2] = ["exp_avg", "exp_avg_sq"];

/// Adam's hyperparameters. The default is `torch.optim.Adam()`'s: lr 1e-3, betas (0.9, 0.999),
/// eps 1e-8, no weight decay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rates of the first and second moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator for numerical stability.
    pub eps: f32,
    /// `L2` is `torch.optim.Adam(weight_decay=…)`; `Decoupled` is `torch.optim.AdamW`.
    pub weight_decay: WeightDecay,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: WeightDecay::None }
    }
}

impl AdamConfig {
    /// `torch.optim.AdamW()`'s defaults: as Adam, with decoupled weight decay 0.01.
    pub fn adamw() -> Self {
        Self { weight_decay: WeightDecay::Decoupled(0.01), ..Self::default() }
    }

    /// Checks every hyperparameter's range.
    ///
    /// # Errors
    /// [`OptimError::InvalidConfig`] naming the first one out of range.
    pub fn validate(&self) -> Result<(), OptimError> {
        check("learning rate", self.lr, 0.0, false)?;
        check_unit("beta1", self.betas.0)?;
        check_unit("beta2", self.betas.1)?;
        check("eps", self.eps, 0.0, false)?;
        self.weight_decay.validate()
    }
}

/// Adam (Kingma & Ba), exactly as `torch.optim.Adam` and `torch.optim.AdamW` compute it:
///
/// ```text
/// t += 1
/// p *= 1 - lr·λ                       (decoupled weight decay, AdamW)
/// g  = grad + λ·p                     (L2 weight decay, Adam)
/// m  = m + (1 - β1)·(g - m)
/// v  = β2·v + (1 - β2)·g²
/// p -= lr / (1 - β1ᵗ) · m / (sqrt(v) / sqrt(1 - β2ᵗ) + ε)
/// ```
///
/// ```
/// use nn::{Grads, Params, StateDict};
/// use optim::{Adam, AdamConfig, Optimizer};
/// let mut params = Params::new();
/// let w = params.add("w", &[1], vec![1.0]);
/// let mut grads = Grads::new(&params);
/// let mut adam = Adam::new(AdamConfig::default()).unwrap();
/// // No backward pass yet: the step is refused and nothing changes.
/// assert!(adam.step(&mut params, &grads).is_err());
/// assert_eq!(params.get(w).elements(), &[1.0]);
/// // The first step moves each weight by about the learning rate, against its gradient.
/// grads.set(w, &[0.25]);
/// adam.step(&mut params, &grads).unwrap();
/// assert!((params.get(w).elements()[0] - 0.999).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct Adam {
    config: AdamConfig,
    step: u64,
    /// Two buffers per parameter: the first moment, then the second.
    slots: Slots,
    /// Where more than two gradient parts are added up.
    scratch: Vec<f32>,
}

impl Adam {
    /// An optimizer with no state yet; the state is made for the parameters of the first step.
    ///
    /// # Errors
    /// A hyperparameter out of range.
    pub fn new(config: AdamConfig) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self { config, step: 0, slots: Slots::default(), scratch: Vec::new() })
    }

    /// The hyperparameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// Steps taken so far (PyTorch's `state['step']`).
    pub fn step_count(&self) -> u64 {
        self.step
    }
}

impl Optimizer for Adam {
    fn step_sum(&mut self, params: &mut Params, parts: &[Grads]) -> Result<(), OptimError> {
        check_grads(params, parts)?;
        self.slots.bind(params, 2)?;
        self.step += 1;
        let AdamConfig { lr, betas: (beta1, beta2), eps, weight_decay } = self.config;
        // Scalars in f64 and rounded once to f32, as PyTorch computes them in Python floats.
        let t = self.step as i32;
        let bias_correction1 = 1.0 - f64::from(beta1).powi(t);
        let bias_correction2 = 1.0 - f64::from(beta2).powi(t);
        let step_size = (f64::from(lr) / bias_correction1) as f32;
        let bc2_sqrt = bias_correction2.sqrt() as f32;
        let (one_minus_beta1, one_minus_beta2) = ((1.0 - f64::from(beta1)) as f32, (1.0 - f64::from(beta2)) as f32);
        let (l2, shrink) = weight_decay.factors(lr);

        let constants = AdamStep { shrink, l2, one_minus_beta1, beta2, one_minus_beta2, bc2_sqrt, eps, step_size };
        let mut buffers = self.slots.buffers.chunks_exact_mut(2);
        for (id, param) in params.ids().zip(params.iter_mut()) {
            let [m, v] = buffers.next().expect("bound above") else { unreachable!("chunks of two") };
            constants.apply(param.elements_mut(), GradSum::of(parts, id, &mut self.scratch), m, v);
        }
        Ok(())
    }

    fn config(&self) -> OptimizerConfig {
        OptimizerConfig::Adam(self.config)
    }

    fn state_dict(&self, params: &Params) -> StateDict {
        let mut state = self.slots.export(params, &BUFFERS, self.step);
        Optimizer::config(self).write_metadata(&mut state);
        state
    }

    fn load_state_dict(&mut self, state: &StateDict, params: &Params) -> Result<(), OptimError> {
        let (step, slots) = Slots::import(state, params, &BUFFERS, true)?;
        self.step = step;
        self.slots = slots;
        Ok(())
    }

    fn set_learning_rate(&mut self, lr: f32) {
        self.config.lr = lr;
    }
}

/// One Adam step's constants, applied element by element.
#[derive(Debug, Clone, Copy)]
struct AdamStep {
    shrink: Option<f32>,
    l2: Option<f32>,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc2_sqrt: f32,
    eps: f32,
    step_size: f32,
}

impl AdamStep {
    /// Updates `p` from `g`, with moments `m` and `v`, split across the rayon pool when large.
    /// Each element is updated alone, so the split changes no result.
    fn apply(&self, p: &mut [f32], g: GradSum, m: &mut [f32], v: &mut [f32]) {
        /// Elements per thread below which an update is not split.
        const PARALLEL_MIN: usize = 4096;
        if p.len() >= 2 * PARALLEL_MIN && rayon::current_num_threads() > 1 {
            let mid = p.len() / 2;
            let (p0, p1) = p.split_at_mut(mid);
            let (m0, m1) = m.split_at_mut(mid);
            let (v0, v1) = v.split_at_mut(mid);
            let (g0, g1) = g.split_at(mid);
            rayon::join(|| self.apply(p0, g0, m0, v0), || self.apply(p1, g1, m1, v1));
            return;
        }
        match g {
            GradSum::One(g) => self.apply_simd(p, |i| g[i], m, v),
            GradSum::Two(a, b) => self.apply_simd(p, |i| a[i] + b[i], m, v),
        }
    }

    /// The update with the widest vector instructions the CPU has. Every path computes the same
    /// operations in the same order (no fused multiply-add), so results do not depend on the CPU.
    #[inline(always)]
    fn apply_simd(&self, p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.apply_avx512(p, g, m, v) };
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.apply_avx2(p, g, m, v) };
        }
        self.apply_portable(p, g, m, v);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    fn apply_avx512(&self, p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32]) {
        self.apply_portable(p, g, m, v);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn apply_avx2(&self, p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32]) {
        self.apply_portable(p, g, m, v);
    }

    #[inline(always)]
    fn apply_portable(&self, p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let (m, v) = (&mut m[..n], &mut v[..n]);
        for i in 0..n {
            let mut pi = p[i];
            if let Some(shrink) = self.shrink {
                pi *= shrink;
            }
            let gi = if let Some(l2) = self.l2 { g(i) + l2 * pi } else { g(i) };
            let mi = flush_subnormal(m[i] + self.one_minus_beta1 * (gi - m[i]));
            let vi = flush_subnormal(v[i] * self.beta2 + self.one_minus_beta2 * gi * gi);
            let denom = vi.sqrt() / self.bc2_sqrt + self.eps;
            p[i] = pi + -self.step_size * mi / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }
}
