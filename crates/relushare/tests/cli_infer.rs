//! `relushare infer` end to end: JSON fields, SecureNN costs equal the Table 1 formulas of the
//! spec, every suite agrees with the plaintext fixed-point class, clear errors on bad input.

use std::process::Command;

use relushare_model::{presets, Arch, Model};
use relushare_mpc::plain::FixedModel;
use relushare_mpc::securenn::table1_cost;

fn infer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_relushare"))
        .arg("infer")
        .args(args)
        .output()
        .unwrap()
}

fn infer_json(args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = infer(&a);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn securenn_json_matches_table1_and_plaintext() {
    let j = infer_json(&[
        "--arch",
        "svhn",
        "--preset",
        "original",
        "--random-weights",
        "--protocol",
        "securenn",
        "--images",
        "2",
    ]);
    let model = Model::random(presets::build(Arch::Svhn, "original").unwrap(), None, 1).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let f = table1_cost(&fm, 1);
    let bits: u64 = f.iter().map(|c| c.bits).sum();
    let rounds: u64 = f.iter().map(|c| c.rounds).sum();
    assert_eq!(j["online_bytes"].as_f64().unwrap() * 8.0, bits as f64);
    assert_eq!(j["offline_bytes"].as_f64().unwrap(), 0.0);
    assert_eq!(j["rounds"].as_u64().unwrap(), rounds);
    assert_eq!(j["agree_with_plaintext"].as_f64().unwrap(), 1.0);
    assert_eq!(j["images"].as_u64().unwrap(), 2);
    assert!(j["seconds"].as_f64().unwrap() > 0.0);
    let layers = j["layers"].as_array().unwrap();
    for c in &f {
        let l = layers.iter().find(|l| l["name"] == c.name.as_str());
        let bytes = l
            .map(|l| l["online_bytes"].as_f64().unwrap())
            .unwrap_or(0.0);
        assert_eq!(bytes * 8.0, c.bits as f64, "{}", c.name);
    }
    for img in j["per_image"].as_array().unwrap() {
        assert_eq!(img["class"], img["plaintext_class"]);
    }
}

#[test]
fn every_protocol_agrees_with_plaintext() {
    for p in ["securenn", "fast", "fss", "mimo"] {
        let j = infer_json(&[
            "--arch",
            "fmnist",
            "--preset",
            "uniform32",
            "--random-weights",
            "--protocol",
            p,
            "--images",
            "2",
            "--batch",
            "2",
        ]);
        assert_eq!(j["agree_with_plaintext"].as_f64().unwrap(), 1.0, "{p}");
        assert_eq!(j["protocol"], p);
        assert!(j["online_bytes"].as_f64().unwrap() > 0.0, "{p}");
        // Output shares to the client: P0 and P1 each send 10 logits of 8 bytes per image.
        assert_eq!(j["client_bytes"].as_f64().unwrap(), 2.0 * 8.0 * 10.0, "{p}");
        // Agreement with the unfused trained model: securenn and mimo run it unfused, so both
        // figures coincide; the fast suites run fused gates (uniform32's first block).
        let images = j["per_image"].as_array().unwrap();
        let unfused = images
            .iter()
            .filter(|r| r["class"] == r["unfused_class"])
            .count() as f64
            / images.len() as f64;
        assert_eq!(j["agree_with_unfused"].as_f64().unwrap(), unfused, "{p}");
        for r in images {
            assert_eq!(r["client_bytes"].as_f64().unwrap(), 160.0, "{p}");
            assert_eq!(r["agree_unfused"], r["class"] == r["unfused_class"], "{p}");
            if p == "securenn" || p == "mimo" {
                assert_eq!(r["unfused_class"], r["plaintext_class"]);
            }
        }
    }
}

#[test]
fn human_table_and_errors() {
    let out = infer(&["--arch", "svhn", "--random-weights", "--protocol", "fast"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("total") && text.contains("act1") && text.contains("agreement"));
    let out = infer(&["--model", "/nonexistent/model.safetensors"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent"));
    let out = infer(&["--arch", "svhn", "--random-weights", "--protocol", "bogus"]);
    assert!(!out.status.success());
    let out = infer(&["--arch", "svhn", "--random-weights", "--images", "0"]);
    assert!(!out.status.success());
}

#[test]
fn model_file_and_real_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut model =
        Model::random(presets::build(Arch::Fmnist, "uniform4").unwrap(), None, 4).unwrap();
    model.spec.normalization = relushare_model::Normalization {
        mean: vec![0.286],
        std: vec![0.353],
    };
    model.save(&path).unwrap();
    let mut args = vec![
        "--model",
        path.to_str().unwrap(),
        "--protocol",
        "securenn",
        "--images",
        "2",
    ];
    let real = "/work/shared/data/real-sample";
    if std::path::Path::new(real).join("fashion-mnist").exists() {
        args.extend(["--dataset", "fmnist", "--data-dir", real]);
    }
    let j = infer_json(&args);
    assert_eq!(j["preset"], "uniform4");
    assert_eq!(j["agree_with_plaintext"].as_f64().unwrap(), 1.0);
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let bits: u64 = table1_cost(&fm, 1).iter().map(|c| c.bits).sum();
    assert_eq!(j["online_bytes"].as_f64().unwrap() * 8.0, bits as f64);
}

/// `infer --image`: PNG and PPM files of another size and colour model are resized and
/// converted; the JSON names each class, and its index equals the plaintext class of the same
/// pixels; a corrupt file fails naming it.
#[test]
fn image_files_are_classified_with_class_names() {
    use relushare_data::image::{class_name, load_image, Fit};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let mut model =
        Model::random(presets::build(Arch::Fmnist, "original").unwrap(), None, 6).unwrap();
    model.spec.normalization = relushare_model::Normalization {
        mean: vec![0.286],
        std: vec![0.353],
    };
    for p in ["fc2.weight", "fc2.bias"] {
        for v in &mut model.params.get_mut(p).unwrap().data {
            *v *= 40.0;
        }
    }
    model.save(&path).unwrap();
    // A 40x30 colour PPM and a 28x28 grey PGM.
    let ppm = dir.path().join("a.ppm");
    let mut b = b"P6\n40 30\n255\n".to_vec();
    b.extend((0..40 * 30 * 3).map(|i| ((i * 31) % 251) as u8));
    std::fs::write(&ppm, b).unwrap();
    let pgm = dir.path().join("b.pgm");
    let mut b = b"P5\n28 28\n255\n".to_vec();
    b.extend((0..28 * 28).map(|i| ((i * 7 + i / 28 * 13) % 256) as u8));
    std::fs::write(&pgm, b).unwrap();
    for crop in [false, true] {
        let mut args = vec![
            "--model",
            path.to_str().unwrap(),
            "--image",
            ppm.to_str().unwrap(),
            "--image",
            pgm.to_str().unwrap(),
        ];
        if crop {
            args.push("--center-crop");
        }
        let j = infer_json(&args);
        let rows = j["images"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let fit = if crop { Fit::CenterCrop } else { Fit::Stretch };
        let px: Vec<Vec<u8>> = [&ppm, &pgm]
            .iter()
            .map(|p| load_image(p, (1, 28, 28), fit).unwrap())
            .collect();
        let want = relushare_mpc::net::serve::plaintext_classes(&model, &px, "fast", 13).unwrap();
        for (r, w) in rows.iter().zip(want) {
            assert_eq!(r["index"].as_u64().unwrap() as usize, w);
            assert_eq!(r["name"].as_str().unwrap(), class_name("fmnist", w));
            assert_eq!(r["logits"].as_array().unwrap().len(), 10);
        }
        assert_eq!(j["agree_with_plaintext"].as_f64().unwrap(), 1.0);
    }
    let bad = dir.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = infer(&[
        "--model",
        path.to_str().unwrap(),
        "--image",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("broken.png"), "{err}");
}
