//! What a Sova 0.1.x instance in the field decodes: its own copy of the message types, with
//! `update_data` a plain `Vec<u8>` and none of the extensions. Anything the relay sends to a
//! client that asked for no extension must decode into this, or that instance fails hard.

use std::time::SystemTime;

use serde::Deserialize;
use uuid::Uuid;

/// The messages as Sova 0.1.x has them.
#[derive(Debug, Deserialize)]
#[allow(dead_code)] // fields are read by `Debug` and by the decoding itself
pub enum FieldMessage {
    RegisterInstance {
        instance_name: String,
        version: String,
        session_token: Option<String>,
    },
    RegistrationResponse {
        success: bool,
        message: String,
        assigned_id: Option<Uuid>,
        current_instances: Vec<FieldInstanceInfo>,
    },
    StateUpdate {
        source_instance_id: Uuid,
        timestamp: u64,
        update_data: Vec<u8>,
    },
    StateBroadcast {
        source_instance_name: String,
        timestamp: u64,
        update_data: Vec<u8>,
    },
    InstanceDisconnected {
        instance_id: Uuid,
        instance_name: String,
    },
    Ping {
        timestamp: u64,
    },
    Pong {
        timestamp: u64,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct FieldInstanceInfo {
    id: Uuid,
    name: String,
    version: String,
    connected_at: SystemTime,
    last_activity: SystemTime,
}

/// Decodes a frame body as an instance in the field does; panics with `what` if it can't.
pub fn must_decode(body: &[u8], what: &str) -> FieldMessage {
    rmp_serde::from_slice(body).unwrap_or_else(|err| {
        panic!("{what}: a Sova 0.1.x instance cannot decode {body:02x?}: {err}")
    })
}
