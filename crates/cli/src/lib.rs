//! The `mnist` command line: `train`, `eval` and `predict`, wiring the `data`, `nn`, `optim`
//! and `metrics` crates together. [`main`] is the whole program; `run` and the per-command
//! modules are public so that tests can drive them in process.

mod args;
pub mod checkpoint;
pub mod digit;
pub mod eval;
mod fsutil;
pub mod plots;
mod predict;
pub mod train;

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Parser;
use data::{DataError, Dataset, Mnist};
use nn::Mlp;

pub use args::{OptimizerConfig, RunFlags, RunSettings, TrainConfig};

/// A command line that parses but does not make sense; exits with status 2, like clap's own.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The program: parses the process's arguments, runs the command, prints any error on one line
/// as `error: …` and returns the exit status (0 success, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    let cli = match args::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let mut out = io::stdout();
    match run(cli.command, &mut out).and_then(|()| Ok(out.flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`mnist train | head`) is the reader's choice, not a failure.
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<UsageError>() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

fn run(command: args::Command, out: &mut (dyn Write + Send)) -> Result<()> {
    match command {
        args::Command::Train(a) => {
            let cfg = TrainConfig::try_from(*a)?;
            with_threads(cfg.threads, || train::run(&cfg, out).map(drop))
        }
        args::Command::Eval(a) => with_threads(args::threads(a.threads)?, || eval::run(&a, out)),
        args::Command::Predict(a) => predict::run(&a, out),
    }
}

/// Runs `f` on a rayon pool of `threads` workers, which the kernels split their work across.
fn with_threads<T>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T>
where
    T: Send,
{
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(f)
}

/// Loads MNIST, with a hint on how to get it when files are missing.
///
/// # Errors
/// Any [`DataError`], as one line naming the file.
pub fn load_mnist(dir: &Path) -> Result<Mnist> {
    Mnist::load(dir).map_err(|e| match e {
        DataError::MissingFile { .. } => {
            anyhow!("{e}; run `cargo xtask fetch-data` or point --data-dir at a folder with MNIST")
        }
        other => other.into(),
    })
}

/// Checks that a model's input and output widths fit a data set.
///
/// # Errors
/// The widths differ, naming the model file.
pub fn check_model_fits(mlp: &Mlp, data: &Dataset, model: &Path) -> Result<()> {
    let widths = &mlp.config().widths;
    let (inputs, outputs) = (widths[0], widths[widths.len() - 1]);
    if inputs != data.image_len() || outputs != data.classes() {
        anyhow::bail!(
            "{}: the model maps {inputs} inputs to {outputs} classes, but the data has {} pixels per image and {} classes",
            model.display(),
            data.image_len(),
            data.classes()
        );
    }
    Ok(())
}
