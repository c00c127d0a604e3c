//! Parameters live outside the tape, by id and by name. Their gradients live apart, in
//! [`Grads`](crate::Grads), so that several tapes can read the same parameters at once.

use ndarray::{ArrayView1, ArrayView2, ShapeBuilder};

use crate::{NnError, StateDict, Tensor};

/// A handle to one parameter of a [`Params`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// The parameter's position in its set, in the order it was added.
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a matrix parameter's values are stored: private to `nn`, so that everything outside
/// sees a `[out, in]` weight in that shape and in row-major order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Layout {
    /// Row after row: element `(i, j)` of an `r x c` matrix is at `i * c + j`.
    #[default]
    RowMajor,
    /// Column after column: element `(i, j)` is at `j * r + i`. For a weight `[out, in]` each
    /// input's weights are then contiguous, which the sparse-input kernels need.
    ColumnMajor,
}

/// One named parameter: its shape and its values.
///
/// Its elements are kept in an order of `nn`'s choosing, which its gradient
/// ([`Grads::get`](crate::Grads::get)) shares: elementwise code such as an optimizer can walk
/// [`Param::elements`] and the gradient side by side, and keep per-element buffers in the same
/// order. Anything that cares about positions reads [`Param::to_tensor`], which is row-major,
/// in the parameter's shape, as in PyTorch.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    name: String,
    shape: Vec<usize>,
    layout: Layout,
    value: tensor::AlignedVec,
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

    /// The number of scalars.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether the parameter holds no scalar.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The values in the parameter's element order, which its gradient and any per-element
    /// buffer share (see [`Param`]).
    pub fn elements(&self) -> &[f32] {
        &self.value
    }

    /// The values in element order, for an optimizer to update.
    pub fn elements_mut(&mut self) -> &mut [f32] {
        &mut self.value
    }

    /// The values as a row-major tensor of the parameter's shape: PyTorch's form.
    pub fn to_tensor(&self) -> Tensor {
        self.aligned_to_tensor(&self.value)
    }

    /// A per-element buffer in this parameter's element order (a gradient, an optimizer's
    /// moment), as a row-major tensor of the parameter's shape.
    ///
    /// # Panics
    /// If `buffer` is not as long as the parameter.
    #[track_caller]
    pub fn aligned_to_tensor(&self, buffer: &[f32]) -> Tensor {
        assert_eq!(buffer.len(), self.value.len(), "{}: {} values for {}", self.name, buffer.len(), self.value.len());
        let data = match (self.layout, &self.shape[..]) {
            (Layout::ColumnMajor, &[r, c]) => transpose(buffer, c, r),
            _ => buffer.to_vec(),
        };
        Tensor::new(self.shape.clone(), data)
    }

    /// A row-major tensor of this parameter's shape, in the parameter's element order: the
    /// inverse of [`Param::aligned_to_tensor`].
    ///
    /// # Errors
    /// [`NnError::ShapeMismatch`] when the shapes differ.
    pub fn aligned_from_tensor(&self, tensor: &Tensor) -> Result<Vec<f32>, NnError> {
        if tensor.shape() != self.shape {
            return Err(NnError::ShapeMismatch {
                name: self.name.clone(),
                expected: self.shape.clone(),
                found: tensor.shape().to_vec(),
            });
        }
        Ok(match (self.layout, &self.shape[..]) {
            (Layout::ColumnMajor, &[r, c]) => transpose(tensor.data(), r, c),
            _ => tensor.data().to_vec(),
        })
    }

    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The shape of the matrix a parameter of two or more dimensions is read as: its first
    /// dimension by the product of the rest (a convolution's `[out, in, kH, kW]` weight is an
    /// `out x in·kH·kW` matrix, row-major).
    pub(crate) fn dim2(&self) -> (usize, usize) {
        match self.shape[..] {
            [r, ref rest @ ..] if !rest.is_empty() => (r, rest.iter().product()),
            _ => panic!("{} is {:?}, not a matrix", self.name, self.shape),
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

    /// Adds a parameter with the given shape and row-major values, stored row-major.
    ///
    /// # Panics
    /// If the name is taken or `value` does not have the shape's number of elements.
    #[track_caller]
    pub fn add(&mut self, name: impl Into<String>, shape: &[usize], value: Vec<f32>) -> ParamId {
        self.add_with_layout(name, shape, value, Layout::RowMajor)
    }

    /// Adds a parameter with the given shape and row-major values, stored in `layout` (which
    /// only matters for a matrix).
    #[track_caller]
    pub(crate) fn add_with_layout(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        value: Vec<f32>,
        layout: Layout,
    ) -> ParamId {
        let name = name.into();
        assert!(self.by_name(&name).is_none(), "parameter {name} already exists");
        assert_eq!(value.len(), shape.iter().product::<usize>(), "parameter {name}: values do not fit {shape:?}");
        let layout = if shape.len() == 2 { layout } else { Layout::RowMajor };
        let value = match (layout, shape) {
            (Layout::ColumnMajor, &[r, c]) => transpose(&value, r, c),
            _ => value,
        };
        self.params.push(Param { name, shape: shape.to_vec(), layout, value: value.into() });
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

    /// The ids of all parameters, in the order they were added.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<> {
        (0..self.params.len()).map(ParamId)
    }

    /// All parameters, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// All parameters, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.params.iter_mut()
    }

    /// Every parameter as a row-major tensor under its name: PyTorch's `model.state_dict()`.
    pub fn state_dict(&self) -> StateDict {
        let mut state = StateDict::new();
        for p in &self.params {
            state.insert(p.name.clone(), p.to_tensor());
        }
        state
    }

    /// Replaces every parameter's values with the tensor of the same name in `state`, like
    /// PyTorch's strict `load_state_dict`. Nothing changes on error.
    ///
    /// # Errors
    /// [`NnError::MissingParam`], [`NnError::UnexpectedParam`] or [`NnError::ShapeMismatch`],
    /// naming the parameter.
    pub fn load_state_dict(&mut self, state: &StateDict) -> Result<(), NnError> {
        let mut values = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let tensor = state.get(&p.name).ok_or_else(|| match state.get_i64(&p.name) {
                Some(_) => NnError::WrongDtype { name: p.name.clone(), dtype: "I64".into(), expected: "F32" },
                None => NnError::MissingParam { name: p.name.clone() },
            })?;
            values.push(p.aligned_from_tensor(tensor)?);
        }
        if let Some(name) = state.names().find(|n| self.by_name(n).is_none()) {
            return Err(NnError::UnexpectedParam { name: name.to_owned() });
        }
        for (p, v) in self.params.iter_mut().zip(values) {
            p.value = v.into();
        }
        Ok(())
    }

    /// A parameter of two or more dimensions as a matrix view: its first dimension by the
    /// product of the others.
    ///
    /// # Panics
    /// If the parameter has fewer than two dimensions.
    #[track_caller]
    pub fn matrix(&self, id: ParamId) -> ArrayView2<'_, f32> {
        let p = &self.params[id.0];
        view2(p.dim2(), p.layout, &p.value)
    }

    /// A 1-D parameter as a vector view.
    ///
    /// # Panics
    /// If the parameter is not 1-D.
    #[track_caller]
    pub fn vector(&self, id: ParamId) -> ArrayView1<'_, f32> {
        let p = &self.params[id.0];
        assert_eq!(p.shape.len(), 1, "{} is {:?}, not a vector", p.name, p.shape);
        ArrayView1::from(&p.value[..])
    }
}

pub(crate) fn view2(shape: (usize, usize), layout: Layout, data: &[f32]) -> ArrayView2<'_, f32> {
    match layout {
        Layout::RowMajor => ArrayView2::from_shape(shape, data),
        Layout::ColumnMajor => ArrayView2::from_shape(shape.f(), data),
    }
    .expect("shape matches length")
}

/// The row-major `rows x cols` matrix `data`, transposed (so also its column-major storage).
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for (i, row) in data.chunks_exact(cols).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            out[j * rows + i] = v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_major_matrix_reads_like_a_row_major_one() {
        let mut params = Params::new();
        let values = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [[1, 2, 3], [4, 5, 6]]
        let r = params.add("r", &[2, 3], values.clone());
        let c = params.add_with_layout("c", &[2, 3], values.clone(), Layout::ColumnMajor);
        assert_eq!(params.matrix(r), params.matrix(c));
        assert_eq!(params.get(c).elements(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(params.get(c).to_tensor(), Tensor::new(vec![2, 3], values.clone()));
        let p = params.get(c);
        assert_eq!(p.aligned_from_tensor(&p.to_tensor()).unwrap(), p.elements());
    }

    #[test]
    fn state_dicts_load_strictly() {
        let mut params = Params::new();
        params.add_with_layout("w", &[2, 2], vec![1.0, 2.0, 3.0, 4.0], Layout::ColumnMajor);
        params.add("b", &[2], vec![0.0, 0.0]);
        let mut state = params.state_dict();
        assert_eq!(state.get("w").unwrap().data(), &[1.0, 2.0, 3.0, 4.0]);
        state.insert("b", Tensor::new(vec![2], vec![5.0, 6.0]));
        params.load_state_dict(&state).unwrap();
        assert_eq!(params.get(params.by_name("b").unwrap()).elements(), &[5.0, 6.0]);

        let mut extra = state.clone();
        extra.insert("c", Tensor::new(vec![1], vec![0.0]));
        assert_eq!(params.load_state_dict(&extra).unwrap_err().to_string(), "unexpected parameter c");
        let mut missing = state.clone();
        missing.remove("w");
        assert_eq!(params.load_state_dict(&missing).unwrap_err().to_string(), "missing parameter w");
        let mut wrong = state;
        wrong.insert("w", Tensor::new(vec![4], vec![0.0; 4]));
        let err = params.load_state_dict(&wrong).unwrap_err().to_string();
        assert_eq!(err, "parameter w has shape [4], expected [2, 2]");
        assert_eq!(params.get(params.by_name("b").unwrap()).elements(), &[5.0, 6.0], "unchanged on error");
    }
}
