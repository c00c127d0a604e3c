//! Hostile clients for `cargo xtask loadtest --attack`: they run beside the good clients for
//! the whole load and count what the server did with them.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use testkit::hostile;

use crate::loadtest::Connection;

/// What the hostile clients did, and what the server did with them.
#[derive(Debug, Clone, Default)]
pub struct AttackReport {
    /// Slow bodies held open at once.
    pub slow_clients: usize,
    /// Slow bodies the server cut off (its body deadline), each then replaced by a new one.
    pub slow_cut: usize,
    /// Decompression bombs sent, one after another.
    pub bombs: usize,
    /// Bombs refused with a 400, as they must be.
    pub bombs_refused: usize,
    /// Expensive requests sent and abandoned at once.
    pub abandoned: usize,
    /// Connections that asked for large answers and never read them, four at a time.
    pub non_readers: usize,
    /// Of those, the ones the server disconnected (its write deadline).
    pub non_readers_cut: usize,
}

impl std::fmt::Display for AttackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| attack | sent | what the server did |")?;
        writeln!(f, "|---|---|---|")?;
        writeln!(
            f,
            "| slow bodies, a byte a second | {} held open | {} cut off at the body deadline |",
            self.slow_clients, self.slow_cut
        )?;
        writeln!(f, "| decompression bombs | {} | {} refused with 400 |", self.bombs, self.bombs_refused)?;
        writeln!(
            f,
            "| expensive requests abandoned at once | {} | dropped or run; see the good requests' p99 |",
            self.abandoned
        )?;
        writeln!(
            f,
            "| clients that never read their answers | {} ({NON_READERS} at a time, for 12 s each) | {} disconnected at the write deadline; the last {NON_READERS} were still within it at the end |",
            self.non_readers, self.non_readers_cut
        )
    }
}

/// The hostile clients, running until the load's stop flag is set.
pub struct Attack {
    slow: JoinHandle<(usize, usize)>,
    bombs: JoinHandle<(usize, usize)>,
    abandoned: JoinHandle<usize>,
    non_readers: JoinHandle<(usize, usize)>,
}

impl Attack {
    /// How the load test's report describes them.
    pub const DESCRIPTION: &str = " Under attack, meanwhile: 300 connections each announce a 100 kB body \
        and send a byte a second (replaced when the server cuts one off); one client sends decompression \
        bombs back to back (a 400 MiB colour profile in a PNG, 32 MiB of 16-bit pixels in 32 KB, a JPEG \
        of 100 scans); one sends 20 such 32 KB PNGs every 100 ms and closes each connection at once; and \
        4 connections ask for 256-image answers (about 1.3 MB each) and never read them, replaced when \
        the server disconnects them.";

    /// Starts every hostile client against `addr`; they stop when `stop` is set.
    pub fn start(addr: &str, stop: &Arc<AtomicBool>) -> Self {
        let spawn = |f: fn(&str, &AtomicBool) -> _| {
            let (addr, stop) = (addr.to_owned(), Arc::clone(stop));
            std::thread::spawn(move || f(&addr, &stop))
        };
        Self {
            slow: spawn(slow_bodies),
            bombs: spawn(bombs),
            abandoned: std::thread::spawn({
                let (addr, stop) = (addr.to_owned(), Arc::clone(stop));
                move || abandoned(&addr, &stop)
            }),
            non_readers: spawn(non_readers),
        }
    }

    /// Waits for the clients (after the stop flag is set) and returns what they counted.
    ///
    /// # Errors
    /// A client panicked.
    pub fn finish(self) -> Result<AttackReport> {
        let join = |e| anyhow::anyhow!("a hostile client panicked: {e:?}");
        let (slow_clients, slow_cut) = self.slow.join().map_err(join)?;
        let (bombs, bombs_refused) = self.bombs.join().map_err(join)?;
        let abandoned = self.abandoned.join().map_err(join)?;
        let (non_readers, non_readers_cut) = self.non_readers.join().map_err(join)?;
        Ok(AttackReport { slow_clients, slow_cut, bombs, bombs_refused, abandoned, non_readers, non_readers_cut })
    }
}

const SLOW_CLIENTS: usize = 300;

/// A connection that has sent a prediction's headers, announcing 100 kB it will not send.
fn slow_body(addr: &str) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(addr).ok()?;
    let head = "POST /api/predict HTTP/1.1\r\nHost: attack\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
    stream.write_all(head.as_bytes()).ok()?;
    Some(stream)
}

/// Holds [`SLOW_CLIENTS`] slow bodies open, a byte a second each; returns how many were held
/// and how many the server cut off.
fn slow_bodies(addr: &str, stop: &AtomicBool) -> (usize, usize) {
    let mut streams: Vec<Option<TcpStream>> = (0..SLOW_CLIENTS).map(|_| slow_body(addr)).collect();
    let mut cut = 0;
    while !stop.load(Ordering::Relaxed) {
        for stream in &mut streams {
            // A write fails once the server has closed the connection (after its 408).
            if stream.as_mut().is_none_or(|s| s.write_all(b" ").is_err()) {
                cut += usize::from(stream.is_some());
                *stream = slow_body(addr);
            }
        }
        sleep_unless_stopped(Duration::from_secs(1), stop);
    }
    (SLOW_CLIENTS, cut)
}

/// Sends decompression bombs back to back on a keep-alive connection; returns how many were
/// sent and how many were refused with a 400.
fn bombs(addr: &str, stop: &AtomicBool) -> (usize, usize) {
    let bombs = [
        ("image/png", hostile::png_profile_bomb(400 << 20)),
        ("image/png", hostile::png_large(2048, 1 << 20)),
        ("image/jpeg", hostile::jpeg_many_scans(2048, 100)),
    ];
    let mut conn = Connection::new(addr);
    let (mut sent, mut refused) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let (kind, body) = &bombs[sent % bombs.len()];
        sent += 1;
        refused += usize::from(matches!(conn.post(kind, body), Ok(400)));
    }
    (sent, refused)
}

/// Every 100 ms, 20 expensive requests sent whole, their connections closed at once; returns
/// how many were sent.
fn abandoned(addr: &str, stop: &AtomicBool) -> usize {
    let body = hostile::png_large(2048, 1 << 20);
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: attack\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut sent = 0;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..20 {
            if let Ok(mut stream) = TcpStream::connect(addr) {
                let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
                sent += 1;
            }
        }
        sleep_unless_stopped(Duration::from_millis(100), stop);
    }
    sent
}

const NON_READERS: usize = 4;

/// A connection that asks for four 256-image answers and reads none: the requests go out from
/// a thread of their own, which stops once the server stops reading.
fn non_reader(addr: &str) -> Option<TcpStream> {
    let stream = TcpStream::connect(addr).ok()?;
    let body = format!("{{\"images\":[{}]}}", vec![format!("[{}]", vec!["0.123456"; 784].join(",")); 256].join(","));
    let request = format!(
        "POST /api/predict HTTP/1.1\r\nHost: attack\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut writer = stream.try_clone().ok()?;
    writer.set_write_timeout(Some(Duration::from_secs(30))).ok()?;
    std::thread::spawn(move || (0..4).try_for_each(|_| writer.write_all(request.as_bytes())));
    Some(stream)
}

/// Keeps [`NON_READERS`] connections that never read; returns how many were opened in all
/// and how many the server disconnected.
fn non_readers(addr: &str, stop: &AtomicBool) -> (usize, usize) {
    // Longer than the server's write deadline (10 s): by then it should have given up.
    const PATIENCE: Duration = Duration::from_secs(12);
    let mut streams: Vec<(Option<TcpStream>, Instant)> =
        (0..NON_READERS).map(|_| (non_reader(addr), Instant::now())).collect();
    let (mut opened, mut cut) = (NON_READERS, 0);
    while !stop.load(Ordering::Relaxed) {
        sleep_unless_stopped(Duration::from_millis(500), stop);
        for (stream, since) in &mut streams {
            if stream.is_some() && since.elapsed() < PATIENCE {
                continue;
            }
            // What the socket holds, then the end if the server has closed the connection,
            // or a wait (the server still holding it, now writing the rest) if not.
            if let Some(mut s) = stream.take() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let ended = match std::io::copy(&mut s, &mut std::io::sink()) {
                    Ok(_) => true,
                    Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                };
                cut += usize::from(ended);
            }
            *stream = non_reader(addr);
            *since = Instant::now();
            opened += 1;
        }
    }
    (opened, cut)
}

fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
}
