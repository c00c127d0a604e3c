//! The `serve` command: a model over HTTP, with a line per request on stderr.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, Result};
use nn::{Model, Sequential};

use crate::args::ServeArgs;
use crate::files::{load_mnist, load_model_file, recorded_class_names};

/// Serves until Ctrl-C, then finishes the requests under way.
pub(crate) fn run(args: &ServeArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    // Before any work: a host name is looked up here, once.
    // A host, or an IPv6 address in brackets, then a port.
    let well_formed = |(host, port): (&str, &str)| {
        let host_ok = !host.is_empty() && (!host.contains(':') || host.starts_with('[') && host.ends_with(']'));
        host_ok && port.parse::<u16>().is_ok()
    };
    if !args.addr.rsplit_once(':').is_some_and(well_formed) {
        return Err(crate::UsageError(format!(
            "--addr {}: expected HOST:PORT, such as 127.0.0.1:8080 or [::1]:8080",
            args.addr
        ))
        .into());
    }
    let addrs: Vec<SocketAddr> = args
        .addr
        .to_socket_addrs()
        .with_context(|| format!("--addr {}: not a HOST:PORT this machine can listen on", args.addr))?
        .collect();
    let (model, accuracy, names) = match &args.model {
        Some(path) => {
            // The file is read once: the model, and the test accuracy and class names its
            // metadata records.
            let (model, state) = load_model_file(path)?;
            let names = recorded_class_names(path, &state, model.classes());
            (model, train::recorded_test_accuracy(&state), names)
        }
        None => train_default(args)?,
    };
    // Inference is CPU work: more workers than `--threads` would only queue in the kernel.
    let limits =
        serve::Limits { workers: rayon::current_num_threads(), ..serve::Limits::default() }.within_open_files();
    let mut app = serve::App::new(model, accuracy, limits).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    if let Some(names) = names {
        app = app.with_class_names(names).map_err(|e| anyhow::anyhow!("--model: {e}"))?;
    }
    let router = serve::router(app, |r| eprintln!("{} {} {} {}µs", r.method, r.path, r.status, r.micros));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(&addrs[..]).await.with_context(|| format!("--addr {}", args.addr))?;
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
fn train_default(args: &ServeArgs) -> Result<(Sequential, Option<f64>, Option<Vec<String>>)> {
    eprintln!("No --model given: training the default model first (a few seconds) ...");
    let mnist = load_mnist(&args.data.data_dir)?;
    let model = train::fit_notebook(&mnist.train)?;
    let accuracy = train::evaluate_all(&model, &mnist.test).accuracy();
    eprintln!("Trained: {:.2}% test accuracy", 100.0 * accuracy);
    Ok((model, Some(accuracy), Some(mnist.class_names)))
}
