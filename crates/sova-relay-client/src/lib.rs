//! Async client for the Sova relay.
//!
//! A Sova instance (or any tool) registers with a relay under a name, sends state updates,
//! and receives the updates of the other instances of its session as [`Event`]s. The client
//! answers the relay's pings, measures round trips, estimates the relay's clock, and
//! reconnects with backoff when the connection drops, re-registering under the same name,
//! resuming where it stopped, and then sending the updates queued meanwhile, in order.
//!
//! ```no_run
//! use sova_relay_client::{ClientConfig, Event, RelayClient};
//!
//! # async fn jam() -> Result<(), sova_relay_client::ClientError> {
//! let mut client = RelayClient::connect("127.0.0.1:9090", ClientConfig::new("alice")).await?;
//! client.send_update(b"tempo 120")?;
//! while let Some(event) = client.next_event().await {
//!     if let Event::Broadcast { from, data, .. } = event {
//!         println!("{from}: {}", String::from_utf8_lossy(&data));
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Addresses [`RelayClient::connect`] accepts:
//!
//! | address | transport |
//! |---|---|
//! | `HOST:PORT`, `tcp://HOST:PORT` | length-prefixed MessagePack frames over TCP (what Sova instances speak) |
//! | `tls://HOST:PORT` | the same frames inside TLS |
//! | `ws://HOST[:PORT]/ws` | WebSocket: one MessagePack body per binary message; the port defaults to 80, and the path is the relay's `/ws` or whatever a proxy maps to it |
//! | `wss://HOST[:PORT]/ws` | the same inside TLS; the port defaults to 443 |
//!
//! All of them reach the same sessions: a WebSocket client and a TCP client of one session
//! see each other's updates.
//!
//! TLS (rustls, `ring` provider, TLS 1.2 and 1.3) verifies the relay's certificate against
//! Mozilla's root certificates (webpki-roots) plus, if set, the CA certificates of the PEM
//! file [`ClientConfig`]`::ca_file` (a relay with a private CA), for the host of the address:
//! a DNS name, sent as SNI too, or an IP address, which the certificate must then list. The
//! handshake counts towards `connect_timeout`. A certificate the client does not trust is a
//! [`ClientError::Tls`], which the first connection does not retry.
//!
//! # Resume and snapshots
//!
//! Against a relay with the extensions (docs/PROTOCOL.md), nothing is lost across a dropped
//! connection, without the application doing anything:
//!
//! - The client asks for `resume` ([`ClientConfig`]`::resume`, on by default), and keeps the
//!   session's `epoch`, the `seq` of the last broadcast it received and the registration's
//!   resume secret. On reconnecting it presents them. If its old registration is still there
//!   (a half-open connection the relay has not noticed yet), the relay hands its name over
//!   at once; the "name in use, retry" loop remains only as a fallback.
//! - The relay resumed: [`Event::Resynced`], then every broadcast missed meanwhile as a
//!   `Broadcast`, exactly once and in order, then live ones. The relay replays the client's
//!   own earlier updates with them; the client drops those (they never come back to their
//!   sender, as always). The application's state is still good.
//! - The relay could not (it restarted, or the gap is older than its history): the client
//!   reports [`Event::ResyncRequired`] and the application must rebuild its state, from the
//!   [`Event::Snapshot`] that follows if snapshots are on and the session has one.
//! - Updates queued while disconnected are sent once registered again; in the session's
//!   order they come after everything replayed to the client.
//!
//! The events after a reconnection come in this order: `Disconnected`, `Reconnected`,
//! `Resynced` or `ResyncRequired`, `Left`/`Joined` for who came and went, `Snapshot` (after
//! `ResyncRequired`, when there is one), then `Broadcast`s (see [`Event`]).
//!
//! With [`ClientConfig`]`::snapshots` on, a client that joins (or must resync) receives the
//! session's latest snapshot as [`Event::Snapshot`], then the broadcasts it does not
//! contain; and [`RelaySender::send_snapshot`] publishes the application's state for those
//! who join later, labelled with the `seq` of the last broadcast the application took from
//! the event stream.
//!
//! To send from one task and receive in another, [`RelayClient::split`] the client into a
//! cloneable [`RelaySender`] and the [`Events`] stream.
//!
//! Design: one background task owns the socket (as in nats.rs); handles talk to it through
//! bounded channels, and shared state sits behind a std mutex never held across an `.await`.

mod backoff;
mod client;
mod clock;
mod config;
mod error;
mod event;
mod handshake;
mod resume;
mod state;
mod task;
mod tls;
mod transport;
mod websocket;

pub use backoff::Backoff;
pub use client::{RelayClient, RelaySender};
pub use clock::{now_ms, ClockOffset};
pub use config::{ClientConfig, ReconnectConfig, UpdateForm, DEFAULT_SOVA_VERSION};
pub use error::ClientError;
pub use event::{Event, Events, Peer};
