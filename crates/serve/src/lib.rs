//! An HTTP server for a trained model: a page to draw digits on and watch the model read them,
//! and a JSON prediction API. Build the [`router`] from a model with [`App::new`], then run it
//! with [`serve`] on a listener of your choice:
//!
//! ```no_run
//! # async fn run(model: nn::Sequential) -> std::io::Result<()> {
//! let app = serve::App::new(model, None, serve::Limits::default()).expect("a model of 28x28 images");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve::serve(listener, serve::router(app, |_| {}), serve::Limits::default(), std::future::pending()).await
//! # }
//! ```
//!
//! Everything a stranger sends is bounded before it is decoded ([`Limits`]):
//! - connections open at once ([`Limits::connections`]; beyond, the one idle longest is closed,
//!   or, when all are busy, more wait to be accepted);
//! - the time to send a request's headers ([`Limits::header_timeout`], which also ends idle
//!   connections) and then its body ([`Limits::body_timeout`]; 408 beyond);
//! - the body's size ([`Limits::body_bytes`]; 413 beyond) and that of the bodies held at once
//!   ([`Limits::bodies_bytes`]; 503 beyond), an image's sides and decoding
//!   memory ([`Limits::image`]), the images in one request ([`Limits::images`]);
//! - the predictions decoded and run at once ([`Limits::workers`], threads of their own, off
//!   those that read and write connections), and those accepted to wait for a worker
//!   ([`Limits::queue`], and no more than the workers can do in half the request timeout;
//!   beyond, a quick 503 with `Retry-After`). A body is read before it
//!   takes a place, so a slow client holds none; a prediction whose client has gone, or whose
//!   deadline has passed, is skipped before it runs;
//! - the time a request may take, from its headers to its response, the wait for a worker
//!   included ([`Limits::timeout`]; 408 beyond), and how long an answer may wait for its client
//!   to read it ([`Limits::write_timeout`]; then the connection is closed).
//!
//! The page, its files, `/healthz` and `/api/model` never wait behind predictions. Every error
//! the routes make is JSON, `{"error": "..."}`; the HTTP layer answers two errors itself, with an
//! empty body, before any route: 400 for a request it cannot parse, 431 for headers beyond its
//! buffer.
//!
//! The page is three files embedded in the binary: it needs no network beyond the server.

mod api;
mod connections;
mod deadline;
mod page;
mod workers;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use nn::Model;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tower::{ServiceBuilder, ServiceExt};

pub use api::{ErrorBody, ModelFacts, Prediction, Predictions};

/// What the server accepts at most.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Bytes of a request's body.
    pub body_bytes: usize,
    /// Bytes of bodies held at once, arriving or waiting for a worker; a body that would go
    /// beyond gets 503 with `Retry-After`.
    pub bodies_bytes: usize,
    /// How long a body may take to arrive once its headers have; 408 beyond.
    pub body_timeout: Duration,
    /// Images in one request.
    pub images: usize,
    /// How large an uploaded image may be decoded.
    pub image: data::digit::Limits,
    /// How long a request may take, from its headers to its response, the wait for a worker
    /// included; 408 beyond. Also how long Ctrl-C waits for the requests under way.
    pub timeout: Duration,
    /// Threads that decode images and run the model, one prediction each at a time: the cores
    /// predictions may use, and so also what bounds the decoders' memory (this many times
    /// [`Self::image`]'s).
    pub workers: usize,
    /// Predictions that may wait for a worker; more get 503 with `Retry-After`. Fewer are
    /// taken on when those already waiting would keep the workers busy for more than half of
    /// [`Self::timeout`], at the recent time per prediction.
    pub queue: usize,
    /// Connections open at once. Beyond, the connection that has had no request under way
    /// for longest is asked to close (an answer being written is finished first); when every
    /// one has a request under way, more wait in the listener's queue until one closes.
    pub connections: usize,
    /// How long a connection may take to send a request's headers, counted from when the
    /// server starts waiting for them (so also how long it may stay idle between requests);
    /// then it is closed.
    pub header_timeout: Duration,
    /// How long an answer may wait for its client to read any of it; then the connection is
    /// closed.
    pub write_timeout: Duration,
}

impl Default for Limits {
    /// 2 MiB bodies sent within 5 s and 64 MiB of them at once, 256 images a request, images of 2048 pixels a side and
    /// 32 MiB decoded, 10 s a request, one worker per core, 256 predictions waiting, 1024
    /// connections, 10 s for headers and 10 s for a client to read.
    fn default() -> Self {
        Self {
            body_bytes: 2 << 20,
            bodies_bytes: 64 << 20,
            body_timeout: Duration::from_secs(5),
            images: 256,
            image: data::digit::Limits { max_side: 2048, max_bytes: 32 << 20 },
            timeout: Duration::from_secs(10),
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            queue: 256,
            connections: 1024,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// These limits with [`Self::connections`] kept below the files this process may open, after
    /// raising its soft limit of open files to the hard one (many systems start programs at
    /// 1,024, below what a server of 1,024 connections needs). Without room to spare, accepting
    /// would fail before the server could make way for new clients. A process-wide change: for
    /// a program that serves, not for a library that happens to.
    #[must_use]
    pub fn within_open_files(self) -> Self {
        match open_files_limit() {
            Some(files) => Self { connections: self.connections.min(files.saturating_sub(64).max(1)), ..self },
            None => self,
        }
    }
}

/// The open files this process may have, after raising its soft limit to the hard one.
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

/// Why a model cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The model does not take the 28x28 images the page and the API send.
    #[error("the model takes {inputs} values per image, but the page and the API send {side}x{side} = {pixels}")]
    NotAnImageModel {
        /// What the model takes.
        inputs: usize,
        /// The images' side.
        side: usize,
        /// Their values.
        pixels: usize,
    },
    /// Class names that are not one per class.
    #[error("{names} class names for a model of {classes} classes")]
    ClassNames {
        /// Names given.
        names: usize,
        /// The model's classes.
        classes: usize,
    },
}

/// The model being served, with what the page shows of it.
#[derive(Debug, Clone)]
pub struct App {
    facts: Arc<ModelFacts>,
    limits: Limits,
    workers: workers::Workers,
    /// A permit per byte of the bodies held at once.
    bodies: Arc<Semaphore>,
}

impl App {
    /// Serves `model`; `test_accuracy` is what its file records, if anything. Starts
    /// [`Limits::workers`] threads, which end when the last clone of the `App` (and so of the
    /// router made from it) is dropped.
    ///
    /// # Errors
    /// The model does not take 28x28 images.
    ///
    /// # Panics
    /// The system cannot start a thread.
    pub fn new<M: Model + 'static>(model: M, test_accuracy: Option<f64>, limits: Limits) -> Result<Self, AppError> {
        let side = data::digit::SIDE;
        if model.input_width() != side * side {
            return Err(AppError::NotAnImageModel { inputs: model.input_width(), side, pixels: side * side });
        }
        let facts = ModelFacts {
            architecture: model.describe(),
            parameters: model.params().num_scalars(),
            inputs: model.input_width(),
            classes: model.classes(),
            class_names: (0..model.classes()).map(|c| c.to_string()).collect(),
            test_accuracy,
        };
        let model: Arc<dyn workers::Classify> = Arc::new(model);
        let workers = workers::Workers::start(&model, limits);
        let bodies = Arc::new(Semaphore::new(limits.bodies_bytes.min(Semaphore::MAX_PERMITS)));
        Ok(Self { facts: Arc::new(facts), limits, workers, bodies })
    }

    /// Names the classes (`names[i]` for class `i`) in `/api/model` and on the page, instead
    /// of numbering them.
    ///
    /// # Errors
    /// Not one name per class.
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self, AppError> {
        if names.len() != self.facts.classes {
            return Err(AppError::ClassNames { names: names.len(), classes: self.facts.classes });
        }
        Arc::make_mut(&mut self.facts).class_names = names;
        Ok(self)
    }
}

/// One request, as the server answered it: for a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    /// The method.
    pub method: String,
    /// The path.
    pub path: String,
    /// The status code sent.
    pub status: u16,
    /// Microseconds from the request to the response.
    pub micros: u128,
}

/// The routes, limits and timeouts; `log` is called once per request, after the response.
pub fn router(app: App, log: impl Fn(&RequestLog) + Clone + Send + Sync + 'static) -> Router {
    let limits = app.limits;
    let api = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/healthz", get(api::health))
        .route("/api/model", get(api::model))
        .route("/api/predict", post(api::predict))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(app);
    api.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                let log = log.clone();
                logged(request, next, log)
            }))
            .layer(middleware::from_fn(move |request: Request, next: Next| timed_out(request, next, limits.timeout))),
    )
}

async fn logged(request: Request, next: Next, log: impl Fn(&RequestLog)) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().to_string(), request.uri().path().to_owned());
    let response = next.run(request).await;
    log(&RequestLog { method, path, status: response.status().as_u16(), micros: started.elapsed().as_micros() });
    response
}

/// 408 with a JSON body when a request takes longer than `timeout`.
async fn timed_out(request: Request, next: Next, timeout: Duration) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            api::error(StatusCode::REQUEST_TIMEOUT, format!("the request took longer than {timeout:?}")).into_response()
        }
    }
}

/// Serves `app` on `listener`, with the connection limits of `limits`, until `shutdown`
/// completes; then stops accepting, lets every open connection finish the request under way
/// for up to [`Limits::timeout`], closes those still open, and returns.
///
/// # Errors
/// The listener fails for good (errors of single connections are retried, as `accept` gives
/// them).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.connections.max(1)));
    let open = connections::Open::new();
    let (stopping, stop) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(e, &open).await?;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A slot for it: when all are taken, the connection idle longest is asked to close;
        // when every one has a request under way, this one waits for the first to end (and
        // further clients wait in the kernel's queue, unread).
        let slot = loop {
            if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                break Some(slot);
            }
            // Asked again every few milliseconds: a connection busy now may be idle soon.
            open.close_idlest();
            tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => break Some(slot.expect("the semaphore is never closed")),
                () = tokio::time::sleep(EVICTION_RETRY) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(slot) = slot else { break };
        let registration = open.register();
        let (started, finished) = (Arc::clone(&registration.tracked), Arc::clone(&registration.tracked));
        let service = app
            .clone()
            .map_request(move |r: Request<Incoming>| {
                started.request_started();
                r.map(Body::new)
            })
            .map_response(move |r| finished.finish_with(r));
        let service = TowerToHyperService::new(service);
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _held = (slot, &registration);
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let io = TokioIo::new(deadline::WriteDeadline::new(stream, limits.write_timeout));
            let mut connection = std::pin::pin!(http.serve_connection(io, service));
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
                // Nothing is under way on it: dropped at once, whatever it was sending.
                () = registration.tracked.close.notified() => {}
            }
        });
        // Finished connections leave the set as new ones come, so that it stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stopping.send(());
    // Every request has `timeout` to finish; a connection still open after that (its client
    // reading slowly, say) is closed, so that stopping takes a bounded time whatever clients do.
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.timeout, finished).await.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    Ok(())
}

/// How often a new client waiting for a slot asks again for the idlest connection to close.
const EVICTION_RETRY: Duration = Duration::from_millis(20);

/// What to do when `accept` fails: a connection that failed before it was accepted is
/// skipped; anything else (out of file descriptors, say) makes the idlest connection close and
/// is waited out for a moment, as it may pass when connections close. Only an error that
/// cannot pass is returned.
async fn accept_failed(e: std::io::Error, open: &connections::Open) -> std::io::Result<()> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, InvalidInput};
    match e.kind() {
        ConnectionAborted | ConnectionRefused | ConnectionReset => Ok(()),
        InvalidInput => Err(e),
        _ => {
            open.close_idlest();
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        }
    }
}
