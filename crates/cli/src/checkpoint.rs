//! Models and training runs on disk as safetensors.
//!
//! A model file holds exactly PyTorch's `state_dict` for the same model (names, shapes, f32),
//! so that `model.load_state_dict(safetensors.torch.load_file(PATH))` loads it in PyTorch; the
//! widths and the output-ReLU flag travel in the metadata. A training checkpoint adds the
//! optimizer's buffers (`optimizer.fc1.weight.exp_avg`, ...), the best weights of early stopping
//! (`best.fc1.weight`, ...) and the run's settings and progress, everything `--resume` needs to
//! continue as if the run had never stopped.
//!
//! Files are written here and read with the `safetensors` crate. Its writer orders metadata by
//! hash, which changes from process to process; this one sorts it, so that the same run gives
//! the same bytes every time (a test checks that it otherwise writes what the crate writes).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use nn::{Mlp, MlpConfig};
use optim::{AdamConfig, OptimState, SgdConfig, WeightDecay};
use safetensors::{Dtype, SafeTensors};

use crate::args::{OptimizerConfig, RunSettings};
use crate::fsutil::write_atomically;
use crate::train::EpochRecord;

/// A tensor to write: name, shape and row-major values.
type Named = (String, Vec<usize>, Vec<f32>);

const FORMAT_KEY: &str = "format";
const MODEL_FORMAT: &str = "mnist-mlp";
const TRAINING_FORMAT: &str = "mnist-mlp-training";
const OPTIMIZER_PREFIX: &str = "optimizer.";
const BEST_PREFIX: &str = "best.";

/// Saves `mlp` at `path` atomically, with `extra` metadata (training facts) beside the model's.
///
/// # Errors
/// The file cannot be written; an earlier file at `path` is then left intact.
pub fn save(path: &Path, mlp: &Mlp, extra: &[(&str, String)]) -> Result<()> {
    let mut metadata = model_metadata(mlp.config(), MODEL_FORMAT);
    metadata.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    let bytes = serialize(model_tensors(mlp, ""), &metadata);
    write_atomically(path, |w| w.write_all(&bytes))
}

/// Loads a model saved by [`save`] (or the model of a training checkpoint), or any safetensors
/// file with an MLP's `fcN.weight` and `fcN.bias` tensors in f32 (then the widths come from the
/// shapes, without output ReLU).
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
    let file = File::parse(bytes)?;
    file.model("")
}

/// A training run at the end of an epoch: enough to continue it exactly.
#[derive(Debug, Clone)]
pub struct TrainingState {
    /// The model after the last epoch.
    pub model: Mlp,
    /// What defines the run.
    pub settings: RunSettings,
    /// The optimizer's state.
    pub optimizer: OptimState,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Threads the run used (a batch is split across them, which rounding sees).
    pub threads: usize,
    /// The figures of every epoch so far, without their timings.
    pub history: Vec<EpochRecord>,
    /// Early stopping's best epoch so far, if it is on.
    pub best: Option<Best>,
}

/// The epoch with the lowest validation loss, and its weights.
#[derive(Debug, Clone)]
pub struct Best {
    /// Its validation loss.
    pub val_loss: f64,
    /// Its 1-based number.
    pub epoch: usize,
    /// Its weights.
    pub model: Mlp,
}

/// Saves a training state at `path` atomically.
///
/// # Errors
/// The file cannot be written; an earlier file at `path` is then left intact.
pub fn save_training(path: &Path, state: &TrainingState) -> Result<()> {
    let mut tensors = model_tensors(&state.model, "");
    let params = state.model.params();
    for (name, values) in &state.optimizer.buffers {
        let param = params
            .iter()
            .find(|p| name.strip_prefix(p.name()).is_some_and(|rest| rest.starts_with('.')))
            .with_context(|| format!("optimizer buffer {name} belongs to no parameter"))?;
        tensors.push((format!("{OPTIMIZER_PREFIX}{name}"), param.shape().to_vec(), param.storage_to_row_major(values)));
    }
    let mut metadata = model_metadata(state.model.config(), TRAINING_FORMAT);
    let s = &state.settings;
    let mut put = |k: &str, v: String| metadata.insert(k.to_owned(), v);
    put("epochs_done", state.epochs_done.to_string());
    put("threads", state.threads.to_string());
    put("batch_size", s.batch_size.to_string());
    put("hidden", join(&s.hidden));
    put("seed", s.seed.to_string());
    put("val_split", format!("{:?}", s.val_split));
    put("early_stop", s.early_stop.map_or("none".into(), |p| p.to_string()));
    put("optimizer_step", state.optimizer.step.to_string());
    match s.optimizer {
        OptimizerConfig::Adam(c) => {
            put("optimizer", "adam".into());
            put("lr", format!("{:?}", c.lr));
            put("beta1", format!("{:?}", c.betas.0));
            put("beta2", format!("{:?}", c.betas.1));
            put("eps", format!("{:?}", c.eps));
            put("weight_decay", weight_decay(c.weight_decay));
        }
        OptimizerConfig::Sgd(c) => {
            put("optimizer", "sgd".into());
            put("lr", format!("{:?}", c.lr));
            put("momentum", format!("{:?}", c.momentum));
            put("dampening", format!("{:?}", c.dampening));
            put("nesterov", c.nesterov.to_string());
            put("weight_decay", weight_decay(c.weight_decay));
        }
    }
    put("history", state.history.iter().map(history_row).collect::<Vec<_>>().join(";"));
    if let Some(best) = &state.best {
        put("best_epoch", best.epoch.to_string());
        put("best_val_loss", format!("{:?}", best.val_loss));
        tensors.extend(model_tensors(&best.model, BEST_PREFIX));
    }
    let bytes = serialize(tensors, &metadata);
    write_atomically(path, |w| w.write_all(&bytes))
}

/// Loads a training state saved by [`save_training`].
///
/// # Errors
/// A one-line reason naming `path`: unreadable or damaged, a model file without training state,
/// or settings, optimizer buffers or best weights missing or malformed.
pub fn load_training(path: &Path) -> Result<TrainingState> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_training(&bytes).map_err(|e| anyhow!("{}: {e:#}", path.display()))
}

/// [`load_training`] from bytes in memory.
///
/// # Errors
/// As [`load_training`], without the path.
pub fn parse_training(bytes: &[u8]) -> Result<TrainingState> {
    let file = File::parse(bytes)?;
    if file.meta(FORMAT_KEY).ok() != Some(TRAINING_FORMAT) {
        bail!("a model without training state: --resume needs a file written by train --checkpoint");
    }
    let model = file.model("")?;
    let num = |key: &str| -> Result<f64> {
        let v = file.meta(key)?;
        v.parse::<f64>().map_err(|_| anyhow!("metadata {key} {v:?} is not a number"))
    };
    let int = |key: &str| -> Result<u64> {
        let v = file.meta(key)?;
        v.parse::<u64>().map_err(|_| anyhow!("metadata {key} {v:?} is not a count"))
    };
    let decay = parse_weight_decay(file.meta("weight_decay")?)?;
    let (optimizer, buffer_names): (_, &[&str]) = match file.meta("optimizer")? {
        "adam" => (
            OptimizerConfig::Adam(AdamConfig {
                lr: num("lr")? as f32,
                betas: (num("beta1")? as f32, num("beta2")? as f32),
                eps: num("eps")? as f32,
                weight_decay: decay,
            }),
            &["exp_avg", "exp_avg_sq"],
        ),
        "sgd" => (
            OptimizerConfig::Sgd(SgdConfig {
                lr: num("lr")? as f32,
                momentum: num("momentum")? as f32,
                dampening: num("dampening")? as f32,
                nesterov: file.meta("nesterov")? == "true",
                weight_decay: decay,
            }),
            &["momentum_buffer"],
        ),
        other => bail!("unknown optimizer {other:?} in the metadata"),
    };
    let early_stop = match file.meta("early_stop")? {
        "none" => None,
        p => Some(p.parse::<usize>().map_err(|_| anyhow!("metadata early_stop {p:?} is not a count"))?),
    };
    let settings = RunSettings {
        batch_size: int("batch_size")? as usize,
        optimizer,
        hidden: model.config().widths[1..model.config().widths.len() - 1].to_vec(),
        output_relu: model.config().output_relu,
        seed: int("seed")?,
        val_split: num("val_split")?,
        early_stop,
    };
    let step = int("optimizer_step")?;
    let mut buffers = Vec::new();
    for p in model.params().iter() {
        for b in buffer_names {
            let name = format!("{}.{b}", p.name());
            match file.f32_tensor(&format!("{OPTIMIZER_PREFIX}{name}"))? {
                Some((shape, values)) if shape == p.shape() => buffers.push((name, p.row_major_to_storage(&values))),
                Some((shape, _)) => bail!("optimizer buffer {name} has shape {shape:?}, expected {:?}", p.shape()),
                // Adam has both buffers after its first step; SGD only with momentum.
                None if step > 0 && buffer_names.len() == 2 => {
                    bail!("missing optimizer state {OPTIMIZER_PREFIX}{name}")
                }
                None => {}
            }
        }
    }
    let history =
        file.meta("history")?.split(';').filter(|r| !r.is_empty()).map(parse_history_row).collect::<Result<_>>()?;
    let best = match file.meta("best_epoch") {
        Ok(epoch) => Some(Best {
            val_loss: num("best_val_loss")?,
            epoch: epoch.parse().map_err(|_| anyhow!("metadata best_epoch {epoch:?} is not a count"))?,
            model: file.model(BEST_PREFIX)?,
        }),
        Err(_) => None,
    };
    Ok(TrainingState {
        model,
        settings,
        optimizer: OptimState { step, buffers },
        epochs_done: int("epochs_done")? as usize,
        threads: int("threads")? as usize,
        history,
        best,
    })
}

/// A parsed safetensors file.
struct File<'a> {
    tensors: SafeTensors<'a>,
    metadata: std::collections::HashMap<String, String>,
}

impl<'a> File<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| anyhow!("not a safetensors file: {e}"))?;
        Ok(Self { tensors, metadata: header.metadata().clone().unwrap_or_default() })
    }

    fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).with_context(|| format!("metadata {key} is missing"))
    }

    /// Tensor `name` as f32 values, if present.
    fn f32_tensor(&self, name: &str) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        let Ok(view) = self.tensors.tensor(name) else { return Ok(None) };
        if view.dtype() != Dtype::F32 {
            bail!("tensor {name} is {:?}, expected F32", view.dtype());
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Some((view.shape().to_vec(), values)))
    }

    /// The model whose tensors are named `{prefix}fc1.weight`, ...: all of the file's tensors,
    /// except that in a training checkpoint those of the optimizer and of the other model are
    /// left out.
    fn model(&self, prefix: &str) -> Result<Mlp> {
        let training = self.meta(FORMAT_KEY).ok() == Some(TRAINING_FORMAT);
        let config = match self.metadata.get("widths") {
            Some(w) => MlpConfig {
                widths: w
                    .split(',')
                    .map(|v| {
                        v.trim().parse::<usize>().map_err(|_| anyhow!("metadata widths {w:?} is not a list of widths"))
                    })
                    .collect::<Result<_>>()?,
                output_relu: match self.metadata.get("output_relu").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => bail!("metadata output_relu {other:?} is neither true nor false"),
                },
            },
            None => self.infer_config()?,
        };
        config.validate()?;
        let mut named = Vec::new();
        for name in self.tensors.names() {
            let local = if prefix.is_empty() {
                let other_part = name.starts_with(OPTIMIZER_PREFIX) || name.starts_with(BEST_PREFIX);
                if training && other_part {
                    continue;
                }
                name
            } else {
                match name.strip_prefix(prefix) {
                    Some(local) => local,
                    None => continue,
                }
            };
            let (shape, values) = self.f32_tensor(name)?.expect("listed by the file");
            named.push((local.to_owned(), shape, values));
        }
        Ok(Mlp::from_named(&config, named)?)
    }

    /// The widths of an MLP stored without metadata: from the shapes of `fc1.weight`,
    /// `fc2.weight`, ...
    fn infer_config(&self) -> Result<MlpConfig> {
        let mut widths = Vec::new();
        for layer in 1.. {
            let Ok(w) = self.tensors.tensor(&format!("fc{layer}.weight")) else { break };
            let &[out, inp] = w.shape() else {
                bail!("fc{layer}.weight has shape {:?}, expected 2 dimensions", w.shape())
            };
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
}

/// The model's tensors, row-major, named `{prefix}fc1.weight`, ...
fn model_tensors(mlp: &Mlp, prefix: &str) -> Vec<Named> {
    mlp.params().iter().map(|p| (format!("{prefix}{}", p.name()), p.shape().to_vec(), p.to_row_major())).collect()
}

fn model_metadata(config: &MlpConfig, format: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (FORMAT_KEY.to_owned(), format.to_owned()),
        ("widths".to_owned(), join(&config.widths)),
        ("output_relu".to_owned(), config.output_relu.to_string()),
    ])
}

fn join(values: &[usize]) -> String {
    values.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

fn weight_decay(w: WeightDecay) -> String {
    match w {
        WeightDecay::None => "none".into(),
        WeightDecay::L2(l) => format!("l2:{l:?}"),
        WeightDecay::Decoupled(l) => format!("decoupled:{l:?}"),
    }
}

fn parse_weight_decay(s: &str) -> Result<WeightDecay> {
    let value = |v: &str| v.parse::<f32>().map_err(|_| anyhow!("metadata weight_decay {s:?} is malformed"));
    match s.split_once(':') {
        None if s == "none" => Ok(WeightDecay::None),
        Some(("l2", v)) => Ok(WeightDecay::L2(value(v)?)),
        Some(("decoupled", v)) => Ok(WeightDecay::Decoupled(value(v)?)),
        _ => bail!("metadata weight_decay {s:?} is malformed"),
    }
}

/// An epoch's figures, exactly (`{:?}` round-trips floats), without its timing.
fn history_row(r: &EpochRecord) -> String {
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:?}"));
    format!("{},{:?},{:?},{},{}", r.epoch, r.train_loss, r.train_accuracy, opt(r.val_loss), opt(r.val_accuracy))
}

fn parse_history_row(row: &str) -> Result<EpochRecord> {
    let bad = || anyhow!("metadata history row {row:?} is malformed");
    let fields: Vec<&str> = row.split(',').collect();
    let [epoch, loss, acc, val_loss, val_acc] = fields[..] else { return Err(bad()) };
    let opt = |v: &str| if v.is_empty() { Ok(None) } else { v.parse().map(Some).map_err(|_| bad()) };
    Ok(EpochRecord {
        epoch: epoch.parse().map_err(|_| bad())?,
        train_loss: loss.parse().map_err(|_| bad())?,
        train_accuracy: acc.parse().map_err(|_| bad())?,
        val_loss: opt(val_loss)?,
        val_accuracy: opt(val_acc)?,
        seconds: None,
    })
}

/// The safetensors encoding of f32 `tensors` and `metadata`: an 8-byte little-endian header
/// length, a JSON header (metadata first, then the tensors by name, as the crate orders them),
/// padded with spaces to 8 bytes, then the data.
fn serialize(mut tensors: Vec<Named>, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = format!("{{\"__metadata__\":{}", json(metadata));
    let mut offset = 0;
    for (name, shape, values) in &tensors {
        let end = offset + 4 * values.len();
        header += &format!(
            ",{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            json(name),
            json(shape)
        );
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, _, values) in &tensors {
        out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    out
}

/// JSON text of a header's values: strings, shapes and the metadata map.
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("strings, numbers and maps of strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use safetensors::tensor::TensorView;

    fn model() -> Mlp {
        Mlp::new(
            &MlpConfig { widths: vec![6, 4, 3], output_relu: true },
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
        )
    }

    fn le_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// The crate's own encoding of a model, with `metadata`.
    fn crate_bytes(mlp: &Mlp, metadata: Option<std::collections::HashMap<String, String>>) -> Vec<u8> {
        let data: Vec<_> = mlp.params().iter().map(|p| le_bytes(&p.to_row_major())).collect();
        let views: Vec<_> = mlp
            .params()
            .iter()
            .zip(&data)
            .map(|(p, d)| (p.name(), TensorView::new(Dtype::F32, p.shape().to_vec(), d).unwrap()))
            .collect();
        safetensors::serialize(views, metadata).unwrap()
    }

    #[test]
    fn the_encoding_is_the_crates_own() {
        let mlp = model();
        let metadata = BTreeMap::from([("format".to_owned(), "x".to_owned())]);
        let ours = serialize(model_tensors(&mlp, ""), &metadata);
        assert_eq!(ours, crate_bytes(&mlp, Some(metadata.into_iter().collect())));
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

        // The same model saved again gives the same bytes.
        save(&path, &mlp, &[("epochs", "3".into())]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn widths_are_inferred_when_the_metadata_is_missing() {
        let mlp = model();
        let loaded = parse(&crate_bytes(&mlp, None)).unwrap();
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
        let mut mixed = model_tensors(&other, "");
        mixed.retain(|t| t.0.starts_with("fc1."));
        mixed.extend(model_tensors(&model(), "").into_iter().filter(|t| t.0.starts_with("fc2.")));
        let err = format!("{:#}", parse(&serialize(mixed, &BTreeMap::new())).unwrap_err());
        assert_eq!(err, "parameter fc2.weight has shape [3, 4], expected [3, 5]");
    }

    #[test]
    fn a_model_file_is_not_a_training_state() {
        let bytes = serialize(model_tensors(&model(), ""), &model_metadata(model().config(), MODEL_FORMAT));
        let err = format!("{:#}", parse_training(&bytes).unwrap_err());
        assert_eq!(err, "a model without training state: --resume needs a file written by train --checkpoint");
    }
}
