//! The real MNIST files, through the `data` crate.

use data::{Batch, Loader, Mnist, Order};

#[test]
fn real_mnist_has_the_documented_shape_and_labels() {
    let Some(dir) = testkit::mnist_dir() else { return };
    let mnist = Mnist::load(&dir).unwrap();
    assert_eq!((mnist.train.len(), mnist.train.rows(), mnist.train.cols()), (60_000, 28, 28));
    assert_eq!((mnist.test.len(), mnist.test.rows(), mnist.test.cols()), (10_000, 28, 28));
    assert_eq!(mnist.train.label(0), 5);
    assert_eq!(mnist.train.classes(), 10);
    let mut counts = [0usize; 10];
    mnist.test.labels().iter().for_each(|&l| counts[usize::from(l)] += 1);
    assert_eq!(counts, [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]);
}

#[test]
fn real_mnist_batches_like_a_dataloader() {
    let Some(dir) = testkit::mnist_dir() else { return };
    let mnist = Mnist::load(&dir).unwrap();
    let mut loader = Loader::all(&mnist.train, 64, Order::Shuffled { seed: 0 });
    loader.set_epoch(0);
    assert_eq!(loader.num_batches(), 938);
    let mut batch = Batch::new();
    loader.fill(937, &mut batch);
    assert_eq!(batch.x().dim(), (60_000 - 937 * 64, 784));
    loader.fill(0, &mut batch);
    assert_eq!(batch.x().dim(), (64, 784));
    assert!(batch.x().iter().all(|&v| (0.0..=1.0).contains(&v)));
    // The first row is the image the shuffle put first, scaled by 1/255.
    let first = loader.order()[0];
    let expected: Vec<f32> = mnist.train.image(first).iter().map(|&p| f32::from(p) / 255.0).collect();
    assert_eq!(batch.x().row(0).to_vec(), expected);
    assert_eq!(batch.labels()[0], usize::from(mnist.train.label(first)));
}
