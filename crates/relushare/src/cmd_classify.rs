//! `relushare classify`: a client of a served model (`relushare serve`). It is P0 and alone
//! learns the result; the owner and the helper see only shares.
//!
//! ```text
//! relushare classify --keys K --client client-1 --owner 127.0.0.1:7100 --helper 127.0.0.1:7200 --image cat.png --image dog.jpg [--cache-dir C] [--json]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use relushare_mpc::net::serve::{self, ClientConfig};
use relushare_mpc::net::session::{self, ImageSource};

use crate::image_args::{self, ImageArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Keys directory (ca.crt, session-id, CLIENT.crt/.key) from `relushare keys --clients N`.
    #[arg(long)]
    pub keys: PathBuf,
    /// This client's name (its certificate's), e.g. client-1.
    #[arg(long)]
    pub client: String,
    /// The model owner's address.
    #[arg(long)]
    pub owner: String,
    /// The helper's address.
    #[arg(long)]
    pub helper: String,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Instead of image files: this many pseudo-random images from --random-image's seed
    /// (benchmarks).
    #[arg(long, conflicts_with = "image")]
    pub random_image: Option<u64>,
    /// With --random-image: how many images.
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Protocol suite: fast, fss, mimo or securenn (as in `infer`).
    #[arg(long, default_value = "fast")]
    pub protocol: String,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 13)]
    pub frac_bits: u32,
    /// Seconds for any single read or write.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Seconds to wait for the servers to admit the session (they may queue it).
    #[arg(long, default_value_t = 90.0)]
    pub wait: f64,
    /// Keep the masked weights the owner sends in this directory (one file per deployment,
    /// client, protocol and fractional bits), so that later sessions receive them only when the
    /// owner's weight masks changed (fast, fss and mimo). A damaged file is ignored and
    /// replaced.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON: per image the class index, name and logits, and the session's costs.
    #[arg(long)]
    pub json: bool,
    /// An emulated network on this client's links to both servers (benchmarks; the owner's
    /// link to the helper takes `serve --network`).
    #[command(flatten)]
    pub net: crate::net_args::NetworkArgs,
}

use crate::net_args::secs;

pub fn run(a: Args) -> Result<()> {
    let images = match a.random_image {
        Some(seed) => {
            if a.count == 0 || a.count > session::MAX_IMAGES {
                bail!("--count must be between 1 and {}", session::MAX_IMAGES);
            }
            ImageSource::Random {
                seed,
                count: a.count,
            }
        }
        None => {
            image_args::ensure_some(&a.images)?;
            ImageSource::Deferred {
                count: a.images.image.len(),
                load: a.images.loader()?,
            }
        }
    };
    let mut cfg = ClientConfig::new(a.keys.clone(), &a.client, &a.owner, &a.helper);
    cfg.protocol = a.protocol.clone();
    cfg.frac_bits = a.frac_bits;
    cfg.timeout = secs("timeout", a.timeout)?;
    cfg.admission_wait = secs("wait", a.wait)?;
    cfg.network = a.net.profile()?;
    cfg.cache_dir = a.cache_dir.clone();
    let report = serve::classify(&cfg, &images).context(
        "private classification with the model owner (party 1) and the helper (party 2) failed",
    )?;
    let (classes, logits) = match (&report.classes, &report.logits) {
        (Some(c), Some(l)) => (c.clone(), l.clone()),
        _ => bail!("the session ended without a result"),
    };
    let rows = image_args::classified(
        &report.arch,
        &report.class_names,
        &a.images.image,
        &classes,
        &logits,
    );
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "client": a.client,
                "protocol": report.protocol,
                "arch": report.arch,
                "images": rows,
                "seconds": report.seconds,
                "online_seconds": report.online_seconds,
                "online_bytes": report.online_bytes,
                "online_rounds": report.online_rounds,
                "offline_seconds": report.offline_seconds,
                "offline_bytes": report.offline_bytes,
                "setup_bytes": report.setup_bytes,
                "model_setup_bytes": report.model_setup_bytes,
                "model_setup_rounds": report.model_setup_rounds,
                "weight_masks": report.weight_masks,
                "weight_cache": report.weight_cache,
                "setup_received_bytes": report.setup_received_bytes,
                "network": cfg.network.map(|p| serde_json::json!({"rtt_ms": p.rtt_ms, "mbit": p.mbit})),
            }))?
        );
        return Ok(());
    }
    println!(
        "{} image(s) classified privately with {} ({} model) in {:.3} s:",
        report.images, report.protocol, report.arch, report.seconds
    );
    image_args::print_classified(&rows);
    if let Some(note) = &report.weight_cache {
        println!("{note}");
    }
    Ok(())
}
