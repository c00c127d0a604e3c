//! The data sets in MNIST's image format that the project knows by name, with their class
//! names, and the file that names the classes of any data set folder.

/// The file in a data set's folder that names its classes, one per line, in label order.
/// [`Mnist::load`](crate::Mnist::load) reads it when present; `cargo xtask fetch-data` writes
/// it.
pub const CLASS_NAMES_FILE: &str = "classes.txt";

/// MNIST's name among the [`KNOWN_SETS`]: the default data set.
pub const MNIST: &str = "mnist";

/// Why `name` cannot name a class, if it cannot: it is empty, or holds a control character
/// (which would reach terminals and files as it is).
///
/// ```
/// assert_eq!(data::class_name_fault("Ankle boot"), None);
/// assert!(data::class_name_fault("bad\u{1b}[31m").is_some());
/// ```
pub fn class_name_fault(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("an empty name")
    } else if name.chars().any(char::is_control) {
        Some("a control character")
    } else {
        None
    }
}

/// How a known data set's files are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// MNIST's four files under [`FILES`](crate::FILES)' names.
    Mnist,
    /// EMNIST's: `emnist-SPLIT-train-images-idx3-ubyte` and so on, with every image stored
    /// transposed (columns first), and labels that start at `first_label`.
    Emnist {
        /// The split: `digits`, `letters`, `balanced`, ...
        split: &'static str,
        /// The label of the first class (1 for `letters`, whose labels run 1 to 26).
        first_label: u8,
    },
}

/// A data set known by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownSet {
    /// Its name on the command line and its folder's name under `data/`.
    pub name: &'static str,
    /// What it is, for people.
    pub title: &'static str,
    /// Its classes' names, in label order.
    pub class_names: &'static [&'static str],
    /// How its files are laid out.
    pub layout: Layout,
}

const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
const UPPER: [&str; 26] = [
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W",
    "X", "Y", "Z",
];
/// EMNIST Balanced's 47 classes: digits, capitals, and the 11 small letters whose shape
/// differs from their capital's (the others are merged into the capital).
const BALANCED: [&str; 47] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M",
    "N", "O", "P", "Q", "R", "S", "T", "U", "V", "W", "X", "Y", "Z", "a", "b", "d", "e", "f", "g", "h", "n", "q", "r",
    "t",
];

/// Every data set `fetch-data --dataset` knows. Class names as torchvision gives them, except
/// KMNIST's, given as the hiragana with their reading, and EMNIST Letters', which mix both
/// cases (one class per letter).
pub const KNOWN_SETS: [KnownSet; 6] = [
    KnownSet { name: MNIST, title: "MNIST handwritten digits", class_names: &DIGITS, layout: Layout::Mnist },
    KnownSet {
        name: "fashion-mnist",
        title: "Fashion-MNIST (Zalando's clothing images)",
        class_names: &[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        layout: Layout::Mnist,
    },
    KnownSet {
        name: "kmnist",
        title: "Kuzushiji-MNIST (cursive Japanese hiragana)",
        class_names: &[
            "お (o)",
            "き (ki)",
            "す (su)",
            "つ (tsu)",
            "な (na)",
            "は (ha)",
            "ま (ma)",
            "や (ya)",
            "れ (re)",
            "を (wo)",
        ],
        layout: Layout::Mnist,
    },
    KnownSet {
        name: "emnist-digits",
        title: "EMNIST Digits (handwritten digits from NIST SD 19)",
        class_names: &DIGITS,
        layout: Layout::Emnist { split: "digits", first_label: 0 },
    },
    KnownSet {
        name: "emnist-letters",
        title: "EMNIST Letters (handwritten letters, both cases in one class)",
        class_names: &UPPER,
        layout: Layout::Emnist { split: "letters", first_label: 1 },
    },
    KnownSet {
        name: "emnist-balanced",
        title: "EMNIST Balanced (digits and letters, 47 classes)",
        class_names: &BALANCED,
        layout: Layout::Emnist { split: "balanced", first_label: 0 },
    },
];

/// The known data set called `name`.
///
/// ```
/// assert_eq!(data::known_set("fashion-mnist").unwrap().class_names[0], "T-shirt/top");
/// assert!(data::known_set("cifar10").is_none());
/// ```
pub fn known_set(name: &str) -> Option<&'static KnownSet> {
    KNOWN_SETS.iter().find(|s| s.name == name)
}

/// An EMNIST split's four files, in [`FILES`](crate::FILES)' order (training images and
/// labels, test images and labels), as NIST's archive names them.
///
/// ```
/// assert_eq!(data::emnist_files("letters")[3], "emnist-letters-test-labels-idx1-ubyte");
/// ```
pub fn emnist_files(split: &str) -> [String; 4] {
    [("train", "images-idx3"), ("train", "labels-idx1"), ("test", "images-idx3"), ("test", "labels-idx1")]
        .map(|(part, kind)| format!("emnist-{split}-{part}-{kind}-ubyte"))
}
