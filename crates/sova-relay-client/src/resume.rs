//! Where the client is in its session's history (`epoch`, last `seq`), so that a reconnection
//! resumes exactly where the last connection stopped (docs/PROTOCOL.md, capability `resume`).

use sova_relay_protocol::{ResumeRequest, RESUMED_OK};

use crate::handshake::Registration;
use crate::Event;

/// A point in a session's history: broadcast `seq` of the session's `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqPosition {
    /// The session's epoch (a new one when the relay restarts or the session is recreated).
    pub(crate) epoch: u64,
    /// The last broadcast (or snapshot) seen.
    pub(crate) seq: u64,
}

/// The connection task's view of the session's history.
#[derive(Debug, Default)]
pub(crate) struct Position {
    /// The session's epoch; `None` with a relay that predates the extensions.
    epoch: Option<u64>,
    /// `seq` of the last broadcast (or snapshot) decoded from the relay.
    seq: u64,
    /// Secret of the current registration, to present when resuming it.
    secret: Option<String>,
    /// After a resume, the last `seq` of the replay: the relay replays every broadcast of
    /// the gap, our own earlier updates included, and those must not come back to us.
    replay_end: Option<u64>,
}

impl Position {
    /// The position a fresh registration starts from.
    pub(crate) fn new(registration: &Registration) -> Self {
        Self {
            epoch: registration.epoch,
            seq: registration.seq.unwrap_or(0),
            secret: registration.resume_secret.clone(),
            replay_end: None,
        }
    }

    /// Where we are, if the relay numbers broadcasts.
    pub(crate) fn current(&self) -> Option<SeqPosition> {
        Some(SeqPosition {
            epoch: self.epoch?,
            seq: self.seq,
        })
    }

    /// What to present when registering again; `None` if the relay never offered resuming.
    pub(crate) fn resume_request(&self) -> Option<ResumeRequest> {
        Some(ResumeRequest {
            epoch: self.epoch?,
            seq: self.seq,
            secret: self.secret.clone()?,
        })
    }

    /// Takes in a new registration that presented `asked` (if any). Returns, for a resume,
    /// the event that tells the application whether its state is still good, with the
    /// position its state must start from when it is not.
    pub(crate) fn reregistered(
        &mut self,
        registration: &Registration,
        asked: Option<&ResumeRequest>,
    ) -> Option<(Event, Option<SeqPosition>)> {
        let resumed = asked.is_some() && registration.resumed.as_deref() == Some(RESUMED_OK);
        self.secret = registration.resume_secret.clone();
        if resumed {
            // Same epoch; the missed broadcasts follow, up to the relay's latest.
            self.replay_end = registration.seq.filter(|end| *end > self.seq);
            return Some((Event::Resynced, None));
        }
        self.epoch = registration.epoch;
        self.seq = registration.seq.unwrap_or(0);
        self.replay_end = None;
        asked?;
        Some((Event::ResyncRequired, self.current()))
    }

    /// Records broadcast `seq` from `from`; returns whether to deliver it. `me` is our name:
    /// a broadcast under it within a replay is an update we sent ourselves.
    pub(crate) fn broadcast(&mut self, seq: Option<u64>, from: &str, me: &str) -> bool {
        let Some(seq) = seq else {
            return true;
        };
        self.seq = seq;
        let Some(end) = self.replay_end else {
            return true;
        };
        if seq >= end {
            self.replay_end = None;
        }
        !(seq <= end && from == me)
    }

    /// Records a snapshot: the state as of `seq`, which the broadcasts after it build on.
    pub(crate) fn snapshot(&mut self, seq: u64) -> Option<SeqPosition> {
        self.seq = seq;
        self.current()
    }

    /// Whether a snapshot taken at `at` still belongs to the session as it is now.
    pub(crate) fn is_current_epoch(&self, at: SeqPosition) -> bool {
        self.epoch == Some(at.epoch)
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn registration(epoch: u64, seq: u64, resumed: Option<&str>) -> Registration {
        Registration {
            id: Uuid::nil(),
            peers: vec![],
            capabilities: vec!["resume".to_owned()],
            epoch: Some(epoch),
            seq: Some(seq),
            resume_secret: Some(format!("secret-{seq}")),
            resumed: resumed.map(str::to_owned),
        }
    }

    #[test]
    fn a_resume_continues_and_skips_our_own_replayed_updates() {
        let mut position = Position::new(&registration(7, 3, None));
        assert!(position.broadcast(Some(4), "alice", "bob"));
        let asked = position.resume_request().unwrap();
        assert_eq!(
            (asked.epoch, asked.seq, asked.secret.as_str()),
            (7, 4, "secret-3")
        );
        let (event, at) = position
            .reregistered(&registration(7, 8, Some("ok")), Some(&asked))
            .unwrap();
        assert_eq!((event, at), (Event::Resynced, None));
        assert!(position.broadcast(Some(5), "alice", "bob"));
        assert!(
            !position.broadcast(Some(6), "bob", "bob"),
            "our own, replayed"
        );
        assert!(position.broadcast(Some(8), "alice", "bob"));
        // Past the replay, the name means another registration of it: delivered.
        assert!(position.broadcast(Some(9), "bob", "bob"));
        assert_eq!(position.resume_request().unwrap().secret, "secret-8");
    }

    #[test]
    fn a_refused_resume_starts_over_at_the_relay_position() {
        let mut position = Position::new(&registration(7, 3, None));
        let asked = position.resume_request().unwrap();
        let (event, at) = position
            .reregistered(&registration(9, 40, Some("resync_required")), Some(&asked))
            .unwrap();
        assert_eq!(event, Event::ResyncRequired);
        assert_eq!(at, Some(SeqPosition { epoch: 9, seq: 40 }));
        assert_eq!(
            position.snapshot(30),
            Some(SeqPosition { epoch: 9, seq: 30 })
        );
        assert!(
            position.broadcast(Some(31), "bob", "bob"),
            "part of the rebuild"
        );
        assert!(position.is_current_epoch(SeqPosition { epoch: 9, seq: 1 }));
        assert!(!position.is_current_epoch(SeqPosition { epoch: 7, seq: 1 }));
    }

    #[test]
    fn without_asking_nothing_is_reported_and_old_relays_offer_nothing() {
        let mut position = Position::new(&registration(7, 3, None));
        assert_eq!(position.reregistered(&registration(8, 0, None), None), None);
        let old = Registration {
            epoch: None,
            seq: None,
            resume_secret: None,
            ..registration(0, 0, None)
        };
        let position = Position::new(&old);
        assert_eq!(position.resume_request(), None);
        assert_eq!(position.current(), None);
    }
}
