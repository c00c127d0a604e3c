//! `fetch-data` against loopback mirrors: good, missing, corrupt, and local folders.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::{Behaviour, serve};
use xtask::fetch::{self, FILES, Mirror, Options};

fn options(mirrors: Vec<Mirror>, data_dir: &Path) -> Options {
    let mut opts = Options::new(mirrors, data_dir.to_owned());
    opts.connect_timeout = Duration::from_secs(2);
    opts.read_timeout = Duration::from_secs(2);
    opts
}

fn http(url: String) -> Mirror {
    Mirror::Http(url)
}

/// Every file is present under its final name with the right digest, and no `.part` is left.
fn assert_complete_and_clean(dir: &Path) {
    for f in FILES {
        assert_eq!(fetch::sha256_file(&dir.join(f.name)).unwrap(), f.sha256, "{}", f.name);
    }
    assert_no_partials(dir);
}

fn assert_no_partials(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

#[test]
fn fetches_through_http_and_a_rerun_downloads_nothing() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    let url = serve(Behaviour::Folder(mnist));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nested").join("mnist");
    let opts = options(vec![http(url.clone())], &dir);

    let mut log = Vec::new();
    let first = fetch::fetch(&opts, &mut log).unwrap();
    assert_eq!(first.downloaded.len(), 4, "{}", String::from_utf8_lossy(&log));
    assert!(first.downloaded.iter().all(|(_, m)| *m == url));
    assert_complete_and_clean(&dir);

    let mut log = Vec::new();
    let second = fetch::fetch(&opts, &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(second.downloaded.is_empty());
    assert_eq!(second.present.len(), 4);
    assert!(log.contains("nothing downloaded"), "{log}");
}

#[test]
fn skips_a_404_mirror_and_a_corrupt_one_for_a_good_one() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    let missing = serve(Behaviour::Status(404));
    let wrong = serve(Behaviour::WrongBody);
    let corrupt = serve(Behaviour::Corrupt(mnist.clone()));
    let good = serve(Behaviour::Folder(mnist));
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = vec![http(missing.clone()), http(wrong.clone()), http(corrupt.clone()), http(good.clone())];

    let mut log = Vec::new();
    let summary = fetch::fetch(&options(mirrors, tmp.path()), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(summary.downloaded.iter().all(|(_, m)| *m == good), "{log}");
    assert!(log.contains(&format!("{missing}: HTTP 404")), "{log}");
    assert!(log.contains(&format!("{wrong}: SHA-256 mismatch: expected {}", FILES[0].sha256)), "{log}");
    assert!(log.contains(&format!("{corrupt}: ")), "{log}");
    assert_complete_and_clean(tmp.path());
}

#[test]
fn a_folder_and_a_file_url_are_mirrors_too() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    for spec in [mnist.display().to_string(), format!("file://{}", mnist.display())] {
        let tmp = tempfile::tempdir().unwrap();
        let summary = fetch::fetch(&options(vec![Mirror::parse(&spec).unwrap()], tmp.path()), &mut Vec::new())
            .unwrap_or_else(|e| panic!("{spec}: {e:#}"));
        assert_eq!(summary.downloaded.len(), 4);
        assert_complete_and_clean(tmp.path());
    }
}

#[test]
fn a_file_that_fails_verification_is_replaced() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = vec![Mirror::Dir(mnist)];
    fetch::fetch(&options(mirrors.clone(), tmp.path()), &mut Vec::new()).unwrap();
    std::fs::write(tmp.path().join(FILES[1].name), b"garbage").unwrap();

    let mut log = Vec::new();
    let summary = fetch::fetch(&options(mirrors, tmp.path()), &mut log).unwrap();
    assert_eq!(summary.downloaded.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), [FILES[1].name]);
    assert!(String::from_utf8(log).unwrap().contains("does not match; downloading it again"));
    assert_complete_and_clean(tmp.path());
}

#[test]
fn when_every_mirror_fails_the_error_names_each_and_nothing_is_left() {
    let a = serve(Behaviour::Status(500));
    let b = serve(Behaviour::WrongBody);
    let empty = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = vec![http(a.clone()), http(b.clone()), Mirror::Dir(empty.path().to_owned())];

    let err = fetch::fetch(&options(mirrors, tmp.path()), &mut Vec::new()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.starts_with(&format!("could not fetch {}.gz from any mirror:", FILES[0].name)), "{msg}");
    assert!(msg.contains(&format!("  {a}: HTTP 500")), "{msg}");
    assert!(msg.contains(&format!("  {b}: SHA-256 mismatch")), "{msg}");
    assert!(msg.contains(&format!("  {}: cannot open", empty.path().display())), "{msg}");
    assert!(msg.contains("--mirror"), "{msg}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "nothing may be left behind");
}

#[test]
fn a_mirror_that_closes_midway_or_stalls_is_skipped_in_seconds() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    let closes = serve(Behaviour::CloseMidway(mnist.clone()));
    let stalls = serve(Behaviour::Stall(mnist.clone()));
    let good = serve(Behaviour::Folder(mnist));
    let tmp = tempfile::tempdir().unwrap();
    let mirrors = vec![http(closes.clone()), http(stalls.clone()), http(good.clone())];

    let start = Instant::now();
    let mut log = Vec::new();
    let summary = fetch::fetch(&options(mirrors, tmp.path()), &mut log).unwrap();
    let log = String::from_utf8(log).unwrap();
    assert!(summary.downloaded.iter().all(|(_, m)| *m == good), "{log}");
    assert!(log.contains(&format!("{closes}: ")) && log.contains(&format!("{stalls}: ")), "{log}");
    assert!(log.to_lowercase().contains("timeout") || log.to_lowercase().contains("timed out"), "{log}");
    // Four files, each waiting out one 2 s read timeout on the stalled mirror.
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    assert_complete_and_clean(tmp.path());
}

#[test]
fn a_fetch_killed_part_way_leaves_nothing_that_passes_for_valid_and_the_next_run_completes() {
    use std::process::{Command, Stdio};
    let Some(mnist) = testkit::mnist_dir() else { return };
    let stalls = serve(Behaviour::Stall(mnist.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["fetch-data", "--mirror", &stalls, "--data-dir", tmp.path().to_str().unwrap()])
        .env_remove("MNIST_MIRROR")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the download is under way: its partial file exists.
    let started = Instant::now();
    let partial =
        || std::fs::read_dir(tmp.path()).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".part"));
    while !partial() {
        assert!(started.elapsed() < Duration::from_secs(20), "the download never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup
    child.wait().unwrap();
    for f in FILES {
        assert!(!tmp.path().join(f.name).exists(), "{} exists after the kill", f.name);
    }

    let good = serve(Behaviour::Folder(mnist));
    let summary = fetch::fetch(&options(vec![http(good)], tmp.path()), &mut Vec::new()).unwrap();
    assert_eq!(summary.downloaded.len(), 4);
    assert_complete_and_clean(tmp.path());
}

#[test]
fn force_downloads_verified_files_again() {
    let Some(mnist) = testkit::mnist_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(vec![Mirror::Dir(mnist)], tmp.path());
    fetch::fetch(&opts, &mut Vec::new()).unwrap();
    opts.force = true;
    let summary = fetch::fetch(&opts, &mut Vec::new()).unwrap();
    assert_eq!((summary.downloaded.len(), summary.present.len()), (4, 0));
    assert_complete_and_clean(tmp.path());
}
