//! `cargo xtask bench`: builds the `mnist` program in release and measures it as a user runs
//! it, then writes `BENCHMARKS.md`.
//!
//! - Training speed: `mnist train` with the default recipe, on 1 and 2 threads, several runs;
//!   seconds per epoch (median over every epoch of every run) from `--metrics-csv`.
//! - Memory: the peak resident set of each of those runs, from the OS (`wait4`).
//! - Test evaluation and data loading: the times `mnist train` reports for them.
//! - Scaling: seconds per sample over batch sizes and a 4x wider model.
//! - Optionally, PyTorch running the same workload, for a ratio measured in the same session.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The default model's hidden widths, and the 4x wider one of the scaling table.
const HIDDEN: [&str; 2] = ["128,64,32", "512,256,128"];
/// Batch sizes of the scaling table.
const BATCHES: [usize; 4] = [32, 64, 256, 1024];

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where MNIST is.
    pub data_dir: PathBuf,
    /// Full training runs per thread count.
    pub runs: usize,
    /// Epochs per configuration of the scaling table.
    pub scaling_epochs: usize,
    /// Full LeNet-5 training runs.
    pub lenet_runs: usize,
    /// A Python interpreter and PyTorch script to compare with, if any.
    pub pytorch: Option<(PathBuf, PathBuf)>,
    /// Pairs of runs (this project, then PyTorch) per vector level and model.
    pub level_pairs: usize,
    /// Where to write the report.
    pub output: PathBuf,
}

/// One `mnist train` run's figures.
#[derive(Debug, Clone, Default)]
struct Run {
    epoch_seconds: Vec<f64>,
    test_accuracy: f64,
    load_ms: f64,
    eval_ms: f64,
    peak_rss_mb: f64,
}

/// Measures and writes the report; returns the report's text.
///
/// # Errors
/// The build fails, a run fails, or its output cannot be parsed.
pub fn bench(opts: &Options) -> Result<String> {
    let root = crate::repo_root();
    eprintln!("building the release and dev binaries ...");
    for profile in [&["--release"][..], &[]] {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .arg("build")
            .args(profile)
            .args(["--package", "cli", "--bin", "mnist"])
            .current_dir(&root)
            .status()
            .context("cannot run cargo")?;
        if !status.success() {
            bail!("cargo build {} failed", profile.join(" "));
        }
    }
    let bin = root.join("target").join("release").join("mnist");
    let dev_bin = root.join("target").join("debug").join("mnist");
    let scratch = tempfile::tempdir()?;
    let mnist = data::Mnist::load(&opts.data_dir).with_context(|| "the data set to benchmark on")?;
    let shape = Shape { train: mnist.train.len(), inputs: mnist.train.image_len(), classes: mnist.train.classes() };
    let pixels = mnist.train.pixels();
    let density = pixels.iter().filter(|&&p| p != 0).count() as f64 / pixels.len() as f64;
    drop(mnist);

    // The level in force (MNIST_SIMD, inherited by every run): the unmarked sections' level.
    let level = simd::Level::from_env()?;
    let mut report = String::new();
    writeln!(report, "# Benchmarks\n")?;
    writeln!(
        report,
        "Measured by `cargo xtask bench` on {}, on {}. Figures on a shared machine vary from run to \
         run by ten per cent or more; rerun the command to compare on yours.\n",
        today(),
        machine()
    )?;

    let mut speed = Vec::new();
    for threads in [1usize, 2] {
        let threads_arg = threads.to_string();
        let label = format!("training, {threads} thread(s)");
        speed.push((threads, train_runs(&bin, opts, scratch.path(), &label, &["--threads", &threads_arg], opts.runs)?));
    }

    writeln!(report, "## Training: the default recipe\n")?;
    writeln!(
        report,
        "`mnist train --threads T` (MLP 784-128-64-32-10, Adam lr 1e-3, batch 64, 60,000 samples, 10 \
         epochs), {} runs per thread count. Seconds per epoch count the training steps only (the \
         median over every epoch of every run); evaluation and loading are the times `train` \
         reports; memory is each run's peak resident set, from the OS.\n",
        opts.runs
    )?;
    let flops = Flops::new(&shape.widths(HIDDEN[0]), density);
    writeln!(
        report,
        "| threads | s/epoch | samples/s | GFLOP/s, dense-equivalent | GFLOP/s, executed | share of peak | test \
         accuracy | eval 10,000 (ms) | load (ms) | peak RSS (MB) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|")?;
    let ghz = cpu_mhz() / 1e3;
    let mut medians = Vec::new();
    for (threads, runs) in &speed {
        let s = median_epoch(runs);
        medians.push(s);
        let accuracies: Vec<String> = runs.iter().map(|r| format!("{:.2}%", r.test_accuracy)).collect();
        let executed = flops.executed * shape.train as f64 / s / 1e9;
        writeln!(
            report,
            "| {threads} | {s:.3} | {:.0} | {:.0} | {executed:.0} | {:.0}% | {} | {:.1} | {:.0} | {:.0} |",
            shape.train as f64 / s,
            flops.dense * shape.train as f64 / s / 1e9,
            100.0 * executed / (*threads as f64 * ghz * flop_per_cycle(level)),
            accuracies.join(", "),
            median(&runs.iter().map(|r| r.eval_ms).collect::<Vec<_>>()),
            median(&runs.iter().map(|r| r.load_ms).collect::<Vec<_>>()),
            runs.iter().map(|r| r.peak_rss_mb).fold(0.0, f64::max),
        )?;
    }
    writeln!(report, "\nTwo threads against one: {:.2}x faster per epoch.\n", medians[0] / medians[1])?;
    writeln!(
        report,
        "A step costs {:.0} kFLOP per sample counted densely (forward, weight gradients, and the \
         input gradients of layers 2-4). MNIST's pixels are {:.1}% nonzero, and the first layer's \
         forward product and weight gradient only touch the weights of nonzero pixels, so the \
         arithmetic actually executed is {:.0} kFLOP per sample. The share of peak holds the \
         executed rate against {:.0} FLOP per cycle per core at {ghz:.2} GHz, the nominal peak of \
         the vector level in force ({level}). The rest of the time goes to memory traffic (each nonzero pixel \
         reads a 512-byte row of first-layer weights) and to Adam's divisions and square roots, \
         kept exactly as PyTorch computes them.\n",
        flops.dense / 1e3,
        100.0 * density,
        flops.executed / 1e3,
        flop_per_cycle(level),
    )?;

    // Pairs of runs, plain then augmented, so that both sides of each ratio see the same load
    // on a shared host.
    let (mut plain, mut augmented, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 1..=opts.runs {
        let label = format!("augmentation, pair {pair}/{}", opts.runs);
        let p =
            median_epoch(&train_runs(&bin, opts, scratch.path(), &format!("{label}, plain"), &["--threads", "2"], 1)?);
        let a = median_epoch(&train_runs(
            &bin,
            opts,
            scratch.path(),
            &format!("{label}, --augment"),
            &["--augment", "--threads", "2"],
            1,
        )?);
        plain.push(p);
        augmented.push(a);
        ratios.push(a / p - 1.0);
    }
    let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    writeln!(
        report,
        "With `--augment` (a random rotation, shift and scale per image), an epoch takes {:.3} s against \
         {:.3} s without: {:+.0}%, the median over {} pairs of runs on 2 threads, each a plain run then an \
         augmented one so that both see the same load (the pairs ranged from {:+.0}% to {:+.0}%). \
         Augmented digits have about a third more nonzero pixels (interpolation blurs the strokes' \
         edges), which the first layer pays for too.\n",
        median(&augmented),
        median(&plain),
        100.0 * median(&ratios),
        opts.runs,
        100.0 * lowest,
        100.0 * highest,
    )?;

    eprintln!("dev profile ...");
    let summary = scratch.path().join("dev.json");
    let dev_args = [
        "train",
        "--threads",
        "2",
        "--epochs",
        "3",
        "--data-dir",
        path_str(&opts.data_dir)?,
        "--summary-json",
        path_str(&summary)?,
    ];
    let dev = measure_run(&dev_bin, &dev_args, &summary)?;
    let dev_epoch = median(&dev.epoch_seconds);
    writeln!(
        report,
        "A dev build (`cargo run -p cli -- train`, no `--release`; 3 epochs, 2 threads) takes {dev_epoch:.3} s per \
         epoch: {:.1}x the release build's.\n",
        dev_epoch / medians[1]
    )?;

    eprintln!("LeNet-5 ...");
    let lenet_args = ["--model", "lenet", "--threads", "2"];
    let lenet_runs = train_runs(&bin, opts, scratch.path(), "LeNet-5", &lenet_args, opts.lenet_runs)?;
    let lenet_flops = Flops::lenet(&shape, density);
    let lenet_epoch = median_epoch(&lenet_runs);
    writeln!(report, "## LeNet-5\n")?;
    writeln!(
        report,
        "`mnist train --model lenet --threads 2` (conv 6@5x5 pad 2, max-pool, conv 16@5x5, max-pool, 120, 84, 10; \
         Adam lr 1e-3, batch 64, 10 epochs), {} runs. A step costs {:.0} kFLOP per sample counted densely \
         (forward, weight gradients, input gradients of every layer but the first); the first convolution \
         only visits nonzero pixels, so {:.0} kFLOP are executed.\n",
        opts.lenet_runs,
        lenet_flops.dense / 1e3,
        lenet_flops.executed / 1e3
    )?;
    writeln!(
        report,
        "| threads | s/epoch | samples/s | GFLOP/s, dense-equivalent | GFLOP/s, executed | share of peak | test accuracy |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let executed = lenet_flops.executed * shape.train as f64 / lenet_epoch / 1e9;
    writeln!(
        report,
        "| 2 | {lenet_epoch:.3} | {:.0} | {:.0} | {executed:.0} | {:.0}% | {} |\n",
        shape.train as f64 / lenet_epoch,
        lenet_flops.dense * shape.train as f64 / lenet_epoch / 1e9,
        100.0 * executed / (2.0 * ghz * flop_per_cycle(level)),
        lenet_runs.iter().map(|r| format!("{:.2}%", r.test_accuracy)).collect::<Vec<_>>().join(", "),
    )?;

    eprintln!("recipes ...");
    writeln!(report, "## Recipes: time to 98% and 99% test accuracy\n")?;
    writeln!(
        report,
        "`mnist train --threads 2 --recipe R --summary-json PATH`, which evaluates the test set after every \
         epoch for the summary: the training seconds until the first epoch at or above 98% and 99%. \
         `notebook` and `strong` train the MLP, `fast` LeNet-5.{}\n",
        if opts.pytorch.is_some() {
            " PyTorch's row is `scripts/pytorch_recipe.py`: the fast recipe written in PyTorch, in the same run."
        } else {
            ""
        }
    )?;
    writeln!(
        report,
        "| recipe | epochs | s/epoch | time to 98% | time to 99% | final test accuracy | training seconds |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    let time_to = |seconds: &[f64], accuracies: &[f64], target: f64| match accuracies.iter().position(|&a| a >= target)
    {
        Some(e) => format!("{:.1} s (epoch {})", seconds[..=e].iter().sum::<f64>(), e + 1),
        None => "not reached".to_owned(),
    };
    for recipe in ["notebook", "strong", "fast"] {
        let summary = scratch.path().join(format!("recipe-{recipe}.json"));
        let args = [
            "train",
            "--recipe",
            recipe,
            "--threads",
            "2",
            "--data-dir",
            path_str(&opts.data_dir)?,
            "--summary-json",
            path_str(&summary)?,
        ];
        let run = measure_run(&bin, &args, &summary)?;
        let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&summary)?)?;
        let accuracies: Vec<f64> = json["epochs"]
            .as_array()
            .context("summary: epochs")?
            .iter()
            .map(|e| e["test_accuracy"].as_f64().unwrap_or(0.0))
            .collect();
        writeln!(
            report,
            "| {recipe} | {} | {:.3} | {} | {} | {:.2}% | {:.1} |",
            run.epoch_seconds.len(),
            median(&run.epoch_seconds),
            time_to(&run.epoch_seconds, &accuracies, 0.98),
            time_to(&run.epoch_seconds, &accuracies, 0.99),
            run.test_accuracy,
            run.epoch_seconds.iter().sum::<f64>()
        )?;
    }
    if let Some((python, _)) = &opts.pytorch {
        eprintln!("recipes: PyTorch ...");
        let script = root.join("scripts").join("pytorch_recipe.py");
        let out = Command::new(python)
            .arg(&script)
            .args(["--data", path_str(&opts.data_dir)?, "--threads", "2"])
            .output()
            .with_context(|| format!("cannot run {}", python.display()))?;
        if !out.status.success() {
            bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        }
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("pytorch_recipe.py's output")?;
        let epochs = json["epochs"].as_array().context("pytorch_recipe.py: epochs")?;
        let seconds: Vec<f64> = epochs.iter().map(|e| e["seconds"].as_f64().unwrap_or(0.0)).collect();
        let accuracies: Vec<f64> = epochs.iter().map(|e| e["test_accuracy"].as_f64().unwrap_or(0.0)).collect();
        writeln!(
            report,
            "| fast, PyTorch {} | {} | {:.3} | {} | {} | {:.2}% | {:.1} |",
            json["torch"].as_str().unwrap_or("?"),
            seconds.len(),
            median(&seconds),
            time_to(&seconds, &accuracies, 0.98),
            time_to(&seconds, &accuracies, 0.99),
            100.0 * accuracies.last().copied().unwrap_or(0.0),
            seconds.iter().sum::<f64>()
        )?;
    }
    writeln!(report)?;

    writeln!(report, "## Scaling\n")?;
    writeln!(
        report,
        "`mnist train --threads 2 --epochs {} --batch-size B --hidden H` (median epoch). The default \
         model, and one 4x wider (784-512-256-128-10, {:.1}x the arithmetic).\n",
        opts.scaling_epochs,
        Flops::new(&shape.widths(HIDDEN[1]), density).dense / flops.dense
    )?;
    writeln!(
        report,
        "| model | batch | s/epoch | µs/sample | GFLOP/s, dense-equivalent | GFLOP/s, executed | test accuracy |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|")?;
    for hidden in HIDDEN {
        let f = Flops::new(&shape.widths(hidden), density);
        for batch in BATCHES {
            eprintln!("scaling: hidden {hidden}, batch {batch} ...");
            let summary = scratch.path().join(format!("s-{batch}-{hidden}.json"));
            let (epochs, batch_arg) = (opts.scaling_epochs.to_string(), batch.to_string());
            let args = [
                "train",
                "--threads",
                "2",
                "--epochs",
                &epochs,
                "--batch-size",
                &batch_arg,
                "--hidden",
                hidden,
                "--data-dir",
                path_str(&opts.data_dir)?,
                "--summary-json",
                path_str(&summary)?,
            ];
            let run = measure_run(&bin, &args, &summary)?;
            let s = median(&run.epoch_seconds);
            writeln!(
                report,
                "| 784-{}-10 | {batch} | {s:.3} | {:.2} | {:.0} | {:.0} | {:.2}% |",
                hidden.replace(',', "-"),
                s / shape.train as f64 * 1e6,
                f.dense * shape.train as f64 / s / 1e9,
                f.executed * shape.train as f64 / s / 1e9,
                run.test_accuracy
            )?;
        }
    }

    if let Some((python, script)) = &opts.pytorch {
        levels_against_pytorch(&mut report, &bin, opts, scratch.path(), (python, script), &shape, density)?;
    }

    eprintln!("serving under load ...");
    let model = scratch.path().join("served.safetensors");
    let status = Command::new(&bin)
        .args(["train", "--quiet", "--data-dir", path_str(&opts.data_dir)?, "--save", path_str(&model)?])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("mnist train --save failed");
    }
    for attack in [false, true] {
        let load = crate::loadtest::Options {
            program: bin.clone(),
            model: model.clone(),
            clients: 64,
            duration: std::time::Duration::from_secs(20),
            attack,
        };
        writeln!(report, "\n{}", crate::loadtest::section(&crate::loadtest::run(&load)?))?;
    }

    products_section(&mut report, &root)?;
    writeln!(report, "## Kernels\n")?;
    writeln!(
        report,
        "Micro-benchmarks of the kernels at the model's shapes: `cargo bench -p tensor --bench kernels`."
    )?;
    atomic_file::write(&opts.output, |w| w.write_all(report.as_bytes()))?;
    Ok(report)
}

/// `matrixmultiply`'s compile-time cap (`MMTEST_FEATURE`, the features it may use) for
/// `level`, or `None` for none.
fn matrixmultiply_cap(level: simd::Level) -> Option<&'static str> {
    match level {
        simd::Level::Avx512 => None,
        simd::Level::Avx2 => Some("avx2,fma"),
        // On x86-64, no feature it knows, so its kernel without intrinsics, compiled for SSE2;
        // elsewhere its own (NEON on 64-bit ARM).
        simd::Level::Portable => cfg!(target_arch = "x86_64").then_some("sse2"),
    }
}

/// The dense products of the models' layers, this crate's kernels against the `gemm` and
/// `matrixmultiply` crates, at every level the CPU has (`crates/tensor/benches/products.rs`).
fn products_section(report: &mut String, root: &Path) -> Result<()> {
    let levels: Vec<simd::Level> = simd::Level::ALL.into_iter().filter(|&l| l <= simd::Level::detected()).collect();
    let mut rows: Vec<(String, simd::Level, [f64; 3])> = Vec::new();
    for &level in &levels {
        eprintln!("matrix products at {level} ...");
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command.args(["bench", "--quiet", "--package", "tensor", "--bench", "products"]).current_dir(root);
        command.env(simd::VARIABLE, level.name()).env_remove("MMTEST_FEATURE");
        if let Some(cap) = matrixmultiply_cap(level) {
            // A target folder of its own: the cap is read at compile time.
            command
                .env("MMTEST_FEATURE", cap)
                .env("CARGO_TARGET_DIR", root.join("target").join(format!("products-{level}")));
        }
        let output = command.output().context("cannot run cargo bench")?;
        if !output.status.success() {
            bail!("cargo bench --bench products at {level} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        for line in String::from_utf8_lossy(&output.stdout).lines().skip(2) {
            let fields: Vec<&str> = line.split('\t').collect();
            let [shape, ours, gemm, mm] = fields[..] else { bail!("products bench: unexpected line {line:?}") };
            let time = |v: &str| v.parse::<f64>().with_context(|| format!("products bench: {v:?} in {line:?}"));
            rows.push((shape.to_string(), level, [time(ours)?, time(gemm)?, time(mm)?]));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    writeln!(report, "## Matrix products: this project's kernels, gemm and matrixmultiply\n")?;
    writeln!(
        report,
        "The dense products of LeNet-5's and the CNN's layers at their shapes in a step (32 samples per thread; \
         a convolution's product covers the samples whose unfolded columns fit the cache), on one thread, each \
         checked against ndarray's product first: `cargo bench -p tensor --bench products` at each level, median \
         microseconds per product, timed in turns. This project's kernels run at the level (`MNIST_SIMD`), \
         `matrixmultiply` 0.3 capped at the same instruction set at compile time (`MMTEST_FEATURE`: \
         `avx2,fma`; on the portable level its kernel without intrinsics, compiled for SSE2). `gemm` 0.18 \
         cannot be capped: on stable Rust it runs AVX2 with FMA at every level. The CNN's 3x3 \
         convolutions from 16 and 32 channels take Winograd's method, 16 products per group of samples (one sample on 28x28, two \
         on 14x14): its rows are one of them.\n"
    )?;
    writeln!(report, "| product | level | this project (µs) | gemm (µs) | matrixmultiply (µs) | fastest |")?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    for (shape, level, times) in rows {
        let names = ["this project", "gemm", "matrixmultiply"];
        let best = (0..3).min_by(|&a, &b| times[a].total_cmp(&times[b])).unwrap_or(0);
        let [ours, gemm, mm] = times;
        writeln!(report, "| {shape} | {level} | {ours:.1} | {gemm:.1} | {mm:.1} | {} |", names[best])?;
    }
    writeln!(report)?;
    Ok(())
}

/// What PyTorch's script reported.
struct Torch {
    version: String,
    /// The kernels PyTorch reports it ran (`AVX512`, `AVX2`, `DEFAULT`).
    capability: String,
    epoch_seconds: f64,
    accuracy: f64,
}

/// Runs the PyTorch script for `model`, `epochs` epochs on 2 threads, with `envs` set.
fn pytorch(
    python: &Path,
    script: &Path,
    model: &str,
    data: &Path,
    epochs: usize,
    envs: &[(&str, &str)],
) -> Result<Torch> {
    eprintln!("PyTorch, {model} ...");
    let out = Command::new(python)
        .arg(script)
        .args(["--threads", "2", "--model", model, "--epochs", &epochs.to_string(), "--data", path_str(data)?])
        .envs(envs.iter().copied())
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let word_after =
        |key: &str| text.split(key).nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or("?").to_owned();
    Ok(Torch {
        version: text
            .lines()
            .find_map(|l| l.strip_prefix("torch "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_owned(),
        capability: word_after("capability="),
        epoch_seconds: field(&text, "median_epoch_seconds: ")?,
        accuracy: field(&text, "Test Accuracy: ")?,
    })
}

/// PyTorch's environment for the same instruction set as `level`: its own kernels
/// (`ATEN_CPU_CAPABILITY`) and oneDNN's (`ONEDNN_MAX_CPU_ISA`) capped; AVX-512 is its default
/// where the CPU has it.
fn torch_cap(level: simd::Level) -> &'static [(&'static str, &'static str)] {
    match level {
        simd::Level::Avx512 => &[],
        simd::Level::Avx2 => &[("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2")],
        simd::Level::Portable => &[("ATEN_CPU_CAPABILITY", "default"), ("ONEDNN_MAX_CPU_ISA", "SSE41")],
    }
}

/// Epochs of each run in the comparison by level.
const LEVEL_EPOCHS: usize = 3;

/// Epochs of each CNN run in it: one, as its epochs are ten times LeNet-5's.
const LEVEL_EPOCHS_CNN: usize = 1;

/// Each vector level the CPU has against PyTorch capped at the same instruction set: pairs of
/// runs, this project then PyTorch, so that both sides of each ratio see the same load.
fn levels_against_pytorch(
    report: &mut String,
    bin: &Path,
    opts: &Options,
    scratch: &Path,
    (python, script): (&Path, &Path),
    shape: &Shape,
    density: f64,
) -> Result<()> {
    let started = Instant::now();
    let levels: Vec<simd::Level> = simd::Level::ALL.into_iter().filter(|&l| l <= simd::Level::detected()).collect();
    let mlp = Flops::new(&shape.widths(HIDDEN[0]), density);
    let lenet = Flops::lenet(shape, density);
    let cnn = Flops::cnn(shape, density);
    // Each model's name, its `--model`, its FLOP, and the epochs of each run.
    let models = [
        ("MLP", "mlp", mlp, LEVEL_EPOCHS),
        ("LeNet-5", "lenet", lenet, LEVEL_EPOCHS),
        ("CNN", "cnn", cnn, LEVEL_EPOCHS_CNN),
    ];
    let ghz = cpu_mhz() / 1e3;
    let mut rows = Vec::new();
    let mut version = String::new();
    for &level in &levels {
        for &(name, model, flops, epochs) in &models {
            let epochs_arg = epochs.to_string();
            let (mut ours, mut theirs, mut ratios, mut accuracy) = (Vec::new(), Vec::new(), Vec::new(), (0.0, 0.0));
            let mut capability = String::new();
            for pair in 1..=opts.level_pairs {
                let label = format!("{name} at {level}, pair {pair}/{}", opts.level_pairs);
                let args = ["--model", model, "--threads", "2", "--epochs", &epochs_arg];
                let runs = train_runs_with(bin, opts, scratch, &label, &args, &[(simd::VARIABLE, level.name())], 1)?;
                let torch = pytorch(python, script, model, &opts.data_dir, epochs, torch_cap(level))?;
                let o = median_epoch(&runs);
                accuracy = (runs[0].test_accuracy, torch.accuracy);
                capability.clone_from(&torch.capability);
                version.clone_from(&torch.version);
                ratios.push(torch.epoch_seconds / o);
                ours.push(o);
                theirs.push(torch.epoch_seconds);
            }
            rows.push((
                level,
                name,
                epochs,
                median(&ours),
                (median(&theirs), capability),
                ratios,
                accuracy,
                flops.executed,
            ));
        }
    }
    writeln!(report, "\n## Against PyTorch, at every vector level\n")?;
    writeln!(
        report,
        "The same workloads in PyTorch {version}, written for speed on a CPU (data decoded once into one tensor, \
         batches sliced from a per-epoch permutation), 2 threads. For each vector level this CPU has, \
         `MNIST_SIMD=LEVEL mnist train --model M --threads 2 --epochs E` (E = {LEVEL_EPOCHS}, and \
         {LEVEL_EPOCHS_CNN} for the CNN) and PyTorch capped at \
         the same instruction set (AVX-512: its default; AVX2: `ATEN_CPU_CAPABILITY=avx2 \
         ONEDNN_MAX_CPU_ISA=AVX2`; portable: `ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41`) run in \
         {} alternating pairs; each side's figure is its median epoch, the ratio the median of the pairs' \
         ratios ({:.0} s in all). The portable level is this project's kernels on the 128-bit vectors \
         every CPU of its architecture has: SSE2 on x86-64 (NEON on 64-bit ARM). Peak: two fused multiply-adds \
         of 16 lanes a cycle per core with AVX-512, of 8 with AVX2, and a 4-lane multiply and add on the \
         portable level, at {ghz:.2} GHz, the clock the operating system reports; cores that run \
         faster than it make these shares overstate how busy the vector units are. The CNN's 3x3 \
         convolutions from 16 and 32 channels take Winograd's method, and its executed rate counts the multiply-adds of their \
         products (4/9 of the direct method's; the transforms only add).\n",
        opts.level_pairs,
        started.elapsed().as_secs_f64()
    )?;
    writeln!(
        report,
        "| level | model | this project s/epoch | PyTorch s/epoch (its kernels) | ratio (pairs' range) | GFLOP/s, executed | share of peak | test accuracy after E epochs, this project and PyTorch |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for (level, name, epochs, ours, (theirs, capability), ratios, accuracy, executed) in rows {
        let lowest = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let highest = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let rate = executed * shape.train as f64 / ours / 1e9;
        writeln!(
            report,
            "| {level} | {name} | {ours:.3} | {theirs:.3} ({capability}) | {:.1}x ({lowest:.1}-{highest:.1}) | {rate:.0} | {:.0}% | {:.2}%, {:.2}% ({epochs}) |",
            median(&ratios),
            100.0 * rate / (2.0 * ghz * flop_per_cycle(level)),
            accuracy.0,
            accuracy.1,
        )?;
    }
    Ok(())
}

/// A core's nominal f32 rate at `level`: two fused multiply-adds a cycle on 16 lanes with
/// AVX-512 (CPUs that split 512-bit operations in two reach half of it), on 8 with AVX2; a
/// multiply and an add on 4 lanes on the portable level (SSE2).
fn flop_per_cycle(level: simd::Level) -> f64 {
    match level {
        simd::Level::Avx512 => 2.0 * 2.0 * 16.0,
        simd::Level::Avx2 => 2.0 * 2.0 * 8.0,
        simd::Level::Portable => 2.0 * 4.0,
    }
}

/// The CPU's clock in MHz, from /proc/cpuinfo (NaN where unknown).
fn cpu_mhz() -> f64 {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("cpu MHz")).and_then(|l| l.split(':').nth(1)?.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// FLOP per training sample of an MLP with `widths`.
#[derive(Clone, Copy)]
struct Flops {
    /// Counting every product: forward, weight gradients, input gradients of layers 2 and up.
    dense: f64,
    /// The same with the first layer's forward and weight gradient scaled by the input density.
    executed: f64,
}

impl Flops {
    /// LeNet-5 on the data's images: conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, classes.
    fn lenet(shape: &Shape, density: f64) -> Self {
        let side = (shape.inputs as f64).sqrt() as usize;
        // Per sample: 2·out·(in·k²)·positions for a convolution, 2·in·out for a linear layer.
        let conv1 = 2.0 * (6 * 25 * side * side) as f64;
        let after2 = (side / 2 - 4).pow(2);
        let conv2 = 2.0 * (16 * 150 * after2) as f64;
        let flat = 16 * (side / 2 - 4) / 2 * ((side / 2 - 4) / 2);
        let fc = 2.0 * (flat * 120 + 120 * 84 + 84 * shape.classes) as f64;
        // Forward and weight gradients of everything, input gradients of all but conv1.
        let dense = 2.0 * conv1 + 3.0 * conv2 + 3.0 * fc;
        let executed = 2.0 * density * conv1 + 3.0 * conv2 + 3.0 * fc;
        Self { dense, executed }
    }

    /// The CNN of `--model cnn` on the data's images: two 3x3 convolutions (pad 1) at 16
    /// channels, pool, two at 32, pool, 128, classes (batch normalisation's few FLOP left out).
    /// Executed: where its 3x3 convolutions take Winograd's method, the products'
    /// multiply-adds (its transforms only add, and are left out).
    fn cnn(shape: &Shape, density: f64) -> Self {
        let side = (shape.inputs as f64).sqrt() as usize;
        let conv = |in_channels: usize, out_channels: usize, side: usize| {
            let shape = tensor::Conv2dShape {
                in_channels,
                height: side,
                width: side,
                out_channels,
                kernel: 3,
                stride: 1,
                padding: 1,
            };
            (
                2.0 * (out_channels * in_channels * 9 * side * side) as f64,
                2.0 * tensor::conv2d_multiply_adds(&shape) as f64,
            )
        };
        let conv1 = conv(1, 16, side).0;
        let layers = [conv(16, 16, side), conv(16, 32, side / 2), conv(32, 32, side / 2)];
        let (rest, rest_executed) =
            layers.iter().fold((0.0, 0.0), |(d, e), &(dense, executed)| (d + dense, e + executed));
        let flat = 32 * (side / 4) * (side / 4);
        let fc = 2.0 * (flat * 128 + 128 * shape.classes) as f64;
        // Forward and weight gradients of everything, input gradients of all but conv1.
        let dense = 2.0 * conv1 + 3.0 * (rest + fc);
        let executed = 2.0 * density * conv1 + 3.0 * (rest_executed + fc);
        Self { dense, executed }
    }

    fn new(widths: &[usize], density: f64) -> Self {
        let layer = |i: usize| 2.0 * (widths[i] * widths[i + 1]) as f64;
        let layers = widths.len() - 1;
        let rest: f64 = (1..layers).map(layer).sum();
        // Forward and weight gradient of every layer; input gradient of every layer but the first.
        let dense = 2.0 * layer(0) + 3.0 * rest;
        let executed = 2.0 * density * layer(0) + 3.0 * rest;
        Self { dense, executed }
    }
}

/// The data set's size and shape.
struct Shape {
    train: usize,
    inputs: usize,
    classes: usize,
}

impl Shape {
    /// The widths of an MLP with `hidden` layers (`"128,64,32"`) for this data.
    fn widths(&self, hidden: &str) -> Vec<usize> {
        let mut w = vec![self.inputs];
        w.extend(hidden.split(',').map(|h| h.parse::<usize>().expect("a width")));
        w.push(self.classes);
        w
    }
}

/// Runs the program, collecting its peak memory, and reads the JSON summary it wrote.
/// `count` runs of `mnist train` with `extra` flags on `opts`' data, each with its summary in
/// `scratch`; `label` names them in the progress lines.
fn train_runs(
    bin: &Path,
    opts: &Options,
    scratch: &Path,
    label: &str,
    extra: &[&str],
    count: usize,
) -> Result<Vec<Run>> {
    train_runs_with(bin, opts, scratch, label, extra, &[], count)
}

/// [`train_runs`] with environment variables `envs` set for the program.
fn train_runs_with(
    bin: &Path,
    opts: &Options,
    scratch: &Path,
    label: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
    count: usize,
) -> Result<Vec<Run>> {
    (0..count)
        .map(|r| {
            eprintln!("{label}, run {}/{count} ...", r + 1);
            let summary = scratch.join(format!("{}-{r}.json", label.replace(|c: char| !c.is_alphanumeric(), "")));
            let mut args = vec!["train"];
            args.extend_from_slice(extra);
            args.extend(["--data-dir", path_str(&opts.data_dir)?, "--summary-json", path_str(&summary)?]);
            measure_run_with(bin, &args, envs, &summary)
        })
        .collect()
}

/// The median over every epoch of every run.
fn median_epoch(runs: &[Run]) -> f64 {
    median(&runs.iter().flat_map(|r| r.epoch_seconds.iter().copied()).collect::<Vec<_>>())
}

fn measure_run(bin: &Path, args: &[&str], summary: &Path) -> Result<Run> {
    measure_run_with(bin, args, &[], summary)
}

/// [`measure_run`] with environment variables `envs` set for the program.
fn measure_run_with(bin: &Path, args: &[&str], envs: &[(&str, &str)], summary: &Path) -> Result<Run> {
    let (status, _, stderr, peak_rss_mb) = run_measured(bin, args, envs)?;
    if !status {
        bail!("mnist {} failed: {stderr}", args.join(" "));
    }
    let text = fs::read_to_string(summary).with_context(|| format!("{}: no summary", summary.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}", summary.display()))?;
    let number = |v: &serde_json::Value, what: &str| v.as_f64().with_context(|| format!("summary: no {what}"));
    let epoch_seconds = json["epochs"]
        .as_array()
        .context("summary: no epochs")?
        .iter()
        .map(|e| number(&e["seconds"], "epoch seconds"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Run {
        epoch_seconds,
        test_accuracy: 100.0 * number(&json["test_accuracy"], "test accuracy")?,
        load_ms: 1e3 * number(&json["load_seconds"], "load time")?,
        eval_ms: 1e3 * number(&json["eval_seconds"], "evaluation time")?,
        peak_rss_mb,
    })
}

/// Runs `bin args`, returning success, stdout, stderr and the child's own peak resident set in MB.
fn run_measured(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<(bool, String, String, f64)> {
    let mut child = Command::new(bin)
        .args(args)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        out_pipe.read_to_string(&mut s).map(|_| s)
    });
    let mut stderr = String::new();
    err_pipe.read_to_string(&mut stderr)?;
    let stdout = out_reader.join().map_err(|_| anyhow::anyhow!("reader thread panicked"))??;
    let (ok, rss_mb) = wait_with_rusage(&mut child)?;
    Ok((ok, stdout, stderr, rss_mb))
}

#[cfg(unix)]
fn wait_with_rusage(child: &mut std::process::Child) -> Result<(bool, f64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own unreaped child; the pointers are to live locals.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    // ru_maxrss is in kilobytes on Linux.
    Ok((ok, usage.ru_maxrss as f64 / 1024.0))
}

#[cfg(not(unix))]
fn wait_with_rusage(child: &mut std::process::Child) -> Result<(bool, f64)> {
    Ok((child.wait()?.success(), f64::NAN))
}

/// The number after `label` in `text`.
fn field(text: &str, label: &str) -> Result<f64> {
    let start = text.find(label).map(|i| i + label.len()).with_context(|| format!("no {label:?} in the output"))?;
    let num: String = text[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().with_context(|| format!("{label:?} is not followed by a number"))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The CPU, its core count and the compiler, in one line.
fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "rustc (unknown version)".into());
    format!(
        "{} ({} logical CPUs at {} MHz; widest vector level {}, in force {}), {rustc}, release profile \
         (codegen-units 1, thin LTO, no target-cpu flags: vector kernels are chosen at run time)",
        field("model name"),
        cpus,
        field("cpu MHz"),
        simd::Level::detected(),
        simd::Simd::get(),
    )
}

/// Today's date, from the system's `date`.
fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "an unknown date".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_of_the_cnn() {
        // conv1 2·16·9·784 = 225792, conv2 2·16·144·784 = 3612672, conv3 2·32·144·196 = 1806336,
        // conv4 2·32·288·196 = 3612672, fc 2·(1568·128 + 128·10) = 403968: about 29 MFLOP a step.
        let shape = Shape { train: 60_000, inputs: 784, classes: 10 };
        let f = Flops::cnn(&shape, 0.5);
        let rest = 3_612_672.0 + 1_806_336.0 + 3_612_672.0 + 403_968.0;
        assert_eq!(f.dense, 2.0 * 225_792.0 + 3.0 * rest);
        assert!((f.dense / 1e6 - 28.75).abs() < 0.01, "{}", f.dense);
        // The three 3x3 convolutions from 16 and 32 channels take Winograd's method: 4/9 of
        // their multiply-adds.
        let rest = (3_612_672.0 + 1_806_336.0 + 3_612_672.0) * 4.0 / 9.0 + 403_968.0;
        assert_eq!(f.executed, 225_792.0 + 3.0 * rest);
    }

    #[test]
    fn flops_of_lenet() {
        // conv1 2·6·25·784 = 235200, conv2 2·16·150·100 = 480000, fc 2·(400·120 + 120·84 + 84·10) = 117840.
        let f = Flops::lenet(&Shape { train: 60_000, inputs: 784, classes: 10 }, 1.0);
        assert_eq!(f.dense, 2.0 * 235_200.0 + 3.0 * 480_000.0 + 3.0 * 117_840.0);
        assert_eq!(f.executed, f.dense);
    }

    #[test]
    fn flops_of_the_default_model() {
        // Σ in·out = 100352 + 8192 + 2048 + 320 = 110912; forward and weight gradients count
        // 2·110912 each, input gradients of layers 2-4 2·10560.
        let f = Flops::new(&[784, 128, 64, 32, 10], 1.0);
        assert_eq!(f.dense, 4.0 * 110_912.0 + 2.0 * 10_560.0);
        assert_eq!(f.executed, f.dense);
        let sparse = Flops::new(&[784, 128, 64, 32, 10], 0.25);
        assert_eq!(f.dense - sparse.executed, 0.75 * 4.0 * 100_352.0);
    }

    #[test]
    fn fields_and_medians_parse() {
        assert_eq!(field("Epoch 1\nTest Accuracy: 97.74%\n", "Test Accuracy: ").unwrap(), 97.74);
        assert!(field("nothing", "Test Accuracy: ").is_err());
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
