//! Tests of the fused whole-channel gates ([`crate::fast::gate`]).

use super::tests::e2e::image;
use super::*;
use crate::cost::CostReport;
use crate::plain::{self, FixedLayer, FixedModel, GateMode};
use crate::runner::{run_session, RunOptions};
use relushare_model::{presets, Arch, Model};

fn model(arch: Arch, preset: &str, free: Option<&str>, seed: u64) -> Model {
    let mut spec = presets::build(arch, preset).unwrap();
    if let Some(f) = free {
        presets::apply_freeform(&mut spec, f).unwrap();
    }
    Model::random(spec, None, seed).unwrap()
}

fn fused(m: &Model) -> (FixedModel, Vec<String>) {
    let mut fm = FixedModel::from_model(m, 13).unwrap();
    let names = gate::fuse(&mut fm).unwrap();
    (fm, names)
}

fn modes(fm: &FixedModel) -> Vec<(String, GateMode)> {
    fm.layers
        .iter()
        .filter_map(|l| match l {
            FixedLayer::Shared { name, s } => s.fused.as_ref().map(|g| (name.clone(), g.mode)),
            _ => None,
        })
        .collect()
}

#[test]
fn fuse_picks_the_cheapest_mode_per_block() {
    let (fm, _) = fused(&model(Arch::Cifar10, "uniform32", None, 1));
    assert_eq!(
        modes(&fm),
        vec![
            ("act1".to_string(), GateMode::Fold),
            ("act2".to_string(), GateMode::Pool)
        ]
    );
    for arch in [Arch::Svhn, Arch::Fmnist] {
        let (fm, names) = fused(&model(arch, "uniform32", None, 1));
        assert_eq!(
            modes(&fm),
            vec![("act1".to_string(), GateMode::Pool)],
            "{arch}"
        );
        assert_eq!(names, vec!["act1".to_string()]);
    }
    // Not whole-channel, noisy or Fc deciders: nothing to fuse.
    for (arch, preset) in [
        (Arch::Cifar10, "original"),
        (Arch::Cifar10, "uniform3"),
        (Arch::Cifar10, "fc-noise"),
        (Arch::Svhn, "shafran"),
    ] {
        let (fm, names) = fused(&model(arch, preset, None, 1));
        assert!(names.is_empty() && modes(&fm).is_empty(), "{arch} {preset}");
    }
    // `noise`: a noise-free one-hot channel gate, then a noisy one (not fused).
    let (fm, _) = fused(&model(Arch::Cifar10, "noise", None, 1));
    assert_eq!(modes(&fm), vec![("act1".to_string(), GateMode::Fold)]);
    // Idempotent.
    let (mut fm, names) = fused(&model(Arch::Fmnist, "uniform32", None, 2));
    assert_eq!(gate::fuse(&mut fm).unwrap(), names);
}

/// The folded decider gives the decision value of the exact convolution output: the leader's
/// value exactly (one-hot), and `sum v z / 2^f` up to the rounding of `U` (learned).
#[test]
fn folded_decider_equals_the_decider_on_the_exact_convolution() {
    for (free, onehot) in [(Some("act1=channel:onehot"), true), (None, false)] {
        let m = model(Arch::Fmnist, "uniform32", free, 5);
        let (fm, _) = fused(&m);
        let (FixedLayer::Conv { geom, w, b, .. }, FixedLayer::Shared { s, .. }) =
            (&fm.layers[0], &fm.layers[1])
        else {
            panic!("conv then gate expected")
        };
        let fg = s.fused.as_ref().unwrap();
        let lim = input_abs_max(&m.spec.normalization);
        for seed in 0..3 {
            let x = fm.encode_input(&image(fm.input_len, seed, lim)).unwrap();
            let mut z = crate::kernels::conv2d(&x, w, geom);
            crate::kernels::add_channel_bias(&mut z, b, geom.oh() * geom.ow());
            let got = fg.decisions(&x).unwrap();
            let plane = geom.oh() * geom.ow();
            let mut sum_abs_x = 0f64;
            for &v in &x {
                sum_abs_x += (v as i64).unsigned_abs() as f64;
            }
            for c in 0..geom.o {
                if onehot {
                    assert_eq!(got[c], z[s.leaders[c] as usize], "channel {c}");
                } else {
                    let exact: f64 = (0..plane)
                        .map(|p| {
                            (s.v[c * plane + p] as i64 as f64) * (z[c * plane + p] as i64 as f64)
                        })
                        .sum::<f64>()
                        / 8192.0;
                    // U is rounded to f bits: error at most half a unit per input element.
                    let tol = 0.5 * sum_abs_x + 1.0 + exact.abs() * 1e-12;
                    assert!(
                        ((got[c] as i64) as f64 - exact).abs() <= tol,
                        "channel {c}: {} vs {exact}",
                        got[c] as i64
                    );
                }
            }
        }
    }
}

/// Runs `m` fused with `mode`, checks every layer against the plaintext reference evaluated on
/// the secure input of that layer (fused blocks as a whole) and the logits end to end; returns
/// the cost report.
fn check(m: &Model, mode: CmpMode, batch: usize) -> CostReport {
    let (fm, names) = fused(m);
    assert!(!names.is_empty());
    let cfg = config_for_model(&fm, m).unwrap();
    let lim = input_abs_max(&m.spec.normalization);
    let imgs: Vec<Vec<u64>> = (0..batch)
        .map(|b| {
            fm.encode_input(&image(fm.input_len, 3 + b as u64, lim))
                .unwrap()
        })
        .collect();
    let f = factory(cfg, mode);
    let opts = RunOptions {
        trace: true,
        ..Default::default()
    };
    let res = run_session(&fm, std::slice::from_ref(&imgs), &f, &opts).unwrap();
    let br = &res.batches[0];
    let tr = br.trace.as_ref().unwrap();
    let per = |li: usize| {
        if li == 0 {
            fm.input_len
        } else {
            fm.out_lens[li - 1]
        }
    };
    let mut gated_off = 0;
    for img in 0..batch {
        let mut li = 0;
        while li < fm.layers.len() {
            let xin = &tr[li][img * per(li)..(img + 1) * per(li)];
            if let Some((fg, _)) = plain::fused_at(&fm, li) {
                let want = plain::eval_fused_block(&fm, li, xin).unwrap();
                let keep: Vec<bool> = fg
                    .decisions(xin)
                    .unwrap()
                    .iter()
                    .map(|&z| (z as i64) >= 0)
                    .collect();
                gated_off += keep.iter().filter(|k| !**k).count();
                let tol = if fg.mode == GateMode::Pool { 2 } else { 1 };
                for (j, w) in want.iter().enumerate() {
                    // A pooled block materializes only its pooled output (j = 2); the
                    // convolution and the gate layer hand on placeholders, checked nowhere.
                    if fg.mode == GateMode::Pool && j < 2 {
                        continue;
                    }
                    let l = li + j;
                    let got = &tr[l + 1][img * fm.out_lens[l]..(img + 1) * fm.out_lens[l]];
                    let plane = w.len() / keep.len();
                    for (i, (a, b)) in got.iter().zip(w).enumerate() {
                        let name = fm.layers[l].name();
                        if !keep[i / plane] {
                            assert_eq!(*a, 0, "{name} [{i}] must be zero");
                            assert_eq!(*b, 0, "{name} [{i}] reference");
                        } else {
                            let d = (*a as i64).wrapping_sub(*b as i64);
                            assert!(
                                (0..=tol).contains(&d),
                                "{name} [{i}]: {} vs {}",
                                *a as i64,
                                *b as i64
                            );
                        }
                    }
                }
                li += want.len();
                continue;
            }
            let l = &fm.layers[li];
            let got = &tr[li + 1][img * fm.out_lens[li]..(img + 1) * fm.out_lens[li]];
            let want = plain::eval_layer(fm.fp, l, xin, &mut |_| false).unwrap();
            let truncates = matches!(
                l,
                FixedLayer::Conv { .. } | FixedLayer::Linear { .. } | FixedLayer::AvgPool { .. }
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let d = (*a as i64).wrapping_sub(*b as i64);
                assert!(
                    d == 0 || (truncates && d == 1),
                    "{} [{i}]: {} vs {}",
                    l.name(),
                    *a as i64,
                    *b as i64
                );
            }
            li += 1;
        }
    }
    // Random weights gate off some channels and keep others; both paths were exercised.
    assert!(gated_off > 0, "no channel was gated off");
    for (img, out) in imgs.iter().zip(&br.outputs) {
        let t = plain::forward_fixed_trace(&fm, img, &mut |_| false).unwrap();
        let want = fm.fp.decode_vec(t.last().unwrap());
        let got = fm.fp.decode_vec(out);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 0.01 + 0.01 * b.abs(), "logit {a} vs {b}");
        }
    }
    br.report.clone()
}

#[test]
fn fused_blocks_match_the_reference() {
    check(&model(Arch::Svhn, "uniform32", None, 21), CmpMode::Tree, 2);
    check(&model(Arch::Fmnist, "uniform32", None, 22), CmpMode::Fss, 1);
    check(
        &model(
            Arch::Fmnist,
            "original",
            Some("act1=channel:onehot,act2=channel"),
            23,
        ),
        CmpMode::Tree,
        1,
    );
    check(
        &model(Arch::Cifar10, "uniform32", None, 24),
        CmpMode::Tree,
        2,
    );
}

#[test]
fn fused_costs_match_formulas_and_halve_cifar10() {
    let m = model(Arch::Cifar10, "uniform32", None, 31);
    let rep = check(&m, CmpMode::Tree, 1);
    let (fm, _) = fused(&m);
    let cfg = config_for_model(&fm, &m).unwrap();
    let plan = crate::runner::build_plan(&fm, 1, &vec![None; fm.layers.len()]);
    for (i, op) in plan.ops.iter().enumerate() {
        let Some(gg) = gate_geom(&plan.ops, i, &cfg, CmpMode::Tree).unwrap() else {
            continue;
        };
        let (conv, act) = (op.name(), plan.ops[i + 1].name());
        let lc = |l: &str| rep.get(l).cloned().unwrap_or_default();
        let (c, a) = (lc(conv), lc(act));
        assert_eq!(
            c.online_bytes + a.online_bytes,
            2 * gg.online_bytes().unwrap() as u64,
            "{conv}+{act} online"
        );
        let (p1, p0) = gg.offline_bytes().unwrap();
        assert_eq!(
            c.offline_bytes + a.offline_bytes,
            (p1 + p0) as u64,
            "{conv}+{act} offline"
        );
    }
    assert_eq!(
        rep.offline_bytes() as usize,
        offline_bytes(&plan, &cfg, CmpMode::Tree).unwrap()
    );
    // The target: uniform 32x32 costs less than half of the original network.
    let orig = model(Arch::Cifar10, "original", None, 31);
    let fo = FixedModel::from_model(&orig, 13).unwrap();
    let fc = factory(config_for_model(&fo, &orig).unwrap(), CmpMode::Tree);
    let ro = run_session(
        &fo,
        &[vec![vec![0; fo.input_len]]],
        &fc,
        &RunOptions::default(),
    )
    .unwrap();
    let total = |r: &CostReport| r.online_bytes() + r.offline_bytes();
    let (u, o) = (total(&rep), total(&ro.batches[0].report));
    assert!(2 * u < o, "uniform32 {u} bytes vs original {o}");
}

/// The sparse fold ([`gate::fold_sparse`], `mimo`'s patch gates) of a whole-channel gate holds
/// exactly the dense fold's entries on each row's receptive field (zero elsewhere) and the same
/// `beta`; `fast`'s own fusion still leaves patch gates alone.
#[test]
fn sparse_fold_matches_the_dense_fold() {
    for (arch, preset) in [(Arch::Svhn, "uniform32"), (Arch::Cifar10, "fc-noise")] {
        let fm = FixedModel::from_model(&model(arch, preset, None, 5), 13).unwrap();
        let mut n = 0;
        for i in 0..fm.layers.len() - 1 {
            let (FixedLayer::Conv { geom, w, b, .. }, FixedLayer::Shared { s, .. }) =
                (&fm.layers[i], &fm.layers[i + 1])
            else {
                continue;
            };
            let (du, dbeta) = gate::fold_decider(geom, w, b, s, 13).unwrap();
            let (su, sbeta, sp) = gate::fold_sparse(geom, w, b, s, 13).unwrap();
            assert_eq!(sbeta, dbeta, "{arch} {preset}");
            let in_len = geom.in_len1();
            let mut dense = vec![0u64; du.len()];
            for g in 0..sp.rows() {
                let (a, e) = (sp.start[g] as usize, sp.start[g + 1] as usize);
                for (&q, &u) in sp.cols[a..e].iter().zip(&su[a..e]) {
                    dense[g * in_len + q as usize] = u;
                }
            }
            assert_eq!(dense, du, "{arch} {preset}");
            n += 1;
        }
        assert!(n > 0);
    }
    let (fm, names) = fused(&model(Arch::Cifar10, "uniform3", None, 1));
    assert!(names.is_empty(), "fast fused patch gates: {names:?}");
    assert!(modes(&fm).is_empty());
}

/// A patch gate's sparse decisions equal the decider applied to the exact (untruncated)
/// convolution output, up to the rounding of `U` and `beta` (half a unit per entry of the
/// window times the input, plus one).
#[test]
fn sparse_decisions_follow_the_exact_convolution() {
    let m = model(Arch::Svhn, "uniform3", None, 7);
    let mut fm = FixedModel::from_model(&m, 13).unwrap();
    assert_eq!(
        crate::mimo::fuse(&mut fm).unwrap(),
        vec!["act1".to_string()]
    );
    let (FixedLayer::Conv { geom, w, b, .. }, FixedLayer::Shared { s, .. }) =
        (&fm.layers[0], &fm.layers[1])
    else {
        panic!("SVHN starts with conv1, act1")
    };
    let fg = s.fused.as_ref().unwrap();
    let lim = crate::fast::input_abs_max(&m.spec.normalization);
    let x = fm.encode_input(&image(fm.input_len, 3, lim)).unwrap();
    let z = fg.decisions(&x).unwrap();
    let mut y = crate::kernels::conv2d(&x, w, geom);
    crate::kernels::add_channel_bias(&mut y, b, geom.oh() * geom.ow());
    let mut exact = vec![0i128; s.num_groups];
    for (i, &g) in s.group_of.iter().enumerate() {
        exact[g as usize] += (s.v[i] as i64 as i128) * (y[i] as i64 as i128);
    }
    let xmax = x.iter().map(|&v| (v as i64).unsigned_abs()).max().unwrap() as i128;
    let sp = fg.sparse.as_ref().unwrap();
    for g in 0..s.num_groups {
        let want = exact[g] >> 13;
        let tol = (sp.row(g).len() as i128 * xmax) / 2 + 2;
        let d = (z[g] as i64 as i128 - want).abs();
        assert!(
            d <= tol,
            "group {g}: {} vs {want} (tolerance {tol})",
            z[g] as i64
        );
    }
}
