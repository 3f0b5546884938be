//! Accuracy of a model on a labelled image set (noise flips of noisy layers are drawn, as in
//! the paper's evaluation, from a seeded generator).

use std::time::Instant;

use burn::tensor::Tensor;
use relushare_data::ImageSet;
use relushare_model::{Model, ModelSpec};

use crate::backend::BackendKind;
use crate::batch::{fill_batch, Augmentation};
use crate::net::{argmax_rows, forward, images_tensor, ForwardMode, Net, NetModule, Plan};
use crate::train::epoch_rng;
use crate::NnError;

/// How to evaluate.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub batch_size: usize,
    pub backend: BackendKind,
    /// Seed of the noise flips (noisy sharing layers only).
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            batch_size: 256,
            backend: BackendKind::Flex,
            seed: 1,
        }
    }
}

/// Result of an evaluation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Fraction of correctly classified images.
    pub accuracy: f32,
    pub correct: usize,
    pub total: usize,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// Check that a set fits a spec (dims and classes).
pub(crate) fn check_set(spec: &ModelSpec, set: &ImageSet, what: &str) -> Result<(), NnError> {
    let d = spec.input;
    if set.dims() != (d.c, d.h, d.w) {
        return Err(NnError::Invalid(format!(
            "the {what} images are {}x{}x{} but the {} network expects {d}: use the matching dataset",
            set.channels, set.height, set.width, spec.arch
        )));
    }
    if set.num_classes > spec.num_classes {
        return Err(NnError::Invalid(format!(
            "the {what} set has {} classes, the network outputs {}",
            set.num_classes, spec.num_classes
        )));
    }
    Ok(())
}

/// Correct predictions and total on `set` for a module on a non-autodiff device.
pub(crate) fn evaluate_module(
    module: &NetModule,
    plan: &Plan,
    set: &ImageSet,
    batch_size: usize,
    seed: u64,
) -> Result<(usize, usize), NnError> {
    let (c, h, w) = set.dims();
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut buf = Vec::new();
    let mut rng = epoch_rng(seed, 0, 3);
    let mut correct = 0;
    for chunk in idx.chunks(batch_size.max(1)) {
        fill_batch(
            set,
            chunk,
            &plan.spec.normalization,
            Augmentation::None,
            &mut rng,
            &mut buf,
        );
        let x = images_tensor(buf.clone(), chunk.len(), c, h, w, &plan.device);
        let mut mode = ForwardMode {
            train: false,
            noise: true,
            temperature: 1.0,
            rng: &mut rng,
        };
        let preds = argmax_rows(forward(module, plan, x, &mut mode))?;
        correct += preds
            .iter()
            .zip(chunk)
            .filter(|(p, &i)| **p == set.label(i) as usize)
            .count();
    }
    Ok((correct, set.len()))
}

/// Accuracy (fraction) of `model` on `set`.
pub fn evaluate(model: &Model, set: &ImageSet, cfg: &EvalConfig) -> Result<f32, NnError> {
    Ok(evaluate_detailed(model, set, cfg)?.accuracy)
}

/// Accuracy with counts and timing.
pub fn evaluate_detailed(
    model: &Model,
    set: &ImageSet,
    cfg: &EvalConfig,
) -> Result<Evaluation, NnError> {
    check_set(&model.spec, set, "evaluation")?;
    if cfg.batch_size == 0 {
        return Err(NnError::Invalid("batch size must be at least 1".into()));
    }
    let t0 = Instant::now();
    let net = Net::from_model(model, &cfg.backend.device()?)?;
    let (correct, total) = evaluate_module(&net.module, &net.plan, set, cfg.batch_size, cfg.seed)?;
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Evaluation {
        accuracy: if total == 0 {
            0.0
        } else {
            correct as f32 / total as f32
        },
        correct,
        total,
        seconds,
        images_per_second: total as f64 / seconds.max(1e-9),
    })
}

impl Net {
    /// Logits of `n` normalized CHW images (concatenated), inference mode. `noise` applies
    /// the flips of noisy layers (drawn from `seed`).
    pub fn logits(
        &self,
        images: &[f32],
        n: usize,
        noise: bool,
        seed: u64,
    ) -> Result<Vec<Vec<f32>>, NnError> {
        let d = self.plan.spec.input;
        if images.len() != n * d.len() {
            return Err(NnError::Invalid(format!(
                "{} values for {n} images of {d}",
                images.len()
            )));
        }
        let x = images_tensor(images.to_vec(), n, d.c, d.h, d.w, self.device());
        let mut rng = epoch_rng(seed, 0, 4);
        let mut mode = ForwardMode {
            train: false,
            noise,
            temperature: 1.0,
            rng: &mut rng,
        };
        let y: Tensor<2> = self.forward(x, &mut mode);
        let k = y.dims()[1];
        let v = y
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| NnError::Backend(format!("reading logits: {e:?}")))?;
        Ok(v.chunks(k).map(|r| r.to_vec()).collect())
    }
}
