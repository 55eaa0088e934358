//! Bad input after registration, in a jam session among well-behaved members: invalid
//! MessagePack, unknown variants, a `StateUpdate` claiming another member's id, a second
//! `RegisterInstance`, messages only the relay sends, an unsolicited `Pong`. Each must get
//! exactly its documented `Error` (checked in lockstep: a Ping after each step), the
//! connection must carry on, and nothing of it may reach the other members. It ends with an
//! oversize or zero-length header (an `Error`, then closed), a close, or a reset.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use bytes::Bytes;
use sova_relay_protocol::{encode_frame, Message, UpdateData};
use uuid::Uuid;

use super::ctx::Ctx;
use super::ledger::{add, SourceKind};
use super::update;
use super::wire::{self, Conn, Join};

/// One step: the frame, the `Error` it must get (a prefix; `None`: no answer), and the
/// client-error counter it bumps.
struct Step<'a> {
    frame: Bytes,
    answer: Option<String>,
    counts: Option<&'a AtomicU64>,
}

/// Registers as `name` in `session`, misbehaves, and ends.
pub async fn run(
    ctx: &Ctx,
    rng: &mut fastrand::Rng,
    name: &str,
    session: &str,
) -> Result<(), String> {
    let tally = &ctx.books.tally;
    add(&tally.bad_inputs, 1);
    let join = Join {
        name,
        session,
        capabilities: &[],
        resume: None,
    };
    let (mut conn, reg) = wire::join(ctx.addr, &join)
        .await
        .map_err(|e| e.to_string())??;
    add(&tally.framed_connections, 1);
    add(&tally.registrations, 1);
    ctx.books
        .ledger
        .registered(reg.id, name, SourceKind::Silent);
    let victim = reg.members.first().copied().unwrap_or_else(Uuid::new_v4);
    for round in 0..rng.u64(1..=4) {
        let step = step(ctx, rng, name, victim);
        let len = step.frame.len() as u64 - 4;
        conn.send(&step.frame).await.map_err(|e| e.to_string())?;
        if let Some(counter) = step.counts {
            add(counter, 1);
        }
        if step.answer.is_some() {
            add(&tally.msgs_in, 1);
            add(&tally.bytes_in, len);
        }
        let heard = sync(ctx, &mut conn, round + 1).await?;
        match (&step.answer, heard.as_slice()) {
            (None, []) => {}
            (Some(prefix), [Message::Error { message }])
                if message.starts_with(prefix.as_str()) => {}
            (want, got) => return Err(format!("expected {want:?}, got {got:?}")),
        }
    }
    finish(ctx, rng, conn).await
}

fn step<'a>(ctx: &'a Ctx, rng: &mut fastrand::Rng, name: &str, victim: Uuid) -> Step<'a> {
    let tally = &ctx.books.tally;
    let invalid = Some("Invalid message".to_owned());
    match rng.u8(0..8) {
        0 => Step {
            frame: Bytes::from_static(&[0, 0, 0, 1, 0xc1]),
            answer: invalid,
            counts: Some(&tally.err_invalid_message),
        },
        1 => Step {
            frame: Bytes::from_static(b"\x00\x00\x00\x08\x81\xa5Bogus\x80"),
            answer: invalid,
            counts: Some(&tally.err_invalid_message),
        },
        2 => Step {
            frame: Bytes::from_static(b"\x00\x00\x00\x0e\x81\xabStateUpdate\x83"),
            answer: invalid,
            counts: Some(&tally.err_invalid_message),
        },
        3 => Step {
            frame: wire::state_update(victim, 0, &update::encode(victim, 1, 8), rng.bool()),
            answer: Some("StateUpdate dropped: source_instance_id".to_owned()),
            counts: Some(&tally.err_source_mismatch),
        },
        4 => Step {
            frame: wire::register_frame(
                &Join {
                    name,
                    session: "elsewhere",
                    capabilities: &[],
                    resume: None,
                },
                wire::VERSION,
            ),
            answer: Some(format!("Already registered as '{name}'")),
            counts: Some(&tally.err_already_registered),
        },
        5 => Step {
            frame: encode_frame(&Message::InstanceDisconnected {
                instance_id: victim,
                instance_name: "someone".to_owned(),
            }),
            answer: Some("Unexpected message: InstanceDisconnected".to_owned()),
            counts: Some(&tally.err_unexpected),
        },
        6 => Step {
            frame: encode_frame(&Message::SessionSnapshot {
                seq: 0,
                data: UpdateData::from_bin(b"state"),
            }),
            answer: Some("Unexpected message: SessionSnapshot".to_owned()),
            counts: Some(&tally.err_snapshot_refused),
        },
        _ => Step {
            frame: encode_frame(&Message::Pong { timestamp: 7 }),
            answer: None,
            counts: None,
        },
    }
}

/// Pings and reads until the Pong; returns what came before it (broadcasts of the session
/// and departure notices left out).
async fn sync(ctx: &Ctx, conn: &mut Conn, timestamp: u64) -> Result<Vec<Message>, String> {
    let ping = encode_frame(&Message::Ping { timestamp });
    conn.send(&ping).await.map_err(|e| e.to_string())?;
    add(&ctx.books.tally.msgs_in, 1);
    add(&ctx.books.tally.bytes_in, ping.len() as u64 - 4);
    let mut heard = Vec::new();
    let reading = async {
        loop {
            match conn.next().await {
                Some(Ok(Message::Pong { timestamp: t })) if t == timestamp => return Ok(()),
                Some(Ok(Message::StateBroadcast { .. } | Message::InstanceDisconnected { .. })) => {
                }
                Some(Ok(other)) => heard.push(other),
                Some(Err(err)) => return Err(err.to_string()),
                None => return Err("closed by the relay".to_owned()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), reading)
        .await
        .map_err(|_| "no Pong within 15 s".to_owned())??;
    Ok(heard)
}

/// Ends the connection one of four ways.
async fn finish(ctx: &Ctx, rng: &mut fastrand::Rng, mut conn: Conn) -> Result<(), String> {
    let tally = &ctx.books.tally;
    let (header, text, counter) = match rng.u8(0..4) {
        0 => {
            let max = ctx.settings.max_message_size;
            let len = rng.u32(max as u32 + 1..0x00ff_ffff);
            let text = format!("Message too large: {len} bytes (max: {max})");
            (len.to_be_bytes(), text, &tally.err_oversize)
        }
        1 => {
            let text = "Invalid frame: zero-length message".to_owned();
            ([0; 4], text, &tally.err_zero_length)
        }
        2 => return leave(conn).await,
        _ => {
            conn.reset();
            return Ok(());
        }
    };
    conn.send(&header).await.map_err(|e| e.to_string())?;
    add(counter, 1);
    let rest = conn
        .finish(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let told = rest
        .iter()
        .filter(|m| {
            !matches!(
                m,
                Message::StateBroadcast { .. } | Message::InstanceDisconnected { .. }
            )
        })
        .collect::<Vec<_>>();
    match told.as_slice() {
        [Message::Error { message }] if *message == text => Ok(()),
        other => Err(format!(
            "expected Error {text:?} and a close, got {other:?}"
        )),
    }
}

/// Closes and expects nothing but broadcasts and notices before the relay closes too.
async fn leave(conn: Conn) -> Result<(), String> {
    let rest = conn
        .finish(Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    match rest.iter().find(|m| {
        !matches!(
            m,
            Message::StateBroadcast { .. } | Message::InstanceDisconnected { .. }
        )
    }) {
        None => Ok(()),
        Some(other) => Err(format!("{other:?} after closing")),
    }
}
