//! `relushare train` and `relushare eval` end to end on small synthetic sets.

use std::process::Command;

fn relushare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relushare"))
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn train_then_eval_agree() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let out = relushare()
        .args([
            "train",
            "--arch",
            "fmnist",
            "--preset",
            "uniform3",
            "--dataset",
            "synthetic",
        ])
        .args([
            "--limit",
            "256",
            "--test-limit",
            "128",
            "--epochs",
            "1",
            "--json",
            "--out",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let t = json(&out);
    for key in [
        "train_accuracy",
        "test_accuracy",
        "relus",
        "seconds",
        "images_per_second",
    ] {
        assert!(t.get(key).is_some(), "missing {key} in {t}");
    }
    assert_eq!(t["relus"], 15264);
    assert_eq!(t["history"].as_array().unwrap().len(), 1);
    assert!(model.exists());
    assert!(dir.path().join("m.safetensors.metrics.json").exists());
    assert!(dir.path().join("m.safetensors.ckpt").exists());

    let out = relushare()
        .args([
            "eval",
            "--dataset",
            "synthetic",
            "--limit",
            "128",
            "--json",
            "--model",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let e = json(&out);
    let acc = e["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(
        (acc - t["test_accuracy"].as_f64().unwrap()).abs() < 1e-6,
        "{e} vs {t}"
    );
    assert_eq!(e["total"], 128);

    // Resuming a finished run trains nothing more and reports the same model.
    let out = relushare()
        .args([
            "train",
            "--arch",
            "fmnist",
            "--preset",
            "uniform3",
            "--dataset",
            "synthetic",
        ])
        .args([
            "--limit",
            "256",
            "--test-limit",
            "128",
            "--epochs",
            "1",
            "--json",
            "--resume",
            "--out",
        ])
        .arg(&model)
        .output()
        .unwrap();
    let r = json(&out);
    assert_eq!(r["resumed_from_epoch"], 1);
    assert_eq!(r["test_accuracy"], t["test_accuracy"]);
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let run = |args: &[&str]| {
        let out = relushare()
            .args(args)
            .arg("--out")
            .arg(&model)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = run(&[
        "train",
        "--arch",
        "cifar10",
        "--preset",
        "adaptive256",
        "--dataset",
        "synthetic",
    ]);
    assert!(e.contains("--cluster-map"), "{e}");
    let e = run(&[
        "train",
        "--arch",
        "fmnist",
        "--dataset",
        "synthetic",
        "--limit",
        "8",
        "--resume",
    ]);
    assert!(e.contains("no checkpoint"), "{e}");
    let e = run(&["train", "--arch", "fmnist", "--dataset", "cifar10"]);
    assert!(e.contains("--data-dir") || e.contains("data dir"), "{e}");
    let out = relushare()
        .args(["eval", "--dataset", "synthetic", "--model"])
        .arg(dir.path().join("missing.safetensors"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.safetensors"));
}

/// `train --init` fine-tunes a given model file with the sharing of `--spec` applied, and says
/// clearly what is wrong with a bad combination.
#[test]
fn train_init_fine_tunes_a_model_file() {
    use relushare_model::{presets, ActKind, Arch, Model};
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.safetensors");
    let spec = presets::build(Arch::Svhn, "original").unwrap();
    Model::random(spec, None, 4).unwrap().save(&init).unwrap();
    let ft = dir.path().join("ft.safetensors");
    let out = relushare()
        .args(["train", "--init"])
        .arg(&init)
        .args(["--spec", "act1=channel", "--dataset", "synthetic"])
        .args([
            "--limit",
            "64",
            "--test-limit",
            "32",
            "--epochs",
            "1",
            "--json",
        ])
        .arg("--out")
        .arg(&ft)
        .output()
        .unwrap();
    let t = json(&out);
    assert_eq!(t["init"], init.display().to_string());
    let m = Model::load(&ft).unwrap();
    assert!(matches!(m.spec.act("act1"), Some(ActKind::Shared(_))));
    assert!(m.params.contains_key("act1.v"));
    // --arch with --init, and a layer the model does not have.
    let out = relushare()
        .args(["train", "--arch", "svhn", "--init"])
        .arg(&init)
        .args(["--dataset", "synthetic", "--out"])
        .arg(&ft)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--init"));
    let out = relushare()
        .args(["train", "--init"])
        .arg(&init)
        .args(["--spec", "relu9=channel", "--dataset", "synthetic", "--out"])
        .arg(&ft)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relu9") && err.contains("act1, act2"), "{err}");
}
