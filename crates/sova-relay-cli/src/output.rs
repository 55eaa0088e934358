//! One line per event on stdout: `key=value` text for people, JSON objects for scripts.

use std::io::{self, Write};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use sova_relay_client::Event;

use crate::decode::msgpack_to_json;

/// The line printed for `event`, without the newline.
pub fn format_event(event: &Event, as_json: bool) -> String {
    if as_json {
        event_json(event).to_string()
    } else {
        event_text(event)
    }
}

/// Prints one line and flushes; `Ok(false)` when stdout is closed (e.g. piped into `head`).
pub fn print_line(line: &str) -> io::Result<bool> {
    let mut stdout = io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(err) => Err(err),
    }
}

fn event_json(event: &Event) -> Value {
    match event {
        Event::Broadcast {
            from,
            timestamp,
            data,
        } => {
            let mut object = json!({
                "type": "broadcast",
                "from": from,
                "timestamp": timestamp,
                "data": BASE64.encode(data),
            });
            if let (Some(decoded), Some(map)) = (msgpack_to_json(data), object.as_object_mut()) {
                map.insert("decoded".to_owned(), decoded);
            }
            object
        }
        Event::Joined { id, name } => json!({"type": "joined", "id": id.to_string(), "name": name}),
        Event::Left { id, name } => json!({"type": "left", "id": id.to_string(), "name": name}),
        Event::Error(message) => json!({"type": "error", "message": message}),
        Event::Disconnected(reason) => json!({"type": "disconnected", "reason": reason}),
        Event::Reconnected => json!({"type": "reconnected"}),
        Event::Resynced => json!({"type": "resynced"}),
        Event::ResyncRequired => json!({"type": "resync_required"}),
        Event::Snapshot { seq, data } => {
            let mut object = json!({"type": "snapshot", "seq": seq, "data": BASE64.encode(data)});
            if let (Some(decoded), Some(map)) = (msgpack_to_json(data), object.as_object_mut()) {
                map.insert("decoded".to_owned(), decoded);
            }
            object
        }
    }
}

fn event_text(event: &Event) -> String {
    match event {
        Event::Broadcast {
            from,
            timestamp,
            data,
        } => format!(
            "broadcast from={from:?} timestamp={timestamp} size={} {}",
            data.len(),
            describe(data)
        ),
        Event::Joined { id, name } => format!("joined name={name:?} id={id}"),
        Event::Left { id, name } => format!("left name={name:?} id={id}"),
        Event::Error(message) => format!("error message={message:?}"),
        Event::Disconnected(reason) => format!("disconnected reason={reason:?}"),
        Event::Reconnected => "reconnected".to_owned(),
        Event::Resynced => "resynced".to_owned(),
        Event::ResyncRequired => "resync_required".to_owned(),
        Event::Snapshot { seq, data } => {
            format!("snapshot seq={seq} size={} {}", data.len(), describe(data))
        }
    }
}

/// Printable text as text, else MessagePack as JSON, else base64.
fn describe(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) if !text.chars().any(char::is_control) => format!("text={text:?}"),
        _ => match msgpack_to_json(data) {
            Some(decoded) => format!("decoded={decoded}"),
            None => format!("base64={}", BASE64.encode(data)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broadcast(data: &[u8]) -> Event {
        Event::Broadcast {
            from: "bob".to_owned(),
            timestamp: 42,
            data: data.to_vec(),
        }
    }

    #[test]
    fn json_lines_carry_base64_and_decoded_msgpack() {
        let line = format_event(&broadcast(&[0x92, 0x01, 0xa1, b'x']), true);
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            value,
            json!({"type": "broadcast", "from": "bob", "timestamp": 42,
                   "data": "kgGheA==", "decoded": [1, "x"]})
        );
        let value: Value = serde_json::from_str(&format_event(&broadcast(b"hi!"), true)).unwrap();
        assert_eq!(value.get("decoded"), None);
        assert_eq!(value["data"], "aGkh");
    }

    #[test]
    fn text_lines_pick_the_most_readable_form() {
        assert_eq!(
            format_event(&broadcast(b"tempo 120"), false),
            r#"broadcast from="bob" timestamp=42 size=9 text="tempo 120""#
        );
        assert!(format_event(&broadcast(&[0x91, 0x07]), false).ends_with("decoded=[7]"));
        assert!(format_event(&broadcast(&[0xc1, 0x00]), false).ends_with("base64=wQA="));
        assert_eq!(format_event(&Event::Reconnected, false), "reconnected");
        assert_eq!(
            format_event(&Event::Resynced, true),
            r#"{"type":"resynced"}"#
        );
        assert_eq!(
            format_event(&Event::ResyncRequired, true),
            r#"{"type":"resync_required"}"#
        );
        let snapshot = Event::Snapshot {
            seq: 7,
            data: b"a=1".to_vec(),
        };
        assert_eq!(
            format_event(&snapshot, true),
            r#"{"data":"YT0x","seq":7,"type":"snapshot"}"#
        );
        assert_eq!(
            format_event(&snapshot, false),
            r#"snapshot seq=7 size=3 text="a=1""#
        );
        assert_eq!(
            format_event(&Event::Disconnected("gone".to_owned()), true),
            r#"{"reason":"gone","type":"disconnected"}"#
        );
    }
}
