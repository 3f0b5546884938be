//! `relushare`: privacy-preserving CNN inference with shared ReLUs.
//!
//! A thin command-line layer: every subcommand lives in its own `cmd_*.rs` file and wires the
//! library crates together (relushare-model, -data, -nn, -mpc).

use clap::{Parser, Subcommand};

mod cmd_bench;
mod cmd_classify;
mod cmd_cluster;
mod cmd_count;
mod cmd_data;
mod cmd_demo;
mod cmd_eval;
mod cmd_import;
mod cmd_infer;
mod cmd_keys;
mod cmd_pareto;
mod cmd_party;
mod cmd_reproduce;
mod cmd_serve;
mod cmd_train;
mod image_args;
mod model_args;
mod net_args;
mod serve_bench;

#[derive(Parser)]
#[command(
    name = "relushare",
    version,
    about = "Privacy-preserving CNN inference with shared ReLUs (gReLU): train, count, and classify on secret shares",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Count secure comparisons (ReLUs) and multiplications per layer of an architecture/preset.
    Count(cmd_count::Args),
    /// Benchmarks: secure inference per arch/preset/suite, batching, plaintext, training, memory (JSON).
    Bench(cmd_bench::Args),
    /// The embedded default job: train a shared-ReLU net on synthetic data, then classify test images on secret shares.
    Demo(cmd_demo::Args),
    /// Make a session's keys: a fresh CA and certificates/keys for parties 0, 1 and 2.
    Keys(cmd_keys::Args),
    /// Run one party of a secure inference over TLS (separate processes or machines).
    Party(cmd_party::Args),
    /// Serve private inference: the long-running model owner or helper (clients use `classify`).
    Serve(cmd_serve::Args),
    /// Classify images privately with a served model (this client alone learns the result).
    Classify(cmd_classify::Args),
    /// Datasets: download the official files (`data fetch`) or inspect a split (`data info`).
    Data(cmd_data::Args),
    /// Import an ONNX model (e.g. from torch.onnx.export) as a model file, with its input normalisation and class names.
    Import(cmd_import::Args),
    /// Train an architecture/preset on a dataset (Burn) and write the model file.
    Train(cmd_train::Args),
    /// Accuracy of a model file on a dataset split.
    Eval(cmd_eval::Args),
    /// Secure three-party inference (parties on threads): per-image time, bytes, rounds, agreement with plaintext.
    Infer(cmd_infer::Args),
    /// Cluster a layer's activations by their ReLU responses over the training set (data-driven groups).
    Cluster(cmd_cluster::Args),
    /// Pareto front of accuracy, comparisons and fast bytes over the rows `reproduce` trained.
    Pareto(cmd_pareto::Args),
    /// Reproduce the paper's tables: train every row, count, cluster, run secure inference, write report.md and figures.
    Reproduce(cmd_reproduce::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Count(a) => cmd_count::run(a),
        Command::Bench(a) => cmd_bench::run(a),
        Command::Demo(a) => cmd_demo::run(a),
        Command::Keys(a) => cmd_keys::run(a),
        Command::Party(a) => cmd_party::run(a),
        Command::Serve(a) => cmd_serve::run(a),
        Command::Classify(a) => cmd_classify::run(a),
        Command::Data(a) => cmd_data::run(a),
        Command::Cluster(a) => cmd_cluster::run(a),
        Command::Pareto(a) => cmd_pareto::run(a),
        Command::Reproduce(a) => cmd_reproduce::run(a),
        Command::Import(a) => cmd_import::run(a),
        Command::Train(a) => cmd_train::run(a),
        Command::Eval(a) => cmd_eval::run(a),
        Command::Infer(a) => cmd_infer::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
