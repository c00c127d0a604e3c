//! What every optimizer shares: the check that the gradients are there, and the binding of
//! per-parameter state to the parameters it was built for.

use nn::Params;

use crate::OptimError;

/// Per-parameter buffers, bound to the names and sizes of the parameters they were made for.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Slots {
    pub(crate) layout: Vec<(String, usize)>,
    pub(crate) buffers: Vec<Vec<f32>>,
}

impl Slots {
    /// Makes `per_param` zeroed buffers for each parameter on first use; afterwards checks
    /// that the parameters are still the same.
    pub(crate) fn bind(&mut self, params: &Params, per_param: usize) -> Result<(), OptimError> {
        if self.layout.is_empty() {
            self.layout = params.iter().map(|p| (p.name().to_owned(), p.value().len())).collect();
            self.buffers = params.iter().flat_map(|p| (0..per_param).map(|_| vec![0.0; p.value().len()])).collect();
            return Ok(());
        }
        let describe = |(name, len): &(String, usize)| format!("{name} [{len}]");
        let given: Vec<_> = params.iter().map(|p| (p.name().to_owned(), p.value().len())).collect();
        if let Some(index) = (0..self.layout.len().max(given.len())).find(|&i| self.layout.get(i) != given.get(i)) {
            return Err(OptimError::ParamsChanged {
                index,
                expected: self.layout.get(index).map_or("nothing".into(), describe),
                found: given.get(index).map_or("nothing".into(), describe),
            });
        }
        Ok(())
    }
}

/// Every parameter must have a gradient before any is updated, so that a failed step changes
/// nothing.
pub(crate) fn check_grads(params: &Params) -> Result<(), OptimError> {
    match params.iter().find(|p| p.grad().is_none()) {
        Some(p) => Err(OptimError::MissingGradient { name: p.name().to_owned() }),
        None => Ok(()),
    }
}
