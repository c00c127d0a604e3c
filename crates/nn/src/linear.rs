//! A fully connected layer in PyTorch's layout.

use rand::Rng;

use crate::params::{Layout, ParamId, Params};
use crate::tape::{Tape, Var};

/// `y = x·Wᵀ + b`, with `W` of shape `[out, in]` and `b` of `[out]`, registered in a
/// [`Params`] set as `{name}.weight` and `{name}.bias` (PyTorch's `state_dict` names and
/// shapes). The weight is stored column-major, each input's weights contiguous, so that a
/// sparse input (MNIST's pixels are mostly 0) only touches the weights of its nonzero entries.
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
}

impl Linear {
    /// A layer initialised as PyTorch's `nn.Linear` (uniform in `±1/sqrt(in)`), its parameters
    /// added to `params` under `name`.
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
        let weight = params.add_with_layout(
            format!("{name}.weight"),
            &[out_features, in_features],
            w.into_raw_vec_and_offset().0,
            Layout::ColumnMajor,
        );
        let bias = params.add(format!("{name}.bias"), &[out_features], b.into_raw_vec_and_offset().0);
        Self { weight, bias, in_features, out_features }
    }

    /// Records the layer on `tape`.
    ///
    /// # Panics
    /// If `x` is not `in_features` wide.
    #[track_caller]
    pub fn forward(&self, tape: &mut Tape, params: &Params, x: Var) -> Var {
        tape.linear(params, x, self.weight, self.bias)
    }
}
