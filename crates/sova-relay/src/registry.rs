//! Who is connected: sessions, names, capacity, and the member lists fan-out reads.
//!
//! One std mutex guards the session map and the instance count, so registration is
//! atomic (capacity and name are checked and claimed in one step). Each session keeps its
//! member list as an immutable snapshot behind its own small lock: fan-out clones an `Arc`
//! and iterates without holding anything, so relaying never contends with registration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sova_relay_protocol::{encode_frame, InstanceInfo, Message};
use thiserror::Error;
use uuid::Uuid;

use crate::connection::Peer;
use crate::metrics;
use crate::outbox::Outbox;
use crate::tokens::Role;

/// One registered instance, as the other members of its session see it.
pub(crate) struct Member {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) connected_at: SystemTime,
    /// Milliseconds since the Unix epoch of the last message received; atomic so the
    /// connection can update it without taking a lock per message.
    last_activity_ms: AtomicU64,
    pub(crate) outbox: Outbox,
    /// Whether it asked for `InstanceConnected` notices.
    pub(crate) presence: bool,
    /// Whether it answers the relay's pings, so its liveness can be judged by pongs.
    pub(crate) pong: bool,
    /// Where it connected from, and how.
    pub(crate) peer: Peer,
    /// Its session's label (never the token).
    pub(crate) session_label: String,
    /// What its session token allows.
    pub(crate) role: Role,
}

impl Member {
    /// Records that a message just arrived from this instance.
    pub(crate) fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When the last message arrived from this instance (registration counts).
    pub(crate) fn last_activity(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }

    fn info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.id,
            name: self.name.clone(),
            version: self.version.clone(),
            connected_at: self.connected_at,
            last_activity: self.last_activity(),
        }
    }
}

/// The members of one session.
pub(crate) struct Session {
    /// Short, non-reversible label for logs: never the token itself.
    pub(crate) label: String,
    members: Mutex<Arc<[Arc<Member>]>>,
}

impl Session {
    /// The current members; cheap, and safe to iterate while others join and leave.
    pub(crate) fn members(&self) -> Arc<[Arc<Member>]> {
        lock(&self.members).clone()
    }
}

/// A session as the status page and API see it.
pub(crate) struct SessionView {
    /// The token, shown only with `--show-session-names`.
    pub(crate) token: Option<String>,
    /// Short hash of the token, or `default`.
    pub(crate) label: String,
    pub(crate) members: Arc<[Arc<Member>]>,
}

/// What a connection asks for when it registers.
pub(crate) struct NewMember {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) session_token: Option<String>,
    pub(crate) outbox: Outbox,
    pub(crate) presence: bool,
    pub(crate) pong: bool,
    pub(crate) peer: Peer,
    pub(crate) role: Role,
    /// Capabilities to list in the response; `None` when the client asked for none.
    pub(crate) granted: Option<Vec<String>>,
}

/// Why a registration was refused; the texts are the protocol's.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum RegisterError {
    #[error("Maximum instances ({0}) reached")]
    Full(usize),
    #[error("Instance name '{0}' already in use")]
    NameTaken(String),
}

impl RegisterError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::NameTaken(_) => "name_taken",
        }
    }
}

/// All sessions of the relay.
pub(crate) struct Registry {
    state: Mutex<State>,
    max_instances: usize,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Option<String>, Arc<Session>>,
    instances: usize,
}

impl Registry {
    pub(crate) fn new(max_instances: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_instances,
        }
    }

    /// Checks capacity and name and adds the instance, in one step. The
    /// `RegistrationResponse` is queued to the new member before any other member can see
    /// it, so it always arrives first, and every update relayed afterwards reaches it.
    pub(crate) fn register(
        self: &Arc<Self>,
        new: NewMember,
    ) -> Result<Registration, RegisterError> {
        let mut state = lock(&self.state);
        if state.instances >= self.max_instances {
            return Err(RegisterError::Full(self.max_instances));
        }
        let session = state
            .sessions
            .entry(new.session_token.clone())
            .or_insert_with(|| {
                Arc::new(Session {
                    label: session_label(new.session_token.as_deref()),
                    members: Mutex::new(Arc::from([])),
                })
            })
            .clone();
        let mut members = lock(&session.members);
        if members.iter().any(|m| m.name == new.name) {
            drop(members);
            self.drop_session_if_empty(&mut state, &new.session_token);
            return Err(RegisterError::NameTaken(new.name));
        }
        let now = SystemTime::now();
        let member = Arc::new(Member {
            id: Uuid::new_v4(),
            name: new.name,
            version: new.version,
            connected_at: now,
            last_activity_ms: AtomicU64::new(now_ms()),
            outbox: new.outbox,
            presence: new.presence,
            pong: new.pong,
            peer: new.peer,
            role: new.role,
            session_label: session.label.clone(),
        });
        let response = Message::RegistrationResponse {
            success: true,
            message: format!("Registered as {}", member.name),
            assigned_id: Some(member.id),
            current_instances: members.iter().map(|m| m.info()).collect(),
            capabilities: new.granted,
        };
        let _ = member.outbox.push(encode_frame(&response));
        let joined = encode_frame(&Message::InstanceConnected {
            instance_id: member.id,
            instance_name: member.name.clone(),
        });
        for other in members.iter().filter(|m| m.presence) {
            other.outbox.deliver(joined.clone());
        }
        *members = members.iter().cloned().chain([member.clone()]).collect();
        drop(members);
        state.instances += 1;
        metrics::set_population(state.instances, state.sessions.len());
        Ok(Registration {
            registry: self.clone(),
            session_token: new.session_token,
            session,
            member,
        })
    }

    /// Removes a member and tells the rest of its session, exactly once.
    fn unregister(&self, token: &Option<String>, session: &Session, member: &Member) {
        let mut state = lock(&self.state);
        let mut members = lock(&session.members);
        let before = members.len();
        *members = members
            .iter()
            .filter(|m| m.id != member.id)
            .cloned()
            .collect();
        if members.len() == before {
            return;
        }
        let left = encode_frame(&Message::InstanceDisconnected {
            instance_id: member.id,
            instance_name: member.name.clone(),
        });
        for other in members.iter() {
            other.outbox.deliver(left.clone());
        }
        drop(members);
        state.instances -= 1;
        self.drop_session_if_empty(&mut state, token);
        metrics::set_population(state.instances, state.sessions.len());
    }

    fn drop_session_if_empty(&self, state: &mut State, token: &Option<String>) {
        let empty = state
            .sessions
            .get(token)
            .is_some_and(|s| lock(&s.members).is_empty());
        if empty {
            state.sessions.remove(token);
        }
    }

    /// Every session with its members, for the status page and the API.
    pub(crate) fn sessions(&self) -> Vec<SessionView> {
        let state = lock(&self.state);
        state
            .sessions
            .iter()
            .map(|(token, session)| SessionView {
                token: token.clone(),
                label: session.label.clone(),
                members: session.members(),
            })
            .collect()
    }

    /// The registered instance with this id, if any.
    pub(crate) fn find(&self, id: Uuid) -> Option<Arc<Member>> {
        let state = lock(&self.state);
        state
            .sessions
            .values()
            .find_map(|session| session.members().iter().find(|m| m.id == id).cloned())
    }

    /// Number of registered instances, across sessions.
    pub(crate) fn instance_count(&self) -> usize {
        lock(&self.state).instances
    }
}

/// A connection's membership; dropping it unregisters the instance, whatever ended the
/// connection.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    session_token: Option<String>,
    pub(crate) session: Arc<Session>,
    pub(crate) member: Arc<Member>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .unregister(&self.session_token, &self.session, &self.member);
    }
}

/// `default`, or the first 8 hex digits of the token's SHA-256.
fn session_label(token: Option<&str>) -> String {
    match token {
        None => "default".to_owned(),
        Some(token) => Sha256::digest(token.as_bytes())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Locks a mutex, carrying on if a panicking thread poisoned it: every critical section
/// here leaves the data consistent before anything that could panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
