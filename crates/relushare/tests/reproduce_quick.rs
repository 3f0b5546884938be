//! End-to-end `relushare reproduce --quick` on the small SVHN network: trains the Table 6
//! rows (including the clustered `adaptive256`), runs Table 8's secure inference with both
//! suites, writes report.md, results.json and the figures, and reuses everything on a rerun.

use std::process::Command;

fn relushare(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_relushare"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn quick_reproduce_end_to_end_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let args = [
        "reproduce",
        "--quick",
        "--table",
        "6,8",
        "--dataset",
        "svhn",
        "--limit",
        "128",
        "--test-limit",
        "64",
        "--out",
        o,
        "--json",
        "--relu-budget",
        "5000",
        "--search-max",
        "2",
    ];
    let (ok, stdout, stderr) = relushare(&args);
    assert!(ok, "{stderr}");
    let res: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(res["quick"], true);
    let trained = res["trained"].as_array().unwrap();
    assert_eq!(
        trained.len(),
        8,
        "Table 6 has six SVHN rows, plus two search candidates"
    );
    // the search skips candidates equal to preset rows (3x3 merged = uniform3, channel = uniform32)
    // and tries a partition once (16x16 merged on 29x29 is the whole channel too)
    let search: Vec<&str> = res["search"]["trained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        search,
        ["search:act1=patch4-merge", "search:act1=patch8-merge"]
    );
    let relus = |p: &str| {
        trained.iter().find(|r| r["preset"] == p).unwrap()["relus_per_channel"][0]
            .as_u64()
            .unwrap()
    };
    // the paper's #ReLU column, computed from the specs
    assert_eq!(relus("original"), 841);
    assert_eq!(relus("uniform3"), 81);
    assert_eq!(relus("uniform32"), 1);
    assert_eq!(relus("adaptive256"), 256);
    for r in trained {
        let acc = r["test_accuracy"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&acc));
        assert_eq!(r["reused"], false);
    }
    let secure = res["secure"].as_array().unwrap();
    assert_eq!(secure.len(), 4, "original and uniform32 on two suites");
    let mb = |p: &str, s: &str| {
        let r = secure
            .iter()
            .find(|r| r["preset"] == p && r["suite"] == s)
            .unwrap();
        r["online_bytes"].as_f64().unwrap() + r["offline_bytes"].as_f64().unwrap()
    };
    for s in ["securenn", "fast"] {
        assert!(
            mb("uniform32", s) < mb("original", s),
            "sharing saves communication on {s}"
        );
    }
    assert_eq!(res["clustering"][0]["k"], 256);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("QUICK MODE"));
    assert!(report.contains("| Adaptive | `adaptive256` |"));
    assert!(report.contains("| SVHN | Original | securenn | 93.14 |"));
    assert!(
        !report.contains("Table 5"),
        "only the chosen tables/datasets"
    );
    assert!(report.contains("Beyond the paper: per-layer group sizes under a budget of 5000"));
    assert!(
        report.contains("search `act1=patch4-merge` | 3872 | 49 |"),
        "{report}"
    );
    for f in res["figures"].as_array().unwrap() {
        let p = std::path::Path::new(f.as_str().unwrap());
        assert!(p.exists(), "{}", p.display());
    }
    assert!(out.join("tv_svhn.csv").exists());
    assert!(out.join("maps/svhn-adaptive256.safetensors").exists());

    // rerun: every row, clustering and secure run is reused
    let (ok, stdout, stderr) = relushare(&args);
    assert!(ok, "{stderr}");
    let res2: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(res2["trained"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["reused"] == true));
    assert!(res2["secure"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["reused"] == true));
    assert_eq!(
        res["trained"][0]["test_accuracy"],
        res2["trained"][0]["test_accuracy"]
    );
}

#[test]
fn without_data_it_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().to_str().unwrap();
    let (ok, _, stderr) = relushare(&["reproduce", "--table", "5", "--out", o]);
    assert!(!ok);
    assert!(
        stderr.contains("relushare data fetch --dataset cifar10"),
        "{stderr}"
    );
    assert!(stderr.contains("--quick"), "{stderr}");
    let (ok, _, stderr) = relushare(&["reproduce", "--table", "6", "--data-dir", o, "--out", o]);
    assert!(!ok);
    assert!(
        stderr.contains("svhn") && stderr.contains("fmnist"),
        "{stderr}"
    );
    let (ok, _, stderr) = relushare(&["reproduce", "--table", "4", "--quick", "--out", o]);
    assert!(!ok && stderr.contains("unknown table"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// `--teacher` distils the shared-ReLU rows of the teacher's architecture (not `original`), and a
/// row trained without a teacher is not reused for a distilled run.
#[test]
fn teacher_distils_shared_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let teacher = dir.path().join("teacher.safetensors");
    let spec = relushare_model::presets::build(relushare_model::Arch::Svhn, "original").unwrap();
    relushare_model::Model::random(spec, None, 3)
        .unwrap()
        .save(&teacher)
        .unwrap();
    let base = [
        "reproduce",
        "--quick",
        "--table",
        "6",
        "--dataset",
        "svhn",
        "--limit",
        "64",
        "--test-limit",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let (ok, _, stderr) = relushare(&base);
    assert!(ok, "{stderr}");
    let mut with_teacher = base.to_vec();
    with_teacher.extend(["--teacher", teacher.to_str().unwrap()]);
    let (ok, stdout, stderr) = relushare(&with_teacher);
    assert!(ok, "{stderr}");
    let res: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for r in res["trained"].as_array().unwrap() {
        let reused = r["reused"].as_bool().unwrap();
        assert_eq!(reused, r["preset"] == "original", "{r}");
    }
    // A teacher file that cannot be read is a clear error that names it.
    let bad = dir.path().join("missing.safetensors");
    let mut missing = base.to_vec();
    missing.extend(["--teacher", bad.to_str().unwrap(), "--force"]);
    let (ok, _, stderr) = relushare(&missing);
    assert!(!ok);
    assert!(stderr.contains("teacher"), "{stderr}");
}
