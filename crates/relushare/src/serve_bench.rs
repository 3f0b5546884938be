//! `relushare bench --serve`: the serving load test with real server processes on loopback.
//! This file only starts and stops the processes and prints; the clients, the checks and the
//! statistics are `relushare_mpc::net::serve::{run_load, plaintext_classes}`.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use relushare_model::Arch;
use relushare_mpc::net::{pki, serve};
use relushare_mpc::prg::Prg;
use relushare_mpc::protocol::Protocol;
use serde::Serialize;

use crate::model_args::ModelArgs;

/// Kills the child on drop (so a failing bench leaves no server behind).
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.to_string())
}

fn wait_listening(addr: &str, p: &mut Proc, what: &str) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if let Some(st) = p.0.try_wait()? {
            bail!("the {what} exited at start ({st}); see its log above");
        }
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the {what} did not listen on {addr} within 60 s")
}

/// Resident memory of a process in bytes (Linux `VmRSS`).
fn rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[derive(Serialize)]
struct Round {
    sessions: usize,
    failures: Vec<String>,
    mismatches: usize,
    p50_seconds: f64,
    p99_seconds: f64,
    images_per_second: f64,
    wall_seconds: f64,
    owner_rss_bytes: Option<u64>,
    helper_rss_bytes: Option<u64>,
}

#[derive(Serialize)]
struct ArchResult {
    arch: String,
    preset: String,
    protocol: String,
    clients: usize,
    per_client: usize,
    max_sessions: Option<usize>,
    rounds: Vec<Round>,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    archs: Vec<Arch>,
    preset: String,
    protocol: Protocol,
    clients: usize,
    per_client: usize,
    max_sessions: Option<usize>,
    json: Option<&Path>,
) -> Result<()> {
    if clients == 0 || per_client == 0 {
        bail!("--clients and --per-client must be at least 1");
    }
    let exe = std::env::current_exe().context("locating the relushare binary")?;
    let dir = tempfile_dir()?;
    let keys = dir.join("keys");
    pki::generate_deployment(&keys, clients, None, false)?;
    let mut all = Vec::new();
    for arch in archs {
        let margs = ModelArgs {
            model: None,
            arch: Some(arch),
            preset: preset.clone(),
            spec: None,
            random_weights: true,
            cluster_map: None,
            seed: 1,
        };
        let mut model = margs.load_normalized()?.context("model")?;
        spread_logits(&mut model);
        let model_path = dir.join(format!("{}.safetensors", arch.name()));
        model.save(&model_path)?;
        let (helper_addr, owner_addr) = (free_addr()?, free_addr()?);
        let mut common: Vec<String> = vec!["--keys".into(), keys.display().to_string()];
        if let Some(m) = max_sessions {
            common.extend(["--max-sessions".into(), m.to_string()]);
        }
        let spawn = |args: &[String]| -> Result<Proc> {
            Ok(Proc(
                Command::new(&exe)
                    .arg("serve")
                    .args(args)
                    .args(&common)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting relushare serve")?,
            ))
        };
        let mut helper = spawn(&[
            "--role".into(),
            "helper".into(),
            "--listen".into(),
            helper_addr.clone(),
        ])?;
        wait_listening(&helper_addr, &mut helper, "helper")?;
        let mut owner = spawn(&[
            "--role".into(),
            "owner".into(),
            "--listen".into(),
            owner_addr.clone(),
            "--helper".into(),
            helper_addr.clone(),
            "--model".into(),
            model_path.display().to_string(),
        ])?;
        wait_listening(&owner_addr, &mut owner, "owner")?;

        let d = model.spec.input;
        let mut prg = Prg::from_seed([7; 16]);
        let pixels: Vec<Vec<u8>> = (0..per_client.max(1))
            .map(|_| {
                let mut b = vec![0u8; d.len()];
                prg.fill_bytes(&mut b);
                b
            })
            .collect();
        let expected =
            serve::plaintext_classes(&model, &pixels, protocol.name(), 13).context("plaintext")?;
        let cfgs: Vec<serve::ClientConfig> = (1..=clients)
            .map(|i| {
                let mut c = serve::ClientConfig::new(
                    keys.clone(),
                    &format!("client-{i}"),
                    &owner_addr,
                    &helper_addr,
                );
                c.protocol = protocol.name().to_string();
                c.admission_wait = Duration::from_secs(600);
                c
            })
            .collect();
        let mut rounds = Vec::new();
        // Round 1 warms up (allocator arenas of the session threads, lazy statics); rounds 2
        // and 3 are the two equal rounds whose resident memory is compared.
        for round in 1..=3 {
            eprintln!(
                "bench --serve: {} {preset} {}: round {round}, {clients} clients x {per_client} images",
                arch.name(),
                protocol.name()
            );
            let r = serve::run_load(&cfgs, &pixels, &expected, per_client);
            // The servers' session threads close their connections after the client has its
            // result; read the memory once they are gone.
            std::thread::sleep(Duration::from_secs(3));
            let row = Round {
                sessions: r.sessions,
                failures: r.failures.clone(),
                mismatches: r.mismatches,
                p50_seconds: r.quantile(0.5),
                p99_seconds: r.quantile(0.99),
                images_per_second: r.throughput(),
                wall_seconds: r.wall_seconds,
                owner_rss_bytes: rss(owner.0.id()),
                helper_rss_bytes: rss(helper.0.id()),
            };
            println!(
                "{:<8} round {round}: {} sessions, {} failed, {} differ from plaintext; p50 {:.3} s, p99 {:.3} s per image; {:.2} images/s; RSS owner {:.1} MB, helper {:.1} MB",
                arch.name(),
                row.sessions,
                row.failures.len(),
                row.mismatches,
                row.p50_seconds,
                row.p99_seconds,
                row.images_per_second,
                row.owner_rss_bytes.unwrap_or(0) as f64 / 1e6,
                row.helper_rss_bytes.unwrap_or(0) as f64 / 1e6,
            );
            for f in r.failures.iter().take(5) {
                println!("    failure: {f}");
            }
            rounds.push(row);
        }
        all.push(ArchResult {
            arch: arch.name().into(),
            preset: preset.clone(),
            protocol: protocol.name().into(),
            clients,
            per_client,
            max_sessions,
            rounds,
        });
        drop(owner);
        drop(helper);
    }
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(p) = json {
        relushare_model::io::write_atomic(p, serde_json::to_string_pretty(&all)?.as_bytes())?;
    }
    let bad: usize = all
        .iter()
        .flat_map(|a| &a.rounds)
        .map(|r| r.failures.len() + r.mismatches)
        .sum();
    if bad > 0 {
        bail!("{bad} sessions failed or differed from the plaintext class");
    }
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "relushare-serve-bench-{}-{}",
        std::process::id(),
        pki::random_session_id()?
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Freshly initialised networks give nearly equal logits, so a class could hinge on the last
/// unit of the fixed-point encoding; scaling the last linear layer spreads them far above the
/// truncation error, so "secure class == plaintext class" is a sharp check.
pub fn spread_logits(model: &mut relushare_model::Model) {
    let last = model.spec.layers.iter().rev().find_map(|l| match l {
        relushare_model::Layer::Linear { name, .. } => Some(name.clone()),
        _ => None,
    });
    if let Some(name) = last {
        for p in [format!("{name}.weight"), format!("{name}.bias")] {
            if let Some(t) = model.params.get_mut(&p) {
                for v in &mut t.data {
                    *v *= 40.0;
                }
            }
        }
    }
}
