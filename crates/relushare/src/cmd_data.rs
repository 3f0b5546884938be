//! `relushare data`: download the official dataset files (`fetch`) and inspect a data
//! directory (`info`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use relushare_data::{
    fetch_local, fetch_or_local, load, local_copies, normalization, DatasetName, FileAction, Split,
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Download a dataset's official files into --data-dir, verify their MD5 checksums and unpack
    /// them. Safe to re-run: verified files are not downloaded again.
    Fetch(FetchArgs),
    /// Load a split of a dataset and show its size, class counts, normalisation and warnings.
    Info(InfoArgs),
}

#[derive(clap::Args)]
pub struct FetchArgs {
    /// Dataset: cifar10, svhn or fmnist (synthetic needs no download).
    #[arg(long)]
    pub dataset: DatasetName,
    /// Directory to put the files in (created if missing); pass the same --data-dir to
    /// train/eval.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Base URL of a mirror holding the same files (the checksums are still the official ones).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Take the files from this local folder instead of downloading (verified by checksum;
    /// Fashion-MNIST by the SHA-256 of its decompressed bytes, so repacked .gz files pass).
    /// Without it, a failed Fashion-MNIST download falls back to Debian's
    /// dataset-fashion-mnist folder when it is installed.
    #[arg(long, conflicts_with = "mirror")]
    pub from: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Dataset: cifar10, svhn, fmnist or synthetic.
    #[arg(long)]
    pub dataset: DatasetName,
    /// Data directory (as given to `data fetch`); not needed for synthetic.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Split: train or test.
    #[arg(long, default_value = "train")]
    pub split: Split,
    /// Use at most N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Image dims of synthetic data, CxHxW.
    #[arg(long, default_value = "3x32x32", value_parser = parse_dims)]
    pub dims: (usize, usize, usize),
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses "CxHxW".
pub fn parse_dims(s: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    let bad = || format!("`{s}` is not CxHxW (e.g. 3x32x32 or 1x28x28)");
    if parts.len() != 3 {
        return Err(bad());
    }
    let n: Vec<usize> = parts
        .iter()
        .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    Ok((n[0], n[1], n[2]))
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        DataCommand::Fetch(a) => run_fetch(a),
        DataCommand::Info(a) => run_info(a),
    }
}

fn run_fetch(a: FetchArgs) -> Result<()> {
    let report = match &a.from {
        Some(src) => fetch_local(a.dataset, &a.data_dir, src),
        None => fetch_or_local(
            a.dataset,
            &a.data_dir,
            a.mirror.as_deref(),
            &local_copies(a.dataset),
            !a.no_progress,
        ),
    }
    .with_context(|| {
        format!(
            "fetching {} into {} failed",
            a.dataset,
            a.data_dir.display()
        )
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.files.is_empty() {
        println!(
            "{}: nothing to download (it is generated in memory)",
            a.dataset
        );
        return Ok(());
    }
    for f in &report.files {
        let what = match f.action {
            FileAction::Downloaded => "downloaded",
            FileAction::AlreadyPresent => "verified (already present)",
            FileAction::Unpacked => "unpacked",
            FileAction::AlreadyUnpacked => "present (unpacked earlier)",
            FileAction::Copied => "copied and verified",
        };
        println!("{what:<28} {:>12} bytes  {}", f.bytes, f.path.display());
    }
    if let Some(n) = &report.note {
        println!("note: {n}");
    }
    println!(
        "{}: ready in {} ({:.1} MB downloaded now)",
        a.dataset,
        a.data_dir.display(),
        report.downloaded_bytes as f64 / 1e6
    );
    Ok(())
}

fn run_info(a: InfoArgs) -> Result<()> {
    let loaded = load(a.dataset, a.split, a.data_dir.as_deref(), a.limit, a.dims)
        .with_context(|| format!("loading {} {}", a.dataset, a.split))?;
    let set = &loaded.set;
    let norm = normalization(a.dataset, set.channels);
    let counts = set.class_counts();
    if a.json {
        let v = serde_json::json!({
            "dataset": a.dataset,
            "split": a.split,
            "count": set.len(),
            "dims": [set.channels, set.height, set.width],
            "num_classes": set.num_classes,
            "class_counts": counts,
            "normalization": norm,
            "warnings": loaded.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{} {}: {} images of {}x{}x{}, {} classes",
        a.dataset,
        a.split,
        set.len(),
        set.channels,
        set.height,
        set.width,
        set.num_classes
    );
    println!("class counts: {counts:?}");
    println!("normalization: mean {:?} std {:?}", norm.mean, norm.std);
    Ok(())
}
