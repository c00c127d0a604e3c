//! The shuffle behind every epoch's order and the validation split, written here so that "same
//! seed, same order" does not depend on a dependency's choice of algorithm.
//!
//! It is Durstenfeld's Fisher–Yates shuffle, drawing the swap positions for several steps from
//! one 32-bit number (the product of the steps' range sizes, as long as it fits), each number
//! drawn uniformly below its bound by Canon's multiply-and-check method. These are the choices
//! `rand` 0.9's `SliceRandom::shuffle` makes, so every order drawn before this module existed
//! is drawn again; a test holds the two side by side.

use rand::RngCore;

/// Shuffles `items` in place, drawing from `rng`.
///
/// ```
/// use rand::SeedableRng;
/// let mut order: Vec<usize> = (0..8).collect();
/// data::shuffle(&mut order, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
/// let mut again: Vec<usize> = (0..8).collect();
/// data::shuffle(&mut again, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
/// assert_eq!(order, again, "a seed gives one order");
/// order.sort();
/// assert_eq!(order, (0..8).collect::<Vec<_>>());
/// ```
///
/// # Panics
/// If `items` has `u32::MAX` or more elements.
#[track_caller]
pub fn shuffle<T>(items: &mut [T], rng: &mut impl RngCore) {
    let n = items.len();
    if n <= 1 {
        return;
    }
    assert!(n < u32::MAX as usize, "shuffle: at most u32::MAX - 1 items");
    let mut dice = Dice { next_bound: 1, chunk: 0, left: 1 };
    for i in 0..n {
        items.swap(i, dice.roll(rng));
    }
}

/// Rolls a die with `next_bound` faces, then one with a face more, and so on, several rolls
/// out of each 32-bit draw.
struct Dice {
    /// The number of faces of the next roll.
    next_bound: u32,
    /// A number uniform below the product of the remaining rolls' face counts.
    chunk: u32,
    /// Rolls left in `chunk`.
    left: u8,
}

impl Dice {
    fn roll(&mut self, rng: &mut impl RngCore) -> usize {
        let faces = self.next_bound;
        self.next_bound += 1;
        if self.left == 0 {
            // As many rolls as fit: faces · (faces + 1) · ... below 2^32.
            let (mut bound, mut count) = (faces, 1u8);
            while let Some(b) = bound.checked_mul(faces + u32::from(count)) {
                bound = b;
                count += 1;
            }
            self.chunk = below(bound, rng);
            self.left = count;
        }
        self.left -= 1;
        if self.left == 0 {
            return self.chunk as usize;
        }
        let r = self.chunk % faces;
        self.chunk /= faces;
        r as usize
    }
}

/// A number uniform in `0..bound` (`bound > 0`): the high half of a 32x32-bit product, with a
/// second draw where the low half says the first may be biased.
fn below(bound: u32, rng: &mut impl RngCore) -> u32 {
    let wide = u64::from(rng.next_u32()) * u64::from(bound);
    let (mut result, low) = ((wide >> 32) as u32, wide as u32);
    if low > bound.wrapping_neg() {
        let carry = (u64::from(rng.next_u32()) * u64::from(bound)) >> 32;
        if low.checked_add(carry as u32).is_none() {
            result += 1;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn orders_are_those_rand_0_9_draws() {
        for n in [0usize, 1, 2, 3, 7, 12, 13, 100, 1000, 60_000] {
            for seed in 0..4u64 {
                for stream in [0u64, 3, u64::MAX] {
                    let rng = || {
                        let mut r = ChaCha8Rng::seed_from_u64(seed);
                        r.set_stream(stream);
                        r
                    };
                    let mut ours: Vec<usize> = (0..n).collect();
                    shuffle(&mut ours, &mut rng());
                    let mut theirs: Vec<usize> = (0..n).collect();
                    theirs.shuffle(&mut rng());
                    assert_eq!(ours, theirs, "n {n}, seed {seed}, stream {stream}");
                }
            }
        }
    }

    #[test]
    fn below_stays_below_its_bound() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for bound in [1u32, 2, 3, 1000, u32::MAX / 3, u32::MAX] {
            assert!((0..1000).all(|_| below(bound, &mut rng) < bound));
        }
    }
}
