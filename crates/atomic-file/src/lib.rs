//! Files written whole or not at all. [`write()`] (or an [`AtomicFile`] for streaming) writes to a
//! hidden temporary file in the target's folder, `.{name}.{random}.part`, and renames it over
//! the target only once everything is written and synced: a failure, or a process killed
//! part-way, never leaves half a file under the target's name. [`remove_leftovers`] clears the
//! `.part` files of writers that were killed; [`check_writable`] tells before any long work
//! whether a path can be written at all.
//!
//! A target that is a symbolic link is written through: the file it points to is replaced and
//! the link kept. A target that cannot be replaced without breaking something (a device, a
//! named pipe, or whatever one of the process's open descriptors names, as `/dev/stdout` does)
//! is written in place instead, without the guarantee: see [`Target`]. A regular file that is
//! replaced keeps its permissions.
//!
//! ```
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("out.txt");
//! atomic_file::write(&path, |w| w.write_all(b"hello")).unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"hello");
//! ```

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Why a file could not be written; every variant names the target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target is a folder.
    #[error("{}: is a folder, not a file", path.display())]
    IsFolder {
        /// The target.
        path: PathBuf,
    },
    /// The target's folder does not exist.
    #[error("{}: folder {} does not exist", path.display(), dir.display())]
    NoFolder {
        /// The target.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
    },
    /// The target's "folder" is a file.
    #[error("{}: {} is not a folder", path.display(), dir.display())]
    NotAFolder {
        /// The target.
        path: PathBuf,
        /// Its would-be folder.
        dir: PathBuf,
    },
    /// The folder does not accept a new file.
    #[error("{}: cannot write in {}: {source}", path.display(), dir.display())]
    Create {
        /// The target.
        path: PathBuf,
        /// Its folder.
        dir: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The target's symbolic links go round in a circle, or too deep to follow.
    #[error("{}: too many levels of symbolic links", path.display())]
    Links {
        /// The target.
        path: PathBuf,
    },
    /// Writing, syncing or renaming failed.
    #[error("{}: write failed: {source}", path.display())]
    Write {
        /// The target.
        path: PathBuf,
        /// The reason.
        source: io::Error,
    },
}

/// The folder a file would be written in (`.` for a bare file name).
fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The hidden prefix of `path`'s temporary files: `.{name}.`.
fn part_prefix(path: &Path) -> String {
    format!(".{}.", path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy()))
}

/// A file being written; it appears under its target's name only at [`AtomicFile::commit`].
/// Dropped without a commit, it is removed. (A target that is not a regular file is written in
/// place instead: see the crate's documentation.)
#[derive(Debug)]
pub struct AtomicFile {
    sink: Sink,
    /// The target as given, for errors.
    path: PathBuf,
}

#[derive(Debug)]
enum Sink {
    /// A temporary file to rename over `target`, with the permissions to give it.
    Temporary { tmp: tempfile::NamedTempFile, target: PathBuf, permissions: Option<fs::Permissions> },
    /// A target written in place.
    InPlace(File),
}

impl AtomicFile {
    /// Starts writing `path`.
    ///
    /// # Errors
    /// The folder does not exist or does not accept a new file, or `path` is a folder (or, for
    /// a target written in place, cannot be opened for writing).
    pub fn create(path: &Path) -> Result<Self, Error> {
        let target = match resolve(path)? {
            Resolved::File(target) => target,
            place => {
                let file =
                    open_in_place(path, &place).map_err(|source| Error::Write { path: path.to_owned(), source })?;
                return Ok(Self { sink: Sink::InPlace(file), path: path.to_owned() });
            }
        };
        let dir = folder(&target);
        let tmp = tempfile::Builder::new()
            .prefix(&part_prefix(&target))
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|source| Error::Create { path: path.to_owned(), dir, source })?;
        let permissions = fs::metadata(&target).map(|m| m.permissions()).ok().or_else(default_permissions);
        Ok(Self { sink: Sink::Temporary { tmp, target, permissions }, path: path.to_owned() })
    }

    /// The file to write into.
    pub fn file(&mut self) -> &mut File {
        match &mut self.sink {
            Sink::Temporary { tmp, .. } => tmp.as_file_mut(),
            Sink::InPlace(file) => file,
        }
    }

    /// Syncs the file, gives it the target's permissions (the usual ones for a new file) and
    /// renames it over the target (for a target written in place, there is nothing left to do).
    ///
    /// # Errors
    /// Syncing or renaming failed; the target is then untouched.
    pub fn commit(self) -> Result<(), Error> {
        let failed = |source| Error::Write { path: self.path.clone(), source };
        match self.sink {
            // A pipe or a terminal cannot be synced; what was written has been handed over.
            Sink::InPlace(_) => Ok(()),
            Sink::Temporary { tmp, target, permissions } => {
                tmp.as_file().sync_all().map_err(failed)?;
                // Temporary files are private; outputs get the target's permissions.
                if let Some(permissions) = permissions {
                    tmp.as_file().set_permissions(permissions).map_err(failed)?;
                }
                tmp.persist(&target).map_err(|e| failed(e.error))?;
                Ok(())
            }
        }
    }
}

/// The permissions of a new output: read and write for its owner, read for others (where a
/// temporary file is private; elsewhere, those it was created with).
fn default_permissions() -> Option<fs::Permissions> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(fs::Permissions::from_mode(0o644))
    }
    #[cfg(not(unix))]
    None
}

/// Where writing a path goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A regular file, there or to be made, after the path's symbolic links: replaced whole
    /// through a temporary file beside it.
    File(PathBuf),
    /// A device, a named pipe, or what one of the process's open descriptors names
    /// (`/dev/stdout`, `/dev/fd/3`, `/proc/self/fd/1`): written in place, since replacing it
    /// would break it, or replace the file the shell redirected output to. A device or pipe is
    /// appended to; a descriptor of this process is written through a duplicate, at its
    /// position; a pipe that no process reads is an error.
    InPlace,
}

/// Where writing `path` goes: the file at the end of its symbolic links, or in place.
///
/// # Errors
/// The path names a folder (or ends as one, in `/`), its links go round in a circle, or (for a
/// file to be made) its folder does not exist or is not a folder.
pub fn target(path: &Path) -> Result<Target, Error> {
    Ok(match resolve(path)? {
        Resolved::File(file) => Target::File(file),
        Resolved::Descriptor(_) | Resolved::Special => Target::InPlace,
    })
}

/// [`Target`], with what writing in place needs to know.
#[derive(Debug)]
enum Resolved {
    File(PathBuf),
    /// One of this process's open descriptors: written through a duplicate of it, which
    /// shares its position (a reopened file would write from its own, over what the
    /// descriptor writes).
    Descriptor(i32),
    /// A device, a named pipe, or another process's descriptor.
    Special,
}

fn resolve(path: &Path) -> Result<Resolved, Error> {
    // Links to links, but not round in circles.
    const MAX_LINKS: usize = 40;
    if ends_as_folder(path) {
        return Err(Error::IsFolder { path: path.to_owned() });
    }
    let mut at = path.to_path_buf();
    let mut links = 0;
    loop {
        if let Some(place) = descriptor(&at) {
            return Ok(place);
        }
        if !fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            break;
        }
        links += 1;
        let to = fs::read_link(&at).map_err(|source| Error::Write { path: path.to_owned(), source })?;
        if links > MAX_LINKS {
            return Err(Error::Links { path: path.to_owned() });
        }
        at = folder(&at).join(to);
    }
    match fs::metadata(&at) {
        Ok(meta) if meta.is_dir() => Err(Error::IsFolder { path: path.to_owned() }),
        Ok(meta) if !meta.is_file() => Ok(Resolved::Special),
        Ok(_) => Ok(Resolved::File(at)),
        Err(_) => {
            check_folder(path, &at)?;
            Ok(Resolved::File(at))
        }
    }
}

/// Whether `path` can only name a folder: it ends in a separator, `.` or `..`.
fn ends_as_folder(path: &Path) -> bool {
    let text = path.as_os_str().to_string_lossy();
    let last = text.rsplit(std::path::is_separator).next().unwrap_or("");
    text.ends_with(std::path::is_separator) || last == "." || last == ".."
}

/// What `path` is if it is a process's open descriptor: an entry of `/proc/PID/fd` (where
/// `/dev/stdout` and, on Linux, `/dev/fd` lead) or of `/dev/fd` (elsewhere). It names whatever
/// the descriptor is open on, which is written in place.
fn descriptor(path: &Path) -> Option<Resolved> {
    let dir = fs::canonicalize(folder(path)).ok()?;
    let own = dir == Path::new("/dev/fd") || dir == Path::new(&format!("/proc/{}/fd", std::process::id()));
    if own {
        let n = path.file_name()?.to_str()?.parse().ok()?;
        return Some(Resolved::Descriptor(n));
    }
    (dir.starts_with("/proc") && dir.ends_with("fd") && fs::symlink_metadata(path).is_ok()).then_some(Resolved::Special)
}

/// Opens a target written in place for appending: a duplicate of the process's descriptor, or
/// the path. A named pipe that no process reads is an error, not a wait without end.
fn open_in_place(path: &Path, place: &Resolved) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::fd::{FromRawFd, IntoRawFd};
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        if let Resolved::Descriptor(n) = *place {
            // SAFETY: `dup` reads only its argument; a descriptor not open gives EBADF.
            let copy = unsafe { libc::dup(n) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `copy` was just made and nothing else owns it.
            return Ok(unsafe { File::from_raw_fd(copy) });
        }
        if fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
            let file =
                fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::ENXIO) => io::Error::other("no process is reading the pipe"),
                        _ => e,
                    }
                })?;
            // Writes wait for the reader, as a pipe's usually do.
            let fd = file.into_raw_fd();
            // SAFETY: `fd` is open and owned here; F_GETFL and F_SETFL only change its flags.
            let cleared = unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK) };
            // SAFETY: `fd` came from `into_raw_fd` above and is owned by nothing else.
            let file = unsafe { File::from_raw_fd(fd) };
            if cleared < 0 {
                return Err(io::Error::last_os_error());
            }
            return Ok(file);
        }
    }
    #[cfg(not(unix))]
    let _ = place;
    fs::OpenOptions::new().append(true).open(path)
}

/// Writes `path` whole or not at all with what `write` puts into a buffered writer.
///
/// # Errors
/// As [`AtomicFile::create`] and [`AtomicFile::commit`], or `write`'s own error; `path` is
/// then untouched (unless it is written in place) and no temporary file is left.
pub fn write(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Error> {
    let mut file = AtomicFile::create(path)?;
    {
        let mut buffered = BufWriter::new(file.file());
        write(&mut buffered)
            .and_then(|()| buffered.flush())
            .map_err(|source| Error::Write { path: path.to_owned(), source })?;
    }
    file.commit()
}

/// Checks, before any long work, that a file can be written at `path`: its folder exists and
/// accepts a new file, and `path` is not a folder (or, written in place, that it opens for
/// writing; a named pipe is not opened). Leaves nothing behind.
///
/// # Errors
/// The reason, naming the path.
pub fn check_writable(path: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        // Opening a pipe waits for its reader: it is taken as it is.
        if fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo()) {
            return Ok(());
        }
    }
    AtomicFile::create(path).map(drop)
}

/// Removes the temporary files that writers of `path` killed part-way left in its folder.
pub fn remove_leftovers(path: &Path) {
    // They are beside the file the path names, after its links.
    let Ok(Target::File(target)) = target(path) else { return };
    let prefix = part_prefix(&target);
    let Ok(entries) = fs::read_dir(folder(&target)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Checks that the folder of `target`, the file `path` names, is one.
fn check_folder(path: &Path, target: &Path) -> Result<(), Error> {
    let dir = folder(target);
    if dir.exists() && !dir.is_dir() {
        return Err(Error::NotAFolder { path: path.to_owned(), dir });
    }
    if !dir.is_dir() {
        return Err(Error::NoFolder { path: path.to_owned(), dir });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        fs::write(&path, "old").unwrap();
        let err = write(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().ends_with("out.txt: write failed: disk on fire"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(entries(dir.path()), ["out.txt"]);
        write(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        #[cfg(unix)]
        {
            // A new file gets the usual permissions, not the temporary file's private ones.
            use std::os::unix::fs::PermissionsExt;
            let fresh = dir.path().join("fresh.txt");
            write(&fresh, |w| w.write_all(b"new")).unwrap();
            assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn writability_is_checked_up_front_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("m.safetensors");
        assert!(check_writable(&missing).unwrap_err().to_string().ends_with("does not exist"));
        assert!(check_writable(dir.path()).unwrap_err().to_string().ends_with("is a folder, not a file"));
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = check_writable(&file.join("m.safetensors")).unwrap_err().to_string();
        assert!(err.ends_with(&format!("{} is not a folder", file.display())), "{err}");
        fs::remove_file(&file).unwrap();
        check_writable(&dir.path().join("ok")).unwrap();
        assert!(entries(dir.path()).is_empty(), "the probe leaves nothing");
    }

    #[cfg(unix)]
    #[test]
    fn a_link_is_written_through_and_a_file_keeps_its_permissions() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real").join("model.onnx");
        let link = dir.path().join("link.onnx");
        symlink(Path::new("real").join("model.onnx"), &link).unwrap();
        // A link to a file not written yet, then to one that exists.
        for text in ["first", "second"] {
            check_writable(&link).unwrap();
            write(&link, |w| w.write_all(text.as_bytes())).unwrap();
            assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link is kept");
            assert_eq!(fs::read_to_string(&target).unwrap(), text);
        }
        assert_eq!(entries(&dir.path().join("real")), ["model.onnx"], "no temporary file is left");

        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).unwrap();
        write(&target, |w| w.write_all(b"private")).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[cfg(unix)]
    #[test]
    fn links_in_a_circle_are_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        symlink("b", &a).unwrap();
        symlink("a", &b).unwrap();
        let err = write(&a, |w| w.write_all(b"x")).unwrap_err().to_string();
        assert!(err.ends_with("a: too many levels of symbolic links"), "{err}");
        assert!(fs::symlink_metadata(&b).unwrap().file_type().is_symlink(), "a link in the circle was replaced");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn what_an_open_descriptor_names_is_written_at_its_position_not_replaced() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.txt");
        // As a shell's `> log.txt` leaves it for /dev/stdout to name, after a line of output.
        let mut open = File::create(&log).unwrap();
        open.write_all(b"earlier\n").unwrap();
        let via = PathBuf::from(format!("/proc/self/fd/{}", open.as_raw_fd()));
        assert_eq!(target(&via).unwrap(), Target::InPlace);
        check_writable(&via).unwrap();
        write(&via, |w| w.write_all(b"summary\n")).unwrap();
        // The descriptor goes on after what was written through it, not over it.
        open.write_all(b"later\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "earlier\nsummary\nlater\n");
        assert_eq!(entries(dir.path()), ["log.txt"], "no temporary file is left");
    }

    #[test]
    fn a_path_that_ends_as_a_folder_is_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["new.st/", "new.st/.", "new.st/.."] {
            let path = PathBuf::from(format!("{}/{name}", dir.path().display()));
            let err = check_writable(&path).unwrap_err().to_string();
            assert!(err.ends_with("is a folder, not a file"), "{name}: {err}");
        }
        assert!(entries(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn a_named_pipe_is_written_into_not_replaced() {
        use std::io::Read;
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&pipe).status().unwrap();
        assert!(made.success(), "mkfifo");
        check_writable(&pipe).unwrap();
        // With no process reading, writing fails at once instead of waiting for ever.
        let err = write(&pipe, |w| w.write_all(b"lost")).unwrap_err().to_string();
        assert!(err.ends_with("pipe: write failed: no process is reading the pipe"), "{err}");
        // A reader that opened first (without waiting for a writer) gets what is written.
        let mut reader = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&pipe).unwrap();
        write(&pipe, |w| w.write_all(b"{\"accuracy\": 0.98}")).unwrap();
        assert!(fs::symlink_metadata(&pipe).unwrap().file_type().is_fifo(), "the pipe was replaced");
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "{\"accuracy\": 0.98}");
        assert_eq!(entries(dir.path()), ["pipe"], "no temporary file is left");
    }

    #[test]
    fn leftovers_of_killed_writers_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let tmp = AtomicFile::create(&path).unwrap();
        // A killed process leaves its temporary file; forgetting it here does the same.
        std::mem::forget(tmp);
        fs::write(dir.path().join(".other.x.part"), "").unwrap();
        fs::write(dir.path().join("data.bin.part"), "").unwrap();
        assert_eq!(entries(dir.path()).len(), 3);
        remove_leftovers(&path);
        assert_eq!(entries(dir.path()), [".other.x.part", "data.bin.part"]);
    }
}
