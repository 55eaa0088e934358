//! A well-behaved instance: registered, sending numbered updates well under the rate limit,
//! checking everything it receives, able to sync (a Ping answered means the relay has
//! processed all it sent) and to drop and resume. Long-lived members (`member.rs`) and
//! churners (`churn.rs`) are built from it.

use std::sync::Arc;
use std::time::Duration;

use sova_relay_protocol::{encode_frame, Message};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::ctx::{now_ms, Ctx, Phase};
use super::ledger::{add, SourceKind};
use super::receiver::{Other, Receiver};
use super::update;
use super::verdict::Inv;
use super::wire::{self, Conn, Join, Registered};

/// How a client sends.
#[derive(Debug, Clone, Copy)]
pub struct Sending {
    /// Updates a second, drawn per update between these.
    pub per_sec: (f64, f64),
    /// Filler bytes per update, drawn between these.
    pub filler: (usize, usize),
    /// `update_data` as an array of uints (as clients in the field send it) instead of bin.
    pub array: bool,
}

/// Why [`Client::drive`] returned.
pub enum Stop {
    /// The phase reached the one asked for.
    Phase,
    /// The deadline passed.
    Due,
    /// The kicker asked this churner to get ready to be kicked.
    Kick(oneshot::Sender<()>),
    /// The connection ended or failed unexpectedly.
    Lost(String),
}

/// A kicker's request: answer once ready to be kicked.
pub type KickRequest = oneshot::Sender<()>;

/// Longest a Ping may wait for its Pong.
const SYNC_TIMEOUT: Duration = Duration::from_secs(15);

/// One registered well-behaved instance.
pub struct Client {
    /// Shared state.
    pub ctx: Arc<Ctx>,
    /// Its name.
    pub name: String,
    /// Its session token.
    pub session: String,
    /// Capabilities it asks for.
    pub caps: &'static [&'static str],
    /// The connection.
    pub conn: Conn,
    /// What the relay said at registration.
    pub reg: Registered,
    /// The receiving checks.
    pub rx: Receiver,
    /// How it sends, if it does.
    pub sending: Option<Sending>,
    /// Updates sent by this registration (its run's counter).
    pub counter: u64,
    /// Updates sent since the fresh registration.
    pub own: u64,
    /// When the next update is due.
    pub(super) next_send: Instant,
    /// Pings sent on this connection (each a fresh timestamp).
    pub(super) pings: u64,
    /// Its own random choices.
    pub(super) rng: fastrand::Rng,
    /// The node it is connected to (0 without a cluster).
    pub node: usize,
}

impl Client {
    /// Registers afresh; `Err` with the reason if the relay refused or failed.
    pub async fn join(
        ctx: Arc<Ctx>,
        name: String,
        session: String,
        caps: &'static [&'static str],
        sending: Option<Sending>,
        mut rng: fastrand::Rng,
    ) -> Result<Client, String> {
        let join = Join {
            name: &name,
            session: &session,
            capabilities: caps,
            resume: None,
        };
        let node = ctx.pick_node();
        let transport = ctx.pick_transport(&mut rng);
        let (conn, reg) = ctx
            .join_over(transport, node, &join)
            .await
            .map_err(|err| err.to_string())??;
        ctx.books.tally.connected(transport);
        add(&ctx.books.tally.registrations, 1);
        ctx.books.verdicts.pass(Inv::Undisturbed);
        ctx.books.ledger.registered(reg.id, &name, kind_of(sending));
        // A cluster's seqs are not contiguous: a silent member checks that they increase.
        let mut rx = Receiver::new(&name, sending.is_none() && !ctx.cluster());
        rx.fresh(&reg);
        Ok(Client {
            ctx,
            name,
            session,
            caps,
            conn,
            reg,
            rx,
            sending,
            counter: 0,
            own: 0,
            next_send: Instant::now(),
            pings: 0,
            rng,
            node,
        })
    }

    /// Sends and receives until the phase reaches `until`, `due` passes, or a kick
    /// request arrives on `kicks`.
    pub async fn drive(
        &mut self,
        phase: &mut watch::Receiver<Phase>,
        until: Phase,
        due: Option<Instant>,
        mut kicks: Option<&mut mpsc::UnboundedReceiver<KickRequest>>,
    ) -> Stop {
        let sends = self.sending.is_some() && until <= Phase::Quiesce;
        self.next_send = Instant::now() + self.send_gap();
        loop {
            if *phase.borrow() >= until {
                return Stop::Phase;
            }
            let kick = async {
                match kicks.as_deref_mut() {
                    Some(kicks) => kicks.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = phase.changed() => {}
                _ = sleep_until(due) => return Stop::Due,
                Some(reply) = kick => return Stop::Kick(reply),
                _ = tokio::time::sleep_until(self.next_send), if sends => {
                    if let Err(err) = self.send_update().await {
                        return Stop::Lost(format!("sending: {err}"));
                    }
                    let gap = self.send_gap();
                    self.next_send += gap;
                }
                message = self.conn.next() => match message {
                    Some(Ok(message)) => {
                        if let Some(pong) = self.handle(message) {
                            self.unexpected(&format!("Pong {pong}"));
                        }
                    }
                    Some(Err(err)) => return Stop::Lost(format!("reading: {err}")),
                    None => return Stop::Lost("closed by the relay".to_owned()),
                },
            }
        }
    }

    fn send_gap(&mut self) -> Duration {
        let Some(sending) = self.sending else {
            return Duration::from_secs(3600);
        };
        let (lo, hi) = sending.per_sec;
        let rate = lo + (hi - lo) * self.rng.f64();
        Duration::from_secs_f64(1.0 / rate.max(0.01))
    }

    async fn send_update(&mut self) -> std::io::Result<()> {
        let Some(sending) = self.sending else {
            return Ok(());
        };
        self.counter += 1;
        self.own += 1;
        let filler = self.rng.usize(sending.filler.0..=sending.filler.1);
        let payload = update::encode(self.reg.id, self.counter, filler);
        let frame = wire::state_update(self.reg.id, now_ms(), &payload, sending.array);
        self.conn.send(&frame).await?;
        let tally = &self.ctx.books.tally;
        add(&tally.msgs_in, 1);
        add(&tally.bytes_in, frame.len() as u64 - 4);
        add(&tally.updates, 1);
        Ok(())
    }

    /// Checks one message; returns a Pong's timestamp for the caller.
    fn handle(&mut self, message: Message) -> Option<u64> {
        match self.rx.on_message(message, &self.ctx.books) {
            Other::Handled => None,
            Other::Message(Message::Pong { timestamp }) => Some(timestamp),
            Other::Message(Message::Error { message }) => {
                self.unexpected(&format!("Error {message:?}"));
                None
            }
            Other::Message(other) => {
                self.unexpected(other.kind());
                None
            }
        }
    }

    fn unexpected(&self, what: &str) {
        self.ctx.books.verdicts.fail(Inv::Undisturbed, || {
            format!("{} ({}): unexpected {what}", self.name, self.session)
        });
    }

    /// Sends a Ping and reads until its Pong: then the relay has processed everything this
    /// client sent before, and this client has received everything queued to it before.
    pub async fn sync(&mut self) -> Result<(), String> {
        self.pings += 1;
        let timestamp = self.pings;
        let frame = encode_frame(&Message::Ping { timestamp });
        self.conn.send(&frame).await.map_err(|e| e.to_string())?;
        add(&self.ctx.books.tally.msgs_in, 1);
        add(&self.ctx.books.tally.bytes_in, frame.len() as u64 - 4);
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            let message = tokio::time::timeout_at(deadline, self.conn.next())
                .await
                .map_err(|_| "no Pong within 15 s".to_owned())?;
            match message {
                Some(Ok(message)) => {
                    if self.handle(message) == Some(timestamp) {
                        self.ctx.books.verdicts.pass(Inv::Undisturbed);
                        return Ok(());
                    }
                }
                Some(Err(err)) => return Err(format!("reading: {err}")),
                None => return Err("closed by the relay".to_owned()),
            }
        }
    }

    /// Syncs (if it sends) and writes its last counter in the ledger: everything before
    /// its departure is then known to have been relayed.
    pub async fn settle(&mut self) -> Result<(), String> {
        if self.sending.is_some() {
            self.sync().await?;
        }
        self.ctx.books.ledger.finished(self.reg.id, self.counter);
        Ok(())
    }

    /// Leaves: by closing (FIN, then reading until the relay closes) or by a reset.
    pub async fn leave(self, graceful: bool) {
        if !graceful {
            return self.conn.reset();
        }
        let Client {
            ctx,
            name,
            session,
            conn,
            mut rx,
            ..
        } = self;
        let unexpected = |what: &str| {
            ctx.books.verdicts.fail(Inv::Undisturbed, || {
                format!("{name} ({session}): unexpected {what} while leaving")
            });
        };
        match conn.finish(Duration::from_secs(10)).await {
            Ok(rest) => {
                for message in rest {
                    if let Other::Message(other) = rx.on_message(message, &ctx.books) {
                        unexpected(other.kind());
                    }
                }
            }
            Err(err) => unexpected(&err.to_string()),
        }
    }
}

/// Registers `name` afresh, retrying until the relay takes it.
pub async fn rejoin(
    ctx: Arc<Ctx>,
    name: String,
    session: String,
    caps: &'static [&'static str],
    sending: Option<Sending>,
    mut rng: fastrand::Rng,
) -> Client {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fork = rng.fork();
        match Client::join(
            ctx.clone(),
            name.clone(),
            session.clone(),
            caps,
            sending,
            fork,
        )
        .await
        {
            Ok(client) => return client,
            Err(why) => ctx.books.verdicts.fail(Inv::Undisturbed, || {
                format!("{name}: registering again failed: {why}")
            }),
        }
    }
}

/// How a client with `sending` shows in the ledger.
pub fn kind_of(sending: Option<Sending>) -> SourceKind {
    if sending.is_some() {
        SourceKind::Sender
    } else {
        SourceKind::Silent
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
