//! Offline work pipelined away: one party's side of a **stream** of batches in which the
//! dealer's material for the next batches is produced and delivered while the current batch is
//! online.
//!
//! # How
//! The suites are untouched protocols over a metered connection ([`Comm`]); pipelining lives
//! here, in the runner layer. Each party splits its connection into independent ordered
//! **lanes** (in memory: [`crate::transport::MemTransport::trio_lanes`]; over TLS: the lanes of
//! one connection per peer, [`crate::net::TlsTransport::lanes`], so the dealer's traffic crosses
//! the same links, and the same emulated network, as the online traffic):
//!
//! | lane | carries |
//! |---|---|
//! | [`LANE_ONLINE`] | the suite's online messages (and its one-time setup) |
//! | [`LANE_OFFLINE`] | the offline twin's messages: the dealer's material |
//! | [`LANE_CONTROL`] | credits: P0 and P1 tell the dealer (P2) which batch they took |
//! | [`LANE_OUTPUT`] | output shares to the client, per batch (networked sessions) |
//!
//! After the one-time setup ([`Suite::prepare`]) a party asks its suite for an **offline twin**
//! ([`Suite::offline_twin`]) on the offline lane. A thread runs the twin's [`Suite::offline`] for
//! batch after batch and passes each batch's material ([`Suite::take_material`]) through a
//! bounded queue (`std::sync::mpsc::sync_channel(depth)`) to the online thread, which installs it
//! ([`Suite::install_material`]) and runs the batch's online steps. The messages of every lane
//! are exactly those of the sequential run, in the same order, so bytes and rounds per batch are
//! those of the sequential run (tested).
//!
//! # Memory bound
//! P0 and P1 hold at most `depth` batches of material in the queue, one more in their offline
//! thread, and the one being evaluated. The dealer, whose own online steps are empty, is held back
//! by **credits**: P0 and P1 send one (4 bytes, the batch index, on [`LANE_CONTROL`]; not a
//! protocol message, not in the costs) when they take a batch out of their queue, and the dealer
//! starts dealing batch `j >= depth` only after both took batch `j - depth`. So at most `depth`
//! batches of material exist beyond the one being evaluated: queued, in transit or being dealt.
//! The test `pipeline_queue_is_bounded` checks this from the parties' timestamps.
//!
//! # Failures
//! Every wait has the transport's timeout. When either thread of a party fails it cancels the
//! party's [`CancelToken`], which wakes the other thread's waits within
//! [`crate::transport::CANCEL_POLL`]; the error returned is the root cause, not the
//! cancellation.
//!
//! A suite without a twin (`securenn`, whose offline phase is empty) runs the batches one after
//! another on the online lane.

use crate::cost::{merge_into, Comm, PartyCosts, Phase};
use crate::error::{MpcError, Result};
use crate::suite::{Material, Plan, Shared, Suite, WeightShare};
use crate::transport::{recv_cancellable, CancelToken, Transport};
use serde::{Deserialize, Serialize};
use std::sync::mpsc;
use std::time::Duration;

/// Lane of the suite's online messages.
pub const LANE_ONLINE: usize = 0;
/// Lane of the offline twin's messages (dealer material).
pub const LANE_OFFLINE: usize = 1;
/// Lane of the credits P0 and P1 send the dealer.
pub const LANE_CONTROL: usize = 2;
/// Lane of the output shares to the client.
pub const LANE_OUTPUT: usize = 3;
/// Lanes a pipelined stream uses.
pub const LANES: usize = 4;

/// Batches of material queued ahead by default.
pub const DEFAULT_DEPTH: usize = 2;
/// Most batches of material a stream may queue ahead.
pub const MAX_DEPTH: usize = 16;

/// Checks a queue depth.
pub fn check_depth(depth: usize) -> Result<()> {
    if depth == 0 || depth > MAX_DEPTH {
        return Err(MpcError::Param(format!(
            "a stream queues between 1 and {MAX_DEPTH} batches of offline material ahead (got {depth})"
        )));
    }
    Ok(())
}

/// When one party worked on one batch, on the clock the caller passed (seconds).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchTimes {
    /// The party started dealing / receiving the batch's material.
    pub offline_start: f64,
    /// Its material was complete.
    pub offline_end: f64,
    /// The online thread took the material and started the batch's online steps.
    pub online_start: f64,
    /// The batch's output shares were ready (and delivered, see [`run_party`]).
    pub online_end: f64,
}

/// One party's record of one batch of a stream.
#[derive(Clone, Debug)]
pub struct PartyBatch {
    /// Images in the batch.
    pub n: usize,
    /// This batch's counters, offline and online.
    pub costs: PartyCosts,
    /// Bytes of output shares for the client.
    pub client_bytes: u64,
    /// Timestamps.
    pub times: BatchTimes,
    /// Seconds of each online step.
    pub layer_seconds: Vec<f64>,
    /// The output shares (P0/P1), `None` for P2.
    pub output: Option<Vec<u64>>,
}

/// One party's side of a stream.
pub struct StreamParty<'a> {
    /// The prepared suite; its [`Comm`] on [`LANE_ONLINE`].
    pub suite: &'a mut dyn Suite,
    /// A connection on [`LANE_OFFLINE`] for the offline twin.
    pub offline: Comm,
    /// [`LANE_CONTROL`].
    pub control: Box<dyn Transport>,
    /// Batches of material queued ahead (see [`check_depth`]).
    pub depth: usize,
    /// Longest wait for material or a credit.
    pub timeout: Duration,
    /// Cancels this party's waits (shared with its lanes).
    pub cancel: CancelToken,
    /// The clock of [`BatchTimes`].
    pub clock: &'a (dyn Fn() -> f64 + Sync),
}

/// Runs the online steps of one batch (material installed): `input` through the steps of `plan`
/// ([`crate::runner::exec_plan`]), then the output shares for the client. Returns the output and
/// per-step seconds; with `trace`, the input and every step's output are appended to it.
pub fn online_batch(
    suite: &mut dyn Suite,
    plan: &Plan,
    input: Shared,
    weights: &[WeightShare],
    out_lens: &[usize],
    trace: Option<&mut Vec<Shared>>,
) -> Result<(Option<Vec<u64>>, Vec<f64>)> {
    suite.comm().set_phase(Phase::Online);
    let mut trace = trace;
    if let Some(t) = trace.as_deref_mut() {
        t.push(input.clone());
    }
    let mut layer_seconds = Vec::with_capacity(plan.ops.len());
    let x = crate::runner::exec_plan(suite, plan, input, weights, out_lens, |_, y, secs| {
        layer_seconds.push(secs);
        if let Some(t) = trace.as_deref_mut() {
            t.push(y.clone());
        }
    })?;
    suite.comm().set_label("output");
    let output = suite.reveal_to_client(&x)?;
    Ok((output, layer_seconds))
}

/// One batch's material on its way from the offline thread to the online thread.
struct Ready {
    mat: Material,
    costs: PartyCosts,
    start: f64,
    end: f64,
}

/// Runs this party's side of a stream of `plans.len()` batches (`inputs[j]`: this party's
/// shares of batch `j`'s input, empty for P2). After each batch, `deliver(j, batch)` is called
/// on the online thread (e.g. to send the output shares to the client) before the batch's end
/// time is taken. All three parties must call this with the same plans and depth. Returns the
/// batches and whether they were pipelined (false: a suite without an offline twin).
pub fn run_party(
    p: StreamParty<'_>,
    plans: &[&Plan],
    weights: &[WeightShare],
    inputs: Vec<Shared>,
    out_lens: &[usize],
    deliver: &mut dyn FnMut(usize, &PartyBatch) -> Result<()>,
) -> Result<(Vec<PartyBatch>, bool)> {
    check_depth(p.depth)?;
    if inputs.len() != plans.len() {
        return Err(MpcError::Param(format!(
            "{} inputs for {} batches",
            inputs.len(),
            plans.len()
        )));
    }
    let StreamParty {
        suite,
        offline,
        mut control,
        depth,
        timeout,
        cancel,
        clock,
    } = p;
    let me = suite.party();
    let twin = match suite.offline_twin(offline)? {
        Some(t) => t,
        None => {
            return sequential(suite, plans, weights, inputs, out_lens, clock, deliver)
                .map(|b| (b, false))
        }
    };
    let (tx, rx) = mpsc::sync_channel::<Ready>(depth);
    let nb = plans.len();
    std::thread::scope(|s| {
        // The dealer's credits arrive on its offline thread; P0/P1 send theirs from the online
        // thread.
        let (mut dealer_control, mut my_control) = if me == 2 {
            (Some(control), None)
        } else {
            (None, Some(&mut control))
        };
        let off_cancel = cancel.clone();
        let off = s.spawn(move || {
            let r = offline_loop(
                twin,
                dealer_control.as_mut(),
                plans,
                weights,
                depth,
                clock,
                &tx,
            );
            if r.is_err() {
                off_cancel.cancel();
            }
            r
        });
        let on = (|| {
            let mut outs = Vec::with_capacity(nb);
            for (j, (plan, input)) in plans.iter().zip(inputs).enumerate() {
                let ready =
                    recv_cancellable(&rx, timeout, Some(&cancel), me).map_err(|e| match e {
                        None => MpcError::Param(format!(
                            "party {me}: no offline material for batch {j} within {:.0} s",
                            timeout.as_secs_f64()
                        )),
                        Some(MpcError::Disconnected(_)) => {
                            MpcError::Cancelled("the offline thread stopped".into())
                        }
                        Some(e) => e,
                    })?;
                let online_start = clock();
                if let Some(c) = my_control.as_deref_mut() {
                    if j + depth < nb {
                        c.send(2, &(j as u32).to_le_bytes())?;
                    }
                }
                suite.install_material(ready.mat)?;
                let (output, layer_seconds) =
                    online_batch(suite, plan, input, weights, out_lens, None)?;
                let client_bytes = suite.comm().take_client_bytes();
                let mut costs = ready.costs;
                merge_into(&mut costs, &suite.comm().take_costs());
                let mut b = PartyBatch {
                    n: plan.n,
                    costs,
                    client_bytes,
                    times: BatchTimes {
                        offline_start: ready.start,
                        offline_end: ready.end,
                        online_start,
                        online_end: 0.0,
                    },
                    layer_seconds,
                    output,
                };
                deliver(j, &b)?;
                b.times.online_end = clock();
                outs.push(b);
            }
            Ok(outs)
        })();
        if on.is_err() {
            cancel.cancel();
        }
        drop(rx);
        let off = off.join().unwrap_or_else(|e| {
            let reason = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(MpcError::PartyFailed { party: me, reason })
        });
        match (on, off) {
            (Ok(v), Ok(())) => Ok((v, true)),
            (Err(e), Ok(())) => Err(e),
            (Ok(_), Err(e)) => Err(e),
            (Err(on), Err(off)) => Err(root_cause(on, off)),
        }
    })
}

/// Of two errors of one party, the one that is not a consequence of the other.
fn root_cause(a: MpcError, b: MpcError) -> MpcError {
    let derived = |e: &MpcError| matches!(e, MpcError::Cancelled(_) | MpcError::Disconnected(_));
    if derived(&a) && !derived(&b) {
        b
    } else {
        a
    }
}

fn offline_loop(
    mut twin: Box<dyn Suite>,
    mut control: Option<&mut Box<dyn Transport>>,
    plans: &[&Plan],
    weights: &[WeightShare],
    depth: usize,
    clock: &(dyn Fn() -> f64 + Sync),
    tx: &mpsc::SyncSender<Ready>,
) -> Result<()> {
    for (j, plan) in plans.iter().enumerate() {
        if let Some(c) = control.as_deref_mut() {
            if j >= depth {
                // Both evaluators took batch j - depth: at most `depth` batches are ahead.
                for q in [0, 1] {
                    let m = c.recv(q)?;
                    let want = (j - depth) as u32;
                    if m.len() != 4 || u32::from_le_bytes([m[0], m[1], m[2], m[3]]) != want {
                        return Err(MpcError::Malformed {
                            from: q,
                            reason: format!(
                                "credit {m:?} where the credit of batch {want} was due"
                            ),
                        });
                    }
                }
            }
        }
        let start = clock();
        twin.comm().set_phase(Phase::Offline);
        twin.comm().set_label("offline");
        twin.offline(plan, weights)?;
        let mat = twin.take_material()?;
        let costs = twin.comm().take_costs();
        let ready = Ready {
            mat,
            costs,
            start,
            end: clock(),
        };
        if tx.send(ready).is_err() {
            return Err(MpcError::Cancelled("the online thread stopped".into()));
        }
    }
    Ok(())
}

/// A suite without an offline twin: every batch's offline phase, then its online phase.
fn sequential(
    suite: &mut dyn Suite,
    plans: &[&Plan],
    weights: &[WeightShare],
    inputs: Vec<Shared>,
    out_lens: &[usize],
    clock: &(dyn Fn() -> f64 + Sync),
    deliver: &mut dyn FnMut(usize, &PartyBatch) -> Result<()>,
) -> Result<Vec<PartyBatch>> {
    let mut outs = Vec::with_capacity(plans.len());
    for (j, (plan, input)) in plans.iter().zip(inputs).enumerate() {
        let offline_start = clock();
        suite.comm().set_phase(Phase::Offline);
        suite.comm().set_label("offline");
        suite.offline(plan, weights)?;
        let offline_end = clock();
        let (output, layer_seconds) = online_batch(suite, plan, input, weights, out_lens, None)?;
        let client_bytes = suite.comm().take_client_bytes();
        let mut b = PartyBatch {
            n: plan.n,
            costs: suite.comm().take_costs(),
            client_bytes,
            times: BatchTimes {
                offline_start,
                offline_end,
                online_start: offline_end,
                online_end: 0.0,
            },
            layer_seconds,
            output,
        };
        deliver(j, &b)?;
        b.times.online_end = clock();
        outs.push(b);
    }
    Ok(outs)
}

/// Splits `images` into batches of at most `batch` (the last one may be smaller).
pub fn batch_sizes(images: usize, batch: usize) -> Result<Vec<usize>> {
    if images == 0 || batch == 0 {
        return Err(MpcError::Param(format!(
            "a stream needs at least one image and batches of at least one (got {images} images in batches of {batch})"
        )));
    }
    let mut v = vec![batch; images / batch];
    if !images.is_multiple_of(batch) {
        v.push(images % batch);
    }
    Ok(v)
}

/// A stream's throughput and latency from the batches' end times (the client's results).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamTiming {
    /// Images in the stream.
    pub images: usize,
    /// Batches (of at most `batch` images).
    pub batches: usize,
    pub batch: usize,
    /// Batches of material queued ahead.
    pub depth: usize,
    /// Start (first party starts dealing the first batch) to the last result.
    pub seconds: f64,
    /// `images / seconds`.
    pub images_per_second: f64,
    /// Start to the first batch's result: its offline and online phase (nothing to overlap).
    pub first_result_seconds: f64,
    /// Steady state: images after the first batch over the time from the first result to the
    /// last (the rate at which results arrive once the pipeline is full).
    pub steady_images_per_second: f64,
    /// Steady state: median over the batches after the first of the batch's online span (its
    /// material taken to its result): the latency of a batch whose material was ready.
    pub steady_latency_seconds: f64,
    /// Median over the batches after the first of the wait for material (online side idle).
    pub steady_wait_seconds: f64,
}

/// Per batch, the parties' times merged: offline from the first start to the last end, online
/// from the last party taking the material to the last party finishing.
pub fn merge_times(per_party: &[&[BatchTimes]]) -> Vec<BatchTimes> {
    let nb = per_party.iter().map(|p| p.len()).min().unwrap_or(0);
    (0..nb)
        .map(|j| {
            let it = || per_party.iter().map(move |p| p[j]);
            BatchTimes {
                offline_start: it().map(|t| t.offline_start).fold(f64::INFINITY, f64::min),
                offline_end: it().map(|t| t.offline_end).fold(0.0, f64::max),
                online_start: it().map(|t| t.online_start).fold(0.0, f64::max),
                online_end: it().map(|t| t.online_end).fold(0.0, f64::max),
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

impl StreamTiming {
    /// The timing of a stream from its merged batch times ([`merge_times`]) and sizes.
    pub fn from_batches(times: &[BatchTimes], sizes: &[usize], batch: usize, depth: usize) -> Self {
        let images: usize = sizes.iter().sum();
        let Some(first) = times.first() else {
            return StreamTiming::default();
        };
        let start = times
            .iter()
            .map(|t| t.offline_start)
            .fold(f64::INFINITY, f64::min);
        let end = times.iter().map(|t| t.online_end).fold(0.0, f64::max);
        let seconds = (end - start).max(0.0);
        let rest: usize = sizes.iter().skip(1).sum();
        let steady_span = (end - first.online_end).max(0.0);
        let prev_end: Vec<f64> = times.iter().map(|t| t.online_end).collect();
        StreamTiming {
            images,
            batches: times.len(),
            batch,
            depth,
            seconds,
            images_per_second: if seconds > 0.0 {
                images as f64 / seconds
            } else {
                0.0
            },
            first_result_seconds: (first.online_end - start).max(0.0),
            steady_images_per_second: if rest > 0 && steady_span > 0.0 {
                rest as f64 / steady_span
            } else {
                0.0
            },
            steady_latency_seconds: median(
                times
                    .iter()
                    .skip(1)
                    .map(|t| (t.online_end - t.online_start).max(0.0))
                    .collect(),
            ),
            steady_wait_seconds: median(
                times
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(|(j, t)| (t.online_start - prev_end[j - 1]).max(0.0))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plain::{self, FixedModel};
    use crate::protocol::{factory_for, prepare_model, Protocol};
    use crate::runner::{run_session, run_stream, run_stream_paced, RunOptions};
    use relushare_model::{presets, Arch, Model};

    fn model(arch: Arch, preset: &str) -> Model {
        Model::random(presets::build(arch, preset).unwrap(), None, 5).unwrap()
    }

    fn images(fm: &FixedModel, n: usize, seed: u64) -> Vec<Vec<u64>> {
        crate::net::session::random_images(seed, n, fm.input_len)
            .iter()
            .map(|x| {
                // Pixels in [0, 1], normalized as the model's inputs (the proven range).
                let x: Vec<f32> = x.iter().map(|v| v * 0.5).collect();
                fm.encode_input(&x).unwrap()
            })
            .collect()
    }

    /// A stream's batches cost exactly what the same batches cost run one after another
    /// (offline and online bytes and rounds per layer), and every image's logits are the
    /// plaintext fixed-point network's (within the truncation error), with the same class.
    #[test]
    fn stream_costs_equal_sequential_and_results_equal_plaintext() {
        for (arch, preset, protocol) in [
            (Arch::Fmnist, "original", Protocol::Fast),
            (Arch::Fmnist, "uniform32", Protocol::Fss),
            (Arch::Svhn, "original", Protocol::Mimo),
            (Arch::Svhn, "original", Protocol::Securenn),
        ] {
            let m = model(arch, preset);
            let mut fm = FixedModel::from_model(&m, 13).unwrap();
            prepare_model(protocol, &mut fm).unwrap();
            let f = factory_for(protocol, &fm, &m).unwrap();
            let imgs = images(&fm, 5, 3);
            let batches: Vec<Vec<Vec<u64>>> =
                vec![imgs[0..2].to_vec(), imgs[2..4].to_vec(), imgs[4..].to_vec()];
            let opts = RunOptions::default();
            let seq = run_session(&fm, &batches, f.as_ref(), &opts).unwrap();
            let st = run_stream(&fm, &batches, f.as_ref(), &opts, 1).unwrap();
            let what = format!("{arch} {preset} {protocol}");
            assert_eq!(st.batches.len(), 3, "{what}");
            assert_eq!(
                st.setup.offline_bytes(),
                seq.setup.offline_bytes(),
                "{what}"
            );
            for (a, b) in st.batches.iter().zip(&seq.batches) {
                let key = |r: &crate::cost::CostReport| {
                    r.layers
                        .iter()
                        .map(crate::cost::LabelCost::shape)
                        .collect::<Vec<_>>()
                };
                assert_eq!(key(&a.report), key(&b.report), "{what}");
                assert_eq!(a.report.client_bytes, b.report.client_bytes, "{what}");
            }
            if protocol != Protocol::Securenn {
                assert!(st.batches[0].report.offline_bytes() > 0, "{what}");
            }
            let outs: Vec<&Vec<u64>> = st.batches.iter().flat_map(|b| &b.outputs).collect();
            assert_eq!(outs.len(), 5, "{what}");
            for (x, out) in imgs.iter().zip(outs) {
                let t = plain::forward_fixed_trace(&fm, x, &mut |_| false).unwrap();
                let want = t.last().unwrap();
                // The class must match unless the plaintext's top two logits are within the
                // suites' truncation error of each other (random weights make near ties).
                let mut sorted: Vec<i64> = want.iter().map(|&v| v as i64).collect();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                if sorted.len() < 2 || sorted[0] - sorted[1] > 64 {
                    assert_eq!(
                        plain::argmax_fixed(out),
                        plain::argmax_fixed(want),
                        "{what}"
                    );
                }
                for (a, b) in fm.fp.decode_vec(out).iter().zip(fm.fp.decode_vec(want)) {
                    assert!((a - b).abs() < 0.01 + 0.01 * b.abs(), "{what}: {a} vs {b}");
                }
            }
            assert_eq!(st.timing.images, 5);
            assert!(st.timing.images_per_second > 0.0);
        }
    }

    /// The dealer never runs more than `depth` batches ahead of the evaluators, even when they
    /// are slow (each spends 40 ms more per batch): it starts dealing batch `j` only after P0
    /// and P1 both took batch `j - depth`, and no evaluator ever has more than `depth + 1`
    /// batches started and not yet taken (queue plus the one in its offline thread).
    #[test]
    fn pipeline_queue_is_bounded() {
        let m = model(Arch::Fmnist, "original");
        let mut fm = FixedModel::from_model(&m, 13).unwrap();
        prepare_model(Protocol::Fast, &mut fm).unwrap();
        let f = factory_for(Protocol::Fast, &fm, &m).unwrap();
        let imgs = images(&fm, 7, 9);
        let batches: Vec<Vec<Vec<u64>>> = imgs.iter().map(|x| vec![x.clone()]).collect();
        let pace = Duration::from_millis(40);
        for depth in [1, 2] {
            let st = run_stream_paced(
                &fm,
                &batches,
                f.as_ref(),
                &RunOptions::default(),
                depth,
                pace,
            )
            .unwrap();
            let t = &st.times;
            for j in depth..t.len() {
                let taken = t[j - depth][0]
                    .online_start
                    .max(t[j - depth][1].online_start);
                assert!(
                    t[j][2].offline_start >= taken,
                    "depth {depth}: the dealer started batch {j} at {:.4} s, before batch {} was taken at {taken:.4} s",
                    t[j][2].offline_start,
                    j - depth
                );
            }
            for p in 0..2 {
                for j in 0..t.len() {
                    let at = t[j][p].online_start;
                    let ahead = t
                        .iter()
                        .filter(|b| b[p].offline_start <= at && b[p].online_start > at)
                        .count();
                    assert!(
                        ahead <= depth + 1,
                        "depth {depth}: P{p} had {ahead} batches ahead"
                    );
                }
            }
            // And the pipeline did overlap: the dealer dealt some batch while an earlier one
            // was online.
            assert!(
                (1..t.len()).any(|j| t[j][2].offline_start < t[j - 1][0].online_end),
                "depth {depth}: no overlap"
            );
        }
    }

    #[test]
    fn batches_and_depths() {
        assert_eq!(batch_sizes(32, 8).unwrap(), vec![8; 4]);
        assert_eq!(batch_sizes(5, 2).unwrap(), vec![2, 2, 1]);
        assert!(batch_sizes(0, 2).is_err());
        assert!(check_depth(0).is_err());
        assert!(check_depth(MAX_DEPTH + 1).is_err());
        let times = [
            BatchTimes {
                offline_start: 0.0,
                offline_end: 1.0,
                online_start: 1.0,
                online_end: 2.0,
            },
            BatchTimes {
                offline_start: 1.0,
                offline_end: 1.5,
                online_start: 2.0,
                online_end: 2.5,
            },
            BatchTimes {
                offline_start: 1.5,
                offline_end: 2.0,
                online_start: 2.5,
                online_end: 3.0,
            },
        ];
        let s = StreamTiming::from_batches(&times, &[2, 2, 2], 2, 1);
        assert_eq!(s.seconds, 3.0);
        assert_eq!(s.images_per_second, 2.0);
        assert_eq!(s.first_result_seconds, 2.0);
        assert_eq!(s.steady_images_per_second, 4.0);
        assert_eq!(s.steady_latency_seconds, 0.5);
        assert_eq!(s.steady_wait_seconds, 0.0);
    }
}
