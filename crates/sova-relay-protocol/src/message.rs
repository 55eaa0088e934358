use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::UpdateData;

/// Every message of the protocol, in the externally tagged form Sova instances speak:
/// a one-entry map `{VariantName: {field: value, ..}}`.
///
/// Fields marked "extension" are only ever sent to a client that asked for them, or are
/// extra fields that clients in the field ignore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message of an instance: who it is and which session it joins.
    RegisterInstance {
        /// Name shown to the other instances, unique within the session.
        instance_name: String,
        /// Sova version; must equal the relay's exactly.
        version: String,
        /// Selects the session; `None` is the default session.
        #[serde(default)]
        session_token: Option<String>,
        /// Extension: capabilities the client asks for (`pong`, `presence`, `resume`,
        /// `snapshot`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capabilities: Option<Vec<String>>,
        /// Extension (`resume`): where the client's previous connection left off.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeRequest>,
    },
    /// The relay's answer to `RegisterInstance`.
    RegistrationResponse {
        /// Whether the instance is now registered.
        success: bool,
        /// Human-readable outcome.
        message: String,
        /// The instance's id, on success.
        assigned_id: Option<Uuid>,
        /// The other instances of the session.
        #[serde(default)]
        current_instances: Vec<InstanceInfo>,
        /// Extension: the capabilities granted, present when the client asked for any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        capabilities: Option<Vec<String>>,
        /// Extension: the session's epoch (changes when the session is recreated).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        /// Extension: `seq` of the session's latest broadcast at registration.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Extension (`resume`): the secret that lets a later connection resume this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_secret: Option<String>,
        /// Extension (`resume`): `ok` (missed broadcasts follow) or `resync_required`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resumed: Option<String>,
    },
    /// An edit of the sequencer state, from an instance to the relay.
    StateUpdate {
        /// The sender's own id, as assigned at registration.
        source_instance_id: Uuid,
        /// Sender's timestamp, forwarded unchanged.
        timestamp: u64,
        /// The opaque edit, forwarded verbatim.
        update_data: UpdateData,
    },
    /// A `StateUpdate` relayed to the other instances of the session.
    StateBroadcast {
        /// Name of the instance that sent the update.
        source_instance_name: String,
        /// The sender's timestamp, unchanged.
        timestamp: u64,
        /// The sender's `update_data`, byte for byte.
        update_data: UpdateData,
        /// Extension: position in the session's history (1, 2, 3, … per epoch).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// An instance left the session.
    InstanceDisconnected {
        /// Id of the instance that left.
        instance_id: Uuid,
        /// Its name, now free.
        instance_name: String,
    },
    /// Extension (`presence`): an instance joined the session.
    InstanceConnected {
        /// Id of the new instance.
        instance_id: Uuid,
        /// Its name.
        instance_name: String,
    },
    /// Liveness probe; answered with `Pong` carrying the same timestamp.
    Ping {
        /// Milliseconds since the Unix epoch by convention; echoed unchanged.
        timestamp: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The timestamp of the `Ping` being answered.
        timestamp: u64,
    },
    /// Extension (`snapshot`): the session's state as of broadcast `seq`. From a client,
    /// a snapshot to keep; from the relay, the snapshot a joining client starts from.
    SessionSnapshot {
        /// The last broadcast the state contains.
        seq: u64,
        /// The opaque state, forwarded verbatim.
        data: UpdateData,
    },
    /// Something went wrong; the text says what.
    Error {
        /// Human-readable reason.
        message: String,
    },
}

impl Message {
    /// The variant's name as it appears on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::RegisterInstance { .. } => "RegisterInstance",
            Message::RegistrationResponse { .. } => "RegistrationResponse",
            Message::StateUpdate { .. } => "StateUpdate",
            Message::StateBroadcast { .. } => "StateBroadcast",
            Message::InstanceDisconnected { .. } => "InstanceDisconnected",
            Message::InstanceConnected { .. } => "InstanceConnected",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::SessionSnapshot { .. } => "SessionSnapshot",
            Message::Error { .. } => "Error",
        }
    }

    /// Shorthand for an `Error` message.
    pub fn error(message: impl Into<String>) -> Self {
        Message::Error {
            message: message.into(),
        }
    }
}

/// Where a resuming client's previous connection left off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    /// The session epoch of the last broadcast received.
    pub epoch: u64,
    /// The `seq` of the last broadcast received.
    pub seq: u64,
    /// The `resume_secret` of the previous registration.
    pub secret: String,
}

/// One registered instance, as listed in `RegistrationResponse::current_instances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Id assigned by the relay.
    pub id: Uuid,
    /// Instance name.
    pub name: String,
    /// Sova version it registered with.
    pub version: String,
    /// When it registered.
    pub connected_at: SystemTime,
    /// When it last sent a message.
    pub last_activity: SystemTime,
}
