//! Training end to end on synthetic data: learning (release builds), checkpoints and resume,
//! and clear errors for bad input.

use relushare_data::{load, DatasetName, ImageSet, Split};
use relushare_model::{presets, Arch, ModelSpec};
use relushare_nn::{
    evaluate, normalization_for, train, EvalConfig, NnError, NoProgress, OptimizerKind, TrainConfig,
};

fn synthetic(spec: &ModelSpec, split: Split, n: usize) -> ImageSet {
    let d = spec.input;
    load(
        DatasetName::Synthetic,
        split,
        None,
        Some(n),
        (d.c, d.h, d.w),
    )
    .unwrap()
    .set
}

fn fmnist_uniform3() -> ModelSpec {
    let mut spec = presets::build(Arch::Fmnist, "uniform3").unwrap();
    spec.normalization = normalization_for(DatasetName::Synthetic, 1);
    spec
}

/// Issue 3's acceptance check: fmnist + uniform3, 2,000 synthetic images, 2 epochs, clearly
/// above chance (10%) on held-out synthetic images. Release builds only (debug is too slow).
#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn fmnist_uniform3_learns_synthetic_data() {
    let spec = fmnist_uniform3();
    let train_set = synthetic(&spec, Split::Train, 2000);
    let test_set = synthetic(&spec, Split::Test, 1000);
    let cfg = TrainConfig {
        epochs: 2,
        seed: 3,
        ..TrainConfig::default()
    };
    let t0 = std::time::Instant::now();
    let out = train(&cfg, &spec, None, &train_set, &test_set, &mut NoProgress).unwrap();
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "fmnist uniform3: test accuracy {:.3}, train accuracy {:.3}, {} relus, {secs:.1} s, {:.0} images/s",
        out.test_accuracy, out.train_accuracy, out.relus, out.images_per_second
    );
    assert!(
        out.test_accuracy > 0.5,
        "test accuracy {}",
        out.test_accuracy
    );
    assert!(secs < 180.0, "took {secs} s");
    assert_eq!(out.history.len(), 2);
    assert!(out.history[1].train_loss < out.history[0].train_loss);
    // The learned decision weights moved away from their initial 1.
    let v = &out.model.params["act1.v"].data;
    assert!(v.iter().any(|&x| (x - 1.0).abs() > 1e-4));
    // Evaluating the exported model reproduces the training run's test accuracy.
    let acc = evaluate(&out.model, &test_set, &EvalConfig::default()).unwrap();
    assert!(
        (acc - out.test_accuracy).abs() < 1e-6,
        "{acc} vs {}",
        out.test_accuracy
    );
    assert_eq!(
        out.relus,
        relushare_model::count(&spec).unwrap().total_relus
    );
}

#[test]
fn checkpoint_resume_continues_the_same_run() {
    let spec = fmnist_uniform3();
    let train_set = synthetic(&spec, Split::Train, 96);
    let test_set = synthetic(&spec, Split::Test, 32);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("run.ckpt");
    let base = TrainConfig {
        epochs: 2,
        batch_size: 32,
        optimizer: OptimizerKind::Sgd,
        lr: 0.02,
        weight_decay: 5e-4,
        checkpoint: Some(ckpt.clone()),
        ..TrainConfig::default()
    };
    // One epoch, then resume for the second; resuming a finished run trains no further.
    let one = TrainConfig {
        epochs: 1,
        ..base.clone()
    };
    train(&one, &spec, None, &train_set, &test_set, &mut NoProgress).unwrap();
    assert!(ckpt.exists());
    let resumed = TrainConfig {
        resume: true,
        ..base.clone()
    };
    let out = train(
        &resumed,
        &spec,
        None,
        &train_set,
        &test_set,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(out.resumed_from_epoch, 1);
    assert_eq!(out.history.len(), 2);
    let again = train(
        &resumed,
        &spec,
        None,
        &train_set,
        &test_set,
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(again.resumed_from_epoch, 2);
    assert_eq!(again.history, out.history);
    assert_eq!(again.model, out.model);

    // A resumed run picks up exactly where an uninterrupted one would be.
    std::fs::remove_file(&ckpt).unwrap();
    let constant = TrainConfig {
        schedule: relushare_nn::LrSchedule::Constant,
        ..base.clone()
    };
    let straight = train(
        &constant,
        &spec,
        None,
        &train_set,
        &test_set,
        &mut NoProgress,
    )
    .unwrap();
    std::fs::remove_file(&ckpt).unwrap();
    train(
        &TrainConfig {
            epochs: 1,
            ..constant.clone()
        },
        &spec,
        None,
        &train_set,
        &test_set,
        &mut NoProgress,
    )
    .unwrap();
    let cont = train(
        &TrainConfig {
            resume: true,
            ..constant
        },
        &spec,
        None,
        &train_set,
        &test_set,
        &mut NoProgress,
    )
    .unwrap();
    for (name, a) in &straight.model.params {
        let b = &cont.model.params[name];
        let diff = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{name} differs by {diff}");
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let spec = fmnist_uniform3();
    let small = synthetic(&spec, Split::Train, 8);
    let cifar_like = load(
        DatasetName::Synthetic,
        Split::Train,
        None,
        Some(8),
        (3, 32, 32),
    )
    .unwrap()
    .set;
    let cfg = TrainConfig {
        epochs: 1,
        ..TrainConfig::default()
    };
    let e = train(&cfg, &spec, None, &cifar_like, &small, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("expects 1x28x28"), "{e}");

    let e = train(
        &TrainConfig {
            epochs: 0,
            ..cfg.clone()
        },
        &spec,
        None,
        &small,
        &small,
        &mut NoProgress,
    )
    .unwrap_err();
    assert!(matches!(e, NnError::Invalid(_)), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("x.ckpt");
    let resume = TrainConfig {
        resume: true,
        checkpoint: Some(ckpt.clone()),
        ..cfg.clone()
    };
    let e = train(&resume, &spec, None, &small, &small, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("no checkpoint"), "{e}");
    std::fs::write(&ckpt, b"garbage").unwrap();
    let e = train(&resume, &spec, None, &small, &small, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("bad magic"), "{e}");

    // A checkpoint of another network is refused.
    let with_ckpt = TrainConfig {
        checkpoint: Some(ckpt.clone()),
        ..cfg.clone()
    };
    let mut other = presets::build(Arch::Fmnist, "original").unwrap();
    other.normalization = spec.normalization.clone();
    train(&with_ckpt, &other, None, &small, &small, &mut NoProgress).unwrap();
    let e = train(&resume, &spec, None, &small, &small, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("another network"), "{e}");
    // A truncated checkpoint is an error, not a panic.
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let resume_other = TrainConfig {
        resume: true,
        checkpoint: Some(ckpt.clone()),
        ..cfg
    };
    let e = train(&resume_other, &other, None, &small, &small, &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
