//! Faults and reproducibility, through the `mnist` program on the synthetic set: divergence,
//! unwritable outputs, damaged data, interrupted and resumed runs, bit-identical reruns, and a
//! reader that goes away.

use std::process::Output;

use crate::support::{arg, assert_fails, program, run, synthetic_dir, text, train_synthetic, trained};

/// The stdout lines without their timings (`, Time: 0.23s`), which no run repeats.
fn without_times(stdout: &[u8]) -> Vec<String> {
    text(stdout).lines().map(|l| l.split(", Time: ").next().unwrap().to_owned()).collect()
}

#[test]
fn the_same_seed_and_threads_give_identical_runs() {
    let dir = tempfile::tempdir().unwrap();
    for threads in ["1", "2"] {
        let runs: Vec<(Vec<String>, Vec<u8>)> = (0..2)
            .map(|r| {
                let save = dir.path().join(format!("t{threads}-{r}.safetensors"));
                let args = ["--epochs", "2", "--seed", "7", "--threads", threads, "--save", arg(&save)];
                let out: Output = train_synthetic(&args);
                (without_times(&out.stdout), std::fs::read(&save).unwrap())
            })
            .collect();
        assert!(runs[0].0[0].starts_with("Epoch 1/2, Loss: "), "{:?}", runs[0].0);
        assert_eq!(runs[0].0, runs[1].0, "{threads} thread(s): the printed losses and results differ");
        assert!(runs[0].1 == runs[1].1, "{threads} thread(s): the saved models differ");
    }
}

#[test]
fn a_resumed_run_ends_exactly_where_an_uninterrupted_one_does() {
    // The MLP, and a model with batch normalisation, whose running statistics the checkpoint
    // (and early stopping's best weights) must carry.
    let norm = "conv(4,3,pad=1,bias=false),batchnorm,relu,maxpool(2),flatten,linear(16),batchnorm,relu,linear(10)";
    for model in [&[][..], &["--layers", norm]] {
        resume_matches_an_uninterrupted_run(model);
    }
}

fn resume_matches_an_uninterrupted_run(model: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let common =
        [&["--val-split", "0.1", "--early-stop", "3", "--seed", "5", "--threads", "2", "--batch-size", "32"], model]
            .concat();

    let straight = train_synthetic(
        &[&common[..], &["--epochs", "3", "--checkpoint", &p("a.ckpt"), "--save", &p("a.st")]].concat(),
    );
    train_synthetic(&[&common[..], &["--epochs", "1", "--checkpoint", &p("b.ckpt")]].concat());
    let resumed = train_synthetic(&[
        "--epochs",
        "3",
        "--resume",
        &p("b.ckpt"),
        "--checkpoint",
        &p("b.ckpt"),
        "--save",
        &p("b.st"),
        "--metrics-csv",
        &p("b.csv"),
    ]);

    assert_eq!(std::fs::read(p("a.st")).unwrap(), std::fs::read(p("b.st")).unwrap(), "{model:?}: saved models differ");
    assert_eq!(
        std::fs::read(p("a.ckpt")).unwrap(),
        std::fs::read(p("b.ckpt")).unwrap(),
        "{model:?}: checkpoints differ"
    );
    let (straight, resumed) = (without_times(&straight.stdout), without_times(&resumed.stdout));
    assert!(resumed[0].starts_with("Epoch 2/3, Loss: "), "{resumed:?}");
    assert_eq!(straight[1..], resumed[..], "epochs 2 and 3 and the test results must match");
    let csv = std::fs::read_to_string(p("b.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "the resumed run's CSV has every epoch: {csv}");
}

#[test]
fn resuming_refuses_a_model_file_a_finished_run_and_a_damaged_file() {
    let t = trained();
    let d = arg(synthetic_dir());
    assert_fails(
        &["train", "--data-dir", d, "--resume", arg(&t.model)],
        1,
        "m.safetensors: a model without training state: --resume needs a file written by train --checkpoint",
    );
    assert_fails(
        &["train", "--data-dir", d, "--resume", arg(&t.checkpoint), "--epochs", "2"],
        2,
        "the run has 2 epochs done already",
    );
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.ckpt");
    std::fs::write(&junk, &std::fs::read(&t.checkpoint).unwrap()[..100]).unwrap();
    assert_fails(&["train", "--data-dir", d, "--resume", arg(&junk)], 1, "junk.ckpt: not a safetensors file");
}

#[test]
fn a_diverging_run_stops_with_its_epoch_and_step_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("model.safetensors");
    // A model from an earlier run is there and must survive the failed one.
    std::fs::write(&save, b"an earlier model").unwrap();
    for (args, lr) in [(&["--lr", "1e6"][..], "1000000"), (&["--optimizer", "sgd", "--lr", "100"], "100")] {
        let mut all = vec!["train", "--data-dir", arg(synthetic_dir()), "--save", arg(&save)];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let error = stderr.lines().last().unwrap();
        assert!(error.starts_with("error: epoch 1, step "), "{error}");
        assert!(
            error.contains("training diverged, most likely because the learning rate")
                && error.ends_with(&format!("({lr}) is too high")),
            "{error}"
        );
        assert_eq!(std::fs::read(&save).unwrap(), b"an earlier model");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no other file was left");
    }
}

#[test]
fn outputs_that_cannot_be_written_fail_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let d = arg(synthetic_dir());
    for (flag, path, message) in [
        ("--save", dir.path().join("missing").join("m.st"), "does not exist"),
        ("--checkpoint", file.join("m.ckpt"), "is not a folder"),
        ("--metrics-csv", dir.path().to_path_buf(), "is a folder, not a file"),
        ("--summary-json", dir.path().join("missing").join("s.json"), "does not exist"),
        ("--plots", file.join("plots"), "a-file is not a folder"),
        ("--plots", dir.path().join("missing").join("plots"), "does not exist"),
        ("--plots", file.clone(), "is a file, not a folder"),
    ] {
        let started = std::time::Instant::now();
        assert_fails(&["train", "--data-dir", d, flag, arg(&path)], 1, &format!("{flag} "));
        assert_fails(&["train", "--data-dir", d, flag, arg(&path)], 1, message);
        assert!(started.elapsed().as_secs() < 20, "{flag}: it failed only after {:?}", started.elapsed());
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file was left");
    // A run that fails takes away the plots folder it made, and only that.
    let (made, there) = (dir.path().join("plots"), dir.path().join("there"));
    std::fs::create_dir(&there).unwrap();
    for plots in [&made, &there] {
        let out = run(&["train", "--data-dir", d, "--lr", "1e6", "--plots", arg(plots)]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    }
    assert!(!made.exists(), "the failed run left the folder it made");
    assert!(there.is_dir(), "the failed run took away a folder it did not make");
}

#[test]
fn corrupt_or_truncated_gzip_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for name in data::FILES {
        let bytes = std::fs::read(synthetic_dir().join(name)).unwrap();
        std::fs::write(dir.path().join(format!("{name}.gz")), gzip(&bytes)).unwrap();
    }
    let d = arg(dir.path());
    let out = run(&["train", "--epochs", "1", "--data-dir", d, "--quiet"]);
    assert!(out.status.success(), "the gzip files load: {}", text(&out.stderr));

    let labels = dir.path().join("t10k-labels-idx1-ubyte.gz");
    let bytes = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &bytes[..bytes.len() / 2]).unwrap();
    let expected = format!("{}: corrupt or truncated gzip data", labels.display());
    assert_fails(&["train", "--epochs", "1", "--data-dir", d], 1, &expected);

    let images = dir.path().join("train-images-idx3-ubyte.gz");
    let mut bytes = std::fs::read(&images).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 16].iter_mut().for_each(|b| *b ^= 0xa5);
    std::fs::write(&images, bytes).unwrap();
    let expected = format!("{}: corrupt or truncated gzip data", images.display());
    assert_fails(&["train", "--epochs", "1", "--data-dir", d], 1, &expected);
}

#[test]
fn two_flags_that_name_one_file_are_refused_before_anything_is_written() {
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let d = arg(synthetic_dir());
    let file = dir.path().join("out");
    // The same file spelled two ways.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let other = dir.path().join("sub").join("..").join("out");
    let (f, o) = (arg(&file), arg(&other));
    for (args, needle) in [
        (vec!["--save", f, "--checkpoint", o], "--checkpoint and --save name the same file"),
        (vec!["--metrics-csv", f, "--summary-json", f], "--metrics-csv and --summary-json name the same file"),
        (vec!["--save", f, "--plots", f], "--save and --plots name the same file"),
    ] {
        assert_fails(&[&["train", "--data-dir", d, "--epochs", "1"][..], &args].concat(), 2, needle);
        assert!(!file.exists(), "{args:?}: wrote {}", file.display());
    }
    // A run may write its checkpoint over the one it resumes, not its model.
    let checkpoint = dir.path().join("run.ckpt");
    std::fs::copy(&t.checkpoint, &checkpoint).unwrap();
    let before = std::fs::read(&checkpoint).unwrap();
    let c = arg(&checkpoint);
    let args = ["train", "--data-dir", d, "--resume", c, "--epochs", "3", "--save", c];
    assert_fails(&args, 2, "--resume and --save name the same file");
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before, "the checkpoint was written");

    let model = dir.path().join("m.safetensors");
    std::fs::copy(&t.model, &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    assert_fails(
        &["export", "--model", arg(&model), "--onnx", arg(&model)],
        2,
        "--model and --onnx name the same file",
    );
    assert_eq!(std::fs::read(&model).unwrap(), before, "the model was written");
}

// The program's own descriptors, as /dev/stdout leads to: a test that went wrong would break
// nothing else.
#[cfg(target_os = "linux")]
#[test]
fn outputs_written_in_place_are_written_once_and_may_be_shared() {
    let d = arg(synthetic_dir());
    let stdout = "/proc/self/fd/1";
    for flag in ["--metrics-csv", "--checkpoint"] {
        assert_fails(&["train", "--data-dir", d, flag, stdout], 2, "rewritten after every epoch");
    }
    // Two outputs into one stream, a pipe here.
    let out = run(&["train", "--data-dir", d, "--save", stdout, "--summary-json", stdout, "--quiet"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(printed.starts_with("Test Accuracy: ") && printed.contains("\"epochs\""), "{printed:.300}");

    // Standard output redirected to a file, as a shell's `>` does: what is written through
    // /dev/stdout lands where the program's own output has got to, and its lines follow.
    let t = trained();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out");
    let status = crate::support::program()
        .args(["export", "--model", arg(&t.model), "--onnx", stdout])
        .stdout(std::fs::File::create(&file).unwrap())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&file).unwrap();
    let onnx = dir.path().join("m.onnx");
    assert!(run(&["export", "--model", arg(&t.model), "--onnx", arg(&onnx)]).status.success());
    let model = std::fs::read(&onnx).unwrap();
    assert!(bytes.starts_with(&model), "the model comes first, whole");
    let after = String::from_utf8_lossy(&bytes[model.len()..]);
    assert!(after.starts_with("Wrote /proc/self/fd/1 ("), "then the program's line: {after}");
}

#[test]
fn resuming_a_run_that_stopped_early_says_so_before_anything_else() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("run.ckpt");
    let c = arg(&checkpoint);
    let d = arg(synthetic_dir());
    let args = ["--val-split", "0.5", "--early-stop", "1", "--lr", "0.3", "--seed", "3", "--checkpoint", c];
    let out = run(&[&["train", "--data-dir", d, "--epochs", "20"][..], &args].concat());
    let stdout = text(&out.stdout);
    assert!(out.status.success() && stdout.contains("Early stop"), "the run must stop early: {stdout}");
    let needle = format!("--resume {c}: the run stopped early after epoch");
    assert_fails(&["train", "--data-dir", d, "--resume", c, "--epochs", "30"], 2, &needle);
}

#[test]
fn a_folder_where_a_data_file_should_be_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    for name in data::FILES {
        std::fs::copy(synthetic_dir().join(name), dir.path().join(name)).unwrap();
    }
    let images = dir.path().join("train-images-idx3-ubyte");
    std::fs::remove_file(&images).unwrap();
    std::fs::create_dir(&images).unwrap();
    assert_fails(&["train", "--epochs", "1", "--data-dir", arg(dir.path())], 1, &format!("{}: ", images.display()));
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = program()
        .args(["train", "--epochs", "40", "--data-dir", arg(synthetic_dir())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, as `| head -1` would, then close the pipe.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("Epoch 1/40, Loss: "), "{first}");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("Evaluated"), "it stopped at the closed pipe rather than training on: {stderr}");
}
