//! `cargo xtask fetch-data [--dataset NAME]`: download a data set from the first mirror that
//! serves it, verify it against its published checksum, and store it in `data/NAME/` with its
//! class names ([`data::CLASS_NAMES_FILE`]).
//!
//! - MNIST: each file is verified by the SHA-256 of its decompressed bytes (mirrors compress
//!   differently) and stored decompressed, the form the `data` crate reads fastest.
//! - Fashion-MNIST and KMNIST: each `.gz` file is verified by the MD5 its authors and
//!   torchvision publish, and stored as it came.
//! - EMNIST: NIST's one archive of every split (`gzip.zip`, 536 MB) is verified by its MD5
//!   (torchvision's), and the split's four `.gz` files are taken out of it; the archive is
//!   removed afterwards, so that fetching another split downloads it again.
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
use md5::Md5;
use sha2::{Digest, Sha256};

/// MNIST's public mirrors, tried after the user's own, in this order: the ones torchvision
/// uses, then the original site (often down).
pub const DEFAULT_MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

/// The environment variable that lists extra MNIST mirrors, separated by whitespace or commas.
pub const MIRROR_ENV: &str = "MNIST_MIRROR";

/// One of MNIST's files: its canonical name (stored without `.gz`) and the SHA-256 of its
/// decompressed bytes. Mirrors compress differently, so only the decompressed digest is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Fashion-MNIST's mirrors: its authors' (Zalando Research) S3 bucket, which torchvision uses,
/// then its GitHub repository.
pub const FASHION_MNIST_MIRRORS: [&str; 2] = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
];
/// The MD5 of Fashion-MNIST's `.gz` files in [`data::FILES`]' order, as its README
/// (github.com/zalandoresearch/fashion-mnist) and torchvision's `FashionMNIST.resources` give them.
pub const FASHION_MNIST_MD5: [&str; 4] = [
    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "25c81989df183df01b3e8a0aad5dffbe",
    "bef4ecab320f06d8554ea6380940ec79",
    "bb300cfdad3c16e7a12a480ee83cd310",
];
/// KMNIST's mirror: CODH (the ROIS-DS Center for Open Data in the Humanities), its publisher.
pub const KMNIST_MIRRORS: [&str; 1] = ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"];
/// The MD5 of KMNIST's `.gz` files in [`data::FILES`]' order, as torchvision's
/// `KMNIST.resources` gives them.
pub const KMNIST_MD5: [&str; 4] = [
    "bdb82020997e1d708af4cf47b453dcf7",
    "e144d726b3acfaa3e44228e80efcd344",
    "5c965bf0a639b31b8f53240b1b52f4d7",
    "7320c461ea6c1c855c0b718fb2a4b134",
];
/// EMNIST's mirror: NIST, its publisher.
pub const EMNIST_MIRRORS: [&str; 1] = ["https://biometrics.nist.gov/cs_links/EMNIST/"];
/// NIST's archive of every EMNIST split as MNIST-style `.gz` files.
pub const EMNIST_ARCHIVE: &str = "gzip.zip";
/// The MD5 of [`EMNIST_ARCHIVE`], as torchvision's `EMNIST.md5` gives it.
pub const EMNIST_ARCHIVE_MD5: &str = "58c8d27c78d21e728a6bc7b3cc06412e";

/// No file of a data set is larger than this as stored: MNIST's largest, decompressed, is
/// 47,040,016 bytes, and EMNIST's files stay compressed (ByClass's training images, the
/// largest, are 547 MB decompressed but far less as `.gz`; the other sets are smaller). A
/// bound that stops a hostile or broken mirror from filling the disk.
const MAX_FILE_BYTES: u64 = 128 << 20;
/// No archive is larger than this (EMNIST's is 536 MB).
const MAX_ARCHIVE_BYTES: u64 = 1 << 30;

/// The file beside an archive's unpacked files that lists their SHA-256, so that a rerun can
/// check them once the archive is gone.
pub const UNPACKED_SUMS: &str = "SHA256SUMS";

/// Whether every file of `names` is in `dir` with the digest [`UNPACKED_SUMS`] lists for it.
fn unpacked_files_verify(dir: &Path, names: &[String]) -> Result<bool> {
    let Ok(listed) = fs::read_to_string(dir.join(UNPACKED_SUMS)) else { return Ok(false) };
    for name in names {
        let path = dir.join(name);
        let expected = listed.lines().find_map(|l| l.strip_suffix(name.as_str())?.strip_suffix("  "));
        match expected {
            Some(sum) if path.exists() && sha256_file(&path)? == sum => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// How a data set is downloaded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Files {
    /// MNIST's: `.gz` files checked by the SHA-256 of their decompressed bytes, stored
    /// decompressed.
    Decompressed(Vec<MnistFile>),
    /// `.gz` files (names without `.gz`, and the MD5 of the `.gz` as downloaded), stored as
    /// they came.
    Md5(Vec<(String, String)>),
    /// One zip archive checked by its MD5, from which `members` (`.gz` files, found in any
    /// folder of the archive) are taken.
    Archive {
        /// The archive's name on the mirrors.
        name: String,
        /// Its MD5.
        md5: String,
        /// The files to take out of it.
        members: Vec<String>,
    },
}

/// A data set to fetch: what it is, where it is published, and how it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The data set (its name and class names).
    pub set: &'static data::KnownSet,
    /// Its public mirrors, tried after the user's.
    pub mirrors: Vec<String>,
    /// Its files and their checksums.
    pub files: Files,
}

impl Source {
    /// The data set `name` ([`data::KNOWN_SETS`]), from its canonical sources.
    ///
    /// # Errors
    /// A name the project does not know; the message lists those it does.
    pub fn named(name: &str) -> Result<Self> {
        let Some(set) = data::known_set(name) else {
            let known: Vec<&str> = data::KNOWN_SETS.iter().map(|s| s.name).collect();
            bail!("--dataset {name:?} is not a data set this knows; it knows {}", known.join(", "));
        };
        let md5_files = |sums: [&str; 4]| {
            Files::Md5(data::FILES.iter().zip(sums).map(|(f, m)| ((*f).to_owned(), m.to_owned())).collect())
        };
        let strings = |list: &[&str]| list.iter().map(|m| (*m).to_owned()).collect();
        Ok(match (name, set.layout) {
            (data::MNIST, _) => {
                Self { set, mirrors: strings(&DEFAULT_MIRRORS), files: Files::Decompressed(FILES.to_vec()) }
            }
            ("fashion-mnist", _) => {
                Self { set, mirrors: strings(&FASHION_MNIST_MIRRORS), files: md5_files(FASHION_MNIST_MD5) }
            }
            ("kmnist", _) => Self { set, mirrors: strings(&KMNIST_MIRRORS), files: md5_files(KMNIST_MD5) },
            (_, data::Layout::Emnist { split, .. }) => Self {
                set,
                mirrors: strings(&EMNIST_MIRRORS),
                files: Files::Archive {
                    name: EMNIST_ARCHIVE.into(),
                    md5: EMNIST_ARCHIVE_MD5.into(),
                    members: data::emnist_files(split).to_vec(),
                },
            },
            (_, data::Layout::Mnist) => unreachable!("every known MNIST-layout set has its sources above"),
        })
    }
}

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
/// [`MIRROR_ENV`], for MNIST), then `public`.
///
/// # Errors
/// A mirror that does not parse.
pub fn mirror_list(flags: &[String], env: Option<&str>, public: &[String]) -> Result<Vec<Mirror>> {
    let from_env = env.into_iter().flat_map(|v| v.split(|c: char| c == ',' || c.is_whitespace()));
    let user = flags.iter().map(String::as_str).chain(from_env.filter(|s| !s.is_empty()));
    let mut mirrors = user.map(Mirror::parse).collect::<Result<Vec<_>>>()?;
    mirrors.extend(public.iter().map(|m| Mirror::Http(m.clone())));
    Ok(mirrors)
}

/// How to fetch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data set.
    pub source: Source,
    /// Mirrors to try, in order, for each file.
    pub mirrors: Vec<Mirror>,
    /// Where the verified files go.
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
    /// MNIST from `mirrors` into `data_dir`, with default timeouts and no progress bars.
    pub fn new(mirrors: Vec<Mirror>, data_dir: PathBuf) -> Self {
        Self::for_source(Source::named(data::MNIST).expect("MNIST is known"), mirrors, data_dir)
    }

    /// `source` from `mirrors` into `data_dir`, with default timeouts and no progress bars.
    pub fn for_source(source: Source, mirrors: Vec<Mirror>, data_dir: PathBuf) -> Self {
        Self {
            source,
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
    pub downloaded: Vec<(String, String)>,
    /// Files already present and verified, left alone.
    pub present: Vec<String>,
}

/// How a downloaded file is checked.
#[derive(Debug, Clone, Copy)]
enum Check<'a> {
    /// The SHA-256 of the decompressed bytes; the file is stored decompressed.
    Sha256Decompressed(&'a str),
    /// The MD5 of the bytes as they came; the file is stored so.
    Md5(&'a str),
}

impl Check<'_> {
    /// Whether `path` holds a file that passes.
    fn passes(self, path: &Path) -> Result<bool> {
        Ok(match self {
            Self::Sha256Decompressed(sum) => sha256_file(path)? == sum,
            Self::Md5(sum) => md5_file(path)? == sum,
        })
    }
}

/// Makes sure the data set's verified files are in `opts.data_dir`, downloading what is
/// missing, with its class names beside them, and reports progress as plain lines on `log`.
///
/// # Errors
/// The folder cannot be created or written, every mirror failed for some file (the error then
/// names each mirror with its failure), or an archive lacks a file it should hold.
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
    let fetcher = Fetcher { agent, opts };

    let mut summary = Summary::default();
    match &opts.source.files {
        Files::Decompressed(files) => {
            for file in files {
                let remote = format!("{}.gz", file.name);
                fetcher.file(&remote, file.name, Check::Sha256Decompressed(file.sha256), &mut summary, log)?;
            }
        }
        Files::Md5(files) => {
            for (name, md5) in files {
                let stored = format!("{name}.gz");
                fetcher.file(&stored, &stored, Check::Md5(md5), &mut summary, log)?;
            }
        }
        Files::Archive { name, md5, members } => fetcher.archive(name, md5, members, &mut summary, log)?,
    }
    let names = opts.source.set.class_names.join("\n") + "\n";
    atomic_file::write(&dir.join(data::CLASS_NAMES_FILE), |w| w.write_all(names.as_bytes()))?;
    if summary.downloaded.is_empty() {
        writeln!(
            log,
            "all {} files present and verified in {}; nothing downloaded",
            summary.present.len(),
            dir.display()
        )?;
    }
    Ok(summary)
}

struct Fetcher<'a> {
    agent: ureq::Agent,
    opts: &'a Options,
}

impl Fetcher<'_> {
    /// Makes sure `stored` is in the folder and passes `check`, downloading `remote` if not.
    fn file(&self, remote: &str, stored: &str, check: Check, summary: &mut Summary, log: &mut dyn Write) -> Result<()> {
        let target = self.opts.data_dir.join(stored);
        atomic_file::remove_leftovers(&target);
        if !self.opts.force && target.exists() {
            if check.passes(&target)? {
                writeln!(log, "{stored}: present and verified, nothing to download")?;
                summary.present.push(stored.to_owned());
                return Ok(());
            }
            writeln!(log, "{stored}: present but its checksum does not match; downloading it again")?;
        }
        let mirror = self.download(remote, &target, check, MAX_FILE_BYTES, log)?;
        summary.downloaded.push((stored.to_owned(), mirror));
        Ok(())
    }

    /// Makes sure `members` are in the folder, taking them out of the archive `name` (checked
    /// by `md5`) if any is missing.
    fn archive(
        &self,
        name: &str,
        md5: &str,
        members: &[String],
        summary: &mut Summary,
        log: &mut dyn Write,
    ) -> Result<()> {
        let dir = &self.opts.data_dir;
        let stored: Vec<String> = members.iter().map(|m| format!("{m}.gz")).collect();
        stored.iter().for_each(|s| atomic_file::remove_leftovers(&dir.join(s)));
        let sums = dir.join(UNPACKED_SUMS);
        atomic_file::remove_leftovers(&sums);
        if !self.opts.force && unpacked_files_verify(dir, &stored)? {
            for s in &stored {
                writeln!(log, "{s}: present and verified, nothing to download")?;
                summary.present.push(s.clone());
            }
            return Ok(());
        }
        let archive = dir.join(name);
        atomic_file::remove_leftovers(&archive);
        let mirror = if archive.exists() && Check::Md5(md5).passes(&archive)? {
            writeln!(log, "{name}: present and verified, nothing to download")?;
            "the archive already present".to_owned()
        } else {
            self.download(name, &archive, Check::Md5(md5), MAX_ARCHIVE_BYTES, log)?
        };
        let file = File::open(&archive).with_context(|| format!("cannot open {}", archive.display()))?;
        let mut zip =
            zip::ZipArchive::new(BufReader::new(file)).with_context(|| format!("{name}: not a zip archive"))?;
        // Every member is found before any is written: a wrong archive leaves nothing.
        let entries = stored
            .iter()
            .map(|s| {
                let inside = format!("/{s}");
                zip.file_names()
                    .filter_map(|n| n.ok().map(|n| n.into_owned()))
                    .find(|n| n == s || n.ends_with(&inside))
                    .with_context(|| format!("{name}: holds no {s}"))
            })
            .collect::<Result<Vec<_>>>()?;
        // A member that fails halfway takes those written before it away too.
        let mut written = Vec::new();
        let mut digests = String::new();
        let mut unpack = |s: &String, entry_name: &str| -> Result<u64> {
            let mut entry = zip.by_name(entry_name).with_context(|| format!("{name}: {s}"))?;
            let mut part = atomic_file::AtomicFile::create(&dir.join(s))?;
            let (copied, digest) = copy_hashing::<Sha256>((&mut entry).take(MAX_FILE_BYTES + 1), part.file())
                .with_context(|| format!("{name}: {s} does not unpack"))?;
            if copied > MAX_FILE_BYTES {
                bail!("{name}: {s} is more than {MAX_FILE_BYTES} bytes: not a data set file");
            }
            part.commit()?;
            written.push(dir.join(s));
            digests.push_str(&format!("{digest}  {s}\n"));
            Ok(copied)
        };
        for (s, entry_name) in stored.iter().zip(&entries) {
            match unpack(s, entry_name) {
                Ok(copied) => {
                    writeln!(log, "{s}: {copied} bytes from {name}")?;
                    summary.downloaded.push((s.clone(), mirror.clone()));
                }
                Err(e) => {
                    written.iter().for_each(|p| drop(fs::remove_file(p)));
                    return Err(e);
                }
            }
        }
        // What the next run checks the files against: the archive is gone by then.
        atomic_file::write(&sums, |w| w.write_all(digests.as_bytes()))?;
        fs::remove_file(&archive).with_context(|| format!("cannot remove {}", archive.display()))?;
        Ok(())
    }

    /// Downloads `remote` from the first mirror that serves it whole and verified into
    /// `target`; returns that mirror.
    fn download(&self, remote: &str, target: &Path, check: Check, limit: u64, log: &mut dyn Write) -> Result<String> {
        let mirrors = &self.opts.mirrors;
        let mut failures = Vec::new();
        for (i, mirror) in mirrors.iter().enumerate() {
            match download(&self.agent, mirror, remote, target, check, limit, self.opts.progress_bars) {
                Ok(bytes) => {
                    writeln!(log, "{remote}: {bytes} bytes from {mirror}, checksum verified")?;
                    return Ok(mirror.to_string());
                }
                Err(err) => {
                    if i + 1 < mirrors.len() {
                        writeln!(log, "{remote}: {mirror}: {err:#}; trying the next mirror")?;
                    }
                    failures.push(format!("  {mirror}: {err:#}"));
                }
            }
        }
        let set = self.opts.source.set.name;
        bail!(
            "could not fetch {remote} from any mirror:\n{}\nWith a local copy of {}, run `cargo xtask fetch-data \
             --dataset {set} --mirror /path/to/that/folder`",
            failures.join("\n"),
            match &self.opts.source.files {
                Files::Archive { name, .. } => name.clone(),
                _ => "the four .gz files".to_owned(),
            }
        )
    }
}

/// Downloads `remote` from one mirror into `target` and verifies it. Returns the size stored.
/// On any failure nothing is left under the final name.
fn download(
    agent: &ureq::Agent,
    mirror: &Mirror,
    remote: &str,
    target: &Path,
    check: Check,
    limit: u64,
    bars: bool,
) -> Result<u64> {
    let (source, len): (Box<dyn Read>, Option<u64>) = match mirror {
        Mirror::Http(base) => {
            let url = format!("{base}{remote}");
            let response = agent.get(&url).call()?;
            let status = response.status();
            if status != 200 {
                bail!("HTTP {status}");
            }
            let len = response.body().content_length();
            (Box::new(response.into_body().into_with_config().limit(limit).reader()), len)
        }
        Mirror::Dir(folder) => {
            let path = folder.join(remote);
            let plain = remote.strip_suffix(".gz").map(|p| folder.join(p));
            let path = match plain {
                Some(plain) if !path.exists() && matches!(check, Check::Sha256Decompressed(_)) => plain,
                _ => path,
            };
            let f = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            let len = f.metadata()?.len();
            (Box::new(f), Some(len))
        }
    };
    let bar = progress_bar(remote, len, bars);
    let mut reader = BufReader::new(bar.wrap_read(source));
    let mut part = atomic_file::AtomicFile::create(target)?;
    let (bytes, digest, expected) = match check {
        Check::Sha256Decompressed(sum) => {
            let is_gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
            let decoded: Box<dyn Read> = if is_gzip { Box::new(MultiGzDecoder::new(reader)) } else { Box::new(reader) };
            let (bytes, digest) = copy_hashing::<Sha256>(decoded.take(limit + 1), part.file())?;
            (bytes, digest, ("SHA-256", sum))
        }
        Check::Md5(sum) => {
            let (bytes, digest) = copy_hashing::<Md5>(reader.take(limit + 1), part.file())?;
            (bytes, digest, ("MD5", sum))
        }
    };
    bar.finish_and_clear();
    if bytes > limit {
        bail!("more than {limit} bytes: not a file of this data set");
    }
    let (kind, sum) = expected;
    if digest != sum {
        bail!("{kind} mismatch: expected {sum}, got {digest}");
    }
    part.commit()?;
    Ok(bytes)
}

/// Copies `reader` to `out` and returns the byte count and lowercase hex digest of what passed.
fn copy_hashing<D: Digest>(mut reader: impl Read, out: &mut impl Write) -> Result<(u64, String)> {
    let mut hasher = D::new();
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
    let (_, digest) = copy_hashing::<Sha256>(file, &mut io::sink())?;
    Ok(digest)
}

/// The lowercase hex MD5 of a file's bytes.
///
/// # Errors
/// The file cannot be read.
pub fn md5_file(path: &Path) -> Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let (_, digest) = copy_hashing::<Md5>(file, &mut io::sink())?;
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
        let public: Vec<String> = DEFAULT_MIRRORS.iter().map(|m| (*m).to_owned()).collect();
        let list = mirror_list(&["/a".into()], Some("http://b/, /c"), &public).unwrap();
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
        let (n, d) = copy_hashing::<Sha256>(&b"abc"[..], &mut io::sink()).unwrap();
        assert_eq!((n, d.as_str()), (3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        // MD5("abc"), from RFC 1321.
        let (_, d) = copy_hashing::<Md5>(&b"abc"[..], &mut io::sink()).unwrap();
        assert_eq!(d, "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn every_known_data_set_has_a_source_and_unknown_names_are_refused() {
        for set in data::KNOWN_SETS {
            let source = Source::named(set.name).unwrap();
            assert!(!source.mirrors.is_empty(), "{}", set.name);
        }
        let err = Source::named("cifar10").unwrap_err().to_string();
        assert!(
            err.starts_with("--dataset \"cifar10\" is not a data set this knows; it knows mnist, fashion-mnist"),
            "{err}"
        );
    }
}
