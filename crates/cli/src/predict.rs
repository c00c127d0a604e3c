//! The `predict` command: classify image files with a saved model.

use std::io::Write;

use anyhow::Result;
use ndarray::Array2;

use crate::args::PredictArgs;
use crate::{checkpoint, digit};

/// Prints, for each image, the predicted digit with its probability, then every class's
/// probability.
pub(crate) fn run(args: &PredictArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    let mlp = checkpoint::load(&args.model)?;
    digit::check_input_width(mlp.config().widths[0], &args.model)?;
    // Read every image first, so that a bad file fails the command before any output.
    let pixels = args.images.iter().map(|path| digit::load(path)).collect::<Result<Vec<_>>>()?;
    let x = Array2::from_shape_vec((pixels.len(), digit::SIDE * digit::SIDE), pixels.concat())?;
    let logits = mlp.logits(x.view());
    let mut probs = Array2::zeros(logits.dim());
    tensor::softmax_rows(logits.view(), probs.view_mut());
    for ((path, row), class) in args.images.iter().zip(probs.rows()).zip(tensor::argmax_rows(logits.view())) {
        writeln!(out, "{}: {class} ({:.2}%)", path.display(), 100.0 * row[class])?;
        let all: Vec<String> = row.iter().enumerate().map(|(c, p)| format!("{c}: {p:.4}")).collect();
        writeln!(out, "  {}", all.join("  "))?;
    }
    Ok(())
}
