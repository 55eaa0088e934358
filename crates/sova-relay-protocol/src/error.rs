use thiserror::Error;

/// Why a frame or a body could not be read.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The length prefix announced more than the receiver accepts.
    #[error("Message too large: {len} bytes (max: {max})")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// Largest length accepted.
        max: usize,
    },
    /// A length prefix of zero: no message has an empty body.
    #[error("Invalid frame: zero-length message")]
    ZeroLength,
    /// The body is not well-formed MessagePack.
    #[error("Invalid message: malformed MessagePack ({0})")]
    Malformed(&'static str),
    /// The body nests deeper than [`crate::MAX_NESTING_DEPTH`].
    #[error("Invalid message: nested deeper than {0} levels")]
    TooDeep(usize),
    /// Well-formed MessagePack that is not one of the protocol's messages.
    #[error("Invalid message: {0}")]
    Invalid(String),
    /// The underlying stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
