//! What every optimizer shares: the check that the gradients are there, and the binding of
//! per-parameter state to the parameters it was built for.

use nn::{Grads, ParamId, Params};

use crate::OptimError;

/// Per-parameter buffers, bound to the names and sizes of the parameters they were made for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slots {
    pub(crate) layout: Vec<(String, usize)>,
    pub(crate) buffers: Vec<Vec<f32>>,
}

impl Slots {
    /// The buffers as `{param}.{name}`, `names` naming each parameter's buffers in order.
    pub(crate) fn export(&self, names: &[&str]) -> Vec<(String, Vec<f32>)> {
        let mut buffers = self.buffers.iter();
        self.layout
            .iter()
            .flat_map(|(param, _)| names.iter().map(move |n| format!("{param}.{n}")))
            .map(|name| (name, buffers.next().expect("one buffer per name").clone()))
            .collect()
    }

    /// The inverse of [`Slots::export`].
    pub(crate) fn import(buffers: Vec<(String, Vec<f32>)>, names: &[&str]) -> Result<Self, OptimError> {
        if !buffers.len().is_multiple_of(names.len()) {
            return Err(OptimError::BadState {
                reason: format!("{} buffers, not groups of {}", buffers.len(), names.len()),
            });
        }
        let mut slots = Self::default();
        for group in buffers.chunks(names.len()) {
            let suffix = format!(".{}", names[0]);
            let param = group[0].0.strip_suffix(&suffix).ok_or_else(|| OptimError::BadState {
                reason: format!("buffer {} is not a {}", group[0].0, names[0]),
            })?;
            let len = group[0].1.len();
            for ((name, values), expected) in group.iter().zip(names) {
                if *name != format!("{param}.{expected}") || values.len() != len {
                    return Err(OptimError::BadState {
                        reason: format!(
                            "buffer {name} [{}] where {param}.{expected} [{len}] was expected",
                            values.len()
                        ),
                    });
                }
            }
            slots.layout.push((param.to_owned(), len));
        }
        slots.buffers = buffers.into_iter().map(|(_, v)| v).collect();
        Ok(slots)
    }

    /// Makes `per_param` zeroed buffers for each parameter on first use; afterwards checks
    /// that the parameters are still the same.
    pub(crate) fn bind(&mut self, params: &Params, per_param: usize) -> Result<(), OptimError> {
        if self.layout.is_empty() {
            self.layout = params.iter().map(|p| (p.name().to_owned(), p.value().len())).collect();
            self.buffers = params.iter().flat_map(|p| (0..per_param).map(|_| vec![0.0; p.value().len()])).collect();
            return Ok(());
        }
        // Compared in place: this runs every step, and must not allocate.
        let same = |i: usize| match (self.layout.get(i), params.iter().nth(i)) {
            (Some((name, len)), Some(p)) => name == p.name() && *len == p.value().len(),
            (None, None) => true,
            _ => false,
        };
        match (0..self.layout.len().max(params.len())).find(|&i| !same(i)) {
            None => Ok(()),
            Some(index) => Err(OptimError::ParamsChanged {
                index,
                expected: self.layout.get(index).map_or("nothing".into(), |(name, len)| format!("{name} [{len}]")),
                found: params
                    .iter()
                    .nth(index)
                    .map_or("nothing".into(), |p| format!("{} [{}]", p.name(), p.value().len())),
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

    /// Element `i` of the sum.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> f32 {
        match self {
            Self::One(a) => a[i],
            Self::Two(a, b) => a[i] + b[i],
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
