//! Secure inference of a model on a set of images, summarised per image (medians) and per
//! layer: three parties in this process ([`run_secure`]), or as separate processes over an
//! emulated network ([`run_secure_networked`], which calls `relushare_mpc::net::launch`).
//! Shared by `infer`, `demo`, `bench` and `reproduce`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use relushare_data::ImageSet;
use relushare_model::Model;
use relushare_mpc::net::emu::NetProfile;
use relushare_mpc::net::launch::{run_networked, LaunchOptions};
use relushare_mpc::plain::{self, FixedModel};
use relushare_mpc::protocol::{check_input, factory_for, prepare_model, Protocol};
use relushare_mpc::runner::{run_session, RunOptions};
use serde::Serialize;

/// One image's secure result.
#[derive(Serialize, Clone, Debug)]
pub struct ImageResult {
    pub index: usize,
    pub label: u8,
    pub class: usize,
    /// Class of the plaintext fixed-point network as the protocol runs it (fused gates for the
    /// fast suites).
    pub plaintext_class: usize,
    pub agree: bool,
    /// Class of the trained model's plaintext fixed-point network without gate fusion.
    pub unfused_class: usize,
    pub agree_unfused: bool,
    pub seconds: f64,
    pub online_seconds: f64,
    pub offline_seconds: f64,
    pub online_bytes: f64,
    pub offline_bytes: f64,
    /// Output shares sent to the client (not in the online/offline bytes).
    pub client_bytes: f64,
    pub rounds: u64,
    pub offline_rounds: u64,
    /// The decoded secure logits.
    pub logits: Vec<f32>,
}

/// One layer's costs per image (medians over the batches).
#[derive(Serialize, Clone, Debug)]
pub struct LayerRow {
    pub name: String,
    pub seconds: f64,
    pub online_bytes: f64,
    pub offline_bytes: f64,
    pub rounds: u64,
    pub offline_rounds: u64,
}

/// The network a run used.
#[derive(Serialize, Clone, Debug)]
pub struct NetworkInfo {
    /// `none` (in-process), `lan`, `wan` or `custom`.
    pub name: String,
    /// Round-trip time (ms) and bandwidth per direction (Mbit/s; null = unlimited) of the
    /// emulated network; 0 and null in-process.
    pub rtt_ms: f64,
    pub mbit: Option<f64>,
    /// Whether the parties ran as separate processes over TLS.
    pub processes: bool,
}

impl NetworkInfo {
    pub fn in_process() -> Self {
        NetworkInfo {
            name: "none".into(),
            rtt_ms: 0.0,
            mbit: None,
            processes: false,
        }
    }

    pub fn emulated(p: &NetProfile) -> Self {
        NetworkInfo {
            name: p.name().unwrap_or("custom").into(),
            rtt_ms: p.rtt_ms,
            mbit: p.mbit,
            processes: true,
        }
    }

    /// In words, for the text output.
    pub fn describe(&self) -> String {
        if self.processes {
            format!(
                "network {}: {} ms RTT, {}, parties as processes over TLS",
                self.name,
                self.rtt_ms,
                self.mbit
                    .map_or("unlimited bandwidth".to_string(), |m| format!("{m} Mbit/s"))
            )
        } else {
            "parties in this process".into()
        }
    }
}

/// Summary of a secure run: per-image medians, per-layer rows, agreement with plaintext.
#[derive(Serialize, Clone, Debug)]
pub struct SecureSummary {
    pub protocol: String,
    /// The network the parties talked over.
    pub network: NetworkInfo,
    pub arch: String,
    pub preset: String,
    pub images: usize,
    pub batch: usize,
    pub frac_bits: u32,
    /// Median seconds per image (offline + online phases).
    pub seconds: f64,
    pub online_seconds: f64,
    pub offline_seconds: f64,
    pub online_bytes: f64,
    pub offline_bytes: f64,
    pub total_bytes: f64,
    /// Output shares sent to the client per image (outside the three-party transport, so not
    /// in the totals above).
    pub client_bytes: f64,
    /// Online rounds per run.
    pub rounds: u64,
    pub offline_rounds: u64,
    /// Fraction of images whose secure class equals the class of the plaintext fixed-point
    /// network the protocol evaluates (for the fast suites: with fused gates).
    pub agree_with_plaintext: f64,
    /// Fraction of images whose secure class equals the class of the trained model's plaintext
    /// fixed-point network without gate fusion (equal to `agree_with_plaintext` where nothing
    /// is fused).
    pub agree_with_unfused: f64,
    /// Fraction of images classified as their label.
    pub accuracy: f64,
    pub layers: Vec<LayerRow>,
    /// One-time, per-model costs (seed agreement, weight masking).
    pub setup_seconds: f64,
    pub setup_bytes: u64,
    /// Wall-clock seconds of the whole session.
    pub wall_seconds: f64,
    /// The fast suites' per-image bound on the probability that a local truncation fails
    /// (union bound over the truncated elements; models above 2^-6 are refused); for `mimo`
    /// its failure events (the last layer's local truncation, capped outputs' wrap-around);
    /// `None` for `securenn`, which does not truncate locally.
    pub truncation_failure_bound: Option<f64>,
    /// Where the comparison rings and that bound come from: "proven" (interval arithmetic) or
    /// "calibrated" (deep networks: measured with a margin, see
    /// `relushare_mpc::fast::bounds::calibrate`); `None` for `securenn`.
    pub comparison_bounds: Option<String>,
    /// With `--protocol auto`: the choice and its reasons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_choice: Option<relushare_mpc::auto::Choice>,
    pub per_image: Vec<ImageResult>,
}

/// The input normalization a model with random weights is given: that of its architecture's
/// dataset (a CIFAR-10 network is run on CIFAR-10-normalized inputs, whatever images a run
/// feeds it), or `fallback`'s for an architecture with no dataset of its own (ResNets, imported
/// graphs). A trained model file carries its own normalization and never comes here. The
/// proven rings and truncation bounds of the fast suites scale with the input range this sets.
pub fn random_weights_normalization(
    spec: &relushare_model::ModelSpec,
    fallback: relushare_data::DatasetName,
) -> relushare_model::Normalization {
    let d = spec
        .arch
        .name()
        .parse::<relushare_data::DatasetName>()
        .unwrap_or(fallback);
    let n = relushare_data::normalization(d, spec.input.c);
    relushare_model::Normalization {
        mean: n.mean,
        std: n.std,
    }
}

/// [`SecureSummary::truncation_failure_bound`] and [`SecureSummary::comparison_bounds`] of
/// `model` under `protocol`: from the proof where it holds, else from calibration.
fn ring_bounds(model: &Model, protocol: Protocol, frac_bits: u32) -> Option<(f64, &'static str)> {
    use relushare_mpc::fast::bounds;
    if protocol == Protocol::Securenn {
        return None;
    }
    let mut fm = FixedModel::from_model(model, frac_bits).ok()?;
    prepare_model(protocol, &mut fm).ok()?;
    if protocol == Protocol::Mimo {
        // Only mimo's last layer truncates locally (its other truncations never fail).
        let (p, kind) = relushare_mpc::mimo::failure_bound(&fm, model).ok()?;
        return Some((p, kind.name()));
    }
    let lim = relushare_mpc::fast::input_abs_max(&model.spec.normalization);
    let (_, kind) = relushare_mpc::fast::rings_for_model(&fm, model).ok()?;
    let b = match kind {
        bounds::BoundsKind::Proven => bounds::analyse(&fm, lim).ok()?,
        bounds::BoundsKind::Calibrated => bounds::calibrate(&fm, lim).ok()?,
    };
    Some((b.failure_bound(), kind.name()))
}

pub fn median(mut v: Vec<f64>) -> f64 {
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

/// Classify the first `count` images of `set` securely with `protocol`, `batch` images per
/// protocol run, and compare every class with the plaintext fixed-point network.
/// The number of images a run classifies (`count`, at most the set's), after checking the
/// batch size and that the images fit the model.
fn checked_count(model: &Model, set: &ImageSet, count: usize, batch: usize) -> Result<usize> {
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    let d = model.spec.input;
    if set.dims() != (d.c, d.h, d.w) {
        let (c, h, w) = set.dims();
        bail!("the images are {c}x{h}x{w}, the model expects {d}");
    }
    let count = set.len().min(count);
    if count == 0 {
        bail!("no images to classify");
    }
    Ok(count)
}

pub fn run_secure(
    model: &Model,
    set: &ImageSet,
    count: usize,
    protocol: Protocol,
    batch: usize,
    frac_bits: u32,
) -> Result<SecureSummary> {
    let count = checked_count(model, set, count, batch)?;
    let d = model.spec.input;
    let unfused = FixedModel::from_model(model, frac_bits)?;
    let mut fm = unfused.clone();
    let fused = !prepare_model(protocol, &mut fm)?.is_empty();
    let mut encoded = Vec::with_capacity(count);
    let mut plain_class = Vec::with_capacity(count);
    let mut unfused_class = Vec::with_capacity(count);
    let mut buf = vec![0f32; d.len()];
    let class = |fm: &FixedModel, x: &[u64]| -> Result<usize> {
        let trace = plain::forward_fixed_trace(fm, x, &mut |_| false)?;
        Ok(plain::argmax_fixed(trace.last().expect("output layer")))
    };
    for i in 0..count {
        model.spec.normalization.apply(set.image(i), &mut buf);
        let x = fm.encode_input(&buf)?;
        check_input(protocol, &model.spec.normalization, frac_bits, &x)
            .with_context(|| format!("image {i}"))?;
        let c = class(&fm, &x)?;
        plain_class.push(c);
        unfused_class.push(if fused { class(&unfused, &x)? } else { c });
        encoded.push(x);
    }
    drop(unfused);
    let batches: Vec<Vec<Vec<u64>>> = encoded.chunks(batch).map(|c| c.to_vec()).collect();
    let factory = factory_for(protocol, &fm, model)?;
    let t0 = Instant::now();
    let session = run_session(&fm, &batches, factory.as_ref(), &RunOptions::default())?;
    let wall = t0.elapsed().as_secs_f64();

    let mut per_image = Vec::with_capacity(count);
    let mut names: Vec<String> = Vec::new();
    let mut samples: Vec<Vec<[f64; 5]>> = Vec::new();
    for b in &session.batches {
        let n = b.outputs.len() as f64;
        let rep = &b.report;
        if names.is_empty() {
            names = rep.layers.iter().map(|l| l.label.clone()).collect();
            samples = vec![Vec::new(); names.len()];
        }
        for (li, name) in names.iter().enumerate() {
            if let Some(l) = rep.get(name) {
                samples[li].push([
                    l.seconds / n,
                    l.online_bytes as f64 / n,
                    l.offline_bytes as f64 / n,
                    l.online_rounds as f64,
                    l.offline_rounds as f64,
                ]);
            }
        }
        for out in &b.outputs {
            let idx = per_image.len();
            let class = plain::argmax_fixed(out);
            per_image.push(ImageResult {
                index: idx,
                label: set.label(idx),
                class,
                plaintext_class: plain_class[idx],
                agree: class == plain_class[idx],
                unfused_class: unfused_class[idx],
                agree_unfused: class == unfused_class[idx],
                seconds: (b.online_seconds + b.offline_seconds) / n,
                online_seconds: b.online_seconds / n,
                offline_seconds: b.offline_seconds / n,
                online_bytes: rep.online_bytes() as f64 / n,
                offline_bytes: rep.offline_bytes() as f64 / n,
                client_bytes: rep.client_bytes as f64 / n,
                rounds: rep.online_rounds(),
                offline_rounds: rep.offline_rounds(),
                logits: fm.fp.decode_vec(out),
            });
        }
    }
    let col = |s: &Vec<[f64; 5]>, k: usize| median(s.iter().map(|x| x[k]).collect());
    let layers = names
        .iter()
        .zip(&samples)
        .map(|(name, s)| LayerRow {
            name: name.clone(),
            seconds: col(s, 0),
            online_bytes: col(s, 1),
            offline_bytes: col(s, 2),
            rounds: col(s, 3) as u64,
            offline_rounds: col(s, 4) as u64,
        })
        .collect();
    Ok(summarize(
        model,
        protocol,
        NetworkInfo::in_process(),
        (batch, frac_bits),
        layers,
        (
            session.setup_seconds,
            session.setup.online_bytes() + session.setup.offline_bytes(),
        ),
        wall,
        per_image,
    ))
}

/// As [`run_secure`], with the three parties as separate `relushare party` processes over TLS
/// on loopback and every link through the emulated network `net`; one launch per batch.
/// Per-layer seconds are not measured this way (0); phase seconds are.
#[allow(clippy::too_many_arguments)]
pub fn run_secure_networked(
    model: &Model,
    set: &ImageSet,
    count: usize,
    protocol: Protocol,
    batch: usize,
    frac_bits: u32,
    net: NetProfile,
    timeout: std::time::Duration,
) -> Result<SecureSummary> {
    let count = checked_count(model, set, count, batch)?;
    let d = model.spec.input;
    let images: Vec<Vec<f32>> = (0..count)
        .map(|i| {
            let mut buf = vec![0f32; d.len()];
            model.spec.normalization.apply(set.image(i), &mut buf);
            buf
        })
        .collect();
    // the trained model's fixed-point classes without gate fusion (the second agreement figure)
    let unfused = FixedModel::from_model(model, frac_bits)?;
    let unfused_class = images
        .iter()
        .map(|x| -> Result<usize> {
            let trace =
                plain::forward_fixed_trace(&unfused, &unfused.encode_input(x)?, &mut |_| false)?;
            Ok(plain::argmax_fixed(trace.last().expect("output layer")))
        })
        .collect::<Result<Vec<_>>>()?;
    drop(unfused);
    let mut opts = LaunchOptions::new(std::env::current_exe()?, protocol, Some(net));
    opts.frac_bits = frac_bits;
    opts.timeout = timeout;
    let t0 = Instant::now();
    let mut per_image = Vec::with_capacity(count);
    let mut names: Vec<String> = Vec::new();
    let mut samples: Vec<Vec<[f64; 4]>> = Vec::new();
    let (mut setup_seconds, mut setup_bytes) = (0.0, 0);
    for chunk in images.chunks(batch) {
        let run = run_networked(model, chunk, &opts)?;
        let n = run.images as f64;
        if names.is_empty() {
            names = run.layers.iter().map(|l| l.label.clone()).collect();
            samples = vec![Vec::new(); names.len()];
            (setup_seconds, setup_bytes) = (run.setup_seconds, run.setup_bytes);
        }
        for (li, name) in names.iter().enumerate() {
            if let Some(l) = run.layers.iter().find(|l| &l.label == name) {
                samples[li].push([
                    l.online_bytes as f64 / n,
                    l.offline_bytes as f64 / n,
                    l.online_rounds as f64,
                    l.offline_rounds as f64,
                ]);
            }
        }
        for ((class, plain_class), logits) in run
            .classes
            .iter()
            .zip(&run.plaintext_classes)
            .zip(&run.logits)
        {
            let idx = per_image.len();
            per_image.push(ImageResult {
                index: idx,
                label: set.label(idx),
                class: *class,
                plaintext_class: *plain_class,
                agree: class == plain_class,
                unfused_class: unfused_class[idx],
                agree_unfused: *class == unfused_class[idx],
                client_bytes: run.client_bytes,
                logits: logits.clone(),
                seconds: run.seconds,
                online_seconds: run.online_seconds,
                offline_seconds: run.offline_seconds,
                online_bytes: run.online_bytes,
                offline_bytes: run.offline_bytes,
                rounds: run.rounds,
                offline_rounds: run.offline_rounds,
            });
        }
    }
    let col = |s: &Vec<[f64; 4]>, k: usize| median(s.iter().map(|x| x[k]).collect());
    let layers = names
        .iter()
        .zip(&samples)
        .map(|(name, s)| LayerRow {
            name: name.clone(),
            seconds: 0.0,
            online_bytes: col(s, 0),
            offline_bytes: col(s, 1),
            rounds: col(s, 2) as u64,
            offline_rounds: col(s, 3) as u64,
        })
        .collect();
    Ok(summarize(
        model,
        protocol,
        NetworkInfo::emulated(&net),
        (batch, frac_bits),
        layers,
        (setup_seconds, setup_bytes),
        t0.elapsed().as_secs_f64(),
        per_image,
    ))
}

/// The summary of a run from its per-image results (medians over the images) and its layers.
#[allow(clippy::too_many_arguments)]
fn summarize(
    model: &Model,
    protocol: Protocol,
    network: NetworkInfo,
    (batch, frac_bits): (usize, u32),
    layers: Vec<LayerRow>,
    (setup_seconds, setup_bytes): (f64, u64),
    wall_seconds: f64,
    per_image: Vec<ImageResult>,
) -> SecureSummary {
    let count = per_image.len();
    let med = |f: &dyn Fn(&ImageResult) -> f64| median(per_image.iter().map(f).collect());
    let share = |f: &dyn Fn(&ImageResult) -> bool| {
        per_image.iter().filter(|r| f(r)).count() as f64 / count as f64
    };
    let online_bytes = med(&|r| r.online_bytes);
    let offline_bytes = med(&|r| r.offline_bytes);
    let bounds = ring_bounds(model, protocol, frac_bits);
    SecureSummary {
        protocol: protocol.name().to_string(),
        network,
        arch: model.spec.arch.name().to_string(),
        preset: model.spec.preset.clone(),
        images: count,
        batch,
        frac_bits,
        seconds: med(&|r| r.seconds),
        online_seconds: med(&|r| r.online_seconds),
        offline_seconds: med(&|r| r.offline_seconds),
        online_bytes,
        offline_bytes,
        total_bytes: online_bytes + offline_bytes,
        client_bytes: med(&|r| r.client_bytes),
        rounds: med(&|r| r.rounds as f64) as u64,
        offline_rounds: med(&|r| r.offline_rounds as f64) as u64,
        agree_with_plaintext: share(&|r| r.agree),
        agree_with_unfused: share(&|r| r.agree_unfused),
        accuracy: share(&|r| r.class == r.label as usize),
        layers,
        setup_seconds,
        setup_bytes,
        wall_seconds,
        truncation_failure_bound: bounds.map(|b| b.0),
        comparison_bounds: bounds.map(|b| b.1.to_string()),
        protocol_choice: None,
        per_image,
    }
}

impl SecureSummary {
    /// The human-readable per-layer table.
    pub fn print_table(&self) {
        println!(
            "{:<12} {:>10} {:>12} {:>12} {:>7} {:>8}",
            "layer", "seconds", "online MB", "offline MB", "rounds", "off.rnd"
        );
        for l in &self.layers {
            // Over a network the layers' times are not measured (only the phases').
            let secs = if self.network.processes {
                "-".to_string()
            } else {
                format!("{:.4}", l.seconds)
            };
            println!(
                "{:<12} {:>10} {:>12.4} {:>12.4} {:>7} {:>8}",
                l.name,
                secs,
                l.online_bytes / 1e6,
                l.offline_bytes / 1e6,
                l.rounds,
                l.offline_rounds
            );
        }
        println!(
            "{:<12} {:>10.4} {:>12.4} {:>12.4} {:>7} {:>8}",
            "total",
            self.seconds,
            self.online_bytes / 1e6,
            self.offline_bytes / 1e6,
            self.rounds,
            self.offline_rounds
        );
        println!(
            "{:<12} {:>10} {:>12.4} (output shares to the client, not in the totals)",
            "to client",
            "",
            self.client_bytes / 1e6
        );
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `--protocol auto`: the suite `relushare_mpc::auto` predicts fastest for `job` over `net`
/// (`None`: in process, compute only), measured on the first image of `set`.
pub fn choose_protocol(
    model: &Model,
    set: &ImageSet,
    frac_bits: u32,
    net: Option<NetProfile>,
    job: relushare_mpc::auto::Job,
    objective: relushare_mpc::auto::Objective,
) -> Result<relushare_mpc::auto::Choice> {
    if set.is_empty() {
        bail!("no image to measure the suites on");
    }
    let fm = FixedModel::from_model(model, frac_bits)?;
    let mut buf = vec![0f32; model.spec.input.len()];
    model.spec.normalization.apply(set.image(0), &mut buf);
    let x = fm.encode_input(&buf)?;
    let link = relushare_mpc::auto::Link {
        rtt_ms: net.map_or(0.0, |p| p.rtt_ms),
        mbit: net.and_then(|p| p.mbit),
    };
    Ok(relushare_mpc::auto::choose_for_model(
        model, &fm, &x, link, job, objective,
    )?)
}
