//! Who is connected: sessions, names, capacity.
//!
//! One std mutex guards the session map and the instance count, so registration is
//! atomic (capacity and name are checked and claimed in one step, a resumed connection takes
//! over its old registration in one step). Relaying takes only its own session's lock
//! (`session.rs`), never this one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sova_relay_protocol::{
    encode_frame, InstanceInfo, Message, ResumeRequest, RESUMED_OK, RESUMED_RESYNC_REQUIRED,
};
use subtle::ConstantTimeEq;
use thiserror::Error;
use uuid::Uuid;

use crate::cluster::{self, Claim, Cluster};
use crate::connection::Peer;
use crate::metrics;
use crate::outbox::Outbox;
use crate::reason::DisconnectReason;
use crate::session::{HistoryLimits, Sequencer, Session, SessionState};
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
    /// Presented by a later connection to take over this registration (`resume`); kept
    /// across resumes, so it names the instance rather than one connection of it.
    pub(crate) resume_secret: Option<String>,
    /// Identifies the instance across resumed connections (from its resume secret, else
    /// random): its own updates are never replayed to it, and a snapshot it publishes is
    /// known to contain all of them.
    pub(crate) lineage: u64,
    /// Whether it may publish and receive snapshots.
    pub(crate) snapshot: bool,
    /// `seq` of this instance's latest broadcast, so a snapshot it publishes is known to
    /// contain its own updates up to there.
    pub(crate) last_sent_seq: AtomicU64,
    /// In cluster mode: how many of its updates this node published, and how many have
    /// come back from the stream with their `seq` (a snapshot waits until they match).
    pub(crate) published: AtomicU64,
    pub(crate) sequenced: AtomicU64,
    pub(crate) sequenced_changed: tokio::sync::Notify,
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

/// A session as the status page and API see it.
pub(crate) struct SessionView {
    /// The token, shown only with `--show-session-names`.
    pub(crate) token: Option<String>,
    /// Short hash of the token, or `default`.
    pub(crate) label: String,
    /// Its name in the cluster (cluster mode).
    pub(crate) cluster_key: String,
    pub(crate) members: Arc<[Arc<Member>]>,
}

/// What a connection asks for when it registers.
pub(crate) struct NewMember {
    /// The id it will have (chosen before registering: the cluster records it).
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) session_token: Option<String>,
    pub(crate) outbox: Outbox,
    pub(crate) presence: bool,
    pub(crate) pong: bool,
    pub(crate) peer: Peer,
    pub(crate) role: Role,
    pub(crate) snapshot: bool,
    /// Capabilities to list in the response; `None` when the client asked for none.
    pub(crate) granted: Option<Vec<String>>,
    /// Whether to issue a resume secret (capability `resume`).
    pub(crate) resumable: bool,
    /// Where the client's previous connection left off, when it resumes.
    pub(crate) resume: Option<ResumeRequest>,
    /// The resume secret it will hold (capability `resume`): the one it presents when it
    /// resumes, so the secret names the instance rather than one connection of it.
    pub(crate) secret: Option<String>,
}

impl NewMember {
    /// The resume secret for a client that asked for `resume`, given what it presented.
    pub(crate) fn secret_for(resumable: bool, resume: Option<&ResumeRequest>) -> Option<String> {
        resumable.then(|| match resume {
            Some(resume) => resume.secret.clone(),
            None => Uuid::new_v4().simple().to_string(),
        })
    }
}

/// Why a registration was refused; the texts are the protocol's.
#[derive(Debug, Error, PartialEq, Eq)]
pub(crate) enum RegisterError {
    #[error("Maximum instances ({0}) reached")]
    Full(usize),
    #[error("Instance name '{0}' already in use")]
    NameTaken(String),
    #[error("Cluster unavailable: try again shortly")]
    Unavailable,
}

impl RegisterError {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Full(_) => "full",
            Self::NameTaken(_) => "name_taken",
            Self::Unavailable => "cluster_unavailable",
        }
    }
}

/// All sessions of the relay.
pub(crate) struct Registry {
    state: Mutex<State>,
    max_instances: usize,
    history: HistoryLimits,
    /// In cluster mode: names and capacity are the cluster's, sessions are ordered by it.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

#[derive(Default)]
struct State {
    sessions: HashMap<Option<String>, Arc<Session>>,
    /// The same sessions by cluster key (cluster mode only).
    by_key: HashMap<String, Arc<Session>>,
    /// Registrations under way per session (cluster mode): the session stays meanwhile.
    pins: HashMap<Option<String>, usize>,
    instances: usize,
}

impl Registry {
    pub(crate) fn new(
        max_instances: usize,
        history: HistoryLimits,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_instances,
            history,
            cluster,
        }
    }

    /// The session of `token`, created if needed (and, in cluster mode, its feed started).
    fn session_for(&self, state: &mut State, token: &Option<String>) -> Arc<Session> {
        if let Some(session) = state.sessions.get(token) {
            return session.clone();
        }
        let key = match &self.cluster {
            Some(_) => cluster::session_key(token.as_deref()),
            None => String::new(),
        };
        let sequencer = match &self.cluster {
            Some(cluster) => Sequencer::Cluster {
                epoch: cluster.epoch(),
                updates_subject: cluster.updates_subject(&key),
            },
            None => Sequencer::Local,
        };
        let session = Arc::new(Session::new(
            session_label(token.as_deref()),
            key.clone(),
            self.history,
            sequencer,
        ));
        state.sessions.insert(token.clone(), session.clone());
        if let Some(cluster) = &self.cluster {
            state.by_key.insert(key, session.clone());
            cluster.start_feed(&session);
        }
        session
    }

    /// Keeps `token`'s session (creating it) while a cluster registration is under way.
    pub(crate) fn pin_session(self: &Arc<Self>, token: &Option<String>) -> SessionPin {
        let mut state = lock(&self.state);
        let session = self.session_for(&mut state, token);
        *state.pins.entry(token.clone()).or_default() += 1;
        SessionPin {
            registry: self.clone(),
            token: token.clone(),
            session,
        }
    }

    /// The session with this cluster key, if it has members (or registrations) here.
    pub(crate) fn session_by_key(&self, key: &str) -> Option<Arc<Session>> {
        lock(&self.state).by_key.get(key).cloned()
    }

    /// Checks capacity and name and adds the instance, in one step. The
    /// `RegistrationResponse` (and, for a resuming or snapshot client, what it missed) is
    /// queued to the new member before any other member can see it, so it always arrives
    /// first, and every update relayed afterwards reaches it.
    pub(crate) fn register(
        self: &Arc<Self>,
        new: NewMember,
    ) -> Result<Registration, RegisterError> {
        let mut state = lock(&self.state);
        let session = self.session_for(&mut state, &new.session_token);
        let mut session_state = session.lock();
        let holder = session_state
            .members
            .iter()
            .find(|m| m.name == new.name)
            .cloned();
        let taking_over = holder.filter(|holder| presents_secret_of(&new, holder));
        let refusal = if taking_over.is_some() {
            None
        } else if state.instances >= self.max_instances && self.cluster.is_none() {
            Some(RegisterError::Full(self.max_instances))
        } else if session_state.members.iter().any(|m| m.name == new.name) {
            Some(RegisterError::NameTaken(new.name.clone()))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            drop(session_state);
            self.drop_session_if_empty(&mut state, &new.session_token);
            return Err(refusal);
        }
        if let Some(old) = &taking_over {
            remove_member(&mut session_state, old);
            old.outbox.request_close(DisconnectReason::Superseded);
            state.instances -= 1;
        }
        let member = Arc::new(Member::new(&new, &session.label));
        let resumed = welcome(
            &session,
            &mut session_state,
            &member,
            &new,
            self.cluster.as_deref(),
        );
        let joined = encode_frame(&Message::InstanceConnected {
            instance_id: member.id,
            instance_name: member.name.clone(),
        });
        for other in session_state.members.iter().filter(|m| m.presence) {
            other.outbox.deliver(joined.clone());
        }
        session_state.members = session_state
            .members
            .iter()
            .cloned()
            .chain([member.clone()])
            .collect();
        drop(session_state);
        state.instances += 1;
        metrics::set_population(state.instances, state.sessions.len());
        Ok(Registration {
            registry: self.clone(),
            session_token: new.session_token,
            session,
            member,
            resumed,
            claim: None,
        })
    }

    /// Removes a member and tells the rest of its session, exactly once.
    fn unregister(&self, token: &Option<String>, session: &Session, member: &Member) {
        let mut state = lock(&self.state);
        let mut session_state = session.lock();
        if !remove_member(&mut session_state, member) {
            return;
        }
        drop(session_state);
        state.instances -= 1;
        self.drop_session_if_empty(&mut state, token);
        metrics::set_population(state.instances, state.sessions.len());
    }

    fn drop_session_if_empty(&self, state: &mut State, token: &Option<String>) {
        let empty = state
            .sessions
            .get(token)
            .is_some_and(|s| s.lock().members.is_empty());
        if empty && !state.pins.contains_key(token) {
            if let Some(session) = state.sessions.remove(token) {
                state.by_key.remove(&session.cluster_key);
                session.close();
            }
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
                cluster_key: session.cluster_key.clone(),
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

    /// Closes every registered instance with `reason`; how many.
    pub(crate) fn close_all(&self, reason: &DisconnectReason) -> usize {
        let sessions: Vec<Arc<Session>> = lock(&self.state).sessions.values().cloned().collect();
        let mut closed = 0;
        for session in sessions {
            for member in session.members().iter() {
                member.outbox.request_close(reason.clone());
                closed += 1;
            }
        }
        closed
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
    /// For a resuming client: whether what it missed was replayed.
    pub(crate) resumed: Option<bool>,
    /// In cluster mode, the name it holds in NATS (released after the local unregister).
    pub(crate) claim: Option<Claim>,
}

/// Keeps a session while a cluster registration waits for NATS.
pub(crate) struct SessionPin {
    registry: Arc<Registry>,
    token: Option<String>,
    session: Arc<Session>,
}

impl SessionPin {
    pub(crate) async fn wait_ready(&self, within: Duration) -> bool {
        self.session.wait_ready(within).await
    }

    pub(crate) fn label(&self) -> &str {
        &self.session.label
    }

    pub(crate) fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for SessionPin {
    fn drop(&mut self) {
        let mut state = lock(&self.registry.state);
        if let Some(pins) = state.pins.get_mut(&self.token) {
            *pins -= 1;
            if *pins == 0 {
                state.pins.remove(&self.token);
            }
        }
        self.registry.drop_session_if_empty(&mut state, &self.token);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .unregister(&self.session_token, &self.session, &self.member);
    }
}

impl Member {
    fn new(new: &NewMember, session_label: &str) -> Self {
        let now = SystemTime::now();
        // A resuming instance keeps its secret, so its lineage outlives each connection.
        let secret = new.secret.clone();
        Member {
            id: new.id,
            name: new.name.clone(),
            version: new.version.clone(),
            connected_at: now,
            last_activity_ms: AtomicU64::new(now_ms()),
            outbox: new.outbox.clone(),
            presence: new.presence,
            pong: new.pong,
            peer: new.peer,
            role: new.role,
            session_label: session_label.to_owned(),
            lineage: secret
                .as_deref()
                .map_or_else(|| Uuid::new_v4().as_u64_pair().0, lineage),
            resume_secret: secret,
            snapshot: new.snapshot,
            last_sent_seq: AtomicU64::new(0),
            published: AtomicU64::new(0),
            sequenced: AtomicU64::new(0),
            sequenced_changed: tokio::sync::Notify::new(),
        }
    }
}

fn lineage(secret: &str) -> u64 {
    let digest = Sha256::digest(secret.as_bytes());
    u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ])
}

/// Whether `new` resumes `holder`'s registration: it presents the secret issued to it.
fn presents_secret_of(new: &NewMember, holder: &Member) -> bool {
    let (Some(resume), Some(secret)) = (&new.resume, &holder.resume_secret) else {
        return false;
    };
    let given = Sha256::digest(resume.secret.as_bytes());
    let issued = Sha256::digest(secret.as_bytes());
    given.ct_eq(&issued).into()
}

/// Takes `member` out of its session and tells the others; false if it was not there.
fn remove_member(state: &mut SessionState, member: &Member) -> bool {
    let before = state.members.len();
    state.members = state
        .members
        .iter()
        .filter(|m| m.id != member.id)
        .cloned()
        .collect();
    if state.members.len() == before {
        return false;
    }
    let left = encode_frame(&Message::InstanceDisconnected {
        instance_id: member.id,
        instance_name: member.name.clone(),
    });
    for other in state.members.iter() {
        other.outbox.deliver(left.clone());
    }
    true
}

/// Queues the response, then whatever the new member missed: the broadcasts after where a
/// resuming client left off, or the snapshot and what followed it. Returns, for a resuming
/// client, whether the replay covered the gap.
fn welcome(
    session: &Session,
    state: &mut SessionState,
    member: &Member,
    new: &NewMember,
    cluster: Option<&Cluster>,
) -> Option<bool> {
    let extended = new.granted.is_some();
    if new.resumable || new.snapshot {
        state.keep_history();
    }
    let limits = *session.limits();
    let resume_from = new
        .resume
        .as_ref()
        .filter(|r| new.resumable && r.epoch == session.epoch)
        .map(|r| r.seq);
    let can_replay = resume_from.is_some_and(|seq| state.can_replay_after(&limits, seq));
    if new.resume.is_some() {
        let sent = state.last_seq_of(member.lineage);
        member.last_sent_seq.fetch_max(sent, Ordering::Relaxed);
    }
    let resumed = new.resume.as_ref().map(|_| can_replay);
    let response = Message::RegistrationResponse {
        success: true,
        message: format!("Registered as {}", member.name),
        assigned_id: Some(member.id),
        current_instances: current_instances(session, state, member, cluster),
        capabilities: new.granted.clone(),
        epoch: extended.then_some(session.epoch),
        seq: extended.then_some(state.last_seq),
        resume_secret: member.resume_secret.clone(),
        resumed: resumed.map(|ok| {
            if ok {
                RESUMED_OK
            } else {
                RESUMED_RESYNC_REQUIRED
            }
            .to_owned()
        }),
    };
    member.outbox.deliver(encode_frame(&response));
    match (resume_from, can_replay) {
        (Some(seq), true) => state.replay_after(&limits, seq, member),
        _ if new.snapshot => state.replay_snapshot(&limits, &member.outbox),
        _ => false,
    };
    resumed
}

/// Every instance of the session, this node's and (in a cluster) the others'.
fn current_instances(
    session: &Session,
    state: &SessionState,
    member: &Member,
    cluster: Option<&Cluster>,
) -> Vec<InstanceInfo> {
    let mut instances: Vec<InstanceInfo> = state.members.iter().map(|m| m.info()).collect();
    if let Some(cluster) = cluster {
        let remote = cluster.remote_instances(&session.cluster_key);
        // A name just taken over here may still show its previous holder.
        instances.extend(
            remote
                .iter()
                .filter(|r| r.name != member.name)
                .map(|r| r.info()),
        );
    }
    instances
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
