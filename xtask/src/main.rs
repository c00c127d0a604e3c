//! `cargo xtask <command>`: see `cargo xtask --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::fetch;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project chores: fetch MNIST, run the benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download MNIST into data/mnist, verify each file's SHA-256, store it decompressed.
    FetchData {
        /// A mirror to try before the public ones: http(s)://, file:// or a folder holding the
        /// four .gz files. Repeatable; the environment variable MNIST_MIRROR adds more.
        #[arg(long = "mirror", value_name = "URL")]
        mirrors: Vec<String>,
        /// Where to store the files [default: data/mnist in the workspace].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Download again even when verified files are present.
        #[arg(long)]
        force: bool,
    },
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
        Command::FetchData { mirrors, data_dir, force } => {
            let env = std::env::var(fetch::MIRROR_ENV).ok();
            let data_dir = data_dir.unwrap_or_else(|| xtask::repo_root().join("data").join("mnist"));
            let mut opts = fetch::Options::new(fetch::mirror_list(&mirrors, env.as_deref())?, data_dir);
            opts.force = force;
            opts.progress_bars = std::io::stderr().is_terminal();
            fetch::fetch(&opts, &mut std::io::stderr())?;
            Ok(())
        }
    }
}
