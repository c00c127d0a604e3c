//! Running the `mnist` program, and the small synthetic data set most tests train on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

pub(crate) fn program() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mnist-e2e"))
}

pub(crate) fn run(args: &[&str]) -> Output {
    program().args(args).output().expect("the program starts")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A failure: non-zero exit with `code`, one line on stderr starting `error: ` and containing
/// `needle`, no panic, nothing on stdout.
pub(crate) fn assert_fails(args: &[&str], code: i32, needle: &str) {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: not one line: {stderr}");
    let parts: Vec<&str> = stderr.trim_end().split(": ").collect();
    assert!(parts.windows(2).all(|w| w[0] != w[1]), "{args:?}: a cause said twice: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: printed {}", text(&out.stdout));
}

/// The test accuracy a run printed, in percent.
pub(crate) fn test_accuracy(stdout: &str) -> f64 {
    let line =
        stdout.lines().find(|l| l.starts_with("Test Accuracy: ")).unwrap_or_else(|| panic!("no accuracy in {stdout}"));
    line["Test Accuracy: ".len()..].trim_end_matches('%').parse().unwrap()
}

/// A folder holding a synthetic data set in MNIST's layout, with MNIST's image size: 28x28,
/// 10 classes, 1,200 training and 300 test images. It lives as long as the test process.
pub(crate) fn synthetic_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        testkit::Synthetic { rows: 28, cols: 28, classes: 10, train: 1200, test: 300, seed: 7 }.write(dir.path());
        dir
    })
    .path()
}

/// Runs `mnist train` with `args` on the synthetic set and returns the output, asserting
/// success.
pub(crate) fn train_synthetic(args: &[&str]) -> Output {
    let mut all = vec!["train", "--data-dir", arg(synthetic_dir())];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(out.status.success(), "train {args:?} failed: {}", text(&out.stderr));
    out
}

/// One training run on the synthetic set shared by the tests that need a model and its
/// outputs: two epochs, with every output asked for.
pub(crate) struct Trained {
    _dir: tempfile::TempDir,
    pub(crate) model: PathBuf,
    pub(crate) checkpoint: PathBuf,
    pub(crate) plots: PathBuf,
    pub(crate) csv: PathBuf,
    pub(crate) summary: PathBuf,
    pub(crate) stdout: String,
}

pub(crate) fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let (model, checkpoint, plots, csv, summary) =
            (p("m.safetensors"), p("run.ckpt"), p("plots"), p("m.csv"), p("summary.json"));
        let out = train_synthetic(&[
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--save",
            arg(&model),
            "--checkpoint",
            arg(&checkpoint),
            "--plots",
            arg(&plots),
            "--metrics-csv",
            arg(&csv),
            "--summary-json",
            arg(&summary),
        ]);
        Trained { _dir: dir, model, checkpoint, plots, csv, summary, stdout: text(&out.stdout) }
    })
}

/// `mnist serve --model <model>` on a port of the system's choosing, killed when dropped.
pub(crate) struct Serving {
    pub(crate) child: Child,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// The connections it accepts at once, as it says when it starts.
    #[allow(dead_code, reason = "the attack tests include this file and use it")]
    pub(crate) connections: usize,
}

impl Serving {
    pub(crate) fn start(model: &Path) -> Self {
        let mut child = program()
            .args(["serve", "--model", arg(model), "--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("{line}"));
        let connections = line
            .split("up to ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no connection limit in {line:?}"));
        Self { url: url.to_owned(), child, connections }
    }

    /// `host:port`.
    #[allow(dead_code, reason = "the attack tests include this file and use it")]
    pub(crate) fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    #[allow(dead_code, reason = "the attack tests include this file and use it")]
    /// A line of the server's `/proc/<pid>/status`, in MiB (Linux only; `VmHWM` is the peak of
    /// resident memory so far, `VmRSS` the current).
    pub(crate) fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field}"));
        line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The open files this process may have, after raising its soft limit to the hard one.
#[cfg(unix)]
#[allow(dead_code, reason = "the attack tests include this file and use it")]
pub(crate) fn raise_open_files_limit() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given, which lives on this stack.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit reads the struct it is given; a refusal leaves the limit as it was.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        limit = raised;
    }
    usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
}
