//! The settings' parsers, defaults, file keys and printing.

use super::file::ConfigFile;
use super::print::duration_value;
use super::resolve::is_default;
use super::*;
use toml::Value;

#[test]
fn durations_parse_with_and_without_units() {
    assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("-1").is_err());
}

#[test]
fn defaults_match_the_documentation() {
    let config = Config::default();
    assert_eq!(config.port, 9090);
    assert_eq!(config.max_instances, 20);
    assert_eq!(config.rate_limit, 1000);
    assert_eq!(config.max_message_size, 1 << 20);
    assert_eq!(config.max_pending_bytes, 8 << 20);
    assert_eq!(config.sova_version, "0.1.0");
    assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
    assert!(config.http);
    assert!(config.admin_token.is_none());
    assert_eq!(config.max_connections, 4096);
    assert_eq!(config.max_connections_per_ip, 16);
}

#[test]
fn boolean_flags_take_env_style_values() {
    let config =
        Config::try_parse_from(["sova-relay", "--http", "0", "--show-session-names"]).unwrap();
    assert!(!config.http);
    assert!(config.show_session_names);
}

#[test]
fn cidr_lists_parse_from_flags() {
    let config = Config::try_parse_from([
        "sova-relay",
        "--allow",
        "127.0.0.0/8,::1/128",
        "--deny",
        "127.0.0.2/32",
    ])
    .unwrap();
    assert_eq!(config.allow.len(), 2);
    assert_eq!(config.deny.len(), 1);
    assert!(Config::try_parse_from(["sova-relay", "--allow", "localhost"]).is_err());
}

#[test]
fn tls_needs_both_files() {
    assert!(Config::try_parse_from(["sova-relay", "--tls-cert", "c.pem"]).is_err());
    assert!(Config::try_parse_from(["sova-relay", "--tls-required"]).is_err());
}

fn file(text: &str) -> Result<ConfigFile, String> {
    ConfigFile::parse(Path::new("relay.toml"), text, &command()).map_err(|err| one_line(&err))
}

#[test]
fn every_option_is_a_file_key_and_is_printed() {
    let printed: Vec<&str> = Config::default()
        .values()
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let cmd = command();
    let keys: Vec<&str> = file::keys(&cmd).map(|arg| arg.get_id().as_str()).collect();
    assert_eq!(
        printed, keys,
        "Config::values() must list every option, in order"
    );
    assert!(!keys.contains(&CONFIG_ID));
}

#[test]
fn a_printed_configuration_reads_back_the_same() {
    let mut config = Config::try_parse_from([
        "sova-relay",
        "--host",
        "::1",
        "--max-instances",
        "7",
        "--handshake-timeout",
        "1500ms",
        "--lockout",
        "2h",
        "--tcp-user-timeout",
        "90",
        "--http",
        "false",
        "--allow",
        "10.0.0.0/8,2001:db8::/32",
        "--audit-log",
        "-",
    ])
    .unwrap();
    config.tokens_file = Some(PathBuf::from("/etc/sova/tokens"));
    let text = config.to_toml();
    let settings = file(&text).unwrap().settings;
    let cmd = command();
    let mut args = vec![OsString::from("sova-relay")];
    let given = settings.iter().filter(|setting| !is_default(&cmd, setting));
    args.extend(given.flat_map(|setting| setting.as_args()));
    let read_back = Config::try_parse_from(args).unwrap();
    assert_eq!(read_back.to_toml(), text);
    assert!(text.contains("handshake_timeout = \"1500ms\""), "{text}");
    assert!(text.contains("lockout = \"2h\""), "{text}");
    assert!(
        text.contains("allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]"),
        "{text}"
    );
}

#[test]
fn secrets_are_redacted() {
    let config = Config::try_parse_from(["sova-relay", "--admin-token", "hunter2"]).unwrap();
    let text = config.to_toml();
    assert!(text.contains("admin_token = \"<redacted>\""), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[test]
fn file_values_are_checked_by_the_flags_parsers() {
    let ok = file("max_instances = 50\nallow = \"10.0.0.0/8, ::1/128\"\nhttp = false\n");
    let settings = ok.unwrap().settings;
    assert_eq!(settings[0].values, ["10.0.0.0/8", "::1/128"]);
    let cases = [
        (
            "max_instance = 5",
            "unknown key `max_instance` (did you mean `max_instances`?)",
        ),
        (
            "max-instances = 5",
            "unknown key `max-instances` (did you mean `max_instances`?)",
        ),
        ("config = \"other.toml\"", "unknown key `config`"),
        ("help = true", "unknown key `help`"),
        (
            "max_instances = \"many\"",
            "`max_instances = \"many\"`: invalid digit",
        ),
        ("rate_limit = 0", "`rate_limit = 0`: 0 is not in 1.."),
        (
            "lockout = \"soon\"",
            "`lockout = \"soon\"`: 'soon' is not a duration",
        ),
        (
            "host = \"localhost\"",
            "`host = \"localhost\"`: invalid IP address syntax",
        ),
        (
            "port = [1, 2]",
            "`port = [1, 2]`: takes one value, not a list",
        ),
        (
            "deny = [[1]]",
            "`deny = [[1]]`: expected a string, a number or a boolean",
        ),
        (
            "http = \"maybe\"",
            "`http = \"maybe\"`: value was not a boolean",
        ),
        (
            "port = 1\nport = 2",
            "relay.toml:2:1: invalid TOML: duplicate key",
        ),
    ];
    for (text, expected) in cases {
        let err = file(text)
            .err()
            .unwrap_or_else(|| panic!("{text:?} was accepted"));
        assert!(err.contains(expected), "{text:?}: {err}");
        assert!(err.starts_with("relay.toml"), "{text:?}: {err}");
    }
}

#[test]
fn durations_print_as_they_parse() {
    for (duration, text) in [
        (Duration::from_secs(10), "10s"),
        (Duration::from_secs(60), "60s"),
        (Duration::from_secs(300), "5m"),
        (Duration::from_secs(7200), "2h"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::ZERO, "0ms"),
    ] {
        assert_eq!(duration_value(duration), Value::String(text.into()));
        assert_eq!(parse_duration(text), Ok(duration));
    }
}

#[test]
fn message_size_keeps_the_first_byte_zero() {
    assert!(parse_message_size("16777216").is_err());
    assert!(parse_message_size("0").is_err());
    assert_eq!(parse_message_size("1024"), Ok(1024));
}

#[test]
fn each_update_stream_must_hold_one_largest_update() {
    let cluster = |extra: &[&str]| {
        let mut args = vec!["sova-relay", "--cluster-nats", "nats://127.0.0.1:4222"];
        args.extend_from_slice(extra);
        Config::load_from(args)
    };
    assert!(cluster(&[]).is_ok(), "the defaults");
    let err = cluster(&[
        "--cluster-history-max-bytes",
        "4000000",
        "--cluster-streams",
        "8",
    ])
    .unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(
        one_line(&err).contains("500000 bytes per update stream"),
        "{err}"
    );
    assert!(cluster(&["--cluster-history-max-bytes", "0"]).is_err());
    assert!(cluster(&[
        "--cluster-history-max-bytes",
        "8388608",
        "--cluster-streams",
        "8"
    ])
    .is_ok());
    // Without a cluster the cluster's options are not used: nothing to refuse.
    assert!(Config::load_from(["sova-relay", "--cluster-history-max-bytes", "0"]).is_ok());
}
