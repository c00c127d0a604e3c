//! The threads that decode images and run the model: a fixed number of them, fed by a bounded
//! queue. Work whose client has gone, or whose deadline has passed, is skipped when its turn
//! comes: the request's future, dropped then, closes the channel its answer would go to.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::response::Response;
use nn::{Sequential, Tape};
use tokio::sync::oneshot;

use crate::Limits;
use crate::api::{self, Failure, Input};

/// What a worker sends back.
pub(crate) type Answer = Result<Response, Failure>;

struct Job {
    input: Input,
    answer: oneshot::Sender<Answer>,
}

/// The queue's sending end; the threads end when the last clone of it is dropped.
#[derive(Clone)]
pub(crate) struct Workers {
    queue: SyncSender<Job>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Workers")
    }
}

impl Workers {
    /// `limits.workers` threads serving `model`, and a queue of `limits.queue` places.
    ///
    /// # Panics
    /// The system cannot start a thread.
    pub(crate) fn start(model: &Arc<Sequential>, limits: Limits) -> Self {
        let (queue, jobs) = mpsc::sync_channel(limits.queue.max(1));
        let jobs = Arc::new(Mutex::new(jobs));
        for i in 0..limits.workers.max(1) {
            let (model, jobs) = (Arc::clone(model), Arc::clone(&jobs));
            std::thread::Builder::new()
                .name(format!("serve-worker-{i}"))
                .spawn(move || work(&model, &limits, &jobs))
                .expect("the system can start a thread");
        }
        Self { queue }
    }

    /// Queues `input`; the answer comes on the receiver. `None` when the queue is full.
    pub(crate) fn submit(&self, input: Input) -> Option<oneshot::Receiver<Answer>> {
        let (answer, receiver) = oneshot::channel();
        match self.queue.try_send(Job { input, answer }) {
            Ok(()) => Some(receiver),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => None,
        }
    }
}

/// One worker: takes jobs in turn until the queue is gone, with a tape of its own that its
/// predictions reuse.
fn work(model: &Sequential, limits: &Limits, jobs: &Mutex<Receiver<Job>>) {
    let mut tape = Tape::for_inference();
    loop {
        // The lock is held only to take a job, not to run it.
        let job = match jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if job.answer.is_closed() {
            continue;
        }
        // A bug must not take a worker with it: the request gets a 500, and the worker goes on
        // with a fresh tape.
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| api::answer(model, &mut tape, limits, job.input)))
            .unwrap_or_else(|_| {
                tape = Tape::for_inference();
                Err(api::error(StatusCode::INTERNAL_SERVER_ERROR, "the prediction failed".into()))
            });
        let _ = job.answer.send(answer);
    }
}
