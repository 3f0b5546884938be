//! Measure training and inference images/s of a preset on synthetic data:
//! `cargo run --release -p relushare-nn --example throughput -- ARCH PRESET [BACKEND] [IMAGES] [BATCH]`.

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
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: batch,
        backend,
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    let out = train(&cfg, &spec, None, &set, &set, &mut NoProgress)?;
    let ev = evaluate_detailed(
        &out.model,
        &set,
        &EvalConfig {
            backend,
            ..EvalConfig::default()
        },
    )?;
    println!(
        "{arch} {preset} backend={backend} batch={batch}: train {:.1} images/s, inference {:.1} images/s",
        out.images_per_second, ev.images_per_second
    );
    Ok(())
}
