//! `--plots DIR`: the `plots` library's pictures of a run, written into the folder.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};

/// The folder of `--plots`, made for the run if it was not there. Dropped, it is removed again
/// if it is still empty: a run that fails before its plots leaves no folder behind.
pub(crate) struct PlotsFolder {
    path: PathBuf,
    made: bool,
}

impl Drop for PlotsFolder {
    fn drop(&mut self) {
        if self.made {
            // Only an empty folder is removed.
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Makes the folder `dir` for the plots, in a folder that exists, unless it is there, and checks
/// that it accepts files.
///
/// # Errors
/// A one-line reason naming the flag and the folder.
pub(crate) fn prepare_dir(dir: &Path) -> Result<PlotsFolder> {
    let made = match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => false,
        Ok(_) => return Err(anyhow!("--plots {}: is a file, not a folder", dir.display())),
        Err(_) => {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            if parent.exists() && !parent.is_dir() {
                return Err(anyhow!("--plots {}: {} is not a folder", dir.display(), parent.display()));
            }
            if !parent.is_dir() {
                return Err(anyhow!("--plots {}: folder {} does not exist", dir.display(), parent.display()));
            }
            std::fs::create_dir(dir)
                .map_err(|e| anyhow!("--plots {}: cannot create the folder: {e}", dir.display()))?;
            true
        }
    };
    let folder = PlotsFolder { path: dir.to_path_buf(), made };
    atomic_file::check_writable(&dir.join("probe")).map_err(|e| anyhow!("--plots {e}"))?;
    Ok(folder)
}

/// Writes `dir/name`, an SVG document or the reason it could not be drawn.
pub(crate) fn write(dir: &Path, name: &str, svg: Result<String, plots::PlotError>) -> Result<()> {
    let svg = svg.map_err(|e| anyhow!("--plots {name}: {e}"))?;
    crate::files::write_output("--plots", &dir.join(name), |w| w.write_all(svg.as_bytes()))
}

/// The plots of an evaluation: `confusion.svg` and `misclassified.svg`.
pub(crate) fn evaluation(
    dir: &Path,
    data: &data::Dataset,
    eval: &train::Evaluation,
    class_names: &[String],
) -> Result<()> {
    write(dir, "confusion.svg", plots::confusion_heatmap(&eval.confusion, class_names))?;
    write(dir, "misclassified.svg", plots::misclassified(data, &eval.predictions, class_names))
}
