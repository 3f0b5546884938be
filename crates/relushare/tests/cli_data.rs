//! `relushare data fetch|info` end to end (no network needed).

use std::path::Path;
use std::process::Command;

fn relushare(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relushare"))
        .args(args)
        .output()
        .expect("run relushare")
}

#[test]
fn info_on_synthetic_and_real_sample() {
    let out = relushare(&[
        "data",
        "info",
        "--dataset",
        "synthetic",
        "--dims",
        "1x28x28",
        "--limit",
        "50",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 50);
    assert_eq!(v["dims"], serde_json::json!([1, 28, 28]));

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/real-sample");
    if !dir.is_dir() {
        println!(
            "note: {} is absent; skipping the real-sample part",
            dir.display()
        );
        return;
    }
    let d = dir.to_str().unwrap();
    let out = relushare(&[
        "data",
        "info",
        "--dataset",
        "cifar10",
        "--data-dir",
        d,
        "--split",
        "test",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 500);
    let out = relushare(&["data", "info", "--dataset", "cifar10", "--data-dir", d]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial"));
}

#[test]
fn fetch_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().to_str().unwrap();
    // Synthetic: nothing to fetch.
    let out = relushare(&[
        "data",
        "fetch",
        "--dataset",
        "synthetic",
        "--data-dir",
        d,
        "--json",
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], serde_json::json!([]));
    // Unreachable mirror: non-zero exit, the error names the URL and what to do.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mirror = format!("http://127.0.0.1:{port}/");
    let fetch = |dataset: &str| {
        relushare(&[
            "data",
            "fetch",
            "--dataset",
            dataset,
            "--data-dir",
            d,
            "--mirror",
            &mirror,
            "--no-progress",
        ])
    };
    let out = fetch("svhn");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("train_32x32.mat") && err.contains("no network access"),
        "{err}"
    );
    // Fashion-MNIST falls back to Debian's copy when it is installed, else fails the same way.
    let out = fetch("fmnist");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    if relushare_data::local_copies(relushare_data::DatasetName::Fmnist)[0].is_dir() {
        assert!(out.status.success(), "{err}");
        assert!(
            text.contains("download failed") && text.contains("copied and verified"),
            "{text}"
        );
    } else {
        assert!(!out.status.success());
        assert!(
            err.contains("train-images-idx3-ubyte.gz") && err.contains("no network access"),
            "{err}"
        );
    }
    // Missing data: says how to get it.
    let out = relushare(&["data", "info", "--dataset", "svhn", "--data-dir", d]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("relushare data fetch --dataset svhn"));
    // Unknown dataset.
    let out = relushare(&["data", "info", "--dataset", "mnist2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset"));
}
