//! What the relay shows about itself: the status page (static assets compiled into the
//! binary, filled in by polling the JSON API) and the JSON views behind it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use uuid::Uuid;

use crate::cluster::RemoteInstance;
use crate::metrics::Stats;
use crate::registry::{Member, SessionView};
use crate::server::Shared;

const PAGE: &str = include_str!("../assets/status.html");
const SCRIPT: &str = include_str!("../assets/status.js");
const STYLESHEET: &str = include_str!("../assets/status.css");

/// Scripts and styles come from the relay only: even a name that slipped past escaping
/// could not run code on the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'";

/// `GET /`
pub(crate) async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /status.js`
pub(crate) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /status.css`
pub(crate) async fn stylesheet() -> Response {
    asset(STYLESHEET, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}

/// `GET /api/status`: the relay as a whole.
#[derive(Serialize)]
pub(crate) struct StatusJson {
    relay_version: &'static str,
    sova_version: String,
    started_at: String,
    uptime_seconds: u64,
    instances: usize,
    max_instances: usize,
    sessions: usize,
    open_connections: u64,
    shutting_down: bool,
    totals: TotalsJson,
    /// This node's name, in cluster mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// The cluster as this node sees it, in cluster mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterJson>,
}

#[derive(Serialize)]
struct ClusterJson {
    /// Whether this node reaches NATS.
    connected: bool,
    /// Live nodes, this one included.
    nodes: Vec<String>,
    /// Instances of the whole cluster.
    instances: usize,
    /// Update streams the sessions are spread over (`--cluster-streams`).
    update_streams: u8,
}

#[derive(Serialize)]
struct TotalsJson {
    connections: u64,
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
    broadcasts: u64,
    rate_limited: u64,
    slow_consumer_disconnects: u64,
    registrations_rejected: u64,
    client_errors: u64,
}

/// One session and its instances.
#[derive(Serialize)]
pub(crate) struct SessionJson {
    /// `default`, or a short hash of the token.
    session: String,
    /// The token itself, only with `--show-session-names`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    instances: Vec<InstanceJson>,
}

/// One instance.
#[derive(Serialize)]
pub(crate) struct InstanceJson {
    id: Uuid,
    name: String,
    version: String,
    session: String,
    transport: &'static str,
    capabilities: Vec<&'static str>,
    connected_at: String,
    /// Unknown (null) for an instance of another node: only its node sees its traffic.
    last_activity: Option<String>,
    connected_seconds: u64,
    idle_seconds: Option<u64>,
    /// The cluster node it is connected to (cluster mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

pub(crate) async fn api_status(State(shared): State<Arc<Shared>>) -> Json<StatusJson> {
    let stats = &shared.stats;
    let sessions = shared.registry.sessions();
    let local_instances: usize = sessions.iter().map(|s| s.members.len()).sum();
    let overview = shared.registry.cluster.as_ref().map(|c| c.overview());
    Json(StatusJson {
        node: overview.as_ref().map(|o| o.node.clone()),
        cluster: overview.map(|o| ClusterJson {
            connected: o.connected,
            nodes: o.nodes,
            instances: local_instances + o.remote_instances,
            update_streams: o.update_streams,
        }),
        relay_version: env!("CARGO_PKG_VERSION"),
        sova_version: shared.config.sova_version.clone(),
        started_at: rfc3339(shared.started_at),
        uptime_seconds: shared.started.elapsed().as_secs(),
        instances: local_instances,
        max_instances: shared.config.max_instances,
        sessions: sessions.len(),
        open_connections: Stats::get(&stats.open_connections),
        shutting_down: shared.shutdown.is_cancelled(),
        totals: TotalsJson {
            connections: Stats::get(&stats.connections),
            messages_in: Stats::get(&stats.messages_in),
            bytes_in: Stats::get(&stats.bytes_in),
            messages_out: Stats::get(&stats.messages_out),
            bytes_out: Stats::get(&stats.bytes_out),
            broadcasts: Stats::get(&stats.broadcasts),
            rate_limited: Stats::get(&stats.rate_limited),
            slow_consumer_disconnects: Stats::get(&stats.slow_consumer_disconnects),
            registrations_rejected: Stats::get(&stats.registrations_rejected),
            client_errors: Stats::get(&stats.client_errors),
        },
    })
}

pub(crate) async fn api_sessions(State(shared): State<Arc<Shared>>) -> Json<Vec<SessionJson>> {
    let show_tokens = shared.config.show_session_names;
    let mut sessions: Vec<SessionJson> = shared
        .registry
        .sessions()
        .iter()
        .map(|session| SessionJson {
            session: session.label.clone(),
            token: show_tokens.then(|| session.token.clone().unwrap_or_default()),
            instances: instances_of(&shared, session),
        })
        .collect();
    // Sessions with instances on other nodes only.
    if let Some(cluster) = &shared.registry.cluster {
        let local: HashSet<String> = shared
            .registry
            .sessions()
            .into_iter()
            .map(|s| s.cluster_key)
            .collect();
        let mut remote: HashMap<String, Vec<InstanceJson>> = HashMap::new();
        for (key, instance) in cluster.all_remote_instances() {
            if !local.contains(&key) {
                remote
                    .entry(instance.session_label.clone())
                    .or_default()
                    .push(remote_instance_json(&instance));
            }
        }
        sessions.extend(remote.into_iter().map(|(label, instances)| SessionJson {
            session: label,
            token: None,
            instances,
        }));
    }
    sessions.sort_by(|a, b| a.session.cmp(&b.session));
    Json(sessions)
}

pub(crate) async fn api_instances(State(shared): State<Arc<Shared>>) -> Json<Vec<InstanceJson>> {
    let node = shared.registry.cluster.as_ref().map(|c| c.node.clone());
    let mut instances: Vec<InstanceJson> = Vec::new();
    for session in shared.registry.sessions() {
        instances.extend(session.members.iter().map(|member| InstanceJson {
            node: node.clone(),
            ..instance_json(member, &session.label)
        }));
    }
    if let Some(cluster) = &shared.registry.cluster {
        let remote = cluster.all_remote_instances();
        instances.extend(remote.iter().map(|(_, r)| remote_instance_json(r)));
    }
    instances.sort_by(|a, b| (&a.session, &a.name).cmp(&(&b.session, &b.name)));
    Json(instances)
}

fn instances_of(shared: &Shared, session: &SessionView) -> Vec<InstanceJson> {
    let node = shared.registry.cluster.as_ref().map(|c| c.node.clone());
    let mut instances: Vec<InstanceJson> = session
        .members
        .iter()
        .map(|member| InstanceJson {
            node: node.clone(),
            ..instance_json(member, &session.label)
        })
        .collect();
    if let Some(cluster) = &shared.registry.cluster {
        let remote = cluster.remote_instances(&session.cluster_key);
        instances.extend(remote.iter().map(remote_instance_json));
    }
    instances.sort_by(|a, b| a.connected_at.cmp(&b.connected_at));
    instances
}

fn instance_json(member: &Member, session: &str) -> InstanceJson {
    let now = SystemTime::now();
    let last_activity = member.last_activity();
    let capabilities = [("pong", member.pong), ("presence", member.presence)]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
    InstanceJson {
        id: member.id,
        name: member.name.clone(),
        version: member.version.clone(),
        session: session.to_owned(),
        transport: member.peer.transport,
        capabilities,
        connected_at: rfc3339(member.connected_at),
        last_activity: Some(rfc3339(last_activity)),
        connected_seconds: seconds_between(member.connected_at, now),
        idle_seconds: Some(seconds_between(last_activity, now)),
        node: None,
    }
}

/// An instance registered on another cluster node (what its entry in NATS says).
fn remote_instance_json(remote: &RemoteInstance) -> InstanceJson {
    let now = SystemTime::now();
    InstanceJson {
        id: remote.id,
        name: remote.name.clone(),
        version: remote.version.clone(),
        session: remote.session_label.clone(),
        transport: "remote",
        capabilities: Vec::new(),
        connected_at: rfc3339(remote.connected_at),
        last_activity: None,
        connected_seconds: seconds_between(remote.connected_at, now),
        idle_seconds: None,
        node: Some(remote.node.clone()),
    }
}

fn seconds_between(earlier: SystemTime, later: SystemTime) -> u64 {
    later.duration_since(earlier).map_or(0, |d| d.as_secs())
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}
