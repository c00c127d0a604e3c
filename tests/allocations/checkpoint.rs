//! Checkpoint loading, as a model and as a training state.

use proptest::prelude::*;
use rand::SeedableRng;

use crate::{damage, exclusive, peak_allocation};

/// Two valid files: a model and a training checkpoint of a small MLP.
fn valid_files() -> [Vec<u8>; 2] {
    let dir = tempfile::tempdir().unwrap();
    let config = nn::MlpConfig { widths: vec![6, 5, 3], output_relu: false };
    let mlp = nn::Mlp::new(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let model = dir.path().join("m.safetensors");
    cli::checkpoint::save(&model, &mlp, &[("epochs", "1".into())]).unwrap();

    let mut adam = optim::Adam::new(optim::AdamConfig::default()).unwrap();
    let mut grads = nn::Grads::new(mlp.params());
    for id in mlp.params().ids() {
        grads.set(id, &vec![0.1; mlp.params().get(id).value().len()]);
    }
    let mut stepped = mlp.clone();
    optim::Optimizer::step(&mut adam, stepped.params_mut(), &grads).unwrap();
    let flags = cli::RunFlags::default();
    let mut settings = flags.resolve().unwrap();
    settings.hidden = vec![5];
    let state = cli::checkpoint::TrainingState {
        model: stepped,
        settings,
        optimizer: optim::Optimizer::state(&adam),
        epochs_done: 1,
        threads: 2,
        history: Vec::new(),
        best: None,
    };
    let training = dir.path().join("t.ckpt");
    cli::checkpoint::save_training(&training, &state).unwrap();
    [std::fs::read(model).unwrap(), std::fs::read(training).unwrap()]
}

/// The JSON parse of the header and the model built from the tensors, each a few times the
/// input, plus a constant.
fn bound(input: &[u8]) -> usize {
    8 * input.len() + (256 << 10)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn hostile_checkpoints_never_panic_nor_over_allocate(
        which in 0usize..3,
        cut in 0usize..4000,
        flips in proptest::collection::vec(0usize..40_000, 0..4),
        random in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _turn = exclusive();
        let files = valid_files();
        let valid = match which {
            0 => random,
            k => files[k - 1].clone(),
        };
        let input = damage(valid.clone(), &flips, cut);
        let (peak, (model, training)) =
            peak_allocation(|| (cli::checkpoint::parse(&input), cli::checkpoint::parse_training(&input)));
        prop_assert!(peak <= bound(&input), "{} bytes in, {peak} allocated", input.len());
        if input == valid && which > 0 {
            prop_assert!(model.is_ok());
            prop_assert_eq!(training.is_ok(), which == 2);
        }
        if input.len() < valid.len() && which > 0 {
            prop_assert!(model.is_err() && training.is_err(), "a truncated file loaded");
        }
    }
}
