//! `relushare bench`: the measurements behind BENCHMARKS.md (the pipeline is
//! [`relushare_experiments::bench`]); `--serve` runs the serving load test
//! ([`crate::serve_bench`]), whose servers are processes of this binary.

use anyhow::Result;
use relushare_model::Arch;
use relushare_mpc::protocol::Protocol;

pub use relushare_experiments::bench::Args;

pub fn run(a: Args) -> Result<()> {
    if a.serve {
        return crate::serve_bench::run(
            a.archs
                .clone()
                .unwrap_or_else(|| vec![Arch::Fmnist, Arch::Cifar10]),
            a.presets
                .as_ref()
                .and_then(|p| p.first().cloned())
                .unwrap_or_else(|| "original".into()),
            a.protocols
                .as_ref()
                .and_then(|p| p.first().copied())
                .unwrap_or(Protocol::Fast),
            a.clients,
            a.per_client,
            a.max_sessions,
            a.json.as_deref(),
        );
    }
    relushare_experiments::bench::run(a)
}
