//! Parameters live outside the tape, by id and by name, with a gradient buffer each that is
//! reused from step to step and overwritten by every backward pass.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

/// A handle to one parameter of a [`Params`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// The parameter's position in its set, in the order it was added.
    pub fn index(self) -> usize {
        self.0
    }
}

/// One named parameter: its shape, its values and its gradient, stored flat in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    name: String,
    shape: Vec<usize>,
    value: Vec<f32>,
    grad: Vec<f32>,
    /// Whether the last backward pass wrote `grad`.
    has_grad: bool,
    /// Whether the backward pass under way has written `grad` yet.
    written: bool,
}

impl Param {
    /// The name, in PyTorch's `state_dict` style (`fc1.weight`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shape, outermost first (`[out, in]` for a weight).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values, row-major.
    pub fn value(&self) -> &[f32] {
        &self.value
    }

    /// The values, for an optimizer or a loader to change.
    pub fn value_mut(&mut self) -> &mut [f32] {
        &mut self.value
    }

    /// The gradient from the last backward pass, or `None` if no backward pass has reached
    /// this parameter.
    pub fn grad(&self) -> Option<&[f32]> {
        self.has_grad.then_some(self.grad.as_slice())
    }

    /// The values to update and the gradient to update them with, borrowed together.
    pub fn value_and_grad(&mut self) -> (&mut [f32], Option<&[f32]>) {
        (&mut self.value, self.has_grad.then_some(self.grad.as_slice()))
    }

    /// Sets the gradient from elsewhere (a gradient computed outside a [`Tape`](crate::Tape),
    /// or clipped), as if a backward pass had written it.
    ///
    /// # Panics
    /// If `grad` is not as long as the parameter.
    #[track_caller]
    pub fn set_grad(&mut self, grad: &[f32]) {
        assert_eq!(
            grad.len(),
            self.grad.len(),
            "{}: gradient of {} for {} values",
            self.name,
            grad.len(),
            self.grad.len()
        );
        self.grad.copy_from_slice(grad);
        self.has_grad = true;
    }

    /// Marks the gradient as consumed or absent: [`Param::grad`] returns `None` until the next
    /// backward pass.
    pub fn clear_grad(&mut self) {
        self.has_grad = false;
    }

    /// Makes ready to write the gradient in this backward pass: returns the `beta` to use,
    /// 0 for the first write (overwrite) and 1 after (accumulate).
    fn begin_write(&mut self) -> f32 {
        if self.written {
            1.0
        } else {
            self.written = true;
            0.0
        }
    }
}

/// A set of named parameters, addressed by [`ParamId`].
///
/// ```
/// let mut params = nn::Params::new();
/// let w = params.add("fc1.weight", &[2, 3], vec![0.0; 6]);
/// assert_eq!(params.by_name("fc1.weight"), Some(w));
/// assert_eq!(params.matrix(w).dim(), (2, 3));
/// assert!(params.get(w).grad().is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    params: Vec<Param>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter with the given shape and row-major values.
    ///
    /// # Panics
    /// If the name is taken or `value` does not have the shape's number of elements.
    #[track_caller]
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], value: Vec<f32>) -> ParamId {
        let name = name.into();
        assert!(self.by_name(&name).is_none(), "parameter {name} already exists");
        assert_eq!(value.len(), shape.iter().product::<usize>(), "parameter {name}: values do not fit {shape:?}");
        let grad = vec![0.0; value.len()];
        self.params.push(Param { name, shape: shape.to_vec(), value, grad, has_grad: false, written: false });
        ParamId(self.params.len() - 1)
    }

    /// The number of parameters (tensors, not scalars).
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// The number of scalars over all parameters.
    pub fn num_scalars(&self) -> usize {
        self.params.iter().map(|p| p.value.len()).sum()
    }

    /// The id of the parameter called `name`.
    pub fn by_name(&self, name: &str) -> Option<ParamId> {
        self.params.iter().position(|p| p.name == name).map(ParamId)
    }

    /// The parameter `id`.
    ///
    /// # Panics
    /// If `id` is not from this set.
    #[track_caller]
    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    /// The parameter `id`, mutably.
    ///
    /// # Panics
    /// If `id` is not from this set.
    #[track_caller]
    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.params[id.0]
    }

    /// All parameters, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// All parameters, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.params.iter_mut()
    }

    /// A 2-D parameter as a matrix view.
    ///
    /// # Panics
    /// If the parameter is not 2-D.
    #[track_caller]
    pub fn matrix(&self, id: ParamId) -> ArrayView2<'_, f32> {
        let p = &self.params[id.0];
        let [r, c] = p.shape[..] else { panic!("{} is {:?}, not a matrix", p.name, p.shape) };
        ArrayView2::from_shape((r, c), &p.value).expect("shape matches length")
    }

    /// A 1-D parameter as a vector view.
    ///
    /// # Panics
    /// If the parameter is not 1-D.
    #[track_caller]
    pub fn vector(&self, id: ParamId) -> ArrayView1<'_, f32> {
        let p = &self.params[id.0];
        assert_eq!(p.shape.len(), 1, "{} is {:?}, not a vector", p.name, p.shape);
        ArrayView1::from(&p.value)
    }

    /// Starts a backward pass: every gradient will be overwritten by its first contribution.
    pub(crate) fn begin_backward(&mut self) {
        self.params.iter_mut().for_each(|p| p.written = false);
    }

    /// Ends a backward pass: parameters the pass did not reach have no gradient.
    pub(crate) fn end_backward(&mut self) {
        for p in &mut self.params {
            p.has_grad = p.written;
        }
    }

    /// A matrix parameter's value and its gradient to write, with the `beta` to write it with.
    pub(crate) fn matrix_grad(&mut self, id: ParamId) -> (ArrayView2<'_, f32>, ArrayViewMut2<'_, f32>, f32) {
        let p = &mut self.params[id.0];
        let beta = p.begin_write();
        let [r, c] = p.shape[..] else { panic!("{} is {:?}, not a matrix", p.name, p.shape) };
        let value = ArrayView2::from_shape((r, c), &p.value).expect("shape matches length");
        let grad = ArrayViewMut2::from_shape((r, c), &mut p.grad).expect("shape matches length");
        (value, grad, beta)
    }

    /// A vector parameter's gradient to write, with the `beta` to write it with.
    pub(crate) fn vector_grad(&mut self, id: ParamId) -> (ArrayViewMut1<'_, f32>, f32) {
        let p = &mut self.params[id.0];
        let beta = p.begin_write();
        assert_eq!(p.shape.len(), 1, "{} is {:?}, not a vector", p.name, p.shape);
        (ArrayViewMut1::from(&mut p.grad[..]), beta)
    }
}
