//! The relay's `/metrics` against what the clients counted, once everything is quiet.
//! Every client syncs (a Ping answered) before it leaves or stops, so the relay has
//! processed exactly what the clients sent: most counters must match exactly. Where the
//! relay's semantics leave room (random bytes whose reaction the soak does not model,
//! frames queued to connections that died before reading them), the comparison is a bound
//! and says so.

use super::http::Metrics;
use super::ledger::{get, Tally};
use super::receiver::Books;
use super::wire::Transport;

/// How a relay value must relate to the clients' figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    /// Equal.
    Eq,
    /// At least.
    Ge,
}

/// One comparison.
#[derive(Debug, Clone)]
pub struct Row {
    /// The series.
    pub series: String,
    /// The relay's value.
    pub relay: f64,
    /// The clients' figure.
    pub clients: f64,
    /// The relation required.
    pub rel: Rel,
    /// Why the relation holds.
    pub why: &'static str,
}

impl Row {
    /// Whether the relation holds.
    pub fn ok(&self) -> bool {
        match self.rel {
            Rel::Eq => (self.relay - self.clients).abs() < 0.5,
            Rel::Ge => self.relay + 0.5 >= self.clients,
        }
    }
}

/// What is still connected when the metrics are scraped.
#[derive(Debug, Clone, Copy)]
pub struct Live {
    /// Registered instances (the long-lived members).
    pub instances: u64,
    /// Their sessions.
    pub sessions: u64,
}

/// Compares every series the soak can account for.
pub fn compare(m: &Metrics, books: &Books, live: Live) -> Vec<Row> {
    let t = &books.tally;
    let abusers = books.ledger.abusers();
    let sum = |f: &dyn Fn(&super::ledger::AbuserLife, u64) -> u64| -> f64 {
        abusers
            .iter()
            .map(|(life, seen)| f(life, seen.unwrap_or(0)) as f64)
            .sum()
    };
    let relayed = sum(&|_, seen| seen);
    let pongs = sum(&|life, _| life.pongs);
    let limited = sum(&|life, seen| (life.updates + life.pings).saturating_sub(seen + life.pongs));
    let abuse_bytes = sum(&|life, seen| seen * life.update_bytes + life.pong_bytes);
    let errors = sum(&|life, _| life.errors);
    let n = |total: &std::sync::atomic::AtomicU64| get(total) as f64;
    let mut rows = Vec::new();
    let mut row = |series: &str, relay: f64, clients: f64, rel: Rel, why: &'static str| {
        rows.push(Row {
            series: series.to_owned(),
            relay,
            clients,
            rel,
            why,
        });
    };
    row("sova_relay_messages_in_total", m.get("sova_relay_messages_in_total"),
        n(&t.msgs_in) + relayed + pongs, Rel::Eq,
        "every message a registered client sent and the limiter let through: updates, pings, bad messages answered by an Error (never Pongs, never a frame the relay closed on), abusers' relayed updates and answered pings");
    row(
        "sova_relay_bytes_in_total",
        m.get("sova_relay_bytes_in_total"),
        n(&t.bytes_in) + abuse_bytes,
        Rel::Eq,
        "the body bytes of those messages",
    );
    row(
        "sova_relay_broadcasts_total",
        m.get("sova_relay_broadcasts_total"),
        n(&t.updates) + relayed,
        Rel::Eq,
        "every well-behaved update, and every abuser update its session's witness received",
    );
    row("sova_relay_messages_out_total", m.get("sova_relay_messages_out_total"),
        n(&t.received_live), Rel::Ge,
        "at least every broadcast received live (replays are not counted; frames queued to slow consumers and dropped connections are, unread)");
    row("sova_relay_rate_limited_total", m.get("sova_relay_rate_limited_total"), limited, Rel::Eq,
        "abusers' messages the witness never saw and pings never answered; well-behaved clients stay far below the limit");
    client_errors(&mut row, m, t, errors);
    rejections(&mut row, m, t);
    row("sova_relay_oversize_messages_total", m.get("sova_relay_oversize_messages_total"),
        n(&t.err_oversize), Rel::Eq, "oversize headers sent after registration (before it, they count as invalid_frame rejections)");
    row(
        "sova_relay_disconnects_total{reason=\"kicked\"}",
        m.get("sova_relay_disconnects_total{reason=\"kicked\"}"),
        n(&t.kicks),
        Rel::Eq,
        "each kick answered 200 ends that instance, which stopped sending first",
    );
    row(
        "sova_relay_slow_consumer_disconnects_total",
        m.get("sova_relay_slow_consumer_disconnects_total"),
        n(&t.slow_dropped),
        Rel::Eq,
        "every slow consumer was dropped, and no one else",
    );
    row("sova_relay_disconnects_total (all reasons)", m.sum("sova_relay_disconnects_total"),
        n(&t.registrations) - live.instances as f64, Rel::Eq,
        "every registration that ended, ended once (resumes, churn, kicks, bad input, slow consumers, abusers)");
    for transport in Transport::ALL {
        let series = format!(
            "sova_relay_connections_total{{transport=\"{}\"}}",
            transport.label()
        );
        let why = match transport {
            Transport::Tcp => {
                "every connection whose first byte is neither an uppercase letter nor a TLS handshake speaks frames"
            }
            Transport::Tls => "every TLS connection made for frames (well-behaved clients, slow consumers)",
            Transport::WebSocket => "every WebSocket upgrade (well-behaved clients, slow consumers)",
            Transport::WebSocketTls => "every WebSocket upgrade inside TLS",
        };
        row(
            &series,
            m.get(&series),
            n(t.connections(transport)),
            Rel::Eq,
            why,
        );
    }
    row(
        "sova_relay_tls_handshake_failures_total",
        m.get("sova_relay_tls_handshake_failures_total"),
        n(&t.tls_failures),
        Rel::Eq,
        "random bytes beginning like a TLS handshake (0x16); every real TLS client succeeds",
    );
    let open: f64 = Transport::ALL
        .iter()
        .map(|t| {
            m.get(&format!(
                "sova_relay_open_connections{{transport=\"{}\"}}",
                t.label()
            ))
        })
        .sum();
    row(
        "sova_relay_open_connections (tcp, tls, websocket, wss)",
        open,
        live.instances as f64,
        Rel::Eq,
        "only the long-lived members are still connected, over any transport",
    );
    row(
        "sova_relay_instances",
        m.get("sova_relay_instances"),
        live.instances as f64,
        Rel::Eq,
        "the long-lived members",
    );
    row(
        "sova_relay_sessions",
        m.get("sova_relay_sessions"),
        live.sessions as f64,
        Rel::Eq,
        "jam, bulk, slow and abuse sessions",
    );
    row(
        "sova_relay_accept_errors_total",
        m.get("sova_relay_accept_errors_total"),
        0.0,
        Rel::Eq,
        "accept() never failed",
    );
    row(
        "sova_relay_connections_refused_total",
        m.sum("sova_relay_connections_refused_total"),
        0.0,
        Rel::Eq,
        "per-IP guards are off; nothing is refused at accept",
    );
    rows
}

type RowFn<'a> = dyn FnMut(&str, f64, f64, Rel, &'static str) + 'a;

fn client_errors(row: &mut RowFn<'_>, m: &Metrics, t: &Tally, rate_errors: f64) {
    let kinds: [(&str, f64, &'static str); 8] = [
        (
            "rate_limited",
            rate_errors,
            "each `Rate limit exceeded` an abuser received (at most one a second)",
        ),
        (
            "invalid_message",
            get(&t.err_invalid_message) as f64,
            "invalid MessagePack and unknown variants after registration",
        ),
        (
            "source_mismatch",
            get(&t.err_source_mismatch) as f64,
            "StateUpdates claiming another member's id",
        ),
        (
            "already_registered",
            get(&t.err_already_registered) as f64,
            "a second RegisterInstance",
        ),
        (
            "unexpected",
            get(&t.err_unexpected) as f64,
            "messages only the relay sends",
        ),
        (
            "snapshot_refused",
            get(&t.err_snapshot_refused) as f64,
            "SessionSnapshot without the capability",
        ),
        (
            "oversize",
            get(&t.err_oversize) as f64,
            "oversize headers after registration",
        ),
        (
            "zero_length",
            get(&t.err_zero_length) as f64,
            "zero-length headers after registration",
        ),
    ];
    let mut total = 0.0;
    for (kind, clients, why) in kinds {
        let series = format!("sova_relay_client_errors_total{{kind=\"{kind}\"}}");
        row(&series, m.get(&series), clients, Rel::Eq, why);
        total += clients;
    }
    row(
        "sova_relay_client_errors_total (all kinds)",
        m.sum("sova_relay_client_errors_total"),
        total,
        Rel::Eq,
        "no other kind of client error: well-behaved clients never cause one",
    );
}

fn rejections(row: &mut RowFn<'_>, m: &Metrics, t: &Tally) {
    let kinds: [(&str, f64, Rel, &'static str); 7] = [
        (
            "version_mismatch",
            get(&t.rej_version_mismatch) as f64,
            Rel::Eq,
            "registrations with version 9.9.9",
        ),
        (
            "invalid_name",
            get(&t.rej_invalid_name) as f64,
            Rel::Eq,
            "names with a control character or over 64 bytes",
        ),
        (
            "name_taken",
            get(&t.rej_name_taken) as f64,
            Rel::Eq,
            "a long-lived listener's name; resumes never collide",
        ),
        ("full", 0.0, Rel::Eq, "--max-instances is never reached"),
        (
            "invalid_frame",
            get(&t.rej_invalid_frame) as f64,
            Rel::Ge,
            "oversize and zero-length headers (random bytes add some)",
        ),
        (
            "not_register",
            get(&t.rej_not_register) as f64,
            Rel::Ge,
            "a Ping or invalid MessagePack first (random bytes add some)",
        ),
        (
            "timeout",
            get(&t.rej_timeout) as f64,
            Rel::Ge,
            "incomplete handshakes (random bytes add some)",
        ),
    ];
    for (reason, clients, rel, why) in kinds {
        let series = format!("sova_relay_registrations_rejected_total{{reason=\"{reason}\"}}");
        row(&series, m.get(&series), clients, rel, why);
    }
}
