//! `relushare cluster`: data-driven ReLU groups. Runs a trained (plain-ReLU) model over the
//! training images, records every activation's ReLU response per image (bit-packed), clusters
//! each channel's activations by Hamming distance with single linkage (the paper's
//! agglomerative procedure, via a minimum spanning tree) and writes a cluster-map file for the
//! cluster presets (`adaptive256`, `cluster8x8k8`, `cluster-mixed`, free-form `clusterK`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use relushare_analysis::cluster::{cluster_layer, windows, ClusterParams};
use relushare_analysis::{plot, trace};
use relushare_data::{DatasetName, Split};
use relushare_model::{ClusterMaps, Model};
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Trained model file whose activations are clustered (normally the `original` preset).
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset whose training split is used: cifar10, svhn, fmnist or synthetic.
    #[arg(long)]
    pub dataset: DatasetName,
    /// Directory holding the dataset files (see `relushare data fetch`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Activation layer(s) to cluster, e.g. `act2` or `act1,act2`.
    #[arg(long, value_delimiter = ',', required = true)]
    pub layer: Vec<String>,
    /// Clusters per channel (or per window with --window).
    #[arg(long)]
    pub k: usize,
    /// Cluster every non-overlapping MxM window into K clusters (Table 7's (8x8, 8)).
    #[arg(long)]
    pub window: Option<usize>,
    /// Use only the first N training images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output cluster-map file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Keep the other layers of an existing --out file (replace only the clustered layers).
    #[arg(long)]
    pub append: bool,
    /// Also draw each layer's cluster maps (Figure 4) and an input / response / clusters
    /// triple (Figure 2) into this directory.
    #[arg(long)]
    pub figures: Option<PathBuf>,
    /// Channel shown in the Figure 2 triple.
    #[arg(long, default_value_t = 0)]
    pub channel: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct LayerReport {
    layer: String,
    dims: [usize; 3],
    k: usize,
    window: Option<usize>,
    groups_per_channel: usize,
    total_groups: usize,
    distances: u64,
    popcount_words: u64,
    cluster_seconds: f64,
}

#[derive(Serialize)]
struct Report {
    model: String,
    dataset: String,
    images: usize,
    trace_seconds: f64,
    layers: Vec<LayerReport>,
    out: String,
    figures: Vec<String>,
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({eta} left)")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

pub fn run(a: Args) -> Result<()> {
    let model = Model::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let d = model.spec.input;
    if let Some(want) = a.dataset.dims() {
        if want != (d.c, d.h, d.w) {
            bail!(
                "{} images are {}x{}x{} but the model ({}) expects {d}",
                a.dataset,
                want.0,
                want.1,
                want.2,
                model.spec.arch
            );
        }
    }
    for l in &a.layer {
        let (i, _) = trace::act_layer(&model, l)?;
        if !matches!(
            &model.spec.layers[i],
            relushare_model::Layer::Act {
                kind: relushare_model::ActKind::Relu,
                ..
            }
        ) {
            eprintln!(
                "warning: {l} of this model is not a plain ReLU; clustering uses the sign of its pre-activation anyway"
            );
        }
    }
    let loaded = relushare_data::load(
        a.dataset,
        Split::Train,
        a.data_dir.as_deref(),
        a.limit,
        (d.c, d.h, d.w),
    )?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    let set = loaded.set;
    let n = set.len();

    let t0 = Instant::now();
    let pb = bar(n as u64, "trace");
    let pbm = Mutex::new(pb.clone());
    let responses = trace::relu_responses(&model, &set, &a.layer, &|done| {
        if let Ok(p) = pbm.lock() {
            p.set_position(done as u64);
        }
    })?;
    pb.finish_and_clear();
    let trace_seconds = t0.elapsed().as_secs_f64();

    let mut maps = if a.append && a.out.exists() {
        ClusterMaps::load(&a.out)?
    } else {
        ClusterMaps::default()
    };
    let params = ClusterParams {
        k: a.k,
        window: a.window,
    };
    let mut layers = Vec::new();
    let mut clusterings = Vec::new();
    for r in &responses {
        let t = Instant::now();
        let spinner = ProgressBar::new_spinner();
        spinner.set_message(format!("clustering {} ({} channels)", r.layer, r.dims.c));
        spinner.enable_steady_tick(std::time::Duration::from_millis(200));
        let c = cluster_layer(&r.bits, (r.dims.c, r.dims.h, r.dims.w), params)
            .with_context(|| format!("clustering {}", r.layer))?;
        spinner.finish_and_clear();
        let secs = t.elapsed().as_secs_f64();
        let distances: u64 = windows(r.dims.h, r.dims.w, a.window)
            .iter()
            .map(|w| (w.len() * w.len().saturating_sub(1) / 2) as u64)
            .sum::<u64>()
            * r.dims.c as u64;
        maps.insert(&r.layer, c.to_model())?;
        layers.push(LayerReport {
            layer: r.layer.clone(),
            dims: [r.dims.c, r.dims.h, r.dims.w],
            k: a.k,
            window: a.window,
            groups_per_channel: c.clusters_per_channel[0],
            total_groups: c.total_groups(),
            distances,
            popcount_words: distances * r.bits.words() as u64,
            cluster_seconds: secs,
        });
        clusterings.push(c);
    }
    maps.save(&a.out)?;

    let mut figures = Vec::new();
    if let Some(dir) = &a.figures {
        for (r, c) in responses.iter().zip(&clusterings) {
            let grid = dir.join(format!("{}_clusters.png", r.layer));
            let title = format!(
                "{} cluster maps: {} channels, k = {}{} ({} training images)",
                r.layer,
                r.dims.c,
                a.k,
                a.window
                    .map(|m| format!(" per {m}x{m} window"))
                    .unwrap_or_default(),
                n
            );
            let ch = a.channel.min(r.dims.c - 1);
            let plane = r.dims.h * r.dims.w;
            let response: Vec<bool> = (0..plane).map(|p| r.bits.get(ch * plane + p, 0)).collect();
            let triple = dir.join(format!("{}_triple.png", r.layer));
            let res = plot::cluster_grid(&c.ids, (r.dims.c, r.dims.h, r.dims.w), &title, &grid)
                .and_then(|_| {
                    plot::triple_figure(
                        set.image(0),
                        set.dims(),
                        &response,
                        &c.ids[ch * plane..(ch + 1) * plane],
                        (r.dims.h, r.dims.w),
                        &format!("{} channel {ch}: training image 0, its ReLU response, the channel's clusters", r.layer),
                        &triple,
                    )
                });
            match res {
                Ok(()) => {
                    figures.push(grid.display().to_string());
                    figures.push(triple.display().to_string());
                }
                Err(e) => eprintln!("warning: figures for {} not drawn: {e}", r.layer),
            }
        }
    }

    let report = Report {
        model: a.model.display().to_string(),
        dataset: a.dataset.to_string(),
        images: n,
        trace_seconds,
        layers,
        out: a.out.display().to_string(),
        figures,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "traced {} {} training images in {:.1} s ({:.1} ms/image, {} threads)",
        n,
        report.dataset,
        trace_seconds,
        1e3 * trace_seconds / n.max(1) as f64,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<6} {:>12} {:>5} {:>7} {:>10} {:>12} {:>14} {:>9}",
        "layer", "dims", "k", "window", "per chan", "groups", "distances", "seconds"
    );
    for l in &report.layers {
        println!(
            "{:<6} {:>12} {:>5} {:>7} {:>10} {:>12} {:>14} {:>9.2}",
            l.layer,
            format!("{}x{}x{}", l.dims[0], l.dims[1], l.dims[2]),
            l.k,
            l.window
                .map(|m| format!("{m}x{m}"))
                .unwrap_or_else(|| "-".into()),
            l.groups_per_channel,
            l.total_groups,
            l.distances,
            l.cluster_seconds
        );
    }
    println!("wrote {}", report.out);
    for f in &report.figures {
        println!("wrote {f}");
    }
    Ok(())
}
