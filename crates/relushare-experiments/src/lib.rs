//! relushare's pipelines, as a library the CLI calls and tests can reach without the binary:
//!
//! - [`secure`]: one secure-inference run (in process, or as three party processes over an
//!   emulated network) with its costs, timings and agreement figures;
//! - [`stream`]: a stream of images with the dealer's offline work pipelined away: images per
//!   second and latency per image;
//! - [`reproduce`]: the paper's tables (training jobs over seeds, clustering, secure runs,
//!   reuse of finished artefacts and resumption, the report, figures and the summary over
//!   seeds);
//! - [`pareto`]: the front of accuracy against comparisons against `fast` bytes over the rows
//!   reproduce trained (paper rows, free-form rows, search candidates, distilled rows);
//! - [`bench`], [`bench_net`] and [`bench_resnet`]: the benchmarks behind `BENCHMARKS.md`
//!   (throughput, costs, training speed, LAN/WAN tables, ResNet-18's secure cost).
//!
//! Each `run` takes the clap arguments of its command; the `relushare` binary only parses them.
//! `relushare bench --serve` (servers as processes) stays in the binary.

pub mod bench;
pub mod bench_net;
pub mod bench_resnet;
pub mod pareto;
pub mod reproduce;
pub mod secure;
pub mod stream;
