//! Checkpoint loading, as a model and as a training state.

use proptest::prelude::*;
use rand::SeedableRng;

use crate::{damage, exclusive, peak_allocation};

/// Two valid files: a model and a training checkpoint of a small MLP.
fn valid_files() -> &'static [Vec<u8>; 2] {
    static FILES: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
    FILES.get_or_init(make_files)
}

fn make_files() -> [Vec<u8>; 2] {
    let config = nn::MlpConfig { widths: vec![6, 5, 3], output_relu: false };
    let mlp = nn::Sequential::mlp(&config, &mut rand_chacha::ChaCha8Rng::seed_from_u64(1));
    let model = nn::Model::state_dict(&mlp).to_safetensors();
    let data =
        data::Dataset::new((0..60).map(|v| (v * 37 % 256) as u8).collect(), (0..10).map(|i| i % 3).collect(), 2, 3, 3);
    let mut trainer = train::Trainer::new(mlp, train::Settings { batch_size: 4, ..Default::default() }).unwrap();
    trainer.fit(&data, 1, &mut ()).unwrap();
    [model, trainer.state().to_safetensors()]
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
            peak_allocation(|| (train::load_model::<nn::Sequential>(&input), train::TrainingState::<nn::Sequential>::from_safetensors(&input)));
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
