//! Telling this node's members that instances of other nodes joined or left, in an order
//! consistent with their updates.
//!
//! Joins and departures come from the watch of `sova_names`, updates from the session's
//! feed: two consumers NATS serves independently. A departing instance's last updates are
//! in the stream before its name is freed (its node waits for them), but this node's feed
//! may deliver them after the watch reports the departure. So a departure is told once the
//! feed has delivered everything the stream held for the session when it was seen; what
//! concerns the same instance meanwhile (it resumed elsewhere) waits behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;
use uuid::Uuid;

use sova_relay_protocol::{encode_frame, Message};

use super::names::NameValue;
use super::Cluster;
use crate::registry::Member;
use crate::session::{RemoteNotice, Session};

/// How long a departure waits for the feed (NATS slow or away): then it is told anyway.
const DEPARTURE_WAIT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Tells the notice now, or once the departure it must follow has been told.
    pub(super) fn notify(self: &Arc<Self>, session: &Arc<Session>, notice: RemoteNotice) {
        let Some(mut held) = session.held_notices() else {
            return;
        };
        self.admit(session, &mut held, notice);
    }

    fn admit(
        self: &Arc<Self>,
        session: &Arc<Session>,
        held: &mut HashMap<Uuid, Vec<RemoteNotice>>,
        notice: RemoteNotice,
    ) {
        if let Some(queue) = held.get_mut(&notice.instance) {
            queue.push(notice);
        } else if notice.departure {
            held.insert(notice.instance, Vec::new());
            let cluster = self.clone();
            let session = session.clone();
            tokio::spawn(async move {
                cluster.wait_feed_caught_up(&session).await;
                let Some(mut held) = session.held_notices() else {
                    return;
                };
                tell(&notice);
                // Under the same lock, so nothing about the instance overtakes these.
                for later in held.remove(&notice.instance).unwrap_or_default() {
                    cluster.admit(&session, &mut held, later);
                }
            });
        } else {
            tell(&notice);
        }
    }

    /// Waits until this node's feed has delivered every update the stream holds for the
    /// session now (bounded by `DEPARTURE_WAIT`).
    async fn wait_feed_caught_up(&self, session: &Session) {
        let (Some(objects), Some(subject)) = (self.objects(), session.updates_subject()) else {
            return;
        };
        let caught_up = async {
            // No message for the session, or NATS away: nothing this node could wait for.
            let Ok(last) = objects
                .updates(&session.cluster_key)
                .get_last_raw_message_by_subject(subject.as_str())
                .await
            else {
                return;
            };
            session.wait_delivered(last.sequence).await;
        };
        if tokio::time::timeout(DEPARTURE_WAIT, caught_up)
            .await
            .is_err()
        {
            debug!(session = %session.label, "Cluster: feed still behind; telling a departure anyway");
        }
    }
}

impl RemoteNotice {
    /// `InstanceDisconnected` for an instance of another node, to every recipient but
    /// `except`; told once its last updates reached them.
    pub(super) fn left(
        left: &NameValue,
        recipients: &Arc<[Arc<Member>]>,
        except: Option<Uuid>,
    ) -> Self {
        RemoteNotice {
            instance: left.id,
            frame: encode_frame(&Message::InstanceDisconnected {
                instance_id: left.id,
                instance_name: left.name.clone(),
            }),
            departure: true,
            recipients: recipients.clone(),
            except,
        }
    }

    /// `InstanceConnected` for an instance of another node, to the `presence` recipients.
    pub(super) fn joined(joined: &NameValue, recipients: &Arc<[Arc<Member>]>) -> Self {
        RemoteNotice {
            instance: joined.id,
            frame: encode_frame(&Message::InstanceConnected {
                instance_id: joined.id,
                instance_name: joined.name.clone(),
            }),
            departure: false,
            recipients: recipients.clone(),
            except: None,
        }
    }
}

fn tell(notice: &RemoteNotice) {
    for member in notice.recipients.iter() {
        let wants = notice.departure || member.presence;
        if wants && member.id != notice.instance && Some(member.id) != notice.except {
            member.outbox.deliver(notice.frame.clone());
        }
    }
}
