//! The open connections, as the acceptor sees them. When every connection is taken and another
//! client is waiting, the connection that has had no request under way for longest (none being
//! handled, no answer being written) is closed, so that clients holding connections without
//! using them (idle, or sending their headers a byte at a time) cannot lock others out.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use tokio::sync::Notify;

/// `idle_since` while a request is under way.
const BUSY: u64 = u64::MAX;

/// Every open connection, by id.
#[derive(Debug)]
pub(crate) struct Open {
    connections: Mutex<HashMap<u64, Arc<Tracked>>>,
    next: AtomicU64,
    epoch: Instant,
}

/// One connection: since when it has had no request under way, and how to ask it to close.
#[derive(Debug)]
pub(crate) struct Tracked {
    /// Microseconds from the registry's epoch, or [`BUSY`].
    idle_since: AtomicU64,
    epoch: Instant,
    /// Notified when the connection should close.
    pub(crate) close: Notify,
}

/// A connection's place in the registry, given up when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    open: Arc<Open>,
    id: u64,
    pub(crate) tracked: Arc<Tracked>,
}

impl Open {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { connections: Mutex::default(), next: AtomicU64::new(0), epoch: Instant::now() })
    }

    /// Registers a connection just accepted: idle from now until its first request.
    pub(crate) fn register(self: &Arc<Self>) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked {
            idle_since: AtomicU64::new(micros_since(self.epoch)),
            epoch: self.epoch,
            close: Notify::new(),
        });
        self.lock().insert(id, Arc::clone(&tracked));
        Registration { open: Arc::clone(self), id, tracked }
    }

    /// Asks the connection idle longest to close; `false` if every one has a request under way.
    pub(crate) fn close_idlest(&self) -> bool {
        let connections = self.lock();
        let idlest = connections
            .values()
            .filter(|c| c.idle_since.load(Ordering::Relaxed) != BUSY)
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed));
        match idlest {
            Some(c) => {
                // Marked busy, so that it is not chosen again while it closes.
                c.idle_since.store(BUSY, Ordering::Relaxed);
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.connections.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Tracked {
    /// A request's headers have arrived.
    pub(crate) fn request_started(&self) {
        self.idle_since.store(BUSY, Ordering::Relaxed);
    }

    /// Its answer has been written, or abandoned.
    fn request_finished(&self) {
        self.idle_since.store(micros_since(self.epoch), Ordering::Relaxed);
    }

    /// `response`, whose body marks the request finished once it is written or dropped.
    pub(crate) fn finish_with(self: &Arc<Self>, response: Response) -> Response {
        response.map(|body| Body::new(Finishing { body, tracked: Arc::clone(self) }))
    }
}

/// A response body that marks its request finished when dropped: after its last byte has been
/// written, or when the connection ends first.
struct Finishing {
    body: Body,
    tracked: Arc<Tracked>,
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Finishing {
    fn drop(&mut self) {
        self.tracked.request_finished();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.open.lock().remove(&self.id);
    }
}

fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(BUSY - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_idle_longest_is_chosen_never_a_busy_one() {
        let open = Open::new();
        let (a, b, c) = (open.register(), open.register(), open.register());
        a.tracked.request_started();
        std::thread::sleep(std::time::Duration::from_millis(2));
        c.tracked.request_finished();
        // a is busy; b has been idle since it opened, before c's request finished.
        assert!(open.close_idlest());
        assert_eq!(b.tracked.idle_since.load(Ordering::Relaxed), BUSY, "b was chosen");
        assert!(open.close_idlest());
        assert_eq!(c.tracked.idle_since.load(Ordering::Relaxed), BUSY, "then c");
        assert!(!open.close_idlest(), "a has a request under way");
        drop((a, b, c));
        assert!(open.lock().is_empty());
    }
}
