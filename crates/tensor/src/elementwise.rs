//! Bias, ReLU and their gradients, row-wise over `batch x features` matrices.

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Zip};

/// Adds `bias` to every row of `y`.
///
/// # Panics
/// If `bias` is not as long as `y` is wide.
#[track_caller]
pub fn add_bias(mut y: ArrayViewMut2<f32>, bias: ArrayView1<f32>) {
    assert_eq!(y.ncols(), bias.len(), "bias of {} for rows of {}", bias.len(), y.ncols());
    for mut row in y.rows_mut() {
        row += &bias;
    }
}

/// `db = beta * db + (sum of the rows of dy)`: the gradient of a bias added to every row.
///
/// # Panics
/// If `db` is not as long as `dy` is wide.
#[track_caller]
pub fn sum_rows(dy: ArrayView2<f32>, beta: f32, mut db: ArrayViewMut1<f32>) {
    assert_eq!(dy.ncols(), db.len(), "bias gradient of {} for rows of {}", db.len(), dy.ncols());
    if beta == 0.0 {
        db.fill(0.0);
    } else if beta != 1.0 {
        db *= beta;
    }
    for row in dy.rows() {
        db += &row;
    }
}

/// `y = max(x, 0)` in place.
pub fn relu_inplace(mut y: ArrayViewMut2<f32>) {
    y.mapv_inplace(|v| v.max(0.0));
}

/// `y = max(x, 0)`, element by element.
///
/// # Panics
/// If the lengths differ.
#[track_caller]
pub fn relu_into(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "relu: {} inputs for {} outputs", x.len(), y.len());
    wide(|| y.iter_mut().zip(x).for_each(|(y, &v)| *y = v.max(0.0)));
}

#[inline(always)]
fn relu_backward_slices(dy: &[f32], y: &[f32], beta: f32, dx: &mut [f32]) {
    if beta == 0.0 {
        dx.iter_mut().zip(dy).zip(y).for_each(|((dx, &dy), &y)| *dx = if y > 0.0 { dy } else { 0.0 });
    } else {
        dx.iter_mut().zip(dy).zip(y).for_each(|((dx, &dy), &y)| *dx = beta * *dx + if y > 0.0 { dy } else { 0.0 });
    }
}

/// Runs `f`, a simple loop, compiled for the widest vectors of the level in force (the
/// default target stops at SSE2): the same operations, more lanes at a time, the same results.
#[inline(always)]
fn wide<R>(f: impl FnOnce() -> R) -> R {
    simd::dispatch!(simd::Simd::get(), V => f())
}

/// `dx = beta * dx + dy * [y > 0]`, where `y = relu(x)`: the gradient passes where the
/// output is positive. At `x = 0` the gradient is 0, as in PyTorch.
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn relu_backward(dy: ArrayView2<f32>, y: ArrayView2<f32>, beta: f32, mut dx: ArrayViewMut2<f32>) {
    assert!(dy.dim() == y.dim() && y.dim() == dx.dim(), "relu_backward: shapes differ");
    if let (Some(dy), Some(y), Some(dx)) = (dy.as_slice(), y.as_slice(), dx.as_slice_mut()) {
        return wide(|| relu_backward_slices(dy, y, beta, dx));
    }
    if beta == 0.0 {
        Zip::from(dx).and(dy).and(y).for_each(|dx, &dy, &y| *dx = if y > 0.0 { dy } else { 0.0 });
    } else {
        Zip::from(dx).and(dy).and(y).for_each(|dx, &dy, &y| *dx = beta * *dx + if y > 0.0 { dy } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn bias_is_added_per_row_and_its_gradient_sums_rows() {
        let mut y = array![[1.0f32, 2.0], [3.0, 4.0]];
        add_bias(y.view_mut(), array![10.0f32, 20.0].view());
        assert_eq!(y, array![[11.0, 22.0], [13.0, 24.0]]);
        let mut db = array![1.0f32, 1.0];
        sum_rows(y.view(), 0.0, db.view_mut());
        assert_eq!(db, array![24.0, 46.0]);
        // beta = 1 accumulates: 24 + 24, 46 + 46.
        sum_rows(y.view(), 1.0, db.view_mut());
        assert_eq!(db, array![48.0, 92.0]);
    }

    #[test]
    fn relu_and_its_mask() {
        let mut y = array![[-1.0f32, 0.0, 2.0]];
        relu_inplace(y.view_mut());
        assert_eq!(y, array![[0.0, 0.0, 2.0]]);
        let dy = array![[5.0f32, 6.0, 7.0]];
        let mut dx = array![[1.0f32, 1.0, 1.0]];
        // Gradient only where y > 0; at y == 0 it is 0 (PyTorch's convention).
        relu_backward(dy.view(), y.view(), 0.0, dx.view_mut());
        assert_eq!(dx, array![[0.0, 0.0, 7.0]]);
        relu_backward(dy.view(), y.view(), 1.0, dx.view_mut());
        assert_eq!(dx, array![[0.0, 0.0, 14.0]]);
    }

    #[test]
    fn contiguous_and_strided_operands_agree() {
        // Long enough for whole vectors and a tail; the transposed views take the general path.
        let x = ndarray::Array2::from_shape_fn((37, 5), |(a, b)| ((a * 7 + b * 3) % 11) as f32 - 5.0);
        let mut y = vec![0.0; x.len()];
        relu_into(x.as_slice().unwrap(), &mut y);
        let mut z = x.clone();
        relu_inplace(z.view_mut());
        assert_eq!(y, z.as_slice().unwrap());
        let dy = x.mapv(|v| v * 0.5 + 0.25);
        for beta in [0.0, 0.5] {
            let (mut fast, mut strided) = (x.mapv(|v| v * 0.1), x.t().as_standard_layout().mapv(|v| v * 0.1));
            relu_backward(dy.view(), z.view(), beta, fast.view_mut());
            relu_backward(dy.t(), z.t(), beta, strided.view_mut());
            assert_eq!(fast.t(), strided, "beta {beta}");
        }
    }
}
