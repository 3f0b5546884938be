//! The pipelines run as a library, without the binary.

use clap::Parser;
use relushare_data::{synthetic, Split};
use relushare_experiments::{reproduce, secure};
use relushare_model::{presets, Arch, Model};
use relushare_mpc::protocol::Protocol;

#[derive(Parser)]
struct Reproduce {
    #[command(flatten)]
    a: reproduce::Args,
}

/// A secure run agrees with the plaintext fixed point and reports the client's bytes (two
/// shares of 10 logits, 8 bytes each, per image).
#[test]
fn secure_run_reports_agreement_and_client_bytes() {
    let model = Model::random(presets::build(Arch::Fmnist, "uniform3").unwrap(), None, 3).unwrap();
    let set = synthetic((1, 28, 28), 2, 5, Split::Test);
    let s = secure::run_secure(&model, &set, 2, Protocol::Fast, 2, 13).unwrap();
    assert_eq!(s.images, 2);
    assert_eq!(s.agree_with_plaintext, 1.0);
    assert_eq!(s.client_bytes, 2.0 * 8.0 * 10.0);
    assert!(s.online_bytes > 0.0 && s.rounds > 0);
}

/// `reproduce --quick --seeds 2 --summary`: every row of Table 6 (Fashion-MNIST) trained twice,
/// and the summary holds both seeds and the train command of each row.
#[test]
fn reproduce_over_seeds_writes_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let summary = dir.path().join("summary.json");
    let page = dir.path().join("summary.md");
    let cli = Reproduce::try_parse_from([
        "reproduce",
        "--quick",
        "--table",
        "6",
        "--dataset",
        "fmnist",
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--seeds",
        "2",
        "--out",
        out.to_str().unwrap(),
        "--summary",
        summary.to_str().unwrap(),
        "--summary-doc",
        page.to_str().unwrap(),
    ])
    .unwrap();
    reproduce::run(cli.a).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let presets: Vec<&str> = rows.iter().map(|r| r["preset"].as_str().unwrap()).collect();
    assert_eq!(
        presets,
        ["original", "uniform3", "uniform32", "noise", "fc-noise"]
    );
    for r in rows {
        assert_eq!(r["seeds"], serde_json::json!([1, 2]), "{r}");
        assert_eq!(r["accuracies"].as_array().unwrap().len(), 2);
        let cmd = r["command"].as_str().unwrap();
        assert!(
            cmd.starts_with("relushare train --arch fmnist") && cmd.contains("--seed 1"),
            "{cmd}"
        );
        assert!(r["paper_accuracy"].as_f64().is_some());
    }
    // seed 2 has its own model file
    assert!(out.join("models/fmnist-uniform3-s2.safetensors").is_file());
    let md = std::fs::read_to_string(&page).unwrap();
    assert!(md.contains("| `uniform32` |"), "{md}");
}
