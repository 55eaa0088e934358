//! A real three-server NATS cluster with JetStream (`n0`, `n1`, `n2`) on loopback, for the
//! tests of what the relay does when one NATS server is lost (`ha.rs`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{free_port, http_get, reap, stderr_lines, WAIT};

/// The stream every session's updates go through.
pub(crate) const UPDATES_STREAM: &str = "SOVA_UPDATES";

/// One `nats-server` of the NATS cluster, SIGKILLed and reaped on drop.
pub(crate) struct NatsMember {
    pub(crate) name: String,
    port: u16,
    monitor: SocketAddr,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
}

impl NatsMember {
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then reaps the process. Returns when the kill was sent.
    pub(crate) fn kill(&mut self) -> Instant {
        let mut child = self.child.take().expect("nats-server is running");
        child.kill().unwrap();
        let killed = Instant::now();
        let _ = child.wait();
        killed
    }

    /// `GET path` of the monitoring port as JSON; `None` if it does not answer so.
    pub(crate) async fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        match http_get(self.monitor, path).await {
            // A large answer comes in chunks (HTTP/1.1 without a length).
            Ok((200, body)) => serde_json::from_str(&body)
                .ok()
                .or_else(|| serde_json::from_str(&dechunk(&body)?).ok()),
            _ => None,
        }
    }

    /// The leader of `SOVA_UPDATES` as this server sees it (a server name), if any.
    pub(crate) async fn stream_leader(&self) -> Option<String> {
        let jsz = self.monitor("/jsz?streams=true").await?;
        let leader = jsz["account_details"]
            .as_array()?
            .iter()
            .filter_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find(|stream| stream["name"] == UPDATES_STREAM)?["cluster"]["leader"]
            .as_str()?
            .to_owned();
        (!leader.is_empty()).then_some(leader)
    }

    /// The JetStream meta leader as this server sees it.
    pub(crate) async fn meta_leader(&self) -> Option<String> {
        let jsz = self.monitor("/jsz").await?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?.to_owned();
        (!leader.is_empty()).then_some(leader)
    }

    /// The relay nodes connected to this server (`node-0`, …).
    pub(crate) async fn relay_nodes(&self) -> Option<Vec<String>> {
        let connz = self.monitor("/connz").await?;
        Some(
            connz["connections"]
                .as_array()
                .map(|connections| {
                    connections
                        .iter()
                        .filter_map(|c| c["name"].as_str()?.strip_prefix("sova-relay "))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

impl Drop for NatsMember {
    fn drop(&mut self) {
        let who = format!("nats-server {}", self.name);
        reap(&mut self.child, &who, &self.lines, 40);
    }
}

/// Three `nats-server -js` on 127.0.0.1 routed into cluster `sova-test`.
pub(crate) struct NatsCluster {
    pub(crate) members: Vec<NatsMember>,
}

impl NatsCluster {
    /// Starts the three servers, each with its store under `dir`, and waits until each is
    /// ready and knows the JetStream meta leader.
    pub(crate) fn start(binary: &Path, dir: &Path) -> Self {
        // Nine distinct ports: client, route and monitoring port of each server.
        let mut ports = Vec::new();
        while ports.len() < 9 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let route = |i: usize| format!("nats://127.0.0.1:{}", ports[3 * i + 1]);
        let mut members = Vec::new();
        for i in 0..3 {
            let name = format!("n{i}");
            let routes: Vec<String> = (0..3).filter(|&j| j != i).map(route).collect();
            let mut child = Command::new(binary)
                .args(["-a", "127.0.0.1", "-p", &ports[3 * i].to_string()])
                .args(["-m", &ports[3 * i + 2].to_string()])
                .args(["--server_name", &name, "--cluster_name", "sova-test"])
                .args(["--cluster", &route(i), "--routes", &routes.join(",")])
                .args(["-js", "-sd"])
                .arg(dir.join(&name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let lines = stderr_lines(&mut child);
            members.push(NatsMember {
                name,
                port: ports[3 * i],
                monitor: SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 2])),
                child: Some(child),
                lines,
            });
        }
        for member in &members {
            wait_for_all(
                &member.lines,
                &member.name,
                &[
                    &["Server is ready"],
                    // Logged by the others, and by the leader itself.
                    &[
                        "JetStream cluster new metadata leader",
                        "Self is new JetStream cluster metadata leader",
                    ],
                ],
            );
        }
        NatsCluster { members }
    }

    pub(crate) fn urls(&self) -> String {
        let urls: Vec<String> = self.members.iter().map(NatsMember::url).collect();
        urls.join(",")
    }

    pub(crate) fn index(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .unwrap_or_else(|| panic!("no NATS server {name}"))
    }

    /// The leader of `SOVA_UPDATES` as the first running server that knows it says.
    pub(crate) async fn stream_leader(&self) -> Option<String> {
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            if let Some(leader) = member.stream_leader().await {
                return Some(leader);
            }
        }
        None
    }

    /// Polls until `SOVA_UPDATES` has a leader other than `not` (on a running server).
    pub(crate) async fn wait_stream_leader(&self, not: Option<&str>) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.stream_leader().await {
                let running = self.members[self.index(&leader)].child.is_some();
                if running && Some(leader.as_str()) != not {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{UPDATES_STREAM} has no leader but {not:?} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Which relay nodes each server carries, once both nodes are found connected.
    pub(crate) async fn relay_connections(&self) -> Vec<Vec<String>> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut found = Vec::new();
            for member in &self.members {
                found.push(member.relay_nodes().await.unwrap_or_default());
            }
            if found.iter().map(Vec::len).sum::<usize>() == 2 {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "the two relay nodes are not both connected to NATS: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// For the log: on which server each relay node's consumers of `SOVA_UPDATES` (the
    /// session feeds) live, matched by their deliver subjects, e.g. `node-0's on n1`.
    pub(crate) async fn feed_consumers(&self) -> Vec<String> {
        let mut owners = std::collections::HashMap::new();
        let mut consumers = Vec::new();
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            if let Some(connz) = member.monitor("/connz?subs=detail").await {
                for connection in connz["connections"].as_array().into_iter().flatten() {
                    let Some(node) = connection["name"].as_str() else {
                        continue;
                    };
                    let node = node.strip_prefix("sova-relay ").unwrap_or(node);
                    let subs = connection["subscriptions_list_detail"].as_array();
                    for sub in subs.into_iter().flatten() {
                        if let Some(subject) = sub["subject"].as_str() {
                            owners.insert(subject.to_owned(), node.to_owned());
                        }
                    }
                }
            }
            let Some(jsz) = member.monitor("/jsz?consumers=true&config=true").await else {
                continue;
            };
            let streams = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|account| account["stream_detail"].as_array())
                .flatten();
            for stream in streams.filter(|s| s["name"] == UPDATES_STREAM) {
                for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
                    let deliver = consumer["config"]["deliver_subject"].as_str();
                    let leader = consumer["cluster"]["leader"].as_str();
                    consumers.push((deliver.map(str::to_owned), leader.map(str::to_owned)));
                }
            }
        }
        consumers.sort();
        consumers.dedup();
        consumers
            .into_iter()
            .map(|(deliver, leader)| {
                let owner = deliver.and_then(|d| owners.get(&d).cloned());
                format!(
                    "{}'s on {}",
                    owner.as_deref().unwrap_or("?"),
                    leader.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }

    /// Moves the leadership of `SOVA_UPDATES` (step-downs, each electing one of the two
    /// other servers at random) until its leader carries a relay node's connection; that
    /// server's index, and whether the move succeeded.
    pub(crate) async fn lead_from_a_relay_nodes_server(&self) -> (usize, bool) {
        let connections = self.relay_connections().await;
        let client = tokio::time::timeout(WAIT, async_nats::connect(self.members[0].url()))
            .await
            .expect("connecting to NATS timed out")
            .unwrap();
        let mut leader = self.wait_stream_leader(None).await;
        // Each step-down succeeds with a probability of at least 1/2: 10 fail 1 in 1024.
        for _ in 0..10 {
            if !connections[self.index(&leader)].is_empty() {
                return (self.index(&leader), true);
            }
            let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{UPDATES_STREAM}");
            let answer = tokio::time::timeout(WAIT, client.request(subject, "".into()))
                .await
                .expect("the step-down request timed out")
                .unwrap();
            let answer = String::from_utf8_lossy(&answer.payload).into_owned();
            assert!(answer.contains("\"success\":true"), "step-down: {answer}");
            leader = self.wait_stream_leader(Some(&leader)).await;
        }
        (self.index(&leader), false)
    }
}

/// Waits until, for each of `wanted`, a line containing one of its alternatives was
/// logged, in any order; panics with what was seen after `WAIT`, or as soon as the process
/// exits.
pub(crate) fn wait_for_all(lines: &mpsc::Receiver<String>, who: &str, wanted: &[&[&str]]) {
    let deadline = Instant::now() + WAIT;
    let mut missing: Vec<&[&str]> = wanted.to_vec();
    let mut seen = Vec::new();
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                missing.retain(|any| !any.iter().any(|needle| line.contains(needle)));
                seen.push(line);
            }
            Err(err) => panic!(
                "{who} never logged {missing:?} ({err}); its stderr:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// The body of a chunked HTTP answer; `None` if it is not one.
pub(crate) fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}
