//! The `serve` command: a model over HTTP, with a line per request on stderr.

use std::io::Write;

use anyhow::{Context, Result};
use nn::Sequential;

use crate::args::ServeArgs;
use crate::files::load_mnist;

/// Serves until Ctrl-C, then finishes the requests under way.
pub(crate) fn run(args: &ServeArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (model, accuracy) = match &args.model {
        Some(path) => {
            // The file is read once: the model, and the test accuracy its metadata records.
            let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let model: Sequential =
                train::load_model(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let state = nn::StateDict::from_safetensors(&bytes).expect("parsed just above");
            (model, train::recorded_test_accuracy(&state))
        }
        None => train_default(args)?,
    };
    // Inference is CPU work: more workers than `--threads` would only queue in the kernel. The
    // connections stay below the open files the process may have, or accepting would fail
    // before the server could make way for new clients.
    let defaults = serve::Limits::default();
    let connections =
        open_files_limit().map_or(defaults.connections, |n| defaults.connections.min(n.saturating_sub(64).max(1)));
    let limits = serve::Limits { workers: rayon::current_num_threads(), connections, ..defaults };
    let app = serve::App::new(model, accuracy, limits).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    let router = serve::router(app, |r| eprintln!("{} {} {} {}µs", r.method, r.path, r.status, r.micros));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("--addr {}", args.addr))?;
        writeln!(
            out,
            "Serving on http://{} (Ctrl-C stops; up to {} connections)",
            listener.local_addr()?,
            limits.connections
        )?;
        out.flush()?;
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        serve::serve(listener, router, limits, stop).await?;
        eprintln!("Stopped");
        Ok(())
    })
}

/// The notebook's model, trained with its recipe, and its test accuracy.
fn train_default(args: &ServeArgs) -> Result<(Sequential, Option<f64>)> {
    eprintln!("No --model given: training the default model first (a few seconds) ...");
    let mnist = load_mnist(&args.data.data_dir)?;
    let model = train::fit_notebook(&mnist.train)?;
    let all: Vec<usize> = (0..mnist.test.len()).collect();
    let accuracy = train::evaluate(&model, &mnist.test, &all).accuracy();
    eprintln!("Trained: {:.2}% test accuracy", 100.0 * accuracy);
    Ok((model, Some(accuracy)))
}

/// The open files this process may have, after raising its soft limit to the hard one (many
/// systems start programs at 1,024, below what a server of 1,024 connections needs).
#[cfg(unix)]
fn open_files_limit() -> Option<usize> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given; a refusal leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<usize> {
    None
}
