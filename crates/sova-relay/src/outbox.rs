//! The bounded queue of encoded frames in front of one instance, and the writer task that
//! drains it. Producers never wait: a queue that is full marks its consumer as slow and it
//! is disconnected, so one stalled instance cannot hold back anybody else.
//!
//! The queue is a `VecDeque` behind a short mutex rather than a channel: a producer appends
//! and wakes the writer only when the queue was empty, and the writer takes everything
//! queued in one swap, so a burst costs one wake-up and one vectored write, not one per frame.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::reason::DisconnectReason;

/// Frames written in one vectored write, at most (below every platform's IOV_MAX).
const MAX_BATCH: usize = 512;

/// Frames of queue space a connection keeps between bursts.
const IDLE_CAPACITY: usize = 16;

/// How long a best-effort farewell (`Error` before an abrupt close) may take.
const FAREWELL_TIMEOUT: Duration = Duration::from_millis(250);

/// A cheap-to-clone handle for queueing frames to one connection.
#[derive(Clone)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue stops being empty, or a finish is requested.
    ready: Notify,
    /// Bytes queued and not yet written; the bound that makes the queue bounded.
    pending: AtomicUsize,
    max_pending: usize,
    /// Set with `killed`, and checked on every push without taking a lock.
    stopped: AtomicBool,
    /// Cancelled to stop the connection at once (slow consumer, write failure, hard stop).
    killed: CancellationToken,
    /// Cancelled to end the connection after its queue drains (kick).
    close_requested: CancellationToken,
    /// Why it was killed or closed: the first reason wins.
    reason: OnceLock<DisconnectReason>,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Set once: write what is queued, say why, and close.
    finish: Option<Option<DisconnectReason>>,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue is over its byte bound: the consumer is too slow.
    Full,
    /// The connection is closing.
    Closed,
}

impl Outbox {
    /// Creates a queue bounded to `max_pending` bytes; `stop` kills it when cancelled.
    pub(crate) fn new(max_pending: usize, stop: &CancellationToken) -> (Self, Receiver) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            pending: AtomicUsize::new(0),
            max_pending,
            stopped: AtomicBool::new(false),
            killed: stop.child_token(),
            close_requested: CancellationToken::new(),
            reason: OnceLock::new(),
        });
        let receiver = Receiver {
            shared: shared.clone(),
        };
        (Self { shared }, receiver)
    }

    /// Queues a frame unless that would exceed the byte bound.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let before = self.shared.pending.fetch_add(len, Ordering::Relaxed);
        if before + len > self.shared.max_pending {
            self.shared.pending.fetch_sub(len, Ordering::Relaxed);
            return Err(PushError::Full);
        }
        let mut queue = self.shared.lock();
        if queue.finish.is_some() {
            drop(queue);
            self.shared.pending.fetch_sub(len, Ordering::Relaxed);
            return Err(PushError::Closed);
        }
        let was_empty = queue.frames.is_empty();
        queue.frames.push_back(frame);
        drop(queue);
        if was_empty {
            self.shared.ready.notify_one();
        }
        Ok(())
    }

    /// Queues a frame; a consumer too slow to take it is killed as a slow consumer.
    /// Returns whether the frame was queued.
    pub(crate) fn deliver(&self, frame: Bytes) -> bool {
        match self.push(frame) {
            Ok(()) => true,
            Err(PushError::Full) => {
                self.kill(DisconnectReason::SlowConsumer {
                    max_pending: self.shared.max_pending,
                });
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Closes gracefully: everything queued is written, then the instance is told why
    /// (when `reason` has something to say), then the connection closes.
    pub(crate) fn finish(&self, reason: Option<DisconnectReason>) {
        let mut queue = self.shared.lock();
        if queue.finish.is_none() {
            queue.finish = Some(reason);
        }
        drop(queue);
        self.shared.ready.notify_one();
    }

    /// Asks the connection's reader to end for `reason`, letting the queue drain first
    /// (an operator's kick). The first reason given wins.
    pub(crate) fn request_close(&self, reason: DisconnectReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.close_requested.cancel();
    }

    /// Resolves when a graceful close has been requested.
    pub(crate) async fn close_requested(&self) {
        self.shared.close_requested.cancelled().await;
    }

    /// Stops the connection at once; the first reason given is the one reported.
    pub(crate) fn kill(&self, reason: DisconnectReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.stop();
    }

    /// Resolves when the connection has been killed.
    pub(crate) async fn killed(&self) {
        self.shared.killed.cancelled().await;
    }

    /// Why the connection was killed or asked to close.
    pub(crate) fn reason(&self) -> DisconnectReason {
        self.shared
            .reason
            .get()
            .cloned()
            .unwrap_or(DisconnectReason::Shutdown)
    }

    /// Bytes queued and not yet written.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.shared.pending.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.killed.cancel();
    }
}

/// The consuming end, owned by the writer task.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

impl Receiver {
    /// Drains the queue into `sink` until a graceful finish, a kill or a write failure.
    /// A write that takes longer than `write_timeout` marks the consumer as slow.
    pub(crate) async fn run_writer(self, mut sink: impl FrameSink, write_timeout: Duration) {
        let mut batch = VecDeque::new();
        // Whether the last write carried several frames: the relay is busy.
        let mut busy = false;
        loop {
            let finish = {
                let mut queue = self.shared.lock();
                std::mem::swap(&mut queue.frames, &mut batch);
                if batch.is_empty() {
                    queue.finish.take()
                } else {
                    None
                }
            };
            if batch.is_empty() && finish.is_none() {
                tokio::select! {
                    biased;
                    _ = self.shared.killed.cancelled() => break,
                    _ = self.shared.ready.notified() => {
                        // Busy: let the other ready tasks run first, so more frames are
                        // queued and one write carries them all (fewer syscalls per frame).
                        // Idle: write at once, latency first.
                        if busy {
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                }
            }
            busy = batch.len() > 1;
            if let Some(frame) = finish.as_ref().and_then(|r| r.as_ref()?.farewell()) {
                batch.push_back(frame);
            }
            while !batch.is_empty() {
                let take = batch.len().min(MAX_BATCH);
                let frames = &batch.make_contiguous()[..take];
                let written: usize = frames.iter().map(Bytes::len).sum();
                let outcome = tokio::select! {
                    biased;
                    _ = self.shared.killed.cancelled() => return,
                    outcome = tokio::time::timeout(write_timeout, sink.write_frames(frames)) => outcome,
                };
                match outcome {
                    Ok(Ok(())) => {
                        self.shared.pending.fetch_sub(written, Ordering::Relaxed);
                        batch.drain(..take);
                    }
                    Ok(Err(err)) => return self.fail(DisconnectReason::WriteFailed(err.kind())),
                    Err(_) => return self.fail(DisconnectReason::WriteTimeout(write_timeout)),
                }
            }
            if let Some(reason) = finish {
                let _ = tokio::time::timeout(write_timeout, sink.close(reason.as_ref())).await;
                return;
            }
            // After a burst, give back what an idle connection does not need.
            batch.shrink_to(IDLE_CAPACITY);
        }
        self.farewell(&mut sink).await;
    }

    fn fail(&self, reason: DisconnectReason) {
        let _ = self.shared.reason.set(reason);
        self.shared.stop();
    }

    /// Killed between two writes, so the stream is at a frame boundary: try to say why.
    async fn farewell(&self, sink: &mut impl FrameSink) {
        let reason = self.shared.reason.get();
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
            if let Some(frame) = reason.and_then(DisconnectReason::farewell) {
                sink.write_frames(&[frame]).await?;
            }
            sink.close(reason).await;
            Ok::<_, io::Error>(())
        })
        .await;
    }
}

/// Where a connection's frames go: a byte stream, or WebSocket messages.
pub(crate) trait FrameSink: Send {
    /// Writes whole frames (length prefix included), in order.
    fn write_frames(&mut self, frames: &[Bytes]) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the connection; `reason` says why where the transport can carry it.
    fn close(&mut self, reason: Option<&DisconnectReason>) -> impl Future<Output = ()> + Send;
}

/// A byte stream carries frames as they are.
pub(crate) struct StreamSink<W>(pub(crate) W);

impl<W: AsyncWrite + Unpin + Send> FrameSink for StreamSink<W> {
    async fn write_frames(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if let [frame] = frames {
            return self.0.write_all(frame).await;
        }
        let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|f| IoSlice::new(f)).collect();
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            let n = self.0.write_vectored(remaining).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut remaining, n);
        }
        Ok(())
    }

    async fn close(&mut self, _reason: Option<&DisconnectReason>) {
        let _ = self.0.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_without_blocking() {
        let stop = CancellationToken::new();
        let (outbox, _receiver) = Outbox::new(10, &stop);
        assert_eq!(outbox.push(Bytes::from_static(b"12345678")), Ok(()));
        assert_eq!(
            outbox.push(Bytes::from_static(b"123")),
            Err(PushError::Full)
        );
        assert_eq!(outbox.pending_bytes(), 8);
    }

    #[tokio::test]
    async fn the_writer_drains_in_order_then_finishes() {
        let stop = CancellationToken::new();
        let (outbox, receiver) = Outbox::new(1 << 20, &stop);
        for i in 0..200u8 {
            outbox.push(Bytes::from(vec![i; 3])).unwrap();
        }
        outbox.finish(None);
        let (client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(receiver.run_writer(StreamSink(client), Duration::from_secs(5)));
        let mut received = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut received)
            .await
            .unwrap();
        writer.await.unwrap();
        let expected: Vec<u8> = (0..200u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(received, expected);
        assert_eq!(outbox.pending_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_kills_the_connection_as_slow() {
        let stop = CancellationToken::new();
        let (outbox, receiver) = Outbox::new(1 << 20, &stop);
        outbox.push(Bytes::from(vec![0; 1024])).unwrap();
        let (client, _server_never_reads) = tokio::io::duplex(16);
        receiver
            .run_writer(StreamSink(client), Duration::from_secs(10))
            .await;
        assert!(matches!(outbox.reason(), DisconnectReason::WriteTimeout(_)));
    }
}
