//! The handshake: the first frame within the deadline, who may register (TLS, tokens, IP
//! rules), and the registration itself, or its refusal with an `Error`.

use bytes::Bytes;
use futures_util::StreamExt;
use sova_relay_protocol::{
    decode_body, validate_instance_name, Message, ProtocolError, ResumeRequest, CAPABILITY_PONG,
    CAPABILITY_PRESENCE, CAPABILITY_RESUME, CAPABILITY_SNAPSHOT,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::{Connection, Inbound};
use crate::audit::AuditEvent;
use crate::reason::DisconnectReason;
use crate::registry::{NewMember, Registration};
use crate::tokens::Role;

const TLS_REQUIRED: &str =
    "TLS required: reconnect with TLS (tls://HOST:PORT, or wss://HOST:PORT/ws)";

/// What a client asked for in its `RegisterInstance`.
struct Request {
    name: String,
    version: String,
    session_token: Option<String>,
    capabilities: Option<Vec<String>>,
    resume: Option<ResumeRequest>,
}

impl Connection {
    pub(super) async fn handshake(
        &self,
        inbound: &mut impl Inbound,
        deadline: Instant,
    ) -> Option<Registration> {
        let body = self.first_frame(inbound, deadline).await?;
        if self.shared.config.tls_required && !self.peer.secure {
            info!("Rejected: plaintext connection while TLS is required");
            self.reject(TLS_REQUIRED, "tls_required", None);
            return None;
        }
        let Ok(Message::RegisterInstance {
            instance_name,
            version,
            session_token,
            capabilities,
            resume,
        }) = decode_body(body)
        else {
            warn!("First message was not a valid RegisterInstance");
            self.reject("Expected RegisterInstance message", "not_register", None);
            return None;
        };
        let request = Request {
            name: instance_name,
            version,
            session_token,
            capabilities,
            resume,
        };
        let role = self.admissible(&request)?;
        self.register(request, role).await
    }

    /// Waits for the first frame, within the handshake deadline.
    async fn first_frame(&self, inbound: &mut impl Inbound, deadline: Instant) -> Option<Bytes> {
        let first = tokio::select! {
            _ = self.shared.shutdown.cancelled() => return None,
            first = tokio::time::timeout_at(deadline, inbound.next()) => first,
        };
        match first {
            Err(_) if inbound.has_partial_frame() => {
                warn!("No complete RegisterInstance within the handshake timeout");
                let text = "Handshake timeout: RegisterInstance not received";
                self.reject(text, "timeout", None);
                None
            }
            Err(_) => {
                debug!("Closed: nothing received within the handshake timeout");
                None
            }
            Ok(None) => {
                debug!("Closed by peer before registering");
                None
            }
            Ok(Some(Err(ProtocolError::Io(err)))) => {
                debug!(error = %err, "Read failed before registering");
                None
            }
            Ok(Some(Err(err))) => {
                warn!(error = %err, "Invalid frame before registering");
                self.reject(&err.to_string(), "invalid_frame", None);
                None
            }
            Ok(Some(Ok(body))) => Some(body),
        }
    }

    /// The checks that need no lock, in the protocol's order: version, then token, then the
    /// name's form. Returns the role the token grants.
    fn admissible(&self, request: &Request) -> Option<Role> {
        let config = &self.shared.config;
        if request.version != config.sova_version {
            info!(instance_name = %request.name.escape_debug(), version = %request.version.escape_debug(),
                  "Rejected: version mismatch");
            let text = format!(
                "Version mismatch: expected {}, got {}",
                config.sova_version, request.version
            );
            self.shared.gate.registration_failed(self.peer.addr.ip());
            self.reject(&text, "version_mismatch", Some(&request.name));
            return None;
        }
        let role = match &self.shared.tokens {
            None => Role::Performer,
            Some(tokens) => match tokens.current().role_of(request.session_token.as_deref()) {
                Some(role) => role,
                None => {
                    warn!(instance_name = %request.name.escape_debug(), "Rejected: invalid session token");
                    self.shared.gate.registration_failed(self.peer.addr.ip());
                    self.reject(
                        "Invalid session token",
                        "invalid_token",
                        Some(&request.name),
                    );
                    return None;
                }
            },
        };
        if let Err(text) = validate_instance_name(&request.name) {
            warn!(instance_name = %request.name.escape_debug(), "Rejected: {text}");
            self.reject(&text, "invalid_name", None);
            return None;
        }
        Some(role)
    }

    /// Claims the name and a slot, atomically.
    async fn register(&self, request: Request, role: Role) -> Option<Registration> {
        let asked = request.capabilities.as_deref().unwrap_or_default();
        let asked_for = |name: &str| asked.iter().any(|c| c == name);
        let granted = request.capabilities.as_ref().map(|_| {
            [
                CAPABILITY_PONG,
                CAPABILITY_PRESENCE,
                CAPABILITY_RESUME,
                CAPABILITY_SNAPSHOT,
            ]
            .into_iter()
            .filter(|c| asked_for(c))
            .map(str::to_owned)
            .collect()
        });
        let resumable = asked_for(CAPABILITY_RESUME);
        let new_member = NewMember {
            id: Uuid::new_v4(),
            secret: NewMember::secret_for(resumable, request.resume.as_ref()),
            name: request.name.clone(),
            version: request.version,
            session_token: request.session_token,
            outbox: self.outbox.clone(),
            presence: asked_for(CAPABILITY_PRESENCE),
            pong: asked_for(CAPABILITY_PONG),
            peer: self.peer,
            role,
            snapshot: asked_for(CAPABILITY_SNAPSHOT),
            granted,
            resumable,
            resume: request.resume,
        };
        let registered = match &self.shared.registry.cluster {
            // Boxed, like every cluster call here: NATS futures are large, and each
            // connection's task would otherwise carry their size (≈ 4 KiB per idle instance).
            Some(cluster) => Box::pin(cluster.register(&self.shared.registry, new_member)).await,
            None => self.shared.registry.register(new_member),
        };
        match registered {
            Ok(registration) => {
                let member = &registration.member;
                let session = &registration.session.label;
                info!(instance = %member.name, id = %member.id, %session, transport = self.peer.transport,
                      resumed = ?registration.resumed,
                      "Instance '{}' registered with ID {}", member.name, member.id);
                self.audit(
                    AuditEvent::new("registered")
                        .session(session)
                        .instance(&member.name, member.id),
                );
                Some(registration)
            }
            Err(err) => {
                info!("Rejected: {err}");
                self.reject(&err.to_string(), err.label(), Some(&request.name));
                None
            }
        }
    }

    /// Refuses a registration: `Error` with `text`, then close.
    fn reject(&self, text: &str, label: &'static str, name: Option<&str>) {
        self.shared.stats.registration_rejected(label);
        let mut event = AuditEvent::new("rejected").reason(text);
        if let Some(name) = name {
            event = event.name(name);
        }
        self.audit(event);
        self.outbox
            .finish(Some(DisconnectReason::Rejected(text.to_owned())));
    }
}
