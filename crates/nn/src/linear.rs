//! A fully connected layer in PyTorch's layout.

use rand::Rng;

use crate::params::{Layout, ParamId, Params};
use crate::state::Scope;
use crate::tape::{Tape, Var};

/// `y = x·Wᵀ + b`, with `W` of shape `[out, in]` and `b` of `[out]`, registered in a
/// [`Params`] set as `{name}.weight` and `{name}.bias` (PyTorch's `state_dict` names and
/// shapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// The weight, `[out, in]`.
    pub weight: ParamId,
    /// The bias, `[out]`.
    pub bias: ParamId,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
    /// Whether the layer reads data that is mostly zeros (MNIST's pixels are 81% zeros): then
    /// its product and weight gradient only touch the weights of nonzero inputs
    /// ([`Tape::sparse_linear`]). Set by [`crate::Sequential`] for a first layer that reads
    /// the data itself; a model of one's own calls [`Tape::sparse_linear`] instead.
    pub(crate) sparse_input: bool,
}

impl Linear {
    /// A layer initialised as PyTorch's `nn.Linear` (uniform in `±1/sqrt(in)`), its parameters
    /// added to `params` under `name`, reading dense inputs.
    ///
    /// ```
    /// use rand::SeedableRng;
    /// let mut params = nn::Params::new();
    /// let fc = nn::Linear::new(&mut params, "fc1", 4, 3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    /// assert_eq!(params.get(fc.weight).name(), "fc1.weight");
    /// assert_eq!(params.get(fc.weight).shape(), &[3, 4]);
    /// ```
    ///
    /// # Panics
    /// If a width is zero or the names are taken.
    #[track_caller]
    pub fn new<R: Rng + ?Sized>(
        params: &mut Params,
        name: &str,
        in_features: usize,
        out_features: usize,
        rng: &mut R,
    ) -> Self {
        let (w, b) = tensor::linear_init(out_features, in_features, rng);
        Self::from_values(params, name, in_features, out_features, w.into_raw_vec_and_offset().0, b.to_vec())
    }

    /// A layer with the given row-major weight and bias values.
    #[track_caller]
    pub(crate) fn from_values(
        params: &mut Params,
        name: &str,
        in_features: usize,
        out_features: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Self {
        let scope = Scope::new(name);
        // Column-major: each input's weights contiguous, as the sparse kernels need.
        let weight =
            params.add_with_layout(scope.name("weight"), &[out_features, in_features], weight, Layout::ColumnMajor);
        let bias = params.add(scope.name("bias"), &[out_features], bias);
        Self { weight, bias, in_features, out_features, sparse_input: false }
    }

    /// Records the layer on `tape`.
    ///
    /// # Panics
    /// If `x` is not `in_features` wide, or the layer takes sparse input and `x` is not data.
    #[track_caller]
    pub fn forward(&self, tape: &mut Tape, params: &Params, x: Var) -> Var {
        if self.sparse_input {
            tape.sparse_linear(params, x, self.weight, self.bias)
        } else {
            tape.linear(params, x, self.weight, self.bias)
        }
    }
}
