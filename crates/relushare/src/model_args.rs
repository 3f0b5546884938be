//! The model a command runs: a trained model file, or an architecture/preset with freshly
//! initialised weights (for benchmarks without a trained model). Shared by `infer` and `party`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use relushare_model::{presets, Arch, ClusterMaps, Model};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file written by `relushare train`.
    #[arg(long, conflicts_with_all = ["arch", "random_weights"])]
    pub model: Option<PathBuf>,
    /// Architecture (cifar10, svhn, fmnist, resnet20, resnet18) for a model with random weights.
    #[arg(long, requires = "random_weights")]
    pub arch: Option<Arch>,
    /// Preset of --arch (original, uniform32, fc-noise, ...).
    #[arg(long, default_value = "original")]
    pub preset: String,
    /// Per-layer ReLU sharing on top of --preset, e.g. "relu1=patch4,relu2=channel" (see
    /// `relushare count --help`); with --random-weights.
    #[arg(long, requires = "random_weights")]
    pub spec: Option<String>,
    /// Use freshly initialised weights for --arch/--preset; requires --arch.
    #[arg(long, requires = "arch")]
    pub random_weights: bool,
    /// Cluster-map file (from `relushare cluster`) for cluster presets with --random-weights.
    #[arg(long)]
    pub cluster_map: Option<PathBuf>,
    /// Seed of --random-weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl ModelArgs {
    /// The selected model, or `None` when neither `--model` nor `--random-weights` is given.
    pub fn load(&self) -> Result<Option<Model>> {
        if let Some(p) = &self.model {
            return Model::load(p)
                .with_context(|| format!("loading model {}", p.display()))
                .map(Some);
        }
        if !self.random_weights {
            return Ok(None);
        }
        let arch = self.arch.context("--random-weights needs --arch")?;
        let mut spec = presets::build(arch, &self.preset)?;
        if let Some(free) = &self.spec {
            presets::apply_freeform(&mut spec, free)?;
            spec.preset = format!("{}+{free}", spec.preset);
        }
        let maps = match &self.cluster_map {
            Some(p) => Some(
                ClusterMaps::load(p)
                    .with_context(|| format!("loading cluster map {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Some(Model::random(spec, maps.as_ref(), self.seed)?))
    }

    /// As [`ModelArgs::load`]; a model with random weights gets the normalization of its
    /// architecture's dataset (a trained model file carries its own).
    pub fn load_normalized(&self) -> Result<Option<Model>> {
        let Some(mut m) = self.load()? else {
            return Ok(None);
        };
        if self.random_weights {
            if let Ok(d) = m.spec.arch.name().parse::<relushare_data::DatasetName>() {
                let n = relushare_data::normalization(d, m.spec.input.c);
                m.spec.normalization = relushare_model::Normalization {
                    mean: n.mean,
                    std: n.std,
                };
            }
        }
        Ok(Some(m))
    }
}
