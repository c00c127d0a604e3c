//! Convolution and pooling against PyTorch's own numbers (`conv.json` in
//! `$TORCH_REFERENCE_DIR`): outputs and the gradients of `sum(y * upstream)`, to 1e-5 relative.

use ndarray::{Array1, Array2, ArrayView2};
use serde_json::Value;
use tensor::{Conv2dShape, Pool2dShape};

use crate::reference::{assert_close, count, floats, rows};

fn conv_json() -> Option<Value> {
    crate::reference::reference_json("conv.json")
}

#[test]
fn conv2d_outputs_and_gradients_match_pytorch() {
    let Some(json) = conv_json() else { return };
    let cases = json["conv2d"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "every reference case is exercised");
    for (name, case) in cases {
        let n = count(case, "n");
        let shape = Conv2dShape {
            in_channels: count(case, "in_channels"),
            height: count(case, "height"),
            width: count(case, "width"),
            out_channels: count(case, "out_channels"),
            kernel: count(case, "kernel"),
            stride: count(case, "stride"),
            padding: count(case, "padding"),
        };
        let x = rows(floats(&case["x"]), n);
        let w = Array2::from_shape_vec((shape.out_channels, shape.patch_len()), floats(&case["weight"])).unwrap();
        let bias = case.get("bias").map(|b| Array1::from(floats(b)));
        let mut cols = Vec::new();
        let mut y = Array2::zeros((n, shape.out_len()));
        let mut tmp = tensor::ConvScratch::default();
        tensor::conv2d(x.view(), w.view(), bias.as_ref().map(|b| b.view()), &shape, &mut cols, &mut tmp, y.view_mut());
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));

        let upstream = rows(floats(&case["upstream"]), n);
        let (mut dw, mut dx) = (Array2::zeros(w.dim()), Array2::zeros(x.dim()));
        let mut db = Array1::zeros(shape.out_channels);
        let db_arg = bias.is_some().then(|| (db.view_mut(), 0.0));
        tensor::conv2d_backward(
            x.view(),
            w.view(),
            upstream.view(),
            &shape,
            &mut cols,
            &mut tmp,
            (dw.view_mut(), 0.0),
            db_arg,
            Some((dx.view_mut(), 0.0)),
        );
        assert_close(&format!("{name} grad_weight"), dw.as_slice().unwrap(), &floats(&case["grad_weight"]));
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &floats(&case["grad_x"]));
        if let Some(want) = case.get("grad_bias") {
            assert_close(&format!("{name} grad_bias"), db.as_slice().unwrap(), &floats(want));
        }
    }
}

#[test]
fn max_pool2d_outputs_and_gradients_match_pytorch() {
    let Some(json) = conv_json() else { return };
    let cases = json["maxpool2d"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "every reference case is exercised");
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
        let mut argmax = Vec::new();
        tensor::max_pool2d(x.view(), &shape, y.view_mut(), &mut argmax);
        assert_close(&format!("{name} y"), y.as_slice().unwrap(), &floats(&case["y"]));
        let upstream = rows(floats(&case["upstream"]), n);
        let mut dx = Array2::zeros(x.dim());
        tensor::max_pool2d_backward(upstream.view(), &argmax, 0.0, dx.view_mut());
        // Ties must route the whole gradient to the first maximum, exactly.
        let want = floats(&case["grad_x"]);
        assert_close(&format!("{name} grad_x"), dx.as_slice().unwrap(), &want);
        let view: ArrayView2<f32> = dx.view();
        assert_eq!(view.iter().filter(|&&v| v != 0.0).count(), want.iter().filter(|&&v| v != 0.0).count(), "{name}");
    }
}

/// Every parameter's gradient by name, row-major.
type NamedGrads = Vec<(String, Vec<f32>)>;

/// Forward and backward through `model` on one batch: (loss, logits, gradients by name).
fn run_batch(model: &nn::Sequential, x: ArrayView2<f32>, y: &[usize]) -> (f32, Vec<f32>, NamedGrads) {
    use nn::Model;
    let mut tape = nn::Tape::new();
    let input = tape.input(x);
    let logits = model.forward(&mut tape, input);
    let loss = tape.cross_entropy(logits, y);
    let mut grads = nn::Grads::new(model.params());
    tape.backward(loss, model.params(), &mut grads);
    let named = model
        .params()
        .ids()
        .map(|id| (model.params().get(id).name().to_owned(), grads.tensor(model.params(), id).unwrap().into_data()))
        .collect();
    (tape.value(loss)[[0, 0]], tape.value(logits).iter().copied().collect(), named)
}

fn sequential(
    layers: &str,
    input: [usize; 3],
    tensors: impl IntoIterator<Item = (String, nn::Tensor)>,
) -> nn::Sequential {
    use nn::Model;
    let config = nn::SequentialConfig::parse(layers, input).unwrap();
    let mut state = nn::Model::state_dict(&nn::Sequential::new(&config, &mut train::init_rng(0)));
    for (name, tensor) in tensors {
        assert!(state.get(&name).is_some(), "{name} is not a parameter of {layers}");
        state.insert(name, tensor);
    }
    nn::Sequential::from_state_dict(&state).unwrap()
}

#[test]
fn a_tiny_cnn_trains_five_adam_steps_as_pytorch_does() {
    use nn::Model;
    use optim::Optimizer;
    let Some(json) = conv_json() else { return };
    let case = &json["tiny_cnn"];
    let tensors = case["init"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| (name.clone(), nn::Tensor::new(crate::reference::shape(v), floats(v))));
    let mut model = sequential("conv(2,3,pad=1),relu,maxpool(2),flatten,linear(3)", [1, 6, 6], tensors);
    let x = rows(floats(&case["x"]), 4);
    let y: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (loss, logits, grads) = run_batch(&model, x.view(), &y);
    assert_close("tiny_cnn logits", &logits, &floats(&case["logits"]));
    assert_close("tiny_cnn loss", &[loss], &[case["loss"].as_f64().unwrap() as f32]);
    for (name, grad) in grads {
        assert_close(&format!("tiny_cnn grad {name}"), &grad, &floats(&case["grads"][&name]));
    }
    let mut adam = optim::Adam::new(optim::AdamConfig { lr: 0.01, ..Default::default() }).unwrap();
    for (k, step) in case["adam_lr0.01"].as_array().unwrap().iter().enumerate() {
        let mut tape = nn::Tape::new();
        let input = tape.input(x.view());
        let logits = model.forward(&mut tape, input);
        let loss = tape.cross_entropy(logits, &y);
        assert_close(
            &format!("step {k} loss"),
            &[tape.value(loss)[[0, 0]]],
            &[step["loss_before_step"].as_f64().unwrap() as f32],
        );
        let mut grads = nn::Grads::new(model.params());
        tape.backward(loss, model.params(), &mut grads);
        adam.step(model.params_mut(), &grads).unwrap();
        for p in model.params().iter() {
            assert_close(
                &format!("step {k} {}", p.name()),
                p.to_tensor().data(),
                &floats(&step["params_after_step"][p.name()]),
            );
        }
    }
}

#[test]
fn lenet_on_the_first_mnist_batch_matches_pytorch() {
    use nn::Model;
    use optim::Optimizer;
    let Some(dir) = testkit::reference_dir() else { return };
    let bytes = std::fs::read(dir.join("lenet_first_batch.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let get = |name: &str| crate::reference::tensor(&st, name);
    let names = [
        "conv1.weight",
        "conv1.bias",
        "conv2.weight",
        "conv2.bias",
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
        "fc3.weight",
        "fc3.bias",
    ];
    let tensors = names.iter().map(|n| {
        let (shape, values) = get(&format!("init.{n}"));
        ((*n).to_owned(), nn::Tensor::new(shape, values))
    });
    let mut lenet = sequential(nn::SequentialConfig::LENET, [1, 28, 28], tensors);
    let x = rows(get("input").1, 64);
    let labels = st.tensor("labels").unwrap();
    let y: Vec<usize> =
        labels.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize).collect();
    let (loss, logits, grads) = run_batch(&lenet, x.view(), &y);
    assert_close("lenet logits", &logits, &get("logits").1);
    assert_close("lenet loss", &[loss], &get("loss").1);
    let mut nn_grads = nn::Grads::new(lenet.params());
    for (name, grad) in &grads {
        assert_close(&format!("lenet grad.{name}"), grad, &get(&format!("grad.{name}")).1);
        let id = lenet.params().by_name(name).unwrap();
        let (shape, torch_grad) = get(&format!("grad.{name}"));
        nn_grads.set(id, &lenet.params().get(id).aligned_from_tensor(&nn::Tensor::new(shape, torch_grad)).unwrap());
    }
    // Adam fed PyTorch's gradients lands on PyTorch's parameters.
    optim::Adam::new(optim::AdamConfig::default()).unwrap().step(lenet.params_mut(), &nn_grads).unwrap();
    for p in lenet.params().iter() {
        assert_close(
            &format!("adam_step1.{}", p.name()),
            p.to_tensor().data(),
            &get(&format!("adam_step1.{}", p.name())).1,
        );
    }
    let (loss_after, _, _) = run_batch(&lenet, x.view(), &y);
    assert_close("adam_step1.loss", &[loss_after], &get("adam_step1.loss").1);
}
