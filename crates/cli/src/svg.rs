//! `--plots DIR`: the `plots` library's pictures of a run, written into the folder.

use std::path::Path;

use anyhow::{Result, anyhow};

/// Creates the folder `dir` (and its parents) for the plots, checking that it accepts files.
///
/// # Errors
/// A one-line reason naming the flag and the folder.
pub(crate) fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("--plots {}: cannot create the folder: {e}", dir.display()))?;
    atomic_file::check_writable(&dir.join("probe")).map_err(|e| anyhow!("--plots {e}"))
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
