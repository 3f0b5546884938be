//! Training on the complete Fashion-MNIST (60,000 training, 10,000 test images), when the
//! official files are present: Debian's `dataset-fashion-mnist` package, which CI installs, or a
//! `--data-dir` given by `RELUSHARE_FMNIST_DIR`. Skipped with a printed note otherwise.

use std::path::PathBuf;

use relushare_data::{load, DatasetName, Split};
use relushare_model::{presets, Arch};
use relushare_nn::{normalization_for, train, NoProgress, TrainConfig};

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("RELUSHARE_FMNIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/datasets"));
    dir.join("fashion-mnist").is_dir().then_some(dir)
}

/// One epoch of the paper's Fashion-MNIST network (`original`, batch 32, otherwise the default
/// recipe) over all 60,000 training images reaches at least 86% on all 10,000 test images (about
/// 30 s on two idle cores).
#[test]
fn one_epoch_of_original_on_the_full_data() {
    let Some(dir) = data_dir() else {
        println!("note: the full Fashion-MNIST is absent (apt-get install dataset-fashion-mnist, or set RELUSHARE_FMNIST_DIR); skipped");
        return;
    };
    let tr = load(
        DatasetName::Fmnist,
        Split::Train,
        Some(&dir),
        None,
        (1, 28, 28),
    )
    .unwrap();
    let te = load(
        DatasetName::Fmnist,
        Split::Test,
        Some(&dir),
        None,
        (1, 28, 28),
    )
    .unwrap();
    assert_eq!((tr.set.len(), te.set.len()), (60_000, 10_000));
    let mut spec = presets::build(Arch::Fmnist, "original").unwrap();
    spec.normalization = normalization_for(DatasetName::Fmnist, 1);
    // batch 32: twice the steps of the default recipe in the one epoch
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 32,
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    let out = train(&cfg, &spec, None, &tr.set, &te.set, &mut NoProgress).unwrap();
    println!(
        "full Fashion-MNIST, 1 epoch: test accuracy {:.2}% ({:.0} images/s)",
        out.test_accuracy * 100.0,
        out.images_per_second
    );
    assert!(
        out.test_accuracy >= 0.86,
        "test accuracy {:.2}% < 86%",
        out.test_accuracy * 100.0
    );
}
