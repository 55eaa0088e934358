//! The audit trail: one JSON object per line for each security-relevant event, appended to
//! a file (or stderr) by a dedicated thread, so a slow disk never stalls the relay. The file
//! is reopened on SIGHUP, so log rotation works. Tokens never appear: sessions are hashed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::SystemTime;

use anyhow::Context;
use serde::Serialize;
use uuid::Uuid;

/// Events waiting to be written, at most; beyond that they are counted and dropped.
const QUEUE: usize = 8192;

enum Command {
    Line(String),
    Reopen,
}

/// The audit trail, or nothing when `--audit-log` is not set.
pub(crate) struct Audit {
    sender: Mutex<Option<SyncSender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    dropped: AtomicU64,
}

/// One event; fields that do not apply are left out of the line.
#[derive(Serialize)]
pub(crate) struct AuditEvent {
    time: String,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl AuditEvent {
    pub(crate) fn new(event: &'static str) -> Self {
        AuditEvent {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            event,
            peer_ip: None,
            transport: None,
            session: None,
            name: None,
            instance_id: None,
            reason: None,
        }
    }

    pub(crate) fn peer(mut self, ip: IpAddr) -> Self {
        self.peer_ip = Some(ip.to_canonical());
        self
    }

    pub(crate) fn transport(mut self, transport: &'static str) -> Self {
        self.transport = Some(transport);
        self
    }

    pub(crate) fn session(mut self, label: &str) -> Self {
        self.session = Some(label.to_owned());
        self
    }

    pub(crate) fn instance(mut self, name: &str, id: Uuid) -> Self {
        self.name = Some(name.to_owned());
        self.instance_id = Some(id);
        self
    }

    pub(crate) fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    pub(crate) fn reason(mut self, reason: impl ToString) -> Self {
        self.reason = Some(reason.to_string());
        self
    }
}

impl Audit {
    /// Opens the trail at `path` (`-` for stderr), or a no-op trail for `None`.
    pub(crate) fn open(path: Option<&Path>) -> anyhow::Result<Audit> {
        let audit = Audit {
            sender: Mutex::new(None),
            writer: Mutex::new(None),
            dropped: AtomicU64::new(0),
        };
        let Some(path) = path else { return Ok(audit) };
        let sink = Sink::open(path)?;
        let (sender, receiver) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("sova-relay-audit".into())
            .spawn(move || write_lines(sink, receiver))
            .context("cannot start the audit log writer")?;
        *audit.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
        *audit.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
        Ok(audit)
    }

    /// Queues an event; never blocks.
    pub(crate) fn record(&self, event: AuditEvent) {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = guard.as_ref() else { return };
        let Ok(line) = serde_json::to_string(&event) else {
            return;
        };
        if let Err(TrySendError::Full(_)) = sender.try_send(Command::Line(line)) {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(dropped, "Audit log is not keeping up; events dropped");
            }
        }
    }

    /// Reopens the file (after rotation).
    pub(crate) fn reopen(&self) {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = guard.as_ref() {
            let _ = sender.send(Command::Reopen);
        }
    }

    /// Writes what is queued and stops the writer.
    pub(crate) fn close(&self) {
        drop(self.sender.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

enum Sink {
    Stderr,
    File { path: PathBuf, file: File },
}

impl Sink {
    fn open(path: &Path) -> anyhow::Result<Sink> {
        if path == Path::new("-") {
            return Ok(Sink::Stderr);
        }
        Ok(Sink::File {
            file: append(path)?,
            path: path.to_owned(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stderr => io::stderr().write_all(bytes),
            Sink::File { file, .. } => file.write_all(bytes),
        }
    }

    fn reopen(&mut self) {
        if let Sink::File { path, file } = self {
            match append(path) {
                Ok(fresh) => *file = fresh,
                Err(err) => tracing::error!("Cannot reopen the audit log: {err:#}"),
            }
        }
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open audit log {}", path.display()))
}

fn write_lines(mut sink: Sink, commands: Receiver<Command>) {
    let mut batch = Vec::new();
    while let Ok(first) = commands.recv() {
        let mut reopen = false;
        for command in std::iter::once(first).chain(commands.try_iter()) {
            match command {
                Command::Line(line) => {
                    batch.extend_from_slice(line.as_bytes());
                    batch.push(b'\n');
                }
                Command::Reopen => reopen = true,
            }
        }
        if let Err(err) = sink.write(&batch) {
            tracing::error!("Cannot write the audit log: {err}");
        }
        batch.clear();
        if reopen {
            sink.reopen();
        }
    }
}
