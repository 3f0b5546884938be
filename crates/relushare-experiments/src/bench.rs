//! `relushare bench`: measured, repeatable performance numbers written as JSON.
//!
//! For each architecture, preset and protocol suite: seconds per image (median, min, max over
//! repeated runs), online/offline bytes and rounds; batched throughput of the `fast` suite;
//! plaintext inference time of the same model (f32 reference, fixed point, Burn); training
//! throughput on the Burn backend; peak resident memory of a secure inference (measured in a
//! child process so that each figure is that run's own).
//!
//! `--network lan,wan` runs only the emulated-network rows instead (`bench_net`): the parties
//! as separate processes over TLS through shaping relays, each row beside the in-process compute
//! time and the model compute + rounds x RTT + bytes / bandwidth.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use relushare_data::{load, DatasetName, ImageSet, Split};
use relushare_model::{count, presets, reference, Arch, Model};
use relushare_mpc::net::emu::NetProfile;
use relushare_mpc::plain::{self, FixedModel};
use relushare_mpc::protocol::Protocol;
use relushare_nn::{evaluate, train, EvalConfig, TrainConfig};
use serde::Serialize;

use crate::secure::{median, peak_rss_bytes, run_secure};

#[derive(clap::Args)]
pub struct Args {
    /// A small, fast run (one repeat, fewer configurations) for smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Architectures (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub archs: Option<Vec<Arch>>,
    /// Presets (comma-separated); default original, uniform3, uniform32, fc-noise.
    #[arg(long, value_delimiter = ',')]
    pub presets: Option<Vec<String>>,
    /// Protocol suites (comma-separated); default securenn, fast.
    #[arg(long, value_delimiter = ',')]
    pub protocols: Option<Vec<Protocol>>,
    /// Repeated single-image runs per configuration.
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Batch sizes for the throughput rows (fast suite).
    #[arg(long, value_delimiter = ',')]
    pub batches: Option<Vec<usize>>,
    /// Skip the training-throughput rows.
    #[arg(long)]
    pub no_train: bool,
    /// Skip the peak-memory rows (they spawn child processes).
    #[arg(long)]
    pub no_memory: bool,
    /// Soak test: run this many secure inferences back to back (svhn, fast), plus the same
    /// number spread over concurrent sessions, and report failures and memory growth.
    #[arg(long)]
    pub soak: Option<usize>,
    /// Also write the results as Markdown tables (with the paper's Table 8 beside ours).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Measure over emulated networks instead (comma-separated: lan, wan): the parties as
    /// separate processes over TLS through shaping relays, beside the in-process compute time
    /// and the model compute + rounds x RTT + bytes / bandwidth. Only these rows are run; the
    /// defaults become presets original,uniform32 and protocols fast,fss,mimo,securenn.
    #[arg(long, value_delimiter = ',')]
    pub network: Option<Vec<String>>,
    /// With --network: images per row over the network (one launch each).
    #[arg(long, default_value_t = 1)]
    pub network_images: usize,
    /// Only the ResNet-18 (CIFAR-100 variant) rows: fast and securenn (or --protocols), all
    /// ReLUs and a 53k-comparison sharing, with peak memory (unless --no-memory).
    #[arg(long)]
    pub resnet: bool,
    /// With --network: measure streams of this many images instead (the dealer's material
    /// pipelined over the same links; images/s and latency beside the --protocol auto model).
    #[arg(long, requires = "network")]
    pub stream: Option<usize>,
    /// With --stream: batch sizes (comma-separated), one row each.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub stream_batch: Vec<usize>,
    /// With --stream: batches of dealer material queued ahead.
    #[arg(long, default_value_t = relushare_mpc::pipeline::DEFAULT_DEPTH)]
    pub stream_depth: usize,
    /// Internal: run one secure inference ARCH:PRESET:PROTOCOL:BATCH and print its peak memory.
    #[arg(long, hide = true)]
    pub memory_probe: Option<String>,
    /// Load test of private inference as a service: start `relushare serve` (owner and helper)
    /// as processes on loopback for each architecture (--archs, default fmnist,cifar10; random
    /// weights of --presets' first preset, default original) and run --clients concurrent
    /// clients x --per-client images, three times (a warm-up and two equal rounds); report
    /// failures, agreement with plaintext,
    /// p50/p99 latency, throughput and the servers' resident memory after each round.
    #[arg(long)]
    pub serve: bool,
    /// --serve: concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// --serve: images per client (one session each).
    #[arg(long, default_value_t = 25)]
    pub per_client: usize,
    /// --serve: sessions the servers run at once (default: their number of cores).
    #[arg(long)]
    pub max_sessions: Option<usize>,
}

#[derive(Serialize)]
struct SecureRow {
    arch: String,
    preset: String,
    protocol: String,
    relus: usize,
    repeats: usize,
    seconds_median: f64,
    seconds_min: f64,
    seconds_max: f64,
    online_seconds: f64,
    offline_seconds: f64,
    online_bytes: f64,
    offline_bytes: f64,
    total_bytes: f64,
    rounds: u64,
    offline_rounds: u64,
    setup_seconds: f64,
    setup_bytes: u64,
    /// Output shares sent to the client per image (not in the totals).
    client_bytes: f64,
    /// Agreement with the plaintext network as the suite runs it (fused gates for `fast`).
    agree_with_plaintext: f64,
    /// Agreement with the trained model's plaintext network, gates unfused.
    agree_with_unfused: f64,
}

#[derive(Serialize)]
struct ThroughputRow {
    arch: String,
    preset: String,
    protocol: String,
    batch: usize,
    images_per_second: f64,
    seconds_per_batch: f64,
    bytes_per_image: f64,
}

#[derive(Serialize)]
struct PlainRow {
    arch: String,
    preset: String,
    f32_reference_seconds: f64,
    fixed_point_seconds: f64,
    burn_images_per_second: f64,
}

#[derive(Serialize)]
struct TrainRow {
    arch: String,
    preset: String,
    backend: String,
    batch_size: usize,
    images: usize,
    /// Rounds of every preset in turn (one epoch each).
    rounds: usize,
    /// Median images/s over the rounds.
    images_per_second: f64,
    each_round: Vec<f64>,
    /// Median images/s relative to `original`'s median, measured in the same rounds.
    vs_original: f64,
}

/// Rounds of the back-to-back training comparison (outside --quick).
const TRAIN_ROUNDS: usize = 4;

/// The presets whose training speed is compared with `original`'s, back to back.
const TRAIN_PRESETS: [&str; 5] = ["original", "uniform3", "uniform32", "noise", "fc-noise"];

#[derive(Serialize)]
struct MemoryRow {
    arch: String,
    preset: String,
    protocol: String,
    batch: usize,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Report {
    machine: Machine,
    quick: bool,
    secure: Vec<SecureRow>,
    throughput: Vec<ThroughputRow>,
    plaintext: Vec<PlainRow>,
    training: Vec<TrainRow>,
    memory: Vec<MemoryRow>,
    soak: Option<SoakReport>,
}

#[derive(Serialize)]
struct SoakReport {
    sequential_inferences: usize,
    concurrent_sessions: usize,
    concurrent_inferences: usize,
    failures: usize,
    /// Resident memory after a warm-up inference, after the sequential inferences, and after
    /// each of two equal rounds of concurrent sessions.
    rss_after_warmup_bytes: u64,
    rss_after_sequential_bytes: u64,
    rss_after_concurrent_round1_bytes: u64,
    rss_after_concurrent_round2_bytes: u64,
    peak_rss_bytes: u64,
    seconds: f64,
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    os: String,
    relushare_version: &'static str,
}

fn machine() -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        os: std::env::consts::OS.into(),
        relushare_version: env!("CARGO_PKG_VERSION"),
    }
}

fn model_for(arch: Arch, preset: &str) -> Result<Model> {
    let mut spec = crate::bench_resnet::build_preset(arch, preset)?;
    spec.normalization = crate::secure::random_weights_normalization(&spec, DatasetName::Synthetic);
    Ok(Model::random(spec, None, 1)?)
}

fn images(arch: Arch, n: usize, split: Split) -> Result<ImageSet> {
    let d = arch.input();
    Ok(load(
        DatasetName::Synthetic,
        split,
        None,
        Some(n),
        (d.c, d.h, d.w),
    )?
    .set)
}

fn run_resnet(a: &Args) -> Result<()> {
    let protocols = a
        .protocols
        .clone()
        .unwrap_or_else(|| vec![Protocol::Fast, Protocol::Securenn]);
    let probe = |preset: &str, p: Protocol| probe_child(Arch::Resnet18, preset, p, 1);
    let rows = crate::bench_resnet::run_rows(
        &protocols,
        &|arch| images(arch, 1, Split::Test),
        &model_for,
        (!a.no_memory).then_some(&probe as &dyn Fn(&str, Protocol) -> Result<u64>),
    )?;
    let m = machine();
    let md = crate::bench_resnet::markdown(&rows, &format!("{} CPUs ({})", m.cpus, m.cpu_model));
    println!("{md}");
    if let Some(p) = &a.json {
        crate::reproduce::create_parent(p)?;
        std::fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.markdown {
        crate::reproduce::create_parent(p)?;
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn memory_probe(spec: &str) -> Result<()> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [arch, preset, protocol, batch] = parts[..] else {
        bail!("--memory-probe expects ARCH:PRESET:PROTOCOL:BATCH");
    };
    let arch: Arch = arch.parse()?;
    let protocol: Protocol = protocol.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let batch: usize = batch.parse().context("batch")?;
    let model = model_for(arch, preset)?;
    let set = images(arch, batch, Split::Test)?;
    let s = run_secure(&model, &set, batch, protocol, batch, 13)?;
    let peak = peak_rss_bytes().context("peak memory is only measured on Linux")?;
    println!(
        "{}",
        serde_json::json!({ "peak_rss_bytes": peak, "images": s.images })
    );
    Ok(())
}

fn probe_child(arch: Arch, preset: &str, protocol: Protocol, batch: usize) -> Result<u64> {
    let exe = std::env::current_exe().context("locating the relushare binary")?;
    let out = Command::new(exe)
        .args([
            "bench",
            "--memory-probe",
            &format!("{arch}:{preset}:{}:{batch}", protocol.name()),
        ])
        .output()
        .context("running the memory probe")?;
    if !out.status.success() {
        bail!(
            "memory probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    j["peak_rss_bytes"]
        .as_u64()
        .context("memory probe printed no peak_rss_bytes")
}

fn current_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Back-to-back and concurrent secure inferences of one model; counts failures and tracks
/// resident memory so that a leak shows as growth between warm-up and the end.
fn soak(n: usize) -> Result<SoakReport> {
    let model = model_for(Arch::Svhn, "original")?;
    let set = images(Arch::Svhn, 8, Split::Test)?;
    let t0 = Instant::now();
    run_secure(&model, &set, 1, Protocol::Fast, 1, 13)?;
    let warm = current_rss_bytes();
    let mut failures = 0;
    for _ in 0..n {
        match run_secure(&model, &set, 1, Protocol::Fast, 1, 13) {
            Ok(s) if s.agree_with_plaintext == 1.0 => {}
            _ => failures += 1,
        }
    }
    let after_sequential = current_rss_bytes();
    let sessions = 4;
    let per = n.div_ceil(sessions);
    // Two identical rounds of concurrent sessions: the first grows the allocator's per-thread
    // arenas, the second must not grow memory further.
    let mut after_round = [0u64; 2];
    for slot in after_round.iter_mut() {
        failures += std::thread::scope(|scope| {
            let handles: Vec<_> = (0..sessions)
                .map(|_| {
                    scope.spawn(|| {
                        (0..per)
                            .filter(|_| {
                                !matches!(
                                    run_secure(&model, &set, 1, Protocol::Fast, 1, 13),
                                    Ok(s) if s.agree_with_plaintext == 1.0
                                )
                            })
                            .count()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(per))
                .sum::<usize>()
        });
        *slot = current_rss_bytes();
    }
    Ok(SoakReport {
        sequential_inferences: n,
        concurrent_sessions: sessions,
        concurrent_inferences: 2 * per * sessions,
        failures,
        rss_after_warmup_bytes: warm,
        rss_after_sequential_bytes: after_sequential,
        rss_after_concurrent_round1_bytes: after_round[0],
        rss_after_concurrent_round2_bytes: after_round[1],
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

pub fn run(a: Args) -> Result<()> {
    if let Some(p) = &a.memory_probe {
        return memory_probe(p);
    }
    if a.serve {
        bail!("`bench --serve` runs the servers as processes of the relushare binary: run `relushare bench --serve`");
    }
    if a.resnet {
        return run_resnet(&a);
    }
    let archs = a.archs.clone().unwrap_or_else(|| Arch::ALL.to_vec());
    if let Some(names) = &a.network {
        return run_network(&a, &archs, names);
    }
    let default_presets: &[&str] = if a.quick {
        &["original", "uniform32"]
    } else {
        &["original", "uniform3", "uniform32", "fc-noise"]
    };
    let preset_list: Vec<String> = a
        .presets
        .clone()
        .unwrap_or_else(|| default_presets.iter().map(|s| s.to_string()).collect());
    let protocols = a
        .protocols
        .clone()
        .unwrap_or_else(|| vec![Protocol::Securenn, Protocol::Fast]);
    let repeats = a.repeats.unwrap_or(if a.quick { 1 } else { 5 }).max(1);
    let batch_sizes =
        a.batches
            .clone()
            .unwrap_or_else(|| if a.quick { vec![1, 4] } else { vec![1, 16, 64] });

    let mut report = Report {
        machine: machine(),
        quick: a.quick,
        secure: vec![],
        throughput: vec![],
        plaintext: vec![],
        training: vec![],
        memory: vec![],
        soak: None,
    };
    let bar = indicatif::ProgressBar::new(
        (archs.len() * preset_list.len() * (protocols.len() + 1)) as u64,
    );
    for &arch in &archs {
        for preset in &preset_list {
            let Ok(spec) = presets::build(arch, preset) else {
                continue; // e.g. layer2-only on a one-shared-layer architecture
            };
            let relus = count(&spec)?.total_relus;
            let model = model_for(arch, preset)?;
            let set = images(
                arch,
                repeats.max(*batch_sizes.iter().max().unwrap_or(&1)),
                Split::Test,
            )?;
            for &protocol in &protocols {
                bar.set_message(format!("{arch} {preset} {protocol}"));
                let s = run_secure(&model, &set, repeats, protocol, 1, 13)
                    .with_context(|| format!("{arch} {preset} {protocol}"))?;
                let secs: Vec<f64> = s.per_image.iter().map(|r| r.seconds).collect();
                report.secure.push(SecureRow {
                    arch: arch.to_string(),
                    preset: preset.clone(),
                    protocol: s.protocol.clone(),
                    relus,
                    repeats,
                    seconds_median: s.seconds,
                    seconds_min: secs.iter().cloned().fold(f64::INFINITY, f64::min),
                    seconds_max: secs.iter().cloned().fold(0.0, f64::max),
                    online_seconds: s.online_seconds,
                    offline_seconds: s.offline_seconds,
                    online_bytes: s.online_bytes,
                    offline_bytes: s.offline_bytes,
                    total_bytes: s.total_bytes,
                    rounds: s.rounds,
                    offline_rounds: s.offline_rounds,
                    setup_seconds: s.setup_seconds,
                    setup_bytes: s.setup_bytes,
                    client_bytes: s.client_bytes,
                    agree_with_plaintext: s.agree_with_plaintext,
                    agree_with_unfused: s.agree_with_unfused,
                });
                bar.inc(1);
            }
            // Batched throughput of the fast suite (original and uniform32 only).
            if preset == "original" || preset == "uniform32" {
                for &b in &batch_sizes {
                    let t0 = Instant::now();
                    let s = run_secure(&model, &set, b, Protocol::Fast, b, 13)?;
                    let wall = t0.elapsed().as_secs_f64();
                    // The batch's offline + online phases, as in the per-image rows (not the
                    // one-time model setup, nor the simulated owner's and client's sharing).
                    let per_batch = (s.seconds * b as f64).max(1e-9);
                    report.throughput.push(ThroughputRow {
                        arch: arch.to_string(),
                        preset: preset.clone(),
                        protocol: s.protocol.clone(),
                        batch: b,
                        images_per_second: b as f64 / per_batch.max(1e-9),
                        seconds_per_batch: per_batch.min(wall),
                        bytes_per_image: s.total_bytes,
                    });
                }
            }
            // Plaintext inference of the same model.
            let d = model.spec.input;
            let mut x = vec![0f32; d.len()];
            model.spec.normalization.apply(set.image(0), &mut x);
            let reps = if a.quick { 3 } else { 20 };
            let mut t = vec![];
            for _ in 0..reps {
                let t0 = Instant::now();
                std::hint::black_box(reference::forward(&model, &x, &mut |_| false)?);
                t.push(t0.elapsed().as_secs_f64());
            }
            let fm = FixedModel::from_model(&model, 13)?;
            let enc = fm.encode_input(&x)?;
            let mut tf = vec![];
            for _ in 0..reps {
                let t0 = Instant::now();
                std::hint::black_box(plain::forward_fixed_trace(&fm, &enc, &mut |_| false)?);
                tf.push(t0.elapsed().as_secs_f64());
            }
            let burn_set = images(arch, if a.quick { 64 } else { 512 }, Split::Test)?;
            let t0 = Instant::now();
            evaluate(&model, &burn_set, &EvalConfig::default())?;
            let burn = burn_set.len() as f64 / t0.elapsed().as_secs_f64();
            report.plaintext.push(PlainRow {
                arch: arch.to_string(),
                preset: preset.clone(),
                f32_reference_seconds: median(t),
                fixed_point_seconds: median(tf),
                burn_images_per_second: burn,
            });
            bar.inc(1);
        }
        if !a.no_train {
            // every sharing preset back to back with `original`, on the same images
            let n = if a.quick { 128 } else { 1024 };
            let train_set = images(arch, n, Split::Train)?;
            let test_set = images(arch, 32, Split::Test)?;
            let cfg = TrainConfig {
                epochs: 1,
                eval_each_epoch: false,
                ..TrainConfig::default()
            };
            let train_presets: &[&str] = if a.quick {
                &TRAIN_PRESETS[..3]
            } else {
                &TRAIN_PRESETS
            };
            // rounds of every preset in turn, the order reversed every other round, so that a
            // drift of the machine's speed hits all presets alike; each preset's median over
            // the rounds, ratios of medians; one untimed epoch of `original` first warms the
            // allocator and the thread pool
            let rounds = if a.quick { 1 } else { TRAIN_ROUNDS };
            let mut speeds: Vec<Vec<f64>> = vec![Vec::new(); train_presets.len()];
            // one epoch of `preset` on the same images; images/s
            let epoch = |preset: &str| -> Result<f64> {
                let mut spec = presets::build(arch, preset)?;
                spec.normalization = model_for(arch, "original")?.spec.normalization;
                let o = train(
                    &cfg,
                    &spec,
                    None,
                    &train_set,
                    &test_set,
                    &mut relushare_nn::train::NoProgress,
                )?;
                Ok(o.images_per_second)
            };
            if !a.quick {
                bar.set_message(format!("{arch} training warm-up"));
                epoch("original")?;
            }
            for round in 0..rounds {
                let mut order: Vec<usize> = (0..train_presets.len()).collect();
                if round % 2 == 1 {
                    order.reverse();
                }
                for k in order {
                    let preset = train_presets[k];
                    bar.set_message(format!(
                        "{arch} training {preset} (round {}/{rounds})",
                        round + 1
                    ));
                    speeds[k].push(epoch(preset)?);
                }
            }
            let original = median(speeds[0].clone());
            for (preset, s) in train_presets.iter().zip(speeds) {
                let ips = median(s.clone());
                report.training.push(TrainRow {
                    arch: arch.to_string(),
                    preset: preset.to_string(),
                    backend: format!("{:?}", cfg.backend),
                    batch_size: cfg.batch_size,
                    images: n,
                    rounds,
                    images_per_second: ips,
                    each_round: s,
                    vs_original: ips / original,
                });
            }
        }
    }
    bar.finish_and_clear();
    if let Some(n) = a.soak {
        report.soak = Some(soak(n)?);
    }
    if !a.no_memory && archs.contains(&Arch::Cifar10) {
        let batches: &[usize] = if a.quick { &[1] } else { &[1, 64] };
        for &b in batches {
            let peak = probe_child(Arch::Cifar10, "original", Protocol::Fast, b)?;
            report.memory.push(MemoryRow {
                arch: "cifar10".into(),
                preset: "original".into(),
                protocol: "fast".into(),
                batch: b,
                peak_rss_bytes: peak,
            });
        }
    }
    print_report(&report);
    if let Some(p) = &a.markdown {
        relushare_model::io::write_atomic(p, markdown(&report)?.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.json {
        let bytes = serde_json::to_vec_pretty(&report)?;
        relushare_model::io::write_atomic(p, &bytes)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// `--network`: only the emulated-network rows.
fn run_network(a: &Args, archs: &[Arch], names: &[String]) -> Result<()> {
    let mut nets = Vec::new();
    for n in names {
        match NetProfile::by_name(n)? {
            Some(p) => nets.push(p),
            None => bail!("--network takes lan and/or wan (got {n:?})"),
        }
    }
    if a.network_images == 0 {
        bail!("--network-images must be at least 1");
    }
    let presets: Vec<String> = a
        .presets
        .clone()
        .unwrap_or_else(|| vec!["original".into(), "uniform32".into()]);
    let protocols = a.protocols.clone().unwrap_or_else(|| {
        vec![
            Protocol::Fast,
            Protocol::Fss,
            Protocol::Mimo,
            Protocol::Securenn,
        ]
    });
    let repeats = a.repeats.unwrap_or(if a.quick { 1 } else { 3 }).max(1);
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    if let Some(n) = a.stream {
        if n == 0 || a.stream_batch.iter().any(|&b| b == 0) {
            bail!("--stream and --stream-batch must be at least 1");
        }
        let rows = crate::bench_net::run_streams(
            archs,
            &presets,
            &protocols,
            &nets,
            n,
            &a.stream_batch,
            a.stream_depth,
            &model_for,
            &|arch, n| images(arch, n, Split::Test),
            &|msg| bar.set_message(msg.to_string()),
        );
        bar.finish_and_clear();
        let (rows, skipped) = rows?;
        crate::bench_net::print_streams(&rows);
        for s in &skipped {
            println!("skipped {s}");
        }
        if let Some(p) = &a.markdown {
            let args: Vec<String> = std::env::args().skip(1).collect();
            let text = format!(
                "Measured by `relushare {}`:\n{}{}",
                args.join(" "),
                crate::bench_net::markdown_streams(&rows)?,
                skipped
                    .iter()
                    .map(|s| format!("\nSkipped: {s}\n"))
                    .collect::<String>()
            );
            relushare_model::io::write_atomic(p, text.as_bytes())?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &a.json {
            let bytes = serde_json::to_vec_pretty(&serde_json::json!({
                "machine": machine(),
                "streams": rows,
                "skipped": skipped,
            }))?;
            relushare_model::io::write_atomic(p, &bytes)?;
            eprintln!("wrote {}", p.display());
        }
        return Ok(());
    }
    let r = crate::bench_net::run(
        archs,
        &presets,
        &protocols,
        &nets,
        a.network_images,
        repeats,
        &model_for,
        &|arch, n| images(arch, n, Split::Test),
        &|msg| bar.set_message(msg.to_string()),
    );
    bar.finish_and_clear();
    let r = r?;
    crate::bench_net::print(&r);
    if let Some(p) = &a.markdown {
        let m = machine();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let text = format!(
            "Measured by `relushare {}` on {} CPUs ({}): the three parties as separate processes over TLS 1.3 on loopback, each link through a shaping relay.\n{}",
            args.join(" "),
            m.cpus,
            m.cpu_model,
            crate::bench_net::markdown(&r, &nets)?
        );
        relushare_model::io::write_atomic(p, text.as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.json {
        let bytes = serde_json::to_vec_pretty(&serde_json::json!({
            "machine": machine(),
            "network": r,
        }))?;
        relushare_model::io::write_atomic(p, &bytes)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn print_report(r: &Report) {
    if let Some(s) = &r.soak {
        println!(
            "soak: {} sequential + {} concurrent ({} sessions, two rounds) secure inferences, {} failures; RSS {:.1} MB after warm-up, {:.1} MB after the sequential runs, {:.1} / {:.1} MB after concurrent rounds 1 / 2, peak {:.1} MB, {:.1} s",
            s.sequential_inferences,
            s.concurrent_inferences,
            s.concurrent_sessions,
            s.failures,
            s.rss_after_warmup_bytes as f64 / 1e6,
            s.rss_after_sequential_bytes as f64 / 1e6,
            s.rss_after_concurrent_round1_bytes as f64 / 1e6,
            s.rss_after_concurrent_round2_bytes as f64 / 1e6,
            s.peak_rss_bytes as f64 / 1e6,
            s.seconds
        );
    }
    println!(
        "machine: {} CPUs, {} ({})",
        r.machine.cpus, r.machine.cpu_model, r.machine.os
    );
    println!(
        "{:<8} {:<10} {:<9} {:>7} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7} {:>6} {:>8}",
        "arch",
        "preset",
        "protocol",
        "relus",
        "s (med)",
        "s (min)",
        "s (max)",
        "online MB",
        "offline MB",
        "rounds",
        "agree",
        "unfused"
    );
    for s in &r.secure {
        println!(
            "{:<8} {:<10} {:<9} {:>7} {:>9.4} {:>9.4} {:>9.4} {:>11.3} {:>11.3} {:>7} {:>5.0}% {:>7.0}%",
            s.arch,
            s.preset,
            s.protocol,
            s.relus,
            s.seconds_median,
            s.seconds_min,
            s.seconds_max,
            s.online_bytes / 1e6,
            s.offline_bytes / 1e6,
            s.rounds,
            s.agree_with_plaintext * 100.0,
            s.agree_with_unfused * 100.0
        );
    }
    if !r.throughput.is_empty() {
        println!("\nbatched throughput (fast):");
        for t in &r.throughput {
            println!(
                "  {:<8} {:<10} batch {:>3}: {:>8.2} images/s ({:.3} s per batch)",
                t.arch, t.preset, t.batch, t.images_per_second, t.seconds_per_batch
            );
        }
    }
    println!("\nplaintext inference (one image):");
    for p in &r.plaintext {
        println!(
            "  {:<8} {:<10} f32 reference {:.4} s, fixed point {:.4} s, Burn {:.0} images/s",
            p.arch,
            p.preset,
            p.f32_reference_seconds,
            p.fixed_point_seconds,
            p.burn_images_per_second
        );
    }
    for t in &r.training {
        println!(
            "training {:<8} {:<10} backend {}, batch {}: {:.0} images/s ({:.2}x original; medians of {} rounds)",
            t.arch, t.preset, t.backend, t.batch_size, t.images_per_second, t.vs_original, t.rounds
        );
    }
    for m in &r.memory {
        println!(
            "peak memory {} {} {} batch {}: {:.1} MB",
            m.arch,
            m.preset,
            m.protocol,
            m.batch,
            m.peak_rss_bytes as f64 / 1e6
        );
    }
}

/// Markdown tables of a report; the paper's Table 8 numbers (PySyft SecureNN) sit beside ours,
/// labelled "paper".
fn markdown(r: &Report) -> Result<String> {
    use std::fmt::Write;
    let paper = relushare_analysis::paper::PaperNumbers::load()?;
    let mut m = String::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    writeln!(
        m,
        "Measured by `relushare {}` on {} CPUs ({}), three parties in one process.\n",
        args.join(" "),
        r.machine.cpus,
        r.machine.cpu_model
    )?;
    writeln!(
        m,
        "### Secure inference, one image (median of {} runs; min-max)\n",
        r.secure.first().map(|s| s.repeats).unwrap_or(0)
    )?;
    writeln!(m, "| arch | preset | ReLUs | suite | seconds | online MB | offline MB | total MB | online rounds | agree | agree (unfused) | paper s | paper rounds | paper MB |")?;
    writeln!(
        m,
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for s in &r.secure {
        let p = paper.find("8", &s.arch, &s.preset);
        let opt =
            |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
        let show_paper = s.protocol == "securenn";
        writeln!(
            m,
            "| {} | {} | {} | {} | {:.3} ({:.3}-{:.3}) | {:.2} | {:.2} | {:.2} | {} | {:.0}% | {:.0}% | {} | {} | {} |",
            s.arch,
            s.preset,
            s.relus,
            s.protocol,
            s.seconds_median,
            s.seconds_min,
            s.seconds_max,
            s.online_bytes / 1e6,
            s.offline_bytes / 1e6,
            s.total_bytes / 1e6,
            s.rounds,
            s.agree_with_plaintext * 100.0,
            s.agree_with_unfused * 100.0,
            if show_paper { opt(p.and_then(|p| p.runtime_s), 2) } else { String::new() },
            if show_paper { opt(p.and_then(|p| p.rounds.map(|x| x as f64)), 0) } else { String::new() },
            if show_paper { opt(p.and_then(|p| p.comm_mb), 2) } else { String::new() },
        )?;
    }
    if !r.throughput.is_empty() {
        writeln!(
            m,
            "\n### Batched throughput (`fast`; offline + online phases of one batch)\n"
        )?;
        writeln!(
            m,
            "| arch | preset | batch | images/s | seconds per batch | MB per image |"
        )?;
        writeln!(m, "|---|---|---:|---:|---:|---:|")?;
        for t in &r.throughput {
            writeln!(
                m,
                "| {} | {} | {} | {:.2} | {:.3} | {:.2} |",
                t.arch,
                t.preset,
                t.batch,
                t.images_per_second,
                t.seconds_per_batch,
                t.bytes_per_image / 1e6
            )?;
        }
    }
    writeln!(
        m,
        "\n### Plaintext inference of the same models (one image)\n"
    )?;
    writeln!(
        m,
        "| arch | preset | f32 reference (s) | fixed point (s) | Burn flex (images/s) |"
    )?;
    writeln!(m, "|---|---|---:|---:|---:|")?;
    for p in &r.plaintext {
        writeln!(
            m,
            "| {} | {} | {:.4} | {:.4} | {:.0} |",
            p.arch,
            p.preset,
            p.f32_reference_seconds,
            p.fixed_point_seconds,
            p.burn_images_per_second
        )?;
    }
    if !r.training.is_empty() {
        writeln!(m, "\n### Training throughput (forward + backward + step)\n")?;
        writeln!(
            m,
            "Each sharing preset trains right after `original` on the same images (one epoch).\n"
        )?;
        writeln!(
            m,
            "| arch | preset | backend | batch | images/s | vs `original` |"
        )?;
        writeln!(m, "|---|---|---|---:|---:|---:|")?;
        for t in &r.training {
            writeln!(
                m,
                "| {} | `{}` | {} | {} | {:.0} | {:.2}x |",
                t.arch, t.preset, t.backend, t.batch_size, t.images_per_second, t.vs_original
            )?;
        }
    }
    if !r.memory.is_empty() {
        writeln!(
            m,
            "\n### Peak resident memory of one secure inference (child process)\n"
        )?;
        writeln!(m, "| arch | preset | suite | batch | peak MB |")?;
        writeln!(m, "|---|---|---|---:|---:|")?;
        for x in &r.memory {
            writeln!(
                m,
                "| {} | {} | {} | {} | {:.1} |",
                x.arch,
                x.preset,
                x.protocol,
                x.batch,
                x.peak_rss_bytes as f64 / 1e6
            )?;
        }
    }
    if let Some(s) = &r.soak {
        writeln!(m, "\n### Soak\n")?;
        writeln!(
            m,
            "{} sequential and {} concurrent ({} sessions, two equal rounds) secure inferences of svhn/original with `fast`: {} failures. Resident memory: {:.1} MB after a warm-up inference, {:.1} MB after the sequential runs, {:.1} MB and {:.1} MB after the two concurrent rounds (peak {:.1} MB); {:.1} s in all.",
            s.sequential_inferences, s.concurrent_inferences, s.concurrent_sessions, s.failures,
            s.rss_after_warmup_bytes as f64 / 1e6, s.rss_after_sequential_bytes as f64 / 1e6,
            s.rss_after_concurrent_round1_bytes as f64 / 1e6, s.rss_after_concurrent_round2_bytes as f64 / 1e6,
            s.peak_rss_bytes as f64 / 1e6, s.seconds
        )?;
    }
    Ok(m)
}
