//! End-to-end test of `relushare cluster` on synthetic images with a random CIFAR-10 model:
//! the map file it writes plugs into the cluster presets.

use relushare_model::{presets, Arch, ClusterMaps, Model};
use std::process::Command;

#[test]
fn cluster_writes_a_map_the_presets_accept() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = dir.path().join("original.safetensors");
    Model::random(presets::build(Arch::Cifar10, "original").unwrap(), None, 7)
        .unwrap()
        .save(&model_path)
        .unwrap();
    let out = dir.path().join("maps.safetensors");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_relushare"))
            .args(args)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let m = model_path.to_str().unwrap();
    let o = out.to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "cluster",
        "--model",
        m,
        "--dataset",
        "synthetic",
        "--layer",
        "act1,act2",
        "--k",
        "8",
        "--window",
        "8",
        "--limit",
        "96",
        "--out",
        o,
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["images"], 96);
    assert_eq!(report["layers"][0]["groups_per_channel"], 128);
    let maps = ClusterMaps::load(&out).unwrap();
    let spec = presets::build(Arch::Cifar10, "cluster8x8k8").unwrap();
    let model = Model::random(spec, Some(&maps), 1).unwrap();
    assert_eq!(model.group_maps.len(), 2);

    // --append adds a whole-channel layer; the mixed preset then has what it needs
    let (ok, _, stderr) = run(&[
        "cluster",
        "--model",
        m,
        "--dataset",
        "synthetic",
        "--layer",
        "act2",
        "--k",
        "256",
        "--limit",
        "64",
        "--out",
        o,
        "--append",
    ]);
    assert!(ok, "{stderr}");
    let maps = ClusterMaps::load(&out).unwrap();
    assert_eq!(maps.get("act2").unwrap().window, None);
    assert_eq!(maps.get("act1").unwrap().window, Some(8));
    Model::random(
        presets::build(Arch::Cifar10, "cluster-mixed").unwrap(),
        Some(&maps),
        1,
    )
    .unwrap();

    // clear errors, no panics
    for bad in [
        vec![
            "cluster",
            "--model",
            m,
            "--dataset",
            "synthetic",
            "--layer",
            "conv1",
            "--k",
            "4",
            "--limit",
            "8",
            "--out",
            o,
        ],
        vec![
            "cluster",
            "--model",
            m,
            "--dataset",
            "synthetic",
            "--layer",
            "act1",
            "--k",
            "5000",
            "--limit",
            "8",
            "--out",
            o,
        ],
        vec![
            "cluster",
            "--model",
            m,
            "--dataset",
            "fmnist",
            "--layer",
            "act1",
            "--k",
            "4",
            "--out",
            o,
        ],
        vec![
            "cluster",
            "--model",
            "/nonexistent",
            "--dataset",
            "synthetic",
            "--layer",
            "act1",
            "--k",
            "4",
            "--out",
            o,
        ],
    ] {
        let (ok, _, stderr) = run(&bad);
        assert!(!ok);
        assert!(stderr.starts_with("error:"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
