//! `relushare count`: secure comparisons and multiplications per layer, from the spec.

use std::path::PathBuf;

use anyhow::{Context, Result};
use relushare_model::{count, presets, Arch, Model, ModelSpec};

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: cifar10, svhn, fmnist, resnet20 or resnet18.
    #[arg(long, required_unless_present = "model")]
    pub arch: Option<Arch>,
    /// Preset (original, uniform3, uniform4, uniform32, layer1-only, layer2-only, noise,
    /// fc-noise, shafran, adaptive256, cluster8x8k8, cluster-mixed).
    #[arg(long, default_value = "original")]
    pub preset: String,
    /// Free-form per-layer spec applied on top of the preset, e.g. "act1=patch3,act2=channel:fc:noise0.2".
    #[arg(long)]
    pub spec: Option<String>,
    /// Count a saved model file (trained or imported) instead of an architecture/preset;
    /// --spec applies on top of it (e.g. "relu3=channel" on an imported model).
    #[arg(long, conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The spec selected by --arch/--preset/--spec or --model.
pub fn spec_from(
    arch: Option<Arch>,
    preset: &str,
    freeform: Option<&str>,
    model: Option<&PathBuf>,
) -> Result<ModelSpec> {
    let mut spec = match model {
        Some(p) => Model::load(p)?.spec,
        None => {
            let arch =
                arch.context("--arch is required (cifar10, svhn, fmnist, resnet20 or resnet18)")?;
            presets::build(arch, preset)?
        }
    };
    if let Some(f) = freeform {
        presets::apply_freeform(&mut spec, f)?;
    }
    Ok(spec)
}

pub fn run(a: Args) -> Result<()> {
    let spec = spec_from(a.arch, &a.preset, a.spec.as_deref(), a.model.as_ref())?;
    let c = count(&spec)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(());
    }
    println!("{} / {}", c.arch, c.preset);
    let w = c
        .layers
        .iter()
        .map(|l| l.name.len())
        .chain(c.max_pools.iter().map(|p| p.name.len()))
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<w$} {:<44} {:>11} {:>11} {:>9} {:>11}",
        "layer", "kind", "activations", "comparisons", "per chan", "mults"
    );
    for l in &c.layers {
        println!(
            "{:<w$} {:<44} {:>11} {:>11} {:>9} {:>11}",
            l.name, l.kind, l.activations, l.relus, l.relus_per_channel, l.mults
        );
    }
    println!(
        "{:<w$} {:<44} {:>11} {:>11} {:>9} {:>11}",
        "total", "", "", c.total_relus, "", c.total_mults
    );
    if !c.max_pools.is_empty() {
        println!("max pooling (comparisons counted apart from the ReLUs):");
        for p in &c.max_pools {
            println!(
                "{:<w$} {:<44} {:>11} {:>11} {:>9}",
                p.name,
                format!("max pool, tree depth {}", p.depth),
                p.outputs,
                p.comparisons,
                ""
            );
        }
        println!(
            "all comparisons: {} ReLU decisions + {} max-pool = {}",
            c.total_relus,
            c.maxpool_comparisons,
            c.total_comparisons()
        );
    }
    if !spec.class_names.is_empty() {
        println!("classes: {}", spec.class_names.join(", "));
    }
    Ok(())
}
