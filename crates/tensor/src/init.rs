//! Seeded initialisation matching PyTorch's `nn.Linear` default.

use ndarray::{Array1, Array2};
use ndarray_rand::RandomExt;
use rand::Rng;
use rand::distr::Uniform;

/// A weight `[fan_out, fan_in]` and bias `[fan_out]` drawn as PyTorch's `nn.Linear` draws them:
/// uniform in `±1/sqrt(fan_in)` (Kaiming-uniform with `a = sqrt(5)`, which reduces to that
/// bound). The generator is the caller's, so a seeded one gives the same weights every time.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
/// let (w, b) = tensor::linear_init(3, 4, &mut rng);
/// assert_eq!((w.dim(), b.len()), ((3, 4), 3));
/// assert!(w.iter().all(|v| v.abs() <= 0.5)); // 1/sqrt(4)
/// ```
///
/// # Panics
/// If `fan_in` or `fan_out` is zero.
#[track_caller]
pub fn linear_init<R: Rng + ?Sized>(fan_out: usize, fan_in: usize, rng: &mut R) -> (Array2<f32>, Array1<f32>) {
    assert!(fan_in > 0 && fan_out > 0, "a layer needs positive widths, got {fan_in} -> {fan_out}");
    let bound = 1.0 / (fan_in as f32).sqrt();
    let dist = Uniform::new(-bound, bound).expect("a positive, finite bound");
    let weight = Array2::random_using((fan_out, fan_in), dist, rng);
    let bias = Array1::random_using(fan_out, dist, rng);
    (weight, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn same_seed_same_weights_within_the_bound() {
        let (w1, b1) = linear_init(128, 784, &mut ChaCha8Rng::seed_from_u64(7));
        let (w2, b2) = linear_init(128, 784, &mut ChaCha8Rng::seed_from_u64(7));
        let (w3, _) = linear_init(128, 784, &mut ChaCha8Rng::seed_from_u64(8));
        assert_eq!((&w1, &b1), (&w2, &b2));
        assert_ne!(w1, w3);
        let bound = 1.0 / 28.0;
        assert!(w1.iter().chain(b1.iter()).all(|v| v.abs() <= bound));
        // A uniform(-a, a) sample of 100k values has mean near 0 and variance near a²/3.
        let n = w1.len() as f64;
        let mean = w1.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = w1.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 1e-3 * f64::from(bound) * 10.0, "{mean}");
        assert!((var / (f64::from(bound).powi(2) / 3.0) - 1.0).abs() < 0.02, "{var}");
    }
}
