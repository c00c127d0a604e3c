//! The training step, as `mnist train` runs it (a batch split in two parts, each with its own
//! buffers, tape and gradients, then one Adam step over both parts' gradients), allocates
//! nothing of its own once its buffers have grown to size. What remains is matrixmultiply's:
//! it allocates a packing buffer for each dense product (those of the hidden layers; the first
//! layer's are sparse and allocate nothing). A kernel of our own for these small products
//! measured no faster, so they stay.

use data::{Batch, Dataset, Loader, Order};
use nn::{Grads, Mlp, MlpConfig, Tape};
use optim::{Adam, AdamConfig, Optimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{allocations, exclusive};

/// 256 images shaped like MNIST's, about 20% of their pixels nonzero.
fn dataset() -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels = (0..256 * 784).map(|_| if rng.random_bool(0.2) { rng.random_range(1..=255) } else { 0 }).collect();
    Dataset::new(pixels, (0..256).map(|i| (i % 10) as u8).collect(), 28, 28, 10)
}

#[test]
fn a_warm_training_step_allocates_only_in_dense_products() {
    let _turn = exclusive();
    // One worker, so that no thread pool is woken (its queues allocate) during the count.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let ds = dataset();
        let mut mlp = Mlp::new(&MlpConfig::default(), &mut ChaCha8Rng::seed_from_u64(1));
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let mut loader = Loader::all(&ds, 64, Order::Shuffled { seed: 2 });
        let mut parts = [(Batch::new(), Tape::new()), (Batch::new(), Tape::new())];
        let mut grads = [Grads::new(mlp.params()), Grads::new(mlp.params())];

        let mut epoch = |epoch: u64, mlp: &mut Mlp| {
            loader.set_epoch(epoch);
            for b in 0..loader.num_batches() {
                let indices = loader.batch_indices(b);
                let half = indices.len() / 2;
                for (k, ((batch, tape), grads)) in parts.iter_mut().zip(grads.iter_mut()).enumerate() {
                    let rows = if k == 0 { &indices[..half] } else { &indices[half..] };
                    batch.fill(&ds, rows);
                    tape.clear();
                    let x = tape.input(batch.x());
                    let logits = mlp.forward(tape, x);
                    let loss = tape.cross_entropy(logits, batch.labels());
                    tape.backward_scaled(loss, rows.len() as f32 / indices.len() as f32, mlp.params(), grads);
                }
                adam.step_sum(mlp.params_mut(), &grads).unwrap();
            }
        };
        // The first epoch grows every buffer; a few more steps let them reach their largest.
        epoch(0, &mut mlp);
        epoch(1, &mut mlp);
        let (calls, ()) = allocations(|| epoch(2, &mut mlp));
        // Per part: the forward products of layers 2-4, and their weight and input gradients.
        let dense_products = 2 * 3 * 3 * loader.num_batches();
        assert!(
            calls <= dense_products,
            "a warm epoch of {} steps allocated {calls} times, more than its {dense_products} dense products",
            loader.num_batches()
        );
    });
}
