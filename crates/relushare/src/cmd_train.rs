//! `relushare train`: train an architecture/preset on a dataset with Burn, or fine-tune a given
//! model (`--init`, ReLU sharing from `--spec`), and write the model file (plus a JSON metrics
//! file and a per-epoch checkpoint for `--resume`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use relushare_data::{load, DatasetName, Split};
use relushare_model::{presets, Arch, ClusterMaps, Model, ModelSpec};
use relushare_nn::{
    normalization_for, Augmentation, BackendKind, EpochMetrics, LrSchedule, OptimizerKind,
    Progress, TrainConfig,
};

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: cifar10, svhn, fmnist, resnet20 or resnet18 (or give --init).
    #[arg(long, required_unless_present = "init")]
    pub arch: Option<Arch>,
    /// Fine-tune this model file (e.g. an imported one) instead of training a fresh network:
    /// its layers and weights, with the sharing kinds of --spec applied to its activation
    /// layers (new sharing parameters start as in a fresh network).
    #[arg(long, conflicts_with_all = ["arch", "preset"])]
    pub init: Option<PathBuf>,
    /// Preset (original, uniform3, uniform4, uniform32, layer1-only, layer2-only, noise,
    /// fc-noise, shafran, adaptive256, cluster8x8k8, cluster-mixed).
    #[arg(long, default_value = "original")]
    pub preset: String,
    /// Free-form per-layer spec applied on top of the preset (or the --init model), e.g.
    /// "act1=patch3,act2=channel:fc:noise0.2".
    #[arg(long)]
    pub spec: Option<String>,
    /// Cluster-map file (from `relushare cluster`) for presets with data-driven clusters.
    #[arg(long)]
    pub cluster_map: Option<PathBuf>,
    /// Dataset: cifar10, svhn, fmnist or synthetic (generated, same image shape as the architecture).
    #[arg(long)]
    pub dataset: DatasetName,
    /// Directory holding the dataset files (see `relushare data fetch`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Use at most N training images (the first ones).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use at most N test images.
    #[arg(long)]
    pub test_limit: Option<usize>,
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Optimizer: adam or sgd (with momentum).
    #[arg(long, default_value = "adam")]
    pub optimizer: OptimizerKind,
    /// Base learning rate [default: 0.001 for adam, 0.05 for sgd].
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Learning-rate schedule: constant, cosine or step:EVERY:GAMMA.
    #[arg(long, default_value = "cosine")]
    pub schedule: LrSchedule,
    /// Augmentation: auto (crop+flip for cifar10, crop for svhn, none otherwise), none, crop, crop-flip.
    #[arg(long, default_value = "auto")]
    pub augment: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Burn backend: flex (CPU), or wgpu / cuda / tch when built with those features.
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Model file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Checkpoint written after every epoch [default: OUT.ckpt].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue an interrupted run from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// JSON metrics file of the run [default: OUT.metrics.json].
    #[arg(long)]
    pub metrics: Option<PathBuf>,
    /// Evaluate on the test set only after the last epoch (faster).
    #[arg(long)]
    pub final_eval_only: bool,
    /// Knowledge distillation from this trained model (e.g. the plain-ReLU `original`).
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight of the distillation term (with --teacher).
    #[arg(long, default_value_t = 0.7, requires = "teacher")]
    pub distill_alpha: f32,
    /// Softening temperature of the distillation term (with --teacher).
    #[arg(long, default_value_t = 4.0, requires = "teacher")]
    pub distill_temperature: f32,
    /// Print the metrics as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Indicatif bars on stderr, one per epoch.
pub(crate) struct Bars {
    pub(crate) bar: Option<ProgressBar>,
    pub(crate) quiet: bool,
}

impl Progress for Bars {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, batches: usize) {
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} batches {elapsed_precise} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }
    fn batch(&mut self, done: usize, loss: f32, accuracy: f32) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {loss:.4} acc {:.1}%", accuracy * 100.0));
        }
    }
    fn end_epoch(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            let test = m
                .test_accuracy
                .map(|a| format!(" test acc {:.2}%", a * 100.0))
                .unwrap_or_default();
            eprintln!(
                "epoch {}: loss {:.4} train acc {:.2}%{test} lr {:.2e} ({:.1} s, {:.0} images/s)",
                m.epoch,
                m.train_loss,
                m.train_accuracy * 100.0,
                m.lr,
                m.seconds,
                m.images_per_second
            );
        }
    }
    fn note(&mut self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Spec for `--arch/--preset/--spec`, with the dataset's normalization.
pub fn build_spec(
    arch: Arch,
    preset: &str,
    freeform: Option<&str>,
    dataset: DatasetName,
) -> Result<ModelSpec> {
    let mut spec = presets::build(arch, preset)?;
    if let Some(f) = freeform {
        presets::apply_freeform(&mut spec, f)?;
    }
    spec.normalization = normalization_for(dataset, spec.input.c);
    Ok(spec)
}

pub fn run(a: Args) -> Result<()> {
    let maps = match &a.cluster_map {
        Some(p) => Some(
            ClusterMaps::load(p).with_context(|| format!("loading cluster map {}", p.display()))?,
        ),
        None => None,
    };
    // --init: the starting model (its network with --spec applied); otherwise a fresh spec.
    let (init, spec) = match (&a.init, a.arch) {
        (Some(p), _) => {
            let model = Model::load(p)
                .with_context(|| format!("loading the init model {}", p.display()))?;
            let model = relushare_nn::init_from(&model, a.spec.as_deref(), maps.as_ref(), a.seed)
                .with_context(|| format!("fine-tuning {}", p.display()))?;
            let spec = model.spec.clone();
            (Some(model), spec)
        }
        (None, Some(arch)) => {
            let spec = build_spec(arch, &a.preset, a.spec.as_deref(), a.dataset)?;
            let need = presets::needs_cluster_map(&spec);
            if maps.is_none() && !need.is_empty() {
                bail!(
                    "preset '{}' clusters layer(s) {} by data: run `relushare cluster` first and pass its output with --cluster-map",
                    a.preset,
                    need.join(", ")
                );
            }
            (None, spec)
        }
        (None, None) => bail!("give --arch (a fresh network) or --init (a model to fine-tune)"),
    };
    let augmentation = match a.augment.as_str() {
        "auto" => Augmentation::for_dataset(a.dataset.as_str()),
        "none" => Augmentation::None,
        "crop" => Augmentation::Crop,
        "crop-flip" => Augmentation::CropFlip,
        other => bail!("unknown --augment '{other}': expected auto, none, crop or crop-flip"),
    };
    let d = spec.input;
    let dims = (d.c, d.h, d.w);
    let quiet = a.json;
    let train = load(
        a.dataset,
        Split::Train,
        a.data_dir.as_deref(),
        a.limit,
        dims,
    )
    .with_context(|| format!("loading the {} training split", a.dataset))?;
    let test = load(
        a.dataset,
        Split::Test,
        a.data_dir.as_deref(),
        a.test_limit,
        dims,
    )
    .with_context(|| format!("loading the {} test split", a.dataset))?;
    for w in train.warnings.iter().chain(&test.warnings) {
        eprintln!("warning: {w}");
    }
    let checkpoint = a
        .checkpoint
        .clone()
        .unwrap_or_else(|| with_suffix(&a.out, ".ckpt"));
    let metrics_path = a
        .metrics
        .clone()
        .unwrap_or_else(|| with_suffix(&a.out, ".metrics.json"));
    let cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer: a.optimizer,
        lr: a.lr.unwrap_or(a.optimizer.default_lr()),
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        schedule: a.schedule,
        augmentation,
        seed: a.seed,
        backend: a.backend,
        checkpoint: Some(checkpoint.clone()),
        resume: a.resume,
        eval_each_epoch: !a.final_eval_only,
        distill: match &a.teacher {
            Some(p) => Some(relushare_nn::Distill {
                teacher: relushare_model::Model::load(p)
                    .with_context(|| format!("loading the teacher {}", p.display()))?,
                temperature: a.distill_temperature,
                alpha: a.distill_alpha,
            }),
            None => None,
        },
        ..TrainConfig::default()
    };
    if let (false, Some(p)) = (quiet, &a.init) {
        eprintln!("fine-tuning {} ({} layers)", p.display(), spec.layers.len());
    }
    if !quiet {
        eprintln!(
            "training {} / {} on {} ({} train, {} test images), {} epochs, {:?} lr {}, backend {}",
            spec.arch,
            spec.preset,
            a.dataset,
            train.set.len(),
            test.set.len(),
            cfg.epochs,
            cfg.optimizer,
            cfg.lr,
            cfg.backend
        );
    }
    let mut bars = Bars { bar: None, quiet };
    let out = match init {
        Some(model) => relushare_nn::train_model(&cfg, model, &train.set, &test.set, &mut bars)?,
        None => relushare_nn::train(&cfg, &spec, maps.as_ref(), &train.set, &test.set, &mut bars)?,
    };
    out.model
        .save(&a.out)
        .with_context(|| format!("writing the model to {}", a.out.display()))?;
    let metrics = serde_json::json!({
        "arch": spec.arch.name(),
        "preset": spec.preset,
        "init": a.init.as_ref().map(|p| p.display().to_string()),
        "dataset": a.dataset.as_str(),
        "train_images": train.set.len(),
        "test_images": test.set.len(),
        "epochs": cfg.epochs,
        "resumed_from_epoch": out.resumed_from_epoch,
        "train_accuracy": out.train_accuracy,
        "test_accuracy": out.test_accuracy,
        "relus": out.relus,
        "seconds": out.seconds,
        "images_per_second": out.images_per_second,
        "model": a.out.display().to_string(),
        "checkpoint": checkpoint.display().to_string(),
        "config": cfg,
        "history": out.history,
    });
    let text = serde_json::to_string_pretty(&metrics)?;
    relushare_model::io::write_atomic(&metrics_path, text.as_bytes())?;
    if a.json {
        println!("{text}");
    } else {
        println!(
            "{} / {} on {}: test accuracy {:.2}% (train {:.2}%), {} ReLUs, {:.1} s, {:.0} images/s",
            spec.arch,
            spec.preset,
            a.dataset,
            out.test_accuracy * 100.0,
            out.train_accuracy * 100.0,
            out.relus,
            out.seconds,
            out.images_per_second
        );
        println!(
            "model: {}  metrics: {}",
            a.out.display(),
            metrics_path.display()
        );
    }
    Ok(())
}
