//! 2-D max pooling as PyTorch's `F.max_pool2d` computes it (no padding, output sizes rounded
//! down), with the position of each window's maximum kept for the gradient. On a tie the first
//! maximum in row-major order wins, as in PyTorch.

use ndarray::{ArrayView2, ArrayViewMut2};

/// The geometry of a max pooling over one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxPool2dShape {
    /// Channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Window side.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
}

impl MaxPool2dShape {
    /// Output height: `(H - kernel) / stride + 1`, rounded down.
    pub fn out_height(&self) -> usize {
        (self.height - self.kernel) / self.stride + 1
    }

    /// Output width.
    pub fn out_width(&self) -> usize {
        (self.width - self.kernel) / self.stride + 1
    }

    /// Values per input sample.
    pub fn in_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Values per output sample.
    pub fn out_len(&self) -> usize {
        self.channels * self.out_height() * self.out_width()
    }

    /// Whether the window fits the input and every size is positive.
    pub fn is_valid(&self) -> bool {
        self.channels > 0
            && self.kernel > 0
            && self.stride > 0
            && self.height >= self.kernel
            && self.width >= self.kernel
    }
}

/// `y` = the maximum of each window of `x` (both a batch of rows), and in `argmax` the index
/// within its row of the input each maximum came from.
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn max_pool2d(x: ArrayView2<f32>, shape: &MaxPool2dShape, mut y: ArrayViewMut2<f32>, argmax: &mut Vec<u32>) {
    assert!(shape.is_valid(), "max_pool2d: invalid shape {shape:?}");
    assert_eq!(x.ncols(), shape.in_len(), "max_pool2d: input rows of {} for {shape:?}", x.ncols());
    assert_eq!(y.dim(), (x.nrows(), shape.out_len()), "max_pool2d: output for {shape:?}");
    let (h, w, k, s) = (shape.height, shape.width, shape.kernel, shape.stride);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    argmax.resize(x.nrows() * shape.out_len(), 0);
    for ((xn, mut yn), index) in x.rows().into_iter().zip(y.rows_mut()).zip(argmax.chunks_exact_mut(shape.out_len())) {
        let xn = xn.to_slice().expect("standard rows");
        let yn = yn.as_slice_mut().expect("standard rows");
        if k == 2 && s == 2 && !xn.iter().any(|v| v.is_nan()) {
            pool_2x2(xn, shape, yn, index);
            continue;
        }
        let mut o = 0;
        for c in 0..shape.channels {
            let plane = &xn[c * h * w..(c + 1) * h * w];
            for oy in 0..oh {
                for ox in 0..ow {
                    let first = oy * s * w + ox * s;
                    let (mut best, mut value) = (first, plane[first]);
                    for i in 0..k {
                        let row = &plane[first + i * w..first + i * w + k];
                        for (j, &v) in row.iter().enumerate() {
                            // Strictly greater: on a tie the first in row-major order stays. A
                            // NaN wins, as it does in PyTorch.
                            if v > value || (v.is_nan() && !value.is_nan()) {
                                (best, value) = (first + i * w + j, v);
                            }
                        }
                    }
                    yn[o] = value;
                    index[o] = (c * h * w + best) as u32;
                    o += 1;
                }
            }
        }
    }
}

/// [`max_pool2d`] for 2x2 windows with stride 2 and no NaN, the common case, without the
/// general loops.
fn pool_2x2(xn: &[f32], shape: &MaxPool2dShape, yn: &mut [f32], index: &mut [u32]) {
    let (h, w) = (shape.height, shape.width);
    let (oh, ow) = (shape.out_height(), shape.out_width());
    let mut o = 0;
    for c in 0..shape.channels {
        for oy in 0..oh {
            let top = c * h * w + 2 * oy * w;
            let (upper, lower) = (&xn[top..top + w], &xn[top + w..top + 2 * w]);
            for ox in 0..ow {
                let x = 2 * ox;
                // In row-major order, replacing only on a strictly greater value.
                let (mut best, mut value) = (top + x, upper[x]);
                if upper[x + 1] > value {
                    (best, value) = (top + x + 1, upper[x + 1]);
                }
                if lower[x] > value {
                    (best, value) = (top + w + x, lower[x]);
                }
                if lower[x + 1] > value {
                    (best, value) = (top + w + x + 1, lower[x + 1]);
                }
                yn[o] = value;
                index[o] = best as u32;
                o += 1;
            }
        }
    }
}

/// `dx = beta·dx + (dy routed to each window's maximum)`, with `argmax` from [`max_pool2d`].
///
/// # Panics
/// If the shapes do not fit.
#[track_caller]
pub fn max_pool2d_backward(dy: ArrayView2<f32>, argmax: &[u32], beta: f32, mut dx: ArrayViewMut2<f32>) {
    assert_eq!(dy.len(), argmax.len(), "max_pool2d_backward: {} gradients for {} maxima", dy.len(), argmax.len());
    assert_eq!(dy.nrows(), dx.nrows(), "max_pool2d_backward: batch sizes differ");
    if beta == 0.0 {
        dx.fill(0.0);
    } else if beta != 1.0 {
        dx *= beta;
    }
    let per_row = dy.ncols();
    for ((dy_n, mut dx_n), idx) in dy.rows().into_iter().zip(dx.rows_mut()).zip(argmax.chunks_exact(per_row.max(1))) {
        for (&g, &i) in dy_n.iter().zip(idx) {
            dx_n[i as usize] += g;
        }
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, array};

    use super::*;

    #[test]
    fn windows_their_maxima_and_ties() {
        // One 1x3x4 sample, 2x2 windows with stride 2 (the last row is dropped: floor).
        let x = array![[1.0f32, 5.0, 2.0, 2.0, 3.0, 0.0, 2.0, 1.0, 9.0, 9.0, 9.0, 9.0]];
        let sh = MaxPool2dShape { channels: 1, height: 3, width: 4, kernel: 2, stride: 2 };
        let mut y = Array2::zeros((1, 2));
        let mut argmax = Vec::new();
        max_pool2d(x.view(), &sh, y.view_mut(), &mut argmax);
        assert_eq!(y, array![[5.0, 2.0]]);
        assert_eq!(argmax, [1, 2], "the tie 2, 2, 2 goes to the first");
        let mut dx = Array2::from_elem((1, 12), 1.0);
        max_pool2d_backward(array![[10.0f32, 20.0]].view(), &argmax, 1.0, dx.view_mut());
        assert_eq!(dx.row(0).to_vec(), [1.0, 11.0, 21.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    }
}
