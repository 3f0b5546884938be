//! Launching the three parties as separate processes on this host, optionally over an
//! emulated network, and summarising their reports.
//!
//! [`run_networked`] does what an operator would do by hand with `relushare keys` and three
//! `relushare party` commands: it writes a fresh session's keys, the model file and the client's
//! images into a private temporary directory (mode 0700, removed afterwards), starts
//!
//! - P0, the client (`--image`), listening;
//! - P1, the model owner (`--model`), listening and dialling P0;
//! - P2, the helper/dealer, dialling P0 and P1;
//!
//! and, with a [`NetProfile`], puts a shaping [`Relay`] on each of the three links (P1 and P2
//! dial the relays instead of the parties), so every byte of the run (TLS handshakes, model
//! structure and shares, dealer material, online messages) crosses the emulated network. The
//! parties are the real `relushare party` processes over TLS 1.3, unchanged; the protocol does
//! not know it is shaped.
//!
//! Failures: every party has a read/write timeout, and the whole run has a limit; if a party
//! exits with an error the others are given a moment to report their side and then killed, and
//! the error names the failing party with the tail of its messages. Children are killed on every
//! error path; none is left behind.
//!
//! The summary sums the parties' own cost counters exactly as the in-process runner does (bytes
//! summed over the parties, rounds the maximum over parties per layer; one-time setup apart), so
//! bytes and rounds equal those of `relushare infer --network none`. Phase times are spans over
//! the three processes, taken from their shared clock: offline = from the first party starting
//! its offline phase to the last one starting its online phase; online = from there to the last
//! one finishing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relushare_model::Model;
use serde::Serialize;

use super::emu::{NetProfile, Relay};
use super::session::{PartyReport, StreamSettings};
use crate::cost::LabelCost;
use crate::error::{MpcError, Result};
use crate::pipeline::{BatchTimes, StreamTiming};
use crate::plain::{self, FixedModel};
use crate::protocol::{prepare_model, Protocol};

/// Labels of one-time costs (seed agreement, model preparation): not per image.
const SETUP_LABELS: &[&str] = &["setup", "model-setup"];

/// How to launch the parties.
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// The `relushare` executable (its `party` subcommand is run three times).
    pub exe: PathBuf,
    pub protocol: Protocol,
    pub frac_bits: u32,
    /// The emulated network, or `None` for direct loopback connections.
    pub network: Option<NetProfile>,
    /// Each party's timeout for connecting and for any single read or write.
    pub timeout: Duration,
    /// Limit for the whole run (all three processes).
    pub limit: Duration,
    /// Run the images as a pipelined stream ([`crate::pipeline`]) instead of one batch.
    pub stream: Option<StreamSettings>,
}

impl LaunchOptions {
    /// Defaults: 60 s party timeout, 15 min limit.
    pub fn new(exe: PathBuf, protocol: Protocol, network: Option<NetProfile>) -> Self {
        LaunchOptions {
            exe,
            protocol,
            frac_bits: 13,
            network,
            timeout: Duration::from_secs(60),
            limit: Duration::from_secs(900),
            stream: None,
        }
    }
}

/// The result of one networked run (one batch of images), per image where it says so.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkedRun {
    pub protocol: String,
    pub network: Option<NetProfile>,
    /// Images in this run (one batch).
    pub images: usize,
    /// The client's classes and logits.
    pub classes: Vec<usize>,
    pub logits: Vec<Vec<f32>>,
    /// Classes of the plaintext fixed-point network on the same images.
    pub plaintext_classes: Vec<usize>,
    /// Per image: seconds of the offline phase, of the online phase, and their sum.
    pub offline_seconds: f64,
    pub online_seconds: f64,
    pub seconds: f64,
    /// Per image: bytes sent by all parties in each phase.
    pub online_bytes: f64,
    pub offline_bytes: f64,
    /// Per image: the output shares sent to the client (not in the totals).
    pub client_bytes: f64,
    /// Rounds of the run (the batch).
    pub rounds: u64,
    pub offline_rounds: u64,
    /// One-time costs: model setup (masking, seeds) and the pre-protocol messages (structure,
    /// weight and input shares), bytes of all parties; seconds of the slowest party's model
    /// setup.
    pub setup_bytes: u64,
    pub setup_seconds: f64,
    /// Per layer, for the whole batch (bytes summed over parties, rounds max over parties).
    pub layers: Vec<LabelCost>,
    /// Bytes that crossed the relays (TLS records included; 0 without a network).
    pub relayed_bytes: u64,
    /// Wall-clock seconds from launching the processes to the last one exiting.
    pub wall_seconds: f64,
    /// The three parties' own reports.
    pub parties: Vec<PartyReport>,
    /// A stream's batches, throughput and latency (with [`LaunchOptions::stream`]). The
    /// per-image bytes above are then averages over the stream and the rounds those of one
    /// batch.
    pub stream: Option<NetworkedStream>,
}

/// A stream measured over the network.
#[derive(Clone, Debug, Serialize)]
pub struct NetworkedStream {
    pub settings: StreamSettings,
    /// Whether the suite's offline phase overlapped the online phases (false for a suite
    /// without offline material).
    pub pipelined: bool,
    pub timing: StreamTiming,
    /// Per batch, over the three parties: dealing from the first party's start to the last
    /// one's end; online from the last party taking the material to the client's result.
    pub batches: Vec<BatchTimes>,
    /// Per batch: bytes of all parties (offline + online) and rounds (online).
    pub batch_bytes: Vec<u64>,
    pub batch_rounds: Vec<u64>,
    /// Whether all full batches had the same bytes and rounds per layer (they must: every
    /// batch runs the same protocol on material of its own).
    pub batches_cost_alike: bool,
}

impl NetworkedRun {
    /// Fraction of images whose secure class equals the plaintext one.
    pub fn agreement(&self) -> f64 {
        let n = self.classes.len().max(1);
        self.classes
            .iter()
            .zip(&self.plaintext_classes)
            .filter(|(a, b)| a == b)
            .count() as f64
            / n as f64
    }
}

/// A private temporary directory, removed on drop (it holds private keys).
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "relushare-launch-{}-{nanos}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Children killed (and reaped) on drop unless they already exited.
struct Parties(Vec<(usize, Child, PathBuf)>);

impl Drop for Parties {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.0 {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn free_port() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn launch_err(msg: impl Into<String>) -> MpcError {
    MpcError::Transport(msg.into())
}

/// Runs the parties once; `Ok(None)` when a listening port was taken meanwhile (retry).
fn attempt(
    dir: &Path,
    opts: &LaunchOptions,
    keys: &Path,
    model_file: &Path,
    images_file: &Path,
) -> Result<Option<(Vec<PartyReport>, u64, f64)>> {
    let (a0, a1) = (free_port()?, free_port()?);
    let connect = opts.timeout;
    let relays = match opts.network {
        Some(p) => Some([
            Relay::start(&a0, p, connect)?,
            Relay::start(&a0, p, connect)?,
            Relay::start(&a1, p, connect)?,
        ]),
        None => None,
    };
    let (to0_from1, to0_from2, to1_from2) = match &relays {
        Some([r01, r02, r12]) => (
            r01.addr().to_string(),
            r02.addr().to_string(),
            r12.addr().to_string(),
        ),
        None => (a0.clone(), a0.clone(), a1.clone()),
    };
    let secs = format!("{}", opts.timeout.as_secs_f64());
    let out = |r: usize| dir.join(format!("report-{r}.json"));
    let role_args: [Vec<String>; 3] = [
        vec![
            "--listen".into(),
            a0.clone(),
            "--image".into(),
            images_file.display().to_string(),
        ],
        vec![
            "--listen".into(),
            a1.clone(),
            "--peers".into(),
            format!("0={to0_from1}"),
            "--model".into(),
            model_file.display().to_string(),
        ],
        vec!["--peers".into(), format!("0={to0_from2},1={to1_from2}")],
    ];
    let t0 = Instant::now();
    let mut parties = Parties(Vec::new());
    for (r, extra) in role_args.iter().enumerate() {
        let log = dir.join(format!("party-{r}.log"));
        let err = std::fs::File::create(&log)?;
        let child = Command::new(&opts.exe)
            .args(["party", "--role", &r.to_string(), "--keys"])
            .arg(keys)
            .args(["--protocol", opts.protocol.name(), "--frac-bits"])
            .arg(opts.frac_bits.to_string())
            .args(["--timeout", &secs, "--out"])
            .arg(out(r))
            .args(match opts.stream {
                Some(st) => vec![
                    "--stream-batch".to_string(),
                    st.batch.to_string(),
                    "--stream-depth".to_string(),
                    st.depth.to_string(),
                ],
                None => Vec::new(),
            })
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| {
                launch_err(format!(
                    "cannot start party {r} ({}): {e}",
                    opts.exe.display()
                ))
            })?;
        parties.0.push((r, child, log));
    }
    // Wait for all three; after the first failure give the others a moment to report theirs.
    let mut status: [Option<bool>; 3] = [None; 3];
    let mut first_failure: Option<(usize, Instant)> = None;
    loop {
        for (r, c, _) in &mut parties.0 {
            if status[*r].is_none() {
                if let Some(st) = c.try_wait()? {
                    status[*r] = Some(st.success());
                    if !st.success() && first_failure.is_none() {
                        first_failure = Some((*r, Instant::now()));
                    }
                }
            }
        }
        if status.iter().all(|s| s.is_some()) {
            break;
        }
        if let Some((_, at)) = first_failure {
            if at.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        if t0.elapsed() > opts.limit {
            let logs: Vec<String> = parties
                .0
                .iter()
                .map(|(r, _, l)| format!("P{r}: {}", tail(l, 3)))
                .collect();
            return Err(launch_err(format!(
                "the parties did not finish within {:.0} s (killed); {}",
                opts.limit.as_secs_f64(),
                logs.join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let wall = t0.elapsed().as_secs_f64();
    if let Some((r, _)) = first_failure {
        let logs: Vec<String> = parties.0.iter().map(|(_, _, l)| tail(l, 4)).collect();
        if logs.iter().any(|l| l.contains("cannot listen")) {
            return Ok(None);
        }
        let others: Vec<String> = (0..3)
            .filter(|&j| j != r)
            .map(|j| format!("P{j}: {}", logs[j].replace('\n', " | ")))
            .collect();
        return Err(MpcError::PartyFailed {
            party: r,
            reason: format!(
                "{} (others: {})",
                logs[r].replace('\n', " | "),
                others.join("; ")
            ),
        });
    }
    let mut reports = Vec::with_capacity(3);
    for r in 0..3 {
        let bytes = std::fs::read(out(r))
            .map_err(|e| launch_err(format!("party {r} wrote no report: {e}")))?;
        let rep: PartyReport = serde_json::from_slice(&bytes)
            .map_err(|e| launch_err(format!("party {r}'s report: {e}")))?;
        reports.push(rep);
    }
    let relayed = relays
        .as_ref()
        .map_or(0, |rs| rs.iter().map(|r| r.bytes()).sum());
    Ok(Some((reports, relayed, wall)))
}

/// Classifies `images` (normalized, CHW) with `model` in one batch, the three parties as
/// separate `relushare party` processes over TLS on loopback, over `opts.network` if set.
pub fn run_networked(
    model: &Model,
    images: &[Vec<f32>],
    opts: &LaunchOptions,
) -> Result<NetworkedRun> {
    if images.is_empty() {
        return Err(MpcError::Param("no images to classify".into()));
    }
    // The plaintext reference, as the in-process path computes it.
    let mut fm = FixedModel::from_model(model, opts.frac_bits)?;
    prepare_model(opts.protocol, &mut fm)?;
    let mut plaintext_classes = Vec::with_capacity(images.len());
    for img in images {
        let x = fm.encode_input(img)?;
        let trace = plain::forward_fixed_trace(&fm, &x, &mut |_| false)?;
        plaintext_classes.push(plain::argmax_fixed(
            trace.last().map(|v| v.as_slice()).unwrap_or(&[]),
        ));
    }

    let dir = WorkDir::new()?;
    let keys = dir.0.join("keys");
    super::pki::generate(&keys, None, false)?;
    let model_file = dir.0.join("model.safetensors");
    model
        .save(&model_file)
        .map_err(|e| MpcError::Model(e.to_string()))?;
    let images_file = dir.0.join("images.json");
    std::fs::write(
        &images_file,
        serde_json::to_vec(images).map_err(|e| MpcError::Param(e.to_string()))?,
    )?;
    let mut got = None;
    for _ in 0..3 {
        got = attempt(&dir.0, opts, &keys, &model_file, &images_file)?;
        if got.is_some() {
            break;
        }
    }
    let (parties, relayed_bytes, wall_seconds) =
        got.ok_or_else(|| launch_err("no free loopback ports for the parties"))?;
    summarise(
        parties,
        plaintext_classes,
        opts,
        relayed_bytes,
        wall_seconds,
    )
}

/// Per-label costs of the three parties' reports (bytes summed, rounds max), in P0's order.
pub fn merge_layers(parties: &[PartyReport]) -> Vec<LabelCost> {
    let parts: Vec<(usize, &[LabelCost])> = parties
        .iter()
        .map(|p| (p.role, p.layers.as_slice()))
        .collect();
    merge_label_costs(&parts)
}

/// [`merge_layers`] on `(role, layers)` pairs.
pub fn merge_label_costs(parties: &[(usize, &[LabelCost])]) -> Vec<LabelCost> {
    let mut out: Vec<LabelCost> = Vec::new();
    for &(role, layers) in parties {
        for l in layers {
            let i = match out.iter().position(|o| o.label == l.label) {
                Some(i) => i,
                None => {
                    out.push(LabelCost {
                        label: l.label.clone(),
                        ..Default::default()
                    });
                    out.len() - 1
                }
            };
            let o = &mut out[i];
            o.online_bytes += l.online_bytes;
            o.offline_bytes += l.offline_bytes;
            o.online_rounds = o.online_rounds.max(l.online_rounds);
            o.offline_rounds = o.offline_rounds.max(l.offline_rounds);
            o.bytes_per_party[role.min(2)] += l.online_bytes + l.offline_bytes;
        }
    }
    out
}

fn summarise(
    parties: Vec<PartyReport>,
    plaintext_classes: Vec<usize>,
    opts: &LaunchOptions,
    relayed_bytes: u64,
    wall_seconds: f64,
) -> Result<NetworkedRun> {
    let client = parties
        .iter()
        .find(|p| p.client)
        .ok_or_else(|| launch_err("no party reported the result"))?;
    let classes = client.classes.clone().unwrap_or_default();
    let logits = client.logits.clone().unwrap_or_default();
    let n = client.images;
    if classes.len() != n || n != plaintext_classes.len() {
        return Err(launch_err(format!(
            "the client classified {} of {} images",
            classes.len(),
            plaintext_classes.len()
        )));
    }
    let all = merge_layers(&parties);
    let (setup, layers): (Vec<LabelCost>, Vec<LabelCost>) = all
        .into_iter()
        .partition(|l| SETUP_LABELS.contains(&l.label.as_str()));
    let sum = |f: &dyn Fn(&LabelCost) -> u64| layers.iter().map(f).sum::<u64>();
    let first_offline = parties
        .iter()
        .map(|p| p.offline_start_unix)
        .fold(f64::INFINITY, f64::min);
    let last_online_start = parties
        .iter()
        .map(|p| p.online_start_unix)
        .fold(0.0, f64::max);
    let last_end = parties
        .iter()
        .map(|p| p.online_end_unix)
        .fold(0.0, f64::max);
    let nf = n as f64;
    let mut offline = (last_online_start - first_offline).max(0.0) / nf;
    let mut online = (last_end - last_online_start).max(0.0) / nf;
    let mut rounds = sum(&|l| l.online_rounds);
    let mut offline_rounds = sum(&|l| l.offline_rounds);
    let stream = match &opts.stream {
        Some(st) => {
            let s = summarise_stream(&parties, *st)?;
            // Per image: the phases' spans summed over the batches; rounds: one batch's.
            offline = s
                .batches
                .iter()
                .map(|b| b.offline_end - b.offline_start)
                .sum::<f64>()
                / nf;
            online = s
                .batches
                .iter()
                .map(|b| b.online_end - b.online_start)
                .sum::<f64>()
                / nf;
            rounds = s.batch_rounds.first().copied().unwrap_or(0);
            offline_rounds = parties
                .iter()
                .filter_map(|p| p.stream.as_ref())
                .filter_map(|r| r.batches.first())
                .map(|b| b.layers.iter().map(|l| l.offline_rounds).sum::<u64>())
                .max()
                .unwrap_or(0);
            Some(s)
        }
        None => None,
    };
    Ok(NetworkedRun {
        protocol: opts.protocol.name().to_string(),
        network: opts.network,
        images: n,
        classes,
        logits,
        plaintext_classes,
        offline_seconds: offline,
        online_seconds: online,
        seconds: offline + online,
        online_bytes: sum(&|l| l.online_bytes) as f64 / nf,
        client_bytes: parties.iter().map(|p| p.client_bytes).sum::<u64>() as f64 / nf,
        offline_bytes: sum(&|l| l.offline_bytes) as f64 / nf,
        rounds,
        offline_rounds,
        setup_bytes: setup
            .iter()
            .map(|l| l.online_bytes + l.offline_bytes)
            .sum::<u64>()
            + parties.iter().map(|p| p.setup_bytes).sum::<u64>(),
        setup_seconds: parties.iter().map(|p| p.setup_seconds).fold(0.0, f64::max),
        layers,
        relayed_bytes,
        wall_seconds,
        parties,
        stream,
    })
}

/// The stream part of a summary: per batch, the parties' costs merged like a single run's and
/// their times merged over the shared clock.
fn summarise_stream(parties: &[PartyReport], st: StreamSettings) -> Result<NetworkedStream> {
    let reps: Vec<&super::session::StreamReport> = parties
        .iter()
        .map(|p| {
            p.stream
                .as_ref()
                .ok_or_else(|| launch_err(format!("party {} did not report a stream", p.role)))
        })
        .collect::<Result<_>>()?;
    let nb = reps[0].batches.len();
    if reps
        .iter()
        .any(|r| r.batches.len() != nb || r.settings != st)
    {
        return Err(launch_err("the parties report different streams"));
    }
    let mut batch_bytes = Vec::with_capacity(nb);
    let mut batch_rounds = Vec::with_capacity(nb);
    let mut shapes: Vec<(usize, Vec<crate::cost::LabelShape>)> = Vec::new();
    for j in 0..nb {
        let parts: Vec<(usize, &[LabelCost])> = parties
            .iter()
            .zip(&reps)
            .map(|(p, r)| (p.role, r.batches[j].layers.as_slice()))
            .collect();
        let merged = merge_label_costs(&parts);
        batch_bytes.push(
            merged
                .iter()
                .map(|l| l.online_bytes + l.offline_bytes)
                .sum(),
        );
        batch_rounds.push(merged.iter().map(|l| l.online_rounds).sum());
        let mut key: Vec<_> = merged.iter().map(LabelCost::shape).collect();
        key.sort();
        shapes.push((reps[0].batches[j].images, key));
    }
    let full: Vec<&(usize, Vec<_>)> = shapes.iter().filter(|(n, _)| *n == st.batch).collect();
    let batches_cost_alike = full.windows(2).all(|w| w[0].1 == w[1].1);
    let per_party: Vec<Vec<BatchTimes>> = reps
        .iter()
        .map(|r| r.batches.iter().map(|b| b.times).collect())
        .collect();
    let refs: Vec<&[BatchTimes]> = per_party.iter().map(|v| v.as_slice()).collect();
    let batches = crate::pipeline::merge_times(&refs);
    let sizes: Vec<usize> = reps[0].batches.iter().map(|b| b.images).collect();
    Ok(NetworkedStream {
        settings: st,
        pipelined: reps.iter().all(|r| r.pipelined),
        timing: StreamTiming::from_batches(&batches, &sizes, st.batch, st.depth),
        batches,
        batch_bytes,
        batch_rounds,
        batches_cost_alike,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(role: usize, client: bool, layers: Vec<LabelCost>) -> PartyReport {
        PartyReport {
            role,
            arch: "fmnist".into(),
            class_names: Vec::new(),
            client_bytes: 0,
            protocol: "fast".into(),
            model_owner: role == 1,
            client,
            owner_role: 1,
            client_role: 0,
            images: 2,
            logits: client.then(|| vec![vec![0.0, 1.0], vec![1.0, 0.0]]),
            classes: client.then(|| vec![1, 0]),
            offline_bytes: 0,
            online_bytes: 0,
            online_rounds: 0,
            offline_rounds: 0,
            setup_bytes: 100,
            model_setup_bytes: 0,
            model_setup_rounds: 0,
            weight_masks: None,
            weight_cache: None,
            setup_received_bytes: 0,
            seconds: 1.0,
            online_seconds: 0.5,
            offline_seconds: 0.2,
            setup_seconds: 0.1 * role as f64,
            offline_start_unix: 1000.0 + 0.1 * role as f64,
            online_start_unix: 1001.0 + 0.1 * role as f64,
            online_end_unix: 1003.0 - 0.5 * role as f64,
            layers,
            stream: None,
        }
    }

    fn cost(label: &str, on: u64, off: u64, rounds: u64, off_rounds: u64) -> LabelCost {
        LabelCost {
            label: label.into(),
            online_bytes: on,
            offline_bytes: off,
            online_rounds: rounds,
            offline_rounds: off_rounds,
            ..Default::default()
        }
    }

    /// Bytes add up over the parties, rounds are the maximum, one-time costs stay apart, and
    /// the phase spans come from the parties' clocks.
    #[test]
    fn reports_are_summed_like_the_in_process_runner() {
        let parties = vec![
            report(
                0,
                true,
                vec![cost("model-setup", 0, 50, 0, 1), cost("conv1", 10, 0, 1, 0)],
            ),
            report(
                1,
                false,
                vec![cost("conv1", 30, 0, 2, 0), cost("act1", 4, 0, 6, 0)],
            ),
            report(
                2,
                false,
                vec![cost("conv1", 0, 200, 0, 1), cost("act1", 0, 8, 0, 1)],
            ),
        ];
        let opts = LaunchOptions::new("relushare".into(), Protocol::Fast, Some(NetProfile::WAN));
        let run = summarise(parties, vec![1, 1], &opts, 0, 2.0).unwrap();
        assert_eq!(run.layers.len(), 2);
        assert_eq!(run.online_bytes, (10.0 + 30.0 + 4.0) / 2.0);
        assert_eq!(run.offline_bytes, (200.0 + 8.0) / 2.0);
        assert_eq!((run.rounds, run.offline_rounds), (2 + 6, 1 + 1));
        assert_eq!(run.setup_bytes, 50 + 3 * 100);
        assert_eq!(run.layers[0].bytes_per_party, [10, 30, 200]);
        // offline: 1000.0 (P0 starts) to 1001.2 (P2 starts online); online: to 1003.0; per image.
        assert!((run.offline_seconds - 1.2 / 2.0).abs() < 1e-9);
        assert!((run.online_seconds - 1.8 / 2.0).abs() < 1e-9);
        assert_eq!(run.classes, vec![1, 0]);
        assert_eq!(run.agreement(), 0.5);
        assert!((run.setup_seconds - 0.2).abs() < 1e-12);
    }
}
