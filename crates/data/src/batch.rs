//! Batching like PyTorch's `DataLoader`: a seeded shuffle every epoch, the last partial batch
//! kept, and pixels converted to `f32` into a buffer the caller reuses.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use simd::Simd;

use crate::Dataset;
use crate::shuffle::shuffle;

/// `PIXEL_TO_F32[v] == v as f32 / 255.0`, exactly what `ToTensor` computes, without a division
/// per pixel.
static PIXEL_TO_F32: [f32; 256] = {
    let mut table = [0.0; 256];
    let mut v = 0;
    while v < 256 {
        table[v] = v as f32 / 255.0;
        v += 1;
    }
    table
};

/// Converts one pixel to `f32` in `[0, 1]`, as `v / 255`.
pub fn pixel_to_f32(v: u8) -> f32 {
    PIXEL_TO_F32[usize::from(v)]
}

/// Converts a row of pixels with the fastest exact method the CPU allows; every path computes
/// exactly `v / 255`.
pub(crate) fn pixels_to_f32(src: &[u8], dst: &mut [f32]) {
    pixels_to_f32_at(Simd::get(), src, dst);
}

fn pixels_to_f32_at(simd: Simd, src: &[u8], dst: &mut [f32]) {
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd; // no vector path of its own here
    #[cfg(target_arch = "x86_64")]
    if simd.avx2() {
        // SAFETY: the CPU has AVX2 and FMA (`simd` says so).
        return unsafe { pixels_to_f32_fma(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from(s) / 255.0;
    }
}

/// `v / 255` without a division: `q = v · (1/255)` is within an ulp, and one fused correction,
/// `q + (v - 255 q) · (1/255)`, rounds it to the quotient for every byte (a test checks all 256).
///
/// # Safety
/// The CPU must have FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels_to_f32_fma(src: &[u8], dst: &mut [f32]) {
    const R: f32 = 1.0 / 255.0;
    for (d, &s) in dst.iter_mut().zip(src) {
        let v = f32::from(s);
        let q = v * R;
        *d = (-q).mul_add(255.0, v).mul_add(R, q);
    }
}

/// Writes the images `indices` of `data` into `x` as rows of `f32` pixels in `[0, 1]`, one
/// image after the other: where a caller keeps a batch in a buffer of its own (a tape's input,
/// say) rather than in a [`Batch`].
///
/// ```
/// // Two 2x2 images; the second one's pixels, scaled to [0, 1].
/// let data = data::Dataset::new(vec![0, 0, 0, 0, 255, 0, 51, 0], vec![0, 1], 2, 2, 2);
/// let mut x = vec![0.0; 4];
/// data::fill_rows(&data, &[1], &mut x);
/// assert_eq!(x, [1.0, 0.0, 0.2, 0.0]);
/// ```
///
/// # Panics
/// If `x` is not `indices.len() * data.image_len()` long, or an index is out of range.
#[track_caller]
pub fn fill_rows(data: &Dataset, indices: &[usize], x: &mut [f32]) {
    let width = data.image_len();
    assert_eq!(x.len(), indices.len() * width, "{} values for {} images of {width}", x.len(), indices.len());
    for (k, (row, &i)) in x.chunks_exact_mut(width).zip(indices).enumerate() {
        prefetch_ahead(data, indices, k);
        pixels_to_f32(data.image(i), row);
    }
}

/// Asks the CPU to start loading the images a couple of places after `indices[k]` into its
/// caches: images are visited in random order, which hardware prefetchers cannot guess, so
/// they are requested while earlier ones are worked on.
#[inline]
pub(crate) fn prefetch_ahead(data: &Dataset, indices: &[usize], k: usize) {
    const AHEAD: usize = 2;
    let first = if k == 0 { 1 } else { k + AHEAD };
    for &i in indices.get(first..(k + AHEAD + 1).min(indices.len())).unwrap_or_default() {
        simd::prefetch(data.image(i));
    }
}

/// Replaces `labels` with the labels of the samples `indices` of `data`.
///
/// # Panics
/// If an index is out of range.
#[track_caller]
pub fn fill_labels(data: &Dataset, indices: &[usize], labels: &mut Vec<usize>) {
    labels.clear();
    labels.extend(indices.iter().map(|&i| usize::from(data.label(i))));
}

/// The order in which a [`Loader`] visits its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// In the order the indices were given, every epoch (for evaluation).
    Sequential,
    /// A fresh permutation every epoch, drawn from ChaCha8 seeded with `seed` on stream
    /// `epoch`: the same seed gives the same orders on every machine, and epoch `k`'s order
    /// does not depend on the epochs before it.
    Shuffled {
        /// The seed of the whole run.
        seed: u64,
    },
}

/// One batch: flattened `f32` images in `[0, 1]` and their labels. Reused from batch to batch,
/// so that filling it allocates nothing once it has held a full batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    x: Vec<f32>,
    labels: Vec<usize>,
    width: usize,
}

impl Batch {
    /// An empty batch; its buffers grow on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// The images, one per row.
    pub fn x(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.labels.len(), self.width), &self.x).expect("batch buffer matches its shape")
    }

    /// The labels, one per row of [`Batch::x`].
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Replaces the contents with the samples `indices` of `data`.
    ///
    /// # Panics
    /// If an index is out of range.
    #[track_caller]
    pub fn fill(&mut self, data: &Dataset, indices: &[usize]) {
        self.width = data.image_len();
        self.x.resize(indices.len() * self.width, 0.0);
        fill_rows(data, indices, &mut self.x);
        fill_labels(data, indices, &mut self.labels);
    }
}

/// Batches over some samples of a [`Dataset`], in an order fixed per epoch.
///
/// ```
/// use data::{Batch, Dataset, Loader, Order};
/// // Five 1x2 images with labels 0..5.
/// let ds = Dataset::new((0..10).collect(), vec![0, 1, 2, 3, 4], 1, 2, 5);
/// let mut loader = Loader::new(&ds, (0..5).collect(), 2, Order::Shuffled { seed: 7 });
/// loader.set_epoch(0);
/// assert_eq!(loader.num_batches(), 3); // 2 + 2 + 1: the last partial batch is kept
/// let mut batch = Batch::new();
/// let mut seen = vec![];
/// for b in 0..loader.num_batches() {
///     loader.fill(b, &mut batch);
///     assert_eq!(batch.x().ncols(), 2);
///     seen.extend_from_slice(batch.labels());
/// }
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2, 3, 4]);
/// ```
#[derive(Debug, Clone)]
pub struct Loader<'a> {
    data: &'a Dataset,
    indices: Vec<usize>,
    order: Vec<usize>,
    batch_size: usize,
    kind: Order,
}

impl<'a> Loader<'a> {
    /// A loader over the samples `indices` of `data`, in batches of `batch_size`. Call
    /// [`Loader::set_epoch`] before each epoch to draw that epoch's order.
    ///
    /// # Panics
    /// If `batch_size` is zero or an index is out of range.
    #[track_caller]
    pub fn new(data: &'a Dataset, indices: Vec<usize>, batch_size: usize, kind: Order) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        if let Some(bad) = indices.iter().find(|&&i| i >= data.len()) {
            panic!("index {bad} out of range for a data set of {}", data.len());
        }
        Self { data, order: indices.clone(), indices, batch_size, kind }
    }

    /// A loader over every sample of `data`.
    ///
    /// # Panics
    /// If `batch_size` is zero.
    #[track_caller]
    pub fn all(data: &'a Dataset, batch_size: usize, kind: Order) -> Self {
        Self::new(data, (0..data.len()).collect(), batch_size, kind)
    }

    /// Draws the order for `epoch` (0-based). With [`Order::Sequential`] this changes nothing.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.order.copy_from_slice(&self.indices);
        if let Order::Shuffled { seed } = self.kind {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(epoch);
            shuffle(&mut self.order, &mut rng);
        }
    }

    /// The current epoch's order of sample indices.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// The number of samples per epoch.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the loader has no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch, the last one possibly partial.
    pub fn num_batches(&self) -> usize {
        self.indices.len().div_ceil(self.batch_size)
    }

    /// The data set this loader reads.
    pub fn dataset(&self) -> &'a Dataset {
        self.data
    }

    /// The sample indices of batch number `b` of the current epoch, for callers that split a
    /// batch (filling each part with [`Batch::fill`]).
    ///
    /// # Panics
    /// If `b >= self.num_batches()`.
    #[track_caller]
    pub fn batch_indices(&self, b: usize) -> &[usize] {
        assert!(b < self.num_batches(), "batch {b} out of range for {} batches", self.num_batches());
        let start = b * self.batch_size;
        let end = (start + self.batch_size).min(self.order.len());
        &self.order[start..end]
    }

    /// Fills `batch` with batch number `b` of the current epoch.
    ///
    /// # Panics
    /// If `b >= self.num_batches()`.
    #[track_caller]
    pub fn fill(&self, b: usize, batch: &mut Batch) {
        batch.fill(self.data, self.batch_indices(b));
    }

    /// The current epoch's batches as owned arrays: simple, but it allocates each batch.
    /// Hot loops should reuse one [`Batch`] with [`Loader::fill`].
    pub fn batches(&self) -> impl Iterator<Item = (Array2<f32>, Vec<usize>)> + '_ {
        let mut batch = Batch::new();
        (0..self.num_batches()).map(move |b| {
            self.fill(b, &mut batch);
            (batch.x().to_owned(), batch.labels().to_vec())
        })
    }
}

/// How many of `n` samples [`split_indices`] holds out for validation: `round(n * val_fraction)`.
///
/// # Panics
/// If `val_fraction` is not in `[0, 1)`.
#[track_caller]
pub fn validation_count(n: usize, val_fraction: f64) -> usize {
    assert!((0.0..1.0).contains(&val_fraction), "validation fraction must be in [0, 1), got {val_fraction}");
    ((n as f64) * val_fraction).round() as usize
}

/// Splits `0..n` into training and validation indices, holding out `round(n * val_fraction)`
/// samples chosen by a permutation seeded with `seed`. Both lists come back sorted.
///
/// ```
/// let (train, val) = data::split_indices(10, 0.2, 0);
/// assert_eq!((train.len(), val.len()), (8, 2));
/// assert_eq!(data::split_indices(10, 0.2, 0), (train, val), "the same seed, the same split");
/// ```
///
/// # Panics
/// If `val_fraction` is not in `[0, 1)`.
#[track_caller]
pub fn split_indices(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_val = validation_count(n, val_fraction);
    let mut all: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Stream u64::MAX is never an epoch's stream, so the split is independent of the orders.
    rng.set_stream(u64::MAX);
    shuffle(&mut all, &mut rng);
    let (val, train) = all.split_at_mut(n_val);
    val.sort_unstable();
    train.sort_unstable();
    (train.to_vec(), val.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tiny(n: usize) -> Dataset {
        // Image i is [i, 255 - i], label i % 3.
        let pixels = (0..n).flat_map(|i| [i as u8, 255 - i as u8]).collect();
        Dataset::new(pixels, (0..n).map(|i| (i % 3) as u8).collect(), 1, 2, 3)
    }

    #[test]
    fn pixels_scale_exactly_like_division_by_255() {
        let all: Vec<u8> = (0..=255).collect();
        for simd in Simd::every() {
            let mut row = vec![0.0; 256];
            pixels_to_f32_at(simd, &all, &mut row);
            for v in 0..=255u8 {
                assert_eq!(pixel_to_f32(v).to_bits(), (f32::from(v) / 255.0).to_bits());
                assert_eq!(row[usize::from(v)].to_bits(), pixel_to_f32(v).to_bits(), "{simd}");
            }
        }
        assert_eq!(pixel_to_f32(255), 1.0);
    }

    #[test]
    fn sequential_batches_keep_the_last_partial_batch() {
        let ds = tiny(5);
        let mut loader = Loader::all(&ds, 2, Order::Sequential);
        loader.set_epoch(3);
        let batches: Vec<_> = loader.batches().collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[2].0.shape(), &[1, 2]);
        assert_eq!(batches[2].1, vec![4 % 3]);
        // Row 1 of batch 0 is image 1: [1, 254] / 255.
        assert_eq!(batches[0].0[[1, 0]], 1.0 / 255.0);
        assert_eq!(batches[0].0[[1, 1]], 254.0 / 255.0);
    }

    #[test]
    fn shuffles_differ_by_epoch_and_repeat_by_seed() {
        let ds = tiny(100);
        let order = |seed, epoch| {
            let mut l = Loader::all(&ds, 10, Order::Shuffled { seed });
            l.set_epoch(epoch);
            l.order().to_vec()
        };
        assert_eq!(order(1, 0), order(1, 0));
        assert_ne!(order(1, 0), order(1, 1));
        assert_ne!(order(1, 0), order(2, 0));
        // An epoch's order does not depend on the epochs drawn before it.
        let mut l = Loader::all(&ds, 10, Order::Shuffled { seed: 1 });
        l.set_epoch(0);
        l.set_epoch(5);
        assert_eq!(l.order(), order(1, 5));
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (train, val) = split_indices(1000, 0.1, 42);
        assert_eq!((train.len(), val.len()), (900, 100));
        let mut all: Vec<_> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(split_indices(1000, 0.1, 42), (train, val.clone()));
        assert_ne!(split_indices(1000, 0.1, 43).1, val);
        assert_eq!(split_indices(10, 0.0, 1).1, Vec::<usize>::new());
    }

    #[test]
    fn a_loader_over_a_subset_visits_only_that_subset() {
        let ds = tiny(20);
        let subset = vec![3, 5, 7, 11];
        let mut loader = Loader::new(&ds, subset.clone(), 3, Order::Shuffled { seed: 9 });
        loader.set_epoch(0);
        let mut batch = Batch::new();
        let mut firsts = vec![];
        for b in 0..loader.num_batches() {
            loader.fill(b, &mut batch);
            firsts.extend(batch.x().column(0).iter().map(|&v| (v * 255.0).round() as usize));
        }
        firsts.sort_unstable();
        assert_eq!(firsts, subset);
    }

    proptest! {
        #[test]
        fn a_shuffle_is_a_permutation(n in 0usize..500, seed: u64, epoch: u64, bs in 1usize..64) {
            let ds = tiny(n);
            let mut loader = Loader::all(&ds, bs, Order::Shuffled { seed });
            loader.set_epoch(epoch);
            let mut seen = loader.order().to_vec();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..n).collect::<Vec<_>>());
            prop_assert_eq!(loader.num_batches(), n.div_ceil(bs));
        }
    }
}
