//! `cargo xtask <command>`: see `cargo xtask --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{bench, fetch, loadtest};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project chores: fetch MNIST, run the benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the vector levels this CPU has, narrowest first, whatever MNIST_SIMD says: the
    /// values MNIST_SIMD may take here.
    SimdLevels,
    /// Download a data set into data/NAME (MNIST by default), verify it against its published
    /// checksums, and name its classes.
    FetchData {
        /// The data set.
        #[arg(long, value_name = "NAME", default_value = data::MNIST,
              value_parser = clap::builder::PossibleValuesParser::new(data::KNOWN_SETS.map(|s| s.name)))]
        dataset: String,
        /// A mirror to try before the public ones: http(s)://, file:// or a folder holding the
        /// data set's files (EMNIST's gzip.zip). Repeatable; for MNIST the environment variable
        /// MNIST_MIRROR adds more.
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Where to store the files [default: data/NAME in the workspace].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Download again even when verified files are present.
        #[arg(long)]
        force: bool,
    },
    /// Measure `mnist serve` under load on loopback, and update the Serving section of
    /// BENCHMARKS.md.
    Loadtest {
        /// The model to serve [default: the default MLP, trained first].
        #[arg(long, value_name = "PATH")]
        model: Option<PathBuf>,
        /// The `mnist` program to serve with, to compare builds [default: this workspace's,
        /// built in release].
        #[arg(long, value_name = "PATH")]
        program: Option<PathBuf>,
        /// Folder with MNIST, to train the model [default: data/mnist in the workspace].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Concurrent keep-alive clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Run hostile clients during the load (slow bodies, decompression bombs, abandoned
        /// expensive requests, clients that never read) and report the good requests'
        /// latencies under attack in a section of its own.
        #[arg(long)]
        attack: bool,
        /// The report to update.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
    /// Build in release and measure training speed, memory, evaluation and loading times, and
    /// scaling; write BENCHMARKS.md.
    Bench {
        /// Folder with MNIST [default: data/mnist in the workspace].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Full 10-epoch training runs per thread count.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Full 10-epoch LeNet-5 training runs.
        #[arg(long, default_value_t = 3)]
        lenet_runs: usize,
        /// Epochs per configuration of the scaling table.
        #[arg(long, default_value_t = 2)]
        scaling_epochs: usize,
        /// Also run this PyTorch script (with --python) for a ratio measured in the same session.
        #[arg(long, value_name = "SCRIPT", requires = "python")]
        pytorch: Option<PathBuf>,
        /// The Python interpreter that has torch and numpy, for --pytorch.
        #[arg(long, value_name = "PATH", requires = "pytorch")]
        python: Option<PathBuf>,
        /// With --pytorch: alternating pairs of runs (this project, then PyTorch at the same
        /// instruction set) per vector level and model.
        #[arg(long, default_value_t = 3)]
        level_pairs: usize,
        /// Where to write the report.
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
    },
}

/// Builds the release `mnist` program, unless given, and trains the default model into `dir`,
/// unless given.
fn program_and_model(
    data_dir: &std::path::Path,
    program: Option<PathBuf>,
    model: Option<PathBuf>,
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let program = match program {
        Some(program) => program,
        None => {
            let root = xtask::repo_root();
            let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--package", "cli", "--bin", "mnist"])
                .current_dir(&root)
                .status()?;
            anyhow::ensure!(status.success(), "cargo build --release failed");
            root.join("target").join("release").join("mnist")
        }
    };
    let model = match model {
        Some(model) => model,
        None => {
            let model = dir.join("model.safetensors");
            eprintln!("training the default model to serve ...");
            let status = std::process::Command::new(&program)
                .args(["train", "--quiet", "--data-dir"])
                .arg(data_dir)
                .arg("--save")
                .arg(&model)
                .stdout(std::process::Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "mnist train failed");
            model
        }
    };
    Ok((program, model))
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::SimdLevels => {
            let detected = simd::Level::detected();
            let levels: Vec<&str> = simd::Level::ALL.iter().filter(|&&l| l <= detected).map(|l| l.name()).collect();
            println!("{}", levels.join(" "));
            Ok(())
        }
        Command::FetchData { dataset, mirrors, data_dir, force } => {
            let source = fetch::Source::named(&dataset)?;
            let env = std::env::var(fetch::MIRROR_ENV).ok().filter(|_| dataset == data::MNIST);
            let data_dir = data_dir.unwrap_or_else(|| xtask::data_dir_for(&dataset));
            let mirrors = fetch::mirror_list(&mirrors, env.as_deref(), &source.mirrors)?;
            let mut opts = fetch::Options::for_source(source, mirrors, data_dir);
            opts.force = force;
            opts.progress_bars = std::io::stderr().is_terminal();
            fetch::fetch(&opts, &mut std::io::stderr())?;
            Ok(())
        }
        Command::Loadtest { model, program, data_dir, clients, seconds, attack, output } => {
            anyhow::ensure!(clients > 0 && seconds > 0, "--clients and --seconds must be at least 1");
            let root = xtask::repo_root();
            let data_dir = data_dir.unwrap_or_else(xtask::default_data_dir);
            let scratch = tempfile::tempdir()?;
            let (program, model) = program_and_model(&data_dir, program, model, scratch.path())?;
            let duration = std::time::Duration::from_secs(seconds);
            let opts = loadtest::Options { program, model, clients, duration, attack };
            let report = loadtest::run(&opts)?;
            let section = loadtest::section(&report);
            loadtest::update_benchmarks(&output.unwrap_or_else(|| root.join("BENCHMARKS.md")), &section)?;
            println!("{section}");
            Ok(())
        }
        Command::Bench { data_dir, runs, lenet_runs, scaling_epochs, pytorch, python, level_pairs, output } => {
            if runs == 0 || scaling_epochs == 0 || lenet_runs == 0 || level_pairs == 0 {
                anyhow::bail!("--runs, --lenet-runs, --scaling-epochs and --level-pairs must be at least 1");
            }
            let root = xtask::repo_root();
            let opts = bench::Options {
                data_dir: data_dir.unwrap_or_else(xtask::default_data_dir),
                runs,
                lenet_runs,
                scaling_epochs,
                pytorch: python.zip(pytorch),
                level_pairs,
                output: output.unwrap_or_else(|| root.join("BENCHMARKS.md")),
            };
            let report = bench::bench(&opts)?;
            println!("{report}");
            Ok(())
        }
    }
}
