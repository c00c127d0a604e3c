//! A write deadline for a connection: a client that stops reading its answer is disconnected
//! instead of holding the connection (and, at shutdown, the server) forever.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `io` whose writes fail with `TimedOut` once they have made no progress for `timeout`.
/// Reads pass through: how long a client may take to send is the HTTP layer's business.
pub(crate) struct WriteDeadline<T> {
    io: T,
    timeout: Duration,
    /// Armed when a write first waits, disarmed by any progress. Boxed because `Sleep` is
    /// not `Unpin`; only a write that waits allocates it, once per connection.
    stalled: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl<T> WriteDeadline<T> {
    pub(crate) fn new(io: T, timeout: Duration) -> Self {
        Self { io, timeout, stalled: None, waiting: false }
    }

    /// What a write that returned `poll` becomes: progress disarms the deadline; waiting arms
    /// it (or keeps the one armed) and fails once it has passed.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.waiting = false;
            return poll;
        }
        let deadline = Instant::now() + self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            sleep.as_mut().reset(deadline);
        }
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {:?}", self.timeout),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteDeadline<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_fails_after_the_timeout_and_one_that_is_read_does_not() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(near, Duration::from_secs(2));
        // The pipe holds 64 bytes; the rest waits for a reader that never comes.
        let started = Instant::now();
        let err = io.write_all(&[7; 1000]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // A reader slower than the pipe but never stalled for the timeout: the write succeeds,
        // however long it takes in all.
        let (near, mut far2) = tokio::io::duplex(64);
        let mut io = WriteDeadline::new(near, Duration::from_secs(2));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = [0; 64];
            while got.len() < 1000 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = far2.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let started = Instant::now();
        io.write_all(&[9; 1000]).await.unwrap();
        assert!(started.elapsed() > Duration::from_secs(10), "{:?}", started.elapsed());
        assert_eq!(reader.await.unwrap(), vec![9; 1000]);
        drop(far.read(&mut [0; 8]).await);
    }
}
