//! Parameters live outside the tape, by id and by name. Their gradients live apart, in
//! [`Grads`](crate::Grads), so that several tapes can read the same parameters at once.

use ndarray::{ArrayView1, ArrayView2, ShapeBuilder};

/// A handle to one parameter of a [`Params`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ParamId(usize);

impl ParamId {
    /// The parameter's position in its set, in the order it was added.
    pub fn index(self) -> usize {
        self.0
    }
}

/// How a matrix parameter's values are stored. The shape, the name and every view are the same
/// either way; only the order in memory differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Row after row: element `(i, j)` of an `r x c` matrix is at `i * c + j`.
    #[default]
    RowMajor,
    /// Column after column: element `(i, j)` is at `j * r + i`. For a weight `[out, in]` each
    /// input's weights are then contiguous, which the sparse-input kernels need.
    ColumnMajor,
}

/// One named parameter: its shape and its values, stored flat in its [`Layout`].
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    name: String,
    shape: Vec<usize>,
    layout: Layout,
    value: Vec<f32>,
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

    /// How the values are stored (row-major unless the parameter was added otherwise).
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The values in storage order (see [`Param::layout`]): what an elementwise optimizer
    /// walks. [`Param::to_row_major`] gives them in PyTorch's order.
    pub fn value(&self) -> &[f32] {
        &self.value
    }

    /// The values in row-major order, whatever the storage: PyTorch's order.
    pub fn to_row_major(&self) -> Vec<f32> {
        self.reorder(&self.value, Layout::RowMajor)
    }

    /// `data`, laid out as this parameter's storage (a gradient, an optimizer's buffer), in
    /// row-major order: PyTorch's.
    pub fn storage_to_row_major(&self, data: &[f32]) -> Vec<f32> {
        self.reorder(data, Layout::RowMajor)
    }

    /// Row-major `data` of this parameter's shape, laid out as its storage.
    ///
    /// # Panics
    /// If `data` is not as long as the parameter.
    #[track_caller]
    pub fn row_major_to_storage(&self, data: &[f32]) -> Vec<f32> {
        assert_eq!(data.len(), self.value.len(), "{}: {} values for {}", self.name, data.len(), self.value.len());
        match (self.layout, &self.shape[..]) {
            (Layout::ColumnMajor, &[r, c]) => transpose(data, r, c),
            _ => data.to_vec(),
        }
    }

    /// `data`, stored as this parameter stores its values, reordered into `to`.
    pub(crate) fn reorder(&self, data: &[f32], to: Layout) -> Vec<f32> {
        match (self.layout, to, &self.shape[..]) {
            (Layout::RowMajor, Layout::ColumnMajor, &[r, c]) => transpose(data, r, c),
            (Layout::ColumnMajor, Layout::RowMajor, &[r, c]) => transpose(data, c, r),
            _ => data.to_vec(),
        }
    }

    /// The values, for an optimizer or a loader to change.
    pub fn value_mut(&mut self) -> &mut [f32] {
        &mut self.value
    }

    /// A matrix parameter's shape.
    pub(crate) fn dim2(&self) -> (usize, usize) {
        let [r, c] = self.shape[..] else { panic!("{} is {:?}, not a matrix", self.name, self.shape) };
        (r, c)
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
    ///
    /// # Panics
    /// If the name is taken or `value` does not have the shape's number of elements.
    #[track_caller]
    pub fn add_with_layout(
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
        self.params.push(Param { name, shape: shape.to_vec(), layout, value });
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

    /// A 2-D parameter as a matrix view.
    ///
    /// # Panics
    /// If the parameter is not 2-D.
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
        ArrayView1::from(&p.value)
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
        assert_eq!(params.get(c).value(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        assert_eq!(params.get(c).to_row_major(), values);
        let p = params.get(c);
        assert_eq!(p.row_major_to_storage(&values), p.value());
        assert_eq!(p.storage_to_row_major(p.value()), values);
    }
}
