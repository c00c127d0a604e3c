//! What the server's tests share: a server on loopback and small clients.
#![allow(dead_code, reason = "each test binary uses its own part")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use nn::{Sequential, SequentialConfig};
use serve::{App, Limits};

/// A small convolutional model of 28x28 images, the same every time.
pub fn model() -> Sequential {
    let config = SequentialConfig::parse("conv(4,5,pad=2),relu,maxpool(2),flatten,linear(10)", [1, 28, 28]).unwrap();
    Sequential::new(&config, &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0))
}

/// A server on 127.0.0.1 with an OS-chosen port, on its own runtime, for the test's lifetime.
pub fn start(limits: Limits) -> String {
    start_stoppable(limits).0
}

/// A running server that stops when told to.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: std::sync::mpsc::Receiver<()>,
}

impl Running {
    /// Asks the server to stop, as Ctrl-C does, and waits up to `patience` for `serve` to
    /// return: how long it took, or `None` if it had not returned by then.
    pub fn stop(mut self, patience: Duration) -> Option<Duration> {
        let asked = std::time::Instant::now();
        let _ = self.stop.take().expect("stopped once").send(());
        self.stopped.recv_timeout(patience).ok().map(|()| asked.elapsed())
    }
}

/// A server as [`start`] makes, and a handle to stop it.
pub fn start_stoppable(limits: Limits) -> (String, Running) {
    start_app(App::new(model(), Some(0.5), limits).unwrap(), limits)
}

/// A server of `app` on 127.0.0.1 with an OS-chosen port, and a handle to stop it.
pub fn start_app(app: App, limits: Limits) -> (String, Running) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, asked) = tokio::sync::oneshot::channel::<()>();
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // A dropped handle means "never": `start`'s servers live as long as the test.
        let shutdown = async {
            if asked.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        runtime.block_on(serve::serve(listener, serve::router(app, |_| {}), limits, shutdown)).unwrap();
        let _ = done.send(());
        // The blocking pool may still be finishing a prediction: not waited for here.
        runtime.shutdown_background();
    });
    (format!("http://{addr}"), Running { stop: Some(stop), stopped })
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends `body` with `content_type` to `/api/predict`: the status and the body's text.
pub fn post(base: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut response =
        agent().post(format!("{base}/api/predict")).header("Content-Type", content_type).send(body).unwrap();
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

pub fn get(base: &str, path: &str) -> (u16, String, String) {
    let mut response = agent().get(format!("{base}{path}")).call().unwrap();
    let kind = response.headers().get("content-type").map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), kind, response.body_mut().read_to_string().unwrap())
}

/// Sends raw bytes and reads the answer until the server closes.
pub fn raw(base: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}
