//! The `mnist` command line: `train`, `eval`, `predict`, `serve` and `export`. It parses flags, calls the
//! libraries (`data`, `nn`, `train`, `plots`, `serve`), prints and writes files; [`main`] is the whole
//! program, and [`run`] runs a command line in process.

mod args;
mod eval;
mod export;
mod files;
mod predict;
mod serving;
mod svg;
mod training;

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use clap::error::{ContextKind, ContextValue, ErrorKind};

pub use args::{NewRun, Outputs, Start, TrainConfig, UsageError};

/// The program: parses the process's arguments, runs the command, prints any error on one line
/// as `error: …` and returns the exit status (0 success, 1 failure, 2 usage).
pub fn main() -> ExitCode {
    run(std::env::args_os(), &mut io::stdout())
}

/// Runs the command line `args` (the program's name first), writing its results on `out` and
/// progress and errors on stderr; returns the exit status.
pub fn run(args: impl IntoIterator<Item = OsString>, out: &mut (dyn Write + Send)) -> ExitCode {
    let args: Vec<OsString> = args.into_iter().collect();
    let cli = match args::Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) if e.kind() == ErrorKind::ArgumentConflict => {
            eprintln!("error: {}", conflict(&e, &args));
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    // A bad MNIST_SIMD is a usage error, reported before any work (kernels would panic on it).
    if let Err(e) = simd::Level::from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match command(cli.command, out).and_then(|()| Ok(out.flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`mnist train | head`) is the reader's choice, not a failure.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if e.is::<UsageError>() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// `e` and its causes on one line, each said once: many errors write their cause at the end of
/// their own message as well as naming it as their source, and such a cause is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// The run `mnist train ARGS` describes, validated as the program validates it, or the one-line
/// error it would print. `args` are those after `train`.
///
/// ```
/// let config = cli::parse_train(["--epochs", "3", "--model", "lenet"]).unwrap();
/// assert_eq!(config.epochs, 3);
/// let err = cli::parse_train(["--batch-size", "0"]).unwrap_err();
/// assert_eq!(err.to_string(), "--batch-size must be at least 1, got 0");
/// ```
///
/// # Errors
/// A command line that does not parse or does not make sense.
pub fn parse_train<T: Into<OsString>>(args: impl IntoIterator<Item = T>) -> Result<TrainConfig, UsageError> {
    let args: Vec<OsString> =
        ["mnist", "train"].map(OsString::from).into_iter().chain(args.into_iter().map(Into::into)).collect();
    let cli = args::Cli::try_parse_from(&args).map_err(|e| match e.kind() {
        ErrorKind::ArgumentConflict => UsageError(conflict(&e, &args)),
        kind => UsageError(kind.to_string()),
    })?;
    match cli.command {
        args::Command::Train(a) => TrainConfig::try_from(*a),
        _ => unreachable!("the command is train"),
    }
}

/// clap's conflict error in one line: `--lr cannot be used with --resume: ...`. When clap names
/// a group of flags (those that define a run), the one the command line gave is named.
fn conflict(e: &clap::Error, args: &[OsString]) -> String {
    let given = |flag: &&String| {
        let flag = flag.split(' ').next().unwrap_or(flag);
        args.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))))
    };
    let flag = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or(s).to_owned(),
        Some(ContextValue::Strings(v)) => {
            v.iter().find(given).or(v.first()).map_or("?".into(), |s| s.split(' ').next().unwrap_or(s).to_owned())
        }
        _ => "?".into(),
    };
    let (a, b) = (flag(ContextKind::InvalidArg), flag(ContextKind::PriorArg));
    if a == b {
        return format!("{a} was given twice");
    }
    let (given, with) = if a == "--resume" { (b, a) } else { (a, b) };
    let why = if with == "--resume" { ": a resumed run keeps the settings it was started with" } else { "" };
    format!("{given} cannot be used with {with}{why}")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    };
    e.chain().any(|cause| {
        broken(cause)
            || matches!(cause.downcast_ref::<train::TrainError>(), Some(train::TrainError::Observer(inner)) if broken(inner.as_ref()))
    })
}

fn command(command: args::Command, out: &mut (dyn Write + Send)) -> Result<()> {
    match command {
        args::Command::Train(a) => {
            let cfg = TrainConfig::try_from(*a)?;
            with_threads(cfg.threads, || training::run(&cfg, out))
        }
        args::Command::Eval(a) => with_threads(args::threads(a.threads)?, || eval::run(&a, out)),
        args::Command::Predict(a) => predict::run(&a, out),
        args::Command::Export(a) => export::run(&a, out),
        args::Command::Serve(a) => with_threads(args::threads(a.threads)?, || serving::run(&a, out)),
    }
}

/// Runs `f` on a rayon pool of `threads` workers, which the training step splits batches over.
fn with_threads<T: Send>(threads: usize, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(f)
}
