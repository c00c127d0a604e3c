//! Any layer list, drawn at random with its input's shape: refused before training with a
//! one-line error naming the problem, or trained for two steps, saved, loaded and used to
//! classify. Never a panic.

use data::Dataset;
use nn::{Model, Sequential, SequentialConfig, StateDict};
use proptest::prelude::*;
use train::{Settings, Trainer};

/// One layer's text, from the grammar `SequentialConfig::parse` reads, sizes included that do
/// not fit.
fn layer() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..4, 1usize..6, 1usize..3, 0usize..3, any::<bool>()).prop_map(|(out, k, s, p, bias)| {
            format!("conv({out},{k},stride={s},pad={p}{})", if bias { "" } else { ",bias=false" })
        }),
        (1usize..4, 1usize..3).prop_map(|(k, s)| format!("maxpool({k},{s})")),
        (1usize..4, 1usize..3).prop_map(|(k, s)| format!("avgpool({k},{s})")),
        Just("globalavgpool".to_owned()),
        Just("batchnorm".to_owned()),
        Just("batchnorm(momentum=0.3,eps=0.001)".to_owned()),
        Just("relu".to_owned()),
        prop_oneof![
            Just("tanh".to_owned()),
            Just("sigmoid".to_owned()),
            Just("gelu".to_owned()),
            Just("gelu(tanh)".to_owned()),
            Just("leakyrelu(0.2)".to_owned()),
        ],
        Just("flatten".to_owned()),
        (1usize..6).prop_map(|out| format!("linear({out})")),
        (0usize..10).prop_map(|p| format!("dropout(0.{p})")),
    ]
}

/// Eight images of `rows x cols` with 3 classes, a fifth of the pixels inked.
fn images(rows: usize, cols: usize) -> Dataset {
    let pixels = (0..8 * rows * cols).map(|i| if i % 5 == 0 { 200 } else { 0 }).collect();
    Dataset::new(pixels, (0..8).map(|i| (i % 3) as u8).collect(), rows, cols, 3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_layer_list_trains_or_is_refused(
        layers in proptest::collection::vec(layer(), 1..7),
        rows in 1usize..10,
        cols in 1usize..10,
        end_in_three in any::<bool>(),
    ) {
        let mut list = layers.join(",");
        if end_in_three {
            // Most random lists end in a width other than the 3 classes; many should not.
            list.push_str(",flatten,linear(3)");
        }
        let config = match SequentialConfig::parse(&list, [1, rows, cols]) {
            Ok(config) => config,
            Err(e) => {
                let message = e.to_string();
                prop_assert!(!message.is_empty() && !message.contains('\n'), "{list}: {message}");
                return Ok(());
            }
        };
        let ds = images(rows, cols);
        let model = Sequential::new(&config, &mut train::init_rng(0));
        if let Err(e) = train::check_fits(&model, &ds) {
            prop_assert!(!e.to_string().contains('\n'), "{list}: {e}");
            return Ok(());
        }
        let settings = Settings { batch_size: 4, ..Settings::default() };
        let mut trainer = Trainer::new(model, settings).unwrap().with_threads(2);
        trainer.fit(&ds, 1, &mut ()).unwrap();
        let model = trainer.into_model();
        let bytes = model.state_dict().to_safetensors();
        let back = Sequential::from_state_dict(&StateDict::from_safetensors(&bytes).unwrap()).unwrap();
        let x = ndarray::Array2::from_shape_fn((2, rows * cols), |(i, j)| if (i + j) % 3 == 0 { 0.8 } else { 0.0 });
        prop_assert_eq!(back.logits(x.view()), model.logits(x.view()), "{}", list);
    }
}
