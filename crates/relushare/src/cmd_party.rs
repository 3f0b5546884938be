//! `relushare party`: one party of a secure inference, as its own process, over TCP with
//! TLS 1.3 and mutual authentication (certificates from `relushare keys`).
//!
//! Topology: P0 listens; P1 listens and connects to P0; P2 connects to both. The party given a
//! model (`--model FILE` or `--arch/--preset/--random-weights`) is the model owner; the party
//! given an input (`--image FILE` or `--random-image SEED`) is the client and receives the
//! result. Any failure (peer missing, refused, disconnected, stalled, malformed) ends the
//! process with a non-zero status and a message naming the peer; `--out` is written atomically
//! and only on success.
//!
//! ```text
//! relushare keys --out keys                     # then give party R: ca.crt, session-id, party-R.*
//! relushare party --role 0 --keys keys --listen 127.0.0.1:7000 --dataset cifar10 --data-dir data
//! relushare party --role 1 --keys keys --listen 127.0.0.1:7001 --peers 0=127.0.0.1:7000 --model m.safetensors
//! relushare party --role 2 --keys keys --peers 0=127.0.0.1:7000,1=127.0.0.1:7001
//! ```

use std::path::PathBuf;
use std::time::Duration;

use crate::image_args::{self, ImageArgs};
use crate::model_args::ModelArgs;
use anyhow::{bail, Context, Result};
use relushare_mpc::net::session::{self, ImageSource, SessionOptions};
use relushare_mpc::net::{self, NetConfig, PartyKeys, TlsTransport};

#[derive(clap::Args)]
pub struct Args {
    /// This party's role: 0, 1 or 2.
    #[arg(long)]
    pub role: usize,
    /// Keys directory from `relushare keys` (ca.crt, session-id, party-ROLE.crt/.key).
    #[arg(long)]
    pub keys: PathBuf,
    /// Address to listen on (P0 and P1), e.g. 127.0.0.1:7000.
    #[arg(long)]
    pub listen: Option<String>,
    /// Addresses of the lower parties, e.g. "0=127.0.0.1:7000,1=127.0.0.1:7001".
    #[arg(long, default_value = "")]
    pub peers: String,
    /// Seconds to wait for peers to connect, and for any single read or write.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Seconds to wait for all peers to connect, if different from --timeout (e.g. when the
    /// parties are started by hand).
    #[arg(long)]
    pub connect_timeout: Option<f64>,
    /// Session id to require from peers (default: the keys directory's session-id).
    #[arg(long)]
    pub session_id: Option<String>,
    /// Protocol suite (all parties must agree): fast, fss, mimo or securenn.
    #[arg(long, default_value = "fast")]
    pub protocol: String,
    /// Fixed-point fractional bits (all parties must agree).
    #[arg(long, default_value_t = 13)]
    pub frac_bits: u32,
    /// Model owner: a model file (--model) or --arch/--preset/--random-weights.
    #[command(flatten)]
    pub source: ModelArgs,
    /// Client: image files (PNG, JPEG, PPM/PGM; repeat --image), or one JSON file (`.json`)
    /// with one normalized image (CHW floats) or a list of them.
    #[command(flatten)]
    pub files: ImageArgs,
    /// Client: use pseudo-random images from this seed (benchmarks).
    #[arg(long, conflicts_with_all = ["dataset", "image"])]
    pub random_image: Option<u64>,
    /// Client: classify dataset images (cifar10, svhn or fmnist), normalized with the model's
    /// normalization.
    #[arg(long, conflicts_with = "image")]
    pub dataset: Option<relushare_data::DatasetName>,
    /// Directory of the dataset files.
    #[arg(long, requires = "dataset")]
    pub data_dir: Option<PathBuf>,
    /// Dataset split.
    #[arg(long, default_value = "test")]
    pub split: relushare_data::Split,
    /// First dataset image to classify.
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// Client with --random-image or --dataset: how many images.
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// Run the images as a pipelined stream in batches of this many images: the dealer sends
    /// the material of the next batches while the current one is online (all parties must
    /// agree).
    #[arg(long)]
    pub stream_batch: Option<usize>,
    /// With --stream-batch: batches of dealer material queued ahead (all parties must agree).
    #[arg(long, default_value_t = relushare_mpc::pipeline::DEFAULT_DEPTH, requires = "stream_batch")]
    pub stream_depth: usize,
    /// Write this party's report (the client's holds the result) as JSON, atomically.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Largest accepted image file.
const MAX_IMAGE_FILE: u64 = 512 << 20;

fn load_images(path: &PathBuf) -> Result<Vec<Vec<f32>>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_IMAGE_FILE {
        bail!(
            "{}: image file of {} bytes is too large",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let as_vec = |v: &serde_json::Value| -> Option<Vec<f32>> {
        v.as_array()?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect()
    };
    let imgs = if let Some(one) = as_vec(&v) {
        vec![one]
    } else {
        v.as_array()
            .and_then(|a| a.iter().map(as_vec).collect::<Option<Vec<_>>>())
            .with_context(|| {
                format!(
                    "{}: expected a list of numbers or a list of such lists",
                    path.display()
                )
            })?
    };
    if imgs.is_empty() || imgs.iter().any(|i| i.iter().any(|x| !x.is_finite())) {
        bail!("{}: images must be non-empty and finite", path.display());
    }
    Ok(imgs)
}

fn load_dataset(a: &Args, name: relushare_data::DatasetName) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
    let dims = name.dims().with_context(|| {
        format!("--dataset {name}: the client needs a real dataset (or use --random-image)")
    })?;
    if a.images == 0 || a.images > session::MAX_IMAGES {
        bail!("--images must be between 1 and {}", session::MAX_IMAGES);
    }
    let want = a.index.checked_add(a.images).context("--index too large")?;
    let data = relushare_data::load(name, a.split, a.data_dir.as_deref(), Some(want), dims)
        .with_context(|| format!("loading the {name} {} split", a.split))?;
    for w in &data.warnings {
        eprintln!("warning: {w}");
    }
    let set = &data.set;
    if set.len() <= a.index {
        bail!("the {name} {} split has only {} images", a.split, set.len());
    }
    let end = set.len().min(want);
    let pixels = (a.index..end).map(|i| set.image(i).to_vec()).collect();
    let labels = (a.index..end).map(|i| set.label(i)).collect();
    Ok((pixels, labels))
}

pub fn run(a: Args) -> Result<()> {
    if a.role > 2 {
        bail!("--role must be 0, 1 or 2 (got {})", a.role);
    }
    if !(a.timeout > 0.0 && a.timeout <= 86_400.0) {
        bail!("--timeout must be between 0 and 86400 seconds");
    }
    // Everything local is checked before touching the network.
    let model = a.source.load_normalized()?;
    let mut labels = None;
    let json_file = match a.files.image.as_slice() {
        [p] if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json")) =>
        {
            Some(p.clone())
        }
        _ => None,
    };
    let image_files = (!a.files.image.is_empty()).then_some(());
    let images = match (image_files, a.random_image, a.dataset) {
        (Some(_), _, _) => match &json_file {
            Some(p) => Some(ImageSource::Given(load_images(p)?)),
            None => Some(ImageSource::Deferred {
                count: a.files.image.len(),
                load: a.files.loader()?,
            }),
        },
        (None, Some(seed), _) => Some(ImageSource::Random {
            seed,
            count: a.images,
        }),
        (None, None, Some(name)) => {
            let (pixels, l) = load_dataset(&a, name)?;
            labels = Some(l);
            Some(ImageSource::Pixels(pixels))
        }
        (None, None, None) => None,
    };
    let keys = PartyKeys::load(&a.keys, a.role)?;
    let mut cfg = NetConfig::new(keys, net::parse_peers(&a.peers)?);
    if let Some(s) = &a.session_id {
        net::pki::validate_session_id(s)?;
        cfg.session_id = s.clone();
    }
    cfg.timeout = Duration::from_secs_f64(a.timeout);
    if let Some(c) = a.connect_timeout {
        if !(c > 0.0 && c <= 86_400.0) {
            bail!("--connect-timeout must be between 0 and 86400 seconds");
        }
        cfg.connect_timeout = Some(Duration::from_secs_f64(c));
    }
    let listener = match (&a.listen, a.role) {
        (Some(addr), r) if r < 2 => Some(net::bind(addr)?),
        (None, r) if r < 2 => bail!("party {r} must listen: pass --listen HOST:PORT"),
        (Some(_), _) => bail!("party 2 does not listen (it connects to P0 and P1); drop --listen"),
        (None, _) => None,
    };
    eprintln!(
        "party {}: session {}, waiting up to {:.0} s for the other parties",
        a.role,
        cfg.session_id,
        cfg.connect_window().as_secs_f64()
    );
    let mesh = TlsTransport::connect(&cfg, listener)?;
    eprintln!(
        "party {}: connected and authenticated; running {}",
        a.role, a.protocol
    );
    let opts = SessionOptions {
        protocol: a.protocol.clone(),
        frac_bits: a.frac_bits,
    };
    let report = match a.stream_batch {
        Some(batch) => session::run_stream(
            mesh,
            model.as_ref(),
            images.as_ref(),
            &opts,
            session::StreamSettings {
                batch,
                depth: a.stream_depth,
            },
        ),
        None => session::run(mesh, model.as_ref(), images.as_ref(), &opts),
    }
    .with_context(|| format!("party {} failed", a.role))?;
    let mut value = serde_json::to_value(&report)?;
    // The client's classes named per image file (image files given, not a JSON image list).
    let rows = match (&report.classes, &report.logits, &json_file) {
        (Some(classes), Some(logits), None) if !a.files.image.is_empty() => {
            Some(image_args::classified(
                &report.arch,
                &report.class_names,
                &a.files.image,
                classes,
                logits,
            ))
        }
        _ => None,
    };
    if let Some(rows) = &rows {
        value["classified"] = serde_json::to_value(rows)?;
    }
    let json = serde_json::to_string_pretty(&value)?;
    if let Some(p) = &a.out {
        relushare_model::io::write_atomic(p, json.as_bytes())?;
    }
    if a.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "party {} ({}{}): {} image(s), protocol {}",
        report.role,
        if report.model_owner {
            "model owner"
        } else {
            "no model"
        },
        if report.client { ", client" } else { "" },
        report.images,
        report.protocol
    );
    println!(
        "  sent {:.3} MB online, {:.3} MB offline, {:.3} MB shares, {:.6} MB output shares to the client; {} online rounds; {:.3} s online, {:.3} s total",
        report.online_bytes as f64 / 1e6,
        report.offline_bytes as f64 / 1e6,
        report.setup_bytes as f64 / 1e6,
        report.client_bytes as f64 / 1e6,
        report.online_rounds,
        report.online_seconds,
        report.seconds
    );
    if let Some(rows) = &rows {
        image_args::print_classified(rows);
        return Ok(());
    }
    if let (Some(classes), Some(logits)) = (&report.classes, &report.logits) {
        for (i, (c, l)) in classes.iter().zip(logits).enumerate() {
            let l: Vec<String> = l.iter().map(|x| format!("{x:.3}")).collect();
            let label = labels
                .as_ref()
                .and_then(|l: &Vec<u8>| l.get(i))
                .map(|l| format!(" (label {l})"));
            println!(
                "  image {i}: class {c}{}  logits [{}]",
                label.unwrap_or_default(),
                l.join(", ")
            );
        }
    }
    Ok(())
}
