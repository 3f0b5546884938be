//! Errors of the networked transport. Every variant that concerns a peer names it.

use std::path::PathBuf;

/// Marks a connection whose peer has not been identified yet (an incoming connection before
/// its certificate was checked).
pub const UNIDENTIFIED: usize = usize::MAX;

/// How errors name a peer: `peer P1`, or `an unidentified peer`.
pub fn pname(peer: usize) -> String {
    if peer == UNIDENTIFIED {
        "an unidentified peer".to_string()
    } else {
        format!("peer P{peer}")
    }
}

/// Errors of key generation/loading, connection setup and framed TLS messaging.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer closed the connection while we expected more from it.
    #[error("{} disconnected", pname(*.peer))]
    Disconnected { peer: usize },
    /// The peer's stream ended inside a frame.
    #[error("{} sent a short frame (the stream ended after {got} of {expected} bytes)", pname(*.peer))]
    ShortFrame {
        peer: usize,
        got: u64,
        expected: u64,
    },
    /// The peer announced a frame above the size limit.
    #[error("{} announced a frame of {len} bytes, above the limit of {max} bytes", pname(*.peer))]
    Oversized { peer: usize, len: u64, max: u64 },
    /// Nothing arrived from (or could be written to) the peer within the timeout.
    #[error("{} stalled: {what} timed out after {secs:.1} s", pname(*.peer))]
    Timeout {
        peer: usize,
        what: &'static str,
        secs: f64,
    },
    /// A connection to or from the peer was not established before the deadline.
    #[error("no connection with {} within {secs:.1} s: {detail}", pname(*.peer))]
    NotConnected {
        peer: usize,
        secs: f64,
        detail: String,
    },
    /// TLS failed (handshake, certificate, alert, decryption).
    #[error("TLS error with {}: {source}", pname(*.peer))]
    Tls { peer: usize, source: rustls::Error },
    /// Socket I/O failed.
    #[error("I/O error with {}: {source}", pname(*.peer))]
    Io { peer: usize, source: std::io::Error },
    /// The peer failed authentication or the session check, or refused us.
    #[error("connection with {peer} refused: {reason}")]
    Refused { peer: String, reason: String },
    /// The peer sent something that breaks the message protocol.
    #[error("protocol error with {}: {reason}", pname(*.peer))]
    Protocol { peer: usize, reason: String },
    /// A key, certificate or session file is missing, unreadable, malformed or unsafe.
    #[error("{}: {reason}", path.display())]
    Keys { path: PathBuf, reason: String },
    /// The connection failed earlier (the first error was already reported once).
    #[error("connection with {} is down: {reason}", pname(*.peer))]
    LinkFailed { peer: usize, reason: String },
    /// Bad configuration (roles, addresses, session ids).
    #[error("{0}")]
    Config(String),
    /// Using the transport with a party it has no connection to.
    #[error("no connection to party {peer} (this is party {me})")]
    NoPeer { me: usize, peer: usize },
}

impl NetError {
    /// Maps a socket error; socket timeouts (WouldBlock/TimedOut) become [`NetError::Timeout`].
    pub(crate) fn io(
        peer: usize,
        source: std::io::Error,
        what: &'static str,
        timeout: std::time::Duration,
    ) -> Self {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return NetError::Timeout {
                peer,
                what,
                secs: timeout.as_secs_f64(),
            };
        }
        if matches!(
            source.kind(),
            std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ) {
            return NetError::Disconnected { peer };
        }
        NetError::Io { peer, source }
    }
}
