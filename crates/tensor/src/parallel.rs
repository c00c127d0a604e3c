//! Splitting work across the current rayon pool by rows (or ranges), in halves with
//! `rayon::join`, which needs no allocation. Every output is still computed by one thread with
//! the same code as without the split, so results do not depend on the number of threads.

use ndarray::{ArrayViewMut2, Axis};

/// Calls `f(first_row, rows)` on disjoint row blocks of `y` that together cover it, in parallel
/// when the pool has several threads and there are at least `2 * min_rows` rows.
pub(crate) fn for_row_blocks<F>(y: ArrayViewMut2<f32>, min_rows: usize, f: &F)
where
    F: Fn(usize, ArrayViewMut2<f32>) + Sync,
{
    split(y, 0, rayon::current_num_threads(), min_rows.max(1), f);
}

fn split<F>(y: ArrayViewMut2<f32>, offset: usize, parts: usize, min_rows: usize, f: &F)
where
    F: Fn(usize, ArrayViewMut2<f32>) + Sync,
{
    let rows = y.nrows();
    if parts < 2 || rows < 2 * min_rows {
        f(offset, y);
        return;
    }
    let left_parts = parts / 2;
    // Row counts in proportion to the parts on each side.
    let mid = (rows * left_parts / parts).clamp(min_rows, rows - min_rows);
    let (a, b) = y.split_at(Axis(0), mid);
    rayon::join(
        || split(a, offset, left_parts, min_rows, f),
        || split(b, offset + mid, parts - left_parts, min_rows, f),
    );
}

/// Calls `f(start, end)` on disjoint ranges covering `0..len`, in parallel when the pool has
/// several threads and `len` is at least `2 * min_len`.
pub fn for_ranges<F>(len: usize, min_len: usize, f: &F)
where
    F: Fn(usize, usize) + Sync,
{
    fn go<F: Fn(usize, usize) + Sync>(start: usize, end: usize, parts: usize, min_len: usize, f: &F) {
        let len = end - start;
        if parts < 2 || len < 2 * min_len {
            f(start, end);
            return;
        }
        let left = parts / 2;
        let mid = start + (len * left / parts).clamp(min_len, len - min_len);
        rayon::join(|| go(start, mid, left, min_len, f), || go(mid, end, parts - left, min_len, f));
    }
    go(0, len, rayon::current_num_threads(), min_len.max(1), f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn blocks_cover_every_row_once_for_any_pool() {
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut y = ndarray::Array2::<f32>::zeros((37, 3));
            let seen = Mutex::new(Vec::new());
            pool.install(|| {
                for_row_blocks(y.view_mut(), 4, &|first, mut block| {
                    block.fill(1.0);
                    seen.lock().unwrap().push((first, block.nrows()));
                })
            });
            assert!(y.iter().all(|&v| v == 1.0));
            let mut blocks = seen.into_inner().unwrap();
            blocks.sort();
            assert_eq!(blocks.len(), threads);
            assert_eq!(blocks.iter().map(|b| b.1).sum::<usize>(), 37);
            assert!(blocks.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));

            let ranges = Mutex::new(Vec::new());
            pool.install(|| for_ranges(10, 4, &|s, e| ranges.lock().unwrap().push((s, e))));
            let mut ranges = ranges.into_inner().unwrap();
            ranges.sort();
            assert_eq!((ranges[0].0, ranges.last().unwrap().1), (0, 10));
            assert!(ranges.len() <= 2, "ranges of at least 4: {ranges:?}");
        }
    }
}
