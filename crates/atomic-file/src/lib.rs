//! Files written whole or not at all. [`write()`] (or an [`AtomicFile`] for streaming) writes to a
//! hidden temporary file in the target's folder, `.{name}.{random}.part`, and renames it over
//! the target only once everything is written and synced: a failure, or a process killed
//! part-way, never leaves half a file under the target's name. [`remove_leftovers`] clears the
//! `.part` files of writers that were killed; [`check_writable`] tells before any long work
//! whether a path can be written at all.
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
/// Dropped without a commit, it is removed.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`.
    ///
    /// # Errors
    /// The folder does not exist or does not accept a new file, or `path` is a folder.
    pub fn create(path: &Path) -> Result<Self, Error> {
        check_target(path)?;
        let dir = folder(path);
        let tmp = tempfile::Builder::new()
            .prefix(&part_prefix(path))
            .suffix(".part")
            .tempfile_in(&dir)
            .map_err(|source| Error::Create { path: path.to_owned(), dir, source })?;
        Ok(Self { tmp, path: path.to_owned() })
    }

    /// The temporary file, to write into.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Syncs the file, gives it the usual permissions and renames it over the target.
    ///
    /// # Errors
    /// Syncing or renaming failed; the target is then untouched.
    pub fn commit(self) -> Result<(), Error> {
        let failed = |source| Error::Write { path: self.path.clone(), source };
        self.tmp.as_file().sync_all().map_err(failed)?;
        // Temporary files are private; outputs get the usual permissions.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            self.tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(failed)?;
        }
        let path = self.path.clone();
        self.tmp.persist(&path).map_err(|e| Error::Write { path, source: e.error })?;
        Ok(())
    }
}

/// Writes `path` whole or not at all with what `write` puts into a buffered writer.
///
/// # Errors
/// As [`AtomicFile::create`] and [`AtomicFile::commit`], or `write`'s own error; `path` is
/// then untouched and no temporary file is left.
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
/// accepts a new file, and `path` is not a folder. Leaves nothing behind.
///
/// # Errors
/// The reason, naming the path.
pub fn check_writable(path: &Path) -> Result<(), Error> {
    AtomicFile::create(path).map(drop)
}

/// Removes the temporary files that writers of `path` killed part-way left in its folder.
pub fn remove_leftovers(path: &Path) {
    let prefix = part_prefix(path);
    let Ok(entries) = fs::read_dir(folder(path)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".part") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn check_target(path: &Path) -> Result<(), Error> {
    if path.is_dir() {
        return Err(Error::IsFolder { path: path.to_owned() });
    }
    let dir = folder(path);
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
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
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
