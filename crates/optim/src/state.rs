//! What every optimizer shares: the check that the gradients are there, and the binding of
//! per-parameter state to the parameters it was built for.

use nn::{Grads, ParamId, Params, StateDict, Tensor};

use crate::OptimError;

/// Per-parameter buffers, bound to the names and sizes of the parameters they were made for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slots {
    pub(crate) layout: Vec<(String, usize)>,
    pub(crate) buffers: Vec<Vec<f32>>,
}

/// The metadata key of the number of steps taken.
pub(crate) const STEP_KEY: &str = "optimizer_step";

impl Slots {
    /// The buffers as row-major tensors named `{param}.{name}`, `names` naming each parameter's
    /// buffers in order, with the step count in the metadata.
    pub(crate) fn export(&self, params: &Params, names: &[&str], step: u64) -> StateDict {
        let mut state = StateDict::new();
        state.set_meta(STEP_KEY, step.to_string());
        let mut buffers = self.buffers.iter();
        for (param, _) in &self.layout {
            let p = params.iter().find(|p| p.name() == param);
            for name in names {
                let buffer = buffers.next().expect("one buffer per name");
                // Parameters other than the bound ones are refused at the next step; their
                // buffers are kept flat meanwhile.
                let tensor = match p {
                    Some(p) if p.len() == buffer.len() => p.aligned_to_tensor(buffer),
                    _ => Tensor::new(vec![buffer.len()], buffer.clone()),
                };
                state.insert(format!("{param}.{name}"), tensor);
            }
        }
        state
    }

    /// The inverse of [`Slots::export`] for `params`: the step count and, when present, every
    /// parameter's buffers. With `required`, a state past its first step must hold them all.
    pub(crate) fn import(
        state: &StateDict,
        params: &Params,
        names: &[&str],
        required: bool,
    ) -> Result<(u64, Self), OptimError> {
        let bad = |reason: String| OptimError::BadState { reason };
        let step: u64 = state.parse_meta(STEP_KEY, "a count").map_err(|e| bad(e.to_string()))?;
        let known = |n: &str| params.iter().any(|p| names.iter().any(|b| n == format!("{}.{b}", p.name())));
        if let Some(name) = state.names().find(|n| !known(n)) {
            return Err(bad(format!("unexpected buffer {name}")));
        }
        let mut slots = Self::default();
        for p in params.iter() {
            let mut found = Vec::new();
            for name in names {
                let full = format!("{}.{name}", p.name());
                match state.get(&full) {
                    Some(t) => found.push(p.aligned_from_tensor(t).map_err(|e| bad(e.to_string()))?),
                    None if required && step > 0 => return Err(bad(format!("{full} is missing"))),
                    None => {}
                }
            }
            match found.len() {
                0 => {}
                n if n == names.len() => {
                    slots.layout.push((p.name().to_owned(), p.len()));
                    slots.buffers.extend(found);
                }
                _ => return Err(bad(format!("{} has some of its buffers, not all", p.name()))),
            }
        }
        if !slots.layout.is_empty() && slots.layout.len() != params.len() {
            return Err(bad("buffers for some parameters only".into()));
        }
        Ok((step, slots))
    }

    /// Makes `per_param` zeroed buffers for each parameter on first use; afterwards checks
    /// that the parameters are still the same.
    pub(crate) fn bind(&mut self, params: &Params, per_param: usize) -> Result<(), OptimError> {
        if self.layout.is_empty() {
            self.layout = params.iter().map(|p| (p.name().to_owned(), p.len())).collect();
            self.buffers = params.iter().flat_map(|p| (0..per_param).map(|_| vec![0.0; p.len()])).collect();
            return Ok(());
        }
        // Compared in place: this runs every step, and must not allocate.
        let same = |i: usize| match (self.layout.get(i), params.iter().nth(i)) {
            (Some((name, len)), Some(p)) => name == p.name() && *len == p.len(),
            (None, None) => true,
            _ => false,
        };
        match (0..self.layout.len().max(params.len())).find(|&i| !same(i)) {
            None => Ok(()),
            Some(index) => Err(OptimError::ParamsChanged {
                index,
                expected: self.layout.get(index).map_or("nothing".into(), |(name, len)| format!("{name} [{len}]")),
                found: params.iter().nth(index).map_or("nothing".into(), |p| format!("{} [{}]", p.name(), p.len())),
            }),
        }
    }
}

/// Every parameter must have a gradient in every part before any is updated, so that a
/// failed step changes nothing.
pub(crate) fn check_grads(params: &Params, parts: &[Grads]) -> Result<(), OptimError> {
    if let Some(grads) = parts.iter().find(|g| !g.fits(params)) {
        return Err(OptimError::GradsMismatch { params: params.len(), grads: grads.len() });
    }
    let missing = |id| parts.is_empty() || parts.iter().any(|g| g.get(id).is_none());
    match params.ids().find(|&id| missing(id)) {
        Some(id) => Err(OptimError::MissingGradient { name: params.get(id).name().to_owned() }),
        None => Ok(()),
    }
}

/// `x`, or zero if it is subnormal. An optimizer's buffers for a weight whose gradient stays
/// zero decay geometrically into the subnormal range, where arithmetic is many times slower on
/// common CPUs; an update from such a buffer is below the precision of any parameter of
/// normal size.
#[inline(always)]
pub(crate) fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// One parameter's gradient: a single part, or two parts added element by element.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GradSum<'a> {
    One(&'a [f32]),
    Two(&'a [f32], &'a [f32]),
}

impl<'a> GradSum<'a> {
    /// Parameter `id`'s gradient over `parts`; more than two parts are first added in order
    /// into `scratch`.
    pub(crate) fn of(parts: &'a [Grads], id: ParamId, scratch: &'a mut Vec<f32>) -> Self {
        let part = |k: usize| parts[k].get(id).expect("checked by check_grads");
        match parts.len() {
            1 => Self::One(part(0)),
            2 => Self::Two(part(0), part(1)),
            _ => {
                scratch.clear();
                scratch.extend_from_slice(part(0));
                for k in 1..parts.len() {
                    scratch.iter_mut().zip(part(k)).for_each(|(s, g)| *s += g);
                }
                Self::One(scratch)
            }
        }
    }

    /// The two halves, at `mid`.
    pub(crate) fn split_at(self, mid: usize) -> (Self, Self) {
        match self {
            Self::One(a) => {
                let (x, y) = a.split_at(mid);
                (Self::One(x), Self::One(y))
            }
            Self::Two(a, b) => {
                let ((a0, a1), (b0, b1)) = (a.split_at(mid), b.split_at(mid));
                (Self::Two(a0, b0), Self::Two(a1, b1))
            }
        }
    }
}
