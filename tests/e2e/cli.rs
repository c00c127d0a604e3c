//! The `mnist` program as a user runs it: train on real MNIST, save, evaluate, predict, and
//! every bad value refused with a one-line error and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use data::Mnist;

pub(crate) fn program() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mnist-e2e"))
}

pub(crate) fn run(args: &[&str]) -> Output {
    program().args(args).output().expect("the program starts")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The test accuracy a run printed, in percent.
fn test_accuracy(stdout: &str) -> f64 {
    let line =
        stdout.lines().find(|l| l.starts_with("Test Accuracy: ")).unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    line["Test Accuracy: ".len()..].trim_end_matches('%').parse().unwrap()
}

/// One training run shared by the tests that need a model: one epoch on real MNIST.
struct Trained {
    _dir: tempfile::TempDir,
    model: PathBuf,
    plots: PathBuf,
    csv: PathBuf,
    stdout: String,
    data_dir: PathBuf,
}

fn trained() -> Option<&'static Trained> {
    static TRAINED: OnceLock<Option<Trained>> = OnceLock::new();
    TRAINED
        .get_or_init(|| {
            let data_dir = xtask::mnist_dir_for_tests()?;
            let dir = tempfile::tempdir().unwrap();
            let (model, plots, csv) =
                (dir.path().join("m.safetensors"), dir.path().join("plots"), dir.path().join("m.csv"));
            let out = run(&[
                "train",
                "--epochs",
                "1",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--save",
                model.to_str().unwrap(),
                "--plots",
                plots.to_str().unwrap(),
                "--metrics-csv",
                csv.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "train failed: {}", text(&out.stderr));
            Some(Trained { _dir: dir, model, plots, csv, stdout: text(&out.stdout), data_dir })
        })
        .as_ref()
}

#[test]
fn one_epoch_reaches_94_percent_and_prints_the_notebooks_lines() {
    let Some(t) = trained() else { return };
    let mut lines = t.stdout.lines();
    let first = lines.next().unwrap();
    assert!(first.starts_with("Epoch 1/1, Loss: 0."), "{first}");
    let loss: f64 = first["Epoch 1/1, Loss: ".len()..].split(',').next().unwrap().parse().unwrap();
    assert!(loss > 0.0 && loss < 1.0, "{first}");
    assert!(test_accuracy(&t.stdout) >= 94.0, "{}", t.stdout);
    assert!(t.stdout.contains("precision") && t.stdout.contains("Confusion matrix"), "{}", t.stdout);

    let csv = std::fs::read_to_string(&t.csv).unwrap();
    let rows: Vec<_> = csv.lines().collect();
    assert_eq!(rows[0], "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds");
    assert_eq!(rows.len(), 2);
    assert!(rows[1].starts_with(&format!("1,{loss:.4}")), "{} vs {loss}", rows[1]);
}

#[test]
fn the_plots_are_drawn() {
    let Some(t) = trained() else { return };
    for (name, must_hold) in [
        ("loss.svg", "<polyline"),
        ("accuracy.svg", "<polyline"),
        ("confusion.svg", "true digit"),
        ("misclassified.svg", "→"),
    ] {
        let svg = std::fs::read_to_string(t.plots.join(name)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(must_hold), "{name} lacks {must_hold}");
        assert!(svg.matches("<text").count() >= 3, "{name} has too little text");
    }
    let cells = std::fs::read_to_string(t.plots.join("confusion.svg")).unwrap().matches("<rect").count();
    assert!(cells >= 200, "a 10x10 heatmap draws a filled and an outlined rect per cell, found {cells}");
}

#[test]
fn eval_of_the_saved_model_gives_the_same_accuracy() {
    let Some(t) = trained() else { return };
    let out = run(&["eval", "--model", t.model.to_str().unwrap(), "--data-dir", t.data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(test_accuracy(&text(&out.stdout)), test_accuracy(&t.stdout));
    let tail = |s: &str| s[s.find("Test Accuracy").unwrap()..].to_owned();
    assert_eq!(tail(&text(&out.stdout)), tail(&t.stdout), "the same report and confusion matrix");
}

/// Writes test image `i` as a PNG: as is (28x28, white on black), or scaled 4x and inverted
/// (a dark digit on white paper, as a user might draw it).
fn write_png(mnist: &Mnist, i: usize, path: &Path, drawn: bool) {
    let img = image::GrayImage::from_raw(28, 28, mnist.test.image(i).to_vec()).unwrap();
    let img = if drawn {
        let mut big = image::imageops::resize(&img, 112, 112, image::imageops::FilterType::Triangle);
        image::imageops::invert(&mut big);
        big
    } else {
        img
    };
    img.save(path).unwrap();
}

#[test]
fn predict_gives_a_png_test_image_its_label() {
    let Some(t) = trained() else { return };
    let mnist = Mnist::load(&t.data_dir).unwrap();
    let model = cli::checkpoint::load(&t.model).unwrap();
    // The first few test images the model gets right, by the library's own reckoning.
    let x = ndarray::Array2::from_shape_fn((20, 784), |(i, j)| f32::from(mnist.test.image(i)[j]) / 255.0);
    let right: Vec<usize> = model
        .predict(x.view())
        .iter()
        .enumerate()
        .filter(|&(i, &p)| p == usize::from(mnist.test.label(i)))
        .map(|(i, _)| i)
        .take(5)
        .collect();
    assert_eq!(right.len(), 5);

    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["predict".to_owned(), "--model".into(), t.model.display().to_string()];
    for &i in &right {
        let path = dir.path().join(format!("test{i}.png"));
        write_png(&mnist, i, &path, false);
        args.push(path.display().to_string());
    }
    let out = program().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for &i in &right {
        let line = stdout.lines().find(|l| l.contains(&format!("test{i}.png: "))).unwrap();
        assert!(line.contains(&format!(": {} (", mnist.test.label(i))), "image {i}: {line}");
    }
    // Every image also gets a probability per class.
    assert_eq!(stdout.lines().filter(|l| l.starts_with("  0: ")).count(), right.len());

    // Drawn dark on light and four times larger, the first still reads as its label.
    let i = right[0];
    let drawn = dir.path().join("drawn.png");
    write_png(&mnist, i, &drawn, true);
    let out = run(&["predict", "--model", t.model.to_str().unwrap(), drawn.to_str().unwrap()]);
    assert!(
        text(&out.stdout).starts_with(&format!("{}: {} (", drawn.display(), mnist.test.label(i))),
        "{}",
        text(&out.stdout)
    );
}

/// A failure: non-zero exit with `code`, one line on stderr starting `error: ` and containing
/// `needle`, no panic, nothing on stdout.
pub(crate) fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: printed {}", text(&out.stdout));
}

#[test]
fn bad_values_are_refused_with_one_line_and_status_2() {
    for (args, needle) in [
        (&["train", "--batch-size", "0"][..], "--batch-size must be at least 1, got 0"),
        (&["train", "--lr", "0"], "--lr must be a finite number above 0, got 0"),
        (&["train", "--lr", "-0.5"], "--lr must be a finite number above 0, got -0.5"),
        (&["train", "--lr", "inf"], "--lr must be a finite number above 0, got inf"),
        (&["train", "--lr", "nan"], "--lr must be a finite number above 0, got NaN"),
        (&["train", "--hidden", "128,0"], "--hidden \"128,0\": a width of 0"),
        (&["train", "--val-split", "1"], "--val-split must be in [0, 1), got 1"),
        (&["train", "--val-split", "-0.2"], "--val-split must be in [0, 1), got -0.2"),
        (&["train", "--epochs", "0"], "--epochs must be at least 1, got 0"),
        (&["train", "--early-stop", "2"], "--early-stop needs a validation set"),
        (&["train", "--momentum", "0.9"], "--momentum applies to --optimizer sgd only"),
        (&["eval", "--model", "m", "--threads", "0"], "--threads must be at least 1, got 0"),
    ] {
        assert_fails(args, 2, needle);
    }
}

#[test]
fn missing_or_malformed_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_fails(
        &["train", "--data-dir", empty.to_str().unwrap()],
        1,
        "neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz found; run `cargo xtask fetch-data`",
    );
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for name in data::FILES {
        std::fs::write(bad.join(name), b"\x00\x00\x08\x03\x00\x00\x00\x02").unwrap();
    }
    assert_fails(&["train", "--data-dir", bad.to_str().unwrap()], 1, "train-images-idx3-ubyte: truncated header");
}

#[test]
fn bad_checkpoints_and_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"this is not a checkpoint").unwrap();
    assert_fails(&["eval", "--model", junk.to_str().unwrap()], 1, "junk.safetensors: not a safetensors file");
    assert_fails(&["predict", "--model", junk.to_str().unwrap(), "x.png"], 1, "not a safetensors file");
    let missing = dir.path().join("missing.safetensors");
    assert_fails(&["eval", "--model", missing.to_str().unwrap()], 1, "missing.safetensors: cannot read");

    let Some(t) = trained() else { return };
    let bytes = std::fs::read(&t.model).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(&["eval", "--model", truncated.to_str().unwrap()], 1, "truncated.safetensors: not a safetensors file");

    let not_image = dir.path().join("notes.png");
    std::fs::write(&not_image, b"hello").unwrap();
    assert_fails(&["predict", "--model", t.model.to_str().unwrap(), not_image.to_str().unwrap()], 1, "notes.png: ");
    let blank = dir.path().join("blank.png");
    image::GrayImage::from_pixel(40, 40, image::Luma([255])).save(&blank).unwrap();
    assert_fails(&["predict", "--model", t.model.to_str().unwrap(), blank.to_str().unwrap()], 1, "no digit found");
}

#[test]
fn a_checkpoint_of_another_shape_is_refused() {
    let Some(data_dir) = xtask::mnist_dir_for_tests() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    let mlp = nn::Mlp::new(&nn::MlpConfig { widths: vec![100, 10], output_relu: false }, &mut rand_seeded());
    cli::checkpoint::save(&path, &mlp, &[]).unwrap();
    assert_fails(
        &["eval", "--model", path.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()],
        1,
        "the model maps 100 inputs to 10 classes, but the data has 784 pixels per image",
    );
    assert_fails(&["predict", "--model", path.to_str().unwrap(), "x.png"], 1, "the model takes 100 inputs");
}

fn rand_seeded() -> impl rand::Rng {
    use rand::SeedableRng;
    rand_chacha::ChaCha8Rng::seed_from_u64(0)
}

#[test]
fn an_unwritable_save_path_fails_before_training() {
    let Some(data_dir) = xtask::mnist_dir_for_tests() else { return };
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("no-such-folder").join("m.safetensors");
    let start = std::time::Instant::now();
    assert_fails(
        &["train", "--data-dir", data_dir.to_str().unwrap(), "--save", save.to_str().unwrap()],
        1,
        "does not exist",
    );
    assert!(start.elapsed().as_secs() < 10, "it failed only after {:?}", start.elapsed());
}
