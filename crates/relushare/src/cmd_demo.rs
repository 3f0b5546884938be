//! `relushare demo`: the embedded default job. Trains a shared-ReLU network on the synthetic
//! dataset generated in code, reports its accuracy and ReLU count beside the plain-ReLU
//! network's, then classifies test images on secret shares with our `fast` suite and with
//! the SecureNN baseline, checking each secure class against the plaintext fixed-point one.

use anyhow::{Context, Result};
use relushare_data::{load, DatasetName, Split};
use relushare_model::{count, presets, Arch};
use relushare_mpc::protocol::Protocol;
use relushare_nn::{train, TrainConfig};

use crate::cmd_train::{build_spec, Bars};
use relushare_experiments::secure::run_secure;

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: fmnist (28x28x1, fastest), svhn or cifar10 (32x32x3).
    #[arg(long, default_value = "fmnist")]
    pub arch: Arch,
    /// ReLU-sharing preset to train.
    #[arg(long, default_value = "uniform3")]
    pub preset: String,
    /// Synthetic training images.
    #[arg(long, default_value_t = 2000)]
    pub train_images: usize,
    /// Synthetic held-out test images.
    #[arg(long, default_value_t = 500)]
    pub test_images: usize,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Test images classified securely.
    #[arg(long, default_value_t = 4)]
    pub secure_images: usize,
    /// Save the trained model here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let spec = build_spec(a.arch, &a.preset, None, DatasetName::Synthetic)?;
    let d = spec.input;
    let dims = (d.c, d.h, d.w);
    let train_set = load(
        DatasetName::Synthetic,
        Split::Train,
        None,
        Some(a.train_images),
        dims,
    )?
    .set;
    let test_set = load(
        DatasetName::Synthetic,
        Split::Test,
        None,
        Some(a.test_images),
        dims,
    )?
    .set;
    let shared = count(&spec)?;
    let original = count(&presets::build(a.arch, "original")?)?;
    let say = |m: String| {
        if !a.json {
            println!("{m}");
        }
    };
    say(format!(
        "1. train {} / {} on {} synthetic {}x{}x{} images ({} held out), {} epochs",
        a.arch,
        a.preset,
        train_set.len(),
        d.c,
        d.h,
        d.w,
        test_set.len(),
        a.epochs
    ));
    let cfg = TrainConfig {
        epochs: a.epochs,
        seed: a.seed,
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    let mut bars = Bars {
        bar: None,
        quiet: a.json,
    };
    let outcome = train(&cfg, &spec, None, &train_set, &test_set, &mut bars)
        .context("training the demo network")?;
    if let Some(p) = &a.out {
        outcome.model.save(p)?;
        say(format!("   saved {}", p.display()));
    }
    say(format!(
        "   test accuracy {:.1}% (chance 10%) in {:.1} s ({:.0} images/s)",
        outcome.test_accuracy * 100.0,
        outcome.seconds,
        outcome.images_per_second
    ));
    say(format!(
        "   secure comparisons (ReLUs): {} vs {} for plain ReLU ({:.1}x fewer)",
        shared.total_relus,
        original.total_relus,
        original.total_relus as f64 / shared.total_relus as f64
    ));
    for l in &shared.layers {
        say(format!("     {:<5} {:<44} {:>7}", l.name, l.kind, l.relus));
    }
    let mut runs = Vec::new();
    for (protocol, n) in [(Protocol::Fast, a.secure_images), (Protocol::Securenn, 1)] {
        let s = run_secure(&outcome.model, &test_set, n, protocol, 1, 13)
            .with_context(|| format!("secure inference with {protocol}"))?;
        say(format!(
            "{}. classify {} test image{} on secret shares with `{}` (3 parties, Z_2^64, 13 fractional bits)",
            runs.len() + 2,
            s.images,
            if s.images == 1 { "" } else { "s" },
            s.protocol
        ));
        for r in &s.per_image {
            say(format!(
                "   image {}: label {}, secure class {}, plaintext class {} {}",
                r.index,
                r.label,
                r.class,
                r.plaintext_class,
                if r.agree { "(agree)" } else { "(DIFFER)" }
            ));
        }
        say(format!(
            "   per image: {:.3} s, online {:.3} MB, offline {:.3} MB, {} online rounds",
            s.seconds,
            s.online_bytes / 1e6,
            s.offline_bytes / 1e6,
            s.rounds
        ));
        runs.push(s);
    }
    if runs.len() == 2 && !a.json {
        let (f, b) = (&runs[0], &runs[1]);
        println!(
            "   fast vs securenn: {:.1}x fewer bytes, {:.1}x faster",
            b.total_bytes / f.total_bytes.max(1.0),
            b.seconds / f.seconds.max(1e-9)
        );
    }
    if a.json {
        let j = serde_json::json!({
            "arch": a.arch.name(),
            "preset": a.preset,
            "test_accuracy": outcome.test_accuracy,
            "total_relus": shared.total_relus,
            "original_relus": original.total_relus,
            "secure": runs,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    }
    Ok(())
}
