//! Connect and register: one attempt, bounded by `connect_timeout`.

use std::io;

use sova_relay_protocol::{
    encode_frame, validate_instance_name, Message, ResumeRequest, CAPABILITY_PONG,
    CAPABILITY_PRESENCE, CAPABILITY_RESUME, CAPABILITY_SNAPSHOT,
};
use uuid::Uuid;

use crate::transport::{Received, Target, Transport};
use crate::{ClientConfig, ClientError, Peer};

/// What the relay granted.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    /// Our id until the connection ends; every `StateUpdate` must carry it.
    pub(crate) id: Uuid,
    /// The other instances of the session at registration time.
    pub(crate) peers: Vec<Peer>,
    /// Capabilities the relay granted (empty for relays that predate extensions).
    pub(crate) capabilities: Vec<String>,
    /// The session's epoch (relays with extensions).
    pub(crate) epoch: Option<u64>,
    /// The session's latest broadcast at registration (relays with extensions).
    pub(crate) seq: Option<u64>,
    /// With `resume`: the secret to present when resuming this registration.
    pub(crate) resume_secret: Option<String>,
    /// When we asked to resume: `ok` or `resync_required`.
    pub(crate) resumed: Option<String>,
}

/// Connects to `target` and registers as `config.name`, resuming where `resume` says.
pub(crate) async fn register(
    target: &Target,
    config: &ClientConfig,
    resume: Option<ResumeRequest>,
) -> Result<(Transport, Registration), ClientError> {
    validate_instance_name(&config.name).map_err(ClientError::InvalidName)?;
    let limit = config.connect_timeout;
    let attempt = async {
        let mut transport = Transport::connect(target, config.max_message_size).await?;
        transport
            .send([encode_frame(&register_message(config, resume))], limit)
            .await?;
        let registration = await_response(&mut transport, config).await?;
        Ok((transport, registration))
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Err(ClientError::Timeout(limit)))
}

fn register_message(config: &ClientConfig, resume: Option<ResumeRequest>) -> Message {
    let mut capabilities = vec![CAPABILITY_PONG.to_owned(), CAPABILITY_PRESENCE.to_owned()];
    if config.resume {
        capabilities.push(CAPABILITY_RESUME.to_owned());
    }
    if config.snapshots {
        capabilities.push(CAPABILITY_SNAPSHOT.to_owned());
    }
    Message::RegisterInstance {
        instance_name: config.name.clone(),
        version: config.sova_version.clone(),
        session_token: config.session_token.clone(),
        capabilities: Some(capabilities),
        resume: resume.filter(|_| config.resume),
    }
}

async fn await_response(
    transport: &mut Transport,
    config: &ClientConfig,
) -> Result<Registration, ClientError> {
    loop {
        let message = match transport.recv().await? {
            Received::Message(message) => message?,
            Received::Closed(reason) => {
                let text = "relay closed the connection during registration";
                return Err(ClientError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    match reason {
                        Some(reason) => format!("{text}: {reason}"),
                        None => text.to_owned(),
                    },
                )));
            }
        };
        match message {
            Message::RegistrationResponse {
                success: true,
                assigned_id: Some(id),
                current_instances,
                capabilities,
                epoch,
                seq,
                resume_secret,
                resumed,
                ..
            } => {
                let peers = current_instances
                    .into_iter()
                    .map(|info| Peer {
                        id: info.id,
                        name: info.name,
                    })
                    .collect();
                let capabilities = capabilities.unwrap_or_default();
                return Ok(Registration {
                    id,
                    peers,
                    capabilities,
                    epoch,
                    seq,
                    resume_secret,
                    resumed,
                });
            }
            Message::RegistrationResponse {
                success: true,
                assigned_id: None,
                ..
            } => {
                return Err(ClientError::Unexpected(
                    "registration succeeded without an id".to_owned(),
                ))
            }
            Message::RegistrationResponse { message, .. } | Message::Error { message } => {
                return Err(ClientError::from_relay_message(message))
            }
            Message::Ping { timestamp } => {
                let pong = encode_frame(&Message::Pong { timestamp });
                transport.send([pong], config.request_timeout).await?;
            }
            other => {
                return Err(ClientError::Unexpected(format!(
                    "{} before the registration response",
                    other.kind()
                )))
            }
        }
    }
}
