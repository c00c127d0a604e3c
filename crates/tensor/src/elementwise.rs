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

/// `dx = beta * dx + dy * [y > 0]`, where `y = relu(x)`: the gradient passes where the
/// output is positive. At `x = 0` the gradient is 0, as in PyTorch.
///
/// # Panics
/// If the shapes differ.
#[track_caller]
pub fn relu_backward(dy: ArrayView2<f32>, y: ArrayView2<f32>, beta: f32, dx: ArrayViewMut2<f32>) {
    assert!(dy.dim() == y.dim() && y.dim() == dx.dim(), "relu_backward: shapes differ");
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
}
