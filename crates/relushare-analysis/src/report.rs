//! The reproduction's bookkeeping: which rows each of the paper's tables needs
//! ([`training_jobs`], [`secure_jobs`]), the results of a run ([`Results`], saved as JSON) and
//! `report.md`, where every table shows the paper's number ("paper") beside ours with the
//! difference.

use crate::paper::{PaperNumbers, PaperRow};
use crate::tv::TvRow;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// The tables `reproduce` knows.
pub const TABLES: [&str; 5] = ["5", "6", "7", "8", "9"];

/// Secure-inference protocol suites run for Tables 8 and 9.
pub const SUITES: [&str; 2] = ["securenn", "fast"];

/// Parses `--table`: one of 5..9 or `all`.
pub fn parse_tables(s: &str) -> Result<Vec<String>, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "all" {
        return Ok(TABLES.iter().map(|t| t.to_string()).collect());
    }
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim) {
        if !TABLES.contains(&t) {
            return Err(format!(
                "unknown table '{t}': expected 5, 6, 7, 8, 9 or all"
            ));
        }
        if !out.iter().any(|x: &String| x == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// A model to train: `(dataset, preset)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Job {
    pub dataset: String,
    pub preset: String,
}

/// Models the selected tables need, in table order, without duplicates; `datasets` filters
/// (empty = all). Secure tables need their models trained too.
pub fn training_jobs(paper: &PaperNumbers, tables: &[String], datasets: &[String]) -> Vec<Job> {
    let mut out: Vec<Job> = Vec::new();
    for t in TABLES {
        if !tables.iter().any(|x| x == t) {
            continue;
        }
        for r in paper.table(t) {
            let Some(p) = &r.preset else { continue };
            if !datasets.is_empty() && !datasets.contains(&r.dataset) {
                continue;
            }
            let j = Job {
                dataset: r.dataset.clone(),
                preset: p.clone(),
            };
            if !out.contains(&j) {
                out.push(j);
            }
        }
    }
    // data-driven presets are clustered on the trained original model
    let needs_original: Vec<String> = out
        .iter()
        .filter(|j| needs_clusters(&j.preset))
        .map(|j| j.dataset.clone())
        .collect();
    for d in needs_original {
        let j = Job {
            dataset: d,
            preset: "original".into(),
        };
        if !out.contains(&j) {
            out.insert(0, j);
        }
    }
    // originals first: they feed the clustering
    out.sort_by_key(|j| (j.preset != "original", needs_clusters(&j.preset)));
    out
}

/// Whether a preset needs a cluster map.
pub fn needs_clusters(preset: &str) -> bool {
    matches!(preset, "adaptive256" | "cluster8x8k8" | "cluster-mixed")
}

/// `(dataset, preset, suite)` secure runs of the selected tables.
pub fn secure_jobs(
    paper: &PaperNumbers,
    tables: &[String],
    datasets: &[String],
) -> Vec<(Job, String)> {
    let mut out = Vec::new();
    for t in ["8", "9"] {
        if !tables.iter().any(|x| x == t) {
            continue;
        }
        for r in paper.table(t) {
            let Some(p) = &r.preset else { continue };
            if !datasets.is_empty() && !datasets.contains(&r.dataset) {
                continue;
            }
            for s in SUITES {
                let j = (
                    Job {
                        dataset: r.dataset.clone(),
                        preset: p.clone(),
                    },
                    s.to_string(),
                );
                if !out.contains(&j) {
                    out.push(j);
                }
            }
        }
    }
    out
}

/// One trained and evaluated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedRow {
    pub dataset: String,
    pub preset: String,
    /// Test accuracy in percent.
    pub test_accuracy: f64,
    /// Training accuracy of the last epoch in percent.
    pub train_accuracy: f64,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// Training + evaluation seconds (of the run that produced the model).
    pub seconds: f64,
    /// Comparisons per channel of the shared layers (act1[, act2]), as in the paper's #ReLU.
    pub relus_per_channel: Vec<usize>,
    /// Secure comparisons of the whole network per image.
    pub total_relus: usize,
    /// Model file.
    pub model_path: String,
    /// Reused from an earlier run rather than trained now.
    pub reused: bool,
    /// Training seed (initialisation and batch order).
    #[serde(default = "first_seed")]
    pub seed: u64,
    /// Per-epoch curve (empty for rows recorded before curves were kept).
    #[serde(default)]
    pub history: Vec<EpochPoint>,
}

fn first_seed() -> u64 {
    1
}

/// One epoch of a training curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochPoint {
    pub epoch: usize,
    pub train_loss: f64,
    /// Training accuracy in percent (on the augmented batches).
    pub train_accuracy: f64,
    /// Test accuracy in percent after the epoch.
    pub test_accuracy: Option<f64>,
}

/// A table row over its seeds: what `results/<dataset>-full.json` records per preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    pub dataset: String,
    pub preset: String,
    /// Mean test accuracy over the seeds, in percent.
    pub accuracy_mean: f64,
    /// Sample standard deviation over the seeds (0 for one seed), in points.
    pub accuracy_std: f64,
    /// Test accuracy of each seed, in percent.
    pub accuracies: Vec<f64>,
    pub seeds: Vec<u64>,
    pub epochs: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// Secure comparisons of the whole network per image.
    pub relus: usize,
    /// Comparisons per channel of the shared layers, as in the paper's #ReLU column.
    pub relus_per_channel: Vec<usize>,
    /// The paper's accuracy for this row (theirs), when it has one.
    pub paper_accuracy: Option<f64>,
}

/// Mean and sample standard deviation.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// A markdown table of [`SeedSummary`] rows: ours (mean ± std over seeds, each seed) beside the
/// paper's accuracy.
pub fn render_seed_table(rows: &[SeedSummary]) -> String {
    let mut out = String::from(
        "| preset | comparisons / image | epochs | seeds | test accuracy % (ours, mean ± std) | each seed | paper % | Δ points |\n|---|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for r in rows {
        let each = r
            .accuracies
            .iter()
            .map(|a| format!("{a:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {:.2} ± {:.2} | {} | {} | {} |",
            r.preset,
            r.relus,
            r.epochs,
            r.seeds.len(),
            r.accuracy_mean,
            r.accuracy_std,
            each,
            f2(r.paper_accuracy),
            diff(Some(r.accuracy_mean), r.paper_accuracy),
        );
    }
    out
}

/// The trained rows grouped by `(dataset, preset)` in first-seen order, with mean and standard
/// deviation over their seeds; the paper's accuracy is quoted from the first of `tables` that
/// has the row.
pub fn summarize_seeds(res: &Results, paper: &PaperNumbers, tables: &[String]) -> Vec<SeedSummary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in &res.trained {
        let k = (r.dataset.clone(), r.preset.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(d, p)| {
            let mut rows: Vec<&TrainedRow> = res
                .trained
                .iter()
                .filter(|r| r.dataset == d && r.preset == p)
                .collect();
            rows.sort_by_key(|r| r.seed);
            let acc: Vec<f64> = rows.iter().map(|r| r.test_accuracy).collect();
            let (accuracy_mean, accuracy_std) = mean_std(&acc);
            let first = rows[0];
            SeedSummary {
                accuracy_mean,
                accuracy_std,
                accuracies: acc,
                seeds: rows.iter().map(|r| r.seed).collect(),
                epochs: first.epochs,
                train_images: first.train_images,
                test_images: first.test_images,
                relus: first.total_relus,
                relus_per_channel: first.relus_per_channel.clone(),
                paper_accuracy: tables
                    .iter()
                    .find_map(|t| paper.find(t, &d, &p))
                    .map(|r| r.accuracy),
                dataset: d,
                preset: p,
            }
        })
        .collect()
}

/// Cost of one secure layer (all three parties).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureLayer {
    pub label: String,
    pub online_bytes: u64,
    pub offline_bytes: u64,
    pub online_rounds: u64,
    pub seconds: f64,
}

/// One secure inference run (per image averages over `images`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecureRow {
    pub dataset: String,
    pub preset: String,
    pub suite: String,
    pub images: usize,
    pub online_bytes: f64,
    pub offline_bytes: f64,
    /// One-time setup (seed agreement, model preparation) for the session.
    pub setup_bytes: f64,
    pub online_rounds: f64,
    pub offline_rounds: f64,
    pub online_seconds: f64,
    pub offline_seconds: f64,
    pub setup_seconds: f64,
    /// Secure classes equal to the plaintext fixed-point network's (as the suite runs it: with
    /// fused gates for the fast suites).
    pub agree_with_plaintext: usize,
    /// Secure classes equal to the trained model's plaintext fixed-point network's, gates
    /// unfused.
    #[serde(default)]
    pub agree_with_unfused: usize,
    pub layers: Vec<SecureLayer>,
    pub reused: bool,
}

impl SecureRow {
    /// Total communication per image in MB (10^6 bytes), online + offline.
    pub fn total_mb(&self) -> f64 {
        (self.online_bytes + self.offline_bytes) / 1e6
    }
}

/// A clustering done for the data-driven presets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRun {
    pub dataset: String,
    pub layer: String,
    pub k: usize,
    pub window: Option<usize>,
    pub images: usize,
    pub trace_seconds: f64,
    pub cluster_seconds: f64,
    pub map_path: String,
}

/// Everything a `reproduce` run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub quick: bool,
    /// Where the images came from (data directory, or "synthetic").
    pub data_source: String,
    pub tables: Vec<String>,
    /// Datasets this run covers (the report shows only their rows; empty = all).
    #[serde(default)]
    pub datasets: Vec<String>,
    pub settings: serde_json::Value,
    pub trained: Vec<TrainedRow>,
    pub secure: Vec<SecureRow>,
    pub clustering: Vec<ClusterRun>,
    /// Total variation per layer of each dataset's original model.
    pub total_variation: Vec<(String, Vec<TvRow>)>,
    pub figures: Vec<String>,
    pub warnings: Vec<String>,
    /// The `--relu-budget` search, if one ran.
    #[serde(default)]
    pub search: Option<SearchSummary>,
}

/// A search over per-layer group sizes under a comparison budget (beyond the paper).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchSummary {
    pub dataset: String,
    /// Secure comparisons per image allowed (whole network).
    pub budget: usize,
    /// Candidate specs that fit the budget (free-form spec strings).
    pub fitting: usize,
    /// The candidates trained, as row presets (`search:<free-form spec>`).
    pub trained: Vec<String>,
}

/// Prefix of the preset name of a search candidate.
pub const SEARCH_PREFIX: &str = "search:";

impl Results {
    /// The first seed's row of `dataset`/`preset`.
    pub fn trained(&self, dataset: &str, preset: &str) -> Option<&TrainedRow> {
        self.trained
            .iter()
            .find(|r| r.dataset == dataset && r.preset == preset)
    }

    /// Test accuracy of `dataset`/`preset`: the mean over its seeds, with the number of seeds.
    pub fn accuracy(&self, dataset: &str, preset: &str) -> Option<(f64, f64, usize)> {
        let acc: Vec<f64> = self
            .trained
            .iter()
            .filter(|r| r.dataset == dataset && r.preset == preset)
            .map(|r| r.test_accuracy)
            .collect();
        if acc.is_empty() {
            return None;
        }
        let (m, s) = mean_std(&acc);
        Some((m, s, acc.len()))
    }

    pub fn secure(&self, dataset: &str, preset: &str, suite: &str) -> Option<&SecureRow> {
        self.secure
            .iter()
            .find(|r| r.dataset == dataset && r.preset == preset && r.suite == suite)
    }
}

fn dataset_title(d: &str) -> &str {
    match d {
        "cifar10" => "CIFAR-10",
        "svhn" => "SVHN",
        "fmnist" => "Fashion-MNIST",
        other => other,
    }
}

fn f2(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())
}

fn diff(ours: Option<f64>, paper: Option<f64>) -> String {
    match (ours, paper) {
        (Some(o), Some(p)) => format!("{:+.2}", o - p),
        _ => "–".into(),
    }
}

fn relus_text(v: &[usize]) -> String {
    if v.len() == 1 {
        v[0].to_string()
    } else {
        format!(
            "({})",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn accuracy_table(out: &mut String, res: &Results, rows: &[&PaperRow], with_layers: bool) {
    if with_layers {
        out.push_str("| Method | Preset | Layer 1 | Layer 2 | #ReLU/channel (paper) | #ReLU/channel (ours) | Accuracy % (paper) | Accuracy % (ours) | Δ points |\n|---|---|---|---|---|---|---|---|---|\n");
    } else {
        out.push_str("| Method | Preset | Patch | Noise | #ReLU/channel (paper) | #ReLU/channel (ours) | Accuracy % (paper) | Accuracy % (ours) | Δ points |\n|---|---|---|---|---|---|---|---|---|\n");
    }
    for r in rows {
        let preset = r.preset.as_deref().unwrap_or("");
        let ours = res.trained(&r.dataset, preset);
        let ours_relus = ours
            .map(|o| {
                if with_layers {
                    o.relus_per_channel.iter().sum::<usize>().to_string()
                } else {
                    relus_text(&o.relus_per_channel)
                }
            })
            .unwrap_or_else(|| "not run".into());
        let stats = res.accuracy(&r.dataset, preset);
        let acc = stats.map(|(m, _, _)| m);
        let acc_text = match stats {
            Some((m, s, n)) if n > 1 => format!("{m:.2} ± {s:.2} ({n} seeds)"),
            _ => f2(acc),
        };
        let mid = if with_layers {
            format!(
                "{} | {}",
                r.layer1.as_deref().unwrap_or(""),
                r.layer2.as_deref().unwrap_or("")
            )
        } else {
            format!(
                "{} | {}",
                r.patch.as_deref().unwrap_or(""),
                match r.noise_pct {
                    Some(n) if n > 0.0 => format!("{n:.0}%"),
                    _ => "No".into(),
                }
            )
        };
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} | {} | {} | {} |",
            r.method,
            preset,
            mid,
            r.relus_label.as_deref().unwrap_or(""),
            ours_relus,
            f2(Some(r.accuracy)),
            acc_text,
            diff(acc, Some(r.accuracy)),
        );
    }
    out.push('\n');
}

fn trained_note(out: &mut String, res: &Results, dataset: &str) {
    let rows: Vec<&TrainedRow> = res
        .trained
        .iter()
        .filter(|r| r.dataset == dataset)
        .collect();
    if let Some(r) = rows.first() {
        let _ = writeln!(
            out,
            "Ours: {} training / {} test images, {} epoch(s) per row.\n",
            r.train_images, r.test_images, r.epochs
        );
    }
}

/// `report.md`.
pub fn render_markdown(res: &Results, paper: &PaperNumbers) -> String {
    let mut out = String::new();
    out.push_str("# ReLU sharing: reproduction report\n\n");
    let _ = writeln!(out, "Paper: {}.\n", paper.source);
    if res.quick {
        out.push_str("> **QUICK MODE: synthetic images, a few hundred training images and one epoch.**\n> These numbers are NOT results on the paper's datasets and must not be compared with\n> the paper's; they only show that the whole pipeline (training, counting, clustering,\n> secure inference, figures) runs. For the real reproduction fetch the datasets\n> (`relushare data fetch --dataset cifar10 --data-dir DIR`, likewise `svhn` and\n> `fmnist`) and run `relushare reproduce --table all --data-dir DIR`.\n\n");
    }
    let _ = writeln!(out, "Images: {}.\n", res.data_source);
    out.push_str("Columns marked \"paper\" are the paper's published numbers (from `crates/relushare-analysis/data/paper.json`); \"ours\" are from this run; Δ = ours − paper.\n\n");
    for w in &res.warnings {
        let _ = writeln!(out, "- warning: {w}");
    }
    if !res.warnings.is_empty() {
        out.push('\n');
    }
    let shown = |d: &str| res.datasets.is_empty() || res.datasets.iter().any(|x| x == d);
    let has = |t: &str| res.tables.iter().any(|x| x == t);
    if has("5") && shown("cifar10") {
        out.push_str("## Table 5: CIFAR-10, ReLU sharing on image patches\n\n");
        trained_note(&mut out, res, "cifar10");
        accuracy_table(&mut out, res, &paper.table("5"), false);
    }
    if has("6") {
        for d in ["svhn", "fmnist"].into_iter().filter(|d| shown(d)) {
            let rows: Vec<&PaperRow> = paper
                .table("6")
                .into_iter()
                .filter(|r| r.dataset == d)
                .collect();
            let _ = writeln!(
                out,
                "## Table 6: {}, ReLU sharing on image patches\n",
                dataset_title(d)
            );
            trained_note(&mut out, res, d);
            accuracy_table(&mut out, res, &rows, false);
        }
    }
    if has("7") && shown("cifar10") {
        out.push_str("## Table 7: CIFAR-10, data-driven (agglomerative) clustering\n\n");
        out.push_str("#ReLU is per channel, summed over both layers.\n\n");
        trained_note(&mut out, res, "cifar10");
        for c in res.clustering.iter().filter(|c| c.dataset == "cifar10") {
            let _ = writeln!(
                out,
                "- clustered {} with k = {}{} on {} training images (trace {:.1} s, clustering {:.2} s)",
                c.layer,
                c.k,
                c.window.map(|m| format!(" per {m}x{m} window")).unwrap_or_default(),
                c.images,
                c.trace_seconds,
                c.cluster_seconds
            );
        }
        out.push('\n');
        accuracy_table(&mut out, res, &paper.table("7"), true);
    }
    if has("8") {
        out.push_str("## Table 8: secure inference of one image\n\n");
        out.push_str("The paper ran PySyft's SecureNN (3 parties on one machine, Intel Core i5, everything counted online). Ours: the `securenn` suite (SecureNN-style protocols) and the `fast` suite (dealer-assisted preprocessing), 3 parties on threads of this machine; communication is all bytes sent by all parties in MB (10^6 bytes), online + offline (per image, setup excluded), compared with the paper's total.\n\n");
        out.push_str("| Dataset | Model | Suite | Accuracy % (paper) | Accuracy % (ours) | Runtime s (paper) | Runtime s (ours: online + offline) | Rounds (paper) | Rounds (ours: online) | Comm. MB (paper) | Comm. MB (ours: online + offline) | Δ MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in paper.table("8").into_iter().filter(|r| shown(&r.dataset)) {
            let preset = r.preset.as_deref().unwrap_or("");
            let acc = res.trained(&r.dataset, preset).map(|t| t.test_accuracy);
            for s in SUITES {
                let sr = res.secure(&r.dataset, preset, s);
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    dataset_title(&r.dataset),
                    r.method,
                    s,
                    f2(Some(r.accuracy)),
                    f2(acc),
                    f2(r.runtime_s),
                    sr.map(|x| format!(
                        "{:.2} ({:.2} + {:.2})",
                        x.online_seconds + x.offline_seconds,
                        x.online_seconds,
                        x.offline_seconds
                    ))
                    .unwrap_or_else(|| "not run".into()),
                    r.rounds.map(|v| v.to_string()).unwrap_or_default(),
                    sr.map(|x| format!("{:.0}", x.online_rounds))
                        .unwrap_or_else(|| "–".into()),
                    f2(r.comm_mb),
                    sr.map(|x| format!(
                        "{:.2} ({:.2} + {:.2})",
                        x.total_mb(),
                        x.online_bytes / 1e6,
                        x.offline_bytes / 1e6
                    ))
                    .unwrap_or_else(|| "–".into()),
                    diff(sr.map(|x| x.total_mb()), r.comm_mb),
                );
            }
        }
        out.push('\n');
        out.push_str("### Savings of the shared models relative to the original (communication)\n\n| Dataset | Model | Paper | Ours (securenn) | Ours (fast) |\n|---|---|---|---|---|\n");
        for r in paper.table("8").into_iter().filter(|r| shown(&r.dataset)) {
            let preset = r.preset.as_deref().unwrap_or("");
            if preset == "original" {
                continue;
            }
            let Some(orig) = paper.find("8", &r.dataset, "original") else {
                continue;
            };
            let pct = |a: f64, b: f64| format!("{:.0}%", 100.0 * (1.0 - a / b));
            let ours = |s: &str| match (
                res.secure(&r.dataset, preset, s),
                res.secure(&r.dataset, "original", s),
            ) {
                (Some(a), Some(b)) if b.total_mb() > 0.0 => pct(a.total_mb(), b.total_mb()),
                _ => "–".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                dataset_title(&r.dataset),
                r.method,
                match (r.comm_mb, orig.comm_mb) {
                    (Some(a), Some(b)) => pct(a, b),
                    _ => "–".into(),
                },
                ours("securenn"),
                ours("fast")
            );
        }
        out.push('\n');
        let layer_claims: Vec<_> = paper
            .text_claims
            .iter()
            .filter(|c| c.table == "8")
            .collect();
        if !layer_claims.is_empty() {
            out.push_str("### The shared ReLU layers alone (paper's text around Table 8)\n\n| Dataset | Model | Layer | Comm. MB (paper) | Comm. MB (ours, securenn) | Comm. MB (ours, fast) |\n|---|---|---|---|---|---|\n");
            for c in layer_claims.into_iter().filter(|c| shown(&c.dataset)) {
                let layers: &[&str] = if c.dataset == "cifar10" {
                    &["act1", "act2"]
                } else {
                    &["act1"]
                };
                for l in layers {
                    let ours = |s: &str| {
                        res.secure(&c.dataset, &c.preset, s)
                            .and_then(|x| x.layers.iter().find(|y| y.label == *l))
                            .map(|y| {
                                format!("{:.2}", (y.online_bytes + y.offline_bytes) as f64 / 1e6)
                            })
                            .unwrap_or_else(|| "–".into())
                    };
                    let _ = writeln!(
                        out,
                        "| {} | `{}` | {} | {:.2} | {} | {} |",
                        dataset_title(&c.dataset),
                        c.preset,
                        l,
                        c.comm_mb,
                        ours("securenn"),
                        ours("fast")
                    );
                }
            }
            out.push('\n');
        }
    }
    if has("9") && shown("cifar10") {
        out.push_str("## Table 9: comparison on CIFAR-10 (paper's rows, then ours)\n\n");
        out.push_str("| Framework | Accuracy % | Setup s | Online s | Total s | Setup MB | Online MB | Total MB |\n|---|---|---|---|---|---|---|---|\n");
        for r in paper.table("9") {
            let _ = writeln!(
                out,
                "| {} (paper, {}) | {} | {} | {} | {} | {} | {} | {} |",
                r.method,
                r.group.as_deref().unwrap_or(""),
                f2(Some(r.accuracy)),
                f2(r.setup_s),
                f2(r.online_s),
                f2(r.total_s),
                f2(r.setup_mb),
                f2(r.online_mb),
                f2(r.total_mb)
            );
        }
        for r in paper.table("9") {
            let Some(preset) = r.preset.as_deref() else {
                continue;
            };
            let acc = res.trained("cifar10", preset).map(|t| t.test_accuracy);
            for s in SUITES {
                let Some(x) = res.secure("cifar10", preset, s) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "| ours: `{preset}` on {s} (vs paper {}) | {} ({}) | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} ({}) |",
                    r.method,
                    f2(acc),
                    diff(acc, Some(r.accuracy)),
                    x.offline_seconds,
                    x.online_seconds,
                    x.offline_seconds + x.online_seconds,
                    x.offline_bytes / 1e6,
                    x.online_bytes / 1e6,
                    x.total_mb(),
                    diff(Some(x.total_mb()), r.total_mb)
                );
            }
        }
        out.push_str("\nOurs: \"setup\" = the input-independent offline phase per image (the paper's PySyft run had none); session setup (seeds, model preparation) is excluded.\n\n");
    }
    if let Some(sr) = &res.search {
        render_search(&mut out, res, sr);
    }
    if !res.total_variation.is_empty() {
        out.push_str("## Figure 3: total variation per activation layer (original models, test images)\n\n| Dataset | Layer | # | Dims | TV per channel | TV per activation | TV / mean abs |\n|---|---|---|---|---|---|---|\n");
        for (d, rows) in &res.total_variation {
            for r in rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {}x{}x{} | {:.3} | {:.4} | {:.3} |",
                    dataset_title(d),
                    r.layer,
                    r.index,
                    r.c,
                    r.h,
                    r.w,
                    r.tv_per_channel,
                    r.tv_per_activation,
                    r.tv_relative
                );
            }
        }
        out.push('\n');
    }
    if !res.figures.is_empty() {
        out.push_str("## Figures\n\n");
        for f in &res.figures {
            let name = std::path::Path::new(f)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| f.clone());
            let _ = writeln!(out, "![{name}](figures/{name})");
        }
        out.push('\n');
    }
    out
}

/// Per-layer groupings tried by the budget search.
pub const SEARCH_GROUPINGS: [&str; 7] = [
    "relu", "channel", "patch2", "patch3", "patch4", "patch8", "patch16",
];

/// Candidates of the `--relu-budget` search: every combination of [`SEARCH_GROUPINGS`] over
/// `layers` (by default the architecture's shared layers, [`relushare_model::Arch::shared_layers`]; learned
/// deciders; CIFAR-10 keeps partial edge patches, the
/// 29x29 / 28x28 planes merge the remainder as the paper's Table 6 does) whose whole-network
/// comparison count is at most `budget`. Returns how many fit and up to `max` of them as
/// `(free-form spec, comparisons)`, evenly spread from the largest count down.
pub fn search_candidates(
    arch: relushare_model::Arch,
    layers: &[&str],
    budget: usize,
    max: usize,
) -> Result<(usize, Vec<(String, usize)>), relushare_model::ModelError> {
    let merge = if arch == relushare_model::Arch::Cifar10 {
        ""
    } else {
        "-merge"
    };
    let n = SEARCH_GROUPINGS.len();
    let mut fits: Vec<(String, usize)> = Vec::new();
    // a candidate is its partition of every searched layer: `patch16` on a 14x14 plane is the
    // whole channel, the same candidate as `channel` (which comes first in SEARCH_GROUPINGS)
    type Partition = Option<(Vec<u32>, Vec<usize>, usize)>;
    let mut seen: Vec<Vec<Partition>> = Vec::new();
    for combo in 0..n.pow(layers.len() as u32) {
        let mut c = combo;
        let mut parts = Vec::new();
        for l in layers {
            let g = SEARCH_GROUPINGS[c % n];
            c /= n;
            let g = if g.starts_with("patch") {
                format!("{g}{merge}")
            } else {
                g.to_string()
            };
            parts.push(format!("{l}={g}"));
        }
        if parts.iter().all(|p| p.ends_with("=relu")) {
            continue; // that is the original network
        }
        let text = parts.join(",");
        let mut spec = relushare_model::ModelSpec::original(arch);
        relushare_model::presets::apply_freeform(&mut spec, &text)?;
        let total = relushare_model::count(&spec)?.total_relus;
        let mut key: Vec<Partition> = Vec::with_capacity(layers.len());
        for l in layers {
            key.push(match (spec.act(l), spec.layer_input(l)) {
                (Some(relushare_model::ActKind::Shared(a)), Some(d)) => {
                    let m = relushare_model::GroupMap::build(a, d, None)?;
                    Some((m.group_of, m.groups, m.span))
                }
                _ => None,
            });
        }
        // the same partition reached twice is tried once
        if total <= budget && !seen.contains(&key) {
            seen.push(key);
            fits.push((text, total));
        }
    }
    fits.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let fitting = fits.len();
    if max == 0 || fits.is_empty() {
        return Ok((fitting, Vec::new()));
    }
    let take = max.min(fits.len());
    let mut picked = Vec::with_capacity(take);
    for i in 0..take {
        let idx = if take == 1 {
            0
        } else {
            i * (fits.len() - 1) / (take - 1)
        };
        if !picked.contains(&fits[idx]) {
            picked.push(fits[idx].clone());
        }
    }
    Ok((fitting, picked))
}

fn render_search(out: &mut String, res: &Results, sr: &SearchSummary) {
    let _ = writeln!(
        out,
        "## Beyond the paper: per-layer group sizes under a budget of {} comparisons ({})\n",
        sr.budget,
        dataset_title(&sr.dataset)
    );
    let _ = writeln!(
        out,
        "{} combinations of per-layer groupings of the shared layers fit the budget; {} were trained with the same settings as the table rows. The Pareto front is over every model of this dataset trained in this run (paper presets included).\n",
        sr.fitting,
        sr.trained.len()
    );
    let rows: Vec<&TrainedRow> = res
        .trained
        .iter()
        .filter(|r| r.dataset == sr.dataset)
        .collect();
    let points: Vec<crate::plot::ParetoPoint> = rows
        .iter()
        .map(|r| crate::plot::ParetoPoint {
            label: r.preset.clone(),
            comparisons: r.total_relus as f64,
            accuracy: r.test_accuracy,
        })
        .collect();
    let front = crate::plot::pareto_front(&points);
    out.push_str("| Model | Comparisons / image | #ReLU/channel (shared layers) | Accuracy % | On the Pareto front |\n|---|---|---|---|---|\n");
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].total_relus));
    for i in order {
        let r = rows[i];
        let name = match r.preset.strip_prefix(SEARCH_PREFIX) {
            Some(spec) => format!("search `{spec}`"),
            None => format!("preset `{}`", r.preset),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} | {} |",
            name,
            r.total_relus,
            relus_text(&r.relus_per_channel),
            r.test_accuracy,
            if front.contains(&i) { "yes" } else { "" }
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paper() -> PaperNumbers {
        PaperNumbers::load().unwrap()
    }

    #[test]
    fn search_candidates_fit_the_budget() {
        use relushare_model::Arch;
        let budget = 60_000;
        let (fitting, picked) =
            search_candidates(Arch::Cifar10, Arch::Cifar10.shared_layers(), budget, 5).unwrap();
        assert!(fitting >= picked.len() && picked.len() == 5);
        assert!(picked.iter().all(|(_, t)| *t <= budget));
        assert!(picked.windows(2).all(|w| w[0].1 >= w[1].1), "largest first");
        // uniform3 (57472 comparisons) is one of the fitting combinations
        let (_, all) = search_candidates(
            Arch::Cifar10,
            Arch::Cifar10.shared_layers(),
            budget,
            usize::MAX,
        )
        .unwrap();
        assert!(all
            .iter()
            .any(|(s, t)| s == "act1=patch3,act2=patch3" && *t == 57472));
        assert!(!all.iter().any(|(s, _)| s == "act1=relu,act2=relu"));
        // svhn merges edges: 3x3 patches on 29x29 give 81 per channel
        let (_, sv) = search_candidates(
            Arch::Svhn,
            Arch::Svhn.shared_layers(),
            usize::MAX,
            usize::MAX,
        )
        .unwrap();
        // all but relu, and patch16 on 29x29 is one group per channel: `channel` already
        assert_eq!(sv.len(), SEARCH_GROUPINGS.len() - 2);
        assert!(sv.iter().any(|(s, _)| s == "act1=patch3-merge"));
        assert!(sv.iter().any(|(s, _)| s == "act1=channel"));
        assert!(!sv.iter().any(|(s, _)| s == "act1=patch16-merge"));
        // both convolutional layers of Fashion-MNIST: one candidate per distinct partition
        let (_, fm) = search_candidates(Arch::Fmnist, &["act1", "act2"], 3776, usize::MAX).unwrap();
        assert!(fm
            .iter()
            .any(|(s, t)| s == "act1=channel,act2=channel" && *t == 224));
        assert!(fm.iter().all(|(_, t)| *t <= 3776));
        assert!(!fm
            .iter()
            .any(|(s, _)| s.contains("patch16") || s.contains("act2=patch8")));
        // nothing fits a tiny budget
        assert_eq!(
            search_candidates(Arch::Cifar10, Arch::Cifar10.shared_layers(), 10, 5)
                .unwrap()
                .0,
            0
        );
    }

    #[test]
    fn parses_tables() {
        assert_eq!(parse_tables("all").unwrap().len(), 5);
        assert_eq!(parse_tables("5,8,5").unwrap(), vec!["5", "8"]);
        assert!(parse_tables("4").is_err());
    }

    #[test]
    fn jobs_per_table() {
        let p = paper();
        let t5 = training_jobs(&p, &["5".into()], &[]);
        assert_eq!(t5.len(), 8);
        assert_eq!(t5[0].preset, "original");
        // Table 7 needs the original for clustering, first
        let t7 = training_jobs(&p, &["7".into()], &[]);
        let names: Vec<&str> = t7.iter().map(|j| j.preset.as_str()).collect();
        assert_eq!(names, ["original", "cluster8x8k8", "cluster-mixed"]);
        // Table 6 restricted to svhn: 6 rows, adaptive256 after original
        let t6 = training_jobs(&p, &["6".into()], &["svhn".into()]);
        assert_eq!(t6.len(), 6);
        assert!(t6.iter().all(|j| j.dataset == "svhn"));
        assert_eq!(t6.last().unwrap().preset, "adaptive256");
        let all = training_jobs(&p, &parse_tables("all").unwrap(), &[]);
        assert_eq!(all.len(), 8 + 11 + 2 + 1); // + shafran from Table 9
        let s = secure_jobs(&p, &["8".into()], &[]);
        assert_eq!(s.len(), 7 * 2);
        let s9 = secure_jobs(&p, &["9".into()], &[]);
        assert_eq!(s9.len(), 2 * 2);
    }

    #[test]
    fn markdown_puts_paper_beside_ours() {
        let p = paper();
        let mut res = Results {
            quick: true,
            data_source: "synthetic".into(),
            tables: vec!["5".into(), "8".into()],
            ..Default::default()
        };
        res.trained.push(TrainedRow {
            dataset: "cifar10".into(),
            preset: "uniform3".into(),
            test_accuracy: 80.65,
            train_accuracy: 90.0,
            epochs: 1,
            train_images: 10,
            test_images: 5,
            seconds: 1.0,
            relus_per_channel: vec![121, 121],
            total_relus: 5,
            model_path: "m".into(),
            reused: false,
            seed: 1,
            history: Vec::new(),
        });
        res.secure.push(SecureRow {
            dataset: "cifar10".into(),
            preset: "original".into(),
            suite: "securenn".into(),
            images: 1,
            online_bytes: 100e6,
            offline_bytes: 20e6,
            setup_bytes: 0.0,
            online_rounds: 80.0,
            offline_rounds: 1.0,
            online_seconds: 2.0,
            offline_seconds: 0.5,
            setup_seconds: 0.1,
            agree_with_plaintext: 1,
            agree_with_unfused: 1,
            layers: vec![],
            reused: false,
        });
        let md = render_markdown(&res, &p);
        assert!(md.contains("QUICK MODE"));
        assert!(md.contains("| Uniform | `uniform3` | 3x3 | No | (121, 121) | (121, 121) | 82.65 | 80.65 | -2.00 |"), "{md}");
        assert!(md.contains("| CIFAR-10 | Original | securenn | 83.59 | – | 36.00 | 2.50 (2.00 + 0.50) | 86 | 80 | 141.02 | 120.00 (100.00 + 20.00) | -21.02 |"), "{md}");
        assert!(md.contains("not run"));
        assert!(!md.contains("Table 6"));
        res.quick = false;
        assert!(!render_markdown(&res, &p).contains("QUICK MODE"));
        res.datasets = vec!["svhn".into()];
        let md = render_markdown(&res, &p);
        assert!(
            !md.contains("Table 5") && !md.contains("| CIFAR-10 |"),
            "{md}"
        );
        assert!(md.contains("| SVHN | Original | securenn |"));
    }

    #[test]
    fn seeds_are_summarised_as_mean_and_sample_std() {
        let p = paper();
        let mut res = Results {
            tables: vec!["6".into()],
            ..Default::default()
        };
        for (seed, acc) in [(1, 90.0), (2, 92.0), (3, 91.0)] {
            res.trained.push(TrainedRow {
                dataset: "fmnist".into(),
                preset: "uniform3".into(),
                test_accuracy: acc,
                train_accuracy: 95.0,
                epochs: 10,
                train_images: 60_000,
                test_images: 10_000,
                seconds: 1.0,
                relus_per_channel: vec![81],
                total_relus: 15_264,
                model_path: "m".into(),
                reused: false,
                seed,
                history: Vec::new(),
            });
        }
        let s = summarize_seeds(&res, &p, &["6".to_string()]);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].seeds, vec![1, 2, 3]);
        assert!((s[0].accuracy_mean - 91.0).abs() < 1e-12);
        assert!((s[0].accuracy_std - 1.0).abs() < 1e-12);
        assert_eq!(s[0].paper_accuracy, Some(91.11));
        let md = render_markdown(&res, &p);
        assert!(md.contains("91.00 ± 1.00 (3 seeds)"), "{md}");
        assert_eq!(mean_std(&[2.0]), (2.0, 0.0));
    }
}
