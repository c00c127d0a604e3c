//! Models on disk as safetensors, with PyTorch's `state_dict` names, shapes and dtype, so that
//! `model.load_state_dict(safetensors.torch.load_file(PATH))` loads them into the same model in
//! PyTorch. The widths and the output-ReLU flag travel in the metadata.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use nn::{Mlp, MlpConfig};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::fsutil::write_atomically;

/// The metadata key naming the format.
const FORMAT_KEY: &str = "format";
/// This project's value for it.
const FORMAT: &str = "mnist-mlp";

/// Saves `mlp` at `path` atomically, with `extra` metadata (training facts) beside the model's.
///
/// # Errors
/// The file cannot be written; an earlier file at `path` is then left intact.
pub fn save(path: &Path, mlp: &Mlp, extra: &[(&str, String)]) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        mlp.params().iter().map(|p| (p.name().to_owned(), p.shape().to_vec(), le_bytes(&p.to_row_major()))).collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let config = mlp.config();
    let mut metadata: HashMap<String, String> = extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    metadata.insert(FORMAT_KEY.into(), FORMAT.into());
    metadata.insert("widths".into(), config.widths.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
    metadata.insert("output_relu".into(), config.output_relu.to_string());
    let serialized = safetensors::serialize(views, Some(metadata))?;
    write_atomically(path, |w| w.write_all(&serialized))
}

/// Little-endian bytes of f32 values, safetensors' encoding.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Loads a model saved by [`save`], or any safetensors file with an MLP's `fcN.weight` and
/// `fcN.bias` tensors in f32 (then the widths come from the shapes, without output ReLU).
///
/// # Errors
/// A one-line reason naming `path`: missing, not safetensors, truncated, a tensor missing,
/// extra or of the wrong shape or dtype.
pub fn load(path: &Path) -> Result<Mlp> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// [`load`] from bytes in memory.
///
/// # Errors
/// As [`load`], without the path.
pub fn parse(bytes: &[u8]) -> Result<Mlp> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let config = match metadata.get("widths") {
        Some(w) => MlpConfig {
            widths: w
                .split(',')
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| anyhow!("metadata widths {w:?} is not a list of widths"))
                })
                .collect::<Result<_>>()?,
            output_relu: match metadata.get("output_relu").map(String::as_str) {
                None | Some("false") => false,
                Some("true") => true,
                Some(other) => bail!("metadata output_relu {other:?} is neither true nor false"),
            },
        },
        None => infer_config(&tensors)?,
    };
    config.validate()?;
    let mut named = Vec::new();
    for (name, view) in tensors.tensors() {
        if view.dtype() != Dtype::F32 {
            bail!("tensor {name} is {:?}, expected F32", view.dtype());
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        named.push((name, view.shape().to_vec(), values));
    }
    Ok(Mlp::from_named(&config, named)?)
}

/// The widths of an MLP stored without metadata: from the shapes of `fc1.weight`,
/// `fc2.weight`, ...
fn infer_config(tensors: &SafeTensors) -> Result<MlpConfig> {
    let mut widths = Vec::new();
    for layer in 1.. {
        let Ok(w) = tensors.tensor(&format!("fc{layer}.weight")) else { break };
        let &[out, inp] = w.shape() else { bail!("fc{layer}.weight has shape {:?}, expected 2 dimensions", w.shape()) };
        if widths.is_empty() {
            widths.push(inp);
        }
        widths.push(out);
    }
    if widths.is_empty() {
        bail!("no fc1.weight tensor: not an MLP checkpoint");
    }
    Ok(MlpConfig { widths, output_relu: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn model() -> Mlp {
        Mlp::new(
            &MlpConfig { widths: vec![6, 4, 3], output_relu: true },
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        )
    }

    #[test]
    fn round_trips_with_pytorch_names_shapes_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let mlp = model();
        save(&path, &mlp, &[("epochs", "3".into())]).unwrap();
        let loaded = load(&path).unwrap();
        assert_eq!(loaded.config(), mlp.config());
        assert_eq!(loaded.params(), mlp.params());

        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = st.names();
        names.sort();
        assert_eq!(names, ["fc1.bias", "fc1.weight", "fc2.bias", "fc2.weight"]);
        assert_eq!(st.tensor("fc1.weight").unwrap().shape(), &[4, 6]);
        assert_eq!(st.tensor("fc2.bias").unwrap().dtype(), Dtype::F32);
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!((meta["widths"].as_str(), meta["output_relu"].as_str()), ("6,4,3", "true"));
        assert_eq!(meta["epochs"], "3");
    }

    #[test]
    fn widths_are_inferred_when_the_metadata_is_missing() {
        let mlp = model();
        let data: Vec<_> = mlp.params().iter().map(|p| le_bytes(&p.to_row_major())).collect();
        let views: Vec<_> = mlp
            .params()
            .iter()
            .zip(&data)
            .map(|(p, d)| (p.name(), TensorView::new(Dtype::F32, p.shape().to_vec(), d).unwrap()))
            .collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let loaded = parse(&bytes).unwrap();
        assert_eq!(loaded.config().widths, vec![6, 4, 3]);
        assert!(!loaded.config().output_relu);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save(&path, &model(), &[]).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let err = format!("{:#}", parse(&bytes[..bytes.len() - 10]).unwrap_err());
        assert!(err.starts_with("not a safetensors file"), "{err}");
        let err = format!("{:#}", parse(b"PNG not a checkpoint").unwrap_err());
        assert!(err.starts_with("not a safetensors file"), "{err}");
        let err = format!("{:#}", load(&dir.path().join("missing")).unwrap_err());
        assert!(err.contains("missing: cannot read"), "{err}");

        // A model of another shape under the same names.
        let other = Mlp::new(
            &MlpConfig { widths: vec![6, 5, 3], output_relu: false },
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(2),
        );
        let mut mixed: Vec<(String, Vec<usize>, Vec<u8>)> = other
            .params()
            .iter()
            .map(|p| (p.name().to_owned(), p.shape().to_vec(), le_bytes(&p.to_row_major())))
            .collect();
        mixed.truncate(2);
        let m = model();
        for p in m.params().iter().skip(2) {
            mixed.push((p.name().to_owned(), p.shape().to_vec(), le_bytes(&p.to_row_major())));
        }
        let views: Vec<_> =
            mixed.iter().map(|(n, s, d)| (n.as_str(), TensorView::new(Dtype::F32, s.clone(), d).unwrap())).collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let err = format!("{:#}", parse(&bytes).unwrap_err());
        assert_eq!(err, "parameter fc2.weight has shape [3, 4], expected [3, 5]");
    }
}
