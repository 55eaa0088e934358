//! The Sova relay server: Sova instances register over TCP and every state update one of
//! them sends is relayed to the other instances of its session.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use sova_relay::{Config, Server};
//!
//! let server = Server::bind("127.0.0.1:9090".parse()?, Config::default()).await?;
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

mod access;
mod audit;
mod cluster;
mod config;
mod connection;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod metrics;
mod outbox;
mod reason;
mod registry;
mod server;
mod session;
mod status;
mod tls;
mod tokens;
mod transport;
mod websocket;

pub use config::{parse_duration, Config};
pub use server::{Control, Server};
