//! Graph models on Burn: a small residual network with batch norm, max pooling, global average
//! pooling and adds computes the reference's function in evaluation, batch-norm running
//! statistics follow PyTorch's rule in training and serve evaluation, such a network learns
//! synthetic data and its model file evaluates the same with the reference, and fine-tuning
//! (`init_from`) starts from the init model's weights with sharing applied.

use std::collections::BTreeMap;

use burn::tensor::Device;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relushare_data::{synthetic, ImageSet, Split};
use relushare_model::{
    presets, reference, spec::FORMAT_VERSION, ActKind, Arch, Dims, Layer, Model, ModelSpec,
    Normalization,
};
use relushare_nn::net::{images_tensor, ForwardMode};
use relushare_nn::{
    evaluate, init_from, train, train_model, EvalConfig, Net, NoProgress, Progress, TrainConfig,
};

fn conv(name: &str, i: usize, o: usize, k: usize, s: usize, p: usize) -> Layer {
    Layer::Conv {
        name: name.into(),
        in_ch: i,
        out_ch: o,
        kernel: k,
        stride: s,
        padding: p,
    }
}
fn bn(name: &str, with: bool) -> Option<Layer> {
    with.then(|| Layer::BatchNorm {
        name: name.into(),
        eps: 1e-5,
    })
}
fn relu(name: &str) -> Layer {
    Layer::Act {
        name: name.into(),
        kind: ActKind::Relu,
    }
}

/// A small ResNet-style graph on `side x side` RGB images: stem conv (+BN) + ReLU, a padded
/// 3x3/2 max pool, an identity residual block, a downsampling block with a 1x1 projection
/// shortcut, global average pooling, flatten, linear.
fn resnet_spec(side: usize, with_bn: bool) -> ModelSpec {
    let mut layers = Vec::new();
    let mut push = |l: Layer| layers.push(l);
    push(conv("conv1", 3, 8, 3, 1, 1));
    bn("bn1", with_bn).map(&mut push);
    push(relu("relu1"));
    push(Layer::MaxPool {
        name: "pool1".into(),
        kernel: 3,
        stride: 2,
        padding: 1,
    });
    push(conv("conv2", 8, 8, 3, 1, 1));
    bn("bn2", with_bn).map(&mut push);
    push(relu("relu2"));
    push(conv("conv3", 8, 8, 3, 1, 1));
    bn("bn3", with_bn).map(&mut push);
    push(Layer::Add {
        name: "add1".into(),
    });
    push(relu("relu3"));
    push(conv("conv4", 8, 16, 3, 2, 1));
    bn("bn4", with_bn).map(&mut push);
    push(relu("relu4"));
    push(conv("conv5", 16, 16, 3, 1, 1));
    bn("bn5", with_bn).map(&mut push);
    push(conv("short", 8, 16, 1, 2, 0));
    bn("bn_short", with_bn).map(&mut push);
    push(Layer::Add {
        name: "add2".into(),
    });
    push(relu("relu5"));
    push(Layer::GlobalAvgPool { name: "gap".into() });
    push(Layer::Flatten);
    push(Layer::Linear {
        name: "fc".into(),
        in_f: 16,
        out_f: 10,
    });
    let last = |conv: &str, b: &str| {
        if with_bn {
            b.to_string()
        } else {
            conv.to_string()
        }
    };
    let mut inputs = BTreeMap::new();
    inputs.insert(
        "add1".to_string(),
        vec![last("conv3", "bn3"), "pool1".to_string()],
    );
    inputs.insert("short".to_string(), vec!["relu3".to_string()]);
    inputs.insert(
        "add2".to_string(),
        vec![last("conv5", "bn5"), last("short", "bn_short")],
    );
    let spec = ModelSpec {
        format_version: FORMAT_VERSION,
        arch: Arch::Custom,
        preset: "custom".into(),
        input: Dims::new(3, side, side),
        num_classes: 10,
        layers,
        normalization: Normalization::identity(3),
        inputs,
        class_names: Vec::new(),
    };
    spec.validate().unwrap();
    spec
}

/// Random weights, and random batch-norm statistics and sharing parameters.
fn random_model(spec: ModelSpec, seed: u64) -> Model {
    let mut model = Model::random(spec, None, seed).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    for (name, t) in model.params.iter_mut() {
        let (lo, hi) = if name.ends_with(".running_var")
            || (name.contains("bn") && name.ends_with(".weight"))
        {
            (0.5f32, 2.0)
        } else if name.ends_with(".running_mean")
            || (name.contains("bn") && name.ends_with(".bias"))
            || name.ends_with(".v")
            || name.ends_with(".fc_bias")
        {
            (-0.5, 0.5)
        } else {
            continue;
        };
        for x in &mut t.data {
            *x = rng.random_range(lo..hi);
        }
    }
    model
}

fn images(model: &Model, n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n * model.spec.input.len())
        .map(|_| rng.random_range(-2.0f32..2.0))
        .collect()
}

/// Burn's evaluation forward pass equals the reference within 1e-4 (relative).
fn assert_matches_reference(model: &Model, what: &str) {
    let net = Net::from_model(model, &Device::flex()).unwrap();
    let n = 3;
    let x = images(model, n, 11);
    let burn = net.logits(&x, n, false, 0).unwrap();
    let d = model.spec.input.len();
    for i in 0..n {
        let want = reference::forward(model, &x[i * d..(i + 1) * d], &mut |_| false).unwrap();
        for (a, b) in burn[i].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what} image {i}: burn {:?} vs reference {want:?}",
                burn[i]
            );
        }
    }
    assert_eq!(&net.to_model().unwrap(), model, "{what}: round trip");
}

#[test]
fn residual_graph_matches_reference() {
    for with_bn in [true, false] {
        let model = random_model(resnet_spec(12, with_bn), 5);
        assert_matches_reference(&model, &format!("bn {with_bn}"));
    }
    // Every sharing kind on the graph's activation layers (incl. one right after an add).
    let mut spec = resnet_spec(12, true);
    presets::apply_freeform(
        &mut spec,
        "relu1=patch2,relu2=channel:fc,relu3=patch3-merge:onehot,relu4=partial0.5,relu5=patch2/c4",
    )
    .unwrap();
    assert_matches_reference(&random_model(spec, 6), "shared");
    // ResNet-20 as relushare-model builds it, with sharing in its first stage.
    let mut spec = ModelSpec::original(Arch::Resnet20);
    presets::apply_freeform(&mut spec, "relu1=patch2,relu2=channel").unwrap();
    assert_matches_reference(&random_model(spec, 8), "resnet20");
}

/// A batch norm straight on a 2x4x4 input, so the batch statistics are those of the images.
fn bn_only_model() -> Model {
    let mut spec = ModelSpec {
        layers: vec![
            Layer::BatchNorm {
                name: "bn".into(),
                eps: 1e-5,
            },
            Layer::Flatten,
            Layer::Linear {
                name: "fc".into(),
                in_f: 2 * 4 * 4,
                out_f: 10,
            },
        ],
        ..resnet_spec(4, false)
    };
    spec.input = Dims::new(2, 4, 4);
    spec.normalization = Normalization::identity(2);
    spec.inputs.clear();
    random_model(spec, 3)
}

/// One training-mode forward pass moves the running statistics by PyTorch's rule
/// (momentum 0.1, unbiased batch variance); evaluation then uses them.
#[test]
fn batchnorm_running_statistics() {
    let model = bn_only_model();
    let (b, plane) = (5, 16);
    let x = images(&model, b, 8);
    let device = Device::flex().autodiff();
    let net = Net::from_model(&model, &device).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut mode = ForwardMode {
        train: true,
        noise: false,
        temperature: 1.0,
        rng: &mut rng,
    };
    let train_logits = net.forward(images_tensor(x.clone(), b, 2, 4, 4, &device), &mut mode);
    let trained = net.to_model().unwrap();
    for c in 0..2 {
        let vals: Vec<f64> = (0..b)
            .flat_map(|i| x[(i * 2 + c) * plane..(i * 2 + c + 1) * plane].to_vec())
            .map(|v| v as f64)
            .collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        let m0 = model.params["bn.running_mean"].data[c] as f64;
        let v0 = model.params["bn.running_var"].data[c] as f64;
        let m1 = trained.params["bn.running_mean"].data[c] as f64;
        let v1 = trained.params["bn.running_var"].data[c] as f64;
        assert!(
            (m1 - (0.9 * m0 + 0.1 * mean)).abs() < 1e-5,
            "mean {c}: {m1}"
        );
        assert!((v1 - (0.9 * v0 + 0.1 * var)).abs() < 1e-5, "var {c}: {v1}");
    }
    // Scale and shift did not move (no optimizer step), the statistics did.
    assert_eq!(trained.params["bn.weight"], model.params["bn.weight"]);
    assert_ne!(
        trained.params["bn.running_mean"],
        model.params["bn.running_mean"]
    );
    // Evaluation of the updated network is the reference with the updated statistics
    // (and not the batch-statistics output of training mode).
    assert_matches_reference(&trained, "after one training pass");
    let eval = Net::from_model(&trained, &Device::flex())
        .unwrap()
        .logits(&x, b, false, 0)
        .unwrap();
    let train_logits: Vec<f32> = train_logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap();
    let diff = eval
        .iter()
        .flatten()
        .zip(&train_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        diff > 1e-3,
        "training mode should normalise with batch statistics"
    );
}

/// Burn keeps a running state's updates per thread until they are merged: statistics moved
/// by a training pass on another thread than the one exporting the model are exported too,
/// equal to those of the same pass on the exporting thread.
#[test]
fn batchnorm_statistics_trained_on_another_thread_are_exported() {
    let model = bn_only_model();
    let b = 5;
    let x = images(&model, b, 8);
    let device = Device::flex().autodiff();
    let pass = |net: &Net| {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut mode = ForwardMode {
            train: true,
            noise: false,
            temperature: 1.0,
            rng: &mut rng,
        };
        net.forward(images_tensor(x.clone(), b, 2, 4, 4, &device), &mut mode);
    };
    let here = Net::from_model(&model, &device).unwrap();
    pass(&here);
    let there = Net::from_model(&model, &device).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| pass(&there));
    });
    let (here, there) = (here.to_model().unwrap(), there.to_model().unwrap());
    for p in ["bn.running_mean", "bn.running_var"] {
        assert_ne!(there.params[p], model.params[p], "{p} not exported");
        for (a, b) in there.params[p].data.iter().zip(&here.params[p].data) {
            assert!((a - b).abs() < 1e-6, "{p}: {a} vs {b}");
        }
    }
}

fn normalized(set: &ImageSet, norm: &Normalization, i: usize) -> Vec<f32> {
    let mut out = vec![0f32; set.image_len()];
    norm.apply(set.image(i), &mut out);
    out
}

/// A residual network with batch norm learns synthetic data; its model file loads, validates
/// and evaluates to the same accuracy with Burn and with the reference.
#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn residual_net_learns_and_its_file_evaluates_the_same() {
    let spec = resnet_spec(16, true);
    let train_set = synthetic((3, 16, 16), 1024, 1, Split::Train);
    let test_set = synthetic((3, 16, 16), 200, 1, Split::Test);
    let cfg = TrainConfig {
        epochs: 3,
        seed: 2,
        lr: 3e-3,
        ..TrainConfig::default()
    };
    let out = train(&cfg, &spec, None, &train_set, &test_set, &mut NoProgress).unwrap();
    let losses: Vec<f32> = out.history.iter().map(|m| m.train_loss).collect();
    eprintln!(
        "residual net: losses {losses:?}, test accuracy {:.3}, {:.0} images/s",
        out.test_accuracy, out.images_per_second
    );
    assert!(losses[2] < losses[0] * 0.9, "{losses:?}");
    assert!(out.test_accuracy > 0.2, "{}", out.test_accuracy);
    // The running statistics were trained (not the initial 0 / 1).
    assert!(out.model.params["bn1.running_mean"]
        .data
        .iter()
        .any(|&m| m.abs() > 1e-3));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet.safetensors");
    out.model.save(&path).unwrap();
    let loaded = Model::load(&path).unwrap();
    loaded.validate().unwrap();
    assert_eq!(loaded, out.model);
    let acc = evaluate(&loaded, &test_set, &EvalConfig::default()).unwrap();
    assert!(
        (acc - out.test_accuracy).abs() < 1e-6,
        "{acc} vs {}",
        out.test_accuracy
    );
    let correct = (0..test_set.len())
        .filter(|&i| {
            let x = normalized(&test_set, &loaded.spec.normalization, i);
            let y = reference::forward(&loaded, &x, &mut |_| false).unwrap();
            reference::argmax(&y) == test_set.label(i) as usize
        })
        .count();
    let reference_acc = correct as f32 / test_set.len() as f32;
    assert!(
        (reference_acc - acc).abs() < 1e-6,
        "reference {reference_acc} vs Burn {acc}"
    );
}

/// Records the loss of the first batch.
#[derive(Default)]
struct FirstLoss(Option<f32>);
impl Progress for FirstLoss {
    fn batch(&mut self, done: usize, loss: f32, _accuracy: f32) {
        if done == 1 {
            self.0 = Some(loss);
        }
    }
}

/// Mean cross-entropy of the reference's logits over a whole set.
fn reference_loss(model: &Model, set: &ImageSet) -> f32 {
    let mut sum = 0f64;
    for i in 0..set.len() {
        let x = normalized(set, &model.spec.normalization, i);
        let y = reference::forward(model, &x, &mut |_| false).unwrap();
        let m = y.iter().copied().fold(f32::MIN, f32::max);
        let lse = m + y.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        sum += (lse - y[set.label(i) as usize]) as f64;
    }
    (sum / set.len() as f64) as f32
}

/// Fine-tuning starts from the init model's weights: with one batch holding the whole set,
/// the first step's loss is the init model's loss (by the reference), unchanged or with a
/// shared-ReLU spec applied (v = 1 for the new sharing layer).
#[test]
fn finetuning_starts_from_the_init_weights() {
    let init = random_model(resnet_spec(8, false), 21);
    let set = synthetic((3, 8, 8), 48, 4, Split::Train);
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: set.len(),
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    for spec in [None, Some("relu3=channel,relu4=channel:fc")] {
        let start = init_from(&init, spec, None, 3).unwrap();
        if spec.is_some() {
            assert!(matches!(start.spec.act("relu3"), Some(ActKind::Shared(_))));
            assert!(start.params["relu3.v"].data.iter().all(|&v| v == 1.0));
        }
        assert_eq!(start.params["conv2.weight"], init.params["conv2.weight"]);
        let want = reference_loss(&start, &set);
        let mut first = FirstLoss::default();
        let out = train_model(&cfg, start, &set, &set, &mut first).unwrap();
        let got = first.0.unwrap();
        assert!(
            (got - want).abs() < 1e-4 * want.max(1.0),
            "{spec:?}: first loss {got} vs init {want}"
        );
        assert_eq!(
            out.model.spec.act("relu3"),
            init_from(&init, spec, None, 3).unwrap().spec.act("relu3")
        );
        assert_ne!(
            out.model.params["conv2.weight"], init.params["conv2.weight"],
            "trained"
        );
    }
}
