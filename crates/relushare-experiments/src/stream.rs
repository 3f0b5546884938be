//! A **stream** of images through secure inference with the offline work pipelined away
//! (`relushare infer ... --stream N [--batch B] [--depth D]`): the images in batches of `B`, the
//! dealer producing and sending the material of the next batches (at most `D` ahead) while the
//! current one is online (`relushare_mpc::pipeline`). In process (`--network none`) the three
//! parties are threads; over an emulated network they are the `relushare party` processes, and
//! the dealer's material crosses the same shaped links as the online messages.
//!
//! Reported: images per second, the first result's latency (its offline and online phase: no
//! earlier batch to overlap with), the steady state (results per second once the pipeline is
//! full, the online span of a batch whose material was ready, the evaluators' wait for
//! material), costs per image, and the agreement with the plaintext fixed-point network.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relushare_data::ImageSet;
use relushare_model::Model;
use relushare_mpc::net::emu::NetProfile;
use relushare_mpc::net::launch::{run_networked, LaunchOptions};
use relushare_mpc::net::session::StreamSettings;
use relushare_mpc::pipeline::{batch_sizes, BatchTimes};
use relushare_mpc::plain::{self, FixedModel};
use relushare_mpc::protocol::{check_input, factory_for, prepare_model, Protocol};
use relushare_mpc::runner::{run_stream, RunOptions};
use serde::Serialize;

use crate::secure::NetworkInfo;

/// A measured stream.
#[derive(Serialize, Clone, Debug)]
pub struct StreamSummary {
    pub protocol: String,
    pub network: NetworkInfo,
    pub arch: String,
    pub preset: String,
    pub images: usize,
    /// Images per batch and batches of material queued ahead.
    pub batch: usize,
    pub depth: usize,
    /// Whether the offline phase overlapped the online phases (false: a suite without
    /// offline material, `securenn`).
    pub pipelined: bool,
    /// Throughput and latency (see `relushare_mpc::pipeline::StreamTiming`).
    pub images_per_second: f64,
    pub seconds: f64,
    pub first_result_seconds: f64,
    pub steady_images_per_second: f64,
    pub steady_latency_seconds: f64,
    pub steady_wait_seconds: f64,
    /// Per image, all parties: bytes of each phase (averages over the stream).
    pub online_bytes: f64,
    pub offline_bytes: f64,
    /// Rounds of one batch.
    pub rounds: u64,
    pub offline_rounds: u64,
    /// Whether every full batch had the same bytes and rounds per layer.
    pub batches_cost_alike: bool,
    /// Fraction of images whose secure class equals the plaintext fixed-point class.
    pub agree_with_plaintext: f64,
    /// One-time setup (not in the stream's time).
    pub setup_seconds: f64,
    /// Wall-clock seconds of the whole job (process start, TLS and setup included).
    pub wall_seconds: f64,
    /// With `--protocol auto`: the choice and its reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_choice: Option<relushare_mpc::auto::Choice>,
    /// Per batch: dealing and evaluation spans, seconds from the stream's start.
    pub batches: Vec<BatchTimes>,
}

/// Runs the first `count` images of `set` as a stream, in process (`net` = `None`) or over the
/// emulated network `net`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &Model,
    set: &ImageSet,
    count: usize,
    protocol: Protocol,
    batch: usize,
    depth: usize,
    frac_bits: u32,
    net: Option<NetProfile>,
    timeout: Duration,
) -> Result<StreamSummary> {
    let d = model.spec.input;
    if set.dims() != (d.c, d.h, d.w) {
        let (c, h, w) = set.dims();
        bail!("the images are {c}x{h}x{w}, the model expects {d}");
    }
    let count = set.len().min(count);
    let sizes = batch_sizes(count, batch)?;
    relushare_mpc::pipeline::check_depth(depth)?;
    let mut fm = FixedModel::from_model(model, frac_bits)?;
    prepare_model(protocol, &mut fm)?;
    let mut normalized = Vec::with_capacity(count);
    let mut encoded = Vec::with_capacity(count);
    let mut plain_class = Vec::with_capacity(count);
    for i in 0..count {
        let mut buf = vec![0f32; d.len()];
        model.spec.normalization.apply(set.image(i), &mut buf);
        let x = fm.encode_input(&buf)?;
        check_input(protocol, &model.spec.normalization, frac_bits, &x)
            .with_context(|| format!("image {i}"))?;
        let t = plain::forward_fixed_trace(&fm, &x, &mut |_| false)?;
        plain_class.push(plain::argmax_fixed(t.last().expect("output layer")));
        encoded.push(x);
        normalized.push(buf);
    }
    let t0 = Instant::now();
    let (network, classes, timing, times, pipelined, costs, setup_seconds) = match net {
        None => {
            let factory = factory_for(protocol, &fm, model)?;
            let mut batches = Vec::with_capacity(sizes.len());
            let mut it = encoded.into_iter();
            for &n in &sizes {
                batches.push(it.by_ref().take(n).collect::<Vec<_>>());
            }
            let opts = RunOptions {
                timeout,
                ..Default::default()
            };
            let r = run_stream(&fm, &batches, factory.as_ref(), &opts, depth)?;
            let classes: Vec<usize> = r
                .batches
                .iter()
                .flat_map(|b| b.outputs.iter().map(|o| plain::argmax_fixed(o)))
                .collect();
            let per_batch: Vec<Costs> = r
                .batches
                .iter()
                .zip(&sizes)
                .map(|(b, &n)| Costs {
                    n,
                    online_bytes: b.report.online_bytes(),
                    offline_bytes: b.report.offline_bytes(),
                    rounds: b.report.online_rounds(),
                    offline_rounds: b.report.offline_rounds(),
                    key: b
                        .report
                        .layers
                        .iter()
                        .map(relushare_mpc::cost::LabelCost::shape)
                        .collect(),
                })
                .collect();
            let merged = relushare_mpc::pipeline::merge_times(&[
                &r.times.iter().map(|t| t[0]).collect::<Vec<_>>(),
                &r.times.iter().map(|t| t[1]).collect::<Vec<_>>(),
                &r.times.iter().map(|t| t[2]).collect::<Vec<_>>(),
            ]);
            let pipelined = protocol != Protocol::Securenn;
            (
                NetworkInfo::in_process(),
                classes,
                r.timing,
                merged,
                pipelined,
                CostSummary::of(&per_batch, batch),
                r.setup_seconds,
            )
        }
        Some(p) => {
            let mut opts = LaunchOptions::new(std::env::current_exe()?, protocol, Some(p));
            opts.frac_bits = frac_bits;
            opts.timeout = timeout;
            opts.stream = Some(StreamSettings { batch, depth });
            let run = run_networked(model, &normalized, &opts)?;
            let s = run
                .stream
                .as_ref()
                .context("the launcher reported no stream")?;
            let costs = CostSummary {
                online_bytes: run.online_bytes,
                offline_bytes: run.offline_bytes,
                rounds: run.rounds,
                offline_rounds: run.offline_rounds,
                alike: s.batches_cost_alike,
            };
            let start = s
                .batches
                .iter()
                .map(|b| b.offline_start)
                .fold(f64::INFINITY, f64::min);
            let rel: Vec<BatchTimes> = s
                .batches
                .iter()
                .map(|b| BatchTimes {
                    offline_start: b.offline_start - start,
                    offline_end: b.offline_end - start,
                    online_start: b.online_start - start,
                    online_end: b.online_end - start,
                })
                .collect();
            (
                NetworkInfo::emulated(&p),
                run.classes.clone(),
                s.timing.clone(),
                rel,
                s.pipelined,
                costs,
                run.setup_seconds,
            )
        }
    };
    if classes.len() != count {
        bail!("the client got {} of {count} results", classes.len());
    }
    let agree = classes
        .iter()
        .zip(&plain_class)
        .filter(|(a, b)| a == b)
        .count() as f64
        / count as f64;
    Ok(StreamSummary {
        protocol: protocol.name().into(),
        network,
        arch: model.spec.arch.name().into(),
        preset: model.spec.preset.clone(),
        images: count,
        batch,
        depth,
        pipelined,
        images_per_second: timing.images_per_second,
        seconds: timing.seconds,
        first_result_seconds: timing.first_result_seconds,
        steady_images_per_second: timing.steady_images_per_second,
        steady_latency_seconds: timing.steady_latency_seconds,
        steady_wait_seconds: timing.steady_wait_seconds,
        online_bytes: costs.online_bytes,
        offline_bytes: costs.offline_bytes,
        rounds: costs.rounds,
        offline_rounds: costs.offline_rounds,
        batches_cost_alike: costs.alike,
        agree_with_plaintext: agree,
        setup_seconds,
        wall_seconds: t0.elapsed().as_secs_f64(),
        protocol_choice: None,
        batches: times,
    })
}

/// One in-process batch's costs.
struct Costs {
    n: usize,
    online_bytes: u64,
    offline_bytes: u64,
    rounds: u64,
    offline_rounds: u64,
    key: Vec<relushare_mpc::cost::LabelShape>,
}

/// Costs per image over a stream, rounds of one batch.
struct CostSummary {
    online_bytes: f64,
    offline_bytes: f64,
    rounds: u64,
    offline_rounds: u64,
    alike: bool,
}

impl CostSummary {
    fn of(b: &[Costs], batch: usize) -> CostSummary {
        let n: usize = b.iter().map(|c| c.n).sum::<usize>().max(1);
        let full: Vec<&Costs> = b.iter().filter(|c| c.n == batch).collect();
        CostSummary {
            online_bytes: b.iter().map(|c| c.online_bytes).sum::<u64>() as f64 / n as f64,
            offline_bytes: b.iter().map(|c| c.offline_bytes).sum::<u64>() as f64 / n as f64,
            rounds: b.first().map_or(0, |c| c.rounds),
            offline_rounds: b.first().map_or(0, |c| c.offline_rounds),
            alike: full.windows(2).all(|w| w[0].key == w[1].key),
        }
    }
}

impl StreamSummary {
    /// Text output.
    pub fn print(&self) {
        println!(
            "{} / {} with {}: a stream of {} images in batches of {} (material queued {} batch{} ahead{}), {}",
            self.arch,
            self.preset,
            self.protocol,
            self.images,
            self.batch,
            self.depth,
            if self.depth == 1 { "" } else { "es" },
            if self.pipelined { "" } else { "; not pipelined: no offline phase" },
            self.network.describe()
        );
        println!(
            "  {:.2} images/s ({:.3} s for the stream); first result after {:.3} s; steady state {:.2} images/s, {:.3} s per batch online, {:.3} s waiting for material",
            self.images_per_second,
            self.seconds,
            self.first_result_seconds,
            self.steady_images_per_second,
            self.steady_latency_seconds,
            self.steady_wait_seconds
        );
        println!(
            "  per image {:.3} MB online + {:.3} MB offline; {} online rounds per batch; batches cost alike: {}; agreement with plaintext fixed point {:.1}%; setup {:.3} s",
            self.online_bytes / 1e6,
            self.offline_bytes / 1e6,
            self.rounds,
            self.batches_cost_alike,
            self.agree_with_plaintext * 100.0,
            self.setup_seconds
        );
    }
}
