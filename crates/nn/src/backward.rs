//! The backward pass: every derivative rule in one `match`, read as a table.

use crate::grads::Grads;
use crate::loss::softmax_cross_entropy_backward;
use crate::params::Params;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::tape::{Op, Tape, Var};

impl Tape {
    /// Computes the gradient of the scalar `loss` with respect to every parameter that took part
    /// in it, writing each into `grads` (overwriting the last step's: there is nothing to zero
    /// beforehand). Parameters the loss does not depend on are left with no gradient, which
    /// optimizers refuse. `params` must be the parameters the ops were recorded with.
    ///
    /// # Panics
    /// If `loss` is not a 1x1 value of this tape, `grads` is not for `params`, or the tape was
    /// made by [`Tape::for_inference`].
    #[track_caller]
    pub fn backward(&mut self, loss: Var, params: &Params, grads: &mut Grads) {
        self.backward_scaled(loss, 1.0, params, grads);
    }

    /// [`Tape::backward`] for `scale * loss`: when a batch is split in parts whose mean losses
    /// are computed apart, part `i` of `n_i` rows out of `n` has `scale = n_i / n`, and the
    /// parts' gradients sum to the whole batch's.
    ///
    /// # Panics
    /// As [`Tape::backward`].
    #[track_caller]
    pub fn backward_scaled(&mut self, loss: Var, scale: f32, params: &Params, grads: &mut Grads) {
        self.check(loss);
        assert!(!self.is_for_inference(), "a tape made by Tape::for_inference keeps nothing for a backward pass");
        let node = &self.nodes[loss.index];
        assert!(node.rows == 1 && node.cols == 1, "backward needs a scalar loss, got {}x{}", node.rows, node.cols);
        grads.begin_backward(params);
        for node in &mut self.nodes[..self.len] {
            node.grad_written = false;
        }
        if self.nodes[loss.index].needs_grad {
            let (mut seed, _) = self.nodes[loss.index].grad_to_write();
            seed.fill(scale);
        }

        for i in (0..=loss.index).rev() {
            let (before, rest) = self.nodes.split_at_mut(i);
            let node = &mut rest[0];
            if !node.needs_grad || !node.grad_written {
                continue;
            }
            if let Op::Linear { sparse: true, .. } = node.op {
                node.sparse.index_columns();
            }
            let dy = node.grad();
            match node.op {
                Op::Input => {}
                Op::Linear { x, weight, bias, sparse } => {
                    // y = x·Wᵀ + b:  dW += dyᵀ·x,  db += Σ_rows dy,  dx += dy·W.
                    let input = &mut before[x.index];
                    let w = params.matrix(weight);
                    let (dw, beta) = grads.matrix_mut(params, weight);
                    if sparse {
                        // dWᵀ += xᵀ·dy over x's nonzero entries, into dW's contiguous columns.
                        tensor::sparse_matmul_tn(&node.sparse, dy, beta, dw.reversed_axes());
                    } else {
                        tensor::matmul_tn(1.0, dy, input.value(), beta, dw);
                    }
                    if input.needs_grad {
                        let (dx, beta) = input.grad_to_write();
                        tensor::matmul(1.0, dy, w, beta, dx);
                    }
                    if let Some(b) = bias {
                        let (db, beta) = grads.vector_mut(b);
                        tensor::sum_rows(dy, beta, db);
                    }
                }
                Op::AddBias { x, bias } => {
                    // y = x + b:  db += Σ_rows dy,  dx += dy.
                    let (db, beta) = grads.vector_mut(bias);
                    tensor::sum_rows(dy, beta, db);
                    let input = &mut before[x.index];
                    if input.needs_grad {
                        let (mut dx, beta) = input.grad_to_write();
                        dx.zip_mut_with(&dy, |d, &g| *d = beta * *d + g);
                    }
                }
                Op::Relu { x } => {
                    // y = max(x, 0):  dx += dy where y > 0.
                    let input = &mut before[x.index];
                    let (dx, beta) = input.grad_to_write();
                    #[cfg(test)]
                    if broken_rule::RELU_WITHOUT_MASK.get() {
                        // Deliberately wrong, to prove the gradient check can fail.
                        let mut dx = dx;
                        dx.zip_mut_with(&dy, |d, &g| *d = beta * *d + g);
                        continue;
                    }
                    tensor::relu_backward(dy, node.value(), beta, dx);
                }
                Op::Activation { x, f } => {
                    // y = f(x):  dx += dy·f'(x), f' from x or from y.
                    let input = &mut before[x.index];
                    let x_value = std::mem::take(&mut input.value);
                    let (mut dx, beta) = input.grad_to_write();
                    let dx = dx.as_slice_mut().expect("node buffer");
                    tensor::activation_backward(
                        f,
                        &x_value,
                        &node.value,
                        dy.as_slice().expect("node buffer"),
                        beta,
                        dx,
                    );
                    input.value = x_value;
                }
                Op::BatchNorm { x, weight, bias, channels, batch, relu } => {
                    // y = w·x̂ + b:  dw += Σ dy·x̂,  db += Σ dy (this part's sums). With the
                    // batch's statistics, x̂ depends on every value of the batch:
                    // dx = w/σ·(dy - Σdy/M - x̂·Σdy·x̂/M), the sums over the whole batch's M
                    // values per channel; with fixed statistics, dx = w/σ·dy. With `relu`, dy
                    // is first masked where the ReLU cut. x̂ is recomputed from x.
                    let (mean, per_channel) = node.aux.split_at(channels);
                    let (w, b) = (params.vector(weight), params.vector(bias));
                    let normalization = tensor::Normalization {
                        mean,
                        inv_std: &per_channel[..channels],
                        weight: w.as_slice().expect("contiguous"),
                        bias: b.as_slice().expect("contiguous"),
                        relu,
                    };
                    let input = &mut before[x.index];
                    let x_value = std::mem::take(&mut input.value);
                    let x_view = ArrayView2::from_shape((input.rows, input.cols), &x_value[..]).expect("node buffer");
                    let sums = &mut self.norm_sums;
                    sums.clear();
                    sums.resize(2 * channels, 0.0);
                    tensor::batch_norm_backward_sums(dy, x_view, &normalization, sums);
                    let (dw, beta_w) = grads.vector_mut(weight);
                    write_f64(dw, beta_w, &sums[channels..]);
                    let (db, beta_b) = grads.vector_mut(bias);
                    write_f64(db, beta_b, &sums[..channels]);
                    if input.needs_grad {
                        if let (true, Some((sync, part))) = (batch, &self.batch) {
                            sync.all_reduce(*part, sums);
                        }
                        let count = if batch { f64::from(per_channel[channels]) } else { 1.0 };
                        let factors = &mut self.norm_factors;
                        factors.clear();
                        // Σdy / M, then Σdy·x̂ / M (zeros with fixed statistics).
                        factors.extend(sums.iter().map(|&s| if batch { (s / count) as f32 } else { 0.0 }));
                        let (shift, slope) = factors.split_at(channels);
                        let (dx, beta) = input.grad_to_write();
                        tensor::batch_norm_backward(dy, x_view, &normalization, shift, slope, beta, dx);
                    }
                    input.value = x_value;
                }
                Op::AvgPool2d { x, shape } => {
                    // y = mean over the window:  dx += dy / k² over the window.
                    let (dx, beta) = before[x.index].grad_to_write();
                    tensor::avg_pool2d_backward(dy, &shape, beta, dx);
                }
                Op::GlobalAvgPool { x } => {
                    // y[n, c] = mean of the plane:  dx += dy[n, c] / plane over it.
                    let (dx, beta) = before[x.index].grad_to_write();
                    tensor::global_avg_pool_backward(dy, beta, dx);
                }
                Op::Conv2d { x, weight, bias, shape, sparse: true } => {
                    // The same rules over the nonzero values of data, which takes no gradient.
                    let input = &before[x.index];
                    let x_value = ArrayView2::from_shape((input.rows, input.cols), &input.value).expect("node buffer");
                    let (dw, db) = grads.weight_and_bias_mut(params, weight, bias);
                    tensor::sparse_conv2d_backward(x_value, dy, &shape, &mut self.sparse_conv, dw, db);
                }
                Op::Conv2d { x, weight, bias, shape, sparse: false } => {
                    // y_n = W·im2col(x_n) + b:  dW += Σ_n dy_n·im2col(x_n)ᵀ,  db += Σ dy,
                    // dx_n += col2im(Wᵀ·dy_n). What the forward pass kept (unfolded patches or
                    // padded inputs; nothing for Winograd's method, which pads x again) is in aux.
                    let input = &mut before[x.index];
                    let (rows, cols, needs_grad) = (input.rows, input.cols, input.needs_grad);
                    let x_value = ArrayView2::from_shape((rows, cols), &input.value).expect("node buffer");
                    let dx = needs_grad.then(|| {
                        let beta = crate::grads::write_beta(&mut input.grad_written);
                        (
                            ArrayViewMut2::from_shape((rows, cols), &mut input.grad[..]).expect("node buffer matches"),
                            beta,
                        )
                    });
                    let (dw, db) = grads.weight_and_bias_mut(params, weight, bias);
                    let w = params.matrix(weight);
                    let dy = ArrayView2::from_shape((node.rows, node.cols), &node.grad).expect("node buffer matches");
                    tensor::conv2d_backward(x_value, w, dy, &shape, &mut node.aux, &mut self.conv_scratch, dw, db, dx);
                }
                Op::Add { a, b } => {
                    // y = a + b:  da += dy,  db += dy (so twice dy when a and b are one value:
                    // the second write accumulates).
                    for x in [a, b] {
                        let input = &mut before[x.index];
                        if input.needs_grad {
                            let (mut dx, beta) = input.grad_to_write();
                            ndarray::Zip::from(&mut dx).and(&dy).for_each(|d, &g| *d = beta * *d + g);
                        }
                    }
                }
                Op::MaxPool2d { x, .. } => {
                    // y = max over the window:  dx[argmax] += dy.
                    let input = &mut before[x.index];
                    let (dx, beta) = input.grad_to_write();
                    tensor::max_pool2d_backward(dy, &node.indices, beta, dx);
                }
                Op::Dropout { x } => {
                    // y = x·m:  dx += dy·m.
                    let input = &mut before[x.index];
                    let mask = ArrayView2::from_shape((node.rows, node.cols), &node.aux).expect("mask at the shape");
                    let (mut dx, beta) = input.grad_to_write();
                    ndarray::Zip::from(&mut dx).and(&dy).and(&mask).for_each(|d, &g, &m| *d = beta * *d + g * m);
                }
                Op::WeightedSum { x } => {
                    // s = Σ x·w:  dx += ds·w.
                    let g = dy[[0, 0]];
                    let (mut dx, beta) = before[x.index].grad_to_write();
                    let weights = ArrayView2::from_shape(dx.dim(), &node.aux).expect("weights at x's shape");
                    ndarray::Zip::from(&mut dx).and(&weights).for_each(|d, &w| *d = beta * *d + g * w);
                }
                Op::CrossEntropy { logits, ref labels, smoothing } => {
                    // L = mean_i -Σ_k t_ik log softmax(z_i)_k with t = (1 - ε)·onehot(y) + ε/K:
                    // dz = (softmax(z) - t) * dL / N.
                    let input = &mut before[logits.index];
                    let scale = dy[[0, 0]] / input.rows as f32;
                    let probs = ndarray::ArrayView2::from_shape((input.rows, input.cols), &node.aux)
                        .expect("softmax kept at the loss's shape");
                    let (dz, beta) = input.grad_to_write();
                    softmax_cross_entropy_backward(probs, &self.labels[labels.clone()], smoothing, scale, beta, dz);
                }
            }
        }
        grads.end_backward();
    }
}

/// `d = beta·d + v`, from f64 sums.
fn write_f64(mut d: ndarray::ArrayViewMut1<f32>, beta: f32, v: &[f64]) {
    for (d, &v) in d.iter_mut().zip(v) {
        *d = if beta == 0.0 { v as f32 } else { beta * *d + v as f32 };
    }
}

/// A switch for one deliberately wrong derivative rule, per test thread.
#[cfg(test)]
pub(crate) mod broken_rule {
    use std::cell::Cell;

    thread_local! {
        /// When set, ReLU's backward ignores its mask (a classic bug).
        pub(crate) static RELU_WITHOUT_MASK: Cell<bool> = const { Cell::new(false) };
    }
}
