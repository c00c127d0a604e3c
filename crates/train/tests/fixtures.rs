//! Files written by `mnist train --save` and `--checkpoint` before the training engine became a
//! library (the fixtures, made on the data set of `testkit::write_fixture_set`) still load, and
//! a run resumed from them ends where the older code's resumed run did, to rounding.

use std::path::PathBuf;

use data::Mnist;
use nn::{Model, Sequential, StateDict};
use optim::{AdamConfig, OptimizerConfig, SgdConfig, WeightDecay};
use safetensors::SafeTensors;
use train::{Settings, Trainer, TrainingState};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The file's tensors as the `safetensors` crate reads them: name, shape, values.
fn raw_tensors(bytes: &[u8]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (name, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn model_tensors(model: &Sequential) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let state = model.state_dict();
    state
        .names()
        .map(|n| (n.to_owned(), state.get(n).unwrap().shape().to_vec(), state.get(n).unwrap().data().to_vec()))
        .collect()
}

#[test]
fn a_saved_model_loads_with_its_tensors_in_pytorchs_order() {
    let bytes = fixture("adam-model.safetensors");
    let model: Sequential = train::load_model(&bytes).unwrap();
    assert_eq!(model.config().as_mlp().unwrap().widths, [36, 8, 10]);
    assert_eq!(model_tensors(&model), raw_tensors(&bytes));
    let state = StateDict::from_safetensors(&bytes).unwrap();
    assert_eq!(train::recorded_test_accuracy(&state), Some(0.5));
    let err = TrainingState::<Sequential>::from_safetensors(&bytes).unwrap_err();
    assert_eq!(err.to_string(), "a model without training state, not a file written by a training checkpoint");
}

#[test]
fn an_adam_checkpoint_with_early_stopping_loads_whole() {
    let bytes = fixture("adam-run.ckpt");
    let state = TrainingState::<Sequential>::from_safetensors(&bytes).unwrap();
    assert_eq!(
        state.settings,
        Settings {
            batch_size: 8,
            optimizer: OptimizerConfig::Adam(AdamConfig { lr: 0.01, ..AdamConfig::default() }),
            seed: 3,
            val_split: 0.25,
            early_stop: Some(2),
            ..Settings::default()
        }
    );
    assert_eq!((state.epochs_done(), state.threads), (2, 2));
    assert_eq!(state.history[1].val_accuracy, Some(14.0 / 30.0));
    let best = state.best.as_ref().unwrap();
    assert_eq!(best.epoch, 2);
    let raw = raw_tensors(&bytes);
    let pick = |prefix: &str| -> Vec<_> {
        raw.iter()
            .filter_map(|(n, s, v)| {
                let local = n.strip_prefix(prefix)?;
                (!local.starts_with("optimizer.") && !local.starts_with("best."))
                    .then(|| (local.to_owned(), s.clone(), v.clone()))
            })
            .collect()
    };
    assert_eq!(model_tensors(&state.model), pick(""));
    assert_eq!(model_tensors(&best.model), pick("best."));
    assert_eq!(state.optimizer.meta("optimizer_step"), Some("24"));
    let exp_avg = raw.iter().find(|t| t.0 == "optimizer.fc1.weight.exp_avg").unwrap();
    assert_eq!(state.optimizer.get("fc1.weight.exp_avg").unwrap().data(), &exp_avg.2[..]);
    // A training file is a model file too.
    assert_eq!(model_tensors(&train::load_model::<Sequential>(&bytes).unwrap()), pick(""));
}

#[test]
fn an_sgd_checkpoint_loads_with_its_momentum() {
    let state = TrainingState::<Sequential>::from_safetensors(&fixture("sgd-run.ckpt")).unwrap();
    let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: WeightDecay::L2(0.001), ..SgdConfig::default() };
    assert_eq!(state.settings.optimizer, OptimizerConfig::Sgd(sgd));
    assert_eq!((state.settings.batch_size, state.settings.seed, state.threads), (16, 4, 1));
    assert_eq!(state.model.config().as_mlp().unwrap().widths, [36, 8, 5, 10]);
    assert!(state.model.config().as_mlp().unwrap().output_relu);
    assert_eq!(state.optimizer.names().count(), 6);
    assert!(state.best.is_none());
}

/// Resumes the fixture `checkpoint` up to epoch 3 and compares the model with `expected`,
/// which the older code saved after doing the same.
fn resume_matches(checkpoint: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    testkit::write_fixture_set(dir.path());
    let data = Mnist::load(dir.path()).unwrap();
    let state = TrainingState::<Sequential>::from_safetensors(&fixture(checkpoint)).unwrap();
    let threads = state.threads;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let model = pool.install(|| {
        let mut trainer = Trainer::resume(state).unwrap().with_threads(threads);
        trainer.fit(&data.train, 3, &mut ()).unwrap();
        trainer.into_model()
    });
    let (got, want) = (model_tensors(&model), raw_tensors(&fixture(expected)));
    for ((name, shape, values), (want_name, want_shape, want_values)) in got.iter().zip(&want) {
        assert_eq!((name, shape), (want_name, want_shape), "{checkpoint}");
        // To rounding, not to the bit: on CPUs with AVX-512 the products now sum in another
        // order than when the fixtures were made (4.7e-6 at worst here). A resume that lost
        // any state (moments, momentum, step count, the data order) is off by far more.
        let worst =
            values.iter().zip(want_values).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0.0f32, f32::max);
        assert!(worst <= 2e-5, "{checkpoint} {name}: {worst:e} from the older code's result");
    }
    assert_eq!(got.len(), want.len());
}

#[test]
fn resumed_runs_end_where_the_older_code_ended() {
    resume_matches("adam-run.ckpt", "adam-resumed.safetensors");
    resume_matches("sgd-run.ckpt", "sgd-resumed.safetensors");
}
