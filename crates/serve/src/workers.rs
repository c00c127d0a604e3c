//! The threads that decode images and run the model: a fixed number of them, fed by a bounded
//! queue. Work whose client has gone, or whose deadline has passed, is skipped when its turn
//! comes: the request's future, dropped then, closes the channel its answer would go to.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use axum::response::Response;
use ndarray::{Array2, ArrayView2};
use nn::{Model, Tape};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::Limits;
use crate::api::{self, Failure, Input};

/// What the workers need of a model: its classification of a batch, on a tape of theirs. Any
/// [`Model`] is one, so that the server holds models of every type behind one pointer.
pub(crate) trait Classify: Send + Sync {
    fn classify_with(&self, x: ArrayView2<f32>, tape: &mut Tape) -> (Vec<usize>, Array2<f32>);
}

impl<M: Model> Classify for M {
    fn classify_with(&self, x: ArrayView2<f32>, tape: &mut Tape) -> (Vec<usize>, Array2<f32>) {
        Model::classify_with(self, x, tape)
    }
}

/// What a worker sends back.
pub(crate) type Answer = Result<Response, Failure>;

struct Job {
    input: Input,
    answer: oneshot::Sender<Answer>,
    /// The body's share of the bytes held at once, given back when the job is done.
    _held: Option<OwnedSemaphorePermit>,
}

/// The queue's sending end; the threads end when the last clone of it is dropped.
#[derive(Clone)]
pub(crate) struct Workers {
    queue: SyncSender<Job>,
    load: Arc<Load>,
    workers: usize,
    /// The most work the queue takes on: half the request timeout, in microseconds.
    budget_micros: u64,
}

/// What the queue's sending end knows of the load: how many clients wait for a job, and how
/// long a job has taken of late.
#[derive(Debug, Default)]
struct Load {
    /// Jobs queued or running whose client still waits for the answer: a job whose client has
    /// gone stops counting at once, though it keeps its place until a worker skips it.
    waiting: AtomicUsize,
    /// A moving average of a job's time, in microseconds (weight 1/8 to the newest); 0 until
    /// the first job has been timed.
    job_micros: AtomicU64,
}

/// Why a prediction was not queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Busy {
    /// The queue holds its most.
    Full,
    /// What waits would take the workers longer than the budget, in seconds.
    Slow(f64),
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
    pub(crate) fn start(model: &Arc<dyn Classify>, limits: Limits) -> Self {
        let (queue, jobs) = mpsc::sync_channel(limits.queue.max(1));
        let (jobs, load, workers) = (Arc::new(Mutex::new(jobs)), Arc::new(Load::default()), limits.workers.max(1));
        for i in 0..workers {
            let (model, jobs, load) = (Arc::clone(model), Arc::clone(&jobs), Arc::clone(&load));
            std::thread::Builder::new()
                .name(format!("serve-worker-{i}"))
                .spawn(move || work(model.as_ref(), &limits, &jobs, &load))
                .expect("the system can start a thread");
        }
        let budget_micros = u64::try_from(limits.timeout.as_micros() / 2).unwrap_or(u64::MAX);
        Self { queue, load, workers, budget_micros }
    }

    /// Queues `input`; the answer comes on the receiver, and the job counts as waited for while
    /// the [`Waiter`] lives. Refused when the queue is full, or when every worker is busy and
    /// what already waits or runs for clients still there would keep them busy for more than
    /// half the request timeout, at the recent time per prediction: most of what is taken on
    /// is answered within its deadline, and what cannot be is told so at once.
    pub(crate) fn submit(
        &self,
        input: Input,
        held: Option<OwnedSemaphorePermit>,
    ) -> Result<(oneshot::Receiver<Answer>, Waiter), Busy> {
        // With fewer clients waiting than workers, a job is always taken: little waits ahead
        // of it (at most jobs whose clients have gone, skipped or finishing), and only jobs
        // that run keep the time per prediction up to date (one costly job must not lock
        // every later one out).
        let waiting = self.load.waiting.load(Ordering::Relaxed) as u64;
        let wait = (waiting + 1) * self.load.job_micros.load(Ordering::Relaxed) / self.workers as u64;
        if waiting >= self.workers as u64 && wait > self.budget_micros {
            return Err(Busy::Slow(wait as f64 / 1e6));
        }
        let (answer, receiver) = oneshot::channel();
        let waiter = Waiter::new(&self.load);
        match self.queue.try_send(Job { input, answer, _held: held }) {
            Ok(()) => Ok((receiver, waiter)),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy::Full),
        }
    }
}

/// A client waiting for its job: counted in the load until dropped, when the answer has come
/// or the request's future is dropped because its client has gone.
pub(crate) struct Waiter(Arc<Load>);

impl Waiter {
    /// One more client waiting, until the `Waiter` is dropped.
    fn new(load: &Arc<Load>) -> Self {
        load.waiting.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(load))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker: takes jobs in turn until the queue is gone, with a tape of its own that its
/// predictions reuse.
fn work(model: &dyn Classify, limits: &Limits, jobs: &Mutex<Receiver<Job>>, load: &Load) {
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
        let started = Instant::now();
        // A bug must not take a worker with it: the request gets a 500, and the worker goes on
        // with a fresh tape.
        let answer = std::panic::catch_unwind(AssertUnwindSafe(|| api::answer(model, &mut tape, limits, job.input)))
            .unwrap_or_else(|_| {
                tape = Tape::for_inference();
                Err(api::error(StatusCode::INTERNAL_SERVER_ERROR, "the prediction failed".into()))
            });
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        // The first measurement stands alone; later ones move the average by an eighth.
        let _ = load.job_micros.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
            Some(if avg == 0 { micros.max(1) } else { avg - avg / 8 + micros / 8 })
        });
        let _ = job.answer.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Receiver, Sender};
    use std::time::Duration;

    use axum::body::Bytes;

    use super::*;

    /// A model that tells `started` each time it is asked, waits for a word on `gate`, then
    /// answers class 0 for every image.
    struct Gated {
        calls: AtomicUsize,
        started: Mutex<Sender<()>>,
        gate: Mutex<Receiver<()>>,
    }

    impl Classify for Gated {
        fn classify_with(&self, x: ArrayView2<f32>, _: &mut Tape) -> (Vec<usize>, Array2<f32>) {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.started.lock().unwrap().send(()).unwrap();
            self.gate.lock().unwrap().recv().unwrap();
            (vec![0; x.nrows()], Array2::from_elem((x.nrows(), 10), 0.1))
        }
    }

    fn blank() -> Input {
        Input::Json(Bytes::from(format!("{{\"pixels\":[{}]}}", vec!["0"; 784].join(","))))
    }

    #[test]
    fn a_job_whose_client_has_gone_stops_counting_at_once_and_is_skipped_in_its_turn() {
        let ((started, has_started), (go, gate)) = (mpsc::channel(), mpsc::channel());
        let model =
            Arc::new(Gated { calls: AtomicUsize::new(0), started: Mutex::new(started), gate: Mutex::new(gate) });
        let classify: Arc<dyn Classify> = model.clone();
        let workers = Workers::start(&classify, Limits { workers: 1, queue: 4, ..Limits::default() });
        let waiting = || workers.load.waiting.load(Ordering::Relaxed);

        let (first, first_waiter) = workers.submit(blank(), None).expect("queued");
        // Bounded, so that a first job that never reaches the model fails the test.
        has_started.recv_timeout(Duration::from_secs(60)).expect("the worker runs the first job");
        // The only worker is busy: these two wait in the queue.
        let (gone, gone_waiter) = workers.submit(blank(), None).expect("queued");
        let (last, last_waiter) = workers.submit(blank(), None).expect("queued");
        assert_eq!(waiting(), 3);
        drop((gone, gone_waiter));
        assert_eq!(waiting(), 2, "the client that has gone no longer counts, though its job is queued");

        go.send(()).unwrap();
        assert!(first.blocking_recv().unwrap().is_ok(), "the first job is answered");
        drop(first_waiter);
        // The worker skips the job whose client has gone and runs the last one. A word for
        // each, so that a worker that ran both would answer rather than wait forever.
        go.send(()).unwrap();
        go.send(()).unwrap();
        assert!(last.blocking_recv().unwrap().is_ok(), "the last job is answered");
        drop(last_waiter);
        assert_eq!(model.calls.load(Ordering::SeqCst), 2, "the model ran for the two clients still there");
        assert_eq!(waiting(), 0);
    }
}
