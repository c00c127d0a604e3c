//! End-to-end tests, one binary with a module per area. Most run on a small synthetic data set
//! written to a temporary folder; those on real MNIST and PyTorch's reference numbers find
//! them through `MNIST_DIR` and `TORCH_REFERENCE_DIR` (see `testkit`), and on CI a missing data
//! set fails them.

mod bn_reference;
mod browser;
mod class_names;
mod cli;
mod conv_reference;
mod layer_lists;
mod mnist_data;
mod onnx_export;
mod recipe_reference;
mod reference;
mod reliability;
mod support;
