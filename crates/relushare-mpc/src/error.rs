//! Error type shared by every part of `relushare-mpc` (protocol suites, transports, runner).

use thiserror::Error;

/// Everything that can go wrong in secure inference.
#[derive(Debug, Error)]
pub enum MpcError {
    /// A party index outside 0..=2 (or a party talking to itself).
    #[error("invalid party index {0} (parties are 0, 1 and 2)")]
    BadParty(usize),
    /// The peer closed its end of the connection / channel.
    #[error("party {0} disconnected")]
    Disconnected(usize),
    /// Waiting for a message from a peer took longer than the configured timeout.
    #[error("timed out waiting for a message from party {0}")]
    Timeout(usize),
    /// A message that does not have the expected length or content.
    #[error("malformed message from party {from}: {reason}")]
    Malformed { from: usize, reason: String },
    /// A frame larger than the transport's limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    /// Transport-level failure (TCP, TLS, channel) described in words.
    #[error("transport error: {0}")]
    Transport(String),
    /// TLS configuration or handshake failure.
    #[error("TLS error: {0}")]
    Tls(String),
    /// I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Tensor shapes or lengths that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The model (spec or parameters) cannot be evaluated securely.
    #[error("model error: {0}")]
    Model(String),
    /// A layer or option this protocol suite does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Invalid parameter (fixed-point bits, noise probability, ...).
    #[error("invalid parameter: {0}")]
    Param(String),
    /// The operating system's randomness source failed.
    #[error("randomness source failed: {0}")]
    Rng(String),
    /// Work abandoned because another part of this party (or session) failed first, e.g. the
    /// offline thread of a pipelined stream after its online side failed; never the root cause.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A party thread panicked or a party failed; carries that party's error text.
    #[error("party {party} failed: {reason}")]
    PartyFailed { party: usize, reason: String },
}

/// Result alias used throughout the crate.
pub type Result<T, E = MpcError> = std::result::Result<T, E>;
