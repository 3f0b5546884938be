//! The model a command runs: a trained model file, or an architecture/preset with freshly
//! initialised weights (for benchmarks without a trained model). Shared by `infer` and `party`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use relushare_model::{presets, Arch, ClusterMaps, Model};

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model file written by `relushare train` or `relushare import` (with --random-weights:
    /// its network with fresh weights).
    #[arg(long, conflicts_with = "arch")]
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
    /// Use freshly initialised weights for --arch/--preset, or for the network of --model.
    #[arg(long)]
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
        let file = match &self.model {
            Some(p) => {
                let m = Model::load(p).with_context(|| format!("loading model {}", p.display()))?;
                if !self.random_weights {
                    return Ok(Some(m));
                }
                Some(m.spec)
            }
            None => None,
        };
        if !self.random_weights {
            return Ok(None);
        }
        let mut spec = match file {
            Some(spec) => spec,
            None => {
                let arch = self
                    .arch
                    .context("--random-weights needs --arch (or --model for a file's network)")?;
                presets::build(arch, &self.preset)?
            }
        };
        if let Some(free) = &self.spec {
            let preset = spec.preset.clone();
            presets::apply_freeform(&mut spec, free)?;
            spec.preset = format!("{preset}+{free}");
        }
        let maps = self.cluster_maps()?;
        Ok(Some(Model::random(spec, maps.as_ref(), self.seed)?))
    }

    /// The maps of --cluster-map, if given.
    fn cluster_maps(&self) -> Result<Option<ClusterMaps>> {
        self.cluster_map
            .as_ref()
            .map(|p| {
                ClusterMaps::load(p).with_context(|| format!("loading cluster map {}", p.display()))
            })
            .transpose()
    }

    /// As [`ModelArgs::load`]; a model with random weights gets the normalization of its
    /// architecture's dataset (a trained model file carries its own).
    pub fn load_normalized(&self) -> Result<Option<Model>> {
        let Some(mut m) = self.load()? else {
            return Ok(None);
        };
        if self.random_weights
            && self.model.is_none()
            && m.spec
                .arch
                .name()
                .parse::<relushare_data::DatasetName>()
                .is_ok()
        {
            m.spec.normalization = relushare_experiments::secure::random_weights_normalization(
                &m.spec,
                relushare_data::DatasetName::Synthetic,
            );
        }
        Ok(Some(m))
    }
}
