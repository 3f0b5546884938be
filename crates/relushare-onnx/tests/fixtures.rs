//! The committed PyTorch exports (`tests/data`, written by `bench/export_onnx.py`): importing
//! each gives PyTorch's logits on the committed PNG images (f32 reference, before and after
//! batch-norm folding), tract (an independent ONNX runtime) agrees on the same files, the
//! ReLU names and counts are as exported, and secure `fast` inference equals the fixed-point
//! reference on the max-pooling CNN and the ResNet-20.
//!
//! `RELUSHARE_ONNX_FIXTURES=DIR` runs the same checks on another export directory (e.g.
//! `python3 bench/export_onnx.py --all --out DIR`, with ResNet-18).

use std::path::{Path, PathBuf};

use relushare_data::image::{Decoded, Fit};
use relushare_model::{count, reference, Layer, Model, ModelSpec, Normalization};
use relushare_onnx::{import_file, ImportOptions, Imported};
use serde_json::Value;

fn data_dir() -> PathBuf {
    std::env::var_os("RELUSHARE_ONNX_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"))
}

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(data_dir().join("fixtures.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["models"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn import(entry: &Value) -> Imported {
    let path = data_dir().join(entry["onnx"].as_str().unwrap());
    let opts = ImportOptions {
        normalization: Some(Normalization {
            mean: floats(&entry["mean"]),
            std: floats(&entry["std"]),
        }),
        class_names: Vec::new(),
    };
    import_file(&path, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The normalized CHW input of every image of `entry`, with PyTorch's logits.
fn images(entry: &Value, model: &Model) -> Vec<(String, Vec<f32>, Vec<f32>)> {
    let d = model.spec.input;
    entry["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|im| {
            let png = im["png"].as_str().unwrap();
            let px = Decoded::open(&data_dir().join(png))
                .unwrap()
                .to_input((d.c, d.h, d.w), Fit::Stretch)
                .unwrap();
            let mut x = vec![0f32; d.len()];
            model.spec.normalization.apply(&px, &mut x);
            (png.to_string(), x, floats(&im["logits"]))
        })
        .collect()
}

/// Largest difference relative to the largest reference logit.
fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn imported_models_give_pytorchs_logits() {
    let entries = manifest();
    if std::env::var_os("RELUSHARE_ONNX_FIXTURES").is_none() {
        assert_eq!(entries.len(), 4, "the committed fixture set has 4 models");
    }
    for e in &entries {
        let name = e["name"].as_str().unwrap();
        let imp = import(e);
        let m = &imp.model;
        assert_eq!(imp.opset, e["opset"].as_i64().unwrap(), "{name}");
        let dims: Vec<usize> = e["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!([m.spec.input.c, m.spec.input.h, m.spec.input.w], dims[..]);
        // ReLUs: named relu1.. in graph order (PyTorch's node names are paths, not
        // identifiers), counted as exported.
        let acts = m.spec.act_names();
        let want: Vec<String> = (1..=acts.len()).map(|k| format!("relu{k}")).collect();
        assert_eq!(acts, want, "{name}");
        let c = count(&m.spec).unwrap();
        assert_eq!(
            c.total_relus as u64,
            e["relus"].as_u64().unwrap(),
            "{name}: ReLU comparisons"
        );
        let folded = m.fold_batchnorm().unwrap();
        assert!(!folded
            .spec
            .layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm { .. })));
        // The paper's networks, batch norms folded, are the architectures relushare defines.
        if let Some(arch) = name.strip_prefix("paper_") {
            let ours = ModelSpec::original(arch.parse().unwrap());
            // Layer by layer output shapes; dropout (gone from an eval-mode export) aside.
            let shapes = |s: &ModelSpec| -> Vec<_> {
                let d = s.dims().unwrap();
                s.layers
                    .iter()
                    .zip(&d[1..])
                    .filter(|(l, _)| !matches!(l, Layer::Dropout { .. }))
                    .map(|(l, d)| (std::mem::discriminant(l), *d))
                    .collect()
            };
            assert_eq!(shapes(&folded.spec), shapes(&ours), "{name}");
            assert_eq!(count(&ours).unwrap().total_relus, c.total_relus, "{name}");
        }
        let mut worst = 0f32;
        for (png, x, want) in images(e, m) {
            for (what, model) in [("as imported", m), ("batch norm folded", &folded)] {
                let got = reference::forward(model, &x, &mut |_| false).unwrap();
                let err = rel_err(&got, &want);
                assert!(
                    err <= 1e-4,
                    "{name} {png} ({what}): relative error {err:e}\n ours  {got:?}\n torch {want:?}"
                );
                worst = worst.max(err);
            }
        }
        eprintln!(
            "{name}: {} layers, {} ReLUs, max relative error vs PyTorch {worst:.2e}",
            m.spec.layers.len(),
            c.total_relus
        );
    }
}

#[test]
fn tract_runs_the_same_files_and_agrees() {
    use tract_onnx::prelude::*;
    for e in manifest() {
        let name = e["name"].as_str().unwrap();
        let imp = import(&e);
        let d = imp.model.spec.input;
        let path = data_dir().join(e["onnx"].as_str().unwrap());
        let plan = tract_onnx::onnx()
            .model_for_path(&path)
            .and_then(|m| m.with_input_fact(0, f32::fact([1, d.c, d.h, d.w]).into()))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .unwrap_or_else(|err| panic!("tract on {name}: {err:?}"));
        let mut worst = (0f32, 0f32);
        for (png, x, want) in images(&e, &imp.model) {
            let t = Tensor::from_shape(&[1, d.c, d.h, d.w], &x).unwrap();
            let out = plan.run(tvec!(t.into())).unwrap();
            let theirs: Vec<f32> = out[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            let ours = reference::forward(&imp.model, &x, &mut |_| false).unwrap();
            let (a, b) = (rel_err(&ours, &theirs), rel_err(&theirs, &want));
            assert!(
                a <= 1e-4,
                "{name} {png}: ours vs tract {a:e}\n ours  {ours:?}\n tract {theirs:?}"
            );
            assert!(b <= 1e-4, "{name} {png}: tract vs PyTorch {b:e}");
            worst = (worst.0.max(a), worst.1.max(b));
        }
        eprintln!(
            "{name}: max relative difference ours vs tract {:.2e}, tract vs PyTorch {:.2e}",
            worst.0, worst.1
        );
    }
}

/// Secure inference (three parties on threads) equals the plaintext fixed-point reference of
/// the same suite: `fast` on the max-pooling CNN and the ResNet-20 (its comparison rings
/// calibrated: too deep for interval proofs), `securenn` on the paper's SVHN network.
#[test]
fn secure_inference_equals_the_fixed_point_reference() {
    use relushare_mpc::plain::{self, FixedModel};
    use relushare_mpc::protocol::{factory_for, prepare_model, Protocol};
    use relushare_mpc::runner;
    for e in manifest() {
        let name = e["name"].as_str().unwrap();
        let protocol = match name {
            "paper_svhn" => Protocol::Securenn,
            n if n == "small_maxpool" || n.starts_with("resnet20") => Protocol::Fast,
            _ => continue,
        };
        let imp = import(&e);
        let model = &imp.model;
        let mut fm = FixedModel::from_model(model, 13).unwrap();
        prepare_model(protocol, &mut fm).unwrap();
        let factory = factory_for(protocol, &fm, model)
            .unwrap_or_else(|err| panic!("{name} with {protocol}: {err}"));
        let imgs = images(&e, model);
        let enc: Vec<Vec<u64>> = imgs
            .iter()
            .map(|(_, x, _)| fm.encode_input(x).unwrap())
            .collect();
        let t0 = std::time::Instant::now();
        let res = runner::run_session(&fm, &[enc.clone()], factory.as_ref(), &Default::default())
            .unwrap_or_else(|err| panic!("{name} with {protocol}: {err}"));
        let secs = t0.elapsed().as_secs_f64();
        let mut worst = 0f32;
        for (i, out) in res.batches[0].outputs.iter().enumerate() {
            let fixed = plain::forward_fixed_trace(&fm, &enc[i], &mut |_| false).unwrap();
            let fixed = fixed.last().unwrap();
            let (secure, plain_fx) = (fm.fp.decode_vec(out), fm.fp.decode_vec(fixed));
            // Secure truncation differs from plaintext truncation by a unit (2^-13) per
            // truncated value and layer; a protocol error moves logits by whole units.
            let err = rel_err(&secure, &plain_fx);
            assert!(
                err < 1e-2,
                "{name} image {i}: secure {secure:?} vs fixed point {plain_fx:?}"
            );
            assert_eq!(
                plain::argmax_fixed(out),
                plain::argmax_fixed(fixed),
                "{name} image {i}"
            );
            // And fixed point is PyTorch's network up to rounding.
            assert!(rel_err(&plain_fx, &imgs[i].2) < 1e-2, "{name} image {i}");
            worst = worst.max(err);
        }
        eprintln!(
            "{name}: secure {protocol} vs fixed point, max relative difference {worst:.2e} ({} images in {secs:.2} s)",
            imgs.len()
        );
    }
}
