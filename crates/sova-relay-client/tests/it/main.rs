//! Integration tests of the client library: against a scripted relay and a real one.

#![allow(clippy::unwrap_used)] // a test that unwraps fails loudly, which is what we want

mod behaviour;
mod relay;
mod resume;
mod scripted;
mod server;
mod tls;
mod websocket;

use std::time::Duration;

use sova_relay_client::{ClientConfig, Event, Events, ReconnectConfig};

/// Reconnection tuned for tests: quick, no jitter.
pub fn fast_reconnect() -> ReconnectConfig {
    ReconnectConfig {
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        jitter: 0.0,
        ..ReconnectConfig::default()
    }
}

/// A config with fast reconnection.
pub fn config(name: &str) -> ClientConfig {
    ClientConfig::new(name).reconnect(fast_reconnect())
}

/// The next event, or a panic after `scripted::PATIENCE`.
pub async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(scripted::PATIENCE, events.recv())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

/// Skips events until one matches, returning it.
pub async fn until(events: &mut Events, wanted: impl Fn(&Event) -> bool) -> Event {
    loop {
        let event = next(events).await;
        if wanted(&event) {
            return event;
        }
    }
}
