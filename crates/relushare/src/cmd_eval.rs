//! `relushare eval`: accuracy of a model file on a dataset split (plaintext, Burn).

use std::path::PathBuf;

use anyhow::{Context, Result};
use relushare_data::{load, DatasetName, Split};
use relushare_model::Model;
use relushare_nn::{evaluate_detailed, BackendKind, EvalConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Model file written by `relushare train`.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: cifar10, svhn, fmnist or synthetic.
    #[arg(long)]
    pub dataset: DatasetName,
    /// Directory holding the dataset files (see `relushare data fetch`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Split to evaluate: test or train.
    #[arg(long, default_value = "test")]
    pub split: Split,
    /// Use at most N images (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Seed of the noise flips of noisy sharing layers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Burn backend: flex (CPU), or wgpu / cuda / tch when built with those features.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Print JSON ({"accuracy": fraction, ...}) on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let model =
        Model::load(&a.model).with_context(|| format!("loading model {}", a.model.display()))?;
    let d = model.spec.input;
    let data = load(
        a.dataset,
        a.split,
        a.data_dir.as_deref(),
        a.limit,
        (d.c, d.h, d.w),
    )
    .with_context(|| format!("loading the {} {} split", a.dataset, a.split))?;
    for w in &data.warnings {
        eprintln!("warning: {w}");
    }
    let cfg = EvalConfig {
        batch_size: a.batch_size,
        backend: a.backend,
        seed: a.seed,
    };
    let ev = evaluate_detailed(&model, &data.set, &cfg)?;
    let relus = relushare_model::count(&model.spec)?.total_relus;
    if a.json {
        let j = serde_json::json!({
            "model": a.model.display().to_string(),
            "arch": model.spec.arch.name(),
            "preset": model.spec.preset,
            "dataset": a.dataset.as_str(),
            "split": a.split.to_string(),
            "accuracy": ev.accuracy,
            "correct": ev.correct,
            "total": ev.total,
            "relus": relus,
            "class_names": model.spec.class_names,
            "seconds": ev.seconds,
            "images_per_second": ev.images_per_second,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{} / {} on {} {}: accuracy {:.2}% ({}/{}), {} ReLUs, {:.1} s ({:.0} images/s)",
            model.spec.arch,
            model.spec.preset,
            a.dataset,
            a.split,
            ev.accuracy * 100.0,
            ev.correct,
            ev.total,
            relus,
            ev.seconds,
            ev.images_per_second
        );
    }
    Ok(())
}
