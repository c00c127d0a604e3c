//! The server against clients that mean it harm, on loopback, with limits small enough for
//! the attacks to finish in seconds: slow bodies, more predictions than places, clients that
//! never read their answers, and Ctrl-C while they hang on.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serve::{ErrorBody, Limits};
use support::{get, post, start, start_stoppable};

fn addr(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// A connection that sends a prediction's headers, announcing `length` bytes, and `sent` of
/// them, then stalls.
fn stalled_body(base: &str, length: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr(base)).unwrap();
    write!(
        stream,
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&vec![b' '; sent]).unwrap();
    stream
}

fn good_pixels() -> Vec<u8> {
    serde_json::json!({ "pixels": vec![0.25; 784] }).to_string().into_bytes()
}

#[test]
fn slow_bodies_from_more_clients_than_places_hold_up_nothing() {
    let base = start(Limits { queue: 8, workers: 1, ..Limits::default() });
    let slow: Vec<TcpStream> = (0..40).map(|_| stalled_body(&base, 100_000, 1)).collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(get(&base, "/healthz").0, 200);
        assert_eq!(get(&base, "/").0, 200);
        assert_eq!(post(&base, "application/json", &good_pixels()).0, 200);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "answered in {took:?} beside {} slow bodies", slow.len());
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let base = start(Limits { body_timeout: Duration::from_millis(300), ..Limits::default() });
    let mut stalled = stalled_body(&base, 1000, 10);
    let started = Instant::now();
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("{\"error\":\"the body did not arrive within 300ms\"}"), "{answer}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(3), "answered after {took:?}");
}

#[test]
fn a_chunked_body_beyond_the_limit_gets_413() {
    // No Content-Length to refuse it up front: counted as it arrives.
    let base = start(Limits { body_bytes: 10_000, ..Limits::default() });
    let chunk = format!("1000\r\n{}\r\n", " ".repeat(0x1000));
    let request = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(4)
    );
    let answer = support::raw(&base, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("larger than the 10000 bytes accepted"), "{answer}");
}

#[test]
fn predictions_beyond_the_queue_get_a_quick_503_with_retry_after() {
    let base = start(Limits { queue: 1, workers: 1, ..Limits::default() });
    // Each takes a worker for a while (32 MiB of pixels to decode, blank in the end).
    let expensive = testkit::hostile::png_large(2048, 1 << 20);
    let answers: Vec<_> = (0..6)
        .map(|_| {
            let (base, body) = (base.clone(), expensive.clone());
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut response = support::agent()
                    .post(format!("{base}/api/predict"))
                    .header("Content-Type", "image/png")
                    .send(&body[..])
                    .unwrap();
                let retry = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (response.status().as_u16(), retry, response.body_mut().read_to_string().unwrap(), started.elapsed())
            })
        })
        .collect();
    let answers: Vec<_> = answers.into_iter().map(|t| t.join().unwrap()).collect();
    let busy: Vec<_> = answers.iter().filter(|a| a.0 == 503).collect();
    assert!(!busy.is_empty() && busy.len() < answers.len(), "{answers:?}");
    for (_, retry, body, took) in &busy {
        assert_eq!(retry.as_deref(), Some("1"));
        let error: ErrorBody = serde_json::from_str(body).unwrap();
        assert!(error.error.contains("1 predictions are waiting already"), "{}", error.error);
        assert!(*took < Duration::from_secs(1), "refused after {took:?}");
    }
    // The others were decoded: blank images.
    assert!(answers.iter().all(|a| a.0 == 503 || a.0 == 400), "{answers:?}");
}

/// A connection that asks for `requests` large answers (256 images each, about 1.3 MB of
/// JSON) and never reads them.
fn never_reads(base: &str, requests: usize) -> TcpStream {
    let stream = TcpStream::connect(addr(base)).unwrap();
    let body = serde_json::json!({ "images": vec![vec![0.123_456; 784]; 256] }).to_string();
    let request = format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut writer = stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // On a thread of its own: once the server stops reading, so does this.
    std::thread::spawn(move || {
        for _ in 0..requests {
            if writer.write_all(request.as_bytes()).is_err() {
                break;
            }
        }
    });
    stream
}

#[test]
fn a_client_that_never_reads_its_answers_is_disconnected() {
    let base = start(Limits { write_timeout: Duration::from_millis(500), ..Limits::default() });
    let mut client = never_reads(&base, 4);
    std::thread::sleep(Duration::from_secs(3));
    // By now the server has given up on it: reading finds what the socket buffers held, then
    // the end, not all four answers.
    client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let end = client.read_to_end(&mut got);
    assert!(
        !matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "still connected: {end:?} after {} bytes",
        got.len()
    );
    let answers = got.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    assert!(answers < 4, "{answers} answers, {} bytes", got.len());
    // Meanwhile, and after, everyone else is served.
    assert_eq!(post(&base, "application/json", &good_pixels()).0, 200);
}

#[test]
fn stopping_takes_at_most_the_request_timeout_whatever_clients_do() {
    let timeout = Duration::from_secs(1);
    let limits = Limits { timeout, write_timeout: Duration::from_secs(60), ..Limits::default() };
    let (base, running) = start_stoppable(limits);
    let _client = never_reads(&base, 4);
    let _slow = stalled_body(&base, 100_000, 1);
    let _idle = TcpStream::connect(addr(&base)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let took = running.stop(Duration::from_secs(10));
    assert!(took.is_some_and(|t| t < timeout + Duration::from_millis(500)), "stopped after {took:?}");
}

#[test]
fn a_flood_of_expensive_predictions_gets_503s_not_timeouts() {
    // One worker, a 2 s deadline and room in the queue for far more than it can do in time:
    // the queue takes on at most a second's work (half the deadline), so what it takes is
    // answered in time and the rest is refused at once.
    let timeout = Duration::from_secs(2);
    let base = start(Limits { workers: 1, queue: 256, timeout, ..Limits::default() });
    let expensive = testkit::hostile::png_large(2048, 1 << 20);
    // The server learns what a prediction costs from those it runs: one first.
    assert_eq!(post(&base, "image/png", &expensive).0, 400);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood: Vec<_> = (0..24)
        .map(|_| {
            let (base, body, stop) = (base.clone(), expensive.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.push(post(&base, "image/png", &body).0);
                }
                statuses
            })
        })
        .collect();
    let mut good = Vec::new();
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let (status, _) = post(&base, "application/json", &good_pixels());
        good.push((status, started.elapsed()));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let flooded: Vec<u16> = flood.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let count = |status: u16| flooded.iter().filter(|&&s| s == status).count();
    let counts = [400, 408, 503].map(|s| (s, count(s)));
    eprintln!("the flood's answers: {counts:?}; the good requests': {good:?}");
    // The queue takes on what it expects to finish in time, at the recent cost of a
    // prediction; under this much contention a few of those may still run late, but most of
    // what it takes is answered and the rest is refused at once.
    assert!(count(503) > 0 && count(400) > count(408), "{counts:?}");
    for (status, took) in &good {
        match status {
            200 => assert!(*took < timeout, "answered after {took:?}"),
            503 => assert!(*took < Duration::from_millis(500), "refused after {took:?}"),
            other => panic!("a good request got {other} after {took:?}: {good:?}"),
        }
    }
    // Once the flood is over, predictions are taken again (the time per prediction, high
    // from the flood, must not keep the queue closed).
    std::thread::sleep(timeout);
    assert_eq!(post(&base, "application/json", &good_pixels()).0, 200);
}

#[test]
fn one_costly_prediction_does_not_close_the_queue() {
    // Decoding 32 MiB of pixels takes one worker longer than half a 100 ms deadline (the
    // request times out; the work's time is measured all the same); the next requests must
    // still be taken when the worker is free.
    let timeout = Duration::from_millis(100);
    let base = start(Limits { workers: 1, timeout, ..Limits::default() });
    let costly = testkit::hostile::png_large(2048, 1 << 20);
    for _ in 0..2 {
        post(&base, "image/png", &costly);
    }
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        let (status, text) = post(&base, "application/json", &good_pixels());
        assert_eq!(status, 200, "{text}");
    }
}

#[test]
fn bodies_beyond_the_bytes_held_at_once_get_503() {
    let base = start(Limits { bodies_bytes: 200_000, ..Limits::default() });
    // The budget counts buffers as they grow (doubling from 64 KiB): one body of 80 kB holds
    // 128 KiB of the 200 kB while it stalls; another that grows past 64 KiB would pass the total
    // and is refused at once.
    let _holding = stalled_body(&base, 200_000, 80_000);
    std::thread::sleep(Duration::from_millis(200));
    let mut second = stalled_body(&base, 200_000, 70_000);
    second.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{answer}");
    assert!(answer.contains("the bodies it holds would exceed 200000 bytes"), "{answer}");
    // Small ones still fit.
    assert_eq!(post(&base, "application/json", &good_pixels()).0, 200);
}
