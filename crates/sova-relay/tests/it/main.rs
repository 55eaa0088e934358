//! Integration tests of the relay over real TCP on 127.0.0.1.

#![allow(clippy::unwrap_used, missing_docs)] // a test that unwraps fails loudly, as it should

mod bad_input;
mod browser;
mod deploy;
mod harness;
mod http;
mod limits;
mod liveness;
mod packaging;
mod process;
mod registration;
mod relaying;
mod resume;
mod security;
mod shutdown;
mod support;
mod websocket;
