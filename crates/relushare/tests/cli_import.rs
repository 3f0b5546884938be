//! `relushare import` end to end on the committed PyTorch export of the small max-pooling CNN:
//! the model file carries the normalisation and class names; `count` and `--spec` address the
//! imported ReLUs by name; secure `infer --image` classifies the committed PNGs like PyTorch
//! and prints the imported class names; bad input fails with clear errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use relushare_model::Model;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_relushare"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "relushare {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../relushare-onnx/tests/data")
        .join(name)
}

#[test]
fn import_count_share_and_classify() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let classes = dir.path().join("classes.txt");
    let names: Vec<String> = (0..10).map(|i| format!("thing {i}")).collect();
    std::fs::write(&classes, names.join("\n") + "\n").unwrap();
    let onnx = fixture("small_maxpool.onnx");
    let (o, c) = (out.to_str().unwrap(), classes.to_str().unwrap());
    let j: serde_json::Value = serde_json::from_str(&ok(&[
        "import",
        "--onnx",
        onnx.to_str().unwrap(),
        "--out",
        o,
        "--mean",
        "0.29",
        "--std",
        "0.35",
        "--classes",
        c,
        "--json",
    ]))
    .unwrap();
    assert_eq!(j["opset"], 11);
    assert_eq!(j["total_relus"], 9440);
    // 2x2 pool: 3 per output; 3x3 stride-2 pool padded by 1 on 14x14: windows in the first
    // row or column hold 2 rows or columns of the input, so (2 + 3 * 6)^2 - 49 per channel.
    assert_eq!(
        j["maxpool_comparisons"],
        8 * 14 * 14 * 3 + 16 * (20 * 20 - 49)
    );
    let relus: Vec<&str> = j["relus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(relus, ["relu1", "relu2", "relu3"]);
    let m = Model::load(&out).unwrap();
    assert_eq!(m.spec.class_names, names);
    assert_eq!(m.spec.normalization.mean, [0.29]);
    // The table form names the ReLUs and the comparisons.
    let plain = dir.path().join("plain.safetensors");
    let text = ok(&[
        "import",
        "--onnx",
        onnx.to_str().unwrap(),
        "--out",
        plain.to_str().unwrap(),
    ]);
    assert!(
        text.contains("relu3") && text.contains("comparisons: "),
        "{text}"
    );

    // count on the file, then with sharing by ReLU name.
    let cj: serde_json::Value =
        serde_json::from_str(&ok(&["count", "--model", o, "--json"])).unwrap();
    assert_eq!(cj["total_relus"], 9440);
    let cj: serde_json::Value = serde_json::from_str(&ok(&[
        "count",
        "--model",
        o,
        "--spec",
        "relu1=channel,relu2=patch7",
        "--json",
    ]))
    .unwrap();
    assert_eq!(cj["total_relus"], 8 + 16 * 4 + 32);
    let bad = run(&["count", "--model", o, "--spec", "act1=channel"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no layer named act1"));

    // Secure inference on the committed PNGs: PyTorch's classes, the imported names.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fixtures.json")).unwrap()).unwrap();
    let entry = manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "small_maxpool")
        .unwrap()
        .clone();
    let mut args = vec![
        "infer".to_string(),
        "--model".into(),
        o.into(),
        "--json".into(),
    ];
    for im in entry["images"].as_array().unwrap() {
        args.push("--image".into());
        args.push(fixture(im["png"].as_str().unwrap()).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let ij: serde_json::Value = serde_json::from_str(&ok(&args)).unwrap();
    for (row, im) in ij["images"]
        .as_array()
        .unwrap()
        .iter()
        .zip(entry["images"].as_array().unwrap())
    {
        let torch: Vec<f64> = im["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = (0..torch.len())
            .max_by(|&a, &b| torch[a].total_cmp(&torch[b]))
            .unwrap();
        assert_eq!(row["index"].as_u64().unwrap() as usize, best);
        assert_eq!(row["name"].as_str().unwrap(), names[best]);
        for (a, b) in row["logits"].as_array().unwrap().iter().zip(&torch) {
            assert!((a.as_f64().unwrap() - b).abs() < 0.05, "{row} vs {torch:?}");
        }
    }
    // The same network with fresh weights runs too (cost measurements without the weights).
    ok(&[
        "infer",
        "--model",
        o,
        "--random-weights",
        "--dataset",
        "synthetic",
    ]);
}

#[test]
fn import_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("m.safetensors");
    let o = o.to_str().unwrap();
    let onnx = fixture("small_maxpool.onnx");
    let onnx = onnx.to_str().unwrap();
    let garbage = dir.path().join("bad.onnx");
    std::fs::write(&garbage, b"definitely not protobuf \xff\xff\xff").unwrap();
    let short = dir.path().join("classes.txt");
    std::fs::write(&short, "a\nb\n").unwrap();
    for (args, want) in [
        (
            vec!["import", "--onnx", garbage.to_str().unwrap(), "--out", o],
            "bad.onnx",
        ),
        (
            vec![
                "import",
                "--onnx",
                onnx,
                "--out",
                o,
                "--classes",
                short.to_str().unwrap(),
            ],
            "2 class names for 10 classes",
        ),
        (
            vec![
                "import", "--onnx", onnx, "--out", o, "--mean", "0.1,0.2", "--std", "0.3,0.3",
            ],
            "normalization has 2 means",
        ),
        (
            vec![
                "import", "--onnx", onnx, "--out", o, "--mean", "0.1", "--std", "0",
            ],
            "--std must be positive",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
