//! The Burn network computes exactly the network of the model file: its inference forward pass
//! agrees with `relushare_model::reference::forward` (noise off) for many presets, and import
//! followed by export returns the same model.

use burn::tensor::Device;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use relushare_model::{presets, reference, Arch, ClusterMaps, LayerClusters, Model};
use relushare_nn::Net;

/// A whole-channel cluster map with `k` clusters per channel (ids spread over the plane).
fn channel_clusters(arch: Arch, preset: &str) -> Option<ClusterMaps> {
    let spec = presets::build(arch, preset).ok()?;
    let names = presets::needs_cluster_map(&spec);
    if names.is_empty() {
        return None;
    }
    let mut maps = ClusterMaps::default();
    for name in names {
        let d = spec.layer_input(&name).unwrap();
        let Some(relushare_model::ActKind::Shared(s)) = spec.act(&name) else {
            unreachable!()
        };
        let relushare_model::Grouping::Cluster { window, k } = s.grouping else {
            unreachable!()
        };
        let mut map = Vec::with_capacity(d.len());
        for c in 0..d.c {
            for y in 0..d.h {
                for x in 0..d.w {
                    let g = match window {
                        None => ((y * d.w + x) * 7 + c) % k,
                        Some(m) => {
                            let nx = d.w.div_ceil(m);
                            let win = (y / m) * nx + x / m;
                            win * k + ((y % m) * m + (x % m) + c) % k
                        }
                    };
                    map.push(g as u32);
                }
            }
        }
        maps.insert(
            &name,
            LayerClusters {
                k,
                window,
                dims: d,
                map,
            },
        )
        .unwrap();
    }
    Some(maps)
}

fn random_model(arch: Arch, preset: &str, seed: u64) -> Model {
    let spec = presets::build(arch, preset).unwrap();
    let maps = channel_clusters(arch, preset);
    let mut model = Model::random(spec, maps.as_ref(), seed).unwrap();
    // Random v (not just the initial 1s) and FC biases, so the learned deciders are exercised.
    let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
    for (name, t) in model.params.iter_mut() {
        if name.ends_with(".v") || name.ends_with(".fc_bias") {
            for x in &mut t.data {
                *x = rng.random_range(-1.0f32..1.0);
            }
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

fn check(arch: Arch, preset: &str) {
    let model = random_model(arch, preset, 7);
    let net = Net::from_model(&model, &Device::flex()).unwrap();
    let n = 2;
    let x = images(&model, n, 11);
    let burn = net.logits(&x, n, false, 0).unwrap();
    let d = model.spec.input.len();
    for i in 0..n {
        let want = reference::forward(&model, &x[i * d..(i + 1) * d], &mut |_| false).unwrap();
        assert_eq!(burn[i].len(), want.len());
        for (a, b) in burn[i].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{arch} {preset} image {i}: burn {:?} vs reference {want:?}",
                burn[i]
            );
        }
    }
    // Import then export gives back the same model.
    assert_eq!(net.to_model().unwrap(), model, "{arch} {preset} round trip");
}

#[test]
fn cifar10_presets_match_reference() {
    for preset in [
        "original",
        "uniform3",
        "uniform32",
        "layer2-only",
        "fc-noise",
        "shafran",
        "adaptive256",
        "cluster8x8k8",
    ] {
        check(Arch::Cifar10, preset);
    }
}

#[test]
fn svhn_and_fmnist_presets_match_reference() {
    for preset in ["original", "uniform3", "uniform32", "noise", "shafran"] {
        check(Arch::Svhn, preset);
        check(Arch::Fmnist, preset);
    }
}

#[test]
fn one_hot_and_partial_freeform_match_reference() {
    let mut spec = presets::build(Arch::Fmnist, "original").unwrap();
    presets::apply_freeform(
        &mut spec,
        "act1=patch4:onehot,act2=partial0.25,act3=channel:fc",
    )
    .unwrap();
    let model = Model::random(spec, None, 3).unwrap();
    let net = Net::from_model(&model, &Device::flex()).unwrap();
    let x = images(&model, 3, 5);
    let burn = net.logits(&x, 3, false, 0).unwrap();
    let d = model.spec.input.len();
    for i in 0..3 {
        let want = reference::forward(&model, &x[i * d..(i + 1) * d], &mut |_| false).unwrap();
        for (a, b) in burn[i].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{:?} vs {want:?}",
                burn[i]
            );
        }
    }
}

#[test]
fn one_member_groups_are_plain_relu() {
    // 1x1 patches with v = 1 (the initial value) are exactly a ReLU layer.
    let mut spec = presets::build(Arch::Svhn, "original").unwrap();
    let relu = Model::random(spec.clone(), None, 9).unwrap();
    presets::apply_freeform(&mut spec, "act1=patch1").unwrap();
    let mut shared = Model::random(spec, None, 9).unwrap();
    for (k, t) in &relu.params {
        shared.params.insert(k.clone(), t.clone());
    }
    let x = images(&relu, 2, 1);
    let a = Net::from_model(&relu, &Device::flex())
        .unwrap()
        .logits(&x, 2, false, 0)
        .unwrap();
    let b = Net::from_model(&shared, &Device::flex())
        .unwrap()
        .logits(&x, 2, false, 0)
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn noise_flips_change_outputs_only_when_enabled() {
    let model = random_model(Arch::Svhn, "noise", 4);
    let net = Net::from_model(&model, &Device::flex()).unwrap();
    let x = images(&model, 2, 2);
    let clean = net.logits(&x, 2, false, 0).unwrap();
    let noisy = net.logits(&x, 2, true, 0).unwrap();
    assert_ne!(clean, noisy);
    assert_eq!(
        noisy,
        net.logits(&x, 2, true, 0).unwrap(),
        "same seed, same flips"
    );
    assert_eq!(clean, net.logits(&x, 2, false, 1).unwrap());
}
