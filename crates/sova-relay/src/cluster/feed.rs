//! A session's broadcasts through the cluster: published once to its subject by the node
//! of the sending instance, delivered by every node with members there from an ordered
//! consumer, in the stream's order (`seq` = stream sequence). Snapshots likewise, from
//! their own stream.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use sova_relay_protocol::{encode_frame, Message, PendingBroadcast};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::objects::snapshots_subject;
use super::{Cluster, PendingAck};
use crate::registry::Member;
use crate::session::{PublishedSnapshot, Session};

const SOURCE_ID: &str = "Sova-Source-Id";
const LINEAGE: &str = "Sova-Lineage";
const SEQ: &str = "Sova-Seq";
const SOURCE_SEQ: &str = "Sova-Source-Seq";

/// How long a snapshot waits for its publisher's updates to be ordered.
const SEQUENCED_WAIT: Duration = Duration::from_secs(2);

/// How often a feed checks that this node's own acknowledged updates come back to it.
const STALL_CHECK: Duration = Duration::from_millis(500);
/// How long they may lag before the feed is restarted.
const STALLED_AFTER: Duration = Duration::from_secs(2);
/// A feed that ran this long before failing was healthy: its next failure is logged again.
const FEED_HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What an instance is told when NATS did not store one of its updates.
const UNRELAYED: &str = "Update not relayed: the cluster did not store it";

/// How long a live update from an instance this node has not heard of waits for the
/// registry's watch to report it.
const UNKNOWN_SOURCE_WAIT: Duration = Duration::from_secs(1);

/// Pause before a feed that failed (NATS away) starts again.
const FEED_RETRY: Duration = Duration::from_millis(500);

impl Cluster {
    /// Starts following a session this node just created; the feed ends with the session.
    pub(crate) fn start_feed(self: &Arc<Self>, session: &Arc<Session>) {
        tokio::spawn(run_feed(self.clone(), session.clone()));
    }

    /// Publishes a local instance's update to its session's subject. `Err` gives the
    /// broadcast back when NATS is away: the caller then delivers it on this node only.
    pub(crate) async fn publish(
        &self,
        session: &Arc<Session>,
        source: &Arc<Member>,
        pending: PendingBroadcast,
    ) -> Result<(), PendingBroadcast> {
        let Some(subject) = session.updates_subject().filter(|_| self.is_available()) else {
            return Err(pending);
        };
        let mut headers = HeaderMap::new();
        headers.insert(SOURCE_ID, source.id.to_string().as_str());
        headers.insert(LINEAGE, source.lineage.to_string().as_str());
        let body = pending.into_body();
        let published = self
            .js
            .publish_with_headers(subject.clone(), headers, body.clone())
            .await;
        match published {
            Ok(ack) => {
                self.published.increment(1);
                source.published.fetch_add(1, Ordering::Relaxed);
                // Waits only when 16 Ki acknowledgements are outstanding.
                let pending = PendingAck {
                    session: Arc::downgrade(session),
                    sender: Arc::downgrade(source),
                    ack,
                };
                let _ = self.acks.send(pending).await;
                Ok(())
            }
            Err(err) => {
                crate::metrics::cluster_publish_failed();
                warn!(error = %err, "Cluster: publishing an update failed; delivered on this node only");
                Err(PendingBroadcast::from_body(&body))
            }
        }
    }

    /// Waits until every update `member` published has come back from the stream, so its
    /// `last_sent_seq` covers all of them. False if some did not within `SEQUENCED_WAIT`
    /// (an update NATS lost never comes back).
    pub(crate) async fn wait_sequenced(&self, member: &Member) -> bool {
        let published = member.published.load(Ordering::Relaxed);
        let caught_up = async {
            loop {
                let changed = member.sequenced_changed.notified();
                if member.sequenced.load(Ordering::Relaxed) >= published {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(SEQUENCED_WAIT, caught_up)
            .await
            .is_ok()
    }

    /// Shares a snapshot a local instance published with the other nodes.
    pub(crate) async fn publish_snapshot(&self, session: &Session, snapshot: &PublishedSnapshot) {
        if !self.is_available() {
            return;
        }
        let mut headers = HeaderMap::new();
        headers.insert(SEQ, snapshot.seq.to_string().as_str());
        headers.insert(LINEAGE, snapshot.source.to_string().as_str());
        headers.insert(SOURCE_SEQ, snapshot.source_seq.to_string().as_str());
        let subject = snapshots_subject(&session.cluster_key);
        match self
            .js
            .publish_with_headers(subject, headers, snapshot.frame.clone())
            .await
        {
            Ok(ack) => {
                let pending = PendingAck {
                    session: Weak::new(),
                    sender: Weak::new(),
                    ack,
                };
                let _ = self.acks.send(pending).await;
            }
            Err(err) => {
                crate::metrics::cluster_publish_failed();
                warn!(error = %err, "Cluster: publishing a snapshot failed");
            }
        }
    }
}

/// Awaits publish acknowledgements: a lost update is logged, counted, and its sender told
/// (at most once a second each), never silent.
pub(super) async fn check_acks(
    cluster: Arc<Cluster>,
    mut acks: mpsc::Receiver<PendingAck>,
    shutdown: CancellationToken,
) {
    let mut pending = FuturesUnordered::new();
    let mut last_warning: Option<Instant> = None;
    let mut told = Told::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            ack = acks.recv() => match ack {
                Some(PendingAck { session, sender, ack }) => {
                    pending.push(async move { (session, sender, ack.await) });
                }
                None => return,
            },
            Some((session, sender, result)) = pending.next(), if !pending.is_empty() => {
                match result {
                    Ok(ack) => {
                        if let Some(session) = session.upgrade() {
                            session.note_acked(ack.sequence);
                        }
                    }
                    Err(err) => {
                        crate::metrics::cluster_publish_failed();
                        if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                            last_warning = Some(Instant::now());
                            warn!(node = %cluster.node, error = %err,
                                  "Cluster: NATS did not store an update: nobody receives it");
                        }
                        if let Some(sender) = sender.upgrade() {
                            told.tell(&sender);
                        }
                    }
                }
            }
        }
    }
}

/// When each sender was last told that an update of theirs was lost.
#[derive(Default)]
struct Told(HashMap<Uuid, Instant>);

impl Told {
    fn tell(&mut self, sender: &Member) {
        let now = Instant::now();
        if self
            .0
            .get(&sender.id)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(1))
        {
            return;
        }
        if self.0.len() >= 1024 {
            self.0
                .retain(|_, at| now.duration_since(*at) < Duration::from_secs(1));
        }
        self.0.insert(sender.id, now);
        sender.outbox.deliver(encode_frame(&Message::Error {
            message: UNRELAYED.to_owned(),
        }));
    }
}

async fn run_feed(cluster: Arc<Cluster>, session: Arc<Session>) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let failed = tokio::select! {
            _ = session.closed() => return,
            result = follow(&cluster, &session) => match result {
                Ok(FeedEnd::Closed) => return,
                Ok(FeedEnd::Restart(why)) => {
                    info!(session = %session.label, "Cluster: restarting the session feed: {why}");
                    failures = 0;
                    continue;
                }
                Err(err) => err,
            },
        };
        if started.elapsed() >= FEED_HEALTHY_AFTER {
            failures = 0;
        }
        failures += 1;
        // The first failures are expected while NATS restarts; say so once, then quietly.
        if failures == 1 {
            warn!(session = %session.label, error = %format!("{failed:#}"), "Cluster: session feed interrupted; restarting it");
        } else {
            debug!(session = %session.label, error = %format!("{failed:#}"), "Cluster: session feed still down");
        }
        tokio::select! {
            _ = session.closed() => return,
            _ = tokio::time::sleep(FEED_RETRY) => {}
        }
    }
}

/// Why a feed that did not fail stopped.
enum FeedEnd {
    /// The session left the registry.
    Closed,
    /// Its consumer may be gone (NATS reconnected, or this node's own updates stopped
    /// coming back): start again after the last delivered `seq`.
    Restart(&'static str),
}

/// Delivers the session's broadcasts and snapshots until the session closes; an error
/// when the stream cannot be read.
async fn follow(cluster: &Arc<Cluster>, session: &Arc<Session>) -> anyhow::Result<FeedEnd> {
    let mut reconnected = cluster.reconnections.subscribe();
    reconnected.borrow_and_update();
    let objects = cluster.objects().context("cluster not set up yet")?;
    let updates_stream = objects.updates(&session.cluster_key);
    let updates_subject = session
        .updates_subject()
        .context("not a cluster session")?
        .to_string();
    let snapshots_subject = snapshots_subject(&session.cluster_key);

    // Where to start: after what this node delivered, or (new here) every broadcast the
    // stream still holds for the session, so this node can replay them to a resuming client.
    let mut catch_up_to = None;
    let deliver_policy = if session.is_ready() {
        DeliverPolicy::ByStartSequence {
            start_sequence: session.last_seq() + 1,
        }
    } else {
        let info = updates_stream.get_info().await?;
        session.set_floor(info.state.first_sequence.saturating_sub(1));
        match updates_stream
            .get_last_raw_message_by_subject(&updates_subject)
            .await
        {
            Ok(last) => {
                catch_up_to = Some(last.sequence);
                DeliverPolicy::All
            }
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                DeliverPolicy::ByStartSequence {
                    start_sequence: info.state.last_sequence + 1,
                }
            }
            Err(err) => return Err(err.into()),
        }
    };

    let snapshots_info = objects.snapshots.get_info().await?;
    match objects
        .snapshots
        .get_last_raw_message_by_subject(&snapshots_subject)
        .await
    {
        Ok(message) => adopt_snapshot(session, &message.headers, message.payload),
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {}
        Err(err) => return Err(err.into()),
    }

    let mut updates = updates_stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.client.new_inbox(),
            filter_subject: updates_subject,
            deliver_policy,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let mut snapshots = objects
        .snapshots
        .create_consumer(push::OrderedConfig {
            deliver_subject: cluster.client.new_inbox(),
            filter_subject: snapshots_subject,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: snapshots_info.state.last_sequence + 1,
            },
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    if catch_up_to.is_none() && !session.is_ready() {
        session.mark_ready(updates_stream.cached_info().state.last_sequence);
    }

    let mut stall_check = tokio::time::interval(STALL_CHECK);
    // Sources whose arrival this feed waited for in vain (see `wait_known`).
    let mut unknown = std::collections::HashSet::new();
    let mut behind_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = session.closed() => return Ok(FeedEnd::Closed),
            // An ephemeral consumer lives on one NATS server: after a reconnection it may
            // be gone, which the consumer's own heartbeat check would notice only later.
            _ = reconnected.changed() => return Ok(FeedEnd::Restart("NATS reconnected")),
            _ = stall_check.tick() => {
                if session.acked() > session.last_seq() {
                    let since = *behind_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= STALLED_AFTER {
                        return Ok(FeedEnd::Restart("this node's updates stopped coming back"));
                    }
                } else {
                    behind_since = None;
                }
            }
            message = updates.next() => {
                let message = message.context("update feed ended")?.map_err(|e| anyhow::anyhow!(e))?;
                let seq = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
                let headers = message.headers.as_ref();
                let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
                let source_id = header(SOURCE_ID).and_then(|v| v.parse::<Uuid>().ok()).unwrap_or(Uuid::nil());
                let lineage = header(LINEAGE).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let live = catch_up_to.is_none();
                if live && !unknown.contains(&source_id) && !Box::pin(cluster.wait_known(session, source_id, UNKNOWN_SOURCE_WAIT)).await {
                    // Left before this node heard of it, or NATS lost the entry: deliver it
                    // anyway, and do not wait for this source again.
                    debug!(session = %session.label, %source_id, "Cluster: update from an instance this node never heard of");
                    unknown.insert(source_id);
                }
                let started = Instant::now();
                let pending = PendingBroadcast::from_body(&message.payload);
                let (delivered, frame_len) = session.deliver_sequenced(seq, source_id, lineage, pending);
                if frame_len > 0 {
                    cluster.stats.broadcast(delivered, frame_len, started.elapsed());
                }
                if catch_up_to.is_some_and(|last| seq >= last) {
                    catch_up_to = None;
                    session.mark_ready(seq);
                }
            }
            message = snapshots.next() => {
                let message = message.context("snapshot feed ended")?.map_err(|e| anyhow::anyhow!(e))?;
                let headers = message.headers.clone().unwrap_or_default();
                adopt_snapshot(session, &headers, message.payload.clone());
            }
        }
    }
}

fn adopt_snapshot(session: &Session, headers: &HeaderMap, frame: Bytes) {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.as_str().parse::<u64>().ok())
    };
    if let (Some(seq), Some(source), Some(source_seq)) =
        (number(SEQ), number(LINEAGE), number(SOURCE_SEQ))
    {
        session.adopt_snapshot(seq, source, source_seq, frame);
    }
}
