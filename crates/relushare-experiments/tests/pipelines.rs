//! The pipelines run as a library, without the binary.

use clap::Parser;
use relushare_data::{synthetic, Split};
use relushare_experiments::{pareto, reproduce, secure};
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
    // the proven truncation failure bound is reported, and within what the suites accept
    let p = s.truncation_failure_bound.unwrap();
    assert!(
        p > 0.0 && p <= relushare_mpc::fast::bounds::MAX_TRUNC_FAILURE,
        "{p}"
    );
    let sn = secure::run_secure(&model, &set, 1, Protocol::Securenn, 1, 13).unwrap();
    assert_eq!(
        sn.truncation_failure_bound, None,
        "securenn does not truncate locally"
    );
}

/// `reproduce --quick --seeds 2 --summary`: every row of Table 6 (Fashion-MNIST) trained twice,
/// and the summary holds both seeds and the train command of each row.
#[test]
fn reproduce_over_seeds_writes_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let summary = dir.path().join("summary.json");
    let page = dir.path().join("summary.md");
    quick_fmnist(
        &out,
        &[
            "--seeds",
            "2",
            "--summary",
            summary.to_str().unwrap(),
            "--summary-doc",
            page.to_str().unwrap(),
        ],
    );
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

fn quick_fmnist(out: &std::path::Path, extra: &[&str]) {
    let mut args = vec![
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
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    reproduce::run(Reproduce::try_parse_from(args).unwrap().a).unwrap();
}

/// `--preset original --spec-row S` trains only the original and the free-form row; a second run
/// with `--teacher` distills that row into its own `-distilled` file; `pareto` groups the seeds,
/// counts, measures `fast` bytes, marks the front and keeps the summary's other keys.
#[test]
fn spec_rows_distillation_and_the_pareto_front() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let spec = "act1=channel,act2=channel";
    quick_fmnist(
        &out,
        &["--preset", "original", "--spec-row", spec, "--seeds", "2"],
    );
    let models = out.join("models");
    let teacher = models.join("fmnist-original.safetensors");
    assert!(teacher.exists());
    assert!(models
        .join("fmnist-search_act1_channel_act2_channel-s2.safetensors")
        .exists());
    assert!(
        !models.join("fmnist-uniform3.safetensors").exists(),
        "--preset original skips the other rows"
    );
    quick_fmnist(
        &out,
        &[
            "--preset",
            "original",
            "--spec-row",
            spec,
            "--teacher",
            teacher.to_str().unwrap(),
        ],
    );
    assert!(models
        .join("fmnist-search_act1_channel_act2_channel-distilled.safetensors")
        .exists());
    // the undistilled rows are kept beside it
    assert!(models
        .join("fmnist-search_act1_channel_act2_channel.safetensors")
        .exists());

    let front = pareto::build(&[out.clone()], "fmnist", 2).unwrap();
    let names: Vec<&str> = front.points.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names.len(),
        3,
        "original, the spec row and its distilled twin: {names:?}"
    );
    let get = |n: &str| front.points.iter().find(|p| p.name == n).unwrap();
    let orig = get("original");
    let shared = get("original + act1=channel,act2=channel");
    let distilled = get("original + act1=channel,act2=channel (distilled)");
    assert_eq!(orig.comparisons, 37760);
    assert_eq!(shared.comparisons, 224);
    assert_eq!(shared.seeds, vec![1, 2]);
    assert_eq!(distilled.seeds, vec![1]);
    assert!(distilled.distilled && !shared.distilled);
    assert!(shared.fast_bytes > 0.0 && shared.fast_bytes < orig.fast_bytes);
    assert_eq!(shared.fast_bytes, distilled.fast_bytes, "same grouping");
    // a point with the fewest comparisons and bytes is never dominated
    assert!(shared.on_front || distilled.on_front);
    let mean = shared.accuracies.iter().sum::<f64>() / 2.0;
    assert!((shared.accuracy_mean - mean).abs() < 1e-9);
    let t = front.target.as_ref().unwrap();
    assert_eq!(t.max_comparisons, 3776);
    assert!(
        (t.min_accuracy - 91.11).abs() < 1e-9,
        "the paper's uniform3"
    );
    assert!(front.paper.iter().any(|p| p.name == "uniform3"));

    // the summary keeps its other keys; figures and the page are written
    let summary = dir.path().join("s.json");
    std::fs::write(
        &summary,
        r#"{"rows": [1, 2], "pytorch_reference": {"x": 1}}"#,
    )
    .unwrap();
    let fig = dir.path().join("fig/p.png");
    let page = dir.path().join("p.md");
    let cli = ParetoCli::try_parse_from([
        "pareto",
        "--run",
        out.to_str().unwrap(),
        "--dataset",
        "fmnist",
        "--summary",
        summary.to_str().unwrap(),
        "--figure",
        fig.to_str().unwrap(),
        "--doc",
        page.to_str().unwrap(),
    ])
    .unwrap();
    pareto::run(cli.a).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!(v["rows"], serde_json::json!([1, 2]));
    assert_eq!(v["pytorch_reference"]["x"], 1);
    assert_eq!(v["pareto"]["points"].as_array().unwrap().len(), 3);
    assert!(fig.exists() && dir.path().join("fig/p-bytes.png").exists());
    assert!(std::fs::read_to_string(&page)
        .unwrap()
        .contains("| original + act1=channel,act2=channel (distilled) | 224 |"));

    // a folder without trained rows is refused by name; a non-object summary is not overwritten
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(empty.join("models")).unwrap();
    let e = pareto::build(&[empty], "fmnist", 3).unwrap_err();
    assert!(format!("{e:#}").contains("no trained fmnist rows"), "{e:#}");
    let e = pareto::build(&[dir.path().join("nope")], "fmnist", 3).unwrap_err();
    assert!(format!("{e:#}").contains("nope"), "{e:#}");
    std::fs::write(&summary, "[1]").unwrap();
    let cli = ParetoCli::try_parse_from([
        "pareto",
        "--run",
        out.to_str().unwrap(),
        "--dataset",
        "fmnist",
        "--summary",
        summary.to_str().unwrap(),
    ])
    .unwrap();
    assert!(pareto::run(cli.a).is_err());
    assert_eq!(std::fs::read_to_string(&summary).unwrap(), "[1]");
}

#[derive(Parser)]
struct ParetoCli {
    #[command(flatten)]
    a: pareto::Args,
}
