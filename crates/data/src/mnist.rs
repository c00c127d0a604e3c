//! Labelled image sets, and MNIST's four files in particular.

use std::path::{Path, PathBuf};

use crate::DataError;
use crate::idx::{IdxU8, parse_idx_u8, read_idx_u8};
use crate::sets::{CLASS_NAMES_FILE, KNOWN_SETS, KnownSet, Layout, class_name_fault, emnist_files};

/// The canonical name of MNIST's training images (the `.gz` suffix is optional on disk).
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// The canonical name of MNIST's training labels.
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// The canonical name of MNIST's test images.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// The canonical name of MNIST's test labels.
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";
/// MNIST's four files, in the order the mirrors list them. Fashion-MNIST and KMNIST use the
/// same names and layout.
pub const FILES: [&str; 4] = [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS];

/// Labelled grayscale images, kept as `u8` pixels (a quarter of the memory of `f32`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    rows: usize,
    cols: usize,
    classes: usize,
}

impl Dataset {
    /// A data set of `labels.len()` images of `rows x cols` pixels each, stored one after the
    /// other in `pixels`, with labels in `0..classes`.
    ///
    /// # Panics
    /// If `pixels` is not `labels.len() * rows * cols` long, if `rows`, `cols` or `classes` is
    /// zero, or if a label is not below `classes`. Files are validated by
    /// [`Dataset::from_idx_files`], which returns errors instead.
    #[track_caller]
    pub fn new(pixels: Vec<u8>, labels: Vec<u8>, rows: usize, cols: usize, classes: usize) -> Self {
        assert!(rows > 0 && cols > 0, "images must have at least one pixel, got {rows}x{cols}");
        assert!(classes > 0 && classes <= 256, "classes must be in 1..=256, got {classes}");
        assert_eq!(
            pixels.len(),
            labels.len() * rows * cols,
            "pixels do not match {} images of {rows}x{cols}",
            labels.len()
        );
        if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= classes) {
            panic!("label {bad} is not below {classes}");
        }
        Self { pixels, labels, rows, cols, classes }
    }

    /// Reads an IDX image file (magic `0x00000803`) and an IDX label file (`0x00000801`),
    /// plain or gzip-compressed, and checks that they agree and that every label is below
    /// `classes`. The image size comes from the file.
    ///
    /// # Errors
    /// Any [`DataError`] of [`read_idx_u8`](crate::read_idx_u8); also images of zero pixels,
    /// a label out of range, or image and label counts that differ.
    pub fn from_idx_files(images: &Path, labels: &Path, classes: usize) -> Result<Self, DataError> {
        Self::from_idx(read_idx_u8(images, 3)?, images, read_idx_u8(labels, 1)?, labels, classes)
    }

    /// [`Dataset::from_idx_files`] from the files' bytes in memory; the paths only name them in
    /// errors.
    ///
    /// # Errors
    /// As [`Dataset::from_idx_files`].
    pub fn from_idx_bytes(
        (images, images_name): (&[u8], &Path),
        (labels, labels_name): (&[u8], &Path),
        classes: usize,
    ) -> Result<Self, DataError> {
        let img = parse_idx_u8(images, 3, images_name)?;
        Self::from_idx(img, images_name, parse_idx_u8(labels, 1, labels_name)?, labels_name, classes)
    }

    fn from_idx(img: IdxU8, images: &Path, lab: IdxU8, labels: &Path, classes: usize) -> Result<Self, DataError> {
        let (count, rows, cols) = (img.dims[0], img.dims[1], img.dims[2]);
        if rows == 0 || cols == 0 {
            let dims = img.dims.iter().map(|&d| d as u32).collect();
            return Err(DataError::EmptyImages { path: images.to_owned(), dims });
        }
        if lab.data.len() != count {
            return Err(DataError::CountMismatch {
                images: images.to_owned(),
                image_count: count,
                labels: labels.to_owned(),
                label_count: lab.data.len(),
            });
        }
        let max = classes.saturating_sub(1).min(255) as u8;
        if let Some(index) = lab.data.iter().position(|&l| usize::from(l) >= classes) {
            return Err(DataError::LabelOutOfRange { path: labels.to_owned(), index, label: lab.data[index], max });
        }
        Ok(Self::new(img.data, lab.data, rows, cols, classes))
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixel rows per image.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Pixel columns per image.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Pixels per image: `rows * cols`, the width of a flattened batch.
    pub fn image_len(&self) -> usize {
        self.rows * self.cols
    }

    /// The number of classes; every label is below it.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Image `i`'s pixels, row-major.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    #[track_caller]
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i`'s label.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    #[track_caller]
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// All labels, in file order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All pixels, image after image.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }
}

/// A training set and a test set in MNIST's layout: four IDX files under [`FILES`]' names,
/// plain or `.gz`. MNIST itself has 60,000 and 10,000 images of 28x28 pixels and 10 classes;
/// Fashion-MNIST and KMNIST have the same layout. The image shape comes from the files, and
/// the number of classes from the training labels (one more than the largest).
///
/// ```no_run
/// let mnist = data::Mnist::load(std::path::Path::new("data/mnist"))?;
/// assert_eq!((mnist.train.len(), mnist.train.classes()), (60_000, 10));
/// # Ok::<(), data::DataError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Mnist {
    /// The training set.
    pub train: Dataset,
    /// The test set.
    pub test: Dataset,
    /// Each class's name, in label order: from the folder's [`CLASS_NAMES_FILE`], else a known
    /// EMNIST split's, else the labels as numbers (`"0"`, `"1"`, ...).
    pub class_names: Vec<String>,
}

impl Mnist {
    /// Loads the four files from `dir`, each under its canonical name, decompressed or with a
    /// `.gz` suffix (the decompressed file is preferred when both exist). A folder of one of
    /// EMNIST's splits, under NIST's names (`emnist-letters-train-images-idx3-ubyte.gz`, ...),
    /// loads too: its images are turned upright and its labels made to start at 0.
    ///
    /// ```no_run
    /// let mnist = data::Mnist::load(std::path::Path::new("data/mnist"))?;
    /// assert_eq!((mnist.train.len(), mnist.test.len(), mnist.train.image_len()), (60_000, 10_000, 784));
    /// # Ok::<(), data::DataError>(())
    /// ```
    ///
    /// # Errors
    /// A missing file, any fault of [`Dataset::from_idx_files`], images of different sizes in
    /// the two sets, a test label the training set does not have, or a class names file that
    /// does not name each class once.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let (names, known) = file_names(dir, 0)?;
        let layout = known.map_or(Layout::Mnist, |set| set.layout);
        let path = |name: &str| locate(dir, name);
        let (train_images, train_labels) = (path(&names[0])?, path(&names[1])?);
        let (images, labels) = read_part(&train_images, &train_labels, layout)?;
        let classes = labels.data.iter().max().map_or(1, |&m| usize::from(m) + 1);
        let train = Dataset::from_idx(images, &train_images, labels, &train_labels, classes)?;
        let (test_images, test_labels) = (path(&names[2])?, path(&names[3])?);
        let (images, labels) = read_part(&test_images, &test_labels, layout)?;
        let test = Dataset::from_idx(images, &test_images, labels, &test_labels, classes)?;
        if (test.rows, test.cols) != (train.rows, train.cols) {
            return Err(DataError::ShapeMismatch {
                path: test_images,
                found: (test.rows, test.cols),
                expected: (train.rows, train.cols),
            });
        }
        let class_names = class_names(dir, classes, known)?;
        Ok(Self { train, test, class_names })
    }
}

/// The test set alone, found in `dir` as [`Mnist::load`] finds it (the training files may be
/// absent), and its class names: what evaluating a model needs. It has at least `classes`
/// classes (those of the model it is to evaluate: a test set need not hold every one), more if
/// its labels go higher.
///
/// # Errors
/// As [`Mnist::load`], for the test files.
pub fn load_test(dir: &Path, classes: usize) -> Result<(Dataset, Vec<String>), DataError> {
    let (names, known) = file_names(dir, 2)?;
    let layout = known.map_or(Layout::Mnist, |set| set.layout);
    let (images, labels) = (locate(dir, &names[2])?, locate(dir, &names[3])?);
    let (image_idx, label_idx) = read_part(&images, &labels, layout)?;
    let classes = label_idx.data.iter().map(|&m| usize::from(m) + 1).fold(classes, usize::max);
    let test = Dataset::from_idx(image_idx, &images, label_idx, &labels, classes)?;
    let class_names = class_names(dir, classes, known)?;
    Ok((test, class_names))
}

/// The four files' names in `dir`, looked for by the one at `index` of [`FILES`]: MNIST's, else
/// a known EMNIST split's (whose names then name the classes), with that split.
fn file_names(dir: &Path, index: usize) -> Result<([String; 4], Option<&'static KnownSet>), DataError> {
    match locate(dir, FILES[index]) {
        Ok(_) => Ok((FILES.map(String::from), None)),
        Err(missing) => match emnist_in(dir, index) {
            Some((split, set)) => Ok((emnist_files(split), Some(set))),
            None => Err(missing),
        },
    }
}

/// The known EMNIST split whose file at `index` (of the four) is in `dir`, with its name.
fn emnist_in(dir: &Path, index: usize) -> Option<(&'static str, &'static KnownSet)> {
    KNOWN_SETS.iter().find_map(|set| match set.layout {
        Layout::Emnist { split, .. } if locate(dir, &emnist_files(split)[index]).is_ok() => Some((split, set)),
        _ => None,
    })
}

/// Reads an images file and its labels, turned from `layout`'s form into MNIST's.
fn read_part(images: &Path, labels: &Path, layout: Layout) -> Result<(IdxU8, IdxU8), DataError> {
    let (mut img, mut lab) = (read_idx_u8(images, 3)?, read_idx_u8(labels, 1)?);
    if let Layout::Emnist { first_label, .. } = layout {
        transpose_images(&mut img);
        if let Some(index) = lab.data.iter().position(|&l| l < first_label) {
            let label = lab.data[index];
            return Err(DataError::LabelBelowFirst { path: labels.to_owned(), index, label, first: first_label });
        }
        lab.data.iter_mut().for_each(|l| *l -= first_label);
    }
    Ok((img, lab))
}

/// Swaps the rows and columns of every image: EMNIST stores them column by column.
fn transpose_images(img: &mut IdxU8) {
    let (rows, cols) = (img.dims[1], img.dims[2]);
    let size = rows * cols;
    if size == 0 {
        return;
    }
    let mut upright = vec![0u8; size];
    for image in img.data.chunks_exact_mut(size) {
        for (r, row) in upright.chunks_exact_mut(rows).enumerate() {
            row.iter_mut().enumerate().for_each(|(c, p)| *p = image[c * cols + r]);
        }
        image.copy_from_slice(&upright);
    }
    img.dims.swap(1, 2);
}

/// The names of `classes` classes: from `dir`'s [`CLASS_NAMES_FILE`], else `known`'s (when
/// the labels have as many classes), else the numbers.
fn class_names(dir: &Path, classes: usize, known: Option<&KnownSet>) -> Result<Vec<String>, DataError> {
    let path = dir.join(CLASS_NAMES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(match known {
                Some(set) if set.class_names.len() == classes => {
                    set.class_names.iter().map(|&n| n.to_owned()).collect()
                }
                _ => (0..classes).map(|c| c.to_string()).collect(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(DataError::BadClassName { path, why: "not UTF-8 text".into() });
        }
        Err(source) => return Err(DataError::Io { path, source }),
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let names: Vec<String> = text.trim_end().lines().map(|l| l.trim().to_owned()).collect();
    if let Some((i, why)) = names.iter().enumerate().find_map(|(i, n)| Some((i, class_name_fault(n)?))) {
        return Err(DataError::BadClassName { path, why: format!("line {}: {why}", i + 1) });
    }
    if names.len() != classes {
        return Err(DataError::ClassNames { path, found: names.len(), expected: classes });
    }
    Ok(names)
}

/// `dir/name` if it exists, else `dir/name.gz` if that exists.
///
/// # Errors
/// [`DataError::MissingFile`] when neither exists.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(DataError::MissingFile { dir: dir.to_owned(), name: name.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        dims.iter().for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
        out.extend_from_slice(body);
        out
    }

    /// Writes a tiny MNIST-shaped folder: `n` train and `n` test images of 2x3 pixels.
    fn write_set(dir: &Path, n: u8, labels: &[u8]) {
        let images = idx(&[u32::from(n), 2, 3], &vec![7; usize::from(n) * 6]);
        for (name, bytes) in [
            (TRAIN_IMAGES, images.clone()),
            (TRAIN_LABELS, idx(&[labels.len() as u32], labels)),
            (TEST_IMAGES, images),
            (TEST_LABELS, idx(&[labels.len() as u32], labels)),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn loads_a_folder_with_the_shape_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 3, &[0, 9, 4]);
        let mnist = Mnist::load(dir.path()).unwrap();
        assert_eq!((mnist.train.len(), mnist.train.rows(), mnist.train.cols()), (3, 2, 3));
        assert_eq!(mnist.test.labels(), &[0, 9, 4]);
        assert_eq!(mnist.train.image(2), &[7; 6]);
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 1, &[0]);
        std::fs::remove_file(dir.path().join(TEST_LABELS)).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: neither {TEST_LABELS} nor {TEST_LABELS}.gz found", dir.path().display())
        );
    }

    #[test]
    fn classes_come_from_the_training_labels() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 3, &[0, 3, 1]);
        let mnist = Mnist::load(dir.path()).unwrap();
        assert_eq!((mnist.train.classes(), mnist.test.classes()), (4, 4));
    }

    #[test]
    fn a_test_label_the_training_set_lacks_is_named_with_its_index() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 3, &[0, 1, 9]);
        std::fs::write(dir.path().join(TEST_LABELS), idx(&[3], &[0, 1, 10])).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err();
        let path = dir.path().join(TEST_LABELS);
        assert_eq!(err.to_string(), format!("{}: label 10 at index 2 is outside 0..=9", path.display()));
    }

    #[test]
    fn a_test_set_of_another_image_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 2, &[0, 1]);
        std::fs::write(dir.path().join(TEST_IMAGES), idx(&[2, 3, 2], &[0; 12])).unwrap();
        let err = Mnist::load(dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("images of 3x2 pixels, but the training images are 2x3"), "{err}");
    }

    #[test]
    fn bytes_in_memory_load_like_files() {
        let images = idx(&[2, 1, 2], &[0, 255, 7, 8]);
        let labels = idx(&[2], &[1, 0]);
        let ds = Dataset::from_idx_bytes((&images, Path::new("i")), (&labels, Path::new("l")), 2).unwrap();
        assert_eq!((ds.len(), ds.image(0), ds.label(0)), (2, &[0, 255][..], 1));
    }

    #[test]
    fn image_and_label_counts_must_agree() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 3, &[0, 1]);
        let err = Mnist::load(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { image_count: 3, label_count: 2, .. }), "{err}");
    }

    #[test]
    fn images_of_zero_pixels_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("i");
        let labels = dir.path().join("l");
        std::fs::write(&images, idx(&[2, 0, 28], &[])).unwrap();
        std::fs::write(&labels, idx(&[2], &[1, 2])).unwrap();
        let err = Dataset::from_idx_files(&images, &labels, 10).unwrap_err();
        assert!(matches!(err, DataError::EmptyImages { .. }), "{err}");
    }

    #[test]
    fn labels_swapped_for_images_fail_on_the_magic() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), 2, &[1, 2]);
        let err =
            Dataset::from_idx_files(&dir.path().join(TRAIN_LABELS), &dir.path().join(TRAIN_IMAGES), 10).unwrap_err();
        assert!(matches!(err, DataError::WrongRank { found: 1, expected: 3, .. }), "{err}");
    }

    #[test]
    fn the_plain_file_is_preferred_over_gz() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.gz"), b"").unwrap();
        assert_eq!(locate(dir.path(), "a").unwrap(), dir.path().join("a.gz"));
        std::fs::write(dir.path().join("a"), b"").unwrap();
        assert_eq!(locate(dir.path(), "a").unwrap(), dir.path().join("a"));
    }
}

#[cfg(test)]
mod named_sets {
    use super::tests::idx;
    use super::*;

    /// An EMNIST split's folder: two images of 2x3 pixels (stored transposed, as 3x2), labels
    /// as given.
    fn write_emnist(dir: &Path, split: &str, labels: &[u8]) {
        // Upright, image 0 is [[0, 1, 2], [3, 4, 5]]; EMNIST stores it column by column.
        let stored: Vec<u8> = [0u8, 3, 1, 4, 2, 5].iter().chain(&[10, 13, 11, 14, 12, 15]).copied().collect();
        let images = idx(&[2, 3, 2], &stored);
        let labels = idx(&[2], labels);
        let files = emnist_files(split);
        for (name, bytes) in files.iter().zip([&images, &labels, &images, &labels]) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    #[test]
    fn emnist_images_are_turned_upright_and_letters_start_at_zero_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        write_emnist(dir.path(), "letters", &[1, 26]);
        let set = Mnist::load(dir.path()).unwrap();
        assert_eq!((set.train.rows(), set.train.cols()), (2, 3));
        assert_eq!(set.train.image(0), &[0, 1, 2, 3, 4, 5]);
        assert_eq!(set.test.image(1), &[10, 11, 12, 13, 14, 15]);
        assert_eq!(set.train.labels(), &[0, 25]);
        assert_eq!(set.train.classes(), 26);
        assert_eq!((set.class_names[0].as_str(), set.class_names[25].as_str()), ("A", "Z"));
    }

    #[test]
    fn an_emnist_digit_split_keeps_its_labels_and_a_letters_label_of_zero_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_emnist(dir.path(), "digits", &[0, 9]);
        let set = Mnist::load(dir.path()).unwrap();
        assert_eq!(set.train.labels(), &[0, 9]);
        assert_eq!(set.class_names, crate::known_set("emnist-digits").unwrap().class_names);

        let dir = tempfile::tempdir().unwrap();
        write_emnist(dir.path(), "letters", &[0, 3]);
        let err = Mnist::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.ends_with(
                "emnist-letters-train-labels-idx1-ubyte: label 0 at index 0 is below 1, the first class's label"
            ),
            "{err}"
        );
    }

    #[test]
    fn class_names_come_from_the_names_file_else_are_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let images = idx(&[2, 1, 1], &[0, 255]);
        let labels = idx(&[2], &[0, 2]);
        for (name, bytes) in FILES.iter().zip([&images, &labels, &images, &labels]) {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        assert_eq!(Mnist::load(dir.path()).unwrap().class_names, ["0", "1", "2"]);

        std::fs::write(dir.path().join(CLASS_NAMES_FILE), "T-shirt/top\nTrouser\nBag\n").unwrap();
        assert_eq!(Mnist::load(dir.path()).unwrap().class_names, ["T-shirt/top", "Trouser", "Bag"]);

        for (wrong, message) in [
            ("a\nb\n", "2 class names, one per line, where the labels have 3 classes"),
            ("a\nb\nc\nd\n", "4 class names, one per line, where the labels have 3 classes"),
            ("a\n\nc\n", "line 2: an empty name"),
            ("a\nb\x1b[31m\nc\n", "line 2: a control character"),
        ] {
            std::fs::write(dir.path().join(CLASS_NAMES_FILE), wrong).unwrap();
            let err = Mnist::load(dir.path()).unwrap_err().to_string();
            assert!(err.ends_with(&format!("classes.txt: {message}")), "{wrong:?}: {err}");
        }
        // A byte-order mark is not part of the first name.
        std::fs::write(dir.path().join(CLASS_NAMES_FILE), "\u{feff}x\ny\nz\n").unwrap();
        assert_eq!(Mnist::load(dir.path()).unwrap().class_names, ["x", "y", "z"]);
    }
}
