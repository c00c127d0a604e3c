//! The training step, as `train::Trainer` runs it (a batch split in two parts, each with its own
//! tape and gradients, then one Adam step over both parts' gradients), allocates nothing once
//! its buffers have grown to size, at whatever vector level is in force (`.ci/run` runs this
//! test at every level the machine has, through `MNIST_SIMD`): the products are the project's
//! own kernels at every level, and they keep no buffers. Evaluation holds a small batch's
//! values at a time, however many samples it is given.

use data::Dataset;
use nn::{MlpConfig, Sequential, SequentialConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use train::{Observer, Settings, Trainer};

use crate::exclusive;

/// 256 images shaped like MNIST's, about 20% of their pixels nonzero.
fn dataset() -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels = (0..256 * 784).map(|_| if rng.random_bool(0.2) { rng.random_range(1..=255) } else { 0 }).collect();
    Dataset::new(pixels, (0..256).map(|i| (i % 10) as u8).collect(), 28, 28, 10)
}

/// Counts the allocator calls between the first and the last step of epoch `epoch`.
struct Count {
    epoch: usize,
    current: usize,
    first: Option<usize>,
    calls: Option<usize>,
}

impl<M: nn::Model> Observer<M> for Count {
    fn epoch_started(&mut self, epoch: usize, _steps: usize) {
        self.current = epoch;
    }

    fn step_done(&mut self, step: usize, steps: usize) {
        if self.current != self.epoch {
            return;
        }
        let now = crate::allocation_calls();
        if step == 1 {
            self.first = Some(now);
        } else if step == steps {
            self.calls = self.first.map(|first| now - first);
        }
    }
}

#[test]
fn a_warm_training_step_allocates_nothing() {
    let _turn = exclusive();
    // One worker, so that no other thread wakes up (its queues allocate) during the count; the
    // trainer still splits every batch in two parts, as on two threads.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let ds = dataset();
        let mlp = Sequential::mlp(&MlpConfig::default(), &mut ChaCha8Rng::seed_from_u64(1));
        let mut trainer = Trainer::new(mlp, Settings::default()).unwrap().with_threads(2);
        // The first epochs grow every buffer to its largest.
        let mut count = Count { epoch: 3, current: 0, first: None, calls: None };
        trainer.fit(&ds, 3, &mut count).unwrap();
        let calls = count.calls.expect("epoch 3 ran");
        let steps = ds.len() / 64 - 1; // counted from the end of step 1 to the end of the last
        assert_eq!(calls, 0, "{steps} warm MLP steps at {} allocated", simd::Simd::get());
    });
}

#[test]
fn a_warm_lenet_step_allocates_nothing() {
    let _turn = exclusive();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let ds = dataset();
        let config = SequentialConfig::parse(SequentialConfig::LENET, [1, 28, 28]).unwrap();
        let lenet = Sequential::new(&config, &mut ChaCha8Rng::seed_from_u64(1));
        let mut trainer = Trainer::new(lenet, Settings::default()).unwrap().with_threads(2);
        let mut count = Count { epoch: 3, current: 0, first: None, calls: None };
        trainer.fit(&ds, 3, &mut count).unwrap();
        let calls = count.calls.expect("epoch 3 ran");
        let steps = ds.len() / 64 - 1;
        assert_eq!(calls, 0, "{steps} warm LeNet-5 steps at {} allocated", simd::Simd::get());
    });
}

#[test]
fn warm_inference_allocates_nothing() {
    let _turn = exclusive();
    let ds = dataset();
    let x = ndarray::Array2::from_shape_fn((64, 784), |(i, j)| f32::from(ds.pixels()[i * 784 + j]) / 255.0);
    let mlp =
        Sequential::new(&SequentialConfig::mlp([1, 28, 28], &MlpConfig::default()), &mut ChaCha8Rng::seed_from_u64(1));
    let lenet = Sequential::new(
        &SequentialConfig::parse(SequentialConfig::LENET, [1, 28, 28]).unwrap(),
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    let cnn = Sequential::new(
        &SequentialConfig::parse(SequentialConfig::CNN, [1, 28, 28]).unwrap(),
        &mut ChaCha8Rng::seed_from_u64(1),
    );
    for (name, model) in [("MLP", mlp), ("LeNet-5", lenet), ("CNN", cnn)] {
        let mut tape = nn::Tape::for_inference();
        // The first batch grows the tape's buffers; the next ones reuse them.
        let first = nn::Model::logits_with(&model, x.view(), &mut tape).to_owned();
        let before = crate::allocation_calls();
        for _ in 0..3 {
            let logits = nn::Model::logits_with(&model, x.view(), &mut tape);
            assert_eq!(logits, first);
        }
        let calls = crate::allocation_calls() - before;
        assert_eq!(calls, 0, "3 warm {name} batches at {} allocated", simd::Simd::get());
    }
}

#[test]
fn evaluation_holds_the_values_of_a_small_batch_at_a_time() {
    let _turn = exclusive();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let ds = dataset();
        let config = SequentialConfig::parse(SequentialConfig::CNN, [1, 28, 28]).unwrap();
        let cnn = Sequential::new(&config, &mut ChaCha8Rng::seed_from_u64(1));
        let indices: Vec<usize> = (0..300).map(|i| i % ds.len()).collect();
        let (peak, eval) = crate::peak_allocation(|| train::evaluate(&cnn, &ds, &indices));
        assert_eq!(eval.predictions.len(), 300);
        // An inference tape holds every layer's values for its batch: at most what the memory
        // check counts for 100 samples, never the values of all 300 at once (about 3 times
        // as much).
        let batch = 100 * config.activations_per_sample().unwrap() * std::mem::size_of::<f32>();
        assert!(peak <= batch, "evaluating 300 images peaked at {peak} bytes; a batch of 100 holds {batch}");
    });
}
