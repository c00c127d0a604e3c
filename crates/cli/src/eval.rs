//! The `eval` command, and the test-set report that `train` prints too.

use std::io::Write;

use anyhow::{Result, anyhow};
use nn::Model;
use train::Evaluation;

use crate::args::EvalArgs;
use crate::files::{load_model_file, load_test_set, recorded_class_names};
use crate::svg;

/// Prints the notebook's `Test Accuracy` line, then (unless quiet) precision, recall and F1 per
/// class and the confusion matrix.
pub(crate) fn print_test_results(
    out: &mut (dyn Write + Send),
    eval: &Evaluation,
    class_names: &[String],
    quiet: bool,
) -> std::io::Result<()> {
    writeln!(out, "Test Accuracy: {:.2}%", 100.0 * eval.accuracy())?;
    if quiet {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(out, "Per-class metrics on the test set ({} images):", eval.confusion.total())?;
    write!(out, "{}", eval.confusion.report().named(class_names))?;
    writeln!(out)?;
    writeln!(out, "Confusion matrix (rows: true class, columns: predicted class):")?;
    write!(out, "{}", eval.confusion.named(class_names))?;
    Ok(())
}

/// Evaluates on every test image; returns the results and the seconds it took.
pub(crate) fn evaluate_test<M: nn::Model>(model: &M, test: &data::Dataset) -> (Evaluation, f64) {
    let started = std::time::Instant::now();
    let eval = train::evaluate_all(model, test);
    (eval, started.elapsed().as_secs_f64())
}

/// `eval --model PATH`: the test-set results of a saved model, as at the end of `train`.
pub(crate) fn run(args: &EvalArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    // Held to the end: a run that fails leaves no empty folder.
    let _plots = args.plots.as_deref().map(svg::prepare_dir).transpose()?;
    let (model, state) = load_model_file(&args.model)?;
    let (test, data_names) = load_test_set(&args.data.data_dir, model.classes())?;
    // The names the model was trained with, else the data set's.
    let class_names = recorded_class_names(&args.model, &state, model.classes()).unwrap_or(data_names);
    train::check_fits(&model, &test).map_err(|e| anyhow!("{}: {e}", args.model.display()))?;
    let (eval, seconds) = evaluate_test(&model, &test);
    eprintln!("Evaluated {} test images in {:.1} ms", test.len(), seconds * 1e3);
    print_test_results(out, &eval, &class_names, false)?;
    if let Some(dir) = &args.plots {
        svg::evaluation(dir, &test, &eval, &class_names)?;
    }
    Ok(())
}
