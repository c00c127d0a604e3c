//! The shape of a multilayer perceptron (linear layers with ReLU between them) and the file
//! form MLPs have always had; the model itself is a [`Sequential`](crate::Sequential) of those
//! layers ([`Sequential::mlp`](crate::Sequential::mlp)).

use crate::error::NnError;
use crate::state::{Scope, StateDict};

/// The shape of a multilayer perceptron: layers `fc1`, `fc2`, ... with ReLU after every layer
/// but the last (and after the last too with `output_relu`).
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
        Self::with_hidden(784, &Self::NOTEBOOK_HIDDEN, 10, false)
    }
}

/// The metadata keys of an MLP's file, and the format it names.
const FORMAT_KEY: &str = "format";
const FORMAT: &str = "mnist-mlp";
const WIDTHS_KEY: &str = "widths";
const OUTPUT_RELU_KEY: &str = "output_relu";

impl MlpConfig {
    /// The notebook's hidden widths.
    pub const NOTEBOOK_HIDDEN: [usize; 3] = [128, 64, 32];

    /// A model of `inputs` values and `classes` classes with the given hidden widths.
    pub fn with_hidden(inputs: usize, hidden: &[usize], classes: usize, output_relu: bool) -> Self {
        let mut widths = vec![inputs];
        widths.extend_from_slice(hidden);
        widths.push(classes);
        Self { widths, output_relu }
    }

    /// The widths joined by dashes, as the notebook's model is known: `784-128-64-32-10`.
    pub fn describe(&self) -> String {
        let widths: Vec<String> = self.widths.iter().map(usize::to_string).collect();
        let relu = if self.output_relu { " with ReLU on the logits" } else { "" };
        format!("{}{relu}", widths.join("-"))
    }

    /// The hidden widths: all but the first and the last.
    pub fn hidden(&self) -> &[usize] {
        &self.widths[1..self.widths.len().max(2) - 1]
    }

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

    /// The name of layer `i` (0-based): `fc1`, `fc2`, ... as in PyTorch's examples.
    fn layer_name(i: usize) -> String {
        format!("fc{}", i + 1)
    }

    /// The parameter names and shapes of this model, in PyTorch's `state_dict` order:
    /// `fc1.weight [w1, w0]`, `fc1.bias [w1]`, ...
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.widths
            .windows(2)
            .enumerate()
            .flat_map(|(i, w)| {
                let scope = Scope::new(Self::layer_name(i));
                [(scope.name("weight"), vec![w[1], w[0]]), (scope.name("bias"), vec![w[1]])]
            })
            .collect()
    }

    /// The config a file describes: from its metadata, or else from the shapes of its
    /// `fc1.weight`, `fc2.weight`, ... (then without output ReLU).
    ///
    /// # Errors
    /// Malformed metadata, or no `fc1.weight` to infer from.
    pub fn from_state_dict(state: &StateDict) -> Result<Self, NnError> {
        let config = match state.meta(WIDTHS_KEY) {
            Some(w) => Self {
                widths: w
                    .split(',')
                    .map(|v| v.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| bad_meta(WIDTHS_KEY, w, "a list of widths"))?,
                output_relu: match state.meta(OUTPUT_RELU_KEY) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => return Err(bad_meta(OUTPUT_RELU_KEY, other, "true or false")),
                },
            },
            None => Self::infer(state)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Writes the metadata of an MLP's file, which every earlier version reads: its format,
    /// widths and output ReLU.
    pub(crate) fn write_meta(&self, state: &mut StateDict) {
        let widths: Vec<String> = self.widths.iter().map(usize::to_string).collect();
        state.set_meta(FORMAT_KEY, FORMAT);
        state.set_meta(WIDTHS_KEY, widths.join(","));
        state.set_meta(OUTPUT_RELU_KEY, self.output_relu.to_string());
    }

    fn infer(state: &StateDict) -> Result<Self, NnError> {
        let mut widths = Vec::new();
        for i in 0.. {
            let name = Scope::new(Self::layer_name(i)).name("weight");
            let Some(w) = state.get(&name) else { break };
            let &[out, inp] = w.shape() else {
                return Err(NnError::NotAMatrix { name, shape: w.shape().to_vec() });
            };
            if widths.is_empty() {
                widths.push(inp);
            }
            widths.push(out);
        }
        if widths.is_empty() {
            return Err(NnError::MissingParam { name: Scope::new(Self::layer_name(0)).name("weight") });
        }
        Ok(Self { widths, output_relu: false })
    }
}

fn bad_meta(key: &str, value: &str, expected: &'static str) -> NnError {
    NnError::BadMetadata { key: key.to_owned(), value: value.to_owned(), expected }
}
