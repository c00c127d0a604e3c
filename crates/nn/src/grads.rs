//! Gradients, kept apart from the parameters: one buffer per parameter in the parameter's own
//! storage layout, overwritten by every backward pass, so there is nothing to zero beforehand.

use ndarray::{ArrayViewMut1, ArrayViewMut2, ShapeBuilder};

use crate::Tensor;
use crate::params::{Layout, ParamId, Params};

/// The gradients of a [`Params`] set, written by [`Tape::backward`](crate::Tape::backward) and
/// read by optimizers. Several tapes can read the same parameters at once, each writing its
/// own `Grads`, which [`Grads::add`] then sums.
///
/// ```
/// let mut params = nn::Params::new();
/// let w = params.add("w", &[2], vec![1.0, 2.0]);
/// let mut grads = nn::Grads::new(&params);
/// assert!(grads.get(w).is_none()); // no backward pass yet
/// grads.set(w, &[0.5, -0.5]);
/// assert_eq!(grads.get(w), Some(&[0.5, -0.5][..]));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    buffers: Vec<tensor::AlignedVec>,
    /// Whether the last backward pass (or a `set`) gave the parameter a gradient.
    present: Vec<bool>,
    /// Whether the backward pass under way has written the buffer yet.
    written: Vec<bool>,
}

impl Grads {
    /// Buffers for every parameter of `params`, none holding a gradient yet.
    pub fn new(params: &Params) -> Self {
        let buffers: Vec<tensor::AlignedVec> = params.iter().map(|p| tensor::AlignedVec::zeros(p.len())).collect();
        let n = buffers.len();
        Self { buffers, present: vec![false; n], written: vec![false; n] }
    }

    /// The number of parameters these gradients are for.
    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Whether these buffers fit `params`: as many, each as long.
    pub fn fits(&self, params: &Params) -> bool {
        self.buffers.len() == params.len() && self.buffers.iter().zip(params.iter()).all(|(b, p)| b.len() == p.len())
    }

    /// Every parameter's gradient in its element order (or `None`), in the parameters' order.
    pub fn iter(&self) -> impl Iterator<Item = Option<&[f32]>> {
        self.buffers.iter().zip(&self.present).map(|(b, &p)| p.then_some(&b[..]))
    }

    /// Parameter `id`'s gradient in the parameter's element order (that of
    /// [`Param::elements`](crate::Param::elements)), or `None` if no backward pass has reached
    /// it.
    ///
    /// # Panics
    /// If `id` is not from the set these gradients are for.
    #[track_caller]
    pub fn get(&self, id: ParamId) -> Option<&[f32]> {
        let i = id.index();
        self.present[i].then_some(&self.buffers[i][..])
    }

    /// Parameter `id`'s gradient as a row-major tensor of its shape (PyTorch's `p.grad`), if
    /// it has one.
    ///
    /// # Panics
    /// If `id` is not from `params`, or these gradients are not for `params`.
    #[track_caller]
    pub fn tensor(&self, params: &Params, id: ParamId) -> Option<Tensor> {
        self.get(id).map(|g| params.get(id).aligned_to_tensor(g))
    }

    /// Sets parameter `id`'s gradient, in its element order, from elsewhere (computed outside a
    /// tape, or clipped), as if a backward pass had written it.
    ///
    /// # Panics
    /// If `grad` is not as long as the parameter.
    #[track_caller]
    pub fn set(&mut self, id: ParamId, grad: &[f32]) {
        let i = id.index();
        assert_eq!(
            grad.len(),
            self.buffers[i].len(),
            "a gradient of {} for {} values",
            grad.len(),
            self.buffers[i].len()
        );
        self.buffers[i].copy_from_slice(grad);
        self.present[i] = true;
    }

    /// Forgets every gradient: optimizers refuse to step until a backward pass writes them.
    pub fn clear(&mut self) {
        self.present.fill(false);
    }

    /// Adds `other`'s gradients to these, parameter by parameter, as when summing the gradients
    /// of a batch computed in parts. A parameter with a gradient in either has one after.
    ///
    /// # Panics
    /// If the two are not for the same parameters.
    #[track_caller]
    pub fn add(&mut self, other: &Grads) {
        assert_eq!(self.buffers.len(), other.buffers.len(), "adding gradients of different parameter sets");
        for i in 0..self.buffers.len() {
            if !other.present[i] {
                continue;
            }
            if self.present[i] {
                self.buffers[i].iter_mut().zip(other.buffers[i].iter()).for_each(|(a, b)| *a += b);
            } else {
                self.buffers[i].copy_from_slice(&other.buffers[i]);
                self.present[i] = true;
            }
        }
    }

    /// Starts a backward pass: every buffer will be overwritten by its first contribution.
    #[track_caller]
    pub(crate) fn begin_backward(&mut self, params: &Params) {
        assert!(self.fits(params), "these gradients are for another parameter set");
        self.written.fill(false);
    }

    /// Ends a backward pass: parameters it did not reach have no gradient.
    pub(crate) fn end_backward(&mut self) {
        self.present.copy_from_slice(&self.written);
    }

    /// The `beta` to write with: 0 the first time in a backward pass (overwrite), then 1.
    fn begin_write(&mut self, i: usize) -> f32 {
        write_beta(&mut self.written[i])
    }

    /// A matrix parameter's gradient to write, shaped and laid out like the parameter, with the
    /// `beta` to write it with.
    pub(crate) fn matrix_mut(&mut self, params: &Params, id: ParamId) -> (ArrayViewMut2<'_, f32>, f32) {
        let i = id.index();
        let beta = self.begin_write(i);
        let p = params.get(id);
        let shape = p.dim2();
        let view = match p.layout() {
            Layout::RowMajor => ArrayViewMut2::from_shape(shape, &mut self.buffers[i][..]),
            Layout::ColumnMajor => ArrayViewMut2::from_shape(shape.f(), &mut self.buffers[i][..]),
        };
        (view.expect("buffer fits its parameter"), beta)
    }

    /// A weight's gradient as a matrix and, if there is a bias, the bias's, both to write, each
    /// with its `beta`.
    ///
    /// # Panics
    /// If `weight` and `bias` are the same parameter.
    #[allow(clippy::type_complexity)]
    pub(crate) fn weight_and_bias_mut(
        &mut self,
        params: &Params,
        weight: ParamId,
        bias: Option<ParamId>,
    ) -> ((ArrayViewMut2<'_, f32>, f32), Option<(ArrayViewMut1<'_, f32>, f32)>) {
        let (w, b) = (weight.index(), bias.map(ParamId::index));
        assert_ne!(Some(w), b, "a weight is not its own bias");
        let beta_w = self.begin_write(w);
        let beta_b = b.map(|b| self.begin_write(b));
        let shape = params.get(weight).dim2();
        let layout = params.get(weight).layout();
        let (wb, bb) = match b {
            None => (&mut self.buffers[w], None),
            Some(b) if w < b => {
                let (low, high) = self.buffers.split_at_mut(b);
                (&mut low[w], Some(&mut high[0]))
            }
            Some(b) => {
                let (low, high) = self.buffers.split_at_mut(w);
                (&mut high[0], Some(&mut low[b]))
            }
        };
        let dw = match layout {
            Layout::RowMajor => ArrayViewMut2::from_shape(shape, &mut wb[..]),
            Layout::ColumnMajor => ArrayViewMut2::from_shape(shape.f(), &mut wb[..]),
        }
        .expect("buffer fits its parameter");
        let db = bb.zip(beta_b).map(|(buffer, beta)| (ArrayViewMut1::from(&mut buffer[..]), beta));
        ((dw, beta_w), db)
    }

    /// A vector parameter's gradient to write, with the `beta` to write it with.
    pub(crate) fn vector_mut(&mut self, id: ParamId) -> (ArrayViewMut1<'_, f32>, f32) {
        let i = id.index();
        let beta = self.begin_write(i);
        (ArrayViewMut1::from(&mut self.buffers[i][..]), beta)
    }
}

/// The `beta` that a backward pass writes a gradient buffer with: 0 the first time (overwrite,
/// so nothing needs zeroing beforehand), then 1 (accumulate); `written` records the first time.
pub(crate) fn write_beta(written: &mut bool) -> f32 {
    let beta = if *written { 1.0 } else { 0.0 };
    *written = true;
    beta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_sums_present_gradients_and_copies_the_rest() {
        let mut params = Params::new();
        let a = params.add("a", &[2], vec![0.0; 2]);
        let b = params.add("b", &[1], vec![0.0]);
        let c = params.add("c", &[1], vec![0.0]);
        let mut x = Grads::new(&params);
        let mut y = Grads::new(&params);
        x.set(a, &[1.0, 2.0]);
        y.set(a, &[10.0, 20.0]);
        y.set(b, &[5.0]);
        x.add(&y);
        assert_eq!(x.get(a), Some(&[11.0, 22.0][..]));
        assert_eq!(x.get(b), Some(&[5.0][..]));
        assert_eq!(x.get(c), None);
        x.clear();
        assert_eq!(x.get(a), None);
    }

    #[test]
    fn gradients_read_in_row_major_order() {
        let mut params = Params::new();
        let w = params.add_with_layout("w", &[2, 3], vec![0.0; 6], Layout::ColumnMajor);
        let mut grads = Grads::new(&params);
        grads.begin_backward(&params);
        let (mut g, beta) = grads.matrix_mut(&params, w);
        assert_eq!(beta, 0.0);
        g[[0, 2]] = 9.0;
        grads.end_backward();
        assert_eq!(grads.tensor(&params, w).unwrap().data(), [0.0, 0.0, 9.0, 0.0, 0.0, 0.0]);
        assert_eq!(grads.get(w).unwrap(), [0.0, 0.0, 0.0, 0.0, 9.0, 0.0]);
    }
}
