//! The Sova relay wire protocol: message types, the length-prefixed frame codec and the
//! limits both sides agree on. No sockets and no runtime live here.
//!
//! ```
//! use sova_relay_protocol::{Message, UpdateData, encode_frame, decode_body};
//!
//! let ping = Message::Ping { timestamp: 42 };
//! let frame = encode_frame(&ping);
//! assert_eq!(&frame[..4], &[0, 0, 0, 0x12]);
//! assert_eq!(decode_body(frame.slice(4..)).unwrap(), ping);
//!
//! let data = UpdateData::from_array(&[1, 2, 3]);
//! assert_eq!(data.to_vec().unwrap(), vec![1, 2, 3]);
//! ```

mod codec;
mod error;
mod message;
mod raw;
mod update_data;

pub use codec::{
    decode_body, encode_body, encode_frame, state_broadcast_frame, FrameCodec, PendingBroadcast,
};
pub use error::ProtocolError;
pub use message::{InstanceInfo, Message, ResumeRequest};
pub use update_data::UpdateData;

/// Default largest frame body accepted, in bytes (1 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Largest frame body accepted before an instance has registered: a `RegisterInstance`
/// is tiny, so an unauthenticated peer never makes the relay buffer a full-size message.
pub const HANDSHAKE_MAX_MESSAGE_SIZE: usize = 16 * 1024;

/// Size of the big-endian length prefix in front of every body.
pub const FRAME_HEADER_LEN: usize = 4;

/// Longest accepted instance name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Deepest MessagePack nesting accepted in a body. Real messages need 5; the bound keeps a
/// hostile body from exhausting the stack of a recursive decoder.
pub const MAX_NESTING_DEPTH: usize = 16;

/// Capability: the client answers the relay's `Ping` with `Pong`.
pub const CAPABILITY_PONG: &str = "pong";

/// Capability: the client understands `InstanceConnected`.
pub const CAPABILITY_PRESENCE: &str = "presence";

/// Capability: the client may resume a dropped connection without losing broadcasts.
pub const CAPABILITY_RESUME: &str = "resume";

/// Capability: the client may publish and receive `SessionSnapshot`s.
pub const CAPABILITY_SNAPSHOT: &str = "snapshot";

/// `RegistrationResponse.resumed` when the missed broadcasts follow.
pub const RESUMED_OK: &str = "ok";

/// `RegistrationResponse.resumed` when the client must rebuild its state.
pub const RESUMED_RESYNC_REQUIRED: &str = "resync_required";

/// Checks an instance name: 1 to [`MAX_NAME_LEN`] bytes, no control characters.
pub fn validate_instance_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Invalid instance name: must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "Invalid instance name: {} bytes (max: {MAX_NAME_LEN})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("Invalid instance name: control characters are not allowed".to_owned());
    }
    Ok(())
}
