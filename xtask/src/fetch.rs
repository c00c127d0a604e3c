//! `cargo xtask fetch-data`: download MNIST's four files from the first mirror that serves them,
//! verify the SHA-256 of each decompressed file, and store it decompressed (the form the `data`
//! crate reads fastest).
//!
//! A file only ever appears under its final name after it verified: it is written to a hidden
//! `.part` file in the same folder and renamed into place (`atomic-file`), and the `.part` files
//! of a fetch that was killed are removed by the next.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flate2::bufread::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

/// Public mirrors, tried after the user's own, in this order: the ones torchvision uses, then
/// the original site (often down).
pub const DEFAULT_MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// The environment variable that lists extra mirrors, separated by whitespace or commas.
pub const MIRROR_ENV: &str = "MNIST_MIRROR";

/// One of MNIST's files: its canonical name (stored without `.gz`) and the SHA-256 of its
/// decompressed bytes. Mirrors compress differently, so only the decompressed digest is stable.
#[derive(Debug, Clone, Copy)]
pub struct MnistFile {
    /// The canonical name, without `.gz`.
    pub name: &'static str,
    /// Lowercase hex SHA-256 of the decompressed file.
    pub sha256: &'static str,
}

/// MNIST's four files, under the names the `data` crate reads.
pub const FILES: [MnistFile; 4] = [
    MnistFile { name: data::TRAIN_IMAGES, sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db" },
    MnistFile { name: data::TRAIN_LABELS, sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5" },
    MnistFile { name: data::TEST_IMAGES, sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7" },
    MnistFile { name: data::TEST_LABELS, sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2" },
];

/// No MNIST file is larger than this compressed, nor decompressed (the largest is 47,040,016
/// bytes): a bound that stops a hostile or broken mirror from filling the disk.
const MAX_FILE_BYTES: u64 = 64 << 20;

/// Where a mirror keeps the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    /// An `http://` or `https://` base URL, ending in `/`.
    Http(String),
    /// A local folder (given as a path or a `file://` URL).
    Dir(PathBuf),
}

impl Mirror {
    /// Parses `http://…`, `https://…`, `file://…` or a plain folder path.
    ///
    /// # Errors
    /// An empty string, or a URL scheme other than those three.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("empty mirror");
        }
        if spec.starts_with("http://") || spec.starts_with("https://") {
            let base = if spec.ends_with('/') { spec.to_owned() } else { format!("{spec}/") };
            return Ok(Self::Http(base));
        }
        if let Some(path) = spec.strip_prefix("file://") {
            if path.is_empty() {
                bail!("mirror {spec:?}: file:// URL without a path");
            }
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = spec.split_once("://") {
            bail!("mirror {spec:?}: unsupported scheme {scheme:?} (use http://, https://, file:// or a folder)");
        }
        Ok(Self::Dir(PathBuf::from(spec)))
    }
}

impl fmt::Display for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http(url) => f.write_str(url),
            Self::Dir(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The mirrors to try, in order: those given as flags, then those in `env` (the value of
/// [`MIRROR_ENV`]), then [`DEFAULT_MIRRORS`].
///
/// # Errors
/// A mirror that does not parse.
pub fn mirror_list(flags: &[String], env: Option<&str>) -> Result<Vec<Mirror>> {
    let from_env = env.into_iter().flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()));
    let user = flags.iter().map(String::as_str).chain(from_env.filter(|s| !s.is_empty()));
    let mut mirrors = user.map(Mirror::parse).collect::<Result<Vec<_>>>()?;
    mirrors.extend(DEFAULT_MIRRORS.iter().map(|m| Mirror::Http((*m).to_owned())));
    Ok(mirrors)
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// Mirrors to try, in order, for each file.
    pub mirrors: Vec<Mirror>,
    /// Where the verified, decompressed files go.
    pub data_dir: PathBuf,
    /// Download even when a verified file is already present.
    pub force: bool,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for any single read from a server: a stalled mirror fails after this.
    pub read_timeout: Duration,
    /// Draw a progress bar per file (on a terminal) instead of plain lines.
    pub progress_bars: bool,
}

impl Options {
    /// Default timeouts and no progress bars.
    pub fn new(mirrors: Vec<Mirror>, data_dir: PathBuf) -> Self {
        Self {
            mirrors,
            data_dir,
            force: false,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            progress_bars: false,
        }
    }
}

/// What a fetch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Files downloaded and verified, each with the mirror that served it.
    pub downloaded: Vec<(&'static str, String)>,
    /// Files already present and verified, left alone.
    pub present: Vec<&'static str>,
}

/// Makes sure the four verified files are in `opts.data_dir`, downloading what is missing,
/// and reports progress as plain lines on `log`.
///
/// # Errors
/// The folder cannot be created or written, or every mirror failed for some file; the error
/// then names each mirror with its failure.
pub fn fetch(opts: &Options, log: &mut dyn Write) -> Result<Summary> {
    let dir = &opts.data_dir;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .http_status_as_error(false)
        .build()
        .into();

    let mut summary = Summary::default();
    for file in FILES {
        let target = dir.join(file.name);
        atomic_file::remove_leftovers(&target);
        if !opts.force && target.exists() {
            if sha256_file(&target)? == file.sha256 {
                writeln!(log, "{}: present and verified, nothing to download", file.name)?;
                summary.present.push(file.name);
                continue;
            }
            writeln!(log, "{}: present but its SHA-256 does not match; downloading it again", file.name)?;
        }
        let mut failures = Vec::new();
        for (i, mirror) in opts.mirrors.iter().enumerate() {
            match download(&agent, mirror, file, dir, opts.progress_bars) {
                Ok(bytes) => {
                    writeln!(log, "{}: {bytes} bytes from {mirror}, SHA-256 verified", file.name)?;
                    summary.downloaded.push((file.name, mirror.to_string()));
                    break;
                }
                Err(err) => {
                    if i + 1 < opts.mirrors.len() {
                        writeln!(log, "{}: {mirror}: {err:#}; trying the next mirror", file.name)?;
                    }
                    failures.push(format!("  {mirror}: {err:#}"));
                }
            }
        }
        if failures.len() == opts.mirrors.len() {
            bail!(
                "could not fetch {} from any mirror:\n{}\nWith a local copy of the four .gz files, run \
                 `cargo xtask fetch-data --mirror /path/to/that/folder` (or set {MIRROR_ENV})",
                file.name,
                failures.join("\n")
            );
        }
    }
    if summary.downloaded.is_empty() {
        writeln!(log, "all {} files present and verified in {}; nothing downloaded", FILES.len(), dir.display())?;
    }
    Ok(summary)
}

/// Downloads one file from one mirror into `dir`, verifies it and renames it into place.
/// Returns the decompressed size. On any failure nothing is left under the final name.
fn download(agent: &ureq::Agent, mirror: &Mirror, file: MnistFile, dir: &Path, bars: bool) -> Result<u64> {
    let (source, len): (Box<dyn Read>, Option<u64>) = match mirror {
        Mirror::Http(base) => {
            let url = format!("{base}{}.gz", file.name);
            let response = agent.get(&url).call()?;
            let status = response.status();
            if status != 200 {
                bail!("HTTP {status}");
            }
            let len = response.body().content_length();
            (Box::new(response.into_body().into_with_config().limit(MAX_FILE_BYTES).reader()), len)
        }
        Mirror::Dir(folder) => {
            let gz = folder.join(format!("{}.gz", file.name));
            let path = if gz.exists() { gz } else { folder.join(file.name) };
            let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let len = f.metadata()?.len();
            (Box::new(f), Some(len))
        }
    };
    let bar = progress_bar(file.name, len, bars);
    let mut reader = BufReader::new(bar.wrap_read(source));
    let is_gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let decoded: Box<dyn Read> = if is_gzip { Box::new(MultiGzDecoder::new(reader)) } else { Box::new(reader) };

    let target = dir.join(file.name);
    let mut part = atomic_file::AtomicFile::create(&target)?;
    let (bytes, digest) = copy_hashing(decoded.take(MAX_FILE_BYTES + 1), part.file())?;
    bar.finish_and_clear();
    if bytes > MAX_FILE_BYTES {
        bail!("more than {MAX_FILE_BYTES} bytes once decompressed: not an MNIST file");
    }
    if digest != file.sha256 {
        bail!("SHA-256 mismatch: expected {}, got {digest}", file.sha256);
    }
    part.commit()?;
    Ok(bytes)
}

/// Copies `reader` to `out` and returns the byte count and lowercase hex SHA-256 of what passed.
fn copy_hashing(mut reader: impl Read, out: &mut impl Write) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// The lowercase hex SHA-256 of a file's bytes.
///
/// # Errors
/// The file cannot be read.
pub fn sha256_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (_, digest) = copy_hashing(file, &mut io::sink())?;
    Ok(digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn progress_bar(name: &str, len: Option<u64>, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{msg:24} [{bar:30}] {bytes:>9}/{total_bytes:9} {bytes_per_sec:>11} {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg:24} {spinner} {bytes:>9} {bytes_per_sec:>11}").expect("valid template"),
        ),
    };
    bar.with_message(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse_by_scheme() {
        assert_eq!(Mirror::parse("https://a.b/c").unwrap(), Mirror::Http("https://a.b/c/".into()));
        assert_eq!(Mirror::parse("http://a.b/c/").unwrap(), Mirror::Http("http://a.b/c/".into()));
        assert_eq!(Mirror::parse("file:///tmp/m").unwrap(), Mirror::Dir("/tmp/m".into()));
        assert_eq!(Mirror::parse("some/dir").unwrap(), Mirror::Dir("some/dir".into()));
        assert!(Mirror::parse("ftp://x").unwrap_err().to_string().contains("unsupported scheme"));
        assert!(Mirror::parse("  ").is_err());
    }

    #[test]
    fn user_mirrors_come_first_then_the_environment_then_the_defaults() {
        let list = mirror_list(&["/a".into()], Some("http://b/, /c")).unwrap();
        assert_eq!(list[..3], [Mirror::Dir("/a".into()), Mirror::Http("http://b/".into()), Mirror::Dir("/c".into())]);
        assert_eq!(list.len(), 3 + DEFAULT_MIRRORS.len());
        assert_eq!(list[3], Mirror::Http(DEFAULT_MIRRORS[0].into()));
    }

    #[test]
    fn the_files_are_those_the_data_crate_reads_with_the_published_digests() {
        let names: Vec<&str> = FILES.iter().map(|f| f.name).collect();
        assert_eq!(names, data::FILES);
        // The digests of the decompressed files, as the shared copy of MNIST lists them.
        let Some(dir) = testkit::mnist_dir() else { return };
        let Ok(sums) = fs::read_to_string(dir.join("SHA256SUMS")) else {
            assert!(!testkit::on_ci(), "no SHA256SUMS in {}", dir.display());
            return;
        };
        for f in FILES {
            let line = sums
                .lines()
                .find(|l| l.trim_end().ends_with(f.name))
                .unwrap_or_else(|| panic!("{} not listed", f.name));
            assert!(line.starts_with(f.sha256), "{}: {line}", f.name);
        }
    }

    #[test]
    fn hashing_matches_a_known_digest() {
        // SHA-256("abc"), from FIPS 180-2.
        let (n, d) = copy_hashing(&b"abc"[..], &mut io::sink()).unwrap();
        assert_eq!((n, d.as_str()), (3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    }
}
