//! Label smoothing and learning-rate schedules against PyTorch's numbers (`recipe.json` in
//! `$TORCH_REFERENCE_DIR`).

use ndarray::Array2;
use serde_json::Value;

use crate::reference::{assert_close, floats};

fn recipe() -> Option<Value> {
    let dir = testkit::data_dir("TORCH_REFERENCE_DIR", None, &["recipe.json"])?;
    Some(serde_json::from_slice(&std::fs::read(dir.join("recipe.json")).unwrap()).unwrap())
}

#[test]
fn label_smoothing_matches_pytorch() {
    let Some(json) = recipe() else { return };
    let case = &json["label_smoothing"];
    let logits = Array2::from_shape_vec((5, 4), floats(&case["logits"])).unwrap();
    let y: Vec<usize> = case["y"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let cases = case["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 3, "every reference case is exercised");
    for (eps, want) in cases {
        let eps: f32 = eps.parse().unwrap();
        let mut params = nn::Params::new();
        let zero = params.add("zero", &[4], vec![0.0; 4]);
        let mut tape = nn::Tape::new();
        let input = tape.input(logits.view());
        let z = tape.add_bias(&params, input, zero);
        let loss = tape.cross_entropy_smoothed(z, &y, eps);
        let mut grads = nn::Grads::new(&params);
        tape.backward(loss, &params, &mut grads);
        assert_close(&format!("eps {eps} loss"), &[tape.value(loss)[[0, 0]]], &[want["loss"].as_f64().unwrap() as f32]);
        let grad = tape.grad(z).unwrap().to_owned();
        assert_close(&format!("eps {eps} grad"), grad.as_slice().unwrap(), &floats(&want["grad_logits"]));
    }
}

#[test]
fn learning_rate_schedules_match_pytorch() {
    use optim::{LrCurve, LrSchedule};
    let Some(json) = recipe() else { return };
    let cases = json["schedules"].as_object().unwrap();
    assert_eq!(cases.len(), 6, "every reference schedule is exercised");
    for (name, case) in cases {
        let steps = case["steps"].as_u64().unwrap();
        let schedule = match name.as_str() {
            "step_size3_gamma0.5" => {
                LrSchedule { curve: LrCurve::Step { step_size: 3, gamma: 0.5 }, ..LrSchedule::default() }
            }
            "cosine_tmax10" => {
                LrSchedule { curve: LrCurve::Cosine { t_max: 10, eta_min: 0.0 }, ..LrSchedule::default() }
            }
            "cosine_tmax10_etamin0.01" => {
                LrSchedule { curve: LrCurve::Cosine { t_max: 10, eta_min: 0.01 }, ..LrSchedule::default() }
            }
            "onecycle_max0.1_total20" => LrSchedule::one_cycle(0.1, steps),
            "onecycle_max0.1_total20_linear_pct0.25" => {
                let mut s = LrSchedule::one_cycle(0.1, steps);
                if let LrCurve::OneCycle { pct_start, linear, .. } = &mut s.curve {
                    (*pct_start, *linear) = (0.25, true);
                }
                s
            }
            "linear_warmup5_then_cosine" => LrSchedule {
                warmup_steps: 5,
                warmup_start: 0.1,
                curve: LrCurve::Cosine { t_max: steps - 5, eta_min: 0.0 },
            },
            other => panic!("no schedule for reference case {other}"),
        };
        let lr = case["lr"].as_f64().unwrap() as f32;
        let ours: Vec<f32> = (0..steps).map(|t| schedule.lr(lr, t)).collect();
        // The reference is in Python floats: compare as the f32 the optimizer uses.
        assert_close(name, &ours, &floats(&case["lrs"]));
    }
}
