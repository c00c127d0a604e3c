//! A data set's class names, from its folder's `classes.txt` to the model file, `train`'s and
//! `eval`'s tables, `predict` and the ONNX file's metadata.

use crate::support::{arg, run, text};

#[test]
fn class_names_travel_from_the_data_set_to_every_output() {
    let named = tempfile::tempdir().unwrap();
    testkit::Synthetic { rows: 28, cols: 28, classes: 3, train: 300, test: 90, seed: 3 }.write(named.path());
    std::fs::write(named.path().join(data::CLASS_NAMES_FILE), "T-shirt/top\nAnkle boot\nく (ku)\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");

    let checkpoint = dir.path().join("run.ckpt");
    let out = run(&[
        "train",
        "--data-dir",
        arg(named.path()),
        "--epochs",
        "1",
        "--save",
        arg(&model),
        "--checkpoint",
        arg(&checkpoint),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("\n T-shirt/top ") && stdout.contains("\n     く (ku) "), "{stdout}");
    assert!(stdout.contains("Confusion matrix (rows: true class, columns: predicted class):"), "{stdout}");

    // `eval` takes the names the model recorded, even on a folder without them.
    let plain = tempfile::tempdir().unwrap();
    testkit::Synthetic { rows: 28, cols: 28, classes: 3, train: 300, test: 90, seed: 3 }.write(plain.path());
    let out = run(&["eval", "--model", arg(&model), "--data-dir", arg(plain.path())]);
    let eval = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(eval.contains("\n  Ankle boot   ") && eval.contains("\nT-shirt/top "), "{eval}");

    // A checkpoint records them too.
    let out = run(&["eval", "--model", arg(&checkpoint), "--data-dir", arg(plain.path())]);
    assert!(text(&out.stdout).contains("\n  Ankle boot   "), "{}{}", text(&out.stdout), text(&out.stderr));

    let image = dir.path().join("bar.png");
    image::GrayImage::from_fn(28, 28, |x, y| {
        image::Luma([if (12..16).contains(&x) && (4..24).contains(&y) { 255 } else { 0 }])
    })
    .save(&image)
    .unwrap();
    let out = run(&["predict", "--model", arg(&model), arg(&image)]);
    let predicted = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(predicted.contains("T-shirt/top: 0.") && predicted.contains("く (ku): 0."), "{predicted}");

    let onnx = dir.path().join("model.onnx");
    assert!(run(&["export", "--model", arg(&model), "--onnx", arg(&onnx)]).status.success());
    let bytes = std::fs::read(&onnx).unwrap();
    let json = serde_json::to_string(&["T-shirt/top", "Ankle boot", "く (ku)"]).unwrap();
    assert!(bytes.windows(json.len()).any(|w| w == json.as_bytes()), "the ONNX metadata names the classes");

    // Names in a model file that do not fit its classes, or that hold control characters, are
    // left aside with a warning: the classes are numbered.
    let mut state = nn::StateDict::from_safetensors(&std::fs::read(&model).unwrap()).unwrap();
    for bad in [r#"["a","b"]"#, "[\"a\",\"b\",\"c\\u001b[31m\"]", "not json"] {
        state.set_meta("class_names", bad);
        let tampered = dir.path().join("tampered.safetensors");
        std::fs::write(&tampered, state.to_safetensors()).unwrap();
        let out = run(&["predict", "--model", arg(&tampered), arg(&image)]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{bad}: {stderr}");
        assert!(stdout.contains("  0: 0.") && !stdout.contains('\u{1b}'), "{bad}: {stdout}");
        assert!(stderr.starts_with("warning: ") && stderr.contains("the classes are numbered instead"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(r#"\\\""#), "quoted once, not escaped twice: {stderr}");
    }

    // Without names anywhere, classes are numbers, as before.
    let model = dir.path().join("plain.safetensors");
    let out = run(&["train", "--data-dir", arg(plain.path()), "--epochs", "1", "--save", arg(&model), "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["eval", "--model", arg(&model), "--data-dir", arg(plain.path())]);
    let eval = text(&out.stdout);
    assert!(eval.contains("\n           2 ") && !eval.contains("T-shirt"), "{eval}");
}
