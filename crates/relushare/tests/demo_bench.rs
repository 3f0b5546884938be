//! The README's main job (`demo`) and the benchmark harness, end to end on small settings.

use std::process::Command;

fn relushare(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_relushare"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn demo_trains_counts_and_classifies_securely() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("demo.safetensors");
    let out = relushare(&[
        "demo",
        "--train-images",
        "300",
        "--test-images",
        "60",
        "--epochs",
        "1",
        "--secure-images",
        "2",
        "--out",
        model.to_str().unwrap(),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spec = relushare_model::presets::build(relushare_model::Arch::Fmnist, "uniform3").unwrap();
    assert_eq!(
        j["total_relus"],
        relushare_model::count(&spec).unwrap().total_relus
    );
    assert!(j["total_relus"].as_u64() < j["original_relus"].as_u64());
    let secure = j["secure"].as_array().unwrap();
    assert_eq!(secure.len(), 2);
    for s in secure {
        assert_eq!(s["agree_with_plaintext"], 1.0, "{s}");
        assert!(s["online_bytes"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(secure[0]["protocol"], "fast");
    assert_eq!(secure[1]["protocol"], "securenn");
    // The saved model is the one that was run: it loads and has the demo's spec.
    let m = relushare_model::Model::load(&model).unwrap();
    assert_eq!(m.spec.preset, "uniform3");
}

#[test]
fn bench_quick_writes_measured_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.json");
    relushare(&[
        "bench",
        "--quick",
        "--archs",
        "svhn",
        "--no-train",
        "--no-memory",
        "--json",
        path.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let rows = j["secure"].as_array().unwrap();
    // svhn x {original, uniform32} x {securenn, fast}
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert_eq!(r["agree_with_plaintext"], 1.0);
        let unfused = r["agree_with_unfused"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&unfused));
        if r["protocol"] == "securenn" {
            assert_eq!(unfused, 1.0, "securenn runs the unfused model");
        }
        // Two output shares of 10 logits, 8 bytes each, per image.
        assert_eq!(r["client_bytes"], 160.0);
        assert!(r["seconds_median"].as_f64().unwrap() > 0.0);
    }
    let bytes = |preset: &str, proto: &str| {
        rows.iter()
            .find(|r| r["preset"] == preset && r["protocol"] == proto)
            .unwrap()["total_bytes"]
            .as_f64()
            .unwrap()
    };
    // Fewer comparisons cost fewer bytes in both suites; fast beats securenn.
    assert!(bytes("uniform32", "securenn") < bytes("original", "securenn"));
    assert!(bytes("uniform32", "fast") < bytes("original", "fast"));
    assert!(bytes("original", "fast") < bytes("original", "securenn"));
    assert!(!j["throughput"].as_array().unwrap().is_empty());
    assert_eq!(j["plaintext"].as_array().unwrap().len(), 2);
}

/// Many secure inferences back to back and in concurrent sessions: no failure, and resident
/// memory after the soak stays close to what it was after the first inference (no leak).
#[test]
fn soak_has_no_failures_and_no_memory_growth() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("soak.json");
    let out = relushare(&[
        "bench",
        "--archs",
        "svhn",
        "--presets",
        "uniform32",
        "--protocols",
        "fast",
        "--repeats",
        "1",
        "--batches",
        "1",
        "--no-train",
        "--no-memory",
        "--soak",
        "40",
        "--json",
        path.to_str().unwrap(),
    ]);
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let s = &j["soak"];
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(s["failures"], 0, "{s}");
    assert_eq!(s["sequential_inferences"], 40);
    let rss = |k: &str| s[k].as_f64().unwrap();
    let warm = rss("rss_after_warmup_bytes");
    assert!(warm > 0.0);
    // Sequential runs: flat. Concurrent: the second round adds nothing to the first.
    let seq = rss("rss_after_sequential_bytes");
    assert!(
        seq < warm + 16e6,
        "RSS grew from {warm} to {seq} over sequential runs"
    );
    let (r1, r2) = (
        rss("rss_after_concurrent_round1_bytes"),
        rss("rss_after_concurrent_round2_bytes"),
    );
    assert!(
        r2 < r1 + 32e6,
        "RSS grew from {r1} to {r2} between equal concurrent rounds"
    );
}
