//! Adam and AdamW, with PyTorch's update rule and bias correction.

use nn::{Grads, Params, StateDict};
use simd::{F32s, Simd};

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
        let step_size = (f64::from(lr) / bias_correction1) as f32;
        let bc2_sqrt = bias_correction2_sqrt(beta2, t);
        let (one_minus_beta1, one_minus_beta2) = ((1.0 - f64::from(beta1)) as f32, (1.0 - f64::from(beta2)) as f32);
        let (l2, shrink) = weight_decay.factors(lr);

        let constants = AdamStep {
            shrink,
            l2,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            bc2_sqrt,
            eps,
            step_size,
            simd: Simd::get(),
        };
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

/// `sqrt(1 - β2ᵗ)`, the square root of the second moment's bias correction at step `t`,
/// computed in f64 and rounded once, as PyTorch computes it in Python floats.
fn bias_correction2_sqrt(beta2: f32, t: i32) -> f32 {
    (1.0 - f64::from(beta2).powi(t)).sqrt() as f32
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
    /// The vector level the update is compiled for.
    simd: Simd,
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
        // SAFETY: `update` has no requirement beyond the CPU's level.
        unsafe { update_at(self.simd, self, p, g, m, v) }
    }

    #[inline(always)]
    fn apply_level<V: F32s>(&self, p: &mut [f32], g: impl Fn(usize) -> f32, m: &mut [f32], v: &mut [f32]) {
        let n = p.len();
        let (m, v) = (&mut m[..n], &mut v[..n]);
        let by_bc2_sqrt = ExactDivision::by(self.bc2_sqrt);
        for i in 0..n {
            let mut pi = p[i];
            if let Some(shrink) = self.shrink {
                pi *= shrink;
            }
            let gi = if let Some(l2) = self.l2 { g(i) + l2 * pi } else { g(i) };
            let mi = flush_subnormal(m[i] + self.one_minus_beta1 * (gi - m[i]));
            let vi = flush_subnormal(v[i] * self.beta2 + self.one_minus_beta2 * gi * gi);
            let denom = by_bc2_sqrt.divide::<V>(vi.sqrt()) + self.eps;
            p[i] = pi + -self.step_size * mi / denom;
            m[i] = mi;
            v[i] = vi;
        }
    }
}

/// The update compiled for one level. Every level computes the same values (multiply-adds
/// only where they give the division's bits), so results do not depend on the CPU.
///
/// # Safety
/// The CPU must have `V`'s level.
#[inline(always)]
unsafe fn update<V: F32s>(step: &AdamStep, p: &mut [f32], g: GradSum, m: &mut [f32], v: &mut [f32]) {
    // Cut to length first: a bounds check left in the loop would keep it from vectorising.
    let n = p.len();
    match g {
        GradSum::One(g) => {
            let g = &g[..n];
            step.apply_level::<V>(p, |i| g[i], m, v);
        }
        GradSum::Two(a, b) => {
            let (a, b) = (&a[..n], &b[..n]);
            step.apply_level::<V>(p, |i| a[i] + b[i], m, v);
        }
    }
}

simd::kernel! {
    /// [`update`] at a level.
    unsafe fn update_at(step: &AdamStep, p: &mut [f32], g: GradSum, m: &mut [f32], v: &mut [f32]) => update;
}

/// Division by a constant, with multiplications where the level fuses them: the divider is
/// the slowest unit an update uses, and Adam divides twice and takes a square root per element.
/// Rounded exactly as `x / divisor` for a divisor in (2⁻²⁶, 1] and `x` zero, +∞, NaN or from
/// 2⁻¹⁰⁰ to 2¹⁰⁰: every square root Adam divides by its bias correction.
#[derive(Debug, Clone, Copy)]
struct ExactDivision {
    divisor: f32,
    /// `1 / divisor`, correctly rounded.
    reciprocal: f32,
}

impl ExactDivision {
    fn by(divisor: f32) -> Self {
        debug_assert!(divisor > 2f32.powi(-26) && divisor <= 1.0, "divisor {divisor} out of range");
        Self { divisor, reciprocal: 1.0 / divisor }
    }

    /// `x / divisor`, to the bit, at level `V`: [`Self::fused`] where it fuses multiply-adds,
    /// the division elsewhere.
    #[inline(always)]
    fn divide<V: F32s>(&self, x: f32) -> f32 {
        if V::FUSED { self.fused(x) } else { x / self.divisor }
    }

    /// Markstein's correction: `q = x·r` is within an ulp of the quotient, the remainder
    /// `x - q·d` is exact in a multiply-add, and `q + rem·r` rounds to the correctly rounded
    /// quotient, given a correctly rounded reciprocal `r` and no overflow or underflow on the
    /// way: for `x` zero or from 2⁻¹⁰⁰ up to 2¹⁰⁰, and a divisor above 2⁻²⁶. With `+∞` and NaN,
    /// that covers the square root of any `f32`: those two pass through the sum at the end,
    /// where `x - finite` is zero for every other `x`.
    #[inline(always)]
    fn fused(&self, x: f32) -> f32 {
        const LIMIT: f32 = f32::from_bits((127 + 100) << 23);
        let finite = if x < LIMIT { x } else { LIMIT };
        let q = finite * self.reciprocal;
        let corrected = (-q).mul_add(self.divisor, finite).mul_add(self.reciprocal, q);
        corrected + (x - finite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_updates_to_the_same_bits() {
        // Long enough for whole vectors and a tail at every level, with weight decay both ways.
        let n = 1000 + 7;
        let wave = |k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 0.3).collect() };
        let (p0, g, h, m0) = (wave(0.7), wave(1.3), wave(0.4), wave(2.1));
        let v0: Vec<f32> = wave(0.9).iter().map(|x| x * x).collect();
        for (shrink, l2) in [(None, None), (Some(0.999), None), (None, Some(0.01))] {
            let mut first: Option<(Vec<f32>, Vec<f32>, Vec<f32>)> = None;
            for simd in Simd::every() {
                let step = AdamStep {
                    shrink,
                    l2,
                    one_minus_beta1: 0.1,
                    beta2: 0.999,
                    one_minus_beta2: 0.001,
                    bc2_sqrt: 0.05,
                    eps: 1e-8,
                    step_size: 1e-3,
                    simd,
                };
                let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
                step.apply(&mut p, GradSum::Two(&g, &h), &mut m, &mut v);
                step.apply(&mut p, GradSum::One(&g), &mut m, &mut v);
                let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let got = (p, m, v);
                let want = first.get_or_insert_with(|| got.clone());
                assert!(
                    bits(&got.0) == bits(&want.0) && bits(&got.1) == bits(&want.1) && bits(&got.2) == bits(&want.2),
                    "{simd}"
                );
            }
        }
    }

    #[test]
    fn the_fused_division_rounds_as_the_division() {
        // Adam's divisors with β2 = 0.999, as `step_sum` rounds them, up to step 16,000 (by
        // step 16,600 they round to 1), with β2 = 0.99, and others, each against every
        // significand of two binades: with no underflow or overflow, the exponent of `x` only
        // scales both sides.
        let adams = [1, 2, 3, 10, 100, 938, 1000, 4000, 9380, 16_000].map(|t| bias_correction2_sqrt(0.999, t));
        assert!(adams.windows(2).all(|d| d[0] < d[1] && d[1] < 1.0), "distinct, below 1");
        let others = [bias_correction2_sqrt(0.99, 1), 1.0, 0.3, 1.0 - f32::EPSILON / 2.0, 3.0e-4];
        for divisor in adams.into_iter().chain(others) {
            let division = ExactDivision::by(divisor);
            for exponent in [127, 127 - 60] {
                for significand in 0..1u32 << 23 {
                    let x = f32::from_bits(exponent << 23 | significand);
                    let want = x / divisor;
                    assert_eq!(division.fused(x).to_bits(), want.to_bits(), "{x:e} / {divisor:e}");
                }
            }
            for x in [0.0, f32::INFINITY, f32::NAN, f32::MAX.sqrt(), 2f32.powi(-100), 2f32.powi(100)] {
                let (got, want) = (division.fused(x), x / divisor);
                assert!(got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(), "{x:e} / {divisor:e}");
            }
        }
    }
}
