//! Tests of the `mimo` suite against plaintext fixed-point evaluation, and of its cost formulas.

use super::*;
use crate::cost::{CostReport, PartyCosts, Phase};
use crate::plain::{self, FixedLayer, FixedModel};
use crate::runner::{run_session, RunOptions};
use crate::transport::MemTransport;
use relushare_model::{presets, Arch, Model};

/// `v` (known modulo `2^bits`) sign-extended.
fn sext(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        (((v << (64 - bits)) as i64) >> (64 - bits)) as u64
    }
}

/// Run a one-op plan on the three parties (input shares `x0`, `x1`); the output shares' sum.
fn run_plan(plan: Plan, cfg: MimoConfig, x: Vec<u64>) -> (Vec<u64>, CostReport) {
    let mut rng = Prg::from_seed([4; 16]);
    let x0 = rng.gen_u64s(x.len());
    let x1 = crate::ring::sub(&x, &x0);
    let ts = MemTransport::trio();
    let mut hs = Vec::new();
    for t in ts {
        let (plan, cfg) = (plan.clone(), cfg.clone());
        let xs = [x0.clone(), x1.clone(), Vec::new()];
        hs.push(std::thread::spawn(move || {
            let mut s = MimoSuite::new(Comm::new(Box::new(t)), 13, cfg);
            let me = s.party();
            s.comm().set_phase(Phase::Offline);
            s.prepare(&plan, &[]).unwrap();
            s.offline(&plan, &[]).unwrap();
            s.comm().set_phase(Phase::Online);
            let mut y = xs[me].clone();
            for op in &plan.ops {
                s.comm().set_label(op.name());
                y = crate::runner::exec_op(&mut s, op, &y, plan.n, &[]).unwrap();
            }
            let c: PartyCosts = s.into_comm().take_costs();
            (y, c)
        }));
    }
    let outs: Vec<(Vec<u64>, PartyCosts)> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let y = crate::ring::add(&outs[0].0, &outs[1].0);
    let costs: Vec<PartyCosts> = outs.into_iter().map(|o| o.1).collect();
    (y, CostReport::from_parties(&costs, &[]))
}

/// A ReLU gate is exact at the edges of its ring and on random values, its output is
/// sign-extended to the full ring, and its bytes and rounds equal the formulas.
#[test]
fn relu_gate_exact_and_costs_match_formulas() {
    for k in [2u32, 5, 21, 40] {
        let lim = (1i64 << (k - 1)) - 1;
        let mut vals = vec![0, 1, -1, lim, -lim, -lim - 1];
        let mut rng = Prg::from_seed([9; 16]);
        for _ in 0..500 {
            vals.push((rng.next_u64() % (2 * lim as u64 + 1)) as i64 - lim);
        }
        vals.retain(|v| v.abs() <= lim + 1 && *v >= -lim - 1);
        let n = vals.len();
        let mut cfg = MimoConfig::defaults(13);
        cfg.bits.insert("act".into(), k);
        let plan = Plan {
            n: 1,
            input_len: n,
            output_len: n,
            srcs: Vec::new(),
            ops: vec![PlanOp::Relu {
                name: "act".into(),
                len: n,
            }],
        };
        let x: Vec<u64> = vals.iter().map(|&v| v as u64).collect();
        let (y, rep) = run_plan(plan.clone(), cfg.clone(), x);
        for (i, &v) in vals.iter().enumerate() {
            assert_eq!(y[i] as i64, v.max(0), "k={k} element {i}: x = {v}");
        }
        let c = op_costs(&plan, &cfg, 13).unwrap();
        let l = rep.get("act").unwrap();
        assert_eq!(l.online_bytes as usize, c[0].online, "k={k}");
        assert_eq!(l.online_rounds as usize, 2, "k={k}: input and gate");
        assert_eq!(l.online_rounds as usize, c[0].rounds);
        assert_eq!(l.offline_bytes as usize, c[0].to_p1 + c[0].to_p0);
        // Input opened on k bits, output on 64.
        assert_eq!(c[0].online, 2 * (n * k as usize).div_ceil(8) + 2 * 8 * n);
    }
}

/// The rings flow backwards from the consumers: CIFAR-10 `original`'s ReLU outputs are known
/// modulo the next linear layer's needs, pooling adds its truncation, the last layer is 64-bit.
#[test]
fn layout_of_cifar10() {
    let m = Model::random(presets::build(Arch::Cifar10, "original").unwrap(), None, 1).unwrap();
    let fm = FixedModel::from_model(&m, 13).unwrap();
    let cfg = config_for_model(&fm, &m).unwrap();
    let plan = crate::runner::build_plan(&fm, 1, &vec![None; fm.layers.len()]);
    let lay = layout(&plan, &cfg, 13).unwrap();
    let k = |n: &str| cfg.for_layer(n, false);
    let idx = |n: &str| plan.ops.iter().position(|o| o.name() == n).unwrap();
    assert_eq!(lay.input, k("act1") + 13);
    assert_eq!(lay.out[idx("conv1")], k("act1"));
    assert_eq!(lay.out[idx("act1")], k("act2") + 13);
    // act2 -> pool (2x2: constant 2^11) -> conv3 -> act3.
    assert_eq!(lay.out[idx("act2")], k("act3") + 13 + 2);
    assert_eq!(lay.out[idx("act7")], 64);
    assert_eq!(lay.out[idx("fc1")], 64);
}

/// Secure == plaintext per layer (each layer re-evaluated in plaintext on the secure input,
/// modulo the rings of the layout: exact for ReLU and sharing layers, 0 or +1 in the last place
/// after truncation), the logits end to end, and every layer's bytes and rounds equal the
/// formulas.
fn check(arch: Arch, preset: &str, free: Option<&str>, batch: usize) -> CostReport {
    let mut spec = presets::build(arch, preset).unwrap();
    if let Some(f) = free {
        presets::apply_freeform(&mut spec, f).unwrap();
        spec.preset = f.to_string();
    }
    let model = Model::random(spec, None, 11).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let cfg = config_for_model(&fm, &model).unwrap();
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let imgs: Vec<Vec<u64>> = (0..batch)
        .map(|b| {
            let mut r = Prg::from_seed([7 + b as u8; 16]);
            let img: Vec<f32> = (0..fm.input_len)
                .map(|_| ((r.next_u64() % 20001) as f64 / 10000.0 - 1.0) as f32 * lim as f32)
                .collect();
            fm.encode_input(&img).unwrap()
        })
        .collect();
    let seed = [0x6e; 16];
    let hooks = TestHooks {
        noise_seed: Some(seed),
        ..Default::default()
    };
    let f = test_factory(cfg.clone(), hooks);
    let res = run_session(
        &fm,
        std::slice::from_ref(&imgs),
        &f,
        &RunOptions {
            trace: true,
            ..Default::default()
        },
    )
    .unwrap();
    // The dealer's noise bits: per noisy layer, in order, batch * len.
    let mut nrng = Prg::from_seed(seed);
    let mut noise = BTreeMap::new();
    for (li, l) in fm.layers.iter().enumerate() {
        if let FixedLayer::Shared { s, .. } = l {
            if s.noise > 0.0 {
                noise.insert(li, nrng.bernoulli(batch * s.len, s.noise as f64));
            }
        }
    }
    let plan = crate::runner::build_plan(&fm, batch, &vec![None; fm.layers.len()]);
    let lay = layout(&plan, &cfg, 13).unwrap();
    let br = &res.batches[0];
    let tr = br.trace.as_ref().unwrap();
    let ring_in = |li: usize| {
        // The ring the input of layer li is known modulo.
        (0..li)
            .rev()
            .find(|&j| !matches!(plan.ops[j], PlanOp::Identity { .. }))
            .map(|j| lay.out[j])
            .unwrap_or(64)
    };
    for (li, l) in fm.layers.iter().enumerate() {
        let per_in = if li == 0 {
            fm.input_len
        } else {
            fm.out_lens[li - 1]
        };
        let per_out = fm.out_lens[li];
        let (bin, bout) = (ring_in(li), lay.out[li]);
        let mo = ring_mask(bout);
        for img in 0..batch {
            let xin: Vec<u64> = tr[li][img * per_in..(img + 1) * per_in]
                .iter()
                .map(|&v| sext(v, bin))
                .collect();
            let got = &tr[li + 1][img * per_out..(img + 1) * per_out];
            let mut bits = noise
                .get(&li)
                .map(|b| b[img * per_out..(img + 1) * per_out].iter())
                .into_iter()
                .flatten();
            let want = plain::eval_layer(fm.fp, l, &xin, &mut |_| {
                *bits.next().expect("a noise bit per member") == 1
            })
            .unwrap();
            let truncates = matches!(
                l,
                FixedLayer::Conv { .. } | FixedLayer::Linear { .. } | FixedLayer::AvgPool { .. }
            );
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let d = a.wrapping_sub(*b) & mo;
                assert!(
                    d == 0 || (truncates && d == 1),
                    "{arch} {preset} {free:?} {} [{i}]: {} vs {} (ring {bout})",
                    l.name(),
                    sext(*a & mo, bout) as i64,
                    sext(*b & mo, bout) as i64
                );
            }
        }
    }
    for (img, out) in br.outputs.iter().enumerate() {
        let mut bits = noise
            .values()
            .flat_map(|b| {
                let len = b.len() / batch;
                b[img * len..(img + 1) * len].iter()
            })
            .collect::<Vec<_>>()
            .into_iter();
        let t = plain::forward_fixed_trace(&fm, &imgs[img], &mut |_| *bits.next().unwrap() == 1)
            .unwrap();
        let want = fm.fp.decode_vec(t.last().unwrap());
        let got = fm.fp.decode_vec(out);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 0.01 + 0.01 * b.abs(),
                "{arch} {preset}: logit {a} vs {b}"
            );
        }
    }
    // Costs per layer equal the formulas.
    let costs = op_costs(&plan, &cfg, 13).unwrap();
    for (op, c) in plan.ops.iter().zip(&costs) {
        let (on, rounds, off) = br
            .report
            .get(op.name())
            .map(|l| (l.online_bytes, l.online_rounds, l.offline_bytes))
            .unwrap_or_default();
        assert_eq!(
            on as usize,
            c.online,
            "{arch} {preset} {} online",
            op.name()
        );
        assert_eq!(
            rounds as usize,
            c.rounds,
            "{arch} {preset} {} rounds",
            op.name()
        );
        assert_eq!(
            off as usize,
            c.to_p1 + c.to_p0,
            "{arch} {preset} {} offline",
            op.name()
        );
    }
    let (on, rounds, off) = totals(&plan, &cfg, 13).unwrap();
    assert_eq!(br.report.online_bytes() as usize, on);
    assert_eq!(br.report.online_rounds() as usize, rounds);
    assert_eq!(br.report.offline_bytes() as usize, off);
    br.report.clone()
}

/// One online round per linear layer (but the last) and per activation layer, plus the input
/// opening: SVHN 5, Fashion-MNIST 7.
#[test]
fn svhn_and_fmnist_end_to_end() {
    let r = check(Arch::Svhn, "original", None, 1);
    assert_eq!(r.online_rounds(), 5);
    let r = check(Arch::Fmnist, "original", None, 2);
    assert_eq!(r.online_rounds(), 7);
}

/// CIFAR-10 `original`: 15 online rounds (53 for `fast`, 22 for `fss`).
#[test]
fn cifar10_original_end_to_end() {
    let r = check(Arch::Cifar10, "original", None, 1);
    assert_eq!(r.online_rounds(), 15);
}

/// Sharing layers: learned, FC and one-hot deciders, patches and channels, noise, cross-channel
/// groups (edge groups of other sizes); a learned/FC decider adds one round.
#[test]
fn sharing_layers_end_to_end() {
    check(Arch::Svhn, "uniform3", None, 1);
    check(Arch::Svhn, "noise", None, 1);
    check(Arch::Fmnist, "fc-noise", None, 1);
    check(
        Arch::Fmnist,
        "original",
        Some("act1=patch2/c4,act2=patch3-merge/c2:onehot"),
        2,
    );
    let r = check(Arch::Svhn, "original", Some("act1=channel:onehot"), 1);
    assert_eq!(r.online_rounds(), 5, "a one-hot layer costs one round");
    let r = check(Arch::Svhn, "original", Some("act1=channel"), 1);
    assert_eq!(r.online_rounds(), 6, "a learned decider costs one more");
}
