//! Files are written whole or not at all: into a temporary file in the same folder, then
//! renamed over the target, so a failure never leaves half a file where a whole one was.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The folder a file would be written in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Writes `path` atomically with what `write` puts in a buffered writer.
///
/// # Errors
/// The folder does not exist or is not writable, or `write` fails; `path` is then untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let dir = parent(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .with_context(|| format!("{}: cannot write in {}", path.display(), dir.display()))?;
    {
        let mut buffered = io::BufWriter::new(tmp.as_file_mut());
        write(&mut buffered)
            .and_then(|()| buffered.flush())
            .with_context(|| format!("{}: write failed", path.display()))?;
    }
    tmp.as_file().sync_all().with_context(|| format!("{}: write failed", path.display()))?;
    // Temporary files are private; outputs get the usual permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.persist(path).with_context(|| format!("{}: cannot replace the file", path.display()))?;
    Ok(())
}

/// Checks, before any long work, that a file can be written at `path`: its folder exists and
/// accepts a new file, and `path` is not a folder.
///
/// # Errors
/// A one-line reason naming `flag` and the path.
pub(crate) fn check_writable(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("{flag} {}: is a folder, not a file", path.display());
    }
    let dir = parent(path);
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!("{flag} {}: {} is not a folder", path.display(), dir.display());
    }
    if !dir.is_dir() {
        anyhow::bail!("{flag} {}: folder {} does not exist", path.display(), dir.display());
    }
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("{flag} {}: cannot write in {}: {e}", path.display(), dir.display()))
}

/// Creates the folder `dir` (and its parents) for outputs, checking it accepts files.
///
/// # Errors
/// A one-line reason naming `flag` and the folder.
pub(crate) fn prepare_dir(flag: &str, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{flag} {}: cannot create the folder: {e}", dir.display()))?;
    check_writable(flag, &dir.join("probe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        fs::write(&path, "old").unwrap();
        let err = write_atomically(&path, |w| {
            w.write_all(b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("disk on fire"));
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomically(&path, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
    }

    #[test]
    fn writability_is_checked_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope").join("m.safetensors");
        let err = check_writable("--save", &missing).unwrap_err().to_string();
        assert!(err.starts_with("--save ") && err.ends_with("does not exist"), "{err}");
        let err = check_writable("--save", dir.path()).unwrap_err().to_string();
        assert!(err.ends_with("is a folder, not a file"), "{err}");
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = check_writable("--save", &file.join("m.safetensors")).unwrap_err().to_string();
        assert!(err.ends_with(&format!("{} is not a folder", file.display())), "{err}");
        fs::remove_file(&file).unwrap();
        check_writable("--save", &dir.path().join("ok")).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "the probe leaves nothing");
    }
}
