//! What the workspace's tests share: where the real MNIST files and PyTorch's reference numbers
//! are ([`mnist_dir`], [`reference_dir`]), and small synthetic data sets in MNIST's layout
//! ([`Synthetic`]) for the tests that need files of the right form but not the real data.
//!
//! Tests on real data find it through an environment variable. Without it they are skipped
//! with a message, so that a developer without the data can run the rest, except on CI
//! (`CI=true`), where missing data fails the run.
//!
//! [`hostile`] makes the files an attacker would send a server: decompression bombs and the like.

pub mod hostile;

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.ancestors().nth(2).map(PathBuf::from).unwrap_or(manifest)
}

/// The folder of real MNIST files: `$MNIST_DIR`, else `data/mnist` in the workspace, if it
/// holds the four files (plain or `.gz`). See [`data_dir`] for when it does not.
///
/// # Panics
/// When `CI=true` and the data cannot be found.
pub fn mnist_dir() -> Option<PathBuf> {
    data_dir("MNIST_DIR", Some(repo_root().join("data").join("mnist")), &data::FILES)
}

/// The folder of PyTorch's reference numbers: `$TORCH_REFERENCE_DIR`. See [`data_dir`].
///
/// # Panics
/// When `CI=true` and the files cannot be found.
pub fn reference_dir() -> Option<PathBuf> {
    data_dir("TORCH_REFERENCE_DIR", None, &["tiny.json", "mlp_first_batch.safetensors"])
}

/// The folder named by the environment variable `var` (else `default`) if it holds every file
/// of `names` (each plain or with `.gz`); else `None`, with a message on stderr.
///
/// # Panics
/// When `CI=true` and the folder or a file is missing: on CI, missing data fails the run
/// rather than skipping tests silently.
pub fn data_dir(var: &str, default: Option<PathBuf>, names: &[&str]) -> Option<PathBuf> {
    let dir = std::env::var_os(var).map(PathBuf::from).or(default);
    let complete = dir
        .as_ref()
        .is_some_and(|dir| names.iter().all(|name| dir.join(name).exists() || dir.join(format!("{name}.gz")).exists()));
    if complete {
        return dir;
    }
    let shown = dir.map_or_else(|| format!("${var} (unset)"), |d| d.display().to_string());
    assert!(!on_ci(), "CI=true but the test data was not found in {shown} (set {var})");
    eprintln!("skipping a test that needs data: not found in {shown} (set {var})");
    None
}

/// Whether the tests run on CI.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A Python that can check and run ONNX files (it imports `onnx`, `onnxruntime` and `numpy`):
/// `$ONNX_PYTHON` (which `.ci/run` points at a venv it makes), else `python3` if it has them.
///
/// # Panics
/// When `CI=true` and no such Python is found: the ONNX tests must run there.
pub fn onnx_python() -> Option<PathBuf> {
    let python = std::env::var_os("ONNX_PYTHON").map_or_else(|| "python3".into(), PathBuf::from);
    let ok = std::process::Command::new(&python)
        .args(["-c", "import onnx, onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!("{} cannot import onnx, onnxruntime and numpy (set ONNX_PYTHON)", python.display());
    assert!(!on_ci(), "{why}");
    eprintln!("skipping: {why}");
    None
}

/// An IDX file of unsigned bytes: the header for `dims`, then `body`.
pub fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let magic = [0, 0, 0x08, dims.len() as u8];
    let mut out = magic.to_vec();
    dims.iter().for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
    out.extend_from_slice(body);
    out
}

/// A small labelled image set in MNIST's layout that a model can learn, though not perfectly:
/// each class lights up its own band of pixels, and part of another class's band less densely,
/// over sparse noise, so that most pixels are zero as in MNIST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synthetic {
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// Number of classes; labels cycle through them.
    pub classes: usize,
    /// Training images.
    pub train: usize,
    /// Test images.
    pub test: usize,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for Synthetic {
    /// 12x12 images of 10 classes, 600 for training and 200 for testing.
    fn default() -> Self {
        Self { rows: 12, cols: 12, classes: 10, train: 600, test: 200, seed: 0 }
    }
}

impl Synthetic {
    /// `(pixels, labels)` of `n` images drawn from stream `stream`.
    fn images(&self, n: usize, stream: u64) -> (Vec<u8>, Vec<u8>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        let size = self.rows * self.cols;
        let band = size.div_ceil(self.classes);
        let mut pixels = Vec::with_capacity(n * size);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let label = i % self.classes;
            labels.push(label as u8);
            let (other, strength) = (rng.random_range(0..self.classes), rng.random_range(0.0..0.6));
            for p in 0..size {
                let lit =
                    (p / band == label && rng.random_bool(0.6)) || (p / band == other && rng.random_bool(strength));
                let noise = rng.random_bool(0.08);
                pixels.push(if lit {
                    rng.random_range(150..=255)
                } else if noise {
                    rng.random_range(1..120)
                } else {
                    0
                });
            }
        }
        (pixels, labels)
    }

    /// Writes the four files under MNIST's names into `dir`.
    ///
    /// # Panics
    /// If a file cannot be written.
    pub fn write(&self, dir: &Path) {
        let dims = |n: usize| [n as u32, self.rows as u32, self.cols as u32];
        for (n, stream, images, labels) in [
            (self.train, 0, data::TRAIN_IMAGES, data::TRAIN_LABELS),
            (self.test, 1, data::TEST_IMAGES, data::TEST_LABELS),
        ] {
            let (pixels, labs) = self.images(n, stream);
            std::fs::write(dir.join(images), idx_bytes(&dims(n), &pixels)).expect("write images");
            std::fs::write(dir.join(labels), idx_bytes(&[n as u32], &labs)).expect("write labels");
        }
    }
}

/// Writes the data set the committed training fixtures were trained on: 6x6 images, 120 for
/// training (label `i % 10`) and 40 for testing (label `3i % 10`), pixel `p` of image `i`
/// lit (200) when `p % 10` is its label, plus `n % 50` where `n = 31 i + 17 p` is a multiple of
/// 7: about a quarter of the pixels are nonzero.
///
/// # Panics
/// If a file cannot be written.
pub fn write_fixture_set(dir: &Path) {
    let image = |i: usize, label: usize| -> Vec<u8> {
        (0..36)
            .map(|p| {
                let n = i * 31 + p * 17;
                (if p % 10 == label { 200 } else { 0 } + if n.is_multiple_of(7) { n % 50 } else { 0 }) as u8
            })
            .collect()
    };
    for (n, label_of, images, labels) in [
        (120, (|i| i % 10) as fn(usize) -> usize, data::TRAIN_IMAGES, data::TRAIN_LABELS),
        (40, |i| (i * 3) % 10, data::TEST_IMAGES, data::TEST_LABELS),
    ] {
        let labs: Vec<u8> = (0..n).map(|i| label_of(i) as u8).collect();
        let pixels: Vec<u8> = (0..n).flat_map(|i| image(i, label_of(i))).collect();
        std::fs::write(dir.join(images), idx_bytes(&[n as u32, 6, 6], &pixels)).expect("write images");
        std::fs::write(dir.join(labels), idx_bytes(&[n as u32], &labs)).expect("write labels");
    }
}
