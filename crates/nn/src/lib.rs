//! Neural-network layers and reverse-mode autograd on top of the `tensor` kernels.
//!
//! A [`Tape`] records ops in execution order and [`Tape::backward`] walks them in reverse;
//! parameters live outside the tape in a [`Params`] set, read by [`ParamId`] and named as in
//! PyTorch's `state_dict`, and gradients in a [`Grads`] beside it. [`Mlp::new`] builds the
//! usual model from an [`MlpConfig`]:
//!
//! ```
//! use ndarray::Array2;
//! use nn::{Grads, Mlp, MlpConfig, Tape};
//! use rand::SeedableRng;
//!
//! let mut mlp = Mlp::new(&MlpConfig { widths: vec![2, 8, 2], output_relu: false },
//!                        &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
//! let mut tape = Tape::new();
//! let x = tape.input(Array2::from_elem((4, 2), 0.5).view());
//! let logits = mlp.forward(&mut tape, x);
//! let loss = tape.cross_entropy(logits, &[0, 1, 1, 0]);
//! let mut grads = Grads::new(mlp.params());
//! tape.backward(loss, mlp.params(), &mut grads);
//! assert!(mlp.params().iter().enumerate().all(|(i, _)| grads.get(mlp.param_id(i)).is_some()));
//! ```
//!
//! `nn` depends on `tensor` and nothing else of this project; it knows nothing of MNIST.

mod backward;
mod error;
mod grads;
mod linear;
mod loss;
mod mlp;
mod params;
mod tape;

pub use error::NnError;
pub use grads::Grads;
pub use linear::Linear;
pub use mlp::{Inference, Mlp, MlpConfig};
pub use params::{Layout, Param, ParamId, Params};
pub use tape::{Tape, Var};

#[cfg(test)]
mod gradcheck;
