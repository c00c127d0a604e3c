//! Learning-rate schedules, stepped once per optimizer step, as PyTorch's schedulers compute
//! them: `StepLR`, `CosineAnnealingLR`, `OneCycleLR`, and a `LinearLR` warm-up before any of
//! them (`SequentialLR`). A schedule is a function of the step number, so a resumed run
//! continues it exactly from its step count.

use std::fmt;
use std::str::FromStr;

/// `StepLR`'s default decay factor.
pub const STEP_GAMMA: f64 = 0.1;
/// `LinearLR`'s default start factor: a warm-up starts from a third of the learning rate.
pub const WARMUP_START: f64 = 1.0 / 3.0;

/// The learning rate's curve after the warm-up, step by step: one of PyTorch's schedulers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrCurve {
    /// The optimizer's own learning rate throughout.
    Constant,
    /// `StepLR(step_size, gamma)`: multiplied by `gamma` every `step_size` steps.
    Step {
        /// Steps between decays.
        step_size: u64,
        /// The factor of each decay.
        gamma: f64,
    },
    /// `CosineAnnealingLR(t_max, eta_min)`: from the learning rate down to `eta_min` along half a
    /// cosine over `t_max` steps.
    Cosine {
        /// Steps of the descent.
        t_max: u64,
        /// The lowest learning rate.
        eta_min: f64,
    },
    /// `OneCycleLR(max_lr, total_steps, pct_start, anneal_strategy, div_factor,
    /// final_div_factor)`: up from `max_lr / div_factor` to `max_lr` over the first
    /// `pct_start` of the steps, then down to `max_lr / div_factor / final_div_factor`.
    OneCycle {
        /// The peak learning rate.
        max_lr: f64,
        /// Steps of the whole cycle.
        total_steps: u64,
        /// The share of the steps spent going up.
        pct_start: f64,
        /// `max_lr` over the first learning rate.
        div_factor: f64,
        /// The first learning rate over the last.
        final_div_factor: f64,
        /// Linear rather than cosine annealing.
        linear: bool,
    },
}

/// A schedule with an optional `LinearLR` warm-up before it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    /// Steps of warm-up, from `warmup_start` times the learning rate up to it; 0 for none.
    pub warmup_steps: u64,
    /// The factor the warm-up starts from.
    pub warmup_start: f64,
    /// The curve after the warm-up, its steps counted from the warm-up's end.
    pub curve: LrCurve,
}

impl Default for LrSchedule {
    /// A constant learning rate.
    fn default() -> Self {
        Self { warmup_steps: 0, warmup_start: 1.0, curve: LrCurve::Constant }
    }
}

impl LrSchedule {
    /// OneCycleLR's defaults for `max_lr` over `total_steps`: cosine annealing, 30% up, from
    /// `max_lr / 25` to `max_lr / 25 / 1e4`.
    pub fn one_cycle(max_lr: f64, total_steps: u64) -> Self {
        Self {
            curve: LrCurve::OneCycle {
                max_lr,
                total_steps,
                pct_start: 0.3,
                div_factor: 25.0,
                final_div_factor: 1e4,
                linear: false,
            },
            ..Self::default()
        }
    }

    /// Whether the learning rate never changes.
    pub fn is_constant(&self) -> bool {
        self.warmup_steps == 0 && self.curve == LrCurve::Constant
    }

    /// The learning rate of optimizer step `step` (0-based) for a base learning rate `lr`.
    ///
    /// ```
    /// use optim::{LrSchedule, LrCurve};
    /// let cosine = LrSchedule { curve: LrCurve::Cosine { t_max: 10, eta_min: 0.0 }, ..LrSchedule::default() };
    /// assert_eq!(cosine.lr(0.1, 0), 0.1);
    /// assert!((cosine.lr(0.1, 5) - 0.05).abs() < 1e-7);
    /// ```
    pub fn lr(&self, lr: f32, step: u64) -> f32 {
        let base = f64::from(lr);
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return (base * (self.warmup_start + (1.0 - self.warmup_start) * t)) as f32;
        }
        let t = step - self.warmup_steps;
        let value = match self.curve {
            LrCurve::Constant => base,
            LrCurve::Step { step_size, gamma } => base * gamma.powi((t / step_size.max(1)) as i32),
            LrCurve::Cosine { t_max, eta_min } => {
                // As PyTorch's closed form: past t_max the cosine goes on, back up.
                let progress = t as f64 / t_max.max(1) as f64;
                eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * progress).cos()) / 2.0
            }
            LrCurve::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor, linear } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let up_end = pct_start * total_steps as f64 - 1.0;
                let down_end = total_steps as f64 - 1.0;
                let t = t as f64;
                let anneal = |start: f64, end: f64, pct: f64| {
                    if linear {
                        (end - start) * pct + start
                    } else {
                        end + (start - end) / 2.0 * (1.0 + (std::f64::consts::PI * pct).cos())
                    }
                };
                if t <= up_end {
                    anneal(initial, max_lr, t / up_end)
                } else {
                    anneal(max_lr, min, ((t - up_end) / (down_end - up_end)).min(1.0))
                }
            }
        };
        value as f32
    }
}

/// The text form, for a file's metadata and for people: `constant`, `step(3,0.5)`,
/// `cosine(10,0.01)`, `onecycle(0.1,20,0.3,25,10000,cos)`, and `warmup(5,0.1)+` before any.
impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.warmup_steps > 0 {
            write!(f, "warmup({},{:?})+", self.warmup_steps, self.warmup_start)?;
        }
        match self.curve {
            LrCurve::Constant => f.write_str("constant"),
            LrCurve::Step { step_size, gamma } => write!(f, "step({step_size},{gamma:?})"),
            LrCurve::Cosine { t_max, eta_min } => write!(f, "cosine({t_max},{eta_min:?})"),
            LrCurve::OneCycle { max_lr, total_steps, pct_start, div_factor, final_div_factor, linear } => write!(
                f,
                "onecycle({max_lr:?},{total_steps},{pct_start:?},{div_factor:?},{final_div_factor:?},{})",
                if linear { "linear" } else { "cos" }
            ),
        }
    }
}

/// Text that [`LrSchedule`]'s `FromStr` cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a schedule")]
pub struct ScheduleParseError {
    /// The text.
    pub text: String,
}

impl FromStr for LrSchedule {
    type Err = ScheduleParseError;

    /// Reads what `Display` writes, e.g. `warmup(100,0.3333333333333333)+cosine(800,0.0)`.
    fn from_str(text: &str) -> Result<Self, ScheduleParseError> {
        let bad = || ScheduleParseError { text: text.to_owned() };
        let (warmup, rest) = match text.split_once('+') {
            Some((w, rest)) => (Some(w), rest),
            None => (None, text),
        };
        let args = |s: &str, name: &str| -> Option<Vec<String>> {
            let inner = s.strip_prefix(name)?.strip_prefix('(')?.strip_suffix(')')?;
            Some(inner.split(',').map(|a| a.trim().to_owned()).collect())
        };
        let num = |s: &str| s.parse::<f64>().map_err(|_| bad());
        let count = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let mut out = Self::default();
        if let Some(w) = warmup {
            let a = args(w, "warmup").filter(|a| a.len() == 2).ok_or_else(bad)?;
            (out.warmup_steps, out.warmup_start) = (count(&a[0])?, num(&a[1])?);
        }
        out.curve = if rest == "constant" {
            LrCurve::Constant
        } else if let Some(a) = args(rest, "step").filter(|a| a.len() == 2) {
            LrCurve::Step { step_size: count(&a[0])?, gamma: num(&a[1])? }
        } else if let Some(a) = args(rest, "cosine").filter(|a| a.len() == 2) {
            LrCurve::Cosine { t_max: count(&a[0])?, eta_min: num(&a[1])? }
        } else if let Some(a) = args(rest, "onecycle").filter(|a| a.len() == 6) {
            LrCurve::OneCycle {
                max_lr: num(&a[0])?,
                total_steps: count(&a[1])?,
                pct_start: num(&a[2])?,
                div_factor: num(&a[3])?,
                final_div_factor: num(&a[4])?,
                linear: match a[5].as_str() {
                    "linear" => true,
                    "cos" => false,
                    _ => return Err(bad()),
                },
            }
        } else {
            return Err(bad());
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for s in [
            LrSchedule::default(),
            LrSchedule { curve: LrCurve::Step { step_size: 3, gamma: 0.5 }, ..LrSchedule::default() },
            LrSchedule { warmup_steps: 5, warmup_start: 0.1, curve: LrCurve::Cosine { t_max: 15, eta_min: 0.001 } },
            LrSchedule::one_cycle(0.1, 20),
        ] {
            assert_eq!(s.to_string().parse::<LrSchedule>().unwrap(), s, "{s}");
        }
        assert!("cosine(10)".parse::<LrSchedule>().is_err());
        assert!("warmup(5)+constant".parse::<LrSchedule>().is_err());
    }
}
