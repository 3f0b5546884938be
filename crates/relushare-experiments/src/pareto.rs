//! `relushare pareto`: the front of test accuracy against secure comparisons against `fast`
//! bytes per image, over the rows that `relushare reproduce` trained (paper rows, free-form
//! `--spec-row` rows, `--relu-budget` candidates, distilled rows), with the paper's points.
//!
//! Inputs are reproduce output folders: every `models/<row>.json` record there (written when a
//! row finishes) is one seed of one row. Rows are grouped by (preset or free-form spec,
//! distilled or not); the accuracy is the mean over the seeds found. Comparisons come from
//! [`relushare_model::count`]; bytes are measured: the `fast` suite classifies one image in
//! process with the row's first-seed model (its bytes do not depend on the image) and the
//! online plus offline bytes are recorded. The front is over all three axes: a point is on it
//! when no other point is at least as good on accuracy, comparisons and bytes and better on one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use relushare_analysis::paper::PaperNumbers;
use relushare_analysis::{plot, report};
use relushare_data::{synthetic, Split};
use relushare_model::{count, presets, Arch, Model};
use relushare_mpc::fixed::DEFAULT_FRAC_BITS;
use relushare_mpc::protocol::Protocol;
use serde::Serialize;

use crate::reproduce::{read_json, TrainRecord};
use crate::secure::run_secure;

#[derive(clap::Args)]
pub struct Args {
    /// A `relushare reproduce --out` folder whose trained rows join the front (repeatable).
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Dataset of the front: cifar10, svhn or fmnist.
    #[arg(long)]
    pub dataset: String,
    /// Write the front as the `pareto` key of this JSON file (its other keys are kept).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Write the figures: accuracy against comparisons here, and accuracy against `fast`
    /// megabytes as `<stem>-bytes.png` beside it.
    #[arg(long)]
    pub figure: Option<PathBuf>,
    /// Write a markdown table of the front here.
    #[arg(long)]
    pub doc: Option<PathBuf>,
    /// Seeds a point needs before it can meet the target (mean over that many seeds).
    #[arg(long, default_value_t = 3)]
    pub target_seeds: usize,
}

/// One row of ours on the front's plot.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub who: &'static str,
    /// `original`, a preset, or `original + <spec>`; `(distilled)` when trained with a teacher.
    pub name: String,
    /// The free-form spec on `original`, for rows that are not presets.
    pub spec: Option<String>,
    pub distilled: bool,
    pub comparisons: usize,
    /// `fast` online + offline bytes per image, measured.
    pub fast_bytes: f64,
    pub fast_online_bytes: f64,
    pub accuracy_mean: f64,
    pub accuracy_std: f64,
    pub accuracies: Vec<f64>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    /// Model file of the first seed.
    pub model: String,
    pub on_front: bool,
}

/// A point of the paper's (their accuracy at the comparison count of the same grouping).
#[derive(Debug, Clone, Serialize)]
pub struct PaperPoint {
    pub who: &'static str,
    pub name: String,
    pub table: String,
    pub comparisons: usize,
    pub accuracy: f64,
}

/// The goal issue 14 sets: at most a tenth of `original`'s comparisons at the paper's
/// `uniform3` accuracy or better, as a mean of `seeds` seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub max_comparisons: usize,
    pub min_accuracy: f64,
    pub seeds: usize,
    /// Names of our points that meet it.
    pub met_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Front {
    pub dataset: String,
    pub data_source: String,
    pub note: String,
    pub points: Vec<Point>,
    pub paper: Vec<PaperPoint>,
    pub target: Option<Target>,
    pub command: String,
}

/// Seeds of one row, gathered over the run folders.
struct Group {
    preset: String,
    distilled: bool,
    records: Vec<(PathBuf, TrainRecord)>,
}

fn gather(runs: &[PathBuf], dataset: &str) -> Result<(Vec<Group>, String)> {
    let mut groups: Vec<Group> = Vec::new();
    let mut sources: Vec<String> = Vec::new();
    for run in runs {
        let dir = run.join("models");
        let entries = std::fs::read_dir(&dir).with_context(|| {
            format!(
                "reading {} (expected a `relushare reproduce --out` folder)",
                dir.display()
            )
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            // other JSON files (e.g. a model's spec) are not training records
            let Some(rec) = read_json::<TrainRecord>(&f) else {
                continue;
            };
            let model = f.with_extension("safetensors");
            if rec.settings.dataset != dataset || !model.exists() {
                continue;
            }
            if !sources.contains(&rec.settings.data_source) {
                sources.push(rec.settings.data_source.clone());
            }
            let distilled = rec.settings.teacher_hash.is_some();
            let g = match groups
                .iter_mut()
                .find(|g| g.preset == rec.settings.preset && g.distilled == distilled)
            {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        preset: rec.settings.preset.clone(),
                        distilled,
                        records: Vec::new(),
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            // the same training found in two folders counts once
            if g.records.iter().any(|(_, r)| r.settings == rec.settings) {
                continue;
            }
            g.records.push((model, rec));
        }
    }
    if groups.is_empty() {
        bail!(
            "no trained {dataset} rows under {}",
            runs.iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // rows trained with different data or epochs must not be averaged together
    for g in &groups {
        let (_, first) = &g.records[0];
        if let Some((_, r)) = g.records.iter().find(|(_, r)| {
            r.settings.epochs != first.settings.epochs
                || r.settings.data_source != first.settings.data_source
                || r.settings.quick != first.settings.quick
        }) {
            bail!(
                "row {} has seeds trained with different settings ({} epochs on {} vs {} epochs on {}); keep one setting per run folder",
                g.preset,
                first.settings.epochs,
                first.settings.data_source,
                r.settings.epochs,
                r.settings.data_source
            );
        }
    }
    if sources.len() > 1 {
        bail!(
            "the runs mix data sources ({}); a front compares rows on the same data",
            sources.join(" | ")
        );
    }
    Ok((groups, sources.pop().unwrap_or_default()))
}

/// Online and offline bytes of the `fast` suite for one image of `model`.
fn fast_bytes(model: &Model) -> Result<(f64, f64)> {
    let d = model.spec.input;
    let set = synthetic((d.c, d.h, d.w), 1, 1, Split::Test);
    let s = run_secure(model, &set, 1, Protocol::Fast, 1, DEFAULT_FRAC_BITS)?;
    Ok((s.online_bytes, s.offline_bytes))
}

/// Marks the points no other point dominates on (accuracy, comparisons, bytes).
fn mark_front(points: &mut [Point]) {
    let dominated: Vec<bool> = points
        .iter()
        .map(|p| {
            points.iter().any(|q| {
                q.accuracy_mean >= p.accuracy_mean
                    && q.comparisons <= p.comparisons
                    && q.fast_bytes <= p.fast_bytes
                    && (q.accuracy_mean > p.accuracy_mean
                        || q.comparisons < p.comparisons
                        || q.fast_bytes < p.fast_bytes)
            })
        })
        .collect();
    for (p, d) in points.iter_mut().zip(dominated) {
        p.on_front = !d;
    }
}

/// Builds the front of `dataset` over the rows in `runs`.
pub fn build(runs: &[PathBuf], dataset: &str, target_seeds: usize) -> Result<Front> {
    let arch: Arch = dataset
        .parse()
        .map_err(|e| anyhow::anyhow!("--dataset {dataset}: {e}"))?;
    let paper_numbers = PaperNumbers::load()?;
    let (mut groups, data_source) = gather(runs, dataset)?;
    let mut points = Vec::new();
    for g in &mut groups {
        g.records.sort_by_key(|(_, r)| r.settings.seed);
        let (model_path, first) = &g.records[0];
        let model =
            Model::load(model_path).with_context(|| format!("loading {}", model_path.display()))?;
        let comparisons = count(&model.spec)?.total_relus;
        let (on, off) = fast_bytes(&model)
            .with_context(|| format!("fast suite on {}", model_path.display()))?;
        let acc: Vec<f64> = g.records.iter().map(|(_, r)| r.row.test_accuracy).collect();
        let (mean, std) = report::mean_std(&acc);
        let spec = g
            .preset
            .strip_prefix(report::SEARCH_PREFIX)
            .map(str::to_string);
        let mut name = match &spec {
            Some(s) => format!("original + {s}"),
            None => g.preset.clone(),
        };
        if g.distilled {
            name += " (distilled)";
        }
        points.push(Point {
            who: "relushare",
            name,
            spec,
            distilled: g.distilled,
            comparisons,
            fast_bytes: on + off,
            fast_online_bytes: on,
            accuracy_mean: mean,
            accuracy_std: std,
            accuracies: acc,
            seeds: g.records.iter().map(|(_, r)| r.settings.seed).collect(),
            epochs: first.settings.epochs,
            model: model_path.display().to_string(),
            on_front: false,
        });
    }
    points.sort_by(|a, b| {
        b.comparisons
            .cmp(&a.comparisons)
            .then(b.accuracy_mean.total_cmp(&a.accuracy_mean))
    });
    mark_front(&mut points);
    let paper: Vec<PaperPoint> = paper_numbers
        .rows
        .iter()
        .filter(|r| r.dataset == dataset && ["5", "6", "7"].contains(&r.table.as_str()))
        .filter_map(|r| {
            let p = r.preset.as_ref()?;
            let spec = presets::build(arch, p).ok()?;
            Some(PaperPoint {
                who: "paper (theirs)",
                name: p.clone(),
                table: r.table.clone(),
                comparisons: count(&spec).ok()?.total_relus,
                accuracy: r.accuracy,
            })
        })
        .collect();
    let original = count(&relushare_model::ModelSpec::original(arch))?.total_relus;
    let target = paper
        .iter()
        .find(|p| p.name == "uniform3")
        .map(|u3| Target {
            max_comparisons: original / 10,
            min_accuracy: u3.accuracy,
            seeds: target_seeds,
            met_by: points
                .iter()
                .filter(|p| {
                    p.comparisons <= original / 10
                        && p.accuracy_mean >= u3.accuracy
                        && p.seeds.len() >= target_seeds
                })
                .map(|p| p.name.clone())
                .collect(),
        });
    let note = format!(
        "{dataset}, {data_source}. Ours: test accuracy (mean over the seeds listed), secure comparisons per image (relushare count), fast bytes per image (online + offline, measured in process on one image). Paper points: the paper's accuracy (theirs) at the comparison count of the same grouping."
    );
    Ok(Front {
        dataset: dataset.to_string(),
        data_source,
        note,
        points,
        paper,
        target,
        command: crate::reproduce::invocation(),
    })
}

/// The two figures: accuracy against comparisons (`path`) and against `fast` MB
/// (`<stem>-bytes.png`).
pub fn figures(front: &Front, path: &Path) -> Result<Vec<PathBuf>> {
    let ours = |x: &dyn Fn(&Point) -> f64| -> Vec<plot::ParetoPoint> {
        front
            .points
            .iter()
            .map(|p| plot::ParetoPoint {
                label: p.name.replace("original + ", "+"),
                comparisons: x(p),
                accuracy: p.accuracy_mean,
            })
            .collect()
    };
    let paper: Vec<plot::ParetoPoint> = front
        .paper
        .iter()
        .map(|p| plot::ParetoPoint {
            label: p.name.clone(),
            comparisons: p.comparisons as f64,
            accuracy: p.accuracy,
        })
        .collect();
    crate::reproduce::create_parent(path)?;
    plot::pareto_figure(
        &ours(&|p| p.comparisons as f64),
        &paper,
        &format!(
            "{}: accuracy vs secure comparisons per image",
            front.dataset
        ),
        path,
    )?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pareto".into());
    let bytes = path.with_file_name(format!("{stem}-bytes.png"));
    // the paper reports no bytes: only our points on this axis
    plot::pareto_figure_x(
        &ours(&|p| p.fast_bytes / 1e6),
        &[],
        &format!(
            "{}: accuracy vs fast-suite MB per image (online + offline)",
            front.dataset
        ),
        "fast suite MB per image (online + offline), log scale",
        &bytes,
    )?;
    Ok(vec![path.to_path_buf(), bytes])
}

/// The front as a markdown table.
pub fn markdown(front: &Front, figures: &[PathBuf], page: &Path) -> String {
    use std::fmt::Write;
    let mut md = format!(
        "# Pareto front: accuracy, comparisons and bytes ({})\n\nWritten by `{}`. {}\n\n",
        front.dataset, front.command, front.note
    );
    let base = page.parent().unwrap_or(Path::new(""));
    for f in figures {
        let rel = f.strip_prefix(base).unwrap_or(f);
        let _ = writeln!(md, "![{}]({})\n", rel.display(), rel.display());
    }
    md.push_str("| row (ours) | comparisons / image | fast MB / image (online + offline) | accuracy % (mean ± std) | seeds | on the front |\n|---|---:|---:|---:|---|---|\n");
    for p in &front.points {
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} ({:.3} online) | {:.2} ± {:.2} | {} | {} |",
            p.name,
            p.comparisons,
            p.fast_bytes / 1e6,
            p.fast_online_bytes / 1e6,
            p.accuracy_mean,
            p.accuracy_std,
            p.seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if p.on_front { "yes" } else { "" }
        );
    }
    md.push_str("\n| row (paper, theirs) | table | comparisons / image | accuracy % |\n|---|---|---:|---:|\n");
    for p in &front.paper {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2} |",
            p.name, p.table, p.comparisons, p.accuracy
        );
    }
    if let Some(t) = &front.target {
        let _ = writeln!(
            md,
            "\nTarget: at most {} comparisons (1/10 of `original`) at >= {:.2}% (the paper's `uniform3`), as a mean of {} seeds: {}.",
            t.max_comparisons,
            t.min_accuracy,
            t.seeds,
            if t.met_by.is_empty() {
                "not met yet".to_string()
            } else {
                format!("met by {}", t.met_by.join(", "))
            }
        );
    }
    md
}

pub fn run(a: Args) -> Result<()> {
    let front = build(&a.runs, &a.dataset, a.target_seeds)?;
    let figs = match &a.figure {
        Some(f) => figures(&front, f)?,
        None => Vec::new(),
    };
    if let Some(path) = &a.summary {
        crate::reproduce::merge_json_keys(path, vec![("pareto", serde_json::to_value(&front)?)])?;
    }
    if let Some(page) = &a.doc {
        crate::reproduce::create_parent(page)?;
        relushare_model::io::write_atomic(page, markdown(&front, &figs, page).as_bytes())?;
    }
    println!(
        "{:<48} {:>11} {:>9} {:>14} {:>6}",
        "row", "comparisons", "fast MB", "accuracy %", "front"
    );
    for p in &front.points {
        println!(
            "{:<48} {:>11} {:>9.3} {:>8.2} ±{:>4.2} {:>6}",
            p.name,
            p.comparisons,
            p.fast_bytes / 1e6,
            p.accuracy_mean,
            p.accuracy_std,
            if p.on_front { "yes" } else { "" }
        );
    }
    if let Some(t) = &front.target {
        println!(
            "target (<= {} comparisons, >= {:.2}%, {} seeds): {}",
            t.max_comparisons,
            t.min_accuracy,
            t.seeds,
            if t.met_by.is_empty() {
                "not met".to_string()
            } else {
                t.met_by.join(", ")
            }
        );
    }
    Ok(())
}
