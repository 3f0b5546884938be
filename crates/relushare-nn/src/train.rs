//! Training on Burn: SGD with momentum or Adam, constant/cosine/step learning-rate schedules,
//! weight decay, augmentation, seeds, a checkpoint after every epoch (written atomically) and
//! resume, per-epoch metrics.
//!
//! Randomness (initialization, shuffling, augmentation, dropout, noise flips) comes from
//! ChaCha8 generators derived from [`TrainConfig::seed`] and the epoch number, so a resumed run
//! sees the same batches as an uninterrupted one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::Bytes;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relushare_data::ImageSet;
use relushare_model::{ClusterMaps, Model, ModelSpec};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::batch::{fill_batch, Augmentation};
use crate::eval::{check_set, evaluate_module};
use crate::net::{
    cross_entropy, forward, images_tensor, module_from_model, to_model, ForwardMode, Plan,
};
use crate::NnError;

/// The optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with (heavy-ball) momentum [`TrainConfig::momentum`].
    Sgd,
    /// Adam (β = 0.9, 0.999).
    Adam,
}

impl OptimizerKind {
    /// A learning rate that works for the paper's networks with this optimizer.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 0.05,
            OptimizerKind::Adam => 1e-3,
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = NnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            _ => Err(NnError::Invalid(format!(
                "unknown optimizer '{s}': expected sgd or adam"
            ))),
        }
    }
}

/// Learning-rate schedule over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Cosine annealing from the base rate to 0 over all steps.
    Cosine,
    /// Multiply by `gamma` every `every` epochs.
    Step {
        every: usize,
        gamma: f64,
    },
}

impl LrSchedule {
    /// Learning rate at `step` of `total` steps (epoch `epoch`).
    pub fn lr(&self, base: f64, epoch: usize, step: usize, total: usize) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            LrSchedule::Step { every, gamma } => base * gamma.powi((epoch / every.max(1)) as i32),
        }
    }
}

impl std::str::FromStr for LrSchedule {
    type Err = NnError;
    /// `constant`, `cosine` or `step:EVERY:GAMMA` (e.g. `step:10:0.1`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            NnError::Invalid(format!(
                "unknown schedule '{s}': expected constant, cosine or step:EVERY:GAMMA (e.g. step:10:0.1)"
            ))
        };
        match s {
            "constant" => Ok(LrSchedule::Constant),
            "cosine" => Ok(LrSchedule::Cosine),
            _ => {
                let rest = s.strip_prefix("step:").ok_or_else(bad)?;
                let (e, g) = rest.split_once(':').ok_or_else(bad)?;
                Ok(LrSchedule::Step {
                    every: e.parse().map_err(|_| bad())?,
                    gamma: g.parse().map_err(|_| bad())?,
                })
            }
        }
    }
}

/// Everything a training run needs besides the network and the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerKind,
    /// Base learning rate.
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// L2 weight decay on every parameter (0 disables it).
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    pub augmentation: Augmentation,
    pub seed: u64,
    /// Temperature τ of the straight-through sigmoid surrogate of the sharing step.
    pub ste_temperature: f32,
    pub backend: BackendKind,
    /// Checkpoint file written (atomically) after every epoch; `None` disables checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// Continue from [`TrainConfig::checkpoint`] (which must exist).
    pub resume: bool,
    /// Evaluate on the test set after every epoch (otherwise only after the last).
    pub eval_each_epoch: bool,
    pub eval_batch_size: usize,
    /// Knowledge distillation from a trained teacher (not stored in checkpoints' settings).
    #[serde(skip)]
    pub distill: Option<Distill>,
}

/// Knowledge distillation (Hinton et al.): the student's loss is
/// `(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))`,
/// with the teacher (typically the trained plain-ReLU `original` model) run without gradients
/// on the same augmented batch.
#[derive(Debug, Clone)]
pub struct Distill {
    pub teacher: Model,
    /// Softening temperature `T` (> 0).
    pub temperature: f32,
    /// Weight of the distillation term, in [0, 1].
    pub alpha: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerKind::Adam,
            lr: OptimizerKind::Adam.default_lr(),
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: LrSchedule::Cosine,
            augmentation: Augmentation::None,
            seed: 1,
            ste_temperature: 1.0,
            backend: BackendKind::Flex,
            checkpoint: None,
            resume: false,
            eval_each_epoch: true,
            eval_batch_size: 256,
            distill: None,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), NnError> {
        let bad = |m: &str| Err(NnError::Invalid(m.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be a positive number");
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad("momentum must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be >= 0");
        }
        if !(self.ste_temperature.is_finite() && self.ste_temperature > 0.0) {
            return bad("STE temperature must be positive");
        }
        if self.resume && self.checkpoint.is_none() {
            return bad("resume needs a checkpoint path");
        }
        if let Some(d) = &self.distill {
            if !(d.temperature.is_finite() && d.temperature > 0.0) {
                return bad("distillation temperature must be positive");
            }
            if !(0.0..=1.0).contains(&d.alpha) {
                return bad("distillation alpha must be in [0, 1]");
            }
        }
        Ok(())
    }
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f64,
    pub train_loss: f32,
    /// Accuracy on the (augmented) training batches, as a fraction.
    pub train_accuracy: f32,
    pub test_accuracy: Option<f32>,
    /// Training time of the epoch (without evaluation).
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Receives progress events; the CLI draws bars with them. All methods default to no-ops.
pub trait Progress {
    fn start_epoch(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    /// After each batch: batches done this epoch, running loss and accuracy.
    fn batch(&mut self, _done: usize, _loss: f32, _accuracy: f32) {}
    fn end_epoch(&mut self, _metrics: &EpochMetrics) {}
    /// A message worth showing (e.g. "resumed from epoch 3").
    fn note(&mut self, _message: &str) {}
}

/// Ignores progress.
pub struct NoProgress;
impl Progress for NoProgress {}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub model: Model,
    pub history: Vec<EpochMetrics>,
    /// Training accuracy of the last epoch.
    pub train_accuracy: f32,
    /// Accuracy on the test set after the last epoch.
    pub test_accuracy: f32,
    /// Secure comparisons of the trained network.
    pub relus: usize,
    /// Wall-clock seconds of this invocation (training + evaluation).
    pub seconds: f64,
    /// Training throughput over the epochs run in this invocation.
    pub images_per_second: f64,
    /// Epoch the run started from (non-zero when resumed).
    pub resumed_from_epoch: usize,
}

/// Train a freshly initialized network of `spec` (PyTorch-style uniform init, `v = 1`,
/// deterministic from `cfg.seed`). `cluster_maps` supplies the maps of cluster layers.
/// `spec.normalization` is applied to the images: set it for the dataset first.
pub fn train(
    cfg: &TrainConfig,
    spec: &ModelSpec,
    cluster_maps: Option<&ClusterMaps>,
    train_set: &ImageSet,
    test_set: &ImageSet,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, NnError> {
    let init = Model::random(spec.clone(), cluster_maps, cfg.seed)?;
    train_model(cfg, init, train_set, test_set, progress)
}

/// `(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))`.
fn distill_loss(
    student: burn::tensor::Tensor<2>,
    teacher: burn::tensor::Tensor<2>,
    labels: &[u8],
    temperature: f32,
    alpha: f32,
    device: &burn::tensor::Device,
) -> burn::tensor::Tensor<1> {
    use burn::tensor::activation::{log_softmax, softmax};
    let ce = cross_entropy(student.clone(), labels, device);
    let t = temperature as f64;
    let p_t = softmax(teacher.clone().div_scalar(t), 1);
    let log_p_t = log_softmax(teacher.div_scalar(t), 1);
    let log_p_s = log_softmax(student.div_scalar(t), 1);
    let kl = (p_t * (log_p_t - log_p_s)).sum_dim(1).mean();
    ce.mul_scalar(1.0 - alpha as f64) + kl.mul_scalar(alpha as f64 * t * t)
}

const CKPT_MAGIC: &[u8; 8] = b"RSHCKPT1";

#[derive(Serialize, Deserialize)]
struct CkptState {
    epochs_done: usize,
    history: Vec<EpochMetrics>,
    config: TrainConfig,
}

fn ckpt_err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Checkpoint {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn write_checkpoint(
    path: &Path,
    state: &CkptState,
    model: &Model,
    optim: &ModuleOptimizer,
) -> Result<(), NnError> {
    let json = serde_json::to_vec(state).map_err(|e| ckpt_err(path, e.to_string()))?;
    let model = model.to_bytes()?;
    let optim = optim
        .into_bytes()
        .map_err(|e| ckpt_err(path, format!("saving optimizer state: {e:?}")))?;
    let mut out = Vec::with_capacity(32 + json.len() + model.len() + optim.len());
    out.extend_from_slice(CKPT_MAGIC);
    for part in [&json[..], &model[..], &optim[..]] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    relushare_model::io::write_atomic(path, &out)?;
    Ok(())
}

fn read_checkpoint(path: &Path) -> Result<(CkptState, Model, Vec<u8>), NnError> {
    let bytes = std::fs::read(path).map_err(|e| ckpt_err(path, format!("cannot read: {e}")))?;
    if bytes.len() < 8 || &bytes[..8] != CKPT_MAGIC {
        return Err(ckpt_err(
            path,
            "not a relushare training checkpoint (bad magic)",
        ));
    }
    let mut rest = &bytes[8..];
    let mut parts = Vec::new();
    for what in ["state", "model", "optimizer"] {
        if rest.len() < 8 {
            return Err(ckpt_err(
                path,
                format!("truncated before the {what} section"),
            ));
        }
        let n = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
        rest = &rest[8..];
        if rest.len() < n {
            return Err(ckpt_err(path, format!("truncated {what} section")));
        }
        parts.push(&rest[..n]);
        rest = &rest[n..];
    }
    let state: CkptState = serde_json::from_slice(parts[0])
        .map_err(|e| ckpt_err(path, format!("bad state section: {e}")))?;
    let model =
        Model::from_bytes(parts[1]).map_err(|e| ckpt_err(path, format!("bad model: {e}")))?;
    Ok((state, model, parts[2].to_vec()))
}

/// Generator for one epoch and purpose (`stream`), derived from the run's seed.
pub(crate) fn epoch_rng(seed: u64, epoch: usize, stream: u64) -> ChaCha8Rng {
    // SplitMix64 finalizer over (seed, epoch, stream).
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ChaCha8Rng::seed_from_u64(z ^ (z >> 31))
}

fn build_optimizer(cfg: &TrainConfig) -> ModuleOptimizer {
    let wd = (cfg.weight_decay > 0.0).then(|| WeightDecayConfig::new(cfg.weight_decay as f32));
    match cfg.optimizer {
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum((cfg.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(cfg.momentum)
                    .with_dampening(0.0)
            }))
            .with_weight_decay(wd)
            .init(),
        OptimizerKind::Adam => AdamConfig::new().with_weight_decay(wd).init(),
    }
}

/// Train starting from the parameters of `init` (a fresh [`Model::random`], a trained model to
/// fine-tune, or, with `cfg.resume`, whatever the checkpoint holds).
pub fn train_model(
    cfg: &TrainConfig,
    init: Model,
    train_set: &ImageSet,
    test_set: &ImageSet,
    progress: &mut dyn Progress,
) -> Result<TrainOutcome, NnError> {
    cfg.check()?;
    init.validate()?;
    let spec = init.spec.clone();
    check_set(&spec, train_set, "training")?;
    check_set(&spec, test_set, "test")?;
    if train_set.is_empty() {
        return Err(NnError::Invalid("the training set is empty".into()));
    }
    let started = Instant::now();
    let device = cfg.backend.train_device()?;
    let eval_device = device.clone().without_autodiff();

    let mut optim = build_optimizer(cfg);
    let mut history = Vec::new();
    let mut start_epoch = 0;
    let mut model = init;
    if cfg.resume {
        let path = cfg.checkpoint.as_deref().expect("checked");
        if !path.exists() {
            return Err(ckpt_err(
                path,
                "no checkpoint to resume from (run without --resume first)",
            ));
        }
        let (state, ck_model, optim_bytes) = read_checkpoint(path)?;
        if ck_model.spec != spec {
            return Err(ckpt_err(
                path,
                format!(
                    "the checkpoint is of another network ({} {}), not {} {}",
                    ck_model.spec.arch, ck_model.spec.preset, spec.arch, spec.preset
                ),
            ));
        }
        model = ck_model;
        optim = optim
            .from_bytes(Bytes::from_bytes_vec(optim_bytes))
            .map_err(|e| ckpt_err(path, format!("bad optimizer state: {e:?}")))?;
        start_epoch = state.epochs_done;
        history = state.history;
        progress.note(&format!(
            "resumed from {} after epoch {start_epoch} of {}",
            path.display(),
            cfg.epochs
        ));
    }

    let plan = Plan::build(&spec, &model.group_maps, &device)?;
    let eval_plan = plan.on_device(&eval_device)?;
    let teacher = match &cfg.distill {
        Some(d) => {
            d.teacher.validate()?;
            if d.teacher.spec.input != spec.input || d.teacher.spec.num_classes != spec.num_classes
            {
                return Err(NnError::Invalid(format!(
                    "the teacher takes {} images with {} classes, the student {} with {}",
                    d.teacher.spec.input, d.teacher.spec.num_classes, spec.input, spec.num_classes
                )));
            }
            // the teacher runs on the inference device: built on the autodiff device, its
            // untrained-on graph of every batch stayed alive (it grew to the machine's memory)
            let t_plan = Plan::build(&d.teacher.spec, &d.teacher.group_maps, &eval_device)?;
            let t_module = module_from_model(&d.teacher, &eval_device)?;
            Some((t_plan, t_module, d.temperature, d.alpha))
        }
        None => None,
    };
    let mut module = module_from_model(&model, &device)?;
    let (c, h, w) = train_set.dims();
    let n = train_set.len();
    let batches = n.div_ceil(cfg.batch_size);
    let total_steps = batches * cfg.epochs;
    let mut buf = Vec::new();
    let mut trained_images = 0usize;
    let mut train_seconds = 0.0f64;
    let mut test_accuracy = history.last().and_then(|m: &EpochMetrics| m.test_accuracy);

    // Accuracy on the test set, as a fraction (0 for an empty set).
    let test_fraction = |valid: &crate::net::NetModule| -> Result<f32, NnError> {
        let (ok, total) = evaluate_module(
            valid,
            &eval_plan,
            test_set,
            cfg.eval_batch_size,
            cfg.seed ^ 0xE7A1,
        )?;
        Ok(if total == 0 {
            0.0
        } else {
            ok as f32 / total as f32
        })
    };

    for epoch in start_epoch..cfg.epochs {
        progress.start_epoch(epoch + 1, cfg.epochs, batches);
        let t0 = Instant::now();
        let mut data_rng = epoch_rng(cfg.seed, epoch, 1);
        let mut net_rng = epoch_rng(cfg.seed, epoch, 2);
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = data_rng.random_range(0..=i);
            order.swap(i, j);
        }
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let mut lr = cfg.lr;
        for (bi, idx) in order.chunks(cfg.batch_size).enumerate() {
            lr = cfg
                .schedule
                .lr(cfg.lr, epoch, epoch * batches + bi, total_steps);
            fill_batch(
                train_set,
                idx,
                &spec.normalization,
                cfg.augmentation,
                &mut data_rng,
                &mut buf,
            );
            let labels: Vec<u8> = idx.iter().map(|&i| train_set.label(i)).collect();
            let x = images_tensor(buf.clone(), idx.len(), c, h, w, &device);
            let x_teacher = teacher
                .as_ref()
                .map(|_| images_tensor(buf.clone(), idx.len(), c, h, w, &eval_device));
            let mut mode = ForwardMode {
                train: true,
                noise: true,
                temperature: cfg.ste_temperature,
                rng: &mut net_rng,
            };
            let logits = forward(&module, &plan, x, &mut mode);
            let preds = crate::net::argmax_rows(logits.clone().detach())?;
            let loss = match &teacher {
                None => cross_entropy(logits, &labels, &device),
                Some((t_plan, t_module, temp, alpha)) => {
                    let mut t_rng = epoch_rng(cfg.seed, epoch, 3);
                    let mut t_mode = ForwardMode {
                        train: false,
                        noise: false,
                        temperature: cfg.ste_temperature,
                        rng: &mut t_rng,
                    };
                    let x_t = x_teacher.clone().expect("made when there is a teacher");
                    let t_logits = forward(t_module, t_plan, x_t, &mut t_mode);
                    let t_logits =
                        burn::tensor::Tensor::<2>::from_data(t_logits.into_data(), &device);
                    distill_loss(logits, t_logits, &labels, *temp, *alpha, &device)
                }
            };
            let loss_v: f32 = loss.clone().into_scalar();
            if !loss_v.is_finite() {
                return Err(NnError::Diverged {
                    epoch: epoch + 1,
                    loss: loss_v,
                });
            }
            let grads = loss.backward();
            let grads = GradientsParams::from_grads(grads, &module);
            module = optim.step(lr, module, grads);
            loss_sum += loss_v as f64 * idx.len() as f64;
            correct += preds
                .iter()
                .zip(&labels)
                .filter(|(p, l)| **p == **l as usize)
                .count();
            seen += idx.len();
            progress.batch(
                bi + 1,
                (loss_sum / seen as f64) as f32,
                correct as f32 / seen as f32,
            );
        }
        let seconds = t0.elapsed().as_secs_f64();
        train_seconds += seconds;
        trained_images += seen;
        let last = epoch + 1 == cfg.epochs;
        test_accuracy = if cfg.eval_each_epoch || last {
            Some(test_fraction(&module.valid())?)
        } else {
            None
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss: (loss_sum / seen as f64) as f32,
            train_accuracy: correct as f32 / seen as f32,
            test_accuracy,
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
        };
        progress.end_epoch(&metrics);
        history.push(metrics);
        if let Some(path) = &cfg.checkpoint {
            let m = to_model(&module, &plan)?;
            write_checkpoint(
                path,
                &CkptState {
                    epochs_done: epoch + 1,
                    history: history.clone(),
                    config: cfg.clone(),
                },
                &m,
                &optim,
            )?;
        }
    }

    let model = to_model(&module, &plan)?;
    let test_accuracy = match test_accuracy {
        Some(a) => a,
        None => {
            // Resumed after the last epoch: evaluate the checkpoint's model.
            test_fraction(&module.valid())?
        }
    };
    let relus = relushare_model::count(&model.spec)?.total_relus;
    Ok(TrainOutcome {
        train_accuracy: history.last().map(|m| m.train_accuracy).unwrap_or(0.0),
        history,
        test_accuracy,
        relus,
        seconds: started.elapsed().as_secs_f64(),
        images_per_second: if train_seconds > 0.0 {
            trained_images as f64 / train_seconds
        } else {
            0.0
        },
        resumed_from_epoch: start_epoch,
        model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let c = LrSchedule::Cosine;
        assert!((c.lr(0.1, 0, 0, 100) - 0.1).abs() < 1e-12);
        assert!((c.lr(0.1, 0, 50, 100) - 0.05).abs() < 1e-12);
        assert!(c.lr(0.1, 0, 100, 100).abs() < 1e-12);
        let s: LrSchedule = "step:2:0.1".parse().unwrap();
        assert_eq!(
            s,
            LrSchedule::Step {
                every: 2,
                gamma: 0.1
            }
        );
        assert!((s.lr(1.0, 3, 0, 1) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 4, 0, 1) - 0.01).abs() < 1e-12);
        assert_eq!(
            "constant".parse::<LrSchedule>().unwrap().lr(0.3, 9, 9, 10),
            0.3
        );
        assert!("step:x".parse::<LrSchedule>().is_err());
        assert!("linear".parse::<LrSchedule>().is_err());
        assert_eq!("SGD".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
        assert!("rmsprop".parse::<OptimizerKind>().is_err());
    }

    #[test]
    fn epoch_streams_differ_and_repeat() {
        use rand::Rng;
        let a = epoch_rng(1, 0, 1).next_u64();
        assert_eq!(a, epoch_rng(1, 0, 1).next_u64());
        assert_ne!(a, epoch_rng(1, 1, 1).next_u64());
        assert_ne!(a, epoch_rng(1, 0, 2).next_u64());
        assert_ne!(a, epoch_rng(2, 0, 1).next_u64());
    }
}

#[cfg(test)]
mod distill_tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};

    fn logits(v: Vec<f32>, device: &burn::tensor::Device) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v, [2, 3]), device)
    }

    #[test]
    fn distillation_loss_limits() {
        let device = BackendKind::Flex.train_device().unwrap().without_autodiff();
        let s = vec![1.0, -0.5, 2.0, 0.3, 0.1, -1.0];
        let t = vec![0.2, 1.5, -0.3, 2.0, -1.0, 0.5];
        let labels = [2u8, 0];
        let ce: f32 = cross_entropy(logits(s.clone(), &device), &labels, &device).into_scalar();
        // alpha = 0: plain cross-entropy.
        let l0: f32 = distill_loss(
            logits(s.clone(), &device),
            logits(t.clone(), &device),
            &labels,
            4.0,
            0.0,
            &device,
        )
        .into_scalar();
        assert!((l0 - ce).abs() < 1e-5, "{l0} vs {ce}");
        // alpha = 1 and a student equal to the teacher: KL = 0.
        let l1: f32 = distill_loss(
            logits(t.clone(), &device),
            logits(t.clone(), &device),
            &labels,
            4.0,
            1.0,
            &device,
        )
        .into_scalar();
        assert!(l1.abs() < 1e-5, "{l1}");
        // alpha = 1 and a different student: KL > 0, scaled by T^2.
        let l2: f32 = distill_loss(
            logits(s.clone(), &device),
            logits(t.clone(), &device),
            &labels,
            2.0,
            1.0,
            &device,
        )
        .into_scalar();
        // direct computation
        let soft = |v: &[f32], t: f32| -> Vec<f32> {
            let m = v.iter().map(|x| x / t).fold(f32::MIN, f32::max);
            let e: Vec<f32> = v.iter().map(|x| (x / t - m).exp()).collect();
            let z: f32 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let mut kl = 0.0;
        for r in 0..2 {
            let (ps, pt) = (
                soft(&s[r * 3..r * 3 + 3], 2.0),
                soft(&t[r * 3..r * 3 + 3], 2.0),
            );
            for i in 0..3 {
                kl += pt[i] * (pt[i].ln() - ps[i].ln());
            }
        }
        let expect = 4.0 * kl / 2.0;
        assert!((l2 - expect).abs() < 1e-4, "{l2} vs {expect}");
    }

    #[test]
    fn distillation_checks_settings_and_shapes() {
        let spec =
            relushare_model::presets::build(relushare_model::Arch::Fmnist, "uniform32").unwrap();
        let teacher = Model::random(
            relushare_model::presets::build(relushare_model::Arch::Svhn, "original").unwrap(),
            None,
            1,
        )
        .unwrap();
        let set = relushare_data::synthetic((1, 28, 28), 8, 1, relushare_data::Split::Train);
        let mut cfg = TrainConfig {
            epochs: 1,
            distill: Some(Distill {
                teacher,
                temperature: 4.0,
                alpha: 0.5,
            }),
            ..TrainConfig::default()
        };
        let e = train(&cfg, &spec, None, &set, &set, &mut NoProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("teacher"), "{e}");
        cfg.distill.as_mut().unwrap().alpha = 1.5;
        let e = train(&cfg, &spec, None, &set, &set, &mut NoProgress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("alpha"), "{e}");
        // A matching teacher trains.
        cfg.distill = Some(Distill {
            teacher: Model::random(
                relushare_model::presets::build(relushare_model::Arch::Fmnist, "original").unwrap(),
                None,
                2,
            )
            .unwrap(),
            temperature: 4.0,
            alpha: 0.5,
        });
        let out = train(&cfg, &spec, None, &set, &set, &mut NoProgress).unwrap();
        assert_eq!(out.history.len(), 1);
    }
}
