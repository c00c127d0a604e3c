//! Gradient checks: every op's analytic gradient from the tape against central differences of
//! the same function written naively in f64.

use ndarray::{Array1, Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::backward::broken_rule;
use crate::{Grads, MlpConfig, Model, ParamId, Params, Sequential, StateDict, Tape, Tensor};

/// Central differences of `f` at `at`, one coordinate at a time, in f64.
fn numeric_grad(f: impl Fn(&[f64]) -> f64, at: &[f64]) -> Vec<f64> {
    let h = 1e-6;
    let mut x = at.to_vec();
    (0..x.len())
        .map(|j| {
            let orig = x[j];
            x[j] = orig + h;
            let up = f(&x);
            x[j] = orig - h;
            let down = f(&x);
            x[j] = orig;
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// The f32 analytic gradient must match the f64 numeric one to `1e-5 + 1e-3 * |numeric|`;
/// a wrong rule is off by far more.
fn compare(what: &str, analytic: &[f32], numeric: &[f64]) -> Result<(), String> {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths differ");
    for (j, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        if (f64::from(a) - n).abs() > 1e-5 + 1e-3 * n.abs() {
            return Err(format!("{what}[{j}]: analytic {a}, numeric {n}"));
        }
    }
    Ok(())
}

fn random(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Array2<f64> {
    Array2::from_shape_fn((rows, cols), |_| rng.random_range(-1.0..1.0))
}

fn to_f32(a: &Array2<f64>) -> Array2<f32> {
    a.mapv(|v| v as f32)
}

fn as_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// The mean cross-entropy of f64 logits: `mean_i(logsumexp(z_i) - z_i[y_i])`.
fn ce(z: ArrayView2<f64>, labels: &[usize]) -> f64 {
    let total: f64 = z
        .rows()
        .into_iter()
        .zip(labels)
        .map(|(row, &y)| {
            let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - row[y]
        })
        .sum();
    total / z.nrows() as f64
}

/// `x·Wᵀ + b` in f64, with `w` row-major `[out, in]`.
fn linear(x: ArrayView2<f64>, w: &[f64], b: Option<&[f64]>, out: usize) -> Array2<f64> {
    let w = ArrayView2::from_shape((out, x.ncols()), w).unwrap();
    let mut y = x.dot(&w.t());
    if let Some(b) = b {
        y += &Array1::from(b.to_vec());
    }
    y
}

fn relu(x: Array2<f64>) -> Array2<f64> {
    x.mapv(|v| v.max(0.0))
}

fn param(params: &Params, id: ParamId) -> Vec<f64> {
    as_f64(params.get(id).to_tensor().data())
}

/// The id of a model's `i`-th parameter, in `state_dict` order.
fn param_id(model: &Sequential, i: usize) -> ParamId {
    model.params().ids().nth(i).expect("the model has that many parameters")
}

fn grad(params: &Params, grads: &Grads, id: ParamId) -> Vec<f32> {
    grads.tensor(params, id).expect("backward reached the parameter").into_data()
}

/// Runs the backward pass of `loss` into fresh gradients.
fn backward(tape: &mut Tape, loss: crate::Var, params: &Params) -> Grads {
    let mut grads = Grads::new(params);
    tape.backward(loss, params, &mut grads);
    grads
}

#[test]
fn cross_entropy_gradient_wrt_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let (n, k, c) = (5, 3, 4);
    let x = random(&mut rng, n, k);
    let labels = [0, 3, 1, 1, 2];
    let mut params = Params::new();
    let w = params.add("w", &[c, k], random(&mut rng, c, k).mapv(|v| 3.0 * v as f32).into_raw_vec_and_offset().0);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let logits = tape.matmul_t(&params, input, w);
    let loss = tape.cross_entropy(logits, &labels);
    backward(&mut tape, loss, &params);

    let z = as_f64(tape.value(logits).as_slice().unwrap());
    let f = |z: &[f64]| ce(ArrayView2::from_shape((n, c), z).unwrap(), &labels);
    assert!((f64::from(tape.value(loss)[[0, 0]]) - f(&z)).abs() < 1e-6);
    let analytic = tape.grad(logits).unwrap().to_owned();
    compare("dlogits", analytic.as_slice().unwrap(), &numeric_grad(f, &z)).unwrap();
}

#[test]
fn linear_gradients_wrt_weight_bias_and_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (n, k, c) = (4, 5, 3);
    let x0 = random(&mut rng, n, k);
    let labels = [2, 0, 1, 2];
    let mut params = Params::new();
    // a = x0 + shift gives the linear layer an input that needs a gradient.
    let shift = params.add("shift", &[k], vec![0.1; k]);
    let w = params.add("w", &[c, k], to_f32(&random(&mut rng, c, k)).into_raw_vec_and_offset().0);
    let b = params.add("b", &[c], vec![0.2, -0.3, 0.5]);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x0).view());
    let a = tape.add_bias(&params, input, shift);
    let y = tape.linear(&params, a, w, b);
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);

    let av = as_f64(tape.value(a).as_slice().unwrap());
    let (wv, bv) = (param(&params, w), param(&params, b));
    let view = |a: &[f64]| ArrayView2::from_shape((n, k), a).unwrap().to_owned();
    let by_w = |w: &[f64]| ce(linear(view(&av).view(), w, Some(&bv), c).view(), &labels);
    let by_b = |b: &[f64]| ce(linear(view(&av).view(), &wv, Some(b), c).view(), &labels);
    let by_a = |a: &[f64]| ce(linear(view(a).view(), &wv, Some(&bv), c).view(), &labels);
    compare("dW", &grad(&params, &grads, w), &numeric_grad(by_w, &wv)).unwrap();
    compare("db", &grad(&params, &grads, b), &numeric_grad(by_b, &bv)).unwrap();
    let da = tape.grad(a).unwrap().to_owned();
    compare("dx", da.as_slice().unwrap(), &numeric_grad(by_a, &av)).unwrap();
}

#[test]
fn matmul_and_add_bias_gradients() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (n, k, c) = (3, 4, 5);
    let x = random(&mut rng, n, k);
    let labels = [4, 0, 2];
    let mut params = Params::new();
    let w = params.add("w", &[c, k], to_f32(&random(&mut rng, c, k)).into_raw_vec_and_offset().0);
    let b = params.add("b", &[c], vec![0.3, -0.1, 0.0, 0.7, -0.4]);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let m = tape.matmul_t(&params, input, w);
    let y = tape.add_bias(&params, m, b);
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);

    let (wv, bv) = (param(&params, w), param(&params, b));
    let xv = x.mapv(|v| f64::from(v as f32));
    let f_w = |w: &[f64]| ce(linear(xv.view(), w, Some(&bv), c).view(), &labels);
    let f_b = |b: &[f64]| ce(linear(xv.view(), &wv, Some(b), c).view(), &labels);
    compare("dW", &grad(&params, &grads, w), &numeric_grad(f_w, &wv)).unwrap();
    compare("db", &grad(&params, &grads, b), &numeric_grad(f_b, &bv)).unwrap();
    let mv = as_f64(tape.value(m).as_slice().unwrap());
    let f_m = |m: &[f64]| {
        let mut z = ArrayView2::from_shape((n, c), m).unwrap().to_owned();
        z += &Array1::from(bv.clone());
        ce(z.view(), &labels)
    };
    let dm = tape.grad(m).unwrap().to_owned();
    compare("d(x·Wᵀ)", dm.as_slice().unwrap(), &numeric_grad(f_m, &mv)).unwrap();
}

#[test]
fn relu_gradient_wrt_its_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (n, k, c) = (4, 6, 3);
    let x = random(&mut rng, n, k);
    let labels = [1, 1, 0, 2];
    let mut params = Params::new();
    let shift = params.add("shift", &[k], vec![0.05; k]);
    let w = params.add("w", &[c, k], to_f32(&random(&mut rng, c, k)).into_raw_vec_and_offset().0);
    let b = params.add("b", &[c], vec![0.0; c]);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let a = tape.add_bias(&params, input, shift);
    let r = tape.relu(a);
    let y = tape.linear(&params, r, w, b);
    let loss = tape.cross_entropy(y, &labels);
    backward(&mut tape, loss, &params);

    let av = as_f64(tape.value(a).as_slice().unwrap());
    assert!(av.iter().any(|&v| v < 0.0) && av.iter().all(|&v| v.abs() > 1e-4), "inputs on both sides, off the kink");
    let (wv, bv) = (param(&params, w), param(&params, b));
    let f = |a: &[f64]| {
        let a = relu(ArrayView2::from_shape((n, k), a).unwrap().to_owned());
        ce(linear(a.view(), &wv, Some(&bv), c).view(), &labels)
    };
    let da = tape.grad(a).unwrap().to_owned();
    compare("drelu", da.as_slice().unwrap(), &numeric_grad(f, &av)).unwrap();
}

#[test]
fn a_weight_used_twice_accumulates_both_contributions() {
    // y = relu(x·Wᵀ)·Wᵀ with a square W: dW is the sum of two terms.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (n, k) = (3, 4);
    let x = random(&mut rng, n, k);
    let labels = [3, 1, 0];
    let mut params = Params::new();
    let w = params.add("w", &[k, k], to_f32(&random(&mut rng, k, k)).into_raw_vec_and_offset().0);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let h = tape.matmul_t(&params, input, w);
    let r = tape.relu(h);
    let y = tape.matmul_t(&params, r, w);
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);

    let xv = x.mapv(|v| f64::from(v as f32));
    let f = |w: &[f64]| ce(linear(relu(linear(xv.view(), w, None, k)).view(), w, None, k).view(), &labels);
    compare("dW (tied)", &grad(&params, &grads, w), &numeric_grad(f, &param(&params, w))).unwrap();
}

/// The whole MLP and loss in f64, with every parameter taken from `flat` in `state_dict` order.
fn mlp_loss(config: &MlpConfig, flat: &[f64], x: ArrayView2<f64>, labels: &[usize]) -> f64 {
    let mut h = x.to_owned();
    let mut offset = 0;
    let layers = config.widths.len() - 1;
    for (i, w) in config.widths.windows(2).enumerate() {
        let (inp, out) = (w[0], w[1]);
        let weight = &flat[offset..offset + out * inp];
        let bias = &flat[offset + out * inp..offset + out * inp + out];
        offset += out * inp + out;
        h = linear(h.view(), weight, Some(bias), out);
        if i + 1 < layers || config.output_relu {
            h = relu(h);
        }
    }
    ce(h.view(), labels)
}

fn check_mlp(output_relu: bool, seed: u64) -> Result<(), String> {
    let config = MlpConfig { widths: vec![5, 7, 6, 4], output_relu };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mlp = Sequential::mlp(&config, &mut rng);
    let x = random(&mut rng, 6, 5);
    let labels = [0, 1, 2, 3, 2, 1];
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let logits = mlp.forward(&mut tape, input);
    let loss = tape.cross_entropy(logits, &labels);
    let grads = backward(&mut tape, loss, mlp.params());

    let flat: Vec<f64> = mlp.params().iter().flat_map(|p| as_f64(p.to_tensor().data())).collect();
    let analytic: Vec<f32> = (0..mlp.params().len())
        .flat_map(|i| grads.tensor(mlp.params(), param_id(&mlp, i)).unwrap().into_data())
        .collect();
    let xv = x.mapv(|v| f64::from(v as f32));
    let f = |flat: &[f64]| mlp_loss(&config, flat, xv.view(), &labels);
    assert!((f64::from(tape.value(loss)[[0, 0]]) - f(&flat)).abs() < 1e-5, "forward matches the f64 model");
    compare("MLP parameters", &analytic, &numeric_grad(f, &flat))
}

#[test]
fn the_sparse_first_layer_has_the_dense_gradients() {
    // Data that is 80% zeros, through the sparse path (the weight column-major as Linear
    // stores it), against central differences of the dense f64 model.
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (n, k, c) = (6, 20, 4);
    let x = Array2::from_shape_fn((n, k), |_| if rng.random_bool(0.2) { rng.random_range(0.1f32..1.0) } else { 0.0 });
    let labels = [0, 1, 2, 3, 0, 1];
    let mut params = Params::new();
    let w_values = to_f32(&random(&mut rng, c, k)).into_raw_vec_and_offset().0;
    let w = params.add_with_layout("w", &[c, k], w_values, crate::params::Layout::ColumnMajor);
    let b = params.add("b", &[c], vec![0.1, 0.0, -0.1, 0.2]);
    let mut tape = Tape::new();
    let input = tape.input(x.view());
    let y = tape.sparse_linear(&params, input, w, b);
    assert!(matches!(tape.nodes[y.index].op, crate::tape::Op::Linear { sparse: true, .. }), "took the sparse path");
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);

    let (wv, bv) = (param(&params, w), param(&params, b));
    let xv = x.mapv(f64::from);
    let f_w = |w: &[f64]| ce(linear(xv.view(), w, Some(&bv), c).view(), &labels);
    compare("sparse dW", &grad(&params, &grads, w), &numeric_grad(f_w, &wv)).unwrap();
    let f_b = |b: &[f64]| ce(linear(xv.view(), &wv, Some(b), c).view(), &labels);
    compare("sparse db", &grad(&params, &grads, b), &numeric_grad(f_b, &bv)).unwrap();
    assert!((f64::from(tape.value(loss)[[0, 0]]) - f_w(&wv)).abs() < 1e-5);
}

#[test]
fn halves_of_a_batch_scaled_by_their_share_sum_to_the_whole_batchs_gradient() {
    let config = MlpConfig { widths: vec![5, 6, 3], output_relu: false };
    let mlp = Sequential::mlp(&config, &mut ChaCha8Rng::seed_from_u64(13));
    let x = to_f32(&random(&mut ChaCha8Rng::seed_from_u64(14), 5, 5));
    let labels = [0, 1, 2, 1, 0];
    let run = |rows: std::ops::Range<usize>, scale: f32| {
        let mut tape = Tape::new();
        let input = tape.input(x.slice(ndarray::s![rows.clone(), ..]));
        let logits = mlp.forward(&mut tape, input);
        let loss = tape.cross_entropy(logits, &labels[rows]);
        let mut grads = Grads::new(mlp.params());
        tape.backward_scaled(loss, scale, mlp.params(), &mut grads);
        grads
    };
    let whole = run(0..5, 1.0);
    let mut parts = run(0..2, 2.0 / 5.0);
    parts.add(&run(2..5, 3.0 / 5.0));
    for i in 0..4 {
        let (a, b) = (whole.get(param_id(&mlp, i)).unwrap(), parts.get(param_id(&mlp, i)).unwrap());
        assert!(a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-6), "parameter {i}");
    }
}

#[test]
fn whole_mlp_and_loss_gradients() {
    check_mlp(false, 6).unwrap();
    check_mlp(true, 7).unwrap();
}

#[test]
fn the_check_catches_a_deliberately_wrong_rule() {
    broken_rule::RELU_WITHOUT_MASK.set(true);
    let result = check_mlp(false, 6);
    broken_rule::RELU_WITHOUT_MASK.set(false);
    let err = result.expect_err("a ReLU without its mask must fail the check");
    assert!(err.starts_with("MLP parameters["), "{err}");
    check_mlp(false, 6).unwrap();
}

#[test]
fn backward_overwrites_rather_than_accumulates_across_steps() {
    let config = MlpConfig { widths: vec![3, 4, 2], output_relu: false };
    let mlp = Sequential::mlp(&config, &mut ChaCha8Rng::seed_from_u64(8));
    let x = Array2::from_shape_fn((2, 3), |(i, j)| (i + j) as f32 * 0.3);
    let mut tape = Tape::new();
    let mut grads = Grads::new(mlp.params());
    let mut seen = vec![];
    for _ in 0..2 {
        tape.clear();
        let input = tape.input(x.view());
        let logits = mlp.forward(&mut tape, input);
        let loss = tape.cross_entropy(logits, &[1, 0]);
        tape.backward(loss, mlp.params(), &mut grads);
        seen.push((0..4).flat_map(|i| grads.get(param_id(&mlp, i)).unwrap().to_vec()).collect::<Vec<_>>());
    }
    assert_eq!(seen[0], seen[1]);
}

#[test]
fn a_parameter_outside_the_loss_has_no_gradient() {
    let mut params = Params::new();
    let used = params.add("used", &[2, 2], vec![1.0, 0.0, 0.0, 1.0]);
    let unused = params.add("unused", &[2], vec![0.0; 2]);
    let mut tape = Tape::new();
    let x = tape.input(Array2::ones((1, 2)).view());
    let y = tape.matmul_t(&params, x, used);
    let loss = tape.cross_entropy(y, &[0]);
    let grads = backward(&mut tape, loss, &params);
    assert!(grads.get(used).is_some());
    assert!(grads.get(unused).is_none());
}

#[test]
fn extreme_logits_give_finite_losses_and_gradients() {
    // Rows from PyTorch's reference: [1e4, -1e4, 0] label 1 loses 2e4; three equal logits lose
    // ln 3; a confident right answer loses 0.
    let mut params = Params::new();
    let eye = params.add("eye", &[3, 3], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let z = ndarray::array![[1e4f32, -1e4, 0.0], [-1e4, -1e4, -1e4], [0.0, 0.0, 0.0], [30.0, 1e4, -5.0]];
    let mut tape = Tape::new();
    let x = tape.input(z.view());
    let logits = tape.matmul_t(&params, x, eye);
    let loss = tape.cross_entropy(logits, &[1, 2, 0, 1]);
    let grads = backward(&mut tape, loss, &params);
    let expected = (2e4 + 2.0 * 3f64.ln() + 0.0) / 4.0;
    assert!((f64::from(tape.value(loss)[[0, 0]]) - expected).abs() < 1e-3);
    assert!(tape.grad(logits).unwrap().iter().all(|g| g.is_finite()));
    assert!(grads.get(eye).unwrap().iter().all(|g| g.is_finite()));
}

#[test]
fn a_cleared_tape_reuses_its_buffers() {
    let config = MlpConfig { widths: vec![3, 4, 2], output_relu: false };
    let mlp = Sequential::mlp(&config, &mut ChaCha8Rng::seed_from_u64(9));
    let x = Array2::<f32>::ones((5, 3));
    let mut tape = Tape::new();
    let mut grads = Grads::new(mlp.params());
    let mut pointers = vec![];
    for _ in 0..3 {
        tape.clear();
        let input = tape.input(x.view());
        let logits = mlp.forward(&mut tape, input);
        let loss = tape.cross_entropy(logits, &[0, 1, 0, 1, 1]);
        tape.backward(loss, mlp.params(), &mut grads);
        pointers.push(tape.nodes.iter().map(|n| (n.value.as_ptr(), n.grad.as_ptr())).collect::<Vec<_>>());
    }
    assert_eq!(pointers[0], pointers[1]);
    assert_eq!(pointers[1], pointers[2]);
}

#[test]
fn inference_matches_the_tape() {
    let config = MlpConfig { widths: vec![6, 5, 4, 3], output_relu: true };
    let mlp = Sequential::mlp(&config, &mut ChaCha8Rng::seed_from_u64(10));
    let x = to_f32(&random(&mut ChaCha8Rng::seed_from_u64(11), 7, 6));
    let mut tape = Tape::new();
    let input = tape.input(x.view());
    let logits = mlp.forward(&mut tape, input);
    assert_eq!(tape.value(logits), mlp.logits(x.view()));
    assert_eq!(mlp.predict(x.view()), tensor::argmax_rows(tape.value(logits)));
}

#[test]
fn state_dicts_check_names_and_shapes() {
    use crate::NnError;
    let mlp = Sequential::mlp(&MlpConfig { widths: vec![3, 2], output_relu: true }, &mut ChaCha8Rng::seed_from_u64(3));
    let state = mlp.state_dict();
    assert_eq!(state.names().collect::<Vec<_>>(), ["fc1.bias", "fc1.weight"]);
    assert_eq!((state.meta("widths"), state.meta("output_relu")), (Some("3,2"), Some("true")));
    let back = Sequential::from_state_dict(&state).unwrap();
    assert_eq!((back.config(), back.params()), (mlp.config(), mlp.params()));
    assert_eq!(
        back.params().get(back.params().by_name("fc1.weight").unwrap()).to_tensor(),
        state.get("fc1.weight").unwrap().clone()
    );

    // Without metadata, the widths come from the shapes.
    let mut bare = StateDict::new();
    bare.insert("fc1.weight", Tensor::new(vec![2, 3], vec![0.5; 6]));
    bare.insert("fc1.bias", Tensor::new(vec![2], vec![0.0; 2]));
    assert_eq!(Sequential::from_state_dict(&bare).unwrap().config().as_mlp().unwrap().widths, [3, 2]);

    let mut missing = state.clone();
    missing.remove("fc1.bias");
    assert_eq!(Sequential::from_state_dict(&missing).unwrap_err(), NnError::MissingParam { name: "fc1.bias".into() });
    let mut wrong = state.clone();
    wrong.insert("fc1.weight", Tensor::new(vec![3, 2], vec![0.0; 6]));
    assert_eq!(
        Sequential::from_state_dict(&wrong).unwrap_err().to_string(),
        "parameter fc1.weight has shape [3, 2], expected [2, 3]"
    );
    let mut extra = state.clone();
    extra.insert("fc2.weight", Tensor::new(vec![1], vec![0.0]));
    assert_eq!(
        Sequential::from_state_dict(&extra).unwrap_err(),
        NnError::UnexpectedParam { name: "fc2.weight".into() }
    );
    let mut bad = state;
    bad.set_meta("widths", "3,0");
    assert!(matches!(Sequential::from_state_dict(&bad), Err(NnError::InvalidWidths { .. })));
    bad.set_meta("widths", "3,x");
    assert_eq!(
        Sequential::from_state_dict(&bad).unwrap_err().to_string(),
        "metadata widths \"3,x\" is not a list of widths"
    );
}

/// A 2-D convolution in f64, term by term: `x` is `[n, C·H·W]`, `w` row-major `[out, C, k, k]`.
fn conv_f64(x: ArrayView2<f64>, w: &[f64], b: Option<&[f64]>, sh: &tensor::Conv2dShape) -> Array2<f64> {
    let (oh, ow, k, c_in) = (sh.out_height(), sh.out_width(), sh.kernel, sh.in_channels);
    let mut y = Array2::zeros((x.nrows(), sh.out_len()));
    for (xn, mut yn) in x.rows().into_iter().zip(y.rows_mut()) {
        for o in 0..sh.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[o]);
                    for c in 0..c_in {
                        for i in 0..k {
                            for j in 0..k {
                                let (yy, xx) = (oy * sh.stride + i, ox * sh.stride + j);
                                if yy < sh.padding || xx < sh.padding {
                                    continue;
                                }
                                let (yy, xx) = (yy - sh.padding, xx - sh.padding);
                                if yy < sh.height && xx < sh.width {
                                    acc +=
                                        w[((o * c_in + c) * k + i) * k + j] * xn[(c * sh.height + yy) * sh.width + xx];
                                }
                            }
                        }
                    }
                    yn[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    y
}

/// Data that needs a gradient: `x + 0` through a zero bias, so that the tape computes `dx`.
fn differentiable_input(tape: &mut Tape, params: &mut Params, x: &Array2<f64>) -> crate::Var {
    let zero = params.add("zero", &[x.ncols()], vec![0.0; x.ncols()]);
    let input = tape.input(to_f32(x).view());
    tape.add_bias(params, input, zero)
}

#[test]
fn conv2d_gradients_wrt_weight_bias_and_input() {
    for (seed, sh, bias) in [
        (
            20,
            tensor::Conv2dShape {
                in_channels: 2,
                height: 6,
                width: 5,
                out_channels: 3,
                kernel: 3,
                stride: 2,
                padding: 1,
            },
            true,
        ),
        (
            21,
            tensor::Conv2dShape {
                in_channels: 1,
                height: 5,
                width: 5,
                out_channels: 2,
                kernel: 3,
                stride: 1,
                padding: 0,
            },
            false,
        ),
    ] {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = 2;
        let x = random(&mut rng, n, sh.in_len());
        let labels: Vec<usize> = (0..n).map(|i| (i * 7) % sh.out_len()).collect();
        let mut params = Params::new();
        let w_values = to_f32(&random(&mut rng, sh.out_channels, sh.patch_len())).into_raw_vec_and_offset().0;
        let w = params.add("conv.weight", &[sh.out_channels, sh.in_channels, sh.kernel, sh.kernel], w_values);
        let b =
            bias.then(|| params.add("conv.bias", &[sh.out_channels], vec![0.1, -0.2, 0.3][..sh.out_channels].to_vec()));
        let mut tape = Tape::new();
        let input = differentiable_input(&mut tape, &mut params, &x);
        let y = tape.conv2d(&params, input, w, b, sh);
        let loss = tape.cross_entropy(y, &labels);
        let grads = backward(&mut tape, loss, &params);

        let (wv, bv) = (param(&params, w), b.map(|b| param(&params, b)));
        let xv = to_f32(&x).mapv(f64::from);
        let f_w = |w: &[f64]| ce(conv_f64(xv.view(), w, bv.as_deref(), &sh).view(), &labels);
        assert!((f64::from(tape.value(loss)[[0, 0]]) - f_w(&wv)).abs() < 1e-5, "forward matches the f64 model");
        compare("conv dW", &grad(&params, &grads, w), &numeric_grad(f_w, &wv)).unwrap();
        if let (Some(b), Some(bv)) = (b, &bv) {
            let f_b = |b: &[f64]| ce(conv_f64(xv.view(), &wv, Some(b), &sh).view(), &labels);
            compare("conv db", &grad(&params, &grads, b), &numeric_grad(f_b, bv)).unwrap();
        }
        let f_x = |x: &[f64]| {
            let x = ArrayView2::from_shape((n, sh.in_len()), x).unwrap();
            ce(conv_f64(x, &wv, bv.as_deref(), &sh).view(), &labels)
        };
        let dx = tape.grad(input).unwrap().to_owned();
        compare("conv dx", dx.as_slice().unwrap(), &numeric_grad(f_x, xv.as_slice().unwrap())).unwrap();
    }
}

#[test]
fn a_relu_before_a_max_pooling_gives_what_one_after_it_gives() {
    // Layer lists pool first: the same values and gradients, bit for bit, with windows wholly
    // negative, windows whose maximum is 0, ties, and overlapping windows.
    let shapes = [
        tensor::Pool2dShape { channels: 2, height: 6, width: 4, kernel: 2, stride: 2 },
        tensor::Pool2dShape { channels: 1, height: 5, width: 5, kernel: 3, stride: 1 },
    ];
    for sh in shapes {
        let n = 3;
        // From -3 to 1 in halves; the first windows' rows, from -7 to -3.
        let low = |i: usize| if i % (sh.height * sh.width) < sh.kernel * sh.width { 4.0 } else { 0.0 };
        let x = Array2::from_shape_fn((n, sh.in_len()), |(s, i)| ((s * 7 + i * 5) % 9) as f64 * 0.5 - 3.0 - low(i));
        let labels: Vec<usize> = (0..n).map(|s| s % sh.out_len()).collect();
        let run = |pool_first: bool| {
            let mut params = Params::new();
            let mut tape = Tape::new();
            let input = differentiable_input(&mut tape, &mut params, &x);
            let y = if pool_first {
                let pooled = tape.max_pool2d(input, sh);
                tape.relu(pooled)
            } else {
                let cut = tape.relu(input);
                tape.max_pool2d(cut, sh)
            };
            let loss = tape.cross_entropy(y, &labels);
            backward(&mut tape, loss, &params);
            (tape.value(y).mapv(f32::to_bits), tape.grad(input).unwrap().mapv(f32::to_bits))
        };
        let (listed, pooled_first) = (run(false), run(true));
        let values = listed.0.mapv(f32::from_bits);
        assert!(values.iter().any(|&v| v == 0.0) && values.iter().any(|&v| v > 0.0), "{sh:?}: some windows cut");
        assert!(listed.1.iter().any(|&v| f32::from_bits(v) != 0.0), "{sh:?}: some gradient passes");
        assert_eq!(listed, pooled_first, "{sh:?}");
    }
}

#[test]
fn max_pool2d_gradient_wrt_its_input() {
    let sh = tensor::Pool2dShape { channels: 2, height: 5, width: 4, kernel: 2, stride: 2 };
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let n = 2;
    // Distinct values, so that every window's maximum stays put under a small step.
    let mut values: Vec<f64> = (0..n * sh.in_len()).map(|i| i as f64 * 0.1).collect();
    for i in (1..values.len()).rev() {
        values.swap(i, rng.random_range(0..=i));
    }
    let x = Array2::from_shape_vec((n, sh.in_len()), values).unwrap();
    let labels = [1, 6];
    let mut params = Params::new();
    let mut tape = Tape::new();
    let input = differentiable_input(&mut tape, &mut params, &x);
    let y = tape.max_pool2d(input, sh);
    let loss = tape.cross_entropy(y, &labels);
    backward(&mut tape, loss, &params);
    let pool = |x: ArrayView2<f64>| {
        Array2::from_shape_fn((n, sh.out_len()), |(s, o)| {
            let (c, rest) = (o / (sh.out_height() * sh.out_width()), o % (sh.out_height() * sh.out_width()));
            let (oy, ox) = (rest / sh.out_width(), rest % sh.out_width());
            let mut m = f64::NEG_INFINITY;
            for i in 0..sh.kernel {
                for j in 0..sh.kernel {
                    m = m.max(x[[s, (c * sh.height + oy * sh.stride + i) * sh.width + ox * sh.stride + j]]);
                }
            }
            m
        })
    };
    let xv = to_f32(&x).mapv(f64::from);
    let f = |x: &[f64]| ce(pool(ArrayView2::from_shape((n, sh.in_len()), x).unwrap()).view(), &labels);
    assert!((f64::from(tape.value(loss)[[0, 0]]) - f(xv.as_slice().unwrap())).abs() < 1e-5);
    let dx = tape.grad(input).unwrap().to_owned();
    compare("pool dx", dx.as_slice().unwrap(), &numeric_grad(f, xv.as_slice().unwrap())).unwrap();
}

#[test]
fn dropout_scales_what_it_keeps_and_passes_gradients_through_its_mask() {
    let (n, k, p) = (50, 40, 0.25f32);
    let x = Array2::from_elem((n, k), 1.0f64);
    let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
    let mut params = Params::new();
    let mut tape = Tape::new();
    let input = differentiable_input(&mut tape, &mut params, &x);
    let y = tape.dropout(input, p, &mut ChaCha8Rng::seed_from_u64(23));
    let loss = tape.cross_entropy(y, &labels);
    backward(&mut tape, loss, &params);
    let mask: Vec<f64> = tape.value(y).iter().map(|&v| f64::from(v)).collect();
    let kept = mask.iter().filter(|&&m| m != 0.0).count() as f64 / mask.len() as f64;
    assert!((kept - 0.75).abs() < 0.05, "kept {kept}");
    assert!(mask.iter().all(|&m| m == 0.0 || (m - 1.0 / 0.75).abs() < 1e-6));
    let f = |x: &[f64]| {
        let masked: Vec<f64> = x.iter().zip(&mask).map(|(a, m)| a * m).collect();
        ce(ArrayView2::from_shape((n, k), &masked).unwrap(), &labels)
    };
    let dx = tape.grad(input).unwrap().to_owned();
    compare("dropout dx", dx.as_slice().unwrap(), &numeric_grad(f, x.as_slice().unwrap())).unwrap();
    // The same generator state draws the same mask.
    let mut again = Tape::new();
    let input = again.input(to_f32(&x).view());
    let y2 = again.dropout(input, p, &mut ChaCha8Rng::seed_from_u64(23));
    assert_eq!(again.value(y2), tape.value(y));
}

#[test]
fn add_gradients_reach_both_branches_of_a_skip_connection() {
    // y = h + relu(h·Vᵀ) with h = x·Wᵀ: the residual sum, its gradient into both branches.
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let (n, k, c) = (4, 5, 3);
    let x = random(&mut rng, n, k);
    let labels = [2, 0, 1, 1];
    let mut params = Params::new();
    let w = params.add("w", &[c, k], to_f32(&random(&mut rng, c, k)).into_raw_vec_and_offset().0);
    let v = params.add("v", &[c, c], to_f32(&random(&mut rng, c, c)).into_raw_vec_and_offset().0);
    let mut tape = Tape::new();
    let input = tape.input(to_f32(&x).view());
    let h = tape.matmul_t(&params, input, w);
    let branch = tape.matmul_t(&params, h, v);
    let branch = tape.relu(branch);
    let y = tape.add(h, branch);
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);

    let xv = x.mapv(|v| f64::from(v as f32));
    let (wv, vv) = (param(&params, w), param(&params, v));
    let f = |w: &[f64], v: &[f64]| {
        let h = linear(xv.view(), w, None, c);
        let y = &h + &relu(linear(h.view(), v, None, c));
        ce(y.view(), &labels)
    };
    compare("dW", &grad(&params, &grads, w), &numeric_grad(|w| f(w, &vv), &wv)).unwrap();
    compare("dV", &grad(&params, &grads, v), &numeric_grad(|v| f(&wv, v), &vv)).unwrap();

    // A value added to itself: y = 2h.
    tape.clear();
    let input = tape.input(to_f32(&x).view());
    let h = tape.matmul_t(&params, input, w);
    let y = tape.add(h, h);
    let loss = tape.cross_entropy(y, &labels);
    let grads = backward(&mut tape, loss, &params);
    let f = |w: &[f64]| ce((linear(xv.view(), w, None, c) * 2.0).view(), &labels);
    compare("dW of h + h", &grad(&params, &grads, w), &numeric_grad(f, &wv)).unwrap();
}

/// The cross-entropy of `f(x)` for `x` that needs a gradient, its gradient against central
/// differences of `reference` (the same function in f64).
fn check_input_gradient(
    what: &str,
    x: &Array2<f64>,
    labels: &[usize],
    record: impl Fn(&mut Tape, crate::Var) -> crate::Var,
    reference: impl Fn(ArrayView2<f64>) -> Array2<f64>,
) {
    let mut params = Params::new();
    let mut tape = Tape::new();
    let input = differentiable_input(&mut tape, &mut params, x);
    let y = record(&mut tape, input);
    let loss = tape.cross_entropy(y, labels);
    backward(&mut tape, loss, &params);
    let xv = to_f32(x).mapv(f64::from);
    let f = |v: &[f64]| ce(reference(ArrayView2::from_shape(x.dim(), v).unwrap()).view(), labels);
    let forward = f(xv.as_slice().unwrap());
    assert!((f64::from(tape.value(loss)[[0, 0]]) - forward).abs() < 1e-5, "{what}: forward");
    let dx = tape.grad(input).unwrap().to_owned();
    compare(what, dx.as_slice().unwrap(), &numeric_grad(f, xv.as_slice().unwrap())).unwrap();
}

#[test]
fn activation_gradients_wrt_their_input() {
    use tensor::Activation;
    type Reference = fn(f64) -> f64;
    let cases: [(Activation, Reference); 5] = [
        (Activation::Tanh, f64::tanh),
        (Activation::Sigmoid, |v| 1.0 / (1.0 + (-v).exp())),
        (Activation::Gelu, |v| 0.5 * v * (1.0 + erf_series(v / std::f64::consts::SQRT_2))),
        (Activation::GeluTanh, |v| {
            0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
        }),
        (Activation::LeakyRelu(0.1), |v| if v > 0.0 { v } else { 0.1 * v }),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(30);
    // Values away from 0, where leaky ReLU's kink would spoil a central difference.
    let x = random(&mut rng, 3, 5).mapv(|v| if v.abs() < 0.05 { v + 0.2 } else { v } * 2.5);
    for (f, reference) in cases {
        check_input_gradient(&f.to_string(), &x, &[0, 4, 2], |tape, v| tape.activation(v, f), |x| x.mapv(reference));
    }
}

/// erf in f64 by its Maclaurin series: exact enough for |v| below 3, where the checks stay.
fn erf_series(v: f64) -> f64 {
    let (mut term, mut sum) = (v, v);
    for n in 1..80 {
        term *= -v * v / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn average_pooling_gradients_wrt_their_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let n = 2;
    for sh in [
        tensor::Pool2dShape { channels: 2, height: 5, width: 4, kernel: 2, stride: 2 },
        tensor::Pool2dShape { channels: 1, height: 5, width: 5, kernel: 3, stride: 1 },
    ] {
        let x = random(&mut rng, n, sh.in_len());
        let pool = |x: ArrayView2<f64>| {
            Array2::from_shape_fn((n, sh.out_len()), |(s, o)| {
                let (c, rest) = (o / (sh.out_height() * sh.out_width()), o % (sh.out_height() * sh.out_width()));
                let (oy, ox) = (rest / sh.out_width(), rest % sh.out_width());
                let mut sum = 0.0;
                for i in 0..sh.kernel {
                    for j in 0..sh.kernel {
                        sum += x[[s, (c * sh.height + oy * sh.stride + i) * sh.width + ox * sh.stride + j]];
                    }
                }
                sum / (sh.kernel * sh.kernel) as f64
            })
        };
        check_input_gradient("avg pool", &x, &[1, 3], |tape, v| tape.avg_pool2d(v, sh), pool);
    }
    let (channels, plane) = (3, 6);
    let x = random(&mut rng, n, channels * plane);
    let global = |x: ArrayView2<f64>| {
        Array2::from_shape_fn((n, channels), |(s, c)| {
            (0..plane).map(|i| x[[s, c * plane + i]]).sum::<f64>() / plane as f64
        })
    };
    check_input_gradient("global avg pool", &x, &[2, 0], |tape, v| tape.global_avg_pool(v, channels), global);
}

/// Batch normalisation of `x` (`n` rows of `channels` planes) in f64: with the batch's
/// statistics, or with `fixed` ones.
fn batch_norm_f64(
    x: ArrayView2<f64>,
    channels: usize,
    w: &[f64],
    b: &[f64],
    fixed: Option<(&[f64], &[f64])>,
    eps: f64,
) -> Array2<f64> {
    let plane = x.ncols() / channels;
    let mut y = Array2::zeros(x.dim());
    for c in 0..channels {
        let values = || x.rows().into_iter().flat_map(move |r| r.to_vec()[c * plane..(c + 1) * plane].to_vec());
        let (mean, var) = match fixed {
            Some((m, v)) => (m[c], v[c]),
            None => {
                let count = (x.nrows() * plane) as f64;
                let mean = values().sum::<f64>() / count;
                (mean, values().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count)
            }
        };
        for n in 0..x.nrows() {
            for p in 0..plane {
                let j = c * plane + p;
                y[[n, j]] = w[c] * (x[[n, j]] - mean) / (var + eps).sqrt() + b[c];
            }
        }
    }
    y
}

#[test]
fn batch_norm_gradients_wrt_weight_bias_and_input() {
    let (n, channels, plane, eps) = (3, 2, 4, 1e-5);
    let mut rng = ChaCha8Rng::seed_from_u64(40);
    let x = random(&mut rng, n, channels * plane);
    let labels = [1, 6, 3];
    let fixed_stats = ([0.2, -0.1], [0.5, 1.5]);
    // Plain, with a ReLU in the same pass, and with the input also added to the output (a
    // residual: the backward pass recomputes x̂ from an input another op reads too).
    let cases = [None, Some((&fixed_stats.0[..], &fixed_stats.1[..]))]
        .into_iter()
        .flat_map(|f| [(f, false, false), (f, true, false), (f, true, true)]);
    for (fixed, relu, residual) in cases {
        let mut params = Params::new();
        let w = params.add("bn.weight", &[channels], vec![1.3, 0.7]);
        let b = params.add("bn.bias", &[channels], vec![0.1, -0.4]);
        let mut tape = Tape::new();
        let input = differentiable_input(&mut tape, &mut params, &x);
        let y = match (fixed, relu) {
            (None, false) => tape.batch_norm(&params, input, w, b, eps as f32),
            (None, true) => tape.batch_norm_relu(&params, input, w, b, eps as f32),
            (Some((m, v)), relu) => {
                let (m, v): (Vec<f32>, Vec<f32>) =
                    (m.iter().map(|&a| a as f32).collect(), v.iter().map(|&a| a as f32).collect());
                match relu {
                    false => tape.batch_norm_fixed(&params, input, w, b, &m, &v, eps as f32),
                    true => tape.batch_norm_fixed_relu(&params, input, w, b, &m, &v, eps as f32),
                }
            }
        };
        let out = if residual { tape.add(input, y) } else { y };
        let loss = tape.cross_entropy(out, &labels);
        let grads = backward(&mut tape, loss, &params);
        let what = format!(
            "{}{}{}",
            if fixed.is_some() { "fixed" } else { "batch" },
            if relu { " relu" } else { "" },
            if residual { " residual" } else { "" }
        );

        let xv = to_f32(&x).mapv(f64::from);
        let (wv, bv) = (param(&params, w), param(&params, b));
        let model = |x: ArrayView2<f64>, w: &[f64], b: &[f64]| {
            let y = batch_norm_f64(x, channels, w, b, fixed, eps);
            let y = if relu { y.mapv(|v| v.max(0.0)) } else { y };
            ce(if residual { &y + &x } else { y }.view(), &labels)
        };
        if relu {
            let cut = tape.value(y).iter().filter(|&&v| v == 0.0).count();
            assert!(cut > 0 && cut < x.len(), "{what}: the ReLU cuts some values and passes others");
        }
        assert!((f64::from(tape.value(loss)[[0, 0]]) - model(xv.view(), &wv, &bv)).abs() < 1e-5, "{what}: forward");
        let f_w = |w: &[f64]| model(xv.view(), w, &bv);
        compare(&format!("{what} bn dw"), &grad(&params, &grads, w), &numeric_grad(f_w, &wv)).unwrap();
        let f_b = |b: &[f64]| model(xv.view(), &wv, b);
        compare(&format!("{what} bn db"), &grad(&params, &grads, b), &numeric_grad(f_b, &bv)).unwrap();
        let f_x = |v: &[f64]| model(ArrayView2::from_shape(x.dim(), v).unwrap(), &wv, &bv);
        let dx = tape.grad(input).unwrap().to_owned();
        compare(&format!("{what} bn dx"), dx.as_slice().unwrap(), &numeric_grad(f_x, xv.as_slice().unwrap())).unwrap();
    }
}

#[test]
fn a_batch_split_in_parts_normalises_with_the_whole_batchs_statistics() {
    let (n, channels, plane) = (6, 3, 5);
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let x = to_f32(&random(&mut rng, n, channels * plane));
    let labels: Vec<usize> = (0..n).map(|i| (i * 5) % (channels * plane)).collect();
    let mut params = Params::new();
    let w = params.add("bn.weight", &[channels], vec![1.3, 0.7, 1.0]);
    let b = params.add("bn.bias", &[channels], vec![0.1, -0.4, 0.0]);
    let zero = params.add("zero", &[channels * plane], vec![0.0; channels * plane]);
    // One part of `rows` rows of the batch: its outputs, its scaled gradients, the statistics.
    let part = |tape: &mut Tape, rows: std::ops::Range<usize>| {
        let input = tape.input(x.slice(ndarray::s![rows.clone(), ..]));
        let input = tape.add_bias(&params, input, zero);
        let y = tape.batch_norm(&params, input, w, b, 1e-5);
        let loss = tape.cross_entropy(y, &labels[rows.clone()]);
        let mut grads = Grads::new(&params);
        tape.backward_scaled(loss, rows.len() as f32 / n as f32, &params, &mut grads);
        let stats: Vec<f32> = tape
            .batch_statistics()
            .flat_map(|b| b.mean.iter().chain(b.variance).copied().collect::<Vec<_>>())
            .collect();
        (tape.value(y).to_owned(), grad(&params, &grads, w), grad(&params, &grads, zero), stats)
    };
    let whole = part(&mut Tape::new(), 0..n);
    let sync = std::sync::Arc::new(crate::BatchSync::new(2));
    let halves: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = [0..2, 2..n]
            .into_iter()
            .enumerate()
            .map(|(i, rows)| {
                let (sync, part) = (std::sync::Arc::clone(&sync), &part);
                s.spawn(move || {
                    let mut tape = Tape::new();
                    tape.share_batch(Some((sync, i)));
                    part(&mut tape, rows)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let close = |what: &str, a: &[f32], b: &[f32]| {
        for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{what}[{i}]: parts {a}, whole {b}");
        }
    };
    let joined = ndarray::concatenate(ndarray::Axis(0), &[halves[0].0.view(), halves[1].0.view()]).unwrap();
    close("y", joined.as_slice().unwrap(), whole.0.as_slice().unwrap());
    let dw: Vec<f32> = halves[0].1.iter().zip(&halves[1].1).map(|(a, b)| a + b).collect();
    close("dw", &dw, &whole.1);
    // The input gradient of each half is the whole batch's for its rows: the zero bias sums it.
    let dx: Vec<f32> = halves[0].2.iter().zip(&halves[1].2).map(|(a, b)| a + b).collect();
    close("dx", &dx, &whole.2);
    assert_eq!(halves[0].3, halves[1].3, "both parts see the same statistics");
    close("statistics", &halves[0].3, &whole.3);
}

#[test]
fn weighted_sum_gradient_is_its_weights() {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let (x, w) = (random(&mut rng, 2, 3), random(&mut rng, 2, 3));
    let mut params = Params::new();
    let mut tape = Tape::new();
    let input = differentiable_input(&mut tape, &mut params, &x);
    let s = tape.weighted_sum(input, to_f32(&w).view());
    backward(&mut tape, s, &params);
    let f = |v: &[f64]| v.iter().zip(to_f32(&w).iter()).map(|(a, &b)| a * f64::from(b)).sum::<f64>();
    let dx = tape.grad(input).unwrap().to_owned();
    compare(
        "weighted sum dx",
        dx.as_slice().unwrap(),
        &numeric_grad(f, to_f32(&x).mapv(f64::from).as_slice().unwrap()),
    )
    .unwrap();
}
