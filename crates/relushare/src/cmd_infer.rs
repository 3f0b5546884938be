//! `relushare infer`: secure three-party inference, per-image cost and agreement with the
//! plaintext fixed-point network. `--network none` (default): three parties in this process
//! (threads, in-memory transport). `--network lan|wan` (or `--rtt-ms`/`--mbit`): the three
//! parties as separate `relushare party` processes over TLS on loopback, every link through an
//! emulated network (`relushare_mpc::net::launch`, `relushare_mpc::net::emu`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use relushare_data::{load, DatasetName, Split};
use relushare_model::Model;
use relushare_mpc::auto::{Job, Objective, ProtocolArg};

use crate::image_args::{self, ImageArgs};
use crate::model_args::ModelArgs;
use relushare_experiments::secure::{run_secure, run_secure_networked};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub source: ModelArgs,
    /// Protocol suite: securenn (the paper's baseline), fast, fss, mimo (one online round per
    /// layer), or auto (the suite a cost model predicts fastest for the --network and the job:
    /// one image or a --stream).
    #[arg(long, default_value = "fast")]
    pub protocol: ProtocolArg,
    /// With --protocol auto and one image: minimise its total time (offline + online), or its
    /// online time only (dealer material produced ahead).
    #[arg(long, default_value = "total")]
    pub objective: Objective,
    /// Image files to classify instead of dataset images.
    #[command(flatten)]
    pub files: ImageArgs,
    /// Dataset the images come from: synthetic (default), cifar10, svhn, fmnist.
    #[arg(long, default_value = "synthetic")]
    pub dataset: DatasetName,
    /// Directory of the dataset files (real datasets).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Split the images come from.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Number of images to classify.
    #[arg(long, default_value_t = 1)]
    pub images: usize,
    /// Images per protocol run (batched inference; costs are reported per image).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Fixed-point fractional bits.
    #[arg(long, default_value_t = 13)]
    pub frac_bits: u32,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub net: crate::net_args::NetworkArgs,
    /// Run N images as a stream: batches of --batch, the dealer's material for the next batches
    /// produced and sent while the current one is online (throughput and latency per image).
    #[arg(long, value_name = "N")]
    pub stream: Option<usize>,
    /// With --stream: batches of dealer material queued ahead (memory: at most this many
    /// batches of material beyond the one online).
    #[arg(long, default_value_t = relushare_mpc::pipeline::DEFAULT_DEPTH, requires = "stream")]
    pub depth: usize,
    /// With a network: each party's timeout (seconds) for connecting and for any read or write.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
}

fn load_model(a: &Args) -> Result<Model> {
    let mut model = a
        .source
        .load()?
        .context("give --model FILE, or --arch A --preset P --random-weights")?;
    if a.source.random_weights && a.source.model.is_none() {
        // random weights carry no normalization: their architecture's dataset's, else the
        // images' dataset's
        model.spec.normalization =
            relushare_experiments::secure::random_weights_normalization(&model.spec, a.dataset);
    }
    Ok(model)
}

pub fn run(a: Args) -> Result<()> {
    if a.images == 0 {
        bail!("--images must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let network = a.net.profile()?;
    if !(a.timeout > 0.0 && a.timeout <= 86_400.0) {
        bail!("--timeout must be between 0 and 86400 seconds");
    }
    if !a.files.image.is_empty() {
        if network.is_some() {
            bail!("--image runs in process; --network measures dataset images (use --dataset) or `relushare classify` against servers");
        }
        let model = a
            .source
            .load_normalized()?
            .context("give --model FILE, or --arch A --preset P --random-weights")?;
        return run_files(&a, &model);
    }
    let model = load_model(&a)?;
    let d = model.spec.input;
    let wanted = a.stream.unwrap_or(a.images);
    let data = load(
        a.dataset,
        a.split,
        a.data_dir.as_deref(),
        Some(wanted),
        (d.c, d.h, d.w),
    )
    .with_context(|| format!("loading the {} {} split", a.dataset, a.split))?;
    for w in &data.warnings {
        eprintln!("warning: {w}");
    }
    let (protocol, choice) = match a.protocol {
        ProtocolArg::Fixed(p) => (p, None),
        ProtocolArg::Auto => {
            let job = match a.stream {
                Some(images) => Job::Stream {
                    images,
                    batch: a.batch,
                },
                None => Job::Image,
            };
            let c = relushare_experiments::secure::choose_protocol(
                &model,
                &data.set,
                a.frac_bits,
                network,
                job,
                a.objective,
            )
            .context("choosing the protocol")?;
            if !a.json {
                println!("protocol auto: {}", c.reason);
            }
            (c.chosen, Some(c))
        }
    };
    if let Some(n) = a.stream {
        let mut s = relushare_experiments::stream::run(
            &model,
            &data.set,
            n,
            protocol,
            a.batch,
            a.depth,
            a.frac_bits,
            network,
            std::time::Duration::from_secs_f64(a.timeout),
        )?;
        s.protocol_choice = choice;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            s.print();
        }
        return Ok(());
    }
    let spinner = if a.json {
        indicatif::ProgressBar::hidden()
    } else {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!(
            "{} images with {}",
            a.images.min(data.set.len()),
            protocol
        ));
        pb.enable_steady_tick(std::time::Duration::from_millis(200));
        pb
    };
    let s = match network {
        None => run_secure(&model, &data.set, a.images, protocol, a.batch, a.frac_bits),
        Some(net) => run_secure_networked(
            &model,
            &data.set,
            a.images,
            protocol,
            a.batch,
            a.frac_bits,
            net,
            std::time::Duration::from_secs_f64(a.timeout),
        ),
    };
    spinner.finish_and_clear();
    let mut s = s?;
    s.protocol_choice = choice;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!(
        "{} / {} with {} on {} ({} image{}, batch {}, {}), medians per image:",
        s.arch,
        s.preset,
        s.protocol,
        a.dataset,
        s.images,
        if s.images == 1 { "" } else { "s" },
        s.batch,
        s.network.describe()
    );
    s.print_table();
    if network.is_some() {
        println!(
            "per image: {:.3} s offline + {:.3} s online = {:.3} s",
            s.offline_seconds, s.online_seconds, s.seconds
        );
    }
    println!(
        "agreement with plaintext fixed point: {:.1}% (the network as {} runs it), {:.1}% (the trained model, gates unfused); accuracy vs labels: {:.1}%; one-time setup {:.3} s, {} bytes",
        s.agree_with_plaintext * 100.0,
        s.protocol,
        s.agree_with_unfused * 100.0,
        s.accuracy * 100.0,
        s.setup_seconds,
        s.setup_bytes
    );
    Ok(())
}

/// `infer --image FILE ...`: the files' classes with their names.
fn run_files(a: &Args, model: &Model) -> Result<()> {
    let d = model.spec.input;
    let pixels = a.files.pixels((d.c, d.h, d.w))?;
    let n = pixels.len();
    let set = relushare_data::ImageSet::new(
        (d.c, d.h, d.w),
        pixels.concat(),
        vec![0; n],
        model.spec.num_classes.max(1),
    )?;
    let protocol = match a.protocol {
        ProtocolArg::Fixed(p) => p,
        ProtocolArg::Auto => {
            let c = relushare_experiments::secure::choose_protocol(
                model,
                &set,
                a.frac_bits,
                None,
                Job::Image,
                a.objective,
            )?;
            if !a.json {
                println!("protocol auto: {}", c.reason);
            }
            c.chosen
        }
    };
    let s = run_secure(model, &set, n, protocol, a.batch, a.frac_bits)?;
    let classes: Vec<usize> = s.per_image.iter().map(|r| r.class).collect();
    let logits: Vec<Vec<f32>> = s.per_image.iter().map(|r| r.logits.clone()).collect();
    let rows = image_args::classified(
        &s.arch,
        &model.spec.class_names,
        &a.files.image,
        &classes,
        &logits,
    );
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "images": rows,
                "agree_with_plaintext": s.agree_with_plaintext,
                "summary": s,
            }))?
        );
        return Ok(());
    }
    println!(
        "{} / {} with {}: {} image file(s), {:.4} s and {:.3} MB per image; agreement with plaintext fixed point {:.1}%",
        s.arch,
        s.preset,
        s.protocol,
        n,
        s.seconds,
        s.total_bytes / 1e6,
        s.agree_with_plaintext * 100.0
    );
    image_args::print_classified(&rows);
    Ok(())
}
