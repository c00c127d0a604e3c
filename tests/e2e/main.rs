//! End-to-end tests, one binary with a module per area. Tests on real MNIST find it through
//! `MNIST_DIR` (see `xtask::mnist_dir_for_tests`); on CI a missing data set fails them.

mod cli;
mod mnist_data;
mod reference;
mod reliability;
