//! `config print`: a configuration as a `--config` file, one `key = value` line per option,
//! with where each value came from.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use toml::Value;

use super::{command, file, Config, Origin, REDACTED};

impl Config {
    /// One `key = value` line per option, in the order of `--help`.
    pub(super) fn render(&self, origins: Option<&HashMap<String, Origin>>) -> String {
        let values: HashMap<&str, Option<Value>> = self.values().into_iter().collect();
        let mut text = String::new();
        for arg in file::keys(&command()) {
            let key = arg.get_id().as_str();
            let line = match values.get(key) {
                Some(Some(_)) if arg.is_hide_env_values_set() => {
                    format!("{key} = \"{REDACTED}\"")
                }
                Some(Some(value)) => format!("{key} = {value}"),
                Some(None) => format!("# {key} is not set"),
                None => format!("# {key}: not shown"),
            };
            match origins.and_then(|origins| origins.get(key)) {
                Some(origin) => {
                    let _ = writeln!(text, "{line:<44} # {origin}");
                }
                None => {
                    let _ = writeln!(text, "{line}");
                }
            }
        }
        text
    }

    /// Every option's value as TOML (`None`: not set).
    pub(super) fn values(&self) -> Vec<(&'static str, Option<Value>)> {
        let path = |path: &Option<PathBuf>| {
            path.as_ref()
                .map(|path| Value::String(path.display().to_string()))
        };
        let nets = |nets: &[IpNet]| {
            let nets = nets.iter().map(|net| Value::String(net.to_string()));
            Some(Value::Array(nets.collect()))
        };
        vec![
            ("host", Some(Value::String(self.host.to_string()))),
            ("port", Some(integer(self.port))),
            ("max_instances", Some(integer(self.max_instances))),
            ("rate_limit", Some(integer(self.rate_limit))),
            ("log_level", Some(Value::String(self.log_level.clone()))),
            ("max_message_size", Some(integer(self.max_message_size))),
            ("max_pending_bytes", Some(integer(self.max_pending_bytes))),
            ("write_timeout", Some(duration_value(self.write_timeout))),
            (
                "handshake_timeout",
                Some(duration_value(self.handshake_timeout)),
            ),
            (
                "shutdown_timeout",
                Some(duration_value(self.shutdown_timeout)),
            ),
            (
                "sova_version",
                Some(Value::String(self.sova_version.clone())),
            ),
            ("ping_interval", Some(duration_value(self.ping_interval))),
            ("http", Some(Value::Boolean(self.http))),
            ("admin_token", self.admin_token.clone().map(Value::String)),
            (
                "show_session_names",
                Some(Value::Boolean(self.show_session_names)),
            ),
            ("tls_cert", path(&self.tls_cert)),
            ("tls_key", path(&self.tls_key)),
            ("tls_required", Some(Value::Boolean(self.tls_required))),
            ("tokens_file", path(&self.tokens_file)),
            ("allow", nets(&self.allow)),
            ("deny", nets(&self.deny)),
            ("max_connections", Some(integer(self.max_connections))),
            (
                "max_connections_per_ip",
                Some(integer(self.max_connections_per_ip)),
            ),
            (
                "connection_rate_per_ip",
                Some(integer(self.connection_rate_per_ip)),
            ),
            (
                "max_failed_registrations",
                Some(integer(self.max_failed_registrations)),
            ),
            ("lockout", Some(duration_value(self.lockout))),
            ("audit_log", path(&self.audit_log)),
            (
                "history_max_updates",
                Some(integer(self.history_max_updates)),
            ),
            ("history_max_bytes", Some(integer(self.history_max_bytes))),
            (
                "history_max_age",
                Some(duration_value(self.history_max_age)),
            ),
            ("max_snapshot_bytes", Some(integer(self.max_snapshot_bytes))),
            ("max_missed_pongs", Some(integer(self.max_missed_pongs))),
            ("tcp_keepalive", Some(duration_value(self.tcp_keepalive))),
            (
                "tcp_keepalive_interval",
                Some(duration_value(self.tcp_keepalive_interval)),
            ),
            (
                "tcp_keepalive_retries",
                Some(integer(self.tcp_keepalive_retries)),
            ),
            (
                "tcp_user_timeout",
                Some(duration_value(self.tcp_user_timeout)),
            ),
            ("cluster_nats", {
                let urls = self.cluster_nats.iter().cloned().map(Value::String);
                Some(Value::Array(urls.collect()))
            }),
            ("node_name", self.node_name.clone().map(Value::String)),
            ("cluster_expiry", Some(duration_value(self.cluster_expiry))),
            ("cluster_nats_creds", path(&self.cluster_nats_creds)),
            ("cluster_nats_ca", path(&self.cluster_nats_ca)),
            ("cluster_nats_cert", path(&self.cluster_nats_cert)),
            ("cluster_nats_key", path(&self.cluster_nats_key)),
            (
                "cluster_history_max_bytes",
                Some(integer(self.cluster_history_max_bytes)),
            ),
            (
                "cluster_storage",
                Some(Value::String(self.cluster_storage.clone())),
            ),
            ("cluster_replicas", Some(integer(self.cluster_replicas))),
            ("cluster_streams", Some(integer(self.cluster_streams))),
        ]
    }
}

pub(super) fn integer<T: TryInto<i64> + ToString + Copy>(number: T) -> Value {
    match number.try_into() {
        Ok(number) => Value::Integer(number),
        // Beyond i64 (a usize byte count on a 64-bit machine): the flag parses it as text.
        Err(_) => Value::String(number.to_string()),
    }
}

/// A duration as [`parse_duration`] reads it back: `10s`, `60s`, `5m`, `1h`, `1500ms`.
pub(super) fn duration_value(duration: Duration) -> Value {
    let seconds = duration.as_secs();
    let text = if duration.subsec_nanos() != 0 || seconds == 0 {
        format!("{}ms", duration.as_millis())
    } else if seconds % 3600 == 0 {
        format!("{}h", seconds / 3600)
    } else if seconds % 60 == 0 && seconds > 60 {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    };
    Value::String(text)
}
