//! `cargo xtask loadtest`: `mnist serve` under load on loopback. Clients keep their
//! connections alive and send single-image JSON predictions as fast as the server answers,
//! for a bounded time; some of them also send malformed and oversized requests, which must
//! get their 4xx while the good ones keep succeeding. Reports requests/s, latency
//! percentiles, errors and the server's resident memory before and after.
//!
//! With `--attack`, hostile clients run during the load (see [`Attack`]), and the report says
//! what they did and what the good requests' latencies were meanwhile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::attack::{Attack, AttackReport};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `mnist` program.
    pub program: PathBuf,
    /// The model to serve.
    pub model: PathBuf,
    /// Concurrent clients.
    pub clients: usize,
    /// How long to send.
    pub duration: Duration,
    /// Whether hostile clients run during the load.
    pub attack: bool,
}

/// What the load test measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Concurrent clients.
    pub clients: usize,
    /// Seconds of load.
    pub seconds: f64,
    /// Good requests answered 200.
    pub ok: usize,
    /// Bad requests answered with the expected 4xx.
    pub refused: usize,
    /// Anything else: wrong statuses, broken connections.
    pub errors: usize,
    /// Good requests per second.
    pub per_second: f64,
    /// Median latency of good requests, ms.
    pub p50_ms: f64,
    /// 99th percentile latency of good requests, ms.
    pub p99_ms: f64,
    /// The server's resident memory a fifth into the load, MB.
    pub rss_before_mb: f64,
    /// The server's resident memory at the end, MB.
    pub rss_after_mb: f64,
    /// The server's peak resident memory, MB.
    pub peak_rss_mb: f64,
    /// What the hostile clients did, when there were any.
    pub attack: Option<AttackReport>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| clients | seconds | predictions/s | p50 (ms) | p99 (ms) | good | bad, refused as expected | errors | server RSS at 1/5 and at the end, peak (MB) |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|")?;
        writeln!(
            f,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.0}, {:.0}, {:.0} |",
            self.clients,
            self.seconds,
            self.per_second,
            self.p50_ms,
            self.p99_ms,
            self.ok,
            self.refused,
            self.errors,
            self.rss_before_mb,
            self.rss_after_mb,
            self.peak_rss_mb
        )?;
        if let Some(attack) = &self.attack {
            writeln!(f, "\n{attack}")?;
        }
        Ok(())
    }
}

/// The server process, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(program: &Path, model: &Path) -> Result<Self> {
        let mut child = Command::new(program)
            .args(["serve", "--model"])
            .arg(model)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .with_context(|| format!("the server did not say where it listens: {line:?}"))?
            .to_owned();
        Ok(Self { child, addr })
    }

    /// Resident memory in MB, from /proc (NaN elsewhere).
    fn rss_mb(&self) -> f64 {
        self.memory_mb("VmRSS:")
    }

    /// `field` of /proc's status (`VmRSS:` now, `VmHWM:` the peak) in MB (NaN elsewhere).
    fn memory_mb(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with(field))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

/// One keep-alive connection speaking just enough HTTP/1.1.
pub(crate) struct Connection {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// A connection to `addr`, made at the first request.
    pub(crate) fn new(addr: &str) -> Self {
        Self { addr: addr.to_owned(), stream: None }
    }

    /// Sends a POST to /api/predict and returns the status, reconnecting when the server has
    /// closed the connection (as it does after refusing an oversized body).
    pub(crate) fn post(&mut self, content_type: &str, body: &[u8]) -> std::io::Result<u16> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(BufReader::new(stream));
        }
        let result = self.exchange(content_type, body);
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(status, _)| status)
    }

    /// The status, and whether the connection stays open.
    fn exchange(&mut self, content_type: &str, body: &[u8]) -> std::io::Result<(u16, bool)> {
        let stream = self.stream.as_mut().expect("connected");
        let head = format!(
            "POST /api/predict HTTP/1.1\r\nHost: loadtest\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.get_mut().write_all(head.as_bytes())?;
        // An oversized body may be refused before it is all sent; the answer still comes.
        let _ = stream.get_mut().write_all(body);
        let mut line = String::new();
        stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut keep) = (0usize, true);
        loop {
            line.clear();
            stream.read_line(&mut line)?;
            let header = line.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().map_err(std::io::Error::other)?;
            }
            if header == "connection: close" {
                keep = false;
            }
        }
        // A refused body was not read to its end: the server closes the connection.
        if status == 413 {
            keep = false;
        }
        let mut sink = vec![0; length];
        stream.read_exact(&mut sink)?;
        Ok((status, keep))
    }
}

/// Runs the load and returns its figures.
///
/// # Errors
/// The server does not start or the clients cannot run.
pub fn run(opts: &Options) -> Result<Report> {
    let server = Server::start(&opts.program, &opts.model)?;
    let good: Arc<Vec<u8>> = Arc::new({
        // A plausible digit: a bar of ink, in 0..255.
        let pixels: Vec<u32> =
            (0..784).map(|i| if (i % 28) / 2 == 7 && i / 28 > 4 && i / 28 < 24 { 255 } else { 0 }).collect();
        format!("{{\"pixels\":{pixels:?}}}").into_bytes()
    });
    // Warm up, then measure memory.
    let mut warm = Connection::new(&server.addr);
    for _ in 0..200 {
        if warm.post("application/json", &good)? != 200 {
            bail!("the server refused a good request while warming up");
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let attackers = opts.attack.then(|| Attack::start(&server.addr, &stop));
    let started = Instant::now();
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| {
            let (addr, good, stop) = (server.addr.clone(), Arc::clone(&good), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = Connection::new(&addr);
                let (mut latencies, mut refused, mut errors) = (Vec::new(), 0usize, 0usize);
                let oversized = vec![b'1'; 3 << 20];
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // One client in eight mixes in a malformed and an oversized request.
                    let bad = (c.is_multiple_of(8) && n.is_multiple_of(50)).then(|| {
                        if n.is_multiple_of(100) { (&oversized[..], 413) } else { (&b"{\"pixels\": [1, 2"[..], 400) }
                    });
                    let t = Instant::now();
                    match bad {
                        Some((body, expected)) => match conn.post("application/json", body) {
                            Ok(s) if s == expected => refused += 1,
                            _ => errors += 1,
                        },
                        None => match conn.post("application/json", &good) {
                            Ok(200) => latencies.push(t.elapsed()),
                            _ => errors += 1,
                        },
                    }
                }
                (latencies, refused, errors)
            })
        })
        .collect();
    // Memory once every client is connected and busy, and again at the end.
    std::thread::sleep(opts.duration / 5);
    let rss_before_mb = server.rss_mb();
    std::thread::sleep(opts.duration - opts.duration / 5);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let (mut refused, mut errors) = (0, 0);
    for client in clients {
        let (l, r, e) = client.join().map_err(|_| anyhow::anyhow!("a client panicked"))?;
        latencies.extend(l);
        refused += r;
        errors += e;
    }
    let seconds = started.elapsed().as_secs_f64();
    let attack = attackers.map(Attack::finish).transpose()?;
    let rss_after_mb = server.rss_mb();
    latencies.sort();
    let percentile = |q: f64| {
        latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Report {
        clients: opts.clients,
        seconds,
        ok: latencies.len(),
        refused,
        errors,
        per_second: latencies.len() as f64 / seconds,
        p50_ms: percentile(0.5),
        p99_ms: percentile(0.99),
        rss_before_mb,
        rss_after_mb,
        peak_rss_mb: server.memory_mb("VmHWM:"),
        attack,
    })
}

/// The BENCHMARKS.md section for `report`.
pub fn section(report: &Report) -> String {
    let (heading, how) = match report.attack {
        Some(_) => ("## Serving under attack", "`cargo xtask loadtest --attack` (also run by `cargo xtask bench`)"),
        None => ("## Serving", "`cargo xtask loadtest` (also run by `cargo xtask bench`)"),
    };
    format!(
        "{heading}\n\n{how}: `mnist serve` with the default MLP, \
         {} clients on loopback, each with a keep-alive connection, sending single-image JSON predictions \
         (784 numbers) as fast as they are answered; one client in eight also sends a malformed request \
         (expecting 400) every 100 requests and a 3 MB body (expecting 413) every 100 more. The load \
         generator runs on the same two cores as the server.{}\n\n{report}",
        report.clients,
        if report.attack.is_some() { Attack::DESCRIPTION } else { "" }
    )
}

/// Replaces the section of the file at `path` that has `section`'s heading (its first line)
/// with `section`, or appends it.
///
/// # Errors
/// The file cannot be read or written.
pub fn update_benchmarks(path: &Path, section: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let heading = section.lines().next().unwrap_or_default();
    let found = text
        .match_indices(heading)
        .map(|(i, _)| i)
        .find(|&i| (i == 0 || text[..i].ends_with('\n')) && text[i + heading.len()..].starts_with('\n'));
    let updated = match found {
        Some(start) => {
            let end = text[start + 1..].find("\n## ").map_or(text.len(), |e| start + 1 + e + 1);
            format!("{}{section}\n{}", &text[..start], &text[end..])
        }
        None => format!("{}\n{section}", text.trim_end_matches('\n').to_owned() + "\n"),
    };
    atomic_file::write(path, |w| w.write_all(updated.as_bytes()))?;
    Ok(())
}
