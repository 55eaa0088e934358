//! One session: its members, the order of its broadcasts (`seq`), the history that lets a
//! client resume, and the snapshot late joiners start from. One small lock per session
//! orders all of it, so every member sees the session's broadcasts in `seq` order; sessions
//! never contend with each other.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message, PendingBroadcast, UpdateData};
use uuid::Uuid;

use crate::outbox::Outbox;
use crate::registry::Member;

/// How a session is ordered: by this node alone, or by the cluster's shared stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sequencer {
    /// `seq` counted here: 1, 2, 3…
    Local,
    /// `seq` from the cluster's stream: increasing, shared by every node, not contiguous.
    Cluster {
        epoch: u64,
        /// Where the session's broadcasts are published.
        updates_subject: async_nats::Subject,
    },
}

/// Bounds of a session's history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HistoryLimits {
    pub(crate) max_updates: usize,
    pub(crate) max_bytes: usize,
    pub(crate) max_age: Duration,
}

/// A session of the relay.
pub(crate) struct Session {
    /// Short, non-reversible label for logs: never the token itself.
    pub(crate) label: String,
    /// The session's name in the cluster's subjects and keys (a hash of the token).
    pub(crate) cluster_key: String,
    /// Random, chosen at creation: a `seq` is meaningful only within its epoch.
    pub(crate) epoch: u64,
    limits: HistoryLimits,
    state: Mutex<SessionState>,
    /// In cluster mode only (a local session pays one pointer for it).
    feed: Option<Box<Feed>>,
}

/// How a cluster session's feed and its registrations meet.
struct Feed {
    /// Cancelled when the session is dropped from the registry: the feed stops.
    closed: CancellationToken,
    /// Whether the feed has caught up with the stream: members join only then, so their
    /// `seq` and replays are complete.
    ready: watch::Sender<bool>,
    /// The highest stream sequence NATS acknowledged for this node's publishes here: the
    /// feed is stalled if it stays behind it.
    acked: AtomicU64,
    /// Told each time `last_seq` moves.
    advanced: Notify,
    /// Where the session's broadcasts are published (cheap to clone).
    updates_subject: async_nats::Subject,
    /// Notices about other nodes' instances held while the same instance's departure
    /// waits (see `cluster::notices`).
    held_notices: Mutex<HashMap<Uuid, Vec<RemoteNotice>>>,
}

/// What this node's members are told of an instance of another node.
pub(crate) struct RemoteNotice {
    pub(crate) instance: Uuid,
    /// `InstanceConnected` (to `presence` members) or `InstanceDisconnected` (to all).
    pub(crate) frame: Bytes,
    pub(crate) departure: bool,
    /// The members when the change was seen: those who joined later learnt the instance's
    /// state from their `current_instances`.
    pub(crate) recipients: Arc<[Arc<Member>]>,
    /// A member not told (the instance that took the name over).
    pub(crate) except: Option<Uuid>,
}

/// What the session lock guards.
pub(crate) struct SessionState {
    /// Immutable list, replaced on join and leave, so readers can hold it without the lock.
    pub(crate) members: Arc<[Arc<Member>]>,
    /// `seq` of the latest broadcast (0: none yet).
    pub(crate) last_seq: u64,
    /// Every broadcast after this `seq` is in the history (when it is kept).
    floor: u64,
    history: VecDeque<Entry>,
    history_bytes: usize,
    /// History is kept only once a client that can use it (`resume` or `snapshot`) joined,
    /// so sessions of field clients cost nothing.
    keeps_history: bool,
    snapshot: Option<Snapshot>,
}

struct Entry {
    seq: u64,
    /// The sending instance's lineage (see `Member::lineage`).
    source: u64,
    frame: Bytes,
    at: Instant,
}

/// A snapshot a member just published, for the other nodes of a cluster.
pub(crate) struct PublishedSnapshot {
    pub(crate) seq: u64,
    pub(crate) source: u64,
    pub(crate) source_seq: u64,
    pub(crate) frame: Bytes,
}

struct Snapshot {
    /// The last broadcast from others that the state contains.
    seq: u64,
    /// Who published it (lineage): their own updates up to `source_seq` are in it too.
    source: u64,
    source_seq: u64,
    /// The `SessionSnapshot` frame joiners receive.
    frame: Bytes,
}

impl Session {
    pub(crate) fn new(
        label: String,
        cluster_key: String,
        limits: HistoryLimits,
        sequencer: Sequencer,
    ) -> Self {
        let (epoch, clustered) = match sequencer {
            Sequencer::Local => (Uuid::new_v4().as_u64_pair().0, false),
            Sequencer::Cluster { epoch, .. } => (epoch, true),
        };
        let feed = match sequencer {
            Sequencer::Local => None,
            Sequencer::Cluster {
                updates_subject, ..
            } => Some(Box::new(Feed {
                closed: CancellationToken::new(),
                ready: watch::Sender::new(false),
                acked: AtomicU64::new(0),
                advanced: Notify::new(),
                updates_subject,
                held_notices: Mutex::new(HashMap::new()),
            })),
        };
        Session {
            label,
            cluster_key,
            epoch,
            limits,
            state: Mutex::new(SessionState {
                members: Arc::from([]),
                last_seq: 0,
                floor: 0,
                history: VecDeque::new(),
                history_bytes: 0,
                // Any node may have to resume another node's client: always keep it.
                keeps_history: clustered,
                snapshot: None,
            }),
            feed,
        }
    }

    /// Whether members can join (see `ready`).
    pub(crate) fn is_ready(&self) -> bool {
        self.feed.as_ref().is_none_or(|feed| *feed.ready.borrow())
    }

    /// Resolves once the session has left the registry (never for a local session).
    pub(crate) async fn closed(&self) {
        match &self.feed {
            Some(feed) => feed.closed.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// NATS stored one of this node's updates here as `seq`.
    pub(crate) fn note_acked(&self, seq: u64) {
        if let Some(feed) = &self.feed {
            feed.acked.fetch_max(seq, Ordering::Relaxed);
        }
    }

    /// The highest `seq` NATS acknowledged for this node's updates here (0: none).
    pub(crate) fn acked(&self) -> u64 {
        self.feed
            .as_ref()
            .map_or(0, |feed| feed.acked.load(Ordering::Relaxed))
    }

    /// The session has left the registry: its feed stops.
    pub(crate) fn close(&self) {
        if let Some(feed) = &self.feed {
            feed.closed.cancel();
        }
    }

    /// `seq` of the latest broadcast delivered here.
    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// Where the session's broadcasts are published in a cluster (`None`: not clustered).
    pub(crate) fn updates_subject(&self) -> Option<&async_nats::Subject> {
        self.feed.as_ref().map(|feed| &feed.updates_subject)
    }

    /// Waits until the broadcast `seq` (or a later one) was delivered here.
    pub(crate) async fn wait_delivered(&self, seq: u64) {
        let Some(feed) = &self.feed else {
            return;
        };
        loop {
            let advanced = feed.advanced.notified();
            if self.last_seq() >= seq {
                return;
            }
            advanced.await;
        }
    }

    /// The notices held while departures wait (empty for a local session).
    pub(crate) fn held_notices(&self) -> Option<MutexGuard<'_, HashMap<Uuid, Vec<RemoteNotice>>>> {
        let feed = self.feed.as_ref()?;
        Some(
            feed.held_notices
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn advanced(&self) {
        if let Some(feed) = &self.feed {
            feed.advanced.notify_waiters();
        }
    }

    /// Before the cluster feed replays what the stream holds: everything after `seq` is
    /// still there.
    pub(crate) fn set_floor(&self, seq: u64) {
        let mut state = self.lock();
        if state.history.is_empty() {
            state.floor = seq;
        }
    }

    /// Waits until members can join (see `ready`); false if that took longer than `within`.
    pub(crate) async fn wait_ready(&self, within: Duration) -> bool {
        let Some(feed) = &self.feed else {
            return true;
        };
        let mut ready = feed.ready.subscribe();
        tokio::time::timeout(within, ready.wait_for(|ready| *ready))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The cluster feed has caught up: `last_seq` is the session's position in the stream.
    pub(crate) fn mark_ready(&self, position: u64) {
        let mut state = self.lock();
        if state.last_seq < position {
            state.last_seq = position;
            state.floor = state.floor.max(position);
        }
        drop(state);
        self.advanced();
        if let Some(feed) = &self.feed {
            feed.ready.send_replace(true);
        }
    }

    /// The current members; cheap, and safe to iterate while others join and leave.
    pub(crate) fn members(&self) -> Arc<[Arc<Member>]> {
        self.lock().members.clone()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers the broadcast, keeps it for resuming clients, and queues the same bytes to
    /// every other member. Returns how many were queued and the frame's length.
    pub(crate) fn broadcast(&self, source: &Member, pending: PendingBroadcast) -> (usize, usize) {
        let mut state = self.lock();
        state.last_seq += 1;
        let seq = state.last_seq;
        let frame = pending.finish(seq);
        source.last_sent_seq.store(seq, Ordering::Relaxed);
        if state.keeps_history {
            state.remember(&self.limits, seq, source.lineage, frame.clone());
        }
        let delivered = state
            .members
            .iter()
            .filter(|m| m.id != source.id)
            .filter(|m| m.outbox.deliver(frame.clone()))
            .count();
        (delivered, frame.len())
    }

    /// Delivers a broadcast the cluster's stream ordered as `seq` (from any node, this one
    /// included) to every local member but its source. Returns how many were queued and the
    /// frame's length; nothing for a `seq` already delivered (a consumer that restarted).
    pub(crate) fn deliver_sequenced(
        &self,
        seq: u64,
        source_id: Uuid,
        source_lineage: u64,
        pending: PendingBroadcast,
    ) -> (usize, usize) {
        let mut state = self.lock();
        if seq <= state.last_seq {
            return (0, 0);
        }
        state.last_seq = seq;
        let frame = pending.finish(seq);
        if state.keeps_history {
            state.remember(&self.limits, seq, source_lineage, frame.clone());
        }
        let mut delivered = 0;
        for member in state.members.iter() {
            if member.id == source_id {
                member.last_sent_seq.store(seq, Ordering::Relaxed);
                member.sequenced.fetch_add(1, Ordering::Relaxed);
                member.sequenced_changed.notify_waiters();
            } else if member.outbox.deliver(frame.clone()) {
                delivered += 1;
            }
        }
        drop(state);
        self.advanced();
        (delivered, frame.len())
    }

    /// Queues the broadcast, without `seq`, to every other local member: a cluster node
    /// cut off from NATS keeps its own instances playing together.
    pub(crate) fn broadcast_unsequenced(
        &self,
        source: &Member,
        pending: PendingBroadcast,
    ) -> (usize, usize) {
        let frame = pending.finish_unsequenced();
        let members = self.members();
        let delivered = members
            .iter()
            .filter(|m| m.id != source.id)
            .filter(|m| m.outbox.deliver(frame.clone()))
            .count();
        (delivered, frame.len())
    }

    /// Keeps a snapshot another node published (see `publish_snapshot`), unless a newer one
    /// is already here.
    pub(crate) fn adopt_snapshot(&self, seq: u64, source: u64, source_seq: u64, frame: Bytes) {
        let mut state = self.lock();
        if state.snapshot.as_ref().is_some_and(|s| s.seq > seq) {
            return;
        }
        state.snapshot = Some(Snapshot {
            seq,
            source,
            source_seq,
            frame,
        });
    }

    /// Keeps `data` as the session's snapshot: `source`'s state with every broadcast up to
    /// `seq` applied.
    pub(crate) fn publish_snapshot(
        &self,
        source: &Member,
        seq: u64,
        data: UpdateData,
    ) -> Result<PublishedSnapshot, String> {
        let mut state = self.lock();
        if seq > state.last_seq {
            return Err(format!(
                "Snapshot refused: seq {seq} is ahead of the session (latest broadcast: {})",
                state.last_seq
            ));
        }
        let frame = encode_frame(&Message::SessionSnapshot { seq, data });
        state.keep_history();
        let published = PublishedSnapshot {
            seq,
            source: source.lineage,
            source_seq: source.last_sent_seq.load(Ordering::Relaxed),
            frame,
        };
        state.snapshot = Some(Snapshot {
            seq,
            source: published.source,
            source_seq: published.source_seq,
            frame: published.frame.clone(),
        });
        Ok(published)
    }

    pub(crate) fn limits(&self) -> &HistoryLimits {
        &self.limits
    }
}

impl SessionState {
    /// From now on, broadcasts are kept for resuming clients and snapshot joiners.
    pub(crate) fn keep_history(&mut self) {
        if !self.keeps_history {
            self.keeps_history = true;
            self.floor = self.last_seq;
        }
    }

    fn remember(&mut self, limits: &HistoryLimits, seq: u64, source: u64, frame: Bytes) {
        self.history_bytes += frame.len();
        self.history.push_back(Entry {
            seq,
            source,
            frame,
            at: Instant::now(),
        });
        self.trim(limits);
    }

    fn trim(&mut self, limits: &HistoryLimits) {
        let now = Instant::now();
        while let Some(oldest) = self.history.front() {
            let over = self.history.len() > limits.max_updates
                || self.history_bytes > limits.max_bytes
                || now.duration_since(oldest.at) > limits.max_age;
            if !over {
                break;
            }
            self.history_bytes -= oldest.frame.len();
            self.floor = oldest.seq;
            self.history.pop_front();
        }
    }

    /// Whether the history holds every broadcast after `seq`.
    pub(crate) fn can_replay_after(&mut self, limits: &HistoryLimits, seq: u64) -> bool {
        self.covers(limits, seq)
    }

    fn covers(&mut self, limits: &HistoryLimits, seq: u64) -> bool {
        self.trim(limits);
        if seq >= self.last_seq {
            return seq == self.last_seq;
        }
        self.keeps_history && seq >= self.floor
    }

    /// Queues to `outbox` every broadcast after `seq`, if the history still holds them all.
    pub(crate) fn replay_after(
        &mut self,
        limits: &HistoryLimits,
        seq: u64,
        member: &Member,
    ) -> bool {
        if !self.covers(limits, seq) {
            return false;
        }
        // The resuming instance's own updates were never meant for it (no echo).
        let missed = self
            .history
            .iter()
            .filter(|e| e.seq > seq && e.source != member.lineage);
        for entry in missed {
            member.outbox.deliver(entry.frame.clone());
        }
        true
    }

    /// The `seq` of the latest broadcast of `lineage` the history holds (0: none).
    pub(crate) fn last_seq_of(&self, lineage: u64) -> u64 {
        self.history
            .iter()
            .rev()
            .find(|e| e.source == lineage)
            .map_or(0, |e| e.seq)
    }

    /// Queues the snapshot and every broadcast it does not contain, if the history still
    /// reaches back to it. Returns whether a snapshot was sent.
    pub(crate) fn replay_snapshot(&mut self, limits: &HistoryLimits, outbox: &Outbox) -> bool {
        let Some(snapshot) = &self.snapshot else {
            return false;
        };
        let (seq, source, source_seq, frame) = (
            snapshot.seq,
            snapshot.source,
            snapshot.source_seq,
            snapshot.frame.clone(),
        );
        if seq > self.last_seq {
            // Published on another node, ahead of this node's feed: not usable yet.
            return false;
        }
        if !self.covers(limits, seq) {
            self.snapshot = None;
            return false;
        }
        outbox.deliver(frame);
        let contained = |e: &Entry| e.source == source && e.seq <= source_seq;
        for entry in self.history.iter().filter(|e| e.seq > seq && !contained(e)) {
            outbox.deliver(entry.frame.clone());
        }
        true
    }
}
