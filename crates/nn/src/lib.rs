//! Neural-network layers and reverse-mode autograd on top of the `tensor` kernels.
//!
//! A [`Tape`] records ops in execution order and [`Tape::backward`] walks them in reverse;
//! parameters live outside the tape in a [`Params`] set, read by [`ParamId`] and named as in
//! PyTorch's `state_dict`, and gradients in a [`Grads`] beside it. A [`Model`] (such as a
//! [`Sequential`] list of layers, an MLP from an [`MlpConfig`] among them) records its forward
//! pass on a tape, which inference runs on a tape made for it ([`Tape::for_inference`]), and
//! saves and loads its parameters as a [`StateDict`], whose file form is safetensors with
//! PyTorch's names:
//!
//! ```
//! use ndarray::Array2;
//! use nn::{Grads, MlpConfig, Model, Sequential, StateDict, Tape};
//! use rand::SeedableRng;
//!
//! let mlp = Sequential::mlp(&MlpConfig { widths: vec![2, 8, 2], output_relu: false },
//!                           &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
//! let mut tape = Tape::new();
//! let x = tape.input(Array2::from_elem((4, 2), 0.5).view());
//! let logits = mlp.forward(&mut tape, x);
//! let loss = tape.cross_entropy(logits, &[0, 1, 1, 0]);
//! let mut grads = Grads::new(mlp.params());
//! tape.backward(loss, mlp.params(), &mut grads);
//! assert!(mlp.params().ids().all(|id| grads.get(id).is_some()));
//!
//! // torch.save(model.state_dict()) and load_state_dict, as bytes.
//! let bytes = mlp.state_dict().to_safetensors();
//! let back = Sequential::from_state_dict(&StateDict::from_safetensors(&bytes).unwrap()).unwrap();
//! assert_eq!(back.params(), mlp.params());
//! ```
//!
//! `nn` depends on `tensor` and nothing else of this project; it knows nothing of MNIST.

mod backward;
mod batch_sync;
mod error;
mod grads;
mod linear;
mod loss;
mod mlp;
mod model;
mod params;
mod sequential;
mod state;
mod tape;

pub use batch_sync::BatchSync;
pub use error::NnError;
pub use grads::Grads;
pub use linear::Linear;
pub use loss::cross_entropy_sum;
pub use mlp::MlpConfig;
pub use model::Model;
pub use params::{Param, ParamId, Params};
pub use sequential::{Layer, Sequential, SequentialConfig};
pub use state::{IntTensor, Scope, StateDict, Tensor};
pub use tape::{BatchStatistics, Tape, Var};

#[cfg(test)]
mod gradcheck;
