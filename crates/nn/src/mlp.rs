//! A multilayer perceptron: linear layers with ReLU between them.

use ndarray::{Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;

use crate::error::NnError;
use crate::linear::Linear;
use crate::params::{Layout, Params};
use crate::tape::{Tape, Var};

/// The shape of an [`Mlp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    /// Widths from input to output: `[784, 128, 64, 32, 10]` is four layers.
    pub widths: Vec<usize>,
    /// Apply ReLU to the output logits too. The notebook this project reimplements does; it
    /// lets output units die and costs accuracy, so the default is `false`.
    pub output_relu: bool,
}

impl Default for MlpConfig {
    /// The notebook's model: 784-128-64-32-10, no ReLU on the logits.
    fn default() -> Self {
        Self { widths: vec![784, 128, 64, 32, 10], output_relu: false }
    }
}

impl MlpConfig {
    /// Checks that the widths describe a network: at least an input and an output, none zero.
    ///
    /// # Errors
    /// [`NnError::InvalidWidths`].
    pub fn validate(&self) -> Result<(), NnError> {
        let widths = self.widths.clone();
        if self.widths.len() < 2 {
            return Err(NnError::InvalidWidths { widths, reason: "need at least an input and an output width" });
        }
        if self.widths.contains(&0) {
            return Err(NnError::InvalidWidths { widths, reason: "a width of 0" });
        }
        Ok(())
    }

    /// The parameter names and shapes of this model, in PyTorch's `state_dict` order:
    /// `fc1.weight [w1, w0]`, `fc1.bias [w1]`, ...
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.widths
            .windows(2)
            .enumerate()
            .flat_map(|(i, w)| {
                [(format!("fc{}.weight", i + 1), vec![w[1], w[0]]), (format!("fc{}.bias", i + 1), vec![w[1]])]
            })
            .collect()
    }
}

/// Buffers for [`Mlp::logits_with`], reused from batch to batch.
#[derive(Debug, Clone, Default)]
pub struct Inference {
    layers: Vec<Vec<f32>>,
    sparse: tensor::SparseRows,
}

/// A multilayer perceptron that owns its parameters: layers `fc1`, `fc2`, ... with ReLU after
/// every layer but the last (and after the last too with [`MlpConfig::output_relu`]).
///
/// ```
/// use rand::SeedableRng;
/// let config = nn::MlpConfig { widths: vec![4, 8, 3], output_relu: false };
/// let mlp = nn::Mlp::new(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
/// let logits = mlp.logits(ndarray::Array2::zeros((5, 4)).view());
/// assert_eq!(logits.dim(), (5, 3));
/// ```
#[derive(Debug, Clone)]
pub struct Mlp {
    config: MlpConfig,
    layers: Vec<Linear>,
    params: Params,
}

impl Mlp {
    /// A model initialised as PyTorch initialises `nn.Linear`, from the caller's generator.
    ///
    /// # Panics
    /// If the config does not [validate](MlpConfig::validate).
    #[track_caller]
    pub fn new<R: Rng + ?Sized>(config: &MlpConfig, rng: &mut R) -> Self {
        if let Err(e) = config.validate() {
            panic!("{e}");
        }
        let mut params = Params::new();
        let layers = config
            .widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear::new(&mut params, &format!("fc{}", i + 1), w[0], w[1], rng))
            .collect();
        Self { config: config.clone(), layers, params }
    }

    /// A model from named parameters, such as a loaded checkpoint: exactly the names and shapes
    /// of [`MlpConfig::param_shapes`], in any order.
    ///
    /// # Errors
    /// Invalid widths, or a parameter missing, extra or of the wrong shape.
    pub fn from_named(config: &MlpConfig, named: Vec<(String, Vec<usize>, Vec<f32>)>) -> Result<Self, NnError> {
        config.validate()?;
        let mut named: Vec<_> = named.into_iter().map(Some).collect();
        let mut params = Params::new();
        for (name, shape) in config.param_shapes() {
            let slot = named
                .iter_mut()
                .find(|n| n.as_ref().is_some_and(|(n, _, _)| *n == name))
                .ok_or_else(|| NnError::MissingParam { name: name.clone() })?;
            let (_, found, values) = slot.take().expect("found above");
            if found != shape || values.len() != shape.iter().product::<usize>() {
                return Err(NnError::ShapeMismatch { name, expected: shape, found });
            }
            // The same storage as `Linear::new` gives its parameters.
            let layout = if shape.len() == 2 { Layout::ColumnMajor } else { Layout::RowMajor };
            params.add_with_layout(name, &shape, values, layout);
        }
        if let Some((name, _, _)) = named.into_iter().flatten().next() {
            return Err(NnError::UnexpectedParam { name });
        }
        let layers = config
            .widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| Linear {
                weight: params.by_name(&format!("fc{}.weight", i + 1)).expect("added above"),
                bias: params.by_name(&format!("fc{}.bias", i + 1)).expect("added above"),
                in_features: w[0],
                out_features: w[1],
            })
            .collect();
        Ok(Self { config: config.clone(), layers, params })
    }

    /// The model's shape.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The layers, input first.
    pub fn layers(&self) -> &[Linear] {
        &self.layers
    }

    /// The parameters, in `state_dict` order.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The parameters, for an optimizer or a loader to change.
    pub fn params_mut(&mut self) -> &mut Params {
        &mut self.params
    }

    /// The id of the `i`-th parameter in `state_dict` order (`fc1.weight`, `fc1.bias`, ...).
    ///
    /// # Panics
    /// If there are not that many parameters.
    #[track_caller]
    pub fn param_id(&self, i: usize) -> crate::ParamId {
        let layer = &self.layers[i / 2];
        if i.is_multiple_of(2) { layer.weight } else { layer.bias }
    }

    /// Records the forward pass on `tape` and returns the logits.
    ///
    /// # Panics
    /// If `x` is not as wide as the first width.
    #[track_caller]
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Var {
        let last = self.layers.len() - 1;
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(tape, &self.params, h);
            if i < last || self.config.output_relu {
                h = tape.relu(h);
            }
        }
        h
    }

    /// The logits for `x` (one sample per row), without recording anything for a backward pass.
    ///
    /// # Panics
    /// If `x` is not as wide as the first width.
    #[track_caller]
    pub fn logits(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.logits_with(x, &mut Inference::default()).to_owned()
    }

    /// [`Mlp::logits`] into buffers that `scratch` keeps from call to call, so that evaluating
    /// batch after batch allocates nothing once the first batch is done.
    ///
    /// # Panics
    /// If `x` is not as wide as the first width.
    #[track_caller]
    pub fn logits_with<'s>(&self, x: ArrayView2<f32>, scratch: &'s mut Inference) -> ArrayView2<'s, f32> {
        let last = self.layers.len() - 1;
        let rows = x.nrows();
        scratch.layers.resize_with(self.layers.len(), Vec::new);
        for (i, layer) in self.layers.iter().enumerate() {
            let (done, todo) = scratch.layers.split_at_mut(i);
            let input = match done.last() {
                Some(h) => ArrayView2::from_shape((rows, layer.in_features), &h[..]).expect("previous layer's output"),
                None => x.view(),
            };
            assert_eq!(
                input.ncols(),
                layer.in_features,
                "input is {} wide, the model takes {}",
                input.ncols(),
                layer.in_features
            );
            let out = &mut todo[0];
            out.resize(rows * layer.out_features, 0.0);
            let mut y = ArrayViewMut2::from_shape((rows, layer.out_features), &mut out[..]).expect("sized above");
            let (w, b) = (self.params.matrix(layer.weight), self.params.vector(layer.bias));
            // The first layer reads the data, which may be mostly zeros, as in training.
            crate::tape::linear_forward(input, w, Some(b), i == 0, &mut scratch.sparse, y.view_mut());
            if i < last || self.config.output_relu {
                tensor::relu_inplace(y);
            }
        }
        let classes = self.layers[last].out_features;
        ArrayView2::from_shape((rows, classes), &scratch.layers[last][..]).expect("last layer's output")
    }

    /// The predicted class of each row of `x`: the argmax of its logits.
    ///
    /// # Panics
    /// If `x` is not as wide as the first width.
    #[track_caller]
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        tensor::argmax_rows(self.logits(x).view())
    }
}
