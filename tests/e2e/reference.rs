//! The training core against PyTorch's own numbers (`$TORCH_REFERENCE_DIR`): forward, loss,
//! gradients, and optimizer trajectories, to 1e-5 relative.

use std::path::Path;

use ndarray::{Array2, ArrayView2};
use nn::{Grads, MlpConfig, Model, Sequential, StateDict, Tape, Tensor};
use optim::{Adam, AdamConfig, Optimizer, Sgd, SgdConfig, WeightDecay};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

/// `|got - want| <= 1e-5·|want| + 1e-6`: float32 arithmetic in another order differs in the
/// last bits, not more.
pub(crate) fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-6, "{what}[{i}]: got {g}, PyTorch {w}");
    }
}

pub(crate) fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("a number") as f32],
        other => panic!("not a number or array: {other}"),
    }
}

/// `$TORCH_REFERENCE_DIR/NAME` as JSON, if the folder is found (on CI it must be).
pub(crate) fn reference_json(name: &str) -> Option<Value> {
    let path = testkit::reference_dir()?.join(name);
    Some(serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap())
}

/// A case's count `key`.
pub(crate) fn count(case: &Value, key: &str) -> usize {
    case[key].as_u64().unwrap_or_else(|| panic!("{key} missing")) as usize
}

/// `values` as `n` rows.
pub(crate) fn rows(values: Vec<f32>, n: usize) -> Array2<f32> {
    let width = values.len() / n;
    Array2::from_shape_vec((n, width), values).unwrap()
}

pub(crate) fn shape(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(items) => {
            let mut s = vec![items.len()];
            s.extend(items.first().map(shape).unwrap_or_default());
            s
        }
        _ => vec![],
    }
}

fn tiny() -> Option<Value> {
    reference_json("tiny.json")
}

/// The tiny model from its `init` (or any other) parameter map.
fn tiny_model(tiny: &Value, params: &Value) -> Sequential {
    let widths = tiny["widths"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap() as usize).collect();
    let mut state = StateDict::new();
    for (name, value) in params.as_object().unwrap() {
        state.insert(name.clone(), Tensor::new(shape(value), floats(value)));
    }
    let config = MlpConfig { widths, output_relu: false };
    state.set_meta("widths", config.widths.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
    Sequential::from_state_dict(&state).unwrap()
}

fn batch(tiny: &Value) -> (Array2<f32>, Vec<usize>) {
    let x = Array2::from_shape_vec((6, 4), floats(&tiny["x"])).unwrap();
    let y = tiny["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    (x, y)
}

/// Forward and backward on one batch: returns (loss, logits, gradients).
fn forward_backward(mlp: &Sequential, x: ArrayView2<f32>, y: &[usize]) -> (f32, Vec<f32>, Grads) {
    let mut tape = Tape::new();
    let input = tape.input(x);
    let logits = mlp.forward(&mut tape, input);
    let loss = tape.cross_entropy(logits, y);
    let mut grads = Grads::new(mlp.params());
    tape.backward(loss, mlp.params(), &mut grads);
    (tape.value(loss)[[0, 0]], tape.value(logits).iter().copied().collect(), grads)
}

/// Each parameter's name with its gradient in row-major (PyTorch's) order.
fn named_grads(mlp: &Sequential, grads: &Grads) -> Vec<(String, Vec<f32>)> {
    (0..mlp.params().len())
        .map(|i| {
            let id = mlp.params().ids().nth(i).expect("that many parameters");
            (mlp.params().get(id).name().to_owned(), grads.tensor(mlp.params(), id).unwrap().into_data())
        })
        .collect()
}

#[test]
fn tiny_forward_loss_and_gradients_match_pytorch() {
    let Some(tiny) = tiny() else { return };
    let mlp = tiny_model(&tiny, &tiny["init"]);
    let (x, y) = batch(&tiny);
    let (loss, logits, grads) = forward_backward(&mlp, x.view(), &y);
    assert_close("logits", &logits, &floats(&tiny["logits"]));
    assert_close("loss", &[loss], &[tiny["loss"].as_f64().unwrap() as f32]);
    for (name, grad) in named_grads(&mlp, &grads) {
        assert_close(&format!("grad {name}"), &grad, &floats(&tiny["grads"][&name]));
    }
}

#[test]
fn extreme_logits_match_pytorch_without_inf_or_nan() {
    let Some(tiny) = tiny() else { return };
    let case = &tiny["cross_entropy_extreme"];
    let z = Array2::from_shape_vec((4, 3), floats(&case["logits"])).unwrap();
    let y: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let per_sample: Vec<f32> = (0..4)
        .map(|i| {
            let mut tape = Tape::new();
            let row = tape.input(z.slice(ndarray::s![i..i + 1, ..]));
            let loss = tape.cross_entropy(row, &y[i..i + 1]);
            tape.value(loss)[[0, 0]]
        })
        .collect();
    assert_close("per-sample loss", &per_sample, &floats(&case["per_sample_loss"]));
    let mut tape = Tape::new();
    let all = tape.input(z.view());
    let mean = tape.cross_entropy(all, &y);
    assert_close("mean loss", &[tape.value(mean)[[0, 0]]], &[case["mean_loss"].as_f64().unwrap() as f32]);
}

/// The optimizer a reference setting's name describes, e.g. `sgd_lr0.1_m0.9_nesterov`.
fn optimizer_for(name: &str) -> Box<dyn Optimizer> {
    let mut parts = name.split('_');
    let kind = parts.next().unwrap();
    let (mut lr, mut wd, mut momentum, mut dampening, mut nesterov) = (0.0, 0.0, 0.0, 0.0, false);
    for part in parts {
        let num = |prefix: &str| part.strip_prefix(prefix).and_then(|v| v.parse::<f32>().ok());
        if part == "nesterov" {
            nesterov = true;
        } else if let Some(v) = num("lr") {
            lr = v;
        } else if let Some(v) = num("wd") {
            wd = v;
        } else if let Some(v) = num("dampening") {
            dampening = v;
        } else if let Some(v) = num("m") {
            momentum = v;
        } else {
            panic!("unknown part {part:?} of {name}");
        }
    }
    match kind {
        "adam" => {
            Box::new(Adam::new(AdamConfig { lr, weight_decay: WeightDecay::L2(wd), ..Default::default() }).unwrap())
        }
        "adamw" => Box::new(
            Adam::new(AdamConfig { lr, weight_decay: WeightDecay::Decoupled(wd), ..Default::default() }).unwrap(),
        ),
        "sgd" => {
            let config = SgdConfig { lr, momentum, dampening, nesterov, weight_decay: WeightDecay::L2(wd) };
            Box::new(Sgd::new(config).unwrap())
        }
        other => panic!("unknown optimizer {other}"),
    }
}

#[test]
fn optimizer_trajectories_match_pytorch() {
    let Some(tiny) = tiny() else { return };
    let (x, y) = batch(&tiny);
    let settings = tiny["optimizers"].as_object().unwrap();
    assert_eq!(settings.len(), 7, "every reference setting is exercised");
    for (name, steps) in settings {
        let mut mlp = tiny_model(&tiny, &tiny["init"]);
        let mut opt = optimizer_for(name);
        for (k, step) in steps.as_array().unwrap().iter().enumerate() {
            let (loss, _, grads) = forward_backward(&mlp, x.view(), &y);
            let want = step["loss_before_step"].as_f64().unwrap() as f32;
            assert_close(&format!("{name} step {k} loss"), &[loss], &[want]);
            opt.step(mlp.params_mut(), &grads).unwrap();
            for p in mlp.params().iter() {
                let want = floats(&step["params_after_step"][p.name()]);
                assert_close(&format!("{name} step {k} {}", p.name()), p.to_tensor().data(), &want);
            }
        }
    }
}

/// The f32 tensor `name` of a safetensors file.
pub(crate) fn tensor(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (t.shape().to_vec(), values)
}

fn first_batch(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("mlp_first_batch.safetensors")).unwrap()
}

#[test]
fn the_notebook_model_on_the_first_mnist_batch_matches_pytorch() {
    let Some(dir) = testkit::reference_dir() else { return };
    let bytes = first_batch(&dir);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let config = MlpConfig::default();
    let mut state = StateDict::new();
    for (name, _) in config.param_shapes() {
        let (shape, values) = tensor(&st, &format!("init.{name}"));
        state.insert(name, Tensor::new(shape, values));
    }
    let mut mlp = Sequential::from_state_dict(&state).unwrap();
    assert_eq!(mlp.config().as_mlp().as_ref(), Some(&config), "the widths come from the shapes");
    let ids: Vec<_> = mlp.params().ids().collect();
    let (_, input) = tensor(&st, "input");
    let x = Array2::from_shape_vec((64, 784), input).unwrap();
    let labels = st.tensor("labels").unwrap();
    assert_eq!(labels.dtype(), Dtype::I64);
    let y: Vec<usize> =
        labels.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect();

    let (loss, logits, grads) = forward_backward(&mlp, x.view(), &y);
    assert_close("logits", &logits, &tensor(&st, "logits").1);
    assert_close("loss", &[loss], &tensor(&st, "loss").1);
    for (name, grad) in named_grads(&mlp, &grads) {
        assert_close(&format!("grad.{name}"), &grad, &tensor(&st, &format!("grad.{name}")).1);
    }

    // Adam fed PyTorch's own gradients must land on PyTorch's parameters.
    let mut on_torch_grads = mlp.clone();
    let mut torch_grads = Grads::new(mlp.params());
    for &id in &ids {
        let p = mlp.params().get(id);
        let (shape, grad) = tensor(&st, &format!("grad.{}", p.name()));
        torch_grads.set(id, &p.aligned_from_tensor(&Tensor::new(shape, grad)).unwrap());
    }
    Adam::new(AdamConfig::default()).unwrap().step(on_torch_grads.params_mut(), &torch_grads).unwrap();
    for p in on_torch_grads.params().iter() {
        let want = tensor(&st, &format!("adam_step1.{}", p.name())).1;
        assert_close(&format!("adam_step1.{} from PyTorch's gradients", p.name()), p.to_tensor().data(), &want);
    }

    // Fed our own gradients, it must too, within what the gradients' last-bit differences
    // allow: Adam's first step is lr·g/(|g| + eps), whose slope lr·eps/(|g| + eps)² is large
    // where a gradient is a near-cancelling sum as small as eps.
    let lr = f64::from(AdamConfig::default().lr);
    let eps = f64::from(AdamConfig::default().eps);
    let ours: Vec<Vec<f32>> = named_grads(&mlp, &grads).into_iter().map(|(_, g)| g).collect();
    Adam::new(AdamConfig::default()).unwrap().step(mlp.params_mut(), &grads).unwrap();
    for (p, our_grad) in mlp.params().iter().zip(&ours) {
        let (_, torch_grad) = tensor(&st, &format!("grad.{}", p.name()));
        let want = tensor(&st, &format!("adam_step1.{}", p.name())).1;
        for (i, (&got, &w)) in p.to_tensor().data().iter().zip(&want).enumerate() {
            let g = f64::from(torch_grad[i]);
            let slope = lr * eps / (g.abs() + eps).powi(2);
            let allowed = 1e-5 * f64::from(w.abs()) + 1e-6 + slope * f64::from(our_grad[i] - torch_grad[i]).abs();
            assert!(
                f64::from(got - w).abs() <= allowed,
                "adam_step1.{}[{i}]: got {got}, PyTorch {w}, gradient {} vs {g}",
                p.name(),
                our_grad[i]
            );
        }
    }
    let (loss_after, _, _) = forward_backward(&mlp, x.view(), &y);
    assert_close("adam_step1.loss", &[loss_after], &tensor(&st, "adam_step1.loss").1);
}

#[test]
fn our_first_batch_is_pytorchs_first_batch() {
    let Some(dir) = testkit::reference_dir() else { return };
    let Some(mnist_dir) = testkit::mnist_dir() else { return };
    let mnist = data::Mnist::load(&mnist_dir).unwrap();
    let mut loader = data::Loader::all(&mnist.train, 64, data::Order::Sequential);
    loader.set_epoch(0);
    let mut batch = data::Batch::new();
    loader.fill(0, &mut batch);
    let bytes = first_batch(&dir);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, input) = tensor(&st, "input");
    // Bit for bit: pixels / 255 in f32, as ToTensor computes them.
    assert!(batch.x().iter().zip(&input).all(|(a, b)| a.to_bits() == b.to_bits()));
    let labels = st.tensor("labels").unwrap();
    let y: Vec<usize> =
        labels.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect();
    assert_eq!(batch.labels(), y.as_slice());
}
