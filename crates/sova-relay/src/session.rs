//! One session: its members, the order of its broadcasts (`seq`), the history that lets a
//! client resume, and the snapshot late joiners start from. One small lock per session
//! orders all of it, so every member sees the session's broadcasts in `seq` order; sessions
//! never contend with each other.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message, PendingBroadcast, UpdateData};
use uuid::Uuid;

use crate::outbox::Outbox;
use crate::registry::Member;

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
    /// Random, chosen at creation: a `seq` is meaningful only within its epoch.
    pub(crate) epoch: u64,
    limits: HistoryLimits,
    state: Mutex<SessionState>,
}

/// What the session lock guards.
pub(crate) struct SessionState {
    /// Immutable list, replaced on join and leave, so readers can hold it without the lock.
    pub(crate) members: Arc<[Arc<Member>]>,
    /// `seq` of the latest broadcast (0: none yet).
    pub(crate) last_seq: u64,
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
    pub(crate) fn new(label: String, limits: HistoryLimits) -> Self {
        Session {
            label,
            epoch: Uuid::new_v4().as_u64_pair().0,
            limits,
            state: Mutex::new(SessionState {
                members: Arc::from([]),
                last_seq: 0,
                history: VecDeque::new(),
                history_bytes: 0,
                keeps_history: false,
                snapshot: None,
            }),
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

    /// Keeps `data` as the session's snapshot: `source`'s state with every broadcast up to
    /// `seq` applied.
    pub(crate) fn publish_snapshot(
        &self,
        source: &Member,
        seq: u64,
        data: UpdateData,
    ) -> Result<(), String> {
        let mut state = self.lock();
        if seq > state.last_seq {
            return Err(format!(
                "Snapshot refused: seq {seq} is ahead of the session (latest broadcast: {})",
                state.last_seq
            ));
        }
        let frame = encode_frame(&Message::SessionSnapshot { seq, data });
        state.keeps_history = true;
        state.snapshot = Some(Snapshot {
            seq,
            source: source.lineage,
            source_seq: source.last_sent_seq.load(Ordering::Relaxed),
            frame,
        });
        Ok(())
    }

    pub(crate) fn limits(&self) -> &HistoryLimits {
        &self.limits
    }
}

impl SessionState {
    /// From now on, broadcasts are kept for resuming clients and snapshot joiners.
    pub(crate) fn keep_history(&mut self) {
        self.keeps_history = true;
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
        self.history
            .front()
            .is_some_and(|oldest| oldest.seq <= seq + 1)
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
