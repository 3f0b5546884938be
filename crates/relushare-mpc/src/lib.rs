//! Secure three-party inference over Z_2^64 (no Burn): ring and fixed-point arithmetic, a
//! cryptographic PRG, the party transport and its cost accounting, plain kernels, the
//! [`suite::Suite`] interface every protocol suite implements, and the runner.
//!
//! Parties: P0 and P1 hold additive shares of the image and the weights; P2 helps (dealer).

pub mod auto;
pub mod cost;
pub mod error;
pub mod fast;
pub mod fixed;
pub mod fss;
pub mod kernels;
pub mod mimo;
pub mod net;
pub mod pipeline;
pub mod plain;
pub mod prg;
pub mod protocol;
pub mod ring;
pub mod runner;
pub mod securenn;
pub mod suite;
pub mod transport;
#[cfg(test)]
pub(crate) mod view_harness;
#[cfg(test)]
pub(crate) mod view_stats;

pub use error::{MpcError, Result};
