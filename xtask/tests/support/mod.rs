//! A loopback HTTP server that serves a folder, or misbehaves on purpose.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

/// What the server does with every request.
// Each test binary that shares this module uses some of the behaviours.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Serves the files of a folder; 404 for anything else.
    Folder(PathBuf),
    /// Answers every request with this status and an empty body.
    Status(u16),
    /// Serves a valid gzip stream of the wrong bytes.
    WrongBody,
    /// Serves the folder's files with bytes flipped in the middle (a corrupt gzip stream).
    Corrupt(PathBuf),
    /// Sends the headers and half the body of the folder's file, then closes the connection.
    CloseMidway(PathBuf),
    /// Sends the headers and half the body, then stalls without closing.
    Stall(PathBuf),
}

/// Starts a server on 127.0.0.1 with an OS-chosen port and returns its base URL. The server
/// lives until the test process ends.
pub fn serve(behaviour: Behaviour) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let behaviour = behaviour.clone();
            thread::spawn(move || {
                let _ = handle(stream, &behaviour);
            });
        }
    });
    format!("http://{addr}/")
}

fn handle(mut stream: TcpStream, behaviour: &Behaviour) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let name = request_line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
    let read_file = |dir: &PathBuf| std::fs::read(dir.join(&name)).ok();
    let (status, body, cut) = match behaviour {
        Behaviour::Status(code) => (*code, Vec::new(), None),
        Behaviour::WrongBody => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(b"these are not the bytes you are looking for")?;
            (200, enc.finish()?, None)
        }
        Behaviour::Folder(dir) => match read_file(dir) {
            Some(body) => (200, body, None),
            None => (404, Vec::new(), None),
        },
        Behaviour::Corrupt(dir) => match read_file(dir) {
            Some(mut body) => {
                let mid = body.len() / 2;
                let end = (mid + 64).min(body.len());
                body[mid..end].iter_mut().for_each(|b| *b ^= 0x5a);
                (200, body, None)
            }
            None => (404, Vec::new(), None),
        },
        Behaviour::CloseMidway(dir) | Behaviour::Stall(dir) => match read_file(dir) {
            Some(body) => {
                let half = body.len() / 2;
                (200, body, Some(half))
            }
            None => (404, Vec::new(), None),
        },
    };
    write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    let sent = cut.unwrap_or(body.len());
    stream.write_all(&body[..sent])?;
    stream.flush()?;
    if matches!(behaviour, Behaviour::Stall(_)) {
        thread::sleep(Duration::from_secs(600));
    }
    Ok(())
}
