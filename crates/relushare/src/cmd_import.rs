//! `relushare import`: an ONNX model (as `torch.onnx.export` writes it) -> a relushare model
//! file, with the input normalisation and class names stored in it. The conversion is
//! `relushare_onnx`; this only reads the options and prints the result.
//!
//! ```sh
//! relushare import --onnx model.onnx --out model.safetensors [--mean 0.49,0.48,0.45 --std 0.25,0.24,0.26] [--classes names.txt] [--json]
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use relushare_model::{count, Normalization};
use relushare_onnx::{import_file, ImportOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX file (opsets 11-23; Conv, Gemm, MatMul+Add, Relu, AveragePool,
    /// GlobalAveragePool, MaxPool, BatchNormalization, Add, Flatten, Reshape, Dropout, Identity,
    /// Constant).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The model file to write (safetensors with the JSON spec).
    #[arg(long)]
    pub out: PathBuf,
    /// Per-channel mean of the input normalisation, pixels scaled to [0, 1] first
    /// (e.g. 0.49,0.48,0.45); default 0 (with --std 1: the pixels as they are).
    #[arg(long, value_delimiter = ',', requires = "std")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation of the input normalisation (e.g. 0.25,0.24,0.26).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Option<Vec<f32>>,
    /// Class names, one per line, in output order (printed by infer, eval and count).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn read_classes(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the class names {}", path.display()))?;
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while names.last().is_some_and(|l| l.is_empty()) {
        names.pop();
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        bail!(
            "{}: line {} is empty (one class name per line)",
            path.display(),
            i + 1
        );
    }
    Ok(names)
}

pub fn run(a: Args) -> Result<()> {
    let normalization = match (a.mean, a.std) {
        (Some(mean), Some(std)) => {
            if mean.len() != std.len() {
                bail!(
                    "--mean has {} values and --std {}: give one per input channel",
                    mean.len(),
                    std.len()
                );
            }
            if let Some(s) = std.iter().find(|s| !(**s > 0.0 && s.is_finite())) {
                bail!("--std must be positive, got {s}");
            }
            if mean.iter().any(|m| !m.is_finite()) {
                bail!("--mean must be finite");
            }
            Some(Normalization { mean, std })
        }
        _ => None,
    };
    let class_names = match &a.classes {
        Some(p) => read_classes(p)?,
        None => Vec::new(),
    };
    let imp = import_file(
        &a.onnx,
        &ImportOptions {
            normalization,
            class_names,
        },
    )
    .with_context(|| format!("importing {}", a.onnx.display()))?;
    let m = &imp.model;
    m.save(&a.out)
        .with_context(|| format!("writing {}", a.out.display()))?;
    let rows = imp.rows()?;
    let c = count(&m.spec)?;
    if a.json {
        let j = serde_json::json!({
            "onnx": a.onnx.display().to_string(),
            "out": a.out.display().to_string(),
            "producer": imp.producer,
            "opset": imp.opset,
            "input": [m.spec.input.c, m.spec.input.h, m.spec.input.w],
            "num_classes": m.spec.num_classes,
            "class_names": m.spec.class_names,
            "normalization": m.spec.normalization,
            "layers": rows.iter().map(|r| serde_json::json!({
                "name": r.layer,
                "kind": r.kind,
                "onnx_node": r.node,
                "onnx_op": r.op,
                "output": [r.output.c, r.output.h, r.output.w],
            })).collect::<Vec<_>>(),
            "relus": c.layers.iter().map(|l| serde_json::json!({
                "name": l.name,
                "comparisons": l.relus,
            })).collect::<Vec<_>>(),
            "total_relus": c.total_relus,
            "maxpool_comparisons": c.maxpool_comparisons,
            "total_comparisons": c.total_comparisons(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{} ({}, opset {}): input {}, {} classes, {} layers",
        a.onnx.display(),
        if imp.producer.is_empty() {
            "unknown producer"
        } else {
            &imp.producer
        },
        imp.opset,
        m.spec.input,
        m.spec.num_classes,
        m.spec.layers.len()
    );
    let w = rows.iter().map(|r| r.layer.len()).max().unwrap_or(0).max(5);
    let wk = rows.iter().map(|r| r.kind.len()).max().unwrap_or(0).max(4);
    println!(
        "{:<w$}  {:<wk$}  {:>12}  onnx node",
        "layer", "kind", "output"
    );
    for r in &rows {
        println!(
            "{:<w$}  {:<wk$}  {:>12}  {} ({})",
            r.layer,
            r.kind,
            r.output.to_string(),
            r.node,
            r.op
        );
    }
    println!(
        "ReLUs ({} layers, name them in --spec, e.g. \"{}=channel\"):",
        c.layers.len(),
        c.layers.first().map_or("relu1", |l| l.name.as_str())
    );
    for l in &c.layers {
        println!("  {:<w$} {:>9} comparisons", l.name, l.relus);
    }
    if c.maxpool_comparisons > 0 {
        println!(
            "comparisons: {} ({} ReLU + {} max pool)",
            c.total_comparisons(),
            c.total_relus,
            c.maxpool_comparisons
        );
    } else {
        println!("comparisons: {}", c.total_relus);
    }
    if !m.spec.class_names.is_empty() {
        println!("classes: {}", m.spec.class_names.join(", "));
    }
    println!("wrote {}", a.out.display());
    Ok(())
}
