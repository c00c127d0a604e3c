//! Average pooling and activations against PyTorch's own numbers (`bn.json` in
//! `$TORCH_REFERENCE_DIR`): outputs and the gradients of `sum(y * upstream)`, to 1e-5 relative.

use ndarray::Array2;
use serde_json::Value;
use tensor::{Activation, Pool2dShape};

use crate::reference::{assert_close, count, floats, rows};

fn bn_json() -> Option<Value> {
    crate::reference::reference_json("bn.json")
}

#[test]
fn activations_and_their_gradients_match_pytorch() {
    let Some(json) = bn_json() else { return };
    let cases = json["activations"].as_object().unwrap();
    assert_eq!(cases.len(), 5, "every reference case is exercised");
    for (name, case) in cases {
        let f = match name.as_str() {
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "gelu" => Activation::Gelu,
            "gelu_tanh" => Activation::GeluTanh,
            "leaky_relu_0.01" => Activation::LeakyRelu(0.01),
            other => panic!("an activation this test does not know: {other}"),
        };
        let x = floats(&case["x"]);
        let mut y = vec![0.0; x.len()];
        tensor::activation(f, &x, &mut y);
        assert_close(&format!("{name} y"), &y, &floats(&case["y"]));
        let mut dx = vec![f32::NAN; x.len()];
        tensor::activation_backward(f, &x, &y, &floats(&case["upstream"]), 0.0, &mut dx);
        assert_close(&format!("{name} grad_x"), &dx, &floats(&case["grad_x"]));
    }
}

#[test]
fn average_pooling_and_its_gradient_match_pytorch() {
    let Some(json) = bn_json() else { return };
    let cases = json["avgpool2d"].as_object().unwrap();
    assert_eq!(cases.len(), 3, "every reference case is exercised");
    for (name, case) in cases {
        let n = count(case, "n");
        let shape = Pool2dShape {
            channels: count(case, "channels"),
            height: count(case, "height"),
            width: count(case, "width"),
            kernel: count(case, "kernel"),
            stride: count(case, "stride"),
        };
        let x = rows(floats(&case["x"]), n);
        let mut y = Array2::zeros((n, shape.out_len()));
        tensor::avg_pool2d(x.view(), &shape, y.view_mut());
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));
        let mut dx = Array2::from_elem(x.dim(), f32::NAN);
        tensor::avg_pool2d_backward(rows(floats(&case["upstream"]), n).view(), &shape, 0.0, dx.view_mut());
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &floats(&case["grad_x"]));
    }

    let case = &json["global_avgpool"]["case"];
    let (n, channels) = (count(case, "n"), count(case, "channels"));
    let x = rows(floats(&case["x"]), n);
    let mut y = Array2::zeros((n, channels));
    tensor::global_avg_pool(x.view(), channels, y.view_mut());
    assert_close("global y", y.as_slice().unwrap(), &floats(&case["y"]));
    let mut dx = Array2::from_elem(x.dim(), f32::NAN);
    tensor::global_avg_pool_backward(rows(floats(&case["upstream"]), n).view(), 0.0, dx.view_mut());
    assert_close("global grad_x", dx.as_slice().unwrap(), &floats(&case["grad_x"]));
}

/// One entry of a reference `state_dict`.
enum Entry {
    Values(nn::Tensor),
    Counter(i64),
}

/// A JSON value as an entry: a number for a counter, an array for values.
fn entry(name: &str, value: &Value) -> Entry {
    if name.ends_with("num_batches_tracked") {
        Entry::Counter(value.as_i64().unwrap())
    } else {
        Entry::Values(nn::Tensor::new(crate::reference::shape(value), floats(value)))
    }
}

/// A safetensors tensor as an entry.
fn file_entry(file: &nn::StateDict, name: &str) -> Option<Entry> {
    match file.get_i64(name) {
        Some(t) => Some(Entry::Counter(t.data()[0])),
        None => file.get(name).map(|t| Entry::Values(t.clone())),
    }
}

/// A model of `layers` on `input`, every tensor that `state` has (parameters, running
/// statistics and counters) in place of its own.
fn model_with(layers: &str, input: [usize; 3], state: impl Fn(&str) -> Option<Entry>) -> nn::Sequential {
    use nn::Model;
    let config = nn::SequentialConfig::parse(layers, input).unwrap();
    let mut dict = nn::Sequential::new(&config, &mut train::init_rng(0)).state_dict();
    let names: Vec<String> = dict.names().map(str::to_owned).collect();
    for name in names {
        match state(&name) {
            Some(Entry::Counter(n)) => dict.insert_i64(name, nn::IntTensor::new(vec![], vec![n])),
            Some(Entry::Values(t)) => dict.insert(name, t),
            None => {}
        }
    }
    nn::Sequential::from_state_dict(&dict).unwrap()
}

/// Asserts that `model`'s whole `state_dict` is `want`'s, counters exactly, values to 1e-5
/// relative; except the `loose` ones, to `slack`: a bias right before a batch normalisation
/// has a gradient of 0 but for rounding, which Adam turns into a step of up to its learning
/// rate whose sign is that rounding's, in PyTorch as here, and the running mean it feeds
/// carries that step along.
fn assert_state(what: &str, model: &nn::Sequential, want: impl Fn(&str) -> Option<Entry>, loose: &[&str], slack: f32) {
    use nn::Model;
    let state = model.state_dict();
    for name in state.names() {
        let reference = want(name).unwrap_or_else(|| panic!("{what}: {name} is not in the reference"));
        match (state.get_i64(name), reference) {
            (Some(counter), Entry::Counter(n)) => assert_eq!(counter.data(), &[n], "{what}: {name}"),
            (None, Entry::Values(t)) if loose.contains(&name) => {
                for (i, (&g, &w)) in state.get(name).unwrap().data().iter().zip(t.data()).enumerate() {
                    assert!((g - w).abs() <= slack, "{what}: {name}[{i}]: got {g}, PyTorch {w}, beyond {slack}");
                }
            }
            (None, Entry::Values(t)) => {
                assert_close(&format!("{what}: {name}"), state.get(name).unwrap().data(), t.data())
            }
            _ => panic!("{what}: {name} is a counter on one side only"),
        }
    }
}

#[test]
fn batch_normalisation_matches_pytorch_in_both_modes_with_its_buffers() {
    use nn::Model;
    let Some(json) = bn_json() else { return };
    let mut cases = 0;
    for kind in ["batchnorm2d", "batchnorm1d"] {
        for (name, case) in json[kind].as_object().unwrap() {
            cases += 1;
            let what = format!("{kind} {name}");
            let shape: Vec<usize> =
                case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let n = shape[0];
            let training = case["training"].as_bool().unwrap();
            let (momentum, eps) = (case["momentum"].as_f64().unwrap(), case["eps"].as_f64().unwrap());
            let layer = format!("batchnorm(momentum={momentum},eps={eps})");
            // The layer inside a model, for its running statistics: on images, or after flatten.
            let (layers, input) = match shape[..] {
                [_, c, h, w] => (format!("{layer},flatten,linear(1)"), [c, h, w]),
                [_, c] => (format!("flatten,{layer},linear(1)"), [1, 1, c]),
                _ => panic!("{what}: shape {shape:?}"),
            };
            let reference = |name: &str| {
                let leaf = name.strip_prefix("bn1.")?;
                match leaf {
                    "weight" | "bias" => Some(case[leaf].clone()),
                    _ => case["before"].get(leaf).cloned().or(Some(Value::from(0))),
                }
            };
            let mut model = model_with(&layers, input, |name| reference(name).map(|v| entry(name, &v)));
            let x = rows(floats(&case["x"]), n);

            // y and its gradients on the tape, with loss = sum(y * upstream).
            let mut params = model.params().clone();
            let zero = params.add("zero", &[x.ncols()], vec![0.0; x.ncols()]);
            let (w, b) = (params.by_name("bn1.weight").unwrap(), params.by_name("bn1.bias").unwrap());
            let mut tape = nn::Tape::new();
            let input_var = tape.input(x.view());
            let input_var = tape.add_bias(&params, input_var, zero);
            let y = if training {
                tape.batch_norm(&params, input_var, w, b, eps as f32)
            } else {
                let (m, v) = (floats(&case["before"]["running_mean"]), floats(&case["before"]["running_var"]));
                tape.batch_norm_fixed(&params, input_var, w, b, &m, &v, eps as f32)
            };
            assert_close(&format!("{what} y"), tape.value(y).as_slice().unwrap(), &floats(&case["y"]));
            let loss = tape.weighted_sum(y, rows(floats(&case["upstream"]), n).view());
            let mut grads = nn::Grads::new(&params);
            tape.backward(loss, &params, &mut grads);
            assert_close(&format!("{what} grad_weight"), grads.get(w).unwrap(), &floats(&case["grad_weight"]));
            assert_close(&format!("{what} grad_bias"), grads.get(b).unwrap(), &floats(&case["grad_bias"]));
            assert_close(&format!("{what} grad_x"), grads.get(zero).unwrap(), &sum_rows(&floats(&case["grad_x"]), n));
            assert_close(
                &format!("{what} grad_x"),
                tape.grad(input_var).unwrap().as_slice().unwrap(),
                &floats(&case["grad_x"]),
            );

            // The running statistics after one forward pass: moved in training mode only.
            let mut tape = nn::Tape::new();
            let input_var = tape.input(x.view());
            if training {
                model.forward_train(&mut tape, input_var, &mut train::init_rng(0));
                model.track_running_statistics(&tape);
            } else {
                let _ = model.forward(&mut tape, input_var);
            }
            let state = model.state_dict();
            for leaf in ["running_mean", "running_var"] {
                let name = format!("bn1.{leaf}");
                assert_close(
                    &format!("{what} {leaf}"),
                    state.get(&name).unwrap().data(),
                    &floats(&case["after"][leaf]),
                );
            }
            let tracked = state.get_i64("bn1.num_batches_tracked").unwrap().data()[0];
            assert_eq!(tracked, case["after"]["num_batches_tracked"].as_i64().unwrap(), "{what}");
        }
    }
    assert_eq!(cases, 6, "every reference case is exercised");
}

/// `|got - want| <= tolerance·max|want|` for every value: relative to the tensor's scale.
/// Deep networks of f32 sums taken in another order leave values near 0 with errors of the
/// tensor's scale, not of their own.
fn assert_close_to_scale(what: &str, got: &[f32], want: &[f32], tolerance: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = want.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tolerance * scale, "{what}[{i}]: got {g}, PyTorch {w}, beyond {tolerance} of {scale}");
    }
}

/// Each column's sum over `n` rows.
fn sum_rows(values: &[f32], n: usize) -> Vec<f32> {
    let width = values.len() / n;
    (0..width).map(|j| (0..n).map(|i| values[i * width + j]).sum()).collect()
}

#[test]
fn a_tiny_cnn_with_batch_normalisation_trains_five_adam_steps_as_pytorch_does() {
    use nn::Model;
    use optim::Optimizer;
    let Some(json) = bn_json() else { return };
    let case = &json["tiny_bn_cnn"];
    let layers = "conv(3,3,pad=1,bias=false),batchnorm,relu,maxpool(2),flatten,linear(5),batchnorm,relu,linear(3)";
    let init = |name: &str| case["init"].get(name).map(|v| entry(name, v));
    let mut model = model_with(layers, [1, 6, 6], init);
    let x = rows(floats(&case["x"]), 6);
    let y: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let mut grads = nn::Grads::new(model.params());
    let step = |model: &mut nn::Sequential, grads: &mut nn::Grads| {
        let mut tape = nn::Tape::new();
        let input = tape.input(x.view());
        let logits = model.forward_train(&mut tape, input, &mut train::init_rng(0));
        let loss = tape.cross_entropy(logits, &y);
        tape.backward(loss, model.params(), grads);
        model.track_running_statistics(&tape);
        (tape.value(loss)[[0, 0]], tape.value(logits).to_owned())
    };
    let (loss, logits) = step(&mut model.clone(), &mut grads);
    assert_close("tiny logits", logits.as_slice().unwrap(), &floats(&case["logits"]));
    assert_close("tiny loss", &[loss], &floats(&case["loss"]));
    for (name, want) in case["grads"].as_object().unwrap() {
        let id = model.params().by_name(name).unwrap();
        assert_close(&format!("tiny grad {name}"), grads.tensor(model.params(), id).unwrap().data(), &floats(want));
    }
    let lr = 0.01;
    let mut adam = optim::Adam::new(optim::AdamConfig { lr, ..optim::AdamConfig::default() }).unwrap();
    let steps = case["adam_lr0.01"].as_array().unwrap();
    for (i, want) in steps.iter().enumerate() {
        let (loss, _) = step(&mut model, &mut grads);
        assert_close(&format!("step {i} loss"), &[loss], &floats(&want["loss_before_step"]));
        adam.step(model.params_mut(), &grads).unwrap();
        let reference = |name: &str| want["state_after_step"].get(name).map(|v| entry(name, v));
        let slack = 2.0 * lr * (i + 1) as f32;
        assert_state(&format!("after step {i}"), &model, reference, &["fc1.bias", "bn2.running_mean"], slack);
    }
    // Evaluation mode on PyTorch's own final state: the running statistics normalise.
    let last = &steps[steps.len() - 1]["state_after_step"];
    let torch = model_with(layers, [1, 6, 6], |name| last.get(name).map(|v| entry(name, v)));
    assert_close("tiny eval logits", torch.logits(x.view()).as_slice().unwrap(), &floats(&case["eval_logits"]));
}

#[test]
fn the_batch_norm_cnn_on_the_first_mnist_batch_matches_pytorch_at_one_and_two_threads() {
    use nn::Model;
    let Some(dir) = testkit::reference_dir() else { return };
    let bytes = std::fs::read(dir.join("cnn_first_batch.safetensors")).unwrap();
    let file = nn::StateDict::from_safetensors(&bytes).unwrap();
    let model = model_with(nn::SequentialConfig::CNN, [1, 28, 28], |name| file_entry(&file, &format!("init.{name}")));
    let x = rows(file.get("input").unwrap().data().to_vec(), 64);
    let labels: Vec<usize> = file.get_i64("labels").unwrap().data().iter().map(|&l| l as usize).collect();

    // The first training forward and backward, on one tape.
    let mut first = model.clone();
    let mut tape = nn::Tape::new();
    let input = tape.input(x.view());
    let logits = first.forward_train(&mut tape, input, &mut train::init_rng(0));
    let loss = tape.cross_entropy(logits, &labels);
    let mut grads = nn::Grads::new(first.params());
    tape.backward(loss, first.params(), &mut grads);
    assert_close_to_scale(
        "cnn logits",
        tape.value(logits).as_slice().unwrap(),
        file.get("logits").unwrap().data(),
        1e-5,
    );
    let want_loss = file.get("loss").unwrap().data();
    assert_close_to_scale("cnn loss", &[tape.value(loss)[[0, 0]]], want_loss, 1e-5);
    // A ReLU's input within rounding of 0 can take the other sign here than in PyTorch (in this
    // batch, one of bn3's 401,408 outputs: 1.5e-7 there, -1.1e-7 here), which moves every
    // gradient below it, by up to 1.6% of its scale (conv3's). The layers themselves are held
    // to 1e-5 by the cases above; the whole network, to 2% of each gradient's scale.
    let mut torch_grads = nn::Grads::new(first.params());
    for p in first.params().iter() {
        let id = first.params().by_name(p.name()).unwrap();
        let want = file.get(&format!("grad.{}", p.name())).unwrap();
        let got = grads.tensor(first.params(), id).unwrap();
        if p.name() != "fc1.bias" {
            // A bias before batch normalisation has a gradient of 0 but for rounding.
            assert_close_to_scale(&format!("cnn grad.{}", p.name()), got.data(), want.data(), 2e-2);
        }
        torch_grads.set(id, &p.aligned_from_tensor(want).unwrap());
    }
    first.track_running_statistics(&tape);
    let after_forward = |name: &str| file_entry(&file, &format!("after_forward.{name}"));
    let state = first.state_dict();
    for name in state.names().filter(|n| n.contains("running") || n.contains("tracked")) {
        match (state.get_i64(name), after_forward(name).unwrap()) {
            (Some(t), Entry::Counter(n)) => assert_eq!(t.data(), &[n], "{name}"),
            (None, Entry::Values(want)) => {
                assert_close_to_scale(
                    &format!("after_forward.{name}"),
                    state.get(name).unwrap().data(),
                    want.data(),
                    1e-5,
                );
            }
            _ => panic!("{name}: a counter on one side only"),
        }
    }
    // Adam fed PyTorch's gradients lands on PyTorch's parameters.
    let adam_step1 = |name: &str| file_entry(&file, &format!("adam_step1.{name}"));
    let mut adam = optim::Adam::new(optim::AdamConfig::default()).unwrap();
    optim::Optimizer::step(&mut adam, first.params_mut(), &torch_grads).unwrap();
    assert_state("adam_step1 from PyTorch's gradients", &first, adam_step1, &[], 0.0);

    // One step of the training engine, on the batch as a data set of 64 images, in one part
    // and in two: the whole batch's loss, statistics and gradients either way. With SGD at a
    // learning rate of 1 and no momentum, the step is the gradient: `init - after`.
    let pixels: Vec<u8> = x.iter().map(|&v| (v * 255.0).round() as u8).collect();
    let data = data::Dataset::new(pixels, labels.iter().map(|&l| l as u8).collect(), 28, 28, 10);
    let sgd = optim::OptimizerConfig::Sgd(optim::SgdConfig { lr: 1.0, ..optim::SgdConfig::default() });
    for threads in [1, 2] {
        let settings = train::Settings { batch_size: 64, optimizer: sgd, ..train::Settings::default() };
        let mut trainer = train::Trainer::new(model.clone(), settings).unwrap().with_threads(threads);
        trainer.fit(&data, 1, &mut ()).unwrap();
        let what = format!("{threads} threads");
        assert_close_to_scale(&format!("{what}: loss"), &[trainer.history()[0].train_loss as f32], want_loss, 1e-5);
        let stepped = trainer.into_model();
        for (before, after) in model.params().iter().zip(stepped.params().iter()) {
            let step: Vec<f32> =
                before.to_tensor().data().iter().zip(after.to_tensor().data()).map(|(b, a)| b - a).collect();
            if before.name() != "fc1.bias" {
                let want = file.get(&format!("grad.{}", before.name())).unwrap().data();
                assert_close_to_scale(&format!("{what}: gradient of {}", before.name()), &step, want, 2e-2);
            }
        }
        let state = stepped.state_dict();
        for name in state.names().filter(|n| n.contains("running") || n.contains("tracked")) {
            match (state.get_i64(name), adam_step1(name).unwrap()) {
                (Some(t), Entry::Counter(n)) => assert_eq!(t.data(), &[n], "{what}: {name}"),
                (None, Entry::Values(want)) => {
                    let got = state.get(name).unwrap().data();
                    assert_close_to_scale(&format!("{what}: {name}"), got, want.data(), 1e-5);
                }
                _ => panic!("{name}: a counter on one side only"),
            }
        }
    }
    // Evaluation mode on PyTorch's own state after the step: the running statistics normalise.
    let torch =
        model_with(nn::SequentialConfig::CNN, [1, 28, 28], |name| file_entry(&file, &format!("adam_step1.{name}")));
    let eval = torch.logits(x.view());
    assert_close_to_scale(
        "eval logits after the step",
        eval.as_slice().unwrap(),
        file.get("eval_logits_after_step").unwrap().data(),
        1e-5,
    );
}
