//! The `predict` command: classify image files with a saved model.

use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use data::digit::{self, Limits, SIDE};
use ndarray::Array2;
use nn::Model;

use crate::args::PredictArgs;
use crate::files::{load_model_file, recorded_class_names};

/// Prints, for each image, the predicted class (by name, when the model records names) with
/// its probability, then every class's probability.
pub(crate) fn run(args: &PredictArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let (model, state) = load_model_file(&args.model)?;
    let names = recorded_class_names(&args.model, &state, model.classes())
        .unwrap_or_else(|| (0..model.classes()).map(|c| c.to_string()).collect());
    if model.input_width() != SIDE * SIDE {
        bail!(
            "{}: the model takes {} inputs, but images are converted to {SIDE}x{SIDE} = {}",
            args.model.display(),
            model.input_width(),
            SIDE * SIDE
        );
    }
    // Read every image first, so that a bad file fails the command before any output.
    let mut pixels = Vec::with_capacity(args.images.len() * SIDE * SIDE);
    for path in &args.images {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        pixels.extend(
            digit::from_image_bytes(&bytes, Limits::default()).map_err(|e| anyhow!("{}: {e}", path.display()))?,
        );
    }
    let x = Array2::from_shape_vec((args.images.len(), SIDE * SIDE), pixels)?;
    let (classes, probabilities) = model.classify(x.view());
    for ((path, row), class) in args.images.iter().zip(probabilities.rows()).zip(classes) {
        writeln!(out, "{}: {} ({:.2}%)", path.display(), names[class], 100.0 * row[class])?;
        let all: Vec<String> = row.iter().zip(&names).map(|(p, name)| format!("{name}: {p:.4}")).collect();
        writeln!(out, "  {}", all.join("  "))?;
    }
    Ok(())
}
