//! `relushare reproduce`: trains every row of the paper's Tables 5-7 (and the models Tables 8
//! and 9 run securely), evaluates and counts them, clusters activations for the data-driven
//! presets, runs secure inference with both protocol suites, and writes `report.md` (the
//! paper's numbers beside ours), `results.json` and the figures into `--out`.
//!
//! Resumable: a trained row (model file + its settings) is reused when the settings match;
//! an interrupted training resumes from its per-epoch checkpoint; clusterings and secure runs
//! are reused likewise. `--quick` runs everything on small synthetic sets in minutes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use relushare_analysis::cluster::{cluster_layer, ClusterParams};
use relushare_analysis::paper::PaperNumbers;
use relushare_analysis::report::{
    self, ClusterRun, Job, Results, SecureLayer, SecureRow, TrainedRow,
};
use relushare_analysis::{plot, trace, tv};

use crate::secure::run_secure;
use relushare_data::{DatasetName, ImageSet, Split};
use relushare_model::{count, presets, Arch, ClusterMaps, Model};
use relushare_nn::{Augmentation, EpochMetrics, Progress, TrainConfig};
use serde::{Deserialize, Serialize};

#[derive(clap::Args)]
pub struct Args {
    /// Paper table(s) to reproduce: 5, 6, 7, 8, 9 (comma-separated) or all.
    #[arg(long, default_value = "all")]
    pub table: String,
    /// Directory with the real datasets (`relushare data fetch --dataset NAME --data-dir DIR`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Training epochs per row (default: 1 with --quick, else 20 for CIFAR-10, 10 for SVHN,
    /// 15 for Fashion-MNIST).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Small synthetic sets and one epoch: the whole pipeline in minutes (NOT the paper's data).
    #[arg(long)]
    pub quick: bool,
    /// Output directory (models, maps, secure runs, figures, report.md, results.json).
    #[arg(long, default_value = "reproduce-out")]
    pub out: PathBuf,
    /// Only rows of these datasets (cifar10, svhn, fmnist; comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub dataset: Vec<String>,
    /// Training images per dataset (default: all; 512 with --quick).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Test images per dataset (default: all; 256 with --quick).
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Training images the clustering runs over (default: the training set).
    #[arg(long)]
    pub cluster_limit: Option<usize>,
    /// Test images classified securely per model and suite (Table 8 uses one).
    #[arg(long, default_value_t = 1)]
    pub secure_images: usize,
    /// Mini-batch size (default 64; 32 with --quick).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (default: the trainer's Adam default).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Retrain / recluster / rerun everything even when earlier results match.
    #[arg(long)]
    pub force: bool,
    /// Print results.json to stdout at the end.
    #[arg(long)]
    pub json: bool,
    /// Train every row with seeds 1..=N; tables then show the mean ± standard deviation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub seeds: u64,
    /// Also write the per-row summary over seeds (preset, accuracy mean/std, seeds, epochs,
    /// comparisons, the paper's accuracy, the `relushare train` command of seed 1) into this
    /// JSON file; its other top-level keys (e.g. `pytorch_reference`, `pareto`) are kept.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// With --summary: also write that summary as a markdown page (a table per dataset) and its
    /// per-epoch test-accuracy curves as `<page stem>-curves-<dataset>.png` beside it.
    #[arg(long, requires = "summary")]
    pub summary_doc: Option<PathBuf>,
    /// Beyond the paper: also search per-layer group sizes of the shared layers whose
    /// network-wide comparison count is at most N, train them and report the Pareto front.
    #[arg(long)]
    pub relu_budget: Option<usize>,
    /// Dataset of the --relu-budget search (default: the first dataset of the run).
    #[arg(long)]
    pub search_dataset: Option<String>,
    /// Activation layers the --relu-budget search groups (comma-separated; default: the
    /// layers the paper shares, e.g. `act1` for Fashion-MNIST; `act1,act2` searches both
    /// convolutional layers).
    #[arg(long, value_delimiter = ',')]
    pub search_layers: Vec<String>,
    /// Candidates of the --relu-budget search to train (evenly spread over the counts).
    #[arg(long, default_value_t = 6)]
    pub search_max: usize,
    /// Only these presets of the chosen tables (comma-separated); the other rows are skipped.
    /// With --spec-row, `--preset original` trains the free-form rows beside the original only.
    #[arg(long, value_delimiter = ',')]
    pub preset: Vec<String>,
    /// Beyond the paper: also train this free-form grouping (the `--spec` syntax of `relushare
    /// train`, applied to `original`) as a row of every dataset of the run, with every seed.
    /// Repeatable. Example: `--spec-row "act1=patch2/c4,act2=patch2/c4"`.
    #[arg(long = "spec-row")]
    pub spec_rows: Vec<String>,
    /// Beyond the paper: distill every shared-ReLU row of the teacher's architecture from this
    /// trained model (typically that architecture's `original`). Distilled rows are saved as
    /// `<row>-distilled` model files, apart from the rows trained without a teacher.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight of the distillation term (with --teacher).
    #[arg(long, default_value_t = 0.7, requires = "teacher")]
    pub distill_alpha: f32,
    /// Softening temperature of the distillation term (with --teacher).
    #[arg(long, default_value_t = 4.0, requires = "teacher")]
    pub distill_temperature: f32,
}

/// What a reused artefact must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TrainSettings {
    pub(crate) dataset: String,
    pub(crate) preset: String,
    pub(crate) quick: bool,
    pub(crate) data_source: String,
    pub(crate) epochs: usize,
    train_images: usize,
    test_images: usize,
    batch_size: usize,
    lr: f64,
    maps_hash: Option<String>,
    /// Hash of the distillation teacher, when the row was distilled.
    #[serde(default)]
    pub(crate) teacher_hash: Option<String>,
    /// Training seed.
    #[serde(default = "first_seed")]
    pub(crate) seed: u64,
}

fn first_seed() -> u64 {
    1
}

/// What `models/<row>.json` beside each trained model holds.
#[derive(Serialize, Deserialize)]
pub(crate) struct TrainRecord {
    pub(crate) settings: TrainSettings,
    pub(crate) row: TrainedRow,
}

#[derive(Serialize, Deserialize)]
struct SecureRecord {
    model_hash: String,
    images: usize,
    row: SecureRow,
}

#[derive(Serialize, Deserialize)]
struct ClusterRecord {
    model_hash: String,
    images: usize,
    runs: Vec<ClusterRun>,
}

/// FNV-1a 64 of a file's bytes, hex (identifies a model/map file for reuse decisions).
fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)?;
    relushare_model::io::write_atomic(path, &bytes)?;
    Ok(())
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct BarProgress {
    bar: ProgressBar,
    label: String,
}

impl Progress for BarProgress {
    fn start_epoch(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.bar.set_length(batches as u64);
        self.bar.set_position(0);
        self.bar
            .set_message(format!("{} epoch {epoch}/{epochs}", self.label));
    }
    fn batch(&mut self, done: usize, loss: f32, accuracy: f32) {
        self.bar.set_position(done as u64);
        if done.is_multiple_of(8) {
            self.bar
                .set_prefix(format!("loss {loss:.3} acc {:.1}%", accuracy * 100.0));
        }
    }
    fn end_epoch(&mut self, m: &EpochMetrics) {
        let test = m
            .test_accuracy
            .map(|a| format!(", test {:.2}%", a * 100.0))
            .unwrap_or_default();
        self.bar.println(format!(
            "  {} epoch {}: loss {:.4}, train {:.2}%{test} ({:.0} img/s)",
            self.label,
            m.epoch,
            m.train_loss,
            m.train_accuracy * 100.0,
            m.images_per_second
        ));
    }
    fn note(&mut self, message: &str) {
        self.bar.println(format!("  {}: {message}", self.label));
    }
}

fn batch_bar(label: &str) -> ProgressBar {
    let pb = ProgressBar::new(1);
    pb.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {prefix} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

fn count_bar(len: usize, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} ({eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    pb
}

/// Run-wide state.
struct Ctx {
    a: Args,
    quick: bool,
    out: PathBuf,
    data_source: String,
    sets: BTreeMap<String, (ImageSet, ImageSet)>,
    results: Results,
    /// Architecture of the --teacher, when one is given.
    teacher_arch: Option<Arch>,
}

impl Ctx {
    fn arch(dataset: &str) -> Result<Arch> {
        dataset
            .parse::<Arch>()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("dataset {dataset}"))
    }

    fn epochs(&self, dataset: &str) -> usize {
        self.a.epochs.unwrap_or(if self.quick {
            1
        } else {
            match dataset {
                "cifar10" => 20,
                "svhn" => 10,
                _ => 15,
            }
        })
    }

    fn batch_size(&self) -> usize {
        self.a
            .batch_size
            .unwrap_or(if self.quick { 32 } else { 64 })
    }

    fn train_limit(&self) -> Option<usize> {
        self.a.limit.or(if self.quick { Some(512) } else { None })
    }

    fn test_limit(&self) -> Option<usize> {
        self.a
            .test_limit
            .or(if self.quick { Some(256) } else { None })
    }

    fn data_name(&self, dataset: &str) -> Result<DatasetName> {
        if self.quick {
            return Ok(DatasetName::Synthetic);
        }
        dataset
            .parse::<DatasetName>()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Train and test sets of a dataset (loaded once).
    fn sets(&mut self, dataset: &str) -> Result<&(ImageSet, ImageSet)> {
        if !self.sets.contains_key(dataset) {
            let d = Self::arch(dataset)?.input();
            let name = self.data_name(dataset)?;
            let dims = (d.c, d.h, d.w);
            let load = |split, limit| {
                relushare_data::load(name, split, self.a.data_dir.as_deref(), limit, dims)
            };
            let tr = load(Split::Train, self.train_limit())?;
            let te = load(Split::Test, self.test_limit())?;
            for w in tr.warnings.iter().chain(&te.warnings) {
                eprintln!("warning: {w}");
                self.results.warnings.push(w.clone());
            }
            if tr.set.dims() != dims {
                bail!(
                    "{dataset} images are {:?}, the {dataset} network expects {d}",
                    tr.set.dims()
                );
            }
            self.sets.insert(dataset.to_string(), (tr.set, te.set));
        }
        Ok(&self.sets[dataset])
    }

    /// Model file of a row; seeds after the first get a `-s<seed>` suffix.
    fn model_path(&self, j: &Job, seed: u64) -> PathBuf {
        // search candidates carry a free-form spec: keep file names portable
        let preset: String = j
            .preset
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let seed = if seed == 1 {
            String::new()
        } else {
            format!("-s{seed}")
        };
        let distilled = if self.distilled(j) { "-distilled" } else { "" };
        self.out.join("models").join(format!(
            "{}-{preset}{distilled}{seed}.safetensors",
            j.dataset
        ))
    }

    /// Whether row `j` is trained with the --teacher (a shared-ReLU row of its architecture).
    fn distilled(&self, j: &Job) -> bool {
        j.preset != "original"
            && self
                .teacher_arch
                .is_some_and(|a| Self::arch(&j.dataset).ok() == Some(a))
    }

    fn maps_path(&self, dataset: &str, preset: &str) -> PathBuf {
        // cluster-mixed uses the whole-channel k = 256 map of act2
        let kind = if preset == "cluster8x8k8" {
            "cluster8x8k8"
        } else {
            "adaptive256"
        };
        self.out
            .join("maps")
            .join(format!("{dataset}-{kind}.safetensors"))
    }

    fn fig(&self, name: &str) -> PathBuf {
        self.out.join("figures").join(name)
    }
}

pub fn run(a: Args) -> Result<()> {
    let paper = PaperNumbers::load()?;
    let tables = report::parse_tables(&a.table).map_err(|e| anyhow::anyhow!(e))?;
    for d in &a.dataset {
        if !["cifar10", "svhn", "fmnist"].contains(&d.as_str()) {
            bail!("unknown dataset '{d}': expected cifar10, svhn or fmnist");
        }
    }
    if a.secure_images == 0 {
        bail!("--secure-images must be at least 1");
    }
    let mut jobs = report::training_jobs(&paper, &tables, &a.dataset);
    let mut secure = report::secure_jobs(&paper, &tables, &a.dataset);
    if !a.preset.is_empty() {
        for p in &a.preset {
            if !jobs.iter().any(|j| &j.preset == p) {
                bail!(
                    "--preset {p}: no row of table(s) {} trains it (rows: {})",
                    tables.join(","),
                    jobs.iter()
                        .map(|j| j.preset.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        jobs.retain(|j| a.preset.contains(&j.preset));
        secure.retain(|(j, _)| a.preset.contains(&j.preset));
    }
    for text in &a.spec_rows {
        let mut row_datasets: Vec<String> = Vec::new();
        for j in &jobs {
            if !row_datasets.contains(&j.dataset) {
                row_datasets.push(j.dataset.clone());
            }
        }
        for d in row_datasets {
            let mut s = relushare_model::ModelSpec::original(Ctx::arch(&d)?);
            presets::apply_freeform(&mut s, text)
                .with_context(|| format!("--spec-row \"{text}\" on {d}"))?;
            let j = Job {
                dataset: d,
                preset: format!("{}{text}", report::SEARCH_PREFIX),
            };
            if !jobs.contains(&j) {
                jobs.push(j);
            }
        }
    }
    if jobs.is_empty() {
        bail!(
            "nothing to do: table(s) {} have no rows for the chosen datasets",
            tables.join(",")
        );
    }
    let mut datasets: Vec<String> = Vec::new();
    for j in &jobs {
        if !datasets.contains(&j.dataset) {
            datasets.push(j.dataset.clone());
        }
    }
    let mut search = None;
    if let Some(budget) = a.relu_budget {
        let d = a
            .search_dataset
            .clone()
            .unwrap_or_else(|| datasets[0].clone());
        if !["cifar10", "svhn", "fmnist"].contains(&d.as_str()) {
            bail!("unknown --search-dataset '{d}': expected cifar10, svhn or fmnist");
        }
        let arch = Ctx::arch(&d)?;
        // candidates identical to a preset row already in the run are not trained twice
        let existing: Vec<Vec<relushare_model::Layer>> = jobs
            .iter()
            .filter(|j| j.dataset == d)
            .filter_map(|j| match j.preset.strip_prefix(report::SEARCH_PREFIX) {
                Some(text) => {
                    let mut s = relushare_model::ModelSpec::original(arch);
                    presets::apply_freeform(&mut s, text).ok().map(|_| s.layers)
                }
                None => presets::build(arch, &j.preset).ok().map(|s| s.layers),
            })
            .collect();
        let layers: Vec<&str> = if a.search_layers.is_empty() {
            arch.shared_layers().to_vec()
        } else {
            let acts = relushare_model::ModelSpec::original(arch).act_names();
            for l in &a.search_layers {
                if !acts.contains(l) {
                    bail!(
                        "--search-layers {l}: {d} has the activation layers {}",
                        acts.join(", ")
                    );
                }
            }
            a.search_layers.iter().map(String::as_str).collect()
        };
        let (fitting, all) = report::search_candidates(arch, &layers, budget, usize::MAX)?;
        let fresh: Vec<(String, usize)> = all
            .into_iter()
            .filter(|(text, _)| {
                let mut s = relushare_model::ModelSpec::original(arch);
                presets::apply_freeform(&mut s, text).is_ok() && !existing.contains(&s.layers)
            })
            .collect();
        let take = a.search_max.min(fresh.len());
        let picked: Vec<(String, usize)> = (0..take)
            .map(|i| {
                let idx = if take == 1 {
                    0
                } else {
                    i * (fresh.len() - 1) / (take - 1)
                };
                fresh[idx].clone()
            })
            .collect();
        if fitting == 0 {
            bail!(
                "no per-layer grouping of {d}'s layers {} fits {budget} comparisons per image (the smallest, one ReLU per channel, needs {}; --search-layers widens the search)",
                layers.join(","),
                report::search_candidates(arch, &layers, usize::MAX, usize::MAX)?
                    .1
                    .iter()
                    .map(|(_, t)| *t)
                    .min()
                    .unwrap_or(0)
            );
        }
        if !datasets.contains(&d) {
            datasets.push(d.clone());
        }
        let orig = Job {
            dataset: d.clone(),
            preset: "original".into(),
        };
        if !jobs.contains(&orig) {
            jobs.push(orig);
        }
        let mut trained = Vec::new();
        for (text, _) in picked {
            let preset = format!("{}{text}", report::SEARCH_PREFIX);
            trained.push(preset.clone());
            let j = Job {
                dataset: d.clone(),
                preset,
            };
            if !jobs.contains(&j) {
                jobs.push(j);
            }
        }
        search = Some(report::SearchSummary {
            dataset: d,
            budget,
            fitting,
            trained,
        });
    }
    let quick = a.quick;
    if !quick {
        let Some(dir) = &a.data_dir else {
            bail!(
                "the paper's tables need the real datasets ({}). Download them with\n  {}\nthen run `relushare reproduce --table {} --data-dir DIR`, or try the pipeline on synthetic data with `--quick`",
                datasets.join(", "),
                datasets
                    .iter()
                    .map(|d| format!("relushare data fetch --dataset {d} --data-dir DIR"))
                    .collect::<Vec<_>>()
                    .join("\n  "),
                a.table
            );
        };
        // every dataset present before hours of training start
        let mut missing = Vec::new();
        for d in &datasets {
            let name: DatasetName = d.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let dims = name.dims().unwrap_or((3, 32, 32));
            if let Err(e) = relushare_data::load(name, Split::Test, Some(dir), Some(1), dims) {
                missing.push(format!("{d}: {e}"));
            }
        }
        if !missing.is_empty() {
            bail!(
                "datasets missing under {}:\n  {}\n(fetch them with `relushare data fetch --dataset NAME --data-dir {}`, restrict with --dataset, or use --quick)",
                dir.display(),
                missing.join("\n  "),
                dir.display()
            );
        }
    }
    let data_source = if quick {
        "synthetic images generated by relushare-data (--quick), NOT the paper's datasets"
            .to_string()
    } else {
        format!(
            "real datasets from {}",
            a.data_dir.as_ref().expect("checked").display()
        )
    };
    let out = a.out.clone();
    std::fs::create_dir_all(out.join("models"))
        .with_context(|| format!("creating {}", out.display()))?;
    let teacher_arch = match &a.teacher {
        Some(p) => Some(
            Model::load(p)
                .with_context(|| format!("loading the teacher {}", p.display()))?
                .spec
                .arch,
        ),
        None => None,
    };
    let mut ctx = Ctx {
        teacher_arch,
        quick,
        out,
        data_source: data_source.clone(),
        sets: BTreeMap::new(),
        results: Results {
            quick,
            data_source,
            tables: tables.clone(),
            datasets: datasets.clone(),
            search,
            ..Default::default()
        },
        a,
    };
    ctx.results.settings = serde_json::json!({
        "epochs": datasets.iter().map(|d| (d.clone(), ctx.epochs(d))).collect::<BTreeMap<_, _>>(),
        "batch_size": ctx.batch_size(),
        "train_limit": ctx.train_limit(),
        "test_limit": ctx.test_limit(),
        "cluster_limit": ctx.a.cluster_limit,
        "secure_images": ctx.a.secure_images,
        "lr": ctx.a.lr,
        "relu_budget": ctx.a.relu_budget,
        "search_max": ctx.a.search_max,
        "datasets": datasets,
    });
    let started = Instant::now();
    eprintln!(
        "reproduce: tables {}, {} models to train, {} secure runs; output in {}{}",
        tables.join(","),
        jobs.len(),
        secure.len(),
        ctx.out.display(),
        if quick {
            " (QUICK: synthetic data)"
        } else {
            ""
        }
    );

    // every row's first seed before any row's second: a partial run already covers the table
    let seeds = ctx.a.seeds;
    for seed in 1..=seeds {
        for (i, j) in jobs.iter().enumerate() {
            let of = if seeds > 1 {
                format!(" (seed {seed}/{seeds})")
            } else {
                String::new()
            };
            eprintln!("[{}/{}] {}/{}{of}", i + 1, jobs.len(), j.dataset, j.preset);
            let row = train_row(&mut ctx, j, seed)?;
            ctx.results.trained.push(row);
            // the summary grows row by row, so a long run's partial results can be kept
            if let Some(path) = &ctx.a.summary {
                write_summary(&ctx, &paper, path)?;
            }
        }
    }
    for d in &datasets {
        if ctx.results.trained(d, "original").is_some() {
            if let Err(e) = total_variation(&mut ctx, d) {
                let msg = format!("total variation of {d} skipped: {e:#}");
                eprintln!("warning: {msg}");
                ctx.results.warnings.push(msg);
            }
        }
    }
    for (i, (j, suite)) in secure.iter().enumerate() {
        eprintln!(
            "[secure {}/{}] {}/{} on {suite}",
            i + 1,
            secure.len(),
            j.dataset,
            j.preset
        );
        let row = secure_row(&mut ctx, j, suite)?;
        ctx.results.secure.push(row);
    }
    figures(&mut ctx, &paper, &datasets);

    let md = report::render_markdown(&ctx.results, &paper);
    relushare_model::io::write_atomic(&ctx.out.join("report.md"), md.as_bytes())?;
    write_json(&ctx.out.join("results.json"), &ctx.results)?;
    if let Some(path) = &ctx.a.summary {
        write_summary(&ctx, &paper, path)?;
        eprintln!("summary over seeds: {}", path.display());
    }
    if ctx.a.json {
        println!("{}", serde_json::to_string_pretty(&ctx.results)?);
    } else {
        println!(
            "done in {:.0} s: {} trained rows, {} secure runs, {} figures",
            started.elapsed().as_secs_f64(),
            ctx.results.trained.len(),
            ctx.results.secure.len(),
            ctx.results.figures.len()
        );
        println!("report: {}", ctx.out.join("report.md").display());
        if quick {
            println!("note: --quick numbers come from synthetic data and are not comparable with the paper");
        }
    }
    Ok(())
}

/// The `relushare train` command that trains row `j` with `seed` exactly as this run does.
fn train_command(ctx: &Ctx, j: &Job, seed: u64) -> String {
    let mut cmd = format!("relushare train --arch {}", j.dataset);
    match j.preset.strip_prefix(report::SEARCH_PREFIX) {
        Some(text) => cmd += &format!(" --spec \"{text}\""),
        None => cmd += &format!(" --preset {}", j.preset),
    }
    if report::needs_clusters(&j.preset) {
        cmd += &format!(
            " --cluster-map {}",
            ctx.maps_path(&j.dataset, &j.preset).display()
        );
    }
    if ctx.quick {
        cmd += " --dataset synthetic";
    } else {
        cmd += &format!(" --dataset {}", j.dataset);
        if let Some(d) = &ctx.a.data_dir {
            cmd += &format!(" --data-dir {}", d.display());
        }
    }
    if let Some(n) = ctx.train_limit() {
        cmd += &format!(" --limit {n}");
    }
    if let Some(n) = ctx.test_limit() {
        cmd += &format!(" --test-limit {n}");
    }
    cmd += &format!(
        " --epochs {} --batch-size {} --seed {seed}",
        ctx.epochs(&j.dataset),
        ctx.batch_size()
    );
    if ctx.quick {
        cmd += " --augment none";
    }
    if let Some(lr) = ctx.a.lr {
        cmd += &format!(" --lr {lr}");
    }
    if let Some(t) = &ctx.a.teacher {
        if ctx.distilled(j) {
            cmd += &format!(
                " --teacher {} --distill-alpha {} --distill-temperature {}",
                t.display(),
                ctx.a.distill_alpha,
                ctx.a.distill_temperature
            );
        }
    }
    cmd += &format!(" --out {}", ctx.model_path(j, seed).display());
    cmd
}

/// This process's command line, as `relushare <args>` (recorded beside what it wrote).
pub(crate) fn invocation() -> String {
    std::iter::once("relushare".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates the folder `path` goes into, if it has one.
pub(crate) fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Sets top-level `keys` of the JSON object in `path` (created when missing), keeping its other
/// keys; a file that is not a JSON object is refused, never overwritten.
pub(crate) fn merge_json_keys(path: &Path, keys: Vec<(&str, serde_json::Value)>) -> Result<()> {
    let mut doc = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .with_context(|| format!("{} is not valid JSON; not overwriting it", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(obj) = doc.as_object_mut() else {
        bail!(
            "{} holds no JSON object; not overwriting it",
            path.display()
        );
    };
    for (k, v) in keys {
        obj.insert(k.to_string(), v);
    }
    create_parent(path)?;
    relushare_model::io::write_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    Ok(())
}

/// Writes the per-row summary over seeds into `path`, keeping the file's other top-level keys.
fn write_summary(ctx: &Ctx, paper: &PaperNumbers, path: &Path) -> Result<()> {
    // the paper's rows; free-form and search rows belong to the Pareto front (`relushare pareto`)
    let rows: Vec<report::SeedSummary> =
        report::summarize_seeds(&ctx.results, paper, &ctx.results.tables)
            .into_iter()
            .filter(|r| !r.preset.starts_with(report::SEARCH_PREFIX))
            .collect();
    let values: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let j = Job {
                dataset: r.dataset.clone(),
                preset: r.preset.clone(),
            };
            let mut v = serde_json::to_value(r).expect("plain data");
            v["command"] = serde_json::Value::String(train_command(ctx, &j, r.seeds[0]));
            v
        })
        .collect();
    merge_json_keys(
        path,
        vec![
            ("rows", serde_json::Value::Array(values)),
            ("data_source", ctx.results.data_source.clone().into()),
            ("reproduce_command", invocation().into()),
        ],
    )?;
    if let Some(page) = &ctx.a.summary_doc {
        write_summary_doc(ctx, &rows, path, page)?;
    }
    Ok(())
}

/// The summary as markdown, with one curves figure per dataset.
fn write_summary_doc(
    ctx: &Ctx,
    rows: &[report::SeedSummary],
    json: &Path,
    page: &Path,
) -> Result<()> {
    create_parent(page)?;
    let dir = page.parent().filter(|d| !d.as_os_str().is_empty());
    let stem = page
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "summary".into());
    let mut md = format!(
        "# Test accuracy over seeds\n\nWritten by `{}` (the rows so far; it is rewritten as rows finish). Data: {}. Numbers: {}.\n\n",
        invocation(),
        ctx.results.data_source,
        json.display()
    );
    let mut datasets: Vec<&str> = Vec::new();
    for r in rows {
        if !datasets.contains(&r.dataset.as_str()) {
            datasets.push(&r.dataset);
        }
    }
    for d in datasets {
        let ds: Vec<report::SeedSummary> =
            rows.iter().filter(|r| r.dataset == d).cloned().collect();
        let first = &ds[0];
        md += &format!(
            "## {d}: {} training / {} test images\n\n{}\n",
            first.train_images,
            first.test_images,
            report::render_seed_table(&ds)
        );
        let series: Vec<(String, Vec<(usize, f64)>)> = ctx
            .results
            .trained
            .iter()
            .filter(|t| {
                t.dataset == d
                    && !t.history.is_empty()
                    && !t.preset.starts_with(report::SEARCH_PREFIX)
            })
            .map(|t| {
                (
                    t.preset.clone(),
                    t.history
                        .iter()
                        .filter_map(|h| h.test_accuracy.map(|a| (h.epoch, a)))
                        .collect(),
                )
            })
            .collect();
        let png = format!("{stem}-curves-{d}.png");
        let png_path = dir
            .map(|x| x.join(&png))
            .unwrap_or_else(|| PathBuf::from(&png));
        match plot::curves_figure(
            &series,
            &format!("{d}: test accuracy per epoch (each seed)"),
            &png_path,
        ) {
            Ok(()) => md += &format!("![{d} curves]({png})\n\n"),
            Err(e) => eprintln!("warning: curves of {d} not drawn: {e}"),
        }
    }
    relushare_model::io::write_atomic(page, md.as_bytes())?;
    Ok(())
}

fn train_row(ctx: &mut Ctx, j: &Job, seed: u64) -> Result<TrainedRow> {
    let arch = Ctx::arch(&j.dataset)?;
    let maps = if report::needs_clusters(&j.preset) {
        let p = ensure_maps(ctx, &j.dataset, &j.preset)?;
        Some((ClusterMaps::load(&p)?, file_hash(&p)?))
    } else {
        None
    };
    let (train_n, test_n) = {
        let (tr, te) = ctx.sets(&j.dataset)?;
        (tr.len(), te.len())
    };
    // --teacher applies to the shared-ReLU rows of the teacher's architecture.
    let teacher = match &ctx.a.teacher {
        Some(p) if ctx.distilled(j) => {
            let t =
                Model::load(p).with_context(|| format!("loading the teacher {}", p.display()))?;
            Some((t, file_hash(p)?))
        }
        _ => None,
    };
    let settings = TrainSettings {
        dataset: j.dataset.clone(),
        preset: j.preset.clone(),
        quick: ctx.quick,
        data_source: ctx.data_source.clone(),
        epochs: ctx.epochs(&j.dataset),
        train_images: train_n,
        test_images: test_n,
        batch_size: ctx.batch_size(),
        lr: ctx
            .a
            .lr
            .unwrap_or(relushare_nn::OptimizerKind::Adam.default_lr()),
        maps_hash: maps.as_ref().map(|(_, h)| h.clone()),
        teacher_hash: teacher.as_ref().map(|(_, h)| h.clone()),
        seed,
    };
    let model_path = ctx.model_path(j, seed);
    let record_path = model_path.with_extension("json");
    if !ctx.a.force && model_path.exists() {
        if let Some(rec) = read_json::<TrainRecord>(&record_path) {
            if rec.settings == settings {
                eprintln!(
                    "  reusing {} (test accuracy {:.2}%)",
                    model_path.display(),
                    rec.row.test_accuracy
                );
                return Ok(TrainedRow {
                    reused: true,
                    ..rec.row
                });
            }
            eprintln!(
                "  settings changed since {}; retraining",
                model_path.display()
            );
        }
    }

    let mut spec = match j.preset.strip_prefix(report::SEARCH_PREFIX) {
        Some(text) => {
            let mut s = relushare_model::ModelSpec::original(arch);
            presets::apply_freeform(&mut s, text)?;
            s
        }
        None => presets::build(arch, &j.preset)?,
    };
    let name = ctx.data_name(&j.dataset)?;
    let norm = relushare_nn::normalization_for(name, spec.input.c);
    spec.normalization = norm;
    let ckpt = ctx.out.join("checkpoints").join(
        model_path
            .with_extension("ckpt")
            .file_name()
            .expect("a file name"),
    );
    let mut cfg = TrainConfig {
        epochs: settings.epochs,
        batch_size: settings.batch_size,
        lr: settings.lr,
        augmentation: if ctx.quick {
            Augmentation::None
        } else {
            match j.dataset.as_str() {
                "cifar10" => Augmentation::CropFlip,
                "svhn" => Augmentation::Crop,
                _ => Augmentation::None,
            }
        },
        // per-epoch test accuracy: the curves of the report
        eval_each_epoch: true,
        seed,
        checkpoint: Some(ckpt.clone()),
        resume: false,
        distill: teacher.map(|(t, _)| relushare_nn::Distill {
            teacher: t,
            temperature: ctx.a.distill_temperature,
            alpha: ctx.a.distill_alpha,
        }),
        ..TrainConfig::default()
    };
    // a checkpoint of the same settings lets an interrupted row continue
    let ckpt_settings = ckpt.with_extension("json");
    if !ctx.a.force
        && ckpt.exists()
        && read_json::<TrainSettings>(&ckpt_settings).as_ref() == Some(&settings)
    {
        cfg.resume = true;
    }
    write_json(&ckpt_settings, &settings)?;
    let maps_ref = maps.as_ref().map(|(m, _)| m);
    let (tr, te) = ctx.sets(&j.dataset)?;
    let mut progress = BarProgress {
        bar: batch_bar(&format!("{}/{}", j.dataset, j.preset)),
        label: format!("{}/{}", j.dataset, j.preset),
    };
    let outcome = match relushare_nn::train(&cfg, &spec, maps_ref, tr, te, &mut progress) {
        Ok(o) => o,
        Err(e) if cfg.resume => {
            progress
                .bar
                .println(format!("  cannot resume ({e}); training from scratch"));
            cfg.resume = false;
            relushare_nn::train(&cfg, &spec, maps_ref, tr, te, &mut progress)?
        }
        Err(e) => return Err(e).with_context(|| format!("training {}/{}", j.dataset, j.preset)),
    };
    progress.bar.finish_and_clear();
    outcome.model.save(&model_path)?;
    let c = count(&spec)?;
    let relus_per_channel = arch
        .shared_layers()
        .iter()
        .map(|l| {
            c.layers
                .iter()
                .find(|x| x.name == *l)
                .map(|x| x.relus_per_channel)
                .unwrap_or(0)
        })
        .collect();
    let row = TrainedRow {
        dataset: j.dataset.clone(),
        preset: j.preset.clone(),
        test_accuracy: outcome.test_accuracy as f64 * 100.0,
        train_accuracy: outcome.train_accuracy as f64 * 100.0,
        epochs: settings.epochs,
        train_images: train_n,
        test_images: test_n,
        seconds: outcome.seconds,
        relus_per_channel,
        total_relus: c.total_relus,
        model_path: model_path.display().to_string(),
        reused: false,
        seed,
        history: outcome
            .history
            .iter()
            .map(|m| report::EpochPoint {
                epoch: m.epoch,
                train_loss: m.train_loss as f64,
                train_accuracy: m.train_accuracy as f64 * 100.0,
                test_accuracy: m.test_accuracy.map(|a| a as f64 * 100.0),
            })
            .collect(),
    };
    write_json(
        &record_path,
        &TrainRecord {
            settings,
            row: row.clone(),
        },
    )?;
    let _ = std::fs::remove_file(&ckpt);
    let _ = std::fs::remove_file(&ckpt_settings);
    eprintln!(
        "  test accuracy {:.2}% ({} comparisons/image, {:.0} s)",
        row.test_accuracy, row.total_relus, row.seconds
    );
    Ok(row)
}

/// The cluster-map file a data-driven preset needs, clustering the trained original model's
/// activations when it is missing or stale.
fn ensure_maps(ctx: &mut Ctx, dataset: &str, preset: &str) -> Result<PathBuf> {
    let target = ctx.maps_path(dataset, preset);
    let orig = Job {
        dataset: dataset.into(),
        preset: "original".into(),
    };
    let orig_path = ctx.model_path(&orig, 1);
    if ctx.results.trained(dataset, "original").is_none() {
        bail!("{dataset}/{preset} needs the trained original model first");
    }
    let model_hash = file_hash(&orig_path)?;
    let record_path = ctx.out.join("maps").join(format!("{dataset}.json"));
    let images = {
        let limit = ctx.a.cluster_limit;
        let (tr, _) = ctx.sets(dataset)?;
        limit.map_or(tr.len(), |l| l.min(tr.len()))
    };
    if !ctx.a.force && target.exists() {
        if let Some(rec) = read_json::<ClusterRecord>(&record_path) {
            if rec.model_hash == model_hash && rec.images == images {
                // the figures drawn when the maps were made
                for l in Ctx::arch(dataset)?.shared_layers() {
                    for f in [
                        ctx.fig(&format!("fig4_clusters_{dataset}_{l}.png")),
                        ctx.fig(&format!("fig2_triple_{dataset}_{l}.png")),
                    ] {
                        let s = f.display().to_string();
                        if f.exists() && !ctx.results.figures.contains(&s) {
                            ctx.results.figures.push(s);
                        }
                    }
                }
                for r in rec.runs {
                    if !ctx.results.clustering.contains(&r) {
                        ctx.results.clustering.push(r);
                    }
                }
                return Ok(target);
            }
        }
    }
    let model = Model::load(&orig_path)?;
    let arch = Ctx::arch(dataset)?;
    let layers: Vec<String> = arch.shared_layers().iter().map(|s| s.to_string()).collect();
    let (tr, _) = ctx.sets(dataset)?;
    let mut subset = tr.clone();
    subset.truncate(images);
    eprintln!(
        "  clustering {dataset} {} over {images} training images",
        layers.join(",")
    );
    let t0 = Instant::now();
    let pb = count_bar(images, &format!("trace {dataset}"));
    let pbc = pb.clone();
    let responses = trace::relu_responses(&model, &subset, &layers, &move |d| {
        pbc.set_position(d as u64)
    })?;
    pb.finish_and_clear();
    let trace_seconds = t0.elapsed().as_secs_f64();
    let mut adaptive = ClusterMaps::default();
    let mut windowed = ClusterMaps::default();
    let mut runs = Vec::new();
    let adaptive_path = ctx.maps_path(dataset, "adaptive256");
    let windowed_path = ctx.maps_path(dataset, "cluster8x8k8");
    for r in &responses {
        let dims = (r.dims.c, r.dims.h, r.dims.w);
        let mut variants = vec![(
            ClusterParams {
                k: 256,
                window: None,
            },
            &adaptive_path,
        )];
        if dataset == "cifar10" {
            variants.push((
                ClusterParams {
                    k: 8,
                    window: Some(8),
                },
                &windowed_path,
            ));
        }
        for (params, path) in variants {
            let t = Instant::now();
            let c = cluster_layer(&r.bits, dims, params)
                .with_context(|| format!("clustering {dataset} {}", r.layer))?;
            let secs = t.elapsed().as_secs_f64();
            let dest = if params.window.is_some() {
                &mut windowed
            } else {
                &mut adaptive
            };
            dest.insert(&r.layer, c.to_model())?;
            runs.push(ClusterRun {
                dataset: dataset.into(),
                layer: r.layer.clone(),
                k: params.k,
                window: params.window,
                images,
                trace_seconds,
                cluster_seconds: secs,
                map_path: path.display().to_string(),
            });
            // figures 2 and 4 from the whole-channel maps
            if params.window.is_none() {
                let plane = r.dims.h * r.dims.w;
                let grid = ctx.fig(&format!("fig4_clusters_{dataset}_{}.png", r.layer));
                let title = format!(
                    "{} {}: cluster maps of all {} channels (k = 256, {} training images)",
                    dataset, r.layer, r.dims.c, images
                );
                let triple = ctx.fig(&format!("fig2_triple_{dataset}_{}.png", r.layer));
                let response: Vec<bool> = (0..plane).map(|p| r.bits.get(p, 0)).collect();
                let res = plot::cluster_grid(&c.ids, dims, &title, &grid).and_then(|_| {
                    plot::triple_figure(
                        subset.image(0),
                        subset.dims(),
                        &response,
                        &c.ids[..plane],
                        (r.dims.h, r.dims.w),
                        &format!(
                            "{dataset} {} channel 0: an input, its ReLU response, the channel's clusters",
                            r.layer
                        ),
                        &triple,
                    )
                });
                match res {
                    Ok(()) => {
                        for f in [grid, triple] {
                            let s = f.display().to_string();
                            if !ctx.results.figures.contains(&s) {
                                ctx.results.figures.push(s);
                            }
                        }
                    }
                    Err(e) => ctx
                        .results
                        .warnings
                        .push(format!("cluster figures of {dataset} not drawn: {e}")),
                }
            }
        }
    }
    adaptive.save(&adaptive_path)?;
    if !windowed.layers.is_empty() {
        windowed.save(&windowed_path)?;
    }
    for r in &runs {
        eprintln!(
            "  {} k={}{}: {:.2} s",
            r.layer,
            r.k,
            r.window
                .map(|m| format!(" per {m}x{m}"))
                .unwrap_or_default(),
            r.cluster_seconds
        );
    }
    write_json(
        &record_path,
        &ClusterRecord {
            model_hash,
            images,
            runs: runs.clone(),
        },
    )?;
    ctx.results.clustering.retain(|r| r.dataset != dataset);
    ctx.results.clustering.extend(runs);
    Ok(target)
}

fn total_variation(ctx: &mut Ctx, dataset: &str) -> Result<()> {
    let path = ctx.model_path(
        &Job {
            dataset: dataset.into(),
            preset: "original".into(),
        },
        1,
    );
    let model = Model::load(&path)?;
    let n = if ctx.quick { 64 } else { 1000 };
    let (_, te) = ctx.sets(dataset)?;
    let mut set = te.clone();
    set.truncate(n);
    let pb = count_bar(set.len(), &format!("total variation {dataset}"));
    let pbc = pb.clone();
    let rows = trace::total_variation(&model, &set, &move |d| pbc.set_position(d as u64))?;
    pb.finish_and_clear();
    relushare_model::io::write_atomic(
        &ctx.out.join(format!("tv_{dataset}.csv")),
        tv::to_csv(&rows).as_bytes(),
    )?;
    let fig = ctx.fig(&format!("fig3_tv_{dataset}.png"));
    match plot::tv_figure(
        &rows,
        &format!(
            "Total variation of the activation layers ({dataset} original, {} test images)",
            set.len()
        ),
        &fig,
    ) {
        Ok(()) => ctx.results.figures.push(fig.display().to_string()),
        Err(e) => ctx
            .results
            .warnings
            .push(format!("figure {} not drawn: {e}", fig.display())),
    }
    ctx.results
        .total_variation
        .push((dataset.to_string(), rows));
    Ok(())
}

fn secure_row(ctx: &mut Ctx, j: &Job, suite: &str) -> Result<SecureRow> {
    use relushare_mpc::fixed;
    use relushare_mpc::protocol::Protocol;
    let model_path = ctx.model_path(j, 1);
    let model_hash = file_hash(&model_path)?;
    let record_path = ctx
        .out
        .join("secure")
        .join(format!("{}-{}-{suite}.json", j.dataset, j.preset));
    let images = ctx.a.secure_images;
    if !ctx.a.force {
        if let Some(rec) = read_json::<SecureRecord>(&record_path) {
            if rec.model_hash == model_hash && rec.images == images {
                eprintln!("  reusing {}", record_path.display());
                return Ok(SecureRow {
                    reused: true,
                    ..rec.row
                });
            }
        }
    }
    let model = Model::load(&model_path)?;
    let (_, te) = ctx.sets(&j.dataset)?;
    let n = images.min(te.len());
    let protocol: Protocol = suite.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "secure inference {}/{} on {suite} ({n} image(s))",
        j.dataset, j.preset
    ));
    spinner.enable_steady_tick(std::time::Duration::from_millis(250));
    let s = run_secure(&model, te, n, protocol, 1, fixed::DEFAULT_FRAC_BITS)
        .with_context(|| format!("secure inference of {}/{} on {suite}", j.dataset, j.preset))?;
    spinner.finish_and_clear();
    let agree = s.per_image.iter().filter(|r| r.agree).count();
    let agree_unfused = s.per_image.iter().filter(|r| r.agree_unfused).count();
    let row = SecureRow {
        dataset: j.dataset.clone(),
        preset: j.preset.clone(),
        suite: suite.to_string(),
        images: s.images,
        online_bytes: s.online_bytes,
        offline_bytes: s.offline_bytes,
        setup_bytes: s.setup_bytes as f64,
        online_rounds: s.rounds as f64,
        offline_rounds: s.offline_rounds as f64,
        online_seconds: s.online_seconds,
        offline_seconds: s.offline_seconds,
        setup_seconds: s.setup_seconds,
        agree_with_plaintext: agree,
        agree_with_unfused: agree_unfused,
        layers: s
            .layers
            .iter()
            .map(|l| SecureLayer {
                label: l.name.clone(),
                online_bytes: l.online_bytes as u64,
                offline_bytes: l.offline_bytes as u64,
                online_rounds: l.rounds,
                seconds: l.seconds,
            })
            .collect(),
        reused: false,
    };
    eprintln!(
        "  {:.2} MB online + {:.2} MB offline, {:.0} rounds, {:.2} s online; {agree}/{n} secure classes equal the plaintext fixed-point network's ({agree_unfused}/{n} the unfused one's)",
        row.online_bytes / 1e6,
        row.offline_bytes / 1e6,
        row.online_rounds,
        row.online_seconds
    );
    write_json(
        &record_path,
        &SecureRecord {
            model_hash,
            images,
            row: row.clone(),
        },
    )?;
    Ok(row)
}

/// Pareto plots (accuracy vs comparisons) and secure-cost bars per dataset.
fn figures(ctx: &mut Ctx, paper: &PaperNumbers, datasets: &[String]) {
    for d in datasets {
        let Ok(arch) = Ctx::arch(d) else { continue };
        let ours: Vec<plot::ParetoPoint> = ctx
            .results
            .trained
            .iter()
            .filter(|r| &r.dataset == d)
            .map(|r| plot::ParetoPoint {
                label: r
                    .preset
                    .strip_prefix(report::SEARCH_PREFIX)
                    .unwrap_or(&r.preset)
                    .to_string(),
                comparisons: r.total_relus as f64,
                accuracy: r.test_accuracy,
            })
            .collect();
        let paper_pts: Vec<plot::ParetoPoint> = paper
            .rows
            .iter()
            .filter(|r| &r.dataset == d && ["5", "6", "7"].contains(&r.table.as_str()))
            .filter_map(|r| {
                let p = r.preset.as_ref()?;
                let spec = presets::build(arch, p).ok()?;
                Some(plot::ParetoPoint {
                    label: p.clone(),
                    comparisons: count(&spec).ok()?.total_relus as f64,
                    accuracy: r.accuracy,
                })
            })
            .collect();
        if !ours.is_empty() {
            let f = ctx.fig(&format!("pareto_{d}.png"));
            let title = format!(
                "{d}: accuracy vs secure comparisons{}",
                if ctx.quick {
                    " (QUICK: synthetic data)"
                } else {
                    ""
                }
            );
            match plot::pareto_figure(&ours, &paper_pts, &title, &f) {
                Ok(()) => ctx.results.figures.push(f.display().to_string()),
                Err(e) => ctx.results.warnings.push(format!("{}: {e}", f.display())),
            }
        }
        let bars: Vec<plot::CostBar> = ctx
            .results
            .secure
            .iter()
            .filter(|r| &r.dataset == d)
            .map(|r| plot::CostBar {
                preset: r.preset.clone(),
                suite: r.suite.clone(),
                online_mb: r.online_bytes / 1e6,
                offline_mb: r.offline_bytes / 1e6,
                rounds: r.online_rounds,
                seconds: r.online_seconds + r.offline_seconds,
            })
            .collect();
        if !bars.is_empty() {
            let f = ctx.fig(&format!("secure_cost_{d}.png"));
            match plot::cost_figure(&bars, &format!("{d}: secure inference cost per image"), &f) {
                Ok(()) => ctx.results.figures.push(f.display().to_string()),
                Err(e) => ctx.results.warnings.push(format!("{}: {e}", f.display())),
            }
        }
    }
}
