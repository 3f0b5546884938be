//! `relushare bench --network lan,wan`: secure inference over emulated networks, measured
//! beside a cost model of the same run.
//!
//! For every architecture x preset x protocol: the in-process run (three parties on threads, no
//! network) gives the compute time; then for every network the three parties run as separate
//! `relushare party` processes over TLS through shaping relays
//! (`relushare_mpc::net::launch::run_networked`). The model of our run is
//! `compute + rounds x RTT + bytes / bandwidth`, per phase; the paper's Table 8 and two other
//! frameworks' published costs are modelled with the same formula and labelled as such.
//!
//! `--stream N` measures streams instead ([`run_streams`]): `N` images per row, in batches of
//! each `--stream-batch`, the dealer's material pipelined (`relushare_mpc::pipeline`) over the
//! same shaped links, beside the `--protocol auto` cost model's prediction of the same stream
//! (`relushare_mpc::auto`).

use anyhow::{Context, Result};
use relushare_analysis::paper::{PaperNumbers, PEER_POINTS};
use relushare_model::Arch;
use relushare_mpc::net::emu::NetProfile;
use relushare_mpc::protocol::Protocol;
use serde::Serialize;

use crate::secure::{run_secure, run_secure_networked, NetworkInfo};

/// One architecture x preset x protocol over one network.
#[derive(Serialize, Clone, Debug)]
pub struct NetRow {
    pub arch: String,
    pub preset: String,
    pub protocol: String,
    pub network: NetworkInfo,
    /// Images measured over the network (one per launch).
    pub images: usize,
    /// In-process (no network) seconds per image, median over `compute_repeats` images.
    pub compute_repeats: usize,
    pub compute_online_seconds: f64,
    pub compute_offline_seconds: f64,
    /// Measured over the network, per image (median over the launches).
    pub online_seconds: f64,
    pub offline_seconds: f64,
    pub seconds: f64,
    /// Our model: compute + rounds x RTT + bytes / bandwidth (per phase, and the sum).
    pub modelled_online_seconds: f64,
    pub modelled_offline_seconds: f64,
    pub modelled_seconds: f64,
    /// The same with a one-way delay (RTT / 2) per round instead of a full round trip: what a
    /// round costs when both ends send at once or the step only sends (dealer material).
    pub modelled_one_way_seconds: f64,
    /// Bytes per image of all parties and rounds, as measured over the network.
    pub online_bytes: f64,
    pub offline_bytes: f64,
    pub rounds: u64,
    pub offline_rounds: u64,
    /// Whether the networked costs equal the in-process ones (they must).
    pub costs_match_in_process: bool,
    pub agree_with_plaintext: f64,
    /// One-time model setup (not in the per-image numbers).
    pub setup_bytes: u64,
    /// Wall-clock seconds of the launches (process start, TLS, model setup included).
    pub wall_seconds: f64,
}

/// A published cost modelled over one network (their bytes and rounds, not our measurement).
#[derive(Serialize, Clone, Debug)]
pub struct ModelledPeer {
    pub name: String,
    pub network: String,
    pub mb: f64,
    pub rounds: u64,
    /// rounds x RTT + bytes / bandwidth (plus their local run time where known).
    pub modelled_seconds: f64,
}

/// Everything the network section measured.
#[derive(Serialize, Clone, Debug, Default)]
pub struct NetReport {
    pub rows: Vec<NetRow>,
    pub peers: Vec<ModelledPeer>,
}

/// Runs the network section.
#[allow(clippy::too_many_arguments)]
pub fn run(
    archs: &[Arch],
    presets: &[String],
    protocols: &[Protocol],
    networks: &[NetProfile],
    images: usize,
    compute_repeats: usize,
    model_for: &dyn Fn(Arch, &str) -> Result<relushare_model::Model>,
    images_for: &dyn Fn(Arch, usize) -> Result<relushare_data::ImageSet>,
    progress: &dyn Fn(&str),
) -> Result<NetReport> {
    let mut rep = NetReport::default();
    for &arch in archs {
        for preset in presets {
            if relushare_model::presets::build(arch, preset).is_err() {
                continue;
            }
            let model = model_for(arch, preset)?;
            let set = images_for(arch, images.max(compute_repeats))?;
            for &protocol in protocols {
                progress(&format!("{arch} {preset} {protocol} in-process"));
                let local = run_secure(&model, &set, compute_repeats, protocol, 1, 13)
                    .with_context(|| format!("{arch} {preset} {protocol} in-process"))?;
                for net in networks {
                    let name = net.name().unwrap_or("custom");
                    progress(&format!("{arch} {preset} {protocol} {name}"));
                    let s = run_secure_networked(
                        &model,
                        &set,
                        images,
                        protocol,
                        1,
                        13,
                        *net,
                        std::time::Duration::from_secs(120),
                    )
                    .with_context(|| format!("{arch} {preset} {protocol} over {name}"))?;
                    let m_on =
                        local.online_seconds + net.modelled_seconds(s.rounds, s.online_bytes);
                    let m_off = local.offline_seconds
                        + net.modelled_seconds(s.offline_rounds, s.offline_bytes);
                    rep.rows.push(NetRow {
                        arch: arch.to_string(),
                        preset: preset.clone(),
                        protocol: protocol.name().into(),
                        network: s.network.clone(),
                        images: s.images,
                        compute_repeats: local.images,
                        compute_online_seconds: local.online_seconds,
                        compute_offline_seconds: local.offline_seconds,
                        online_seconds: s.online_seconds,
                        offline_seconds: s.offline_seconds,
                        seconds: s.seconds,
                        modelled_online_seconds: m_on,
                        modelled_offline_seconds: m_off,
                        modelled_seconds: m_on + m_off,
                        modelled_one_way_seconds: local.online_seconds
                            + local.offline_seconds
                            + net.modelled_seconds(s.rounds + s.offline_rounds, 0.0) / 2.0
                            + net.modelled_seconds(0, s.online_bytes + s.offline_bytes),
                        online_bytes: s.online_bytes,
                        offline_bytes: s.offline_bytes,
                        rounds: s.rounds,
                        offline_rounds: s.offline_rounds,
                        costs_match_in_process: s.online_bytes == local.online_bytes
                            && s.offline_bytes == local.offline_bytes
                            && s.rounds == local.rounds
                            && s.offline_rounds == local.offline_rounds,
                        agree_with_plaintext: s.agree_with_plaintext,
                        setup_bytes: s.setup_bytes,
                        wall_seconds: s.wall_seconds,
                    });
                }
            }
        }
    }
    for net in networks {
        for p in PEER_POINTS {
            rep.peers.push(ModelledPeer {
                name: p.name.into(),
                network: net.name().unwrap_or("custom").into(),
                mb: p.mb,
                rounds: p.rounds,
                modelled_seconds: net.modelled_seconds(p.rounds, p.mb * 1e6),
            });
        }
    }
    Ok(rep)
}

/// Prints the rows as text.
pub fn print(r: &NetReport) {
    println!(
        "{:<8} {:<10} {:<9} {:<5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>6}",
        "arch",
        "preset",
        "protocol",
        "net",
        "online s",
        "model",
        "offline s",
        "model",
        "total s",
        "total MB",
        "rounds",
        "agree"
    );
    for x in &r.rows {
        println!(
            "{:<8} {:<10} {:<9} {:<5} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10.2} {:>7} {:>5.0}%{}",
            x.arch,
            x.preset,
            x.protocol,
            x.network.name,
            x.online_seconds,
            x.modelled_online_seconds,
            x.offline_seconds,
            x.modelled_offline_seconds,
            x.seconds,
            (x.online_bytes + x.offline_bytes) / 1e6,
            x.rounds,
            x.agree_with_plaintext * 100.0,
            if x.costs_match_in_process { "" } else { "  (costs differ from in-process!)" }
        );
    }
    for p in &r.peers {
        println!(
            "modelled {} over {}: {:.1} MB, {} rounds -> {:.3} s",
            p.name, p.network, p.mb, p.rounds, p.modelled_seconds
        );
    }
}

/// Markdown: one table per network, the paper's Table 8 (modelled over the same network)
/// beside the securenn rows, then the modelled reference points.
pub fn markdown(r: &NetReport, networks: &[NetProfile]) -> Result<String> {
    use std::fmt::Write;
    let paper = PaperNumbers::load()?;
    let mut m = String::new();
    for net in networks {
        let name = net.name().unwrap_or("custom");
        let rows: Vec<&NetRow> = r
            .rows
            .iter()
            .filter(|x| x.network.rtt_ms == net.rtt_ms && x.network.mbit == net.mbit)
            .collect();
        if rows.is_empty() {
            continue;
        }
        writeln!(
            m,
            "\n### {} ({net}), one image per row\n",
            name.to_uppercase()
        )?;
        writeln!(m, "| arch | preset | suite | online s | model | offline s | model | total s | model | model, RTT/2 per round | compute s | online MB | offline MB | online rounds | offline rounds | agree | paper: s, rounds, MB | paper modelled s |")?;
        writeln!(
            m,
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
        )?;
        for x in rows {
            let p = (x.protocol == "securenn")
                .then(|| paper.find("8", &x.arch, &x.preset))
                .flatten();
            let (ps, pm) = match p {
                Some(p) => match (p.runtime_s, p.rounds, p.comm_mb) {
                    (Some(s), Some(rd), Some(mb)) => (
                        format!("{s}, {rd}, {mb}"),
                        format!("{:.2}", s + net.modelled_seconds(rd, mb * 1e6)),
                    ),
                    _ => (String::new(), String::new()),
                },
                None => (String::new(), String::new()),
            };
            writeln!(
                m,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {} | {} | {:.0}% | {} | {} |",
                x.arch,
                x.preset,
                x.protocol,
                x.online_seconds,
                x.modelled_online_seconds,
                x.offline_seconds,
                x.modelled_offline_seconds,
                x.seconds,
                x.modelled_seconds,
                x.modelled_one_way_seconds,
                x.compute_online_seconds + x.compute_offline_seconds,
                x.online_bytes / 1e6,
                x.offline_bytes / 1e6,
                x.rounds,
                x.offline_rounds,
                x.agree_with_plaintext * 100.0,
                ps,
                pm
            )?;
        }
        writeln!(
            m,
            "\nReference points over {name} (modelled from their published bytes and rounds, CIFAR-10 `original`; not measured by us):\n"
        )?;
        writeln!(
            m,
            "| framework | MB | rounds | modelled s (rounds x RTT + bytes / bandwidth) |"
        )?;
        writeln!(m, "|---|---:|---:|---:|")?;
        for p in r.peers.iter().filter(|p| p.network == name) {
            writeln!(
                m,
                "| {} | {} | {} | {:.3} |",
                p.name, p.mb, p.rounds, p.modelled_seconds
            )?;
        }
    }
    Ok(m)
}

/// One stream: architecture x preset x protocol x network x batch.
#[derive(Serialize, Clone, Debug)]
pub struct StreamRow {
    pub arch: String,
    pub preset: String,
    pub protocol: String,
    pub network: NetworkInfo,
    pub images: usize,
    pub batch: usize,
    pub depth: usize,
    pub pipelined: bool,
    /// Measured.
    pub images_per_second: f64,
    pub seconds: f64,
    pub first_result_seconds: f64,
    pub steady_images_per_second: f64,
    pub steady_latency_seconds: f64,
    /// Per image (all parties).
    pub online_bytes: f64,
    pub offline_bytes: f64,
    pub rounds: u64,
    /// The `--protocol auto` model of the same stream (from the in-process probe of one image).
    pub modelled_seconds: f64,
    pub modelled_images_per_second: f64,
    pub batches_cost_alike: bool,
    pub agree_with_plaintext: f64,
}

/// Runs the stream rows; a configuration a suite refuses (e.g. a model whose truncation bound
/// the fast suites do not accept) is skipped with its reason (second value) instead of ending
/// the run.
#[allow(clippy::too_many_arguments)]
pub fn run_streams(
    archs: &[Arch],
    presets: &[String],
    protocols: &[Protocol],
    networks: &[NetProfile],
    images: usize,
    batches: &[usize],
    depth: usize,
    model_for: &dyn Fn(Arch, &str) -> Result<relushare_model::Model>,
    images_for: &dyn Fn(Arch, usize) -> Result<relushare_data::ImageSet>,
    progress: &dyn Fn(&str),
) -> Result<(Vec<StreamRow>, Vec<String>)> {
    use relushare_mpc::auto::{predict, probe, Job, Link, Objective};
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for &arch in archs {
        for preset in presets {
            if relushare_model::presets::build(arch, preset).is_err() {
                continue;
            }
            let model = model_for(arch, preset)?;
            let set = images_for(arch, images)?;
            let fm = relushare_mpc::plain::FixedModel::from_model(&model, 13)?;
            let mut buf = vec![0f32; model.spec.input.len()];
            model.spec.normalization.apply(set.image(0), &mut buf);
            let x = fm.encode_input(&buf)?;
            for &protocol in protocols {
                progress(&format!("{arch} {preset} {protocol} probe"));
                let measured = match probe(&model, &fm, &x, protocol) {
                    Ok(m) => m,
                    Err(e) => {
                        skipped.push(format!("{arch} {preset} {protocol}: {e}"));
                        continue;
                    }
                };
                for net in networks {
                    for &batch in batches {
                        let name = net.name().unwrap_or("custom");
                        progress(&format!(
                            "{arch} {preset} {protocol} {name} stream of {images}, batch {batch}"
                        ));
                        let s = crate::stream::run(
                            &model,
                            &set,
                            images,
                            protocol,
                            batch,
                            depth,
                            13,
                            Some(*net),
                            std::time::Duration::from_secs(180),
                        )
                        .with_context(|| {
                            format!("{arch} {preset} {protocol} stream over {name}, batch {batch}")
                        })?;
                        let link = Link {
                            rtt_ms: net.rtt_ms,
                            mbit: net.mbit,
                        };
                        let pred = predict(
                            &measured,
                            &link,
                            Job::Stream {
                                images: s.images,
                                batch,
                            },
                            Objective::Total,
                        );
                        rows.push(StreamRow {
                            arch: arch.to_string(),
                            preset: preset.clone(),
                            protocol: protocol.name().into(),
                            network: s.network.clone(),
                            images: s.images,
                            batch,
                            depth,
                            pipelined: s.pipelined,
                            images_per_second: s.images_per_second,
                            seconds: s.seconds,
                            first_result_seconds: s.first_result_seconds,
                            steady_images_per_second: s.steady_images_per_second,
                            steady_latency_seconds: s.steady_latency_seconds,
                            online_bytes: s.online_bytes,
                            offline_bytes: s.offline_bytes,
                            rounds: s.rounds,
                            modelled_seconds: pred.job_seconds,
                            modelled_images_per_second: pred.images_per_second,
                            batches_cost_alike: s.batches_cost_alike,
                            agree_with_plaintext: s.agree_with_plaintext,
                        });
                    }
                }
            }
        }
    }
    Ok((rows, skipped))
}

/// Prints the stream rows as text.
pub fn print_streams(rows: &[StreamRow]) {
    println!(
        "{:<8} {:<10} {:<9} {:<5} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "arch",
        "preset",
        "protocol",
        "net",
        "batch",
        "img/s",
        "model",
        "first s",
        "steady/s",
        "latency",
        "MB/image",
        "agree"
    );
    for r in rows {
        println!(
            "{:<8} {:<10} {:<9} {:<5} {:>6} {:>8.2} {:>9.2} {:>9.3} {:>9.2} {:>9.3} {:>10.2} {:>5.0}%",
            r.arch,
            r.preset,
            r.protocol,
            r.network.name,
            r.batch,
            r.images_per_second,
            r.modelled_images_per_second,
            r.first_result_seconds,
            r.steady_images_per_second,
            r.steady_latency_seconds,
            (r.online_bytes + r.offline_bytes) / 1e6,
            r.agree_with_plaintext * 100.0
        );
    }
}

/// Markdown table of the stream rows.
pub fn markdown_streams(rows: &[StreamRow]) -> Result<String> {
    use std::fmt::Write;
    let mut m = String::new();
    writeln!(m, "\n| arch | preset | suite | network | images | batch | images/s | model images/s | first result s | steady images/s | steady latency s (online of a batch) | online MB/image | offline MB/image | rounds/batch | agree |")?;
    writeln!(
        m,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    for r in rows {
        writeln!(
            m,
            "| {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.3} | {:.2} | {:.3} | {:.2} | {:.2} | {} | {:.0}% |",
            r.arch,
            r.preset,
            r.protocol,
            r.network.name,
            r.images,
            r.batch,
            r.images_per_second,
            r.modelled_images_per_second,
            r.first_result_seconds,
            r.steady_images_per_second,
            r.steady_latency_seconds,
            r.online_bytes / 1e6,
            r.offline_bytes / 1e6,
            r.rounds,
            r.agree_with_plaintext * 100.0
        )?;
    }
    Ok(m)
}
