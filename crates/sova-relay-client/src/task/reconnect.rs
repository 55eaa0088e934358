//! Between connections: telling the application the connection was lost, registering
//! again with backoff (resuming where the session allows), and serving the handles
//! meanwhile.

use std::future::Future;

use sova_relay_protocol::ResumeRequest;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{deliver, Control, Task};
use crate::event::Delivered;
use crate::handshake::{register, Registration};
use crate::transport::Transport;
use crate::{ClientError, Event};

impl Task {
    /// Marks the client disconnected and tells the application.
    pub(super) fn connection_lost(&mut self, reason: String) {
        self.shared.disconnected();
        for ping in self.pings.drain(..) {
            if let Some(reply) = ping.reply {
                let _ = reply.send(Err(ClientError::NotConnected));
            }
        }
        self.push(Event::Disconnected(reason));
    }

    /// Registers again, with backoff. `Ok(Some)`: registered; `Ok(None)`: gave up (the
    /// reason is in the backlog); `Err`: the handles asked to stop.
    pub(super) async fn reconnect(
        &mut self,
    ) -> Result<Option<Transport>, Option<oneshot::Sender<()>>> {
        loop {
            let Some(delay) = self.backoff.next_delay() else {
                let attempts = self.backoff.attempts();
                self.push(Event::Error(format!(
                    "gave up reconnecting after {attempts} attempts"
                )));
                return Ok(None);
            };
            self.idle(tokio::time::sleep(delay)).await?;
            let (target, config) = (self.target.clone(), self.config.clone());
            let resume = self.position.resume_request().filter(|_| config.resume);
            let asked = resume.clone();
            let attempt = async move { register(&target, &config, resume).await };
            match self.idle(attempt).await? {
                Ok((transport, registration)) => {
                    let resumed = registration.resumed.as_deref();
                    info!(id = %registration.id, ?resumed, "reconnected to relay");
                    self.reconnected(&registration, asked.as_ref());
                    return Ok(Some(transport));
                }
                // The relay's certificate changed since we trusted it: it may be fixed.
                Err(err) if err.is_retryable() || matches!(err, ClientError::Tls(_)) => {
                    info!(%err, attempt = self.backoff.attempts(), "reconnect failed, retrying");
                }
                Err(err) => {
                    warn!(%err, "reconnect refused, giving up");
                    self.push(Event::Error(err.to_string()));
                    return Ok(None);
                }
            }
        }
    }

    /// Publishes a new registration and reports whether the session resumed, and who came
    /// and went meanwhile (the order is documented on [`Event`]).
    pub(super) fn reconnected(
        &mut self,
        registration: &Registration,
        asked: Option<&ResumeRequest>,
    ) {
        self.backoff.reset();
        let before = self.shared.registered(registration);
        self.push(Event::Reconnected);
        if let Some((event, position)) = self.position.reregistered(registration, asked) {
            self.backlog.push_back(Delivered { event, position });
        }
        for gone in before.iter().filter(|p| !registration.peers.contains(p)) {
            self.push(Event::Left {
                id: gone.id,
                name: gone.name.clone(),
            });
        }
        for new in registration.peers.iter().filter(|p| !before.contains(p)) {
            self.push(Event::Joined {
                id: new.id,
                name: new.name.clone(),
            });
        }
    }

    /// Awaits `work` while disconnected, still delivering events and answering the handles.
    /// `Err` when the handles ask to stop.
    pub(super) async fn idle<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Result<T, Option<oneshot::Sender<()>>> {
        tokio::pin!(work);
        let events = self.events.clone();
        loop {
            tokio::select! {
                biased;
                permit = events.reserve(), if !self.backlog.is_empty() => {
                    deliver(&mut self.backlog, permit.ok());
                }
                command = self.control.recv() => match command {
                    Some(Control::Ping(reply)) => {
                        let _ = reply.send(Err(ClientError::NotConnected));
                    }
                    Some(Control::Close(reply)) => return Err(Some(reply)),
                    None => return Err(None),
                },
                output = &mut work => return Ok(output),
            }
        }
    }
}
