//! `mnist serve`, the program as shipped with its default limits, against hostile clients on
//! loopback: slow bodies from more clients than there are places, decompression bombs with
//! the server's memory read from `/proc`, hundreds of expensive requests abandoned at once,
//! and Ctrl-C while a client refuses to read. Each attack is bounded in clients and time.
//!
//! A test binary of its own, and one attack at a time: the bounds are on time, so no other
//! test may share the two cores meanwhile (cargo runs test binaries one after another).
#![cfg(target_os = "linux")]

#[allow(dead_code, reason = "the end-to-end tests' helpers; these use a few")]
#[path = "../e2e/support.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use testkit::hostile;

use crate::support::{Serving, trained};

/// Held by each attack for its whole run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends a prediction on a fresh connection and reads the answer: its status and how long
/// it took.
fn predict(server: &Serving, content_type: &str, body: &[u8]) -> (u16, Duration) {
    predict_at(server.addr(), content_type, body)
}

/// [`predict`] to the server at `addr` (`host:port`).
fn predict_at(addr: &str, content_type: &str, body: &[u8]) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, started.elapsed())
}

fn get(server: &Serving, path: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, started.elapsed())
}

/// A server warmed by 20 good predictions, and its peak memory then (MiB).
fn warmed_server() -> (Serving, f64) {
    let server = Serving::start(&trained().model);
    for _ in 0..20 {
        assert_eq!(predict(&server, "application/json", &good_pixels()).0, 200);
    }
    let idle = server.memory_mib("VmHWM:");
    (server, idle)
}

fn good_pixels() -> Vec<u8> {
    let pixels: Vec<u32> =
        (0..784).map(|i| if (i % 28) / 2 == 7 && (5..24).contains(&(i / 28)) { 255 } else { 0 }).collect();
    format!("{{\"pixels\":{pixels:?}}}").into_bytes()
}

/// What one request may add to the server's peak memory with the default limits: the body
/// (2 MiB) and decoding (twice the 32 MiB decoding limit, plus 4 MiB), as the README states.
const PER_REQUEST_MIB: f64 = 2.0 + 2.0 * 32.0 + 4.0;

#[test]
fn slow_bodies_from_more_clients_than_places_delay_nothing() {
    let _turn = one_at_a_time();
    let server = Serving::start(&trained().model);
    // More than the 256 predictions in flight, each announcing 100 kB and sending a byte.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr()).unwrap();
            let head = "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    for second in 0..3 {
        // A byte a second from each.
        for stream in &mut slow {
            stream.write_all(b" ").unwrap();
        }
        let (health, health_took) = get(&server, "/healthz");
        let (page, page_took) = get(&server, "/");
        let (good, good_took) = predict(&server, "application/json", &good_pixels());
        assert_eq!((health, page, good), (200, 200, 200), "second {second}");
        for (what, took) in [("/healthz", health_took), ("/", page_took), ("a prediction", good_took)] {
            assert!(took < Duration::from_secs(1), "{what} took {took:?} beside 300 slow bodies");
        }
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(health_took + page_took + good_took));
    }
}

#[test]
fn more_slow_header_senders_than_connections_delay_nothing() {
    let _turn = one_at_a_time();
    let own_limit = crate::support::raise_open_files_limit();
    let server = Serving::start(&trained().model);
    // More than the server's connections (1,024, or fewer where the system allows fewer open
    // files), each sending its headers a line a second (a classic slowloris): the server makes
    // way for new clients by closing the idlest.
    let attackers = (server.connections + 76).min(own_limit.saturating_sub(32));
    let mut slow: Vec<TcpStream> = (0..attackers)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(server.addr()).ok()?;
            stream.write_all(b"GET /healthz HTTP/1.1\r\n").ok()?;
            Some(stream)
        })
        .collect();
    assert!(slow.len() > server.connections, "only {} connections opened, for {}", slow.len(), server.connections);
    for second in 0..3 {
        for stream in &mut slow {
            let _ = stream.write_all(b"X-Slow: 1\r\n");
        }
        let (health, health_took) = get(&server, "/healthz");
        let (good, good_took) = predict(&server, "application/json", &good_pixels());
        assert_eq!((health, good), (200, 200), "second {second}");
        for (what, took) in [("/healthz", health_took), ("a prediction", good_took)] {
            assert!(took < Duration::from_secs(1), "{what} took {took:?} beside {attackers} slow header senders");
        }
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(health_took + good_took));
    }
}

#[test]
fn decompression_bombs_cost_the_server_a_bounded_amount_of_memory() {
    let _turn = one_at_a_time();
    let (server, idle) = warmed_server();
    let bombs = [
        ("a colour profile (iCCP) of 400 MiB", hostile::png_profile_bomb(400 << 20), "image/png"),
        ("a compressed text (zTXt) of 400 MiB", hostile::png_text_bomb(400 << 20), "image/png"),
        ("an international text (iTXt) of 400 MiB", hostile::png_international_text_bomb(400 << 20), "image/png"),
        ("2048x2048 16-bit RGBA in 32 KB", hostile::png_large(2048, 1 << 20), "image/png"),
        ("the same in 16-byte IDAT chunks", hostile::png_large(2048, 16), "image/png"),
        ("a 2048x2048 JPEG of 100 scans", hostile::jpeg_many_scans(2048, 100), "image/jpeg"),
        ("a 2048x2048 JPEG of 5000 scans", hostile::jpeg_many_scans(2048, 5000), "image/jpeg"),
    ];
    // One at a time: each refused (none holds a digit), none beyond one request's bound.
    for (what, body, kind) in &bombs {
        let (status, took) = predict(&server, kind, body);
        let peak = server.memory_mib("VmHWM:") - idle;
        eprintln!("{what}: {status} in {took:?}, peak {peak:.0} MiB above idle");
        assert_eq!(status, 400, "{what}");
        assert!(peak <= PER_REQUEST_MIB, "{what}: the server's peak grew {peak:.0} MiB");
    }
    // Many at once: the workers (one per core) bound what is decoded together; the others
    // wait with only their bodies.
    let workers = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let burst: Vec<_> = (0..16)
        .map(|i| {
            let (body, kind) = (bombs[i % bombs.len()].1.clone(), bombs[i % bombs.len()].2);
            let addr = server.addr().to_owned();
            std::thread::spawn(move || predict_at(&addr, kind, &body).0)
        })
        .collect();
    for status in burst {
        assert_eq!(status.join().unwrap(), 400);
    }
    let peak = server.memory_mib("VmHWM:") - idle;
    let bound = workers * PER_REQUEST_MIB + 16.0 * 2.0;
    eprintln!("16 bombs at once on {workers} workers: peak {peak:.0} MiB above idle (bound {bound:.0})");
    assert!(peak <= bound, "16 bombs at once: the server's peak grew {peak:.0} MiB, beyond {bound:.0}");
}

#[test]
fn a_body_sent_a_byte_at_a_time_costs_what_it_sends() {
    let _turn = one_at_a_time();
    let (server, idle) = warmed_server();
    // 100 kB, each byte its own segment: hyper reads each into a buffer of its own.
    let length = 100_000;
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_nodelay(true).unwrap();
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    for _ in 0..length {
        if stream.write_all(b" ").is_err() {
            break;
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let peak = server.memory_mib("VmHWM:") - idle;
    eprintln!("100 kB sent a byte at a time: {}, peak {peak:.0} MiB above idle", answer.lines().next().unwrap_or(""));
    assert!(answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(peak <= 8.0, "a 100 kB body sent a byte at a time grew the server's peak by {peak:.0} MiB");
}

#[test]
fn hundreds_of_abandoned_expensive_requests_do_not_delay_the_next_good_one() {
    let _turn = one_at_a_time();
    let server = Serving::start(&trained().model);
    // 32 KB each, 32 MiB of pixels to decode: sent whole, then the client is gone.
    let expensive = hostile::png_large(2048, 1 << 20);
    let head = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {}\r\n\r\n",
        expensive.len()
    );
    for _ in 0..400 {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&expensive).unwrap();
    }
    let (status, took) = predict(&server, "application/json", &good_pixels());
    eprintln!("a good request after 400 abandoned ones: {status} in {took:?}");
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "the good request took {took:?} after 400 abandoned ones");
}

#[test]
fn ctrl_c_stops_the_server_in_bounded_time_while_a_client_refuses_to_read() {
    let _turn = one_at_a_time();
    let mut server = Serving::start(&trained().model);
    // Four large answers (256 images each) asked for, none read.
    let client = TcpStream::connect(server.addr()).unwrap();
    let body = serde_json::json!({ "images": vec![vec![0.123_456; 784]; 256] }).to_string();
    let request = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut writer = client.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::spawn(move || (0..4).try_for_each(|_| writer.write_all(request.as_bytes())));
    let _slow = {
        let mut stream = TcpStream::connect(server.addr()).unwrap();
        stream
            .write_all(
                b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 9999\r\n\r\n",
            )
            .unwrap();
        stream
    };
    std::thread::sleep(Duration::from_secs(1));
    let pid = server.child.id().to_string();
    let asked = Instant::now();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    // The README's bound: the request timeout, 10 s.
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(12), "still running {:?} after Ctrl-C", asked.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    drop(client);
}
