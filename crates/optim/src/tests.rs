//! Hand-derived steps; the comparison with PyTorch's own trajectories is in the workspace's
//! end-to-end tests.

use nn::{Grads, Params, StateDict};

use crate::*;

/// One parameter `w` with `values`, and gradients `grad` for it.
fn params(values: &[f32], grad: &[f32]) -> (Params, Grads) {
    let mut params = Params::new();
    let id = params.add("w", &[values.len()], values.to_vec());
    let mut grads = Grads::new(&params);
    grads.set(id, grad);
    (params, grads)
}

fn values(params: &Params) -> Vec<f32> {
    params.iter().next().unwrap().elements().to_vec()
}

fn set_grad(params: &Params, grads: &mut Grads, grad: &[f32]) {
    grads.set(params.by_name("w").unwrap(), grad);
}

#[test]
fn adam_first_step_moves_each_weight_by_about_lr() {
    // t = 1: m = (1-β1)g, v = (1-β2)g², and the bias corrections cancel the (1-β) factors:
    // p -= lr · g / (|g| + ε).
    let (mut p, g) = params(&[1.0, -2.0, 0.5], &[0.3, -4.0, 0.0]);
    let mut adam = Adam::new(AdamConfig { lr: 0.1, ..AdamConfig::default() }).unwrap();
    adam.step(&mut p, &g).unwrap();
    let expected = [1.0 - 0.1 * 0.3 / (0.3 + 1e-8), -2.0 + 0.1 * 4.0 / (4.0 + 1e-8), 0.5];
    for (got, want) in values(&p).iter().zip(expected) {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(adam.step_count(), 1);
}

#[test]
fn adam_second_step_follows_the_formula() {
    // Same gradient g twice: m2 = (1-β1²)g·... computed by hand from the recurrences.
    let (b1, b2, lr, eps, g) = (0.9f64, 0.999f64, 0.01f64, 1e-8f64, 0.5f64);
    let m1 = (1.0 - b1) * g;
    let v1 = (1.0 - b2) * g * g;
    let p1 = 1.0 - lr / (1.0 - b1) * m1 / (v1.sqrt() / (1.0 - b2).sqrt() + eps);
    let m2 = m1 + (1.0 - b1) * (g - m1);
    let v2 = b2 * v1 + (1.0 - b2) * g * g;
    let p2 = p1 - lr / (1.0 - b1 * b1) * m2 / (v2.sqrt() / (1.0 - b2 * b2).sqrt() + eps);

    let (mut p, mut g) = params(&[1.0], &[0.5]);
    let mut adam = Adam::new(AdamConfig { lr: 0.01, ..AdamConfig::default() }).unwrap();
    adam.step(&mut p, &g).unwrap();
    assert!((f64::from(values(&p)[0]) - p1).abs() < 1e-6);
    set_grad(&p, &mut g, &[0.5]);
    adam.step(&mut p, &g).unwrap();
    assert!((f64::from(values(&p)[0]) - p2).abs() < 1e-6);
}

#[test]
fn adamw_shrinks_before_the_update_and_adam_l2_adds_to_the_gradient() {
    // AdamW, t = 1, g = 0: p = p·(1 - lr·λ) and the Adam update is 0.
    let (mut p, g) = params(&[2.0], &[0.0]);
    let mut adamw =
        Adam::new(AdamConfig { lr: 0.1, weight_decay: WeightDecay::Decoupled(0.5), ..Default::default() }).unwrap();
    adamw.step(&mut p, &g).unwrap();
    assert!((values(&p)[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-7);
    // Adam with L2, t = 1, g = 0: g' = λ·p = 1 > 0, so p moves by -lr (first step).
    let (mut p, g) = params(&[2.0], &[0.0]);
    let mut adam = Adam::new(AdamConfig { lr: 0.1, weight_decay: WeightDecay::L2(0.5), ..Default::default() }).unwrap();
    adam.step(&mut p, &g).unwrap();
    assert!((values(&p)[0] - 1.9).abs() < 1e-6);
}

#[test]
fn sgd_plain_momentum_and_nesterov_by_hand() {
    // Plain: p -= lr·g.
    let (mut p, mut g) = params(&[1.0], &[2.0]);
    let mut sgd = Sgd::new(SgdConfig { lr: 0.1, ..Default::default() }).unwrap();
    sgd.step(&mut p, &g).unwrap();
    assert!((values(&p)[0] - 0.8).abs() < 1e-7);

    // Momentum 0.9, dampening 0.5, g = 2 twice: b1 = 2, b2 = 0.9·2 + 0.5·2 = 2.8.
    (p, g) = params(&[1.0], &[2.0]);
    let mut sgd = Sgd::new(SgdConfig { lr: 0.1, momentum: 0.9, dampening: 0.5, ..Default::default() }).unwrap();
    sgd.step(&mut p, &g).unwrap();
    set_grad(&p, &mut g, &[2.0]);
    sgd.step(&mut p, &g).unwrap();
    assert!((values(&p)[0] - (1.0 - 0.2 - 0.28)).abs() < 1e-6);

    // Nesterov 0.9, g = 2: b1 = 2, update g + 0.9·b1 = 3.8.
    (p, g) = params(&[1.0], &[2.0]);
    let mut sgd = Sgd::new(SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, ..Default::default() }).unwrap();
    sgd.step(&mut p, &g).unwrap();
    assert!((values(&p)[0] - (1.0 - 0.38)).abs() < 1e-6);
}

#[test]
fn a_step_without_gradients_is_refused_and_changes_nothing() {
    let mut p = Params::new();
    let w = p.add("w", &[1], vec![1.0]);
    let id = p.add("v", &[2], vec![3.0, 4.0]); // never given a gradient
    let mut g = Grads::new(&p);
    g.set(w, &[1.0]);
    for opt in [
        &mut Adam::new(AdamConfig::default()).unwrap() as &mut dyn Optimizer,
        &mut Sgd::new(SgdConfig::default()).unwrap(),
    ] {
        let err = opt.step(&mut p, &g).unwrap_err();
        assert_eq!(err, OptimError::MissingGradient { name: "v".into() });
        assert_eq!(values(&p), [1.0]);
        assert_eq!(p.get(id).elements(), &[3.0, 4.0]);
    }
}

#[test]
fn state_is_bound_to_the_parameters_it_was_made_for() {
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    let (mut p, g) = params(&[1.0, 2.0], &[0.1, 0.1]);
    adam.step(&mut p, &g).unwrap();
    let (mut p3, g3) = params(&[1.0, 2.0, 3.0], &[0.1; 3]);
    let err = adam.step(&mut p3, &g3).unwrap_err();
    assert_eq!(err.to_string(), "parameter 0 is w [3], but the optimizer's state is for w [2]");
    // Gradients made for other parameters are refused too.
    let err = adam.step(&mut p, &g3).unwrap_err();
    assert!(matches!(err, OptimError::GradsMismatch { .. }), "{err}");
}

#[test]
fn bad_hyperparameters_are_named() {
    let err = Adam::new(AdamConfig { lr: f32::NAN, ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid learning rate NaN: must be finite and non-negative");
    let err = Adam::new(AdamConfig { betas: (0.9, 1.0), ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid beta2 1: must be in [0, 1)");
    let err = Sgd::new(SgdConfig { nesterov: true, ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid nesterov momentum 0: needs momentum > 0 and dampening 0");
    let err = Sgd::new(SgdConfig { weight_decay: WeightDecay::L2(-1.0), ..Default::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid weight decay -1: must be finite and non-negative");
}

/// Steps through four gradients, handing over to a fresh optimizer built from the saved
/// state's config and loaded with its buffers after step `resume_after`, if any.
fn trajectory(make: &dyn Fn() -> Box<dyn Optimizer>, resume_after: Option<usize>) -> Vec<f32> {
    let grads = [[0.3f32, -0.2], [0.1, 0.4], [-0.5, 0.05], [0.2, 0.2]];
    let (mut p, mut gr) = params(&[1.0, -1.0], &grads[0]);
    let mut opt = make();
    for (k, g) in grads.iter().enumerate() {
        set_grad(&p, &mut gr, g);
        opt.step(&mut p, &gr).unwrap();
        if resume_after == Some(k) {
            let bytes = opt.state_dict(&p).to_safetensors();
            let state = StateDict::from_safetensors(&bytes).unwrap();
            opt = OptimizerConfig::from_metadata(&state).unwrap().build().unwrap();
            opt.load_state_dict(&state, &p).unwrap();
        }
    }
    values(&p)
}

#[test]
fn optimizers_resumed_from_their_state_continue_bit_for_bit() {
    let adam = || {
        Box::new(Adam::new(AdamConfig { weight_decay: WeightDecay::Decoupled(0.1), ..Default::default() }).unwrap())
            as Box<dyn Optimizer>
    };
    let sgd = || {
        let config = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: WeightDecay::L2(0.01),
            ..Default::default()
        };
        Box::new(Sgd::new(config).unwrap()) as Box<dyn Optimizer>
    };
    for make in [&adam as &dyn Fn() -> Box<dyn Optimizer>, &sgd] {
        let straight = trajectory(make, None);
        assert_ne!(straight, [1.0, -1.0]);
        for k in 0..3 {
            assert_eq!(trajectory(make, Some(k)), straight, "resumed after step {k}");
        }
    }
    let (p, _) = params(&[1.0], &[1.0]);
    let state = adam().state_dict(&p);
    assert!(state.is_empty(), "no step, no buffers");
    assert_eq!(state.meta("optimizer_step"), Some("0"));
}

#[test]
fn buffers_are_saved_under_pytorchs_names() {
    let mut params = Params::new();
    let w = params.add("w", &[2], vec![1.0, 2.0]);
    let mut grads = Grads::new(&params);
    grads.set(w, &[0.5, -1.0]);
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    adam.step(&mut params, &grads).unwrap();
    let state = adam.state_dict(&params);
    assert_eq!(state.names().collect::<Vec<_>>(), ["w.exp_avg", "w.exp_avg_sq"]);
    // After one step m = (1 - β1)·g, v = (1 - β2)·g².
    let m = state.get("w.exp_avg").unwrap().data();
    assert!((m[0] - 0.05).abs() < 1e-7 && (m[1] + 0.1).abs() < 1e-7, "{m:?}");
    let v = state.get("w.exp_avg_sq").unwrap().data();
    assert!((v[0] / 2.5e-4 - 1.0).abs() < 1e-4 && (v[1] / 1e-3 - 1.0).abs() < 1e-4, "{v:?}");
    assert_eq!(OptimizerConfig::from_metadata(&state).unwrap(), OptimizerConfig::Adam(AdamConfig::default()));
}

#[test]
fn a_state_for_another_optimizer_or_other_parameters_is_refused() {
    let mut sgd = Sgd::new(SgdConfig { momentum: 0.9, ..Default::default() }).unwrap();
    let (mut p, g) = params(&[1.0], &[1.0]);
    sgd.step(&mut p, &g).unwrap();
    let mut adam = Adam::new(AdamConfig::default()).unwrap();
    let err = adam.load_state_dict(&sgd.state_dict(&p), &p).unwrap_err();
    assert_eq!(err.to_string(), "invalid optimizer state: unexpected buffer w.momentum_buffer");

    let mut a = Adam::new(AdamConfig::default()).unwrap();
    a.step(&mut p, &g).unwrap();
    let mut state = a.state_dict(&p);
    state.remove("w.exp_avg_sq");
    let err = Adam::new(AdamConfig::default()).unwrap().load_state_dict(&state, &p).unwrap_err();
    assert_eq!(err.to_string(), "invalid optimizer state: w.exp_avg_sq is missing");
    let (p2, _) = params(&[1.0, 2.0], &[0.0, 0.0]);
    let err = Adam::new(AdamConfig::default()).unwrap().load_state_dict(&a.state_dict(&p), &p2).unwrap_err();
    assert_eq!(err.to_string(), "invalid optimizer state: parameter w has shape [1], expected [2]");
}

#[test]
fn configs_round_trip_through_metadata() {
    for config in [
        OptimizerConfig::Adam(AdamConfig {
            lr: 3e-4,
            betas: (0.8, 0.99),
            eps: 1e-7,
            weight_decay: WeightDecay::L2(0.01),
        }),
        OptimizerConfig::Adam(AdamConfig::adamw()),
        OptimizerConfig::Sgd(SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: WeightDecay::None,
        }),
    ] {
        let mut state = StateDict::new();
        config.write_metadata(&mut state);
        assert_eq!(OptimizerConfig::from_metadata(&state).unwrap(), config);
    }
    assert_eq!(OptimizerConfig::Adam(AdamConfig::adamw()).name(), "adamw");
}

#[test]
fn momentum_decaying_below_the_normal_range_becomes_zero_without_moving_the_weights() {
    // One gradient, then none for long enough that the momentum decays below f32's normal
    // range. f64 keeps it: the weights must not notice the flush.
    let grads0 = [1e-3f64, -2e-2, 0.0, 1e-5];
    for nesterov in [false, true] {
        let (mut p, mut g) = params(&[0.25, -1.5, 3.0, 0.0], &[0.0; 4]);
        let mut sgd = Sgd::new(SgdConfig { lr: 0.1, momentum: 0.9, nesterov, ..SgdConfig::default() }).unwrap();
        let (mu, lr) = (0.9f64, 0.1f64);
        let mut want = [0.25f64, -1.5, 3.0, 0.0];
        let mut b = [0.0f64; 4];
        for t in 1..=900 {
            let grad = if t == 1 { grads0 } else { [0.0; 4] };
            set_grad(&p, &mut g, &grad.map(|x| x as f32));
            sgd.step(&mut p, &g).unwrap();
            for i in 0..4 {
                b[i] = if t == 1 { grad[i] } else { mu * b[i] + grad[i] };
                want[i] -= lr * if nesterov { grad[i] + mu * b[i] } else { b[i] };
            }
        }
        for (got, want) in values(&p).iter().zip(want) {
            assert!((f64::from(*got) - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
        }
        let state = sgd.state_dict(&p);
        let buffer = state.get("w.momentum_buffer").unwrap().data();
        // 0.9^900 takes each buffer below the smallest normal f32: flushed, they are zero.
        assert!(buffer.iter().all(|&x| x == 0.0), "nesterov {nesterov}: {buffer:?}");
    }
}

#[test]
fn moments_decaying_below_the_normal_range_become_zero_without_moving_the_weights() {
    // One gradient, then none for long enough that the moments decay below f32's normal range.
    // f64 keeps them: the weights must not notice the flush.
    let (mut p, mut g) = params(&[0.25, -1.5, 3.0, 0.0], &[1e-3, -2e-2, 0.0, 1e-5]);
    let grads0 = [1e-3f64, -2e-2, 0.0, 1e-5];
    let mut adam = Adam::new(AdamConfig { lr: 0.01, ..AdamConfig::default() }).unwrap();
    let (b1, b2, lr, eps) = (0.9f64, 0.999f64, 0.01f64, 1e-8f64);
    let mut want = [0.25f64, -1.5, 3.0, 0.0];
    let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
    for t in 1..=800 {
        let grad = if t == 1 { grads0 } else { [0.0; 4] };
        set_grad(&p, &mut g, &grad.map(|x| x as f32));
        adam.step(&mut p, &g).unwrap();
        for i in 0..4 {
            m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
            v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
            let step = lr / (1.0 - b1.powi(t)) * m[i] / (v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps);
            want[i] -= step;
        }
    }
    for (got, want) in values(&p).iter().zip(want) {
        assert!((f64::from(*got) - want).abs() < 1e-6 * want.abs().max(1.0), "{got} vs {want}");
    }
    let state = adam.state_dict(&p);
    let m = state.get("w.exp_avg").unwrap().data();
    // 0.9^800 takes each first moment below the smallest normal f32 (not below the smallest
    // subnormal): flushed, they are exactly zero.
    assert!(m.iter().all(|&x| x == 0.0), "{m:?}");
    let v = state.get("w.exp_avg_sq").unwrap().data();
    assert!(v.iter().all(|&x| x == 0.0 || x.is_normal()), "no subnormal second moment: {v:?}");
}
