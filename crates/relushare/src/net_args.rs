//! `--network lan|wan|none [--rtt-ms X --mbit Y]`: the emulated network of `infer`, `serve` and
//! `classify` (`relushare_mpc::net::emu`).

use std::time::Duration;

use anyhow::{bail, Result};
use relushare_mpc::net::emu::NetProfile;

#[derive(clap::Args, Debug, Clone)]
pub struct NetworkArgs {
    /// Network: none (the real one; for `infer`, parties on threads in this process), lan
    /// (3 Gbit/s, 0.3 ms RTT) or wan (400 Mbit/s, 40 ms RTT): links through a user-space
    /// shaping relay (one-way delay RTT/2 and a bandwidth cap per direction).
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Round-trip time of the emulated network in ms (overrides the profile's).
    #[arg(long)]
    pub rtt_ms: Option<f64>,
    /// Bandwidth of each direction of the emulated network in Mbit/s (overrides the profile's).
    #[arg(long)]
    pub mbit: Option<f64>,
}

impl NetworkArgs {
    /// The emulated network, or `None` for the real one.
    pub fn profile(&self) -> Result<Option<NetProfile>> {
        Ok(NetProfile::from_args(
            &self.network,
            self.rtt_ms,
            self.mbit,
        )?)
    }
}

/// A `--NAME SECONDS` option as a duration: more than 0 and at most a day.
pub fn secs(name: &str, v: f64) -> Result<Duration> {
    if !(v > 0.0 && v <= 86_400.0) {
        bail!("--{name} must be between 0 and 86400 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}
