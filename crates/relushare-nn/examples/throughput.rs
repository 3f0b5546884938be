//! Measure training and inference images/s of a preset on synthetic data:
//! `cargo run --release -p relushare-nn --example throughput -- ARCH PRESET [BACKEND] [IMAGES] [BATCH] [EPOCHS]`
//! (`RELUSHARE_BURN_OPS=1` uses Burn's built-in convolution and pooling instead of relushare_nn's).

use relushare_data::{load, DatasetName, Split};
use relushare_model::{presets, Arch};
use relushare_nn::{evaluate_detailed, train, EvalConfig, NoProgress, TrainConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arch: Arch = args
        .first()
        .map(|s| s.as_str())
        .unwrap_or("cifar10")
        .parse()?;
    let preset = args.get(1).map(|s| s.as_str()).unwrap_or("original");
    let backend = args.get(2).map(|s| s.as_str()).unwrap_or("flex").parse()?;
    let n: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(640);
    let batch: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(64);
    if std::env::var("RELUSHARE_BURN_OPS").is_ok_and(|v| v == "1") {
        // Burn's built-in convolution and pooling instead of relushare_nn's (for comparisons).
        relushare_nn::conv::set_fast_kernels(false);
    }
    let epochs: usize = args.get(5).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let spec = presets::build(arch, preset)?;
    let d = spec.input;
    let set = load(
        DatasetName::Synthetic,
        Split::Train,
        None,
        Some(n),
        (d.c, d.h, d.w),
    )?
    .set;
    let test = load(
        DatasetName::Synthetic,
        Split::Test,
        None,
        Some(512),
        (d.c, d.h, d.w),
    )?
    .set;
    let cfg = TrainConfig {
        epochs,
        batch_size: batch,
        backend,
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    let out = train(&cfg, &spec, None, &set, &test, &mut NoProgress)?;
    let ev = evaluate_detailed(
        &out.model,
        &set,
        &EvalConfig {
            backend,
            ..EvalConfig::default()
        },
    )?;
    println!(
        "{arch} {preset} backend={backend} batch={batch}: train {:.1} images/s, inference {:.1} images/s; after {epochs} epoch(s): train loss {:.4}, train accuracy {:.3}, test accuracy {:.3}",
        out.images_per_second,
        ev.images_per_second,
        out.history.last().map(|m| m.train_loss).unwrap_or(f32::NAN),
        out.train_accuracy,
        out.test_accuracy
    );
    Ok(())
}
