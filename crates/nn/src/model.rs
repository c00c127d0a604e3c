//! What every model offers: a forward pass on a tape, which training records and inference
//! runs on a tape made for it, and its parameters as a `state_dict`.

use ndarray::{Array2, ArrayView2};

use crate::{NnError, Params, StateDict, Tape, Var};

/// A classifier over rows of `input_width` values, with trainable [`Params`].
///
/// The training engine (`train`) and the front ends work through this trait, so any model that
/// implements it can be trained, evaluated, saved and served.
pub trait Model: Clone + Send + Sync + std::fmt::Debug {
    /// The parameters, in `state_dict` order.
    fn params(&self) -> &Params;

    /// The parameters, for an optimizer to change.
    fn params_mut(&mut self) -> &mut Params;

    /// Values per sample (784 for MNIST's pixels).
    fn input_width(&self) -> usize;

    /// The number of classes: the width of the logits.
    fn classes(&self) -> usize;

    /// A short description of the architecture for people, e.g. `784-128-64-32-10`.
    fn describe(&self) -> String;

    /// Records the forward pass on `tape` and returns the logits, as at evaluation: layers
    /// that only act while training (dropout) pass their input through.
    fn forward(&self, tape: &mut Tape, x: Var) -> Var;

    /// Records the forward pass in training mode, drawing whatever is random (dropout's
    /// masks) from `rng`. For a model without such layers this is [`Model::forward`].
    fn forward_train(&self, tape: &mut Tape, x: Var, rng: &mut dyn rand::RngCore) -> Var {
        let _ = rng;
        self.forward(tape, x)
    }

    /// Whether the forward pass in training mode couples the samples of a batch, as batch
    /// normalisation does: then a batch split into parts must have them meet
    /// ([`Tape::share_batch`]), each part on a thread of its own. `false` unless overridden.
    fn normalizes_over_batch(&self) -> bool {
        false
    }

    /// Takes what a training forward pass recorded on `tape` of the batch's statistics
    /// ([`Tape::batch_statistics`]) into the model's running statistics, as PyTorch's batch
    /// normalisation does during its forward pass. The training engine calls it after each
    /// step; a model without running statistics has nothing to do (the default).
    fn track_running_statistics(&mut self, tape: &Tape) {
        let _ = tape;
    }

    /// Takes the batch statistics on `tape` into the running statistics with `weight` in
    /// place of each layer's momentum: `running = (1 - weight)·running + weight·batch`. With
    /// the batch's share of the samples taken in so far (1 for the first batch), the running
    /// statistics become the average over the batches; re-estimating them so over clean
    /// training images after training is "precise batch normalisation" (Wu and Johnson,
    /// 2021). Nothing to do by default.
    fn average_running_statistics(&mut self, tape: &Tape, weight: f32) {
        let _ = (tape, weight);
    }

    /// The logits for `x` (one sample per row): [`Model::forward`] on `tape`, cleared first.
    /// With a tape made by [`Tape::for_inference`] and kept from call to call, evaluating
    /// batch after batch costs a forward pass and allocates nothing once warm.
    fn logits_with<'t>(&self, x: ArrayView2<f32>, tape: &'t mut Tape) -> ArrayView2<'t, f32> {
        tape.clear();
        let x = tape.input(x);
        let logits = self.forward(tape, x);
        tape.value(logits)
    }

    /// The predicted class of each row of `x` and every class's probability, from one forward
    /// pass on `tape` (see [`Model::logits_with`]).
    fn classify_with(&self, x: ArrayView2<f32>, tape: &mut Tape) -> (Vec<usize>, Array2<f32>) {
        let logits = self.logits_with(x, tape);
        let mut probs = Array2::zeros(logits.dim());
        tensor::softmax_rows(logits, probs.view_mut());
        (tensor::argmax_rows(logits), probs)
    }

    /// The parameters as named row-major tensors, with the metadata that describes the
    /// architecture, so that [`Model::from_state_dict`] can rebuild the model.
    fn state_dict(&self) -> StateDict;

    /// Rebuilds a model from [`Model::state_dict`]'s output, strictly: every parameter present
    /// with its shape, nothing else.
    ///
    /// # Errors
    /// Metadata that does not describe a model of this kind, or a missing, unexpected or
    /// misshapen tensor.
    fn from_state_dict(state: &StateDict) -> Result<Self, NnError>
    where
        Self: Sized;

    /// The logits for `x`, owned.
    fn logits(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.logits_with(x, &mut Tape::for_inference()).to_owned()
    }

    /// Each class's probability for each row of `x`: the softmax of the logits.
    fn probabilities(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let logits = self.logits(x);
        let mut probs = Array2::zeros(logits.dim());
        tensor::softmax_rows(logits.view(), probs.view_mut());
        probs
    }

    /// The predicted class of each row of `x`: the index of its largest logit.
    fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        tensor::argmax_rows(self.logits_with(x, &mut Tape::for_inference()))
    }

    /// The predicted class of each row of `x` and every class's probability, from one pass.
    fn classify(&self, x: ArrayView2<f32>) -> (Vec<usize>, Array2<f32>) {
        self.classify_with(x, &mut Tape::for_inference())
    }
}
