//! The tape: ops recorded in execution order, each with its output value computed eagerly.
//! Walking the list backwards is a valid order for the backward pass, so no graph is kept.
//!
//! Node storage outlives [`Tape::clear`]: the next step's nodes reuse the buffers of the last
//! step's, so a training loop that records the same ops every step allocates nothing once warm.

use std::ops::Range;

use ndarray::{ArrayView2, ArrayViewMut2};

use crate::params::{ParamId, Params};

/// `y = x·Wᵀ (+ b)` for `W` of shape `[out, in]`. With `sparse`, only the weights of `x`'s
/// nonzero entries are read (their positions are left in `sparse`, for the weight gradient);
/// that needs `W` stored column-major, which [`Linear`](crate::Linear) does.
pub(crate) fn linear_forward(
    x: ArrayView2<f32>,
    w: ArrayView2<f32>,
    bias: Option<ndarray::ArrayView1<f32>>,
    sparse: Option<&mut tensor::SparseRows>,
    mut y: ArrayViewMut2<f32>,
) {
    match sparse {
        Some(sparse) => {
            assert_eq!(w.strides()[0], 1, "the sparse path needs a column-major weight");
            sparse.assign(x);
            tensor::sparse_matmul(sparse, w.t(), 0.0, y.view_mut());
        }
        None => tensor::matmul_nt(1.0, x, w, 0.0, y.view_mut()),
    }
    if let Some(b) = bias {
        tensor::add_bias(y, b);
    }
}

/// One batch normalisation's statistics over a training batch ([`Tape::batch_statistics`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchStatistics<'a> {
    /// Each channel's mean.
    pub mean: &'a [f32],
    /// Each channel's unbiased variance (its biased one when `count` is 1).
    pub variance: &'a [f32],
    /// The values per channel over the whole batch. PyTorch refuses to train on 1; here such
    /// a batch is normalised to the bias, and its statistics are not taken into the running
    /// ones.
    pub count: usize,
}

/// A value recorded on a [`Tape`]: a matrix, one row per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub(crate) index: usize,
    pub(crate) generation: u64,
}

/// What produced a node's value: the rows of the table that `backward` differentiates.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Data fed in; no gradient flows into it.
    Input,
    /// `y = x·Wᵀ (+ b)` with `W` of shape `[out, in]` as in PyTorch. When `sparse`, `x` is data
    /// whose nonzero entries are kept in the node's `sparse` buffers.
    Linear { x: Var, weight: ParamId, bias: Option<ParamId>, sparse: bool },
    /// `y = x + b`, `b` added to every row.
    AddBias { x: Var, bias: ParamId },
    /// `y = a + b`, element by element.
    Add { a: Var, b: Var },
    /// `y = max(x, 0)`.
    Relu { x: Var },
    /// `y = f(x)`, element by element.
    Activation { x: Var, f: tensor::Activation },
    /// `y = weight·x̂ + bias` per channel, `x̂` the input normalised with the batch's statistics
    /// (`batch`) or with fixed ones, then `max(y, 0)` when `relu`. `aux` holds each channel's
    /// mean, then its `1/σ`, then (with `batch`) the number of values per channel over the
    /// whole batch: the backward pass recomputes `x̂` from `x`.
    BatchNorm { x: Var, weight: ParamId, bias: ParamId, channels: usize, batch: bool, relu: bool },
    /// `y` = the mean of each window.
    AvgPool2d { x: Var, shape: tensor::Pool2dShape },
    /// `y[n, c]` = the mean of channel `c` of sample `n`.
    GlobalAvgPool { x: Var },
    /// `y = conv2d(x, W) (+ b)`, `x` and `y` holding each sample's `[C, H, W]` values in a row.
    /// When `sparse`, `x` is data and only its nonzero values are visited.
    Conv2d { x: Var, weight: ParamId, bias: Option<ParamId>, shape: tensor::Conv2dShape, sparse: bool },
    /// `y` = the maximum of each window; the positions of the maxima are in `indices`.
    MaxPool2d { x: Var },
    /// `y = x · mask`, the mask (0, or `1 / (1 - p)`) kept in `aux`.
    Dropout { x: Var },
    /// `Σ x·w` over every value, for weights `w` that are data: a 1x1 value. `aux` holds `w`.
    WeightedSum { x: Var },
    /// The mean over rows of `-log softmax(logits)[label]`: a 1x1 value. The softmax is kept in
    /// the node's `aux` buffer for the backward pass; the labels are in the tape's list.
    CrossEntropy { logits: Var, labels: Range<usize>, smoothing: f32 },
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) op: Op,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Never changed once recorded: backward rules read their inputs' values (batch
    /// normalisation recomputes `x̂` from its input's).
    pub(crate) value: tensor::AlignedVec,
    pub(crate) grad: tensor::AlignedVec,
    pub(crate) aux: Vec<f32>,
    pub(crate) indices: Vec<u32>,
    pub(crate) sparse: tensor::SparseRows,
    /// Whether a gradient must flow into this node (it depends on a parameter).
    pub(crate) needs_grad: bool,
    /// Whether the backward pass under way has written `grad` yet.
    pub(crate) grad_written: bool,
}

impl Node {
    pub(crate) fn value(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.rows, self.cols), &self.value).expect("node buffer matches its shape")
    }

    pub(crate) fn value_mut(&mut self) -> ArrayViewMut2<'_, f32> {
        ArrayViewMut2::from_shape((self.rows, self.cols), &mut self.value).expect("node buffer matches its shape")
    }

    pub(crate) fn grad(&self) -> ArrayView2<'_, f32> {
        ArrayView2::from_shape((self.rows, self.cols), &self.grad).expect("node buffer matches its shape")
    }

    /// The gradient buffer to write and the `beta` to write it with: 0 the first time in a
    /// backward pass (overwrite), 1 after (accumulate).
    pub(crate) fn grad_to_write(&mut self) -> (ArrayViewMut2<'_, f32>, f32) {
        let beta = crate::grads::write_beta(&mut self.grad_written);
        let view = ArrayViewMut2::from_shape((self.rows, self.cols), &mut self.grad).expect("node buffer matches");
        (view, beta)
    }
}

/// A record of operations for reverse-mode differentiation.
///
/// Each op computes its value at once and appends a node; [`Tape::backward`] then walks the
/// nodes in reverse and writes the gradient of every parameter that took part into a
/// [`Grads`](crate::Grads). Parameters are read from a [`Params`] set by id, never copied onto
/// the tape.
///
/// ```
/// use ndarray::array;
/// use nn::{Grads, Params, Tape};
///
/// // loss = cross_entropy(x·Wᵀ, label 0) for one sample with two features and two classes.
/// let mut params = Params::new();
/// let w = params.add("w", &[2, 2], vec![1.0, 0.0, 0.0, 1.0]);
/// let mut tape = Tape::new();
/// let x = tape.input(array![[2.0f32, 1.0]].view());
/// let logits = tape.matmul_t(&params, x, w);
/// let loss = tape.cross_entropy(logits, &[0]);
/// let mut grads = Grads::new(&params);
/// tape.backward(loss, &params, &mut grads);
/// // dlogits = softmax - onehot = [p0 - 1, p1]; dW = dlogitsᵀ·x.
/// let p1 = 1.0 / (1.0 + 1f32.exp());
/// let g = grads.get(w).unwrap();
/// assert!((g[0] + 2.0 * p1).abs() < 1e-6 && (g[3] - p1).abs() < 1e-6);
/// ```
#[derive(Debug, Default)]
pub struct Tape {
    pub(crate) nodes: Vec<Node>,
    pub(crate) len: usize,
    pub(crate) labels: Vec<usize>,
    /// Scratch of convolutions, reused.
    pub(crate) conv_scratch: tensor::ConvScratch,
    /// Buffers of sparse convolutions, reused.
    pub(crate) sparse_conv: tensor::SparseConvScratch,
    /// Set by [`Tape::for_inference`]: no gradient buffers, and what only the backward pass
    /// reads (unfolded patches, the positions of maxima) in one scratch shared by every op.
    inference: bool,
    shared_indices: Vec<u32>,
    generation: u64,
    /// The batch this tape records a part of, and which part, for statistics over the whole.
    pub(crate) batch: Option<(std::sync::Arc<crate::BatchSync>, usize)>,
    /// Per-channel sums of batch normalisations, reused.
    pub(crate) norm_sums: Vec<f64>,
    /// Per-channel factors of batch normalisations' backward passes, reused.
    pub(crate) norm_factors: Vec<f32>,
    /// Each batch normalisation's batch mean and unbiased variance, in recording order.
    batch_statistics: Vec<f32>,
    /// The channels of each entry of `batch_statistics`, and the values per channel.
    batch_statistics_channels: Vec<(usize, usize)>,
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty tape for inference: ops compute their values as on any tape, but no gradient
    /// buffers are made and what only a backward pass reads (a convolution's unfolded patches,
    /// pooling's maxima) goes to one scratch shared by every op, so a model's
    /// [`forward`](crate::Model::forward) on it costs about what a forward pass costs. A
    /// backward pass on it is refused. Cleared and reused from batch to batch, it allocates
    /// nothing once warm. [`Model::logits_with`](crate::Model::logits_with) runs models on one.
    ///
    /// ```
    /// use ndarray::array;
    /// use nn::{Params, Tape};
    ///
    /// let mut params = Params::new();
    /// let w = params.add("w", &[1, 2], vec![1.0, -1.0]);
    /// let mut tape = Tape::for_inference();
    /// for x in [array![[3.0f32, 1.0]], array![[1.0, 3.0]]] {
    ///     tape.clear();
    ///     let x = tape.input(x.view());
    ///     let y = tape.matmul_t(&params, x, w);
    ///     let y = tape.relu(y);
    ///     println!("{}", tape.value(y));
    /// }
    /// ```
    pub fn for_inference() -> Self {
        Self { inference: true, ..Self::default() }
    }

    /// Whether this tape was made by [`Tape::for_inference`].
    pub fn is_for_inference(&self) -> bool {
        self.inference
    }

    /// Forgets every recorded op, keeping the buffers for the next step. Vars from before the
    /// clear are no longer valid on this tape.
    pub fn clear(&mut self) {
        self.len = 0;
        self.labels.clear();
        self.batch_statistics.clear();
        self.batch_statistics_channels.clear();
        self.generation += 1;
    }

    /// The number of ops recorded since the last clear.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been recorded since the last clear.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records data (one sample per row); no gradient is computed for it.
    pub fn input(&mut self, x: ArrayView2<f32>) -> Var {
        let (rows, cols) = x.dim();
        self.input_with(rows, cols, |dst| {
            let mut dst = ArrayViewMut2::from_shape((rows, cols), dst).expect("sized to fit");
            dst.assign(&x);
        })
    }

    /// Records `rows x cols` data that `fill` writes, row-major, straight into the tape's own
    /// buffer: a batch converted from its stored form lands on the tape without a copy.
    pub fn input_with(&mut self, rows: usize, cols: usize, fill: impl FnOnce(&mut [f32])) -> Var {
        let var = self.push(Op::Input, rows, cols, false);
        fill(&mut self.nodes[var.index].value);
        var
    }

    /// Records `x·Wᵀ + b` for a weight `W` of shape `[out, in]` and a bias `b` of `[out]`:
    /// PyTorch's `nn.Linear`.
    ///
    /// # Panics
    /// If `x` is not `in` wide, or the parameters do not have those shapes.
    #[track_caller]
    pub fn linear(&mut self, params: &Params, x: Var, weight: ParamId, bias: ParamId) -> Var {
        self.linear_op(params, x, weight, Some(bias), false)
    }

    /// [`Tape::linear`] for data that is mostly zeros, such as pixels: the product and the
    /// weight gradient only touch the weights of `x`'s nonzero entries. The same sums as
    /// [`Tape::linear`], without the terms that are exactly zero. It is the fast path of a
    /// model's first layer (MNIST's pixels are 81% zeros), which [`crate::Sequential`] takes
    /// for a linear layer that reads the data.
    ///
    /// ```
    /// use ndarray::array;
    /// use rand::SeedableRng;
    /// let mut params = nn::Params::new();
    /// let fc = nn::Linear::new(&mut params, "fc1", 4, 3, &mut rand_chacha::ChaCha8Rng::seed_from_u64(0));
    /// let x = array![[0.0f32, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.25]];
    /// let mut tape = nn::Tape::new();
    /// let input = tape.input(x.view());
    /// let (dense, sparse) =
    ///     (tape.linear(&params, input, fc.weight, fc.bias), tape.sparse_linear(&params, input, fc.weight, fc.bias));
    /// let gap = (&tape.value(dense) - &tape.value(sparse)).mapv(f32::abs).sum();
    /// assert!(gap < 1e-6, "the same sums, in another order");
    /// ```
    ///
    /// # Panics
    /// As [`Tape::linear`]; also if `x` is not a [`Tape::input`] (no gradient flows into data)
    /// or `W` was not made by [`Linear`](crate::Linear), which stores it for this.
    #[track_caller]
    pub fn sparse_linear(&mut self, params: &Params, x: Var, weight: ParamId, bias: ParamId) -> Var {
        self.linear_op(params, x, weight, Some(bias), true)
    }

    /// Records `x·Wᵀ` for a weight `W` of shape `[out, in]` (a linear layer without bias).
    ///
    /// # Panics
    /// If `x` is not `in` wide or `W` is not a matrix.
    #[track_caller]
    pub fn matmul_t(&mut self, params: &Params, x: Var, weight: ParamId) -> Var {
        self.linear_op(params, x, weight, None, false)
    }

    #[track_caller]
    fn linear_op(&mut self, params: &Params, x: Var, weight: ParamId, bias: Option<ParamId>, sparse: bool) -> Var {
        self.check(x);
        let w = params.matrix(weight);
        let (out, inp) = w.dim();
        let rows = self.nodes[x.index].rows;
        assert_eq!(
            self.nodes[x.index].cols,
            inp,
            "{}: input is {} wide",
            params.get(weight).name(),
            self.nodes[x.index].cols
        );
        // Only data may take the sparse path: its gradient is never needed.
        assert!(
            !sparse || matches!(self.nodes[x.index].op, Op::Input),
            "{}: the sparse path reads data, recorded by Tape::input",
            params.get(weight).name()
        );
        let y = self.push(Op::Linear { x, weight, bias, sparse }, rows, out, true);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        let y_view = ArrayViewMut2::from_shape((rows, out), &mut node.value[..]).expect("node buffer matches");
        let bias = bias.map(|b| params.vector(b));
        linear_forward(before[x.index].value(), w, bias, sparse.then_some(&mut node.sparse), y_view);
        y
    }

    /// Records `x + b` with `b` added to every row.
    ///
    /// # Panics
    /// If `b` is not a vector as long as `x` is wide.
    #[track_caller]
    pub fn add_bias(&mut self, params: &Params, x: Var, bias: ParamId) -> Var {
        self.check(x);
        let (rows, cols) = (self.nodes[x.index].rows, self.nodes[x.index].cols);
        let y = self.push(Op::AddBias { x, bias }, rows, cols, true);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        rest[0].value.copy_from_slice(&before[x.index].value);
        tensor::add_bias(rest[0].value_mut(), params.vector(bias));
        y
    }

    /// Records a 2-D convolution, PyTorch's `nn.Conv2d`: `x` holds each sample's `[C, H, W]`
    /// values in a row, `W` is `[out, C, k, k]` and `b` is `[out]`; each output row holds the
    /// sample's `[out, H', W']` values.
    ///
    /// # Panics
    /// If `x` is not `C·H·W` wide, or the parameters do not have those shapes.
    #[track_caller]
    pub fn conv2d(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: Option<ParamId>,
        shape: tensor::Conv2dShape,
    ) -> Var {
        self.conv2d_op(params, x, weight, bias, shape, false)
    }

    /// [`Tape::conv2d`] for data that is mostly zeros, such as pixels: only the nonzero values
    /// are visited, forward and for the weight gradient. The same sums in another order. It is
    /// the fast path of a model's first convolution, which [`crate::Sequential`] takes for a
    /// convolution that reads the data.
    ///
    /// ```
    /// use ndarray::Array2;
    /// let shape = tensor::Conv2dShape {
    ///     in_channels: 1, height: 6, width: 6, out_channels: 2, kernel: 3, stride: 1, padding: 1,
    /// };
    /// let mut params = nn::Params::new();
    /// let weights = (0..18).map(|i| (i as f32 - 9.0) / 10.0).collect();
    /// let w = params.add("conv1.weight", &[2, 1, 3, 3], weights);
    /// let b = params.add("conv1.bias", &[2], vec![0.1, -0.2]);
    /// // Two 6x6 images, mostly zeros, as digits are.
    /// let x = Array2::from_shape_fn((2, 36), |(n, i)| if i % 7 == n { 0.5 } else { 0.0 });
    /// let mut tape = nn::Tape::new();
    /// let input = tape.input(x.view());
    /// let dense = tape.conv2d(&params, input, w, Some(b), shape);
    /// let sparse = tape.sparse_conv2d(&params, input, w, Some(b), shape);
    /// let gap = (&tape.value(dense) - &tape.value(sparse)).mapv(f32::abs).sum();
    /// assert!(gap < 1e-5, "the same sums, in another order");
    /// ```
    ///
    /// # Panics
    /// As [`Tape::conv2d`]; also if `x` is not a [`Tape::input`] (no gradient flows into data).
    #[track_caller]
    pub fn sparse_conv2d(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: Option<ParamId>,
        shape: tensor::Conv2dShape,
    ) -> Var {
        self.conv2d_op(params, x, weight, bias, shape, true)
    }

    #[track_caller]
    fn conv2d_op(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: Option<ParamId>,
        shape: tensor::Conv2dShape,
        sparse: bool,
    ) -> Var {
        self.check(x);
        assert!(
            !sparse || matches!(self.nodes[x.index].op, Op::Input),
            "{}: the sparse path reads data, recorded by Tape::input",
            params.get(weight).name()
        );
        let (k, out) = (shape.kernel, shape.out_channels);
        let name = params.get(weight).name();
        assert_eq!(params.get(weight).shape(), [out, shape.in_channels, k, k], "{name}: weight shape for {shape:?}");
        if let Some(b) = bias {
            assert_eq!(params.get(b).shape(), [out], "{name}: bias shape");
        }
        let rows = self.nodes[x.index].rows;
        let y = self.push(Op::Conv2d { x, weight, bias, shape, sparse }, rows, shape.out_len(), true);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        let y_view = ArrayViewMut2::from_shape((rows, shape.out_len()), &mut node.value[..]).expect("sized by push");
        let (x, w, bias) = (before[x.index].value(), params.matrix(weight), bias.map(|b| params.vector(b)));
        if sparse {
            tensor::sparse_conv2d(x, w, bias, &shape, &mut self.sparse_conv, y_view);
        } else if self.inference {
            // Nothing is kept for a backward pass: a few samples' patches at a time.
            tensor::conv2d_forward(x, w, bias, &shape, &mut self.conv_scratch, y_view);
        } else {
            // What the backward pass needs besides x (unfolded patches, padded inputs) stays
            // in the node.
            tensor::conv2d(x, w, bias, &shape, &mut node.aux, &mut self.conv_scratch, y_view);
        }
        y
    }

    /// Records 2-D max pooling, PyTorch's `F.max_pool2d(x, kernel, stride)`, over rows of
    /// `[C, H, W]` values.
    ///
    /// # Panics
    /// If `x` is not `C·H·W` wide.
    #[track_caller]
    pub fn max_pool2d(&mut self, x: Var, shape: tensor::Pool2dShape) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        let (rows, needs_grad) = (src.rows, src.needs_grad);
        let y = self.push(Op::MaxPool2d { x }, rows, shape.out_len(), needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        let y_view = ArrayViewMut2::from_shape((rows, shape.out_len()), &mut node.value[..]).expect("sized by push");
        let indices = if self.inference { &mut self.shared_indices } else { &mut node.indices };
        tensor::max_pool2d(before[x.index].value(), &shape, y_view, indices);
        y
    }

    /// Records inverted dropout: each value is zeroed with probability `p` and the others are
    /// scaled by `1 / (1 - p)`, so that the expected value is unchanged (PyTorch's
    /// `nn.Dropout` in training mode). The mask is drawn from `rng`, so that a run is
    /// reproducible from its seed. Evaluation skips dropout altogether.
    ///
    /// # Panics
    /// If `p` is not in `[0, 1)`.
    #[track_caller]
    pub fn dropout(&mut self, x: Var, p: f32, rng: &mut dyn rand::RngCore) -> Var {
        self.check(x);
        assert!((0.0..1.0).contains(&p), "dropout probability {p} is not in [0, 1)");
        let src = &self.nodes[x.index];
        let (rows, cols, needs_grad) = (src.rows, src.cols, src.needs_grad);
        let y = self.push(Op::Dropout { x }, rows, cols, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        let keep = 1.0 / (1.0 - p);
        // A value is dropped when a uniform draw in [0, 1) falls below p.
        let threshold = (f64::from(p) * 4_294_967_296.0) as u64;
        node.aux.resize(rows * cols, 0.0);
        for ((m, v), &xv) in node.aux.iter_mut().zip(node.value.iter_mut()).zip(&before[x.index].value) {
            *m = if u64::from(rng.next_u32()) < threshold { 0.0 } else { keep };
            *v = xv * *m;
        }
        y
    }

    /// Records `a + b`, element by element: a residual (skip) connection's sum. `a` and `b`
    /// may be the same value.
    ///
    /// # Panics
    /// If `a` and `b` do not have the same shape.
    #[track_caller]
    pub fn add(&mut self, a: Var, b: Var) -> Var {
        self.check(a);
        self.check(b);
        let (na, nb) = (&self.nodes[a.index], &self.nodes[b.index]);
        assert_eq!(
            (na.rows, na.cols),
            (nb.rows, nb.cols),
            "add: a is {}x{}, b is {}x{}",
            na.rows,
            na.cols,
            nb.rows,
            nb.cols
        );
        let (rows, cols, needs_grad) = (na.rows, na.cols, na.needs_grad || nb.needs_grad);
        let y = self.push(Op::Add { a, b }, rows, cols, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        for ((out, &u), &v) in rest[0].value.iter_mut().zip(&before[a.index].value).zip(&before[b.index].value) {
            *out = u + v;
        }
        y
    }

    /// Records `max(x, 0)`.
    #[track_caller]
    pub fn relu(&mut self, x: Var) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        let (rows, cols, needs_grad) = (src.rows, src.cols, src.needs_grad);
        let y = self.push(Op::Relu { x }, rows, cols, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        tensor::relu_into(&before[x.index].value, &mut rest[0].value);
        y
    }

    /// Makes this tape record part `part` of a batch whose parts meet at `sync`: batch
    /// normalisations then use the whole batch's statistics. `None` makes it a whole batch
    /// again.
    pub fn share_batch(&mut self, batch: Option<(std::sync::Arc<crate::BatchSync>, usize)>) {
        self.batch = batch;
    }

    /// Records batch normalisation in training mode, PyTorch's `BatchNorm1d` or `BatchNorm2d`:
    /// each of the `C` channels (`C = weight`'s length; a row holds `C` planes of equal size) is
    /// normalised with the mean and biased variance of its values over the batch (the whole
    /// batch, with [`Tape::share_batch`]), then scaled by `weight` and shifted by `bias`. The
    /// batch's mean and unbiased variance are kept for the running statistics
    /// ([`Tape::batch_statistics`]).
    ///
    /// # Panics
    /// If `x`'s width is not a multiple of `C`, or `bias` is not as long as `weight`.
    #[track_caller]
    pub fn batch_norm(&mut self, params: &Params, x: Var, weight: ParamId, bias: ParamId, eps: f32) -> Var {
        self.record_batch_norm(params, x, weight, bias, eps, false)
    }

    /// Records `relu(batch_norm(x))` as one operation: the values and gradients of
    /// [`Tape::batch_norm`] followed by [`Tape::relu`], with two fewer passes over memory and
    /// without the normalisation's own output.
    ///
    /// # Panics
    /// As [`Tape::batch_norm`].
    #[track_caller]
    pub fn batch_norm_relu(&mut self, params: &Params, x: Var, weight: ParamId, bias: ParamId, eps: f32) -> Var {
        self.record_batch_norm(params, x, weight, bias, eps, true)
    }

    /// [`Tape::batch_norm`], then a ReLU in the same pass when `relu`.
    #[track_caller]
    fn record_batch_norm(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: ParamId,
        eps: f32,
        relu: bool,
    ) -> Var {
        self.check(x);
        let channels = params.vector(weight).len();
        let src = &self.nodes[x.index];
        let (rows, cols) = (src.rows, src.cols);
        let mut sums = std::mem::take(&mut self.norm_sums);
        sums.clear();
        sums.resize(2 * channels + 1, 0.0);
        tensor::channel_sums(src.value(), channels, &mut sums[..2 * channels]);
        sums[2 * channels] = (rows * cols / channels) as f64;
        if let Some((sync, part)) = &self.batch {
            sync.all_reduce(*part, &mut sums);
        }
        let count = sums[2 * channels] as usize;
        let y = self.push(Op::BatchNorm { x, weight, bias, channels, batch: true, relu }, rows, cols, true);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        node.aux.resize(2 * channels + 1, 0.0);
        let (means, per_channel) = node.aux.split_at_mut(channels);
        // The batch's means, then its unbiased variances (n / (n - 1), as PyTorch's running
        // variance takes them).
        for (c, (m, inv_std)) in means.iter_mut().zip(&mut per_channel[..channels]).enumerate() {
            let (mean, variance) = tensor::mean_and_variance(&sums[..2 * channels], channels, count, c);
            *m = mean as f32;
            self.batch_statistics.push(*m);
            *inv_std = (1.0 / (variance + f64::from(eps)).sqrt()) as f32;
        }
        for c in 0..channels {
            let (_, variance) = tensor::mean_and_variance(&sums[..2 * channels], channels, count, c);
            let unbiased = if count > 1 { variance * count as f64 / (count - 1) as f64 } else { variance };
            self.batch_statistics.push(unbiased as f32);
        }
        self.batch_statistics_channels.push((channels, count));
        per_channel[channels] = count as f32;
        let (w, b) = (params.vector(weight), params.vector(bias));
        let normalization = tensor::Normalization {
            mean: means,
            inv_std: &per_channel[..channels],
            weight: w.as_slice().expect("contiguous"),
            bias: b.as_slice().expect("contiguous"),
            relu,
        };
        tensor::batch_norm_normalize(
            before[x.index].value(),
            &normalization,
            ArrayViewMut2::from_shape((rows, cols), &mut node.value[..]).expect("sized by push"),
        );
        self.norm_sums = sums;
        y
    }

    /// Records batch normalisation in evaluation mode: each channel normalised with fixed
    /// statistics (the running ones, `running_mean` and `running_var`), then scaled and
    /// shifted as by [`Tape::batch_norm`]. Nothing is kept for the running statistics.
    ///
    /// # Panics
    /// As [`Tape::batch_norm`]; also if the statistics are not one per channel.
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_fixed(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: ParamId,
        running_mean: &[f32],
        running_var: &[f32],
        eps: f32,
    ) -> Var {
        self.record_batch_norm_fixed(params, x, weight, bias, (running_mean, running_var), eps, false)
    }

    /// Records `relu(batch_norm_fixed(x))` as one operation, as [`Tape::batch_norm_relu`] does
    /// for [`Tape::batch_norm`].
    ///
    /// # Panics
    /// As [`Tape::batch_norm_fixed`].
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn batch_norm_fixed_relu(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: ParamId,
        running_mean: &[f32],
        running_var: &[f32],
        eps: f32,
    ) -> Var {
        self.record_batch_norm_fixed(params, x, weight, bias, (running_mean, running_var), eps, true)
    }

    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    /// [`Tape::batch_norm_fixed`], then a ReLU in the same pass when `relu`.
    fn record_batch_norm_fixed(
        &mut self,
        params: &Params,
        x: Var,
        weight: ParamId,
        bias: ParamId,
        (running_mean, running_var): (&[f32], &[f32]),
        eps: f32,
        relu: bool,
    ) -> Var {
        self.check(x);
        let channels = params.vector(weight).len();
        assert!(running_mean.len() == channels && running_var.len() == channels, "batch norm: statistics per channel");
        let src = &self.nodes[x.index];
        let (rows, cols) = (src.rows, src.cols);
        let y = self.push(Op::BatchNorm { x, weight, bias, channels, batch: false, relu }, rows, cols, true);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        node.aux.clear();
        node.aux.extend_from_slice(running_mean);
        node.aux.extend(running_var.iter().map(|&v| (1.0 / (f64::from(v) + f64::from(eps)).sqrt()) as f32));
        let (mean, inv_std) = node.aux.split_at(channels);
        let (w, b) = (params.vector(weight), params.vector(bias));
        let normalization = tensor::Normalization {
            mean,
            inv_std,
            weight: w.as_slice().expect("contiguous"),
            bias: b.as_slice().expect("contiguous"),
            relu,
        };
        tensor::batch_norm_normalize(
            before[x.index].value(),
            &normalization,
            ArrayViewMut2::from_shape((rows, cols), &mut node.value[..]).expect("sized by push"),
        );
        y
    }

    /// The mean and unbiased variance of each channel over the batch, for every batch
    /// normalisation recorded in training mode since the last clear, in recording order: what
    /// a model takes into its running statistics after a step.
    pub fn batch_statistics(&self) -> impl Iterator<Item = BatchStatistics<'_>> {
        let mut start = 0;
        self.batch_statistics_channels.iter().map(move |&(c, count)| {
            let (mean, variance) = self.batch_statistics[start..start + 2 * c].split_at(c);
            start += 2 * c;
            BatchStatistics { mean, variance, count }
        })
    }

    /// Records `f(x)`, element by element: `tanh`, the sigmoid, GELU or leaky ReLU.
    ///
    /// ```
    /// let mut tape = nn::Tape::new();
    /// let x = tape.input(ndarray::array![[-1.0f32, 0.0, 2.0]].view());
    /// let y = tape.activation(x, tensor::Activation::LeakyRelu(0.1));
    /// assert_eq!(tape.value(y), ndarray::array![[-0.1f32, 0.0, 2.0]]);
    /// ```
    #[track_caller]
    pub fn activation(&mut self, x: Var, f: tensor::Activation) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        let (rows, cols, needs_grad) = (src.rows, src.cols, src.needs_grad);
        let y = self.push(Op::Activation { x, f }, rows, cols, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        tensor::activation(f, &before[x.index].value, &mut rest[0].value);
        y
    }

    /// Records 2-D average pooling, PyTorch's `F.avg_pool2d(x, kernel, stride)`, over rows of
    /// `[C, H, W]` values.
    ///
    /// # Panics
    /// If `x` is not `C·H·W` wide.
    #[track_caller]
    pub fn avg_pool2d(&mut self, x: Var, shape: tensor::Pool2dShape) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        let (rows, needs_grad) = (src.rows, src.needs_grad);
        let y = self.push(Op::AvgPool2d { x, shape }, rows, shape.out_len(), needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        tensor::avg_pool2d(before[x.index].value(), &shape, rest[0].value_mut());
        y
    }

    /// Records a global average pool over rows of `channels` equal planes (`[C, H, W]`
    /// values): `[N, C·H·W]` to `[N, C]`, PyTorch's `F.adaptive_avg_pool2d(x, 1).flatten(1)`.
    ///
    /// # Panics
    /// If `x`'s width is not a multiple of `channels`.
    #[track_caller]
    pub fn global_avg_pool(&mut self, x: Var, channels: usize) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        let (rows, needs_grad) = (src.rows, src.needs_grad);
        let y = self.push(Op::GlobalAvgPool { x }, rows, channels, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        tensor::global_avg_pool(before[x.index].value(), channels, rest[0].value_mut());
        y
    }

    /// Records `Σ x·weights` over every value of `x`: a 1x1 value whose gradient with respect to
    /// `x` is `weights`. PyTorch's `(x * weights).sum()`, for a loss of one's own or to pull a
    /// chosen gradient back through a model.
    ///
    /// ```
    /// let mut tape = nn::Tape::new();
    /// let x = tape.input(ndarray::array![[1.0f32, 2.0], [3.0, 4.0]].view());
    /// let s = tape.weighted_sum(x, ndarray::array![[1.0f32, 0.0], [0.5, -1.0]].view());
    /// assert_eq!(tape.value(s)[[0, 0]], 1.0 + 1.5 - 4.0);
    /// ```
    ///
    /// # Panics
    /// If `weights` does not have `x`'s shape.
    #[track_caller]
    pub fn weighted_sum(&mut self, x: Var, weights: ArrayView2<f32>) -> Var {
        self.check(x);
        let src = &self.nodes[x.index];
        assert_eq!(
            (src.rows, src.cols),
            weights.dim(),
            "weighted_sum: weights of {:?} for {}x{}",
            weights.dim(),
            src.rows,
            src.cols
        );
        let needs_grad = src.needs_grad;
        let y = self.push(Op::WeightedSum { x }, 1, 1, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        node.aux.clear();
        node.aux.extend(weights.iter());
        let sum: f64 = before[x.index].value.iter().zip(&node.aux).map(|(&v, &w)| f64::from(v) * f64::from(w)).sum();
        node.value[0] = sum as f32;
        y
    }

    /// Records the cross-entropy of `logits` (one row per sample) against `labels`, averaged
    /// over the rows: PyTorch's `nn.CrossEntropyLoss()` on logits. The result is 1x1.
    ///
    /// Log-softmax and the negative log-likelihood are fused, max-subtracted, so logits as
    /// large as ±1e4 give finite losses.
    ///
    /// # Panics
    /// If there is not one label per row, or a label is not a column of `logits`.
    #[track_caller]
    pub fn cross_entropy(&mut self, logits: Var, labels: &[usize]) -> Var {
        self.cross_entropy_smoothed(logits, labels, 0.0)
    }

    /// [`Tape::cross_entropy`] with label smoothing `eps`: the target puts `1 - eps` on the
    /// label and spreads `eps` evenly over all classes, as
    /// `F.cross_entropy(logits, y, label_smoothing=eps)`. `eps = 0` is plain cross-entropy.
    ///
    /// # Panics
    /// As [`Tape::cross_entropy`]; also if `eps` is not in `[0, 1]`.
    #[track_caller]
    pub fn cross_entropy_smoothed(&mut self, logits: Var, labels: &[usize], eps: f32) -> Var {
        assert!((0.0..=1.0).contains(&eps), "label smoothing {eps} is not in [0, 1]");
        self.check(logits);
        let src = &self.nodes[logits.index];
        let (rows, classes, needs_grad) = (src.rows, src.cols, src.needs_grad);
        assert_eq!(labels.len(), rows, "cross_entropy: {} labels for {rows} rows", labels.len());
        if let Some(bad) = labels.iter().find(|&&l| l >= classes) {
            panic!("cross_entropy: label {bad} out of range for {classes} classes");
        }
        let start = self.labels.len();
        self.labels.extend_from_slice(labels);
        let op = Op::CrossEntropy { logits, labels: start..self.labels.len(), smoothing: eps };
        let y = self.push(op, 1, 1, needs_grad);
        let (before, rest) = self.nodes.split_at_mut(y.index);
        let node = &mut rest[0];
        node.value[0] = crate::loss::softmax_cross_entropy(before[logits.index].value(), labels, eps, &mut node.aux);
        y
    }

    /// The value of `v`.
    ///
    /// # Panics
    /// If `v` is not from this tape since its last clear.
    #[track_caller]
    pub fn value(&self, v: Var) -> ArrayView2<'_, f32> {
        self.check(v);
        self.nodes[v.index].value()
    }

    /// The gradient of the last backward pass's loss with respect to `v`, if it reached `v`.
    ///
    /// # Panics
    /// If `v` is not from this tape since its last clear.
    #[track_caller]
    pub fn grad(&self, v: Var) -> Option<ArrayView2<'_, f32>> {
        self.check(v);
        let node = &self.nodes[v.index];
        (node.needs_grad && node.grad_written).then(|| node.grad())
    }

    /// Appends a node, reusing the storage of an earlier step's node in the same position.
    fn push(&mut self, op: Op, rows: usize, cols: usize, needs_grad: bool) -> Var {
        let size = rows * cols;
        if self.len == self.nodes.len() {
            self.nodes.push(Node {
                op: Op::Input,
                rows: 0,
                cols: 0,
                value: tensor::AlignedVec::default(),
                grad: tensor::AlignedVec::default(),
                aux: Vec::new(),
                indices: Vec::new(),
                sparse: tensor::SparseRows::new(),
                needs_grad: false,
                grad_written: false,
            });
        }
        let node = &mut self.nodes[self.len];
        node.op = op;
        node.rows = rows;
        node.cols = cols;
        node.value.resize(size, 0.0);
        let needs_grad = needs_grad && !self.inference;
        if needs_grad {
            node.grad.resize(size, 0.0);
        }
        node.needs_grad = needs_grad;
        node.grad_written = false;
        self.len += 1;
        Var { index: self.len - 1, generation: self.generation }
    }

    #[track_caller]
    pub(crate) fn check(&self, v: Var) {
        assert!(
            v.generation == self.generation && v.index < self.len,
            "this Var belongs to another tape or to a step before the last clear"
        );
    }
}
