//! The end of the client: the last updates written, the relay's last words read, the
//! remaining events handed over.

use sova_relay_protocol::Message;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

use super::{Control, Task, CLOSE_GRACE, WRITE_BATCH};
use crate::event::Delivered;
use crate::transport::{Received, Transport};
use crate::ClientError;

impl Task {
    /// Writes what is still queued, half-closes, and reads until the relay closes too, so
    /// that nothing the relay sent (an error about our last updates) is lost.
    pub(super) async fn close(&mut self, transport: &mut Transport) {
        let mut result = self.write_unsent(transport).await;
        while result.is_ok() {
            let batch: Vec<_> = std::iter::from_fn(|| self.updates.try_recv().ok())
                .take(WRITE_BATCH)
                .collect();
            if batch.is_empty() {
                break;
            }
            result = self.write_batch(transport, batch).await;
        }
        transport.shutdown(CLOSE_GRACE).await;
        let deadline = Instant::now() + CLOSE_GRACE;
        while let Ok(Ok(Received::Message(message))) =
            tokio::time::timeout_at(deadline, transport.recv()).await
        {
            match message {
                Ok(Message::Pong { timestamp }) => self.on_pong(timestamp),
                // Too late to answer: we have half-closed.
                Ok(Message::Ping { .. }) | Err(_) => {}
                Ok(message) => {
                    let event = self.event_for(message);
                    self.backlog.extend(event);
                }
            }
        }
        self.shared.disconnected();
        info!("connection to relay closed");
    }

    /// Delivers the remaining events (unless nobody listens), then answers `close`.
    pub(super) async fn finish(&mut self, reply: Option<oneshot::Sender<()>>) {
        while let Some(event) = self.backlog.pop_front() {
            let sent = match reply {
                Some(_) => self.events.try_send(event).is_ok(),
                None => self.idle_send(event).await,
            };
            if !sent {
                break;
            }
        }
        self.shared.disconnected();
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
    }

    /// Sends one final event, unless every handle is gone first.
    pub(super) async fn idle_send(&mut self, event: Delivered) -> bool {
        let send = self.events.send(event);
        tokio::pin!(send);
        loop {
            tokio::select! {
                biased;
                sent = &mut send => return sent.is_ok(),
                command = self.control.recv() => match command {
                    Some(Control::Ping(reply)) => {
                        let _ = reply.send(Err(ClientError::Closed));
                    }
                    Some(Control::Close(reply)) => {
                        let _ = reply.send(());
                    }
                    None => return false,
                },
            }
        }
    }
}
