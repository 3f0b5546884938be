//! SecureNN on whole models: secure == plaintext fixed point layer by layer for every layer kind,
//! and measured bytes/rounds == the Table 1 formulas per layer and per architecture.

use relushare_model::{
    presets, ActKind, Arch, Decider, Dims, EdgePolicy, Grouping, Layer, Model, ModelSpec,
    Normalization, SharedAct,
};
use relushare_mpc::fixed::FixedPoint;
use relushare_mpc::plain::{self, FixedLayer, FixedModel};
use relushare_mpc::runner::{run_session, RunOptions, SessionResult};
use relushare_mpc::securenn::{self, table1_cost};

fn act(name: &str, kind: ActKind) -> Layer {
    Layer::Act {
        name: name.into(),
        kind,
    }
}

fn shared(grouping: Grouping, decider: Decider, noise: f32) -> ActKind {
    ActKind::Shared(SharedAct {
        grouping,
        decider,
        noise,
    })
}

/// A small network with every layer kind; `a1`, `a2` are the two activation kinds under test.
fn small_spec(a1: ActKind, a2: ActKind) -> ModelSpec {
    let mut spec = ModelSpec::original(Arch::Fmnist);
    spec.preset = "test".into();
    spec.input = Dims::new(3, 8, 8);
    spec.normalization = Normalization::identity(3);
    spec.num_classes = 5;
    spec.layers = vec![
        Layer::Conv {
            name: "conv1".into(),
            in_ch: 3,
            out_ch: 4,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        act("act1", a1),
        Layer::AvgPool {
            name: "pool1".into(),
            kernel: 2,
            stride: 2,
        },
        Layer::Conv {
            name: "conv2".into(),
            in_ch: 4,
            out_ch: 6,
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        act("act2", a2),
        Layer::AvgPool {
            name: "pool2".into(),
            kernel: 3,
            stride: 1,
        },
        Layer::Dropout {
            name: "drop".into(),
            p: 0.5,
        },
        Layer::Flatten,
        Layer::Linear {
            name: "fc1".into(),
            in_f: 24,
            out_f: 8,
        },
        act("act3", ActKind::Relu),
        Layer::Linear {
            name: "fc2".into(),
            in_f: 8,
            out_f: 5,
        },
    ];
    spec.validate().unwrap();
    spec
}

fn images(fm: &FixedModel, n: usize, seed: u64) -> Vec<Vec<u64>> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            let img: Vec<f32> = (0..fm.input_len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 2001) as f32 / 1000.0 - 1.0
                })
                .collect();
            fm.encode_input(&img).unwrap()
        })
        .collect()
}

fn run(fm: &FixedModel, batch: Vec<Vec<u64>>, trace: bool) -> SessionResult {
    let opts = RunOptions {
        trace,
        ..Default::default()
    };
    run_session(fm, &[batch], &securenn::factory, &opts).unwrap()
}

/// Check every layer: plaintext fixed point applied to the secure input of the layer must give
/// the secure output exactly (no truncation) or within +1 ulp (truncating layers).
fn check_layers(fm: &FixedModel, n: usize, trace: &[Vec<u64>]) {
    for (li, layer) in fm.layers.iter().enumerate() {
        let yout = &trace[li + 1];
        let out_len = yout.len() / n;
        for img in 0..n {
            let xs: Vec<&[u64]> = fm.srcs[li]
                .iter()
                .map(|&t| {
                    let l = trace[t].len() / n;
                    &trace[t][img * l..(img + 1) * l]
                })
                .collect();
            let want = plain::eval_node(fm.fp, layer, &xs, &mut |_| false).unwrap();
            let got = &yout[img * out_len..(img + 1) * out_len];
            assert_eq!(want.len(), got.len(), "{}", layer.name());
            let truncates = matches!(
                layer,
                FixedLayer::Conv { .. } | FixedLayer::Linear { .. } | FixedLayer::AvgPool { .. }
            );
            for (i, (w, g)) in want.iter().zip(got).enumerate() {
                let d = (*g as i64).wrapping_sub(*w as i64);
                if truncates {
                    assert!(
                        d == 0 || d == 1,
                        "{} image {img} element {i}: diff {d}",
                        layer.name()
                    );
                } else {
                    assert_eq!(d, 0, "{} image {img} element {i}", layer.name());
                }
            }
        }
    }
}

fn check_costs(fm: &FixedModel, n: usize, res: &SessionResult) {
    let rep = &res.batches[0].report;
    for f in table1_cost(fm, n) {
        let got = rep.get(&f.name);
        let (bytes, rounds) = got
            .map(|l| (l.online_bytes, l.online_rounds))
            .unwrap_or((0, 0));
        assert_eq!(bytes * 8, f.bits, "{}: bits", f.name);
        assert_eq!(rounds, f.rounds, "{}: rounds", f.name);
        assert_eq!(
            got.map(|l| l.offline_bytes).unwrap_or(0),
            0,
            "securenn has no offline phase"
        );
    }
}

fn check_model(model: &Model, n: usize) {
    let fm = FixedModel::from_model(model, 13).unwrap();
    let batch = images(&fm, n, 7);
    let res = run(&fm, batch.clone(), true);
    let trace = res.batches[0].trace.as_ref().unwrap();
    check_layers(&fm, n, trace);
    check_costs(&fm, n, &res);
    // the logits the client receives are the last layer's output
    let last = trace.last().unwrap();
    for (i, o) in res.batches[0].outputs.iter().enumerate() {
        assert_eq!(o[..], last[i * fm.output_len..(i + 1) * fm.output_len]);
    }
}

/// Graph models (residual adds, max pooling, global average pooling, folded batch norms):
/// layer by layer, and Table 1 costs per node (max pooling: one ReLU per compared pair, ten
/// rounds per tree level; adds free).
#[test]
fn graph_model_layer_by_layer_and_costs() {
    let model = Model::random(relushare_model::resnet::tiny_graph(), None, 3).unwrap();
    check_model(&model, 2);
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let mp = table1_cost(&fm, 1)
        .into_iter()
        .find(|f| f.name == "maxpool1")
        .unwrap();
    let cmp = relushare_model::count(&model.spec)
        .unwrap()
        .maxpool_comparisons as u64;
    assert_eq!(mp.bits, cmp * (securenn::DRELU_BITS + securenn::MUL_BITS));
    assert_eq!(mp.rounds, 40);
}

#[test]
fn every_layer_kind_small_net() {
    let patch = |k, edge| Grouping::Patch { k, edge };
    let kinds: Vec<(ActKind, ActKind)> = vec![
        (ActKind::Relu, ActKind::Relu),
        (ActKind::Identity, ActKind::Partial { relu_channels: 3 }),
        (
            shared(patch(3, EdgePolicy::Partial), Decider::Learned, 0.0),
            shared(patch(3, EdgePolicy::Merge), Decider::OneHot, 0.0),
        ),
        (
            shared(Grouping::Channel, Decider::Fc, 0.0),
            shared(Grouping::Channel, Decider::Learned, 0.0),
        ),
        (
            shared(patch(2, EdgePolicy::Merge), Decider::OneHot, 0.0),
            shared(patch(4, EdgePolicy::Partial), Decider::Learned, 0.0),
        ),
        // cross-channel groups: learned, and one-hot with blocks that do not divide C
        (
            shared(
                Grouping::CrossChannel {
                    k: 2,
                    edge: EdgePolicy::Partial,
                    channels: 2,
                },
                Decider::Learned,
                0.0,
            ),
            shared(
                Grouping::CrossChannel {
                    k: 3,
                    edge: EdgePolicy::Merge,
                    channels: 4,
                },
                Decider::OneHot,
                0.0,
            ),
        ),
    ];
    for (i, (a1, a2)) in kinds.into_iter().enumerate() {
        let spec = small_spec(a1, a2);
        let mut model = Model::random(spec, None, 11 + i as u64).unwrap();
        // random (not all-ones) deciders so that dot products matter
        for (name, t) in model.params.iter_mut() {
            if name.ends_with(".v") || name.ends_with(".fc_bias") {
                for (j, v) in t.data.iter_mut().enumerate() {
                    *v = ((j * 7919 + i * 31) % 17) as f32 / 8.0 - 1.0;
                }
            }
        }
        check_model(&model, if i % 2 == 0 { 1 } else { 2 });
    }
}

#[test]
fn cluster_grouping_with_explicit_map() {
    let spec = small_spec(
        ActKind::Relu,
        shared(Grouping::Channel, Decider::Learned, 0.0),
    );
    let mut model = Model::random(spec, None, 5).unwrap();
    // turn act2 into a 3-cluster layer with an explicit map
    let k = 3;
    if let Some(ActKind::Shared(s)) = model.spec.act_mut("act2") {
        s.grouping = Grouping::Cluster { window: None, k };
    }
    let map: Vec<u32> = (0..6 * 4 * 4).map(|i| ((i * 5) % 16 % k) as u32).collect();
    model.group_maps.insert("act2".into(), map);
    model.validate().unwrap();
    check_model(&model, 1);
}

#[test]
fn noise_layers_cost_and_flip_rate() {
    let spec = small_spec(
        shared(Grouping::Channel, Decider::Fc, 0.3),
        shared(
            Grouping::Patch {
                k: 2,
                edge: EdgePolicy::Merge,
            },
            Decider::OneHot,
            0.3,
        ),
    );
    let model = Model::random(spec, None, 9).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let n = 4;
    let res = run(&fm, images(&fm, n, 3), true);
    check_costs(&fm, n, &res);
    let trace = res.batches[0].trace.as_ref().unwrap();
    // each output is either the input or 0, and differs from the noise-free decision at ~30%
    let (mut flips, mut total) = (0usize, 0usize);
    for (li, layer) in fm.layers.iter().enumerate() {
        let FixedLayer::Shared { s, .. } = layer else {
            continue;
        };
        for img in 0..n {
            let x = &trace[li][img * s.len..(img + 1) * s.len];
            let y = &trace[li + 1][img * s.len..(img + 1) * s.len];
            let clean = plain::eval_layer(fm.fp, layer, x, &mut |_| false).unwrap();
            for i in 0..s.len {
                assert!(
                    y[i] == x[i] || y[i] == 0,
                    "{}: output neither x nor 0",
                    layer.name()
                );
                if x[i] != 0 {
                    total += 1;
                    flips += usize::from(y[i] != clean[i]);
                }
            }
        }
    }
    let rate = flips as f64 / total as f64;
    assert!(
        total > 300 && (0.22..0.38).contains(&rate),
        "flip rate {rate} over {total}"
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "slow unoptimised: run with --release")]
fn paper_architectures_match_table1_formulas() {
    // (arch, preset): layer-by-layer bits and rounds equal Table 1; totals from the spec.
    for (arch, preset) in [
        (Arch::Svhn, "original"),
        (Arch::Svhn, "uniform32"),
        (Arch::Fmnist, "original"),
        (Arch::Fmnist, "uniform32"),
        (Arch::Cifar10, "original"),
        (Arch::Cifar10, "uniform32"),
        (Arch::Cifar10, "fc-noise"),
    ] {
        let model = Model::random(presets::build(arch, preset).unwrap(), None, 1).unwrap();
        let fm = FixedModel::from_model(&model, 13).unwrap();
        let res = run(&fm, images(&fm, 1, 5), false);
        check_costs(&fm, 1, &res);
        let rep = &res.batches[0].report;
        let f = table1_cost(&fm, 1);
        let bits: u64 = f.iter().map(|c| c.bits).sum();
        let rounds: u64 = f.iter().map(|c| c.rounds).sum();
        assert_eq!(rep.online_bytes() * 8, bits, "{arch} {preset}");
        assert_eq!(rep.online_rounds(), rounds, "{arch} {preset}");
        // The secure class agrees with the plaintext fixed-point class.
        let x = images(&fm, 1, 5).pop().unwrap();
        let want = plain::forward_fixed_trace(&fm, &x, &mut |_| false).unwrap();
        let want = want.last().unwrap();
        let got = &res.batches[0].outputs[0];
        let ulp = FixedPoint::default().ulp();
        for (a, b) in want.iter().zip(got) {
            let d = ((*a as i64) - (*b as i64)).abs() as f64 * ulp;
            assert!(d < 0.05, "{arch} {preset}: logit differs by {d}");
        }
        eprintln!(
            "{arch} {preset}: {:.3} MB, {} rounds",
            rep.online_bytes() as f64 / 1e6,
            rep.online_rounds()
        );
    }
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn kind_strategy() -> impl Strategy<Value = u8> {
        0u8..8
    }

    fn make_kind(sel: u8, c: usize) -> ActKind {
        let patch = |k, edge| Grouping::Patch { k, edge };
        match sel {
            0 => ActKind::Relu,
            1 => ActKind::Identity,
            2 => ActKind::Partial {
                relu_channels: c / 2,
            },
            3 => shared(patch(2, EdgePolicy::Partial), Decider::Learned, 0.0),
            4 => shared(patch(3, EdgePolicy::Merge), Decider::OneHot, 0.0),
            5 => shared(Grouping::Channel, Decider::Fc, 0.0),
            6 => shared(Grouping::Channel, Decider::Learned, 0.0),
            _ => shared(patch(2, EdgePolicy::Merge), Decider::OneHot, 0.0),
        }
    }

    /// Input values with many at the comparison's edge: 0, +-1 ulp, +-1.0, large magnitudes.
    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![
            Just(0.0f32),
            Just(1.0 / 8192.0),
            Just(-1.0 / 8192.0),
            Just(1.0),
            Just(-1.0),
            -2.0f32..2.0,
            -60.0f32..60.0,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

        /// Random small networks (shapes, kernels, padding, activation kinds, values): every
        /// layer of the secure run equals plaintext fixed point on the same layer input, and
        /// the bytes/rounds equal the Table 1 formulas.
        #[test]
        fn random_networks_layer_by_layer(
            c in 1usize..4, hw in 6usize..11, o1 in 2usize..5, k in 1usize..4, pad in 0usize..2,
            a1 in kind_strategy(), a2 in kind_strategy(), n in 1usize..3,
            vals in proptest::collection::vec(value(), 2 * 3 * 10 * 10),
            seed in 0u64..1000,
        ) {
            let pad = pad.min(k - 1);
            let h1 = hw + 2 * pad - k + 1;
            let mut spec = ModelSpec::original(Arch::Fmnist);
            spec.preset = "prop".into();
            spec.input = Dims::new(c, hw, hw);
            spec.normalization = Normalization::identity(c);
            let h2 = h1 / 2;
            spec.num_classes = 3;
            spec.layers = vec![
                Layer::Conv { name: "conv1".into(), in_ch: c, out_ch: o1, kernel: k, stride: 1, padding: pad },
                act("act1", make_kind(a1, o1)),
                Layer::AvgPool { name: "pool1".into(), kernel: 2, stride: 2 },
                Layer::Conv { name: "conv2".into(), in_ch: o1, out_ch: 2, kernel: 1, stride: 1, padding: 0 },
                act("act2", make_kind(a2, 2)),
                Layer::Flatten,
                Layer::Linear { name: "fc1".into(), in_f: 2 * h2 * h2, out_f: 3 },
            ];
            prop_assume!(spec.validate().is_ok());
            let mut model = Model::random(spec, None, seed).unwrap();
            for (name, t) in model.params.iter_mut() {
                if name.ends_with(".v") || name.ends_with(".fc_bias") {
                    for (j, v) in t.data.iter_mut().enumerate() {
                        *v = ((j as u64 * 7919 + seed) % 13) as f32 / 6.0 - 1.0;
                    }
                }
            }
            let fm = FixedModel::from_model(&model, 13).unwrap();
            let batch: Vec<Vec<u64>> = (0..n)
                .map(|i| {
                    let img: Vec<f32> = (0..fm.input_len).map(|j| vals[(i * fm.input_len + j) % vals.len()]).collect();
                    fm.encode_input(&img).unwrap()
                })
                .collect();
            let res = run(&fm, batch, true);
            check_layers(&fm, n, res.batches[0].trace.as_ref().unwrap());
            check_costs(&fm, n, &res);
        }
    }
}
