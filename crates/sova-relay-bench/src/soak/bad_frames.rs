//! Bad input on the framed protocol, before registration: random bytes, oversize and
//! zero-length headers, a first message that is not `RegisterInstance`, a wrong version,
//! invalid names, a taken name, a handshake left incomplete, a connection that says
//! nothing. Each must get its documented `Error` (or none) and be closed, in time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message, HANDSHAKE_MAX_MESSAGE_SIZE};
use tokio::io::AsyncWriteExt;

use super::ctx::Ctx;
use super::http::Response;
use super::ledger::add;
use super::wire::{self, Join};

/// What the relay answered before closing.
struct Answer {
    /// The messages, if the answer was frames.
    messages: Vec<Message>,
    /// Whether it answered HTTP (an uppercase first byte).
    http: Option<Response>,
    /// Whether the relay took the bytes for a TLS handshake (first byte 0x16), which fails.
    tls: bool,
    /// From the last byte sent to the close.
    took: Duration,
}

/// Sends `bytes` on a new connection and reads until the relay closes it.
async fn exchange(ctx: &Ctx, bytes: &[u8]) -> Result<Answer, String> {
    add(&ctx.books.tally.bad_inputs, 1);
    let http = bytes.first().is_some_and(u8::is_ascii_uppercase);
    let tls = ctx.tls.is_some() && bytes.first() == Some(&TLS_HANDSHAKE);
    if tls {
        add(&ctx.books.tally.tls_failures, 1);
    } else if !bytes.is_empty() && !http {
        add(&ctx.books.tally.framed_connections, 1);
    }
    let mut stream = wire::connect(ctx.addr, None)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    let sent = Instant::now();
    let within = ctx.settings.handshake_timeout + Duration::from_secs(6);
    let reply = wire::read_to_close(&mut stream, within)
        .await
        .map_err(|e| format!("after {} bytes: {e}", bytes.len()))?;
    let took = sent.elapsed();
    if http {
        let text = String::from_utf8_lossy(&reply);
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let response = Response {
            status,
            body: text.into_owned(),
        };
        return Ok(Answer {
            messages: Vec::new(),
            http: Some(response),
            tls: false,
            took,
        });
    }
    if tls {
        // Whatever came back is TLS (an alert), not frames.
        return Ok(Answer {
            messages: Vec::new(),
            http: None,
            tls,
            took,
        });
    }
    let messages = wire::messages(&reply, false)?;
    Ok(Answer {
        messages,
        http: None,
        tls: false,
        took,
    })
}

/// Expects exactly `Error {text}` and a close.
fn told(answer: &Answer, text: &str) -> Result<(), String> {
    match answer.messages.as_slice() {
        [Message::Error { message }] if message == text => Ok(()),
        other => Err(format!("expected Error {text:?}, got {other:?}")),
    }
}

/// The first byte of a TLS handshake record: the relay, which serves TLS, answers TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// Random bytes: closed within the handshake timeout; whatever came back is well-formed
/// (HTTP, frames, or for a first byte 0x16 a failed TLS handshake).
pub async fn random_bytes(ctx: &Ctx, rng: &mut fastrand::Rng) -> Result<(), String> {
    let len = rng.usize(1..=2048);
    let mut bytes: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
    // One in four begins like a TLS record, so broken handshakes come often, not 1 in 256.
    if rng.u8(0..4) == 0 {
        bytes[0] = TLS_HANDSHAKE;
    }
    let answer = exchange(ctx, &bytes).await?;
    if answer.tls {
        return Ok(());
    }
    if let Some(response) = &answer.http {
        let ok = response.body.is_empty() || (400..600).contains(&response.status);
        return ok
            .then_some(())
            .ok_or_else(|| format!("HTTP garbage answered {:?}", response.body));
    }
    match answer.messages.as_slice() {
        [] | [Message::Error { .. }] => Ok(()),
        other => Err(format!("random bytes answered {other:?}")),
    }
}

/// An announced body over the pre-registration limit.
pub async fn oversize(ctx: &Ctx, rng: &mut fastrand::Rng) -> Result<(), String> {
    let max = ctx
        .settings
        .max_message_size
        .min(HANDSHAKE_MAX_MESSAGE_SIZE);
    let len = rng.u32(max as u32 + 1..0x00ff_ffff);
    let answer = exchange(ctx, &len.to_be_bytes()).await?;
    add(&ctx.books.tally.rej_invalid_frame, 1);
    told(
        &answer,
        &format!("Message too large: {len} bytes (max: {max})"),
    )
}

/// A zero-length frame.
pub async fn zero_length(ctx: &Ctx) -> Result<(), String> {
    let answer = exchange(ctx, &[0, 0, 0, 0]).await?;
    add(&ctx.books.tally.rej_invalid_frame, 1);
    told(&answer, "Invalid frame: zero-length message")
}

/// A first message that is not `RegisterInstance` (a valid one, or invalid MessagePack).
pub async fn not_register(ctx: &Ctx, rng: &mut fastrand::Rng) -> Result<(), String> {
    let frame = if rng.bool() {
        encode_frame(&Message::Ping { timestamp: 1 })
    } else {
        Bytes::from_static(&[0, 0, 0, 2, 0x81, 0xc1])
    };
    let answer = exchange(ctx, &frame).await?;
    add(&ctx.books.tally.rej_not_register, 1);
    told(&answer, "Expected RegisterInstance message")
}

/// A `RegisterInstance` the relay refuses: wrong version, bad name, or a taken name.
pub async fn refused(
    ctx: &Ctx,
    rng: &mut fastrand::Rng,
    taken: &[(String, String)],
) -> Result<(), String> {
    let tally = &ctx.books.tally;
    let long = "n".repeat(65);
    let (name, session, version, text, counter) = match rng.u8(0..4) {
        0 => (
            "bad-version".to_owned(),
            "soak-jam-0".to_owned(),
            "9.9.9",
            format!("Version mismatch: expected {}, got 9.9.9", wire::VERSION),
            &tally.rej_version_mismatch,
        ),
        1 => (
            "bad\u{7}name".to_owned(),
            "soak-jam-0".to_owned(),
            wire::VERSION,
            "Invalid instance name: control characters are not allowed".to_owned(),
            &tally.rej_invalid_name,
        ),
        2 => (
            long,
            "soak-jam-0".to_owned(),
            wire::VERSION,
            "Invalid instance name: 65 bytes (max: 64)".to_owned(),
            &tally.rej_invalid_name,
        ),
        _ => {
            let (name, session) = taken[rng.usize(..taken.len())].clone();
            let text = format!("Instance name '{name}' already in use");
            (name, session, wire::VERSION, text, &tally.rej_name_taken)
        }
    };
    let join = Join {
        name: &name,
        session: &session,
        capabilities: &[],
        resume: None,
    };
    let answer = exchange(ctx, &wire::register_frame(&join, version)).await?;
    add(counter, 1);
    told(&answer, &text)
}

/// Part of a frame, then nothing: `Handshake timeout` after `--handshake-timeout`.
pub async fn incomplete(ctx: &Ctx) -> Result<(), String> {
    let answer = exchange(ctx, &[0, 0, 0, 32, 0x81]).await?;
    add(&ctx.books.tally.rej_timeout, 1);
    told(&answer, "Handshake timeout: RegisterInstance not received")?;
    on_time(ctx, answer.took)
}

/// Nothing at all: closed quietly after `--handshake-timeout` (health probes do this).
pub async fn silent(ctx: &Ctx) -> Result<(), String> {
    let answer = exchange(ctx, &[]).await?;
    if !answer.messages.is_empty() {
        return Err(format!("a silent connection got {:?}", answer.messages));
    }
    on_time(ctx, answer.took)
}

/// Closed no sooner than the handshake timeout, and not much later.
fn on_time(ctx: &Ctx, took: Duration) -> Result<(), String> {
    // The relay's clock starts at accept, ours after the write: a loaded machine may
    // put a little time between the two.
    let timeout = ctx.settings.handshake_timeout;
    let early = timeout.saturating_sub(Duration::from_millis(500));
    if took < early || took > timeout + Duration::from_secs(4) {
        return Err(format!(
            "closed after {took:?}, handshake timeout {timeout:?}"
        ));
    }
    Ok(())
}
