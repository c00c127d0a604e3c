//! `mnist export`: every kind of model the project trains, written as ONNX, checked by ONNX's
//! own checker and run by ONNX Runtime, must give the logits and the test accuracy that the
//! project gives.

use ndarray::Array2;
use nn::Model;

use crate::support::{arg, run, synthetic_dir, test_accuracy, text, train_synthetic};

/// The largest difference allowed between a logit of ONNX Runtime and ours, relative to the
/// largest logit (at least 1): both compute in f32, in different orders.
const TOLERANCE: f32 = 1e-5;

#[test]
fn every_model_kind_runs_in_onnx_runtime_with_our_logits_and_accuracy() {
    let Some(python) = testkit::onnx_python() else { return };
    let script = testkit::repo_root().join("scripts").join("check_onnx.py");
    let test = data::Mnist::load(synthetic_dir()).unwrap().test;
    let pixels = Array2::from_shape_fn((test.len(), test.image_len()), |(i, j)| f32::from(test.image(i)[j]) / 255.0);
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("mlp", &["--hidden", "32,16"][..]),
        ("mlp-output-relu", &["--hidden", "32", "--output-relu"]),
        ("softmax-regression", &["--hidden", ""]),
        ("lenet", &["--model", "lenet"]),
        ("cnn", &["--model", "cnn"]),
        (
            "every-layer",
            &[
                "--layers",
                "conv(4,3,pad=1,bias=false),batchnorm(momentum=0.3,eps=0.001),gelu,avgpool(2),conv(4,3,stride=2),tanh,\
                 maxpool(2,1),dropout(0.2),conv(6,1),gelu(tanh),globalavgpool,linear(8),batchnorm,leakyrelu(0.2),\
                 sigmoid,linear(12),relu,linear(10)",
            ],
        ),
    ] {
        let model_path = dir.path().join(format!("{name}.safetensors"));
        let onnx_path = dir.path().join(format!("{name}.onnx"));
        let logits_path = dir.path().join(format!("{name}.logits"));
        let mut all = vec!["--epochs", "2", "--save", arg(&model_path), "--quiet"];
        all.extend_from_slice(args);
        train_synthetic(&all);

        let exported = run(&["export", "--model", arg(&model_path), "--onnx", arg(&onnx_path)]);
        assert!(exported.status.success(), "{name}: {}", text(&exported.stderr));
        let eval = run(&["eval", "--model", arg(&model_path), "--data-dir", arg(synthetic_dir())]);
        assert!(eval.status.success(), "{name}: {}", text(&eval.stderr));

        let checked = std::process::Command::new(&python)
            .arg(&script)
            .args([&onnx_path, synthetic_dir(), &logits_path])
            .output()
            .unwrap();
        let stdout = text(&checked.stdout);
        assert!(checked.status.success(), "{name}: {stdout}{}", text(&checked.stderr));
        assert_eq!(test_accuracy(&stdout), test_accuracy(&text(&eval.stdout)), "{name}: {stdout}");
        // The description travels in metadata_props, as the script prints them.
        let recorded = nn::StateDict::from_safetensors(&std::fs::read(&model_path).unwrap()).unwrap();
        let accuracy = recorded.meta("test_accuracy").unwrap();
        for fact in
            ["'architecture': '", "'classes': '10'", &format!("'test_accuracy': '{accuracy}'"), "'class_names': '"]
        {
            assert!(stdout.contains(fact), "{name}: no {fact} in {stdout}");
        }

        let theirs: Vec<f32> = std::fs::read(&logits_path)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let model: nn::Sequential = train::load_model(&std::fs::read(&model_path).unwrap()).unwrap();
        let ours = model.logits(pixels.view());
        assert_eq!(theirs.len(), ours.len(), "{name}");
        let scale = ours.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: largest logit difference {worst:e} (largest logit {scale})");
        assert!(worst <= TOLERANCE * scale, "{name}: logits differ by {worst} (largest logit {scale})");
    }
}
