//! The `export` command: a saved model as an ONNX file.

use std::io::Write;

use anyhow::Result;
use nn::Model;

use crate::args::ExportArgs;
use crate::files::{self, load_model_file, write_output};

/// `export --model PATH --onnx PATH`: the model and its recorded facts as ONNX.
pub(crate) fn run(args: &ExportArgs, out: &mut (dyn Write + Send)) -> Result<()> {
    files::check_distinct(&[("--model", Some(&args.model)), ("--onnx", Some(&args.onnx))])?;
    let (model, state) = load_model_file(&args.model)?;
    let [c, h, w] = model.config().input;
    let mut metadata = vec![("architecture".to_owned(), model.describe())];
    let layers = model.config().to_string();
    if layers != model.describe() {
        metadata.push(("layers".to_owned(), layers));
    }
    metadata.push(("input".to_owned(), format!("{c}x{h}x{w} pixels / 255")));
    metadata.push(("classes".to_owned(), model.classes().to_string()));
    metadata.extend(train::recorded_facts(&state));
    let bytes = onnx::export(&model, &metadata);
    write_output("--onnx", &args.onnx, |w| w.write_all(&bytes))?;
    writeln!(out, "Wrote {} ({} bytes, ONNX opset {})", args.onnx.display(), bytes.len(), onnx::OPSET)?;
    Ok(())
}
