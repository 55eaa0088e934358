//! What one well-behaved client checks about everything it receives, across its resumes:
//! broadcasts (seq order, payload, attribution, echo, per-source runs) and membership
//! notices. Pure bookkeeping over the [`Books`]; the connection lives in `member.rs`.

use std::collections::{HashMap, HashSet};

use sova_relay_protocol::{Message, UpdateData, RESUMED_OK};
use uuid::Uuid;

use super::ledger::{add, Ledger, SourceKind, Tally};
use super::update;
use super::verdict::{Inv, Verdicts};
use super::wire::Registered;

/// The shared books every client writes to.
#[derive(Default)]
pub struct Books {
    /// Who registered, and how each run ended.
    pub ledger: Ledger,
    /// Running totals.
    pub tally: Tally,
    /// Checks and violations.
    pub verdicts: Verdicts,
}

/// One source's updates as seen by this receiver.
#[derive(Debug, Clone, Copy)]
struct Run {
    last: u64,
    count: u64,
}

/// A receiver's state for one continuous life (fresh registration and its resumes).
pub struct Receiver {
    name: String,
    /// It sends nothing, so it must see every `seq` of its session.
    exact_seq: bool,
    /// Every id this client ever had: an update from one of them is an echo.
    ids: HashSet<Uuid>,
    /// The current registration's id.
    pub id: Uuid,
    /// Members at the fresh registration: their runs may have begun before.
    known_at_start: HashSet<Uuid>,
    /// Current members of the session as the notices tell it.
    view: HashSet<Uuid>,
    /// Members seen leaving, to tell a duplicate notice from an unknown one.
    gone: HashSet<Uuid>,
    runs: HashMap<Uuid, Run>,
    /// The latest `seq` received (or the registration's).
    pub last_seq: u64,
    /// `seq` at the fresh registration.
    pub base_seq: u64,
    /// After a resume, broadcasts up to here are the replay.
    replay_until: u64,
    /// Broadcasts received since the fresh registration.
    pub received: u64,
    /// `seq`s skipped, since the fresh registration (a sender's own updates).
    pub skipped: u64,
}

/// What the caller must handle itself.
pub enum Other {
    /// Nothing: the message was a broadcast or a notice.
    Handled,
    /// Anything else (`Error`, `Pong`, …).
    Message(Message),
}

impl Receiver {
    /// A receiver named `name`; `exact_seq` for one that sends nothing.
    pub fn new(name: &str, exact_seq: bool) -> Self {
        Receiver {
            name: name.to_owned(),
            exact_seq,
            ids: HashSet::new(),
            id: Uuid::nil(),
            known_at_start: HashSet::new(),
            view: HashSet::new(),
            gone: HashSet::new(),
            runs: HashMap::new(),
            last_seq: 0,
            base_seq: 0,
            replay_until: 0,
            received: 0,
            skipped: 0,
        }
    }

    /// Starts a new life after a fresh registration (or a resync).
    pub fn fresh(&mut self, reg: &Registered) {
        self.ids.insert(reg.id);
        self.id = reg.id;
        self.known_at_start = reg.members.iter().copied().collect();
        self.view = self.known_at_start.clone();
        self.gone.clear();
        self.runs.clear();
        self.last_seq = reg.seq;
        self.base_seq = reg.seq;
        self.replay_until = 0;
        self.received = 0;
        self.skipped = 0;
    }

    /// Continues the life after a resume; returns whether it was `ok` (else: a new life).
    pub fn resumed(&mut self, reg: &Registered, books: &Books) -> bool {
        if reg.resumed.as_deref() != Some(RESUMED_OK) {
            self.fresh(reg);
            return false;
        }
        books
            .verdicts
            .check(Inv::SeqOrder, reg.seq >= self.last_seq, || {
                format!(
                    "{}: resumed from seq {} but the session is at {}",
                    self.name, self.last_seq, reg.seq
                )
            });
        self.ids.insert(reg.id);
        self.id = reg.id;
        self.view = reg.members.iter().copied().collect();
        self.replay_until = reg.seq;
        true
    }

    /// Checks one message; returns what is not a broadcast or a notice.
    pub fn on_message(&mut self, message: Message, books: &Books) -> Other {
        match message {
            Message::StateBroadcast {
                source_instance_name,
                update_data,
                seq,
                ..
            } => self.on_broadcast(&source_instance_name, seq, &update_data, books),
            Message::InstanceConnected {
                instance_id,
                instance_name,
            } => {
                let fresh = instance_id != self.id && self.view.insert(instance_id);
                books.verdicts.check(Inv::Membership, fresh, || {
                    format!(
                        "{}: InstanceConnected for {instance_name} ({instance_id}) already a member",
                        self.name
                    )
                });
            }
            Message::InstanceDisconnected {
                instance_id,
                instance_name,
            } => self.on_departure(instance_id, &instance_name, books),
            other => return Other::Message(other),
        }
        Other::Handled
    }

    fn on_broadcast(&mut self, name: &str, seq: Option<u64>, data: &UpdateData, books: &Books) {
        let verdicts = &books.verdicts;
        let Some(seq) = seq else {
            return verdicts.fail(Inv::SeqOrder, || {
                format!("{}: broadcast without seq", self.name)
            });
        };
        let last = self.last_seq;
        verdicts.check(Inv::SeqOrder, seq > last, || {
            format!("{}: seq {seq} after {last} (from {name})", self.name)
        });
        if self.exact_seq {
            verdicts.check(Inv::SeqContiguous, seq == last + 1, || {
                format!("{}: seq {seq} after {last} (from {name})", self.name)
            });
        } else {
            self.skipped += seq.saturating_sub(last + 1);
        }
        self.last_seq = self.last_seq.max(seq);
        self.received += 1;
        let replayed = seq <= self.replay_until;
        add(
            if replayed {
                &books.tally.received_replayed
            } else {
                &books.tally.received_live
            },
            1,
        );
        let Some(numbered) = data.to_vec().ok().and_then(|bytes| update::decode(&bytes)) else {
            return verdicts.fail(Inv::Intact, || {
                format!("{}: corrupt update seq {seq} from {name}", self.name)
            });
        };
        let source = numbered.source;
        if self.ids.contains(&source) {
            let current = source == self.id;
            return verdicts.fail(Inv::NoEcho, || {
                format!(
                    "{}: got its own update #{} back as seq {seq} ({}, {})",
                    self.name,
                    numbered.counter,
                    if current {
                        "this registration"
                    } else {
                        "an earlier registration"
                    },
                    if replayed {
                        "in a resume's replay"
                    } else {
                        "live"
                    },
                )
            });
        }
        verdicts.pass(Inv::NoEcho);
        let Some(registered) = books.ledger.source(source) else {
            return verdicts.fail(Inv::Intact, || {
                format!(
                    "{}: update from unregistered id {source} as {name}",
                    self.name
                )
            });
        };
        verdicts.check(Inv::Intact, registered.name == name, || {
            format!(
                "{}: update of {} ({source}) attributed to {name}",
                self.name, registered.name
            )
        });
        if !replayed {
            verdicts.check(Inv::Membership, self.view.contains(&source), || {
                format!(
                    "{}: broadcast seq {seq} from non-member {name} ({source})",
                    self.name
                )
            });
        }
        self.on_counter(source, name, numbered.counter, registered.kind, verdicts);
    }

    fn on_counter(
        &mut self,
        source: Uuid,
        name: &str,
        counter: u64,
        kind: SourceKind,
        v: &Verdicts,
    ) {
        let contiguous = kind != SourceKind::Abuser;
        match self.runs.get_mut(&source) {
            None => {
                let may_start_late = self.known_at_start.contains(&source) || !contiguous;
                v.check(Inv::SourceOrder, may_start_late || counter == 1, || {
                    format!(
                        "{}: first update from {name}, which joined later, is #{counter}",
                        self.name
                    )
                });
                self.runs.insert(
                    source,
                    Run {
                        last: counter,
                        count: 1,
                    },
                );
            }
            Some(run) => {
                let ok = if contiguous {
                    counter == run.last + 1
                } else {
                    counter > run.last
                };
                v.check(Inv::SourceOrder, ok, || {
                    let what = if counter <= run.last {
                        "duplicate/reordered"
                    } else {
                        "gap"
                    };
                    format!(
                        "{}: {what}: #{counter} from {name} after #{}",
                        self.name, run.last
                    )
                });
                run.last = run.last.max(counter);
                run.count += 1;
            }
        }
    }

    fn on_departure(&mut self, id: Uuid, name: &str, books: &Books) {
        let verdicts = &books.verdicts;
        if !self.view.remove(&id) {
            let twice = self.gone.contains(&id);
            return verdicts.fail(Inv::Membership, || {
                let what = if twice { "a second" } else { "an" };
                format!(
                    "{}: {what} InstanceDisconnected for {name} ({id}), not a member",
                    self.name
                )
            });
        }
        self.gone.insert(id);
        let source = books.ledger.source(id);
        let named = source.as_ref().is_none_or(|s| s.name == name);
        verdicts.check(Inv::Membership, named, || {
            format!("{}: InstanceDisconnected names {id} {name}", self.name)
        });
        let run = self.runs.remove(&id);
        if let Some(source) = source {
            if source.kind == SourceKind::Abuser {
                books.ledger.witnessed(id, run.map_or(0, |r| r.count));
            } else if let Some(last) = source.last {
                self.check_tail(id, name, last, run, verdicts);
            }
        }
    }

    fn check_tail(&self, id: Uuid, name: &str, last: u64, run: Option<Run>, v: &Verdicts) {
        let ok = match run {
            Some(run) => run.last == last,
            None => last == 0 || self.known_at_start.contains(&id),
        };
        v.check(Inv::RunTail, ok, || {
            let seen = run.map_or("none".to_owned(), |r| format!("up to #{}", r.last));
            format!("{}: {name} ({id}) ended at #{last}; seen {seen}", self.name)
        });
    }

    /// At the end, once every sender has stopped: the tail of every remaining member's
    /// run. Returns the members in view.
    pub fn final_check(&self, books: &Books) -> HashSet<Uuid> {
        for id in &self.view {
            let Some(source) = books.ledger.source(*id) else {
                continue;
            };
            if let (SourceKind::Sender, Some(last)) = (source.kind, source.last) {
                let run = self.runs.get(id).copied();
                self.check_tail(*id, &source.name, last, run, &books.verdicts);
            }
        }
        self.view.clone()
    }
}

#[cfg(test)]
#[path = "receiver_tests.rs"]
mod tests;
