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
        let plan = Plan::relu_act(n);
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
/// after truncation; a fused gate as a block with its convolution: exact decisions on the
/// convolution's input, exactly zero where a channel is gated off, the truncated convolution
/// output elsewhere), the logits end to end, and every layer's bytes and rounds equal the
/// formulas. The model is prepared for mimo ([`fuse`]) first.
fn check(arch: Arch, preset: &str, free: Option<&str>, batch: usize) -> CostReport {
    check_fused(arch, preset, free, batch).0
}

/// [`check`], also returning the fused gates' names and the count of (kept, gated-off)
/// channels over the batch.
fn check_fused(
    arch: Arch,
    preset: &str,
    free: Option<&str>,
    batch: usize,
) -> (CostReport, Vec<String>, (usize, usize)) {
    let mut spec = presets::build(arch, preset).unwrap();
    if let Some(f) = free {
        presets::apply_freeform(&mut spec, f).unwrap();
        spec.preset = f.to_string();
    }
    check_model_fused(&Model::random(spec, None, 11).unwrap(), batch)
}

/// [`check`] of a model (sequential or a graph: every layer against the plaintext of its
/// inputs as the suite returned them).
fn check_model(model: &Model, batch: usize) -> CostReport {
    check_model_fused(model, batch).0
}

/// [`check_model`], also returning the fused gates' names and the count of (kept, gated-off)
/// channels over the batch.
fn check_model_fused(model: &Model, batch: usize) -> (CostReport, Vec<String>, (usize, usize)) {
    let (arch, preset, free) = (model.spec.arch, model.spec.preset.clone(), None::<&str>);
    let model = model.clone();
    let mut fm = FixedModel::from_model(&model, 13).unwrap();
    let fused = crate::protocol::prepare_model(crate::protocol::Protocol::Mimo, &mut fm).unwrap();
    let cfg = config_for_model(&fm, &model).unwrap();
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let imgs: Vec<Vec<u64>> = (0..batch)
        .map(|b| {
            fm.encode_input(&crate::fast::tests::e2e::image(
                fm.input_len,
                7 + b as u64,
                lim,
            ))
            .unwrap()
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
    // The ring tensor t is known modulo (the input: the client's 64-bit shares; an identity
    // op's output: its input's).
    fn ring_of(plan: &Plan, lay: &Layout, t: usize) -> u32 {
        match t.checked_sub(1) {
            None => 64,
            Some(p) if matches!(plan.ops[p], PlanOp::Identity { .. }) => {
                ring_of(plan, lay, plan.edges()[p][0])
            }
            Some(p) => lay.out[p],
        }
    }
    let len_of = |t: usize| {
        if t == 0 {
            fm.input_len
        } else {
            fm.out_lens[t - 1]
        }
    };
    let mut gates = (0, 0);
    for (li, l) in fm.layers.iter().enumerate() {
        let per_out = fm.out_lens[li];
        let bout = lay.out[li];
        let mo = ring_mask(bout);
        if li > 0 && plain::fused_at(&fm, li - 1).is_some() {
            // The gate of a fused block: the block's reference on the convolution's input.
            let (fg, _) = plain::fused_at(&fm, li - 1).unwrap();
            let t = fm.srcs[li - 1][0];
            let (pin, cin) = (len_of(t), ring_of(&plan, &lay, t));
            for img in 0..batch {
                let xin: Vec<u64> = tr[t][img * pin..(img + 1) * pin]
                    .iter()
                    .map(|&v| sext(v, cin))
                    .collect();
                let keep: Vec<bool> = fg
                    .decisions(&xin)
                    .unwrap()
                    .iter()
                    .map(|&z| (z as i64) >= 0)
                    .collect();
                let nb: Vec<bool> = noise.get(&li).map_or(vec![false; per_out], |b| {
                    b[img * per_out..(img + 1) * per_out]
                        .iter()
                        .map(|&v| v == 1)
                        .collect()
                });
                let mut bits = nb.iter();
                let want = plain::eval_fused_block_noisy(&fm, li - 1, &xin, &mut |_| {
                    *bits.next().expect("a noise bit per member")
                })
                .unwrap();
                let got = &tr[li + 1][img * per_out..(img + 1) * per_out];
                // Whole channels: a channel's elements; patch groups: the layer's map.
                let plane = per_out / keep.len();
                let FixedLayer::Shared { s, .. } = l else {
                    panic!("a fused gate is a sharing layer")
                };
                let group = |i: usize| match fg.sparse {
                    Some(_) => s.group_of[i] as usize,
                    None => i / plane,
                };
                let mut counted = vec![false; keep.len()];
                for (i, (a, b)) in got.iter().zip(&want[1]).enumerate() {
                    let d = a.wrapping_sub(*b) & mo;
                    let kept = keep[group(i)] != nb[i];
                    if !std::mem::replace(&mut counted[group(i)], true) {
                        if kept {
                            gates.0 += 1;
                        } else {
                            gates.1 += 1;
                        }
                    }
                    assert!(
                        d == 0 || (kept && d == 1),
                        "{arch} {preset} {free:?} {} (fused) [{i}]: {} vs {} (kept {kept})",
                        l.name(),
                        sext(*a & mo, bout) as i64,
                        sext(*b & mo, bout) as i64
                    );
                }
            }
            continue;
        }
        for img in 0..batch {
            let xins: Vec<Vec<u64>> = fm.srcs[li]
                .iter()
                .map(|&t| {
                    let bin = ring_of(&plan, &lay, t);
                    tr[t][img * len_of(t)..(img + 1) * len_of(t)]
                        .iter()
                        .map(|&v| sext(v, bin))
                        .collect()
                })
                .collect();
            let xins: Vec<&[u64]> = xins.iter().map(|v| v.as_slice()).collect();
            let got = &tr[li + 1][img * per_out..(img + 1) * per_out];
            let mut bits = noise
                .get(&li)
                .map(|b| b[img * per_out..(img + 1) * per_out].iter())
                .into_iter()
                .flatten();
            let want = plain::eval_node(fm.fp, l, &xins, &mut |_| {
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
    (br.report.clone(), fused, gates)
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

/// CIFAR-10 `original`: 15 online rounds (50 for `fast`, 22 for `fss`).
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
    assert_eq!(
        r.online_rounds(),
        5,
        "a fused learned channel gate costs one round"
    );
    let r = check(Arch::Svhn, "original", Some("act1=channel:fc:noise0.2"), 1);
    assert_eq!(
        r.online_rounds(),
        5,
        "so does a fused noisy FC channel gate"
    );
    let r = check(Arch::Svhn, "original", Some("act1=patch2"), 1);
    assert_eq!(r.online_rounds(), 5, "so does a fused learned patch gate");
    let r = check(Arch::Svhn, "original", Some("act1=patch2:noise0.2"), 1);
    assert_eq!(r.online_rounds(), 5, "and a fused noisy patch gate");
}

/// CIFAR-10 `uniform3` (learned 3x3 patch gates after conv1 and conv2): both are fused with
/// their convolutions through sparse rows of `U` (a 5x5 window per channel of the input per
/// group), so 15 online rounds as `original` (17 unfused); random weights gate off some
/// patches and keep others. The one-time setup grows by the opening of `U`'s entries.
#[test]
fn uniform3_patch_gates_fused() {
    let (r, fused, (kept, off)) = check_fused(Arch::Cifar10, "uniform3", None, 2);
    assert_eq!(fused, vec!["act1".to_string(), "act2".to_string()]);
    assert_eq!(r.online_rounds(), 15);
    assert!(kept > 0 && off > 0, "kept {kept}, gated off {off}");
    eprintln!(
        "cifar10 uniform3 (batch 2): {} rounds, {:.3} online MB, {:.3} offline MB",
        r.online_rounds(),
        r.online_bytes() as f64 / 1e6,
        r.offline_bytes() as f64 / 1e6
    );
    // The rows of U: each group's members' receptive fields, and the entries the dense
    // reference would hold there (the rest of the dense row is zero).
    let model =
        Model::random(presets::build(Arch::Cifar10, "uniform3").unwrap(), None, 11).unwrap();
    let mut fm = FixedModel::from_model(&model, 13).unwrap();
    fuse(&mut fm).unwrap();
    for li in 0..fm.layers.len() {
        let Some((fg, FixedLayer::Conv { geom, .. })) = plain::fused_at(&fm, li) else {
            continue;
        };
        let sp = fg.sparse.as_ref().expect("patch gates are sparse");
        assert_eq!(sp.rows(), fg.beta.len());
        let interior = (0..sp.rows()).map(|g| sp.row(g).len()).max().unwrap();
        assert_eq!(interior, 25 * geom.c, "a 5x5 window per input channel");
        eprintln!(
            "{}: {} groups, {} entries of U (dense: {})",
            fm.layers[li + 1].name(),
            sp.rows(),
            sp.cols.len(),
            sp.rows() * fg.in_len
        );
    }
}

/// CIFAR-10 `uniform32` (learned whole-channel gates after conv1 and conv2): both gates are
/// fused with their convolutions, so 15 online rounds as `original` (one per linear layer but
/// the last, one per ReLU/gReLU layer, the input opening); random weights gate off some channels
/// and keep others. SVHN / Fashion-MNIST `uniform32` as their `original`.
#[test]
fn uniform32_fused_gates_add_no_round() {
    let (r, fused, (kept, off)) = check_fused(Arch::Cifar10, "uniform32", None, 2);
    assert_eq!(fused, vec!["act1".to_string(), "act2".to_string()]);
    assert_eq!(r.online_rounds(), 15);
    assert!(kept > 0 && off > 0, "kept {kept}, gated off {off}");
    let (r, fused, _) = check_fused(Arch::Svhn, "uniform32", None, 1);
    assert_eq!(fused, vec!["act1".to_string()]);
    assert_eq!(r.online_rounds(), 5);
    let (r, _, _) = check_fused(Arch::Fmnist, "uniform32", None, 1);
    assert_eq!(r.online_rounds(), 7);
}

/// CIFAR-10 `fc-noise` (noisy FC deciders on whole channels after conv1 and conv2): fused too,
/// 15 online rounds; the noise bits flip members of kept and gated-off channels alike.
#[test]
fn fc_noise_fused_gates_add_no_round() {
    let (r, fused, (kept, off)) = check_fused(Arch::Cifar10, "fc-noise", None, 1);
    assert_eq!(fused, vec!["act1".to_string(), "act2".to_string()]);
    assert_eq!(r.online_rounds(), 15);
    assert!(kept > 0 && off > 0, "kept {kept}, gated off {off}");
}

/// The fused gate's decisions ride with its convolution's opening: that layer opens its
/// output and one `k`-bit decision per channel and image, and its dealer sends `B_U r` per
/// decision; the gate layer opens only its members.
#[test]
fn fused_gate_costs() {
    let mut spec = presets::build(Arch::Svhn, "uniform32").unwrap();
    spec.preset = "uniform32".into();
    let model = Model::random(spec, None, 3).unwrap();
    let mut fm = FixedModel::from_model(&model, 13).unwrap();
    assert_eq!(fuse(&mut fm).unwrap(), vec!["act1".to_string()]);
    let cfg = config_for_model(&fm, &model).unwrap();
    let unfused_fm = FixedModel::from_model(&model, 13).unwrap();
    let ucfg = config_for_model(&unfused_fm, &model).unwrap();
    for n in [1usize, 3] {
        let plan = crate::runner::build_plan(&fm, n, &vec![None; fm.layers.len()]);
        let uplan = crate::runner::build_plan(&unfused_fm, n, &vec![None; fm.layers.len()]);
        let (c, uc) = (
            op_costs(&plan, &cfg, 13).unwrap(),
            op_costs(&uplan, &ucfg, 13).unwrap(),
        );
        let gi = plan.ops.iter().position(|o| o.name() == "act1").unwrap();
        let ci = gi - 1;
        assert!(matches!(plan.ops[ci], PlanOp::Conv { .. }));
        let PlanOp::SharedRelu { plan: gp, .. } = &plan.ops[gi] else {
            panic!("act1 is a sharing layer")
        };
        let k = cfg.for_layer("act1", true);
        let dz = kb(n * gp.num_groups, k);
        assert_eq!(c[ci].online, uc[ci].online + 2 * dz, "n={n}");
        assert_eq!(c[ci].rounds, uc[ci].rounds);
        assert_eq!(c[ci].to_p1, uc[ci].to_p1 + dz);
        assert_eq!(c[gi].rounds, 1);
        assert_eq!(uc[gi].rounds, 2);
        let (_, rounds, _) = totals(&plan, &cfg, 13).unwrap();
        let (_, urounds, _) = totals(&uplan, &ucfg, 13).unwrap();
        assert_eq!(rounds + 1, urounds);
    }
}

/// A model fused for `fast` in Pool mode is refused with a clear error (mimo meets the Fold
/// semantics only).
#[test]
fn pooled_fused_gates_are_refused() {
    let model = Model::random(presets::build(Arch::Svhn, "uniform32").unwrap(), None, 1).unwrap();
    let mut fm = FixedModel::from_model(&model, 13).unwrap();
    crate::fast::gate::fuse(&mut fm).unwrap();
    let e = config_for_model(&fm, &model).unwrap_err().to_string();
    assert!(e.contains("Fold mode"), "{e}");
}

/// Online rounds of a plan: the input opening, one per linear layer but the last (whose shares
/// go to the client), one per ReLU layer (two for an unfused learned/FC sharing layer), one per level of
/// every max pool's comparison tree; adds, average pooling and identities none.
fn expected_rounds(plan: &Plan) -> usize {
    let last = visible(plan).last().copied();
    1 + plan
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            PlanOp::Conv { .. } | PlanOp::Linear { .. } => usize::from(Some(i) != last),
            PlanOp::Relu { .. } | PlanOp::Partial { .. } => 1,
            PlanOp::SharedRelu { plan: gp, .. } => {
                1 + usize::from(gp.fused.is_none() && gp.decider != DeciderKind::OneHot)
            }
            PlanOp::MaxPool { geom, .. } => geom.level_pairs().len(),
            PlanOp::Add { .. } | PlanOp::AvgPool { .. } | PlanOp::Identity { .. } => 0,
        })
        .sum::<usize>()
}

/// Graph models: residual adds, a 3x3/2 max pool with padding (4 tree levels), global average
/// pooling and folded batch norms, every layer against the plaintext fixed point (exact for
/// adds, max pools and ReLUs), a batch of two, and sharing layers on a graph's activations.
#[test]
fn tiny_graph_layer_by_layer() {
    let tiny = relushare_model::resnet::tiny_graph();
    for (free, batch) in [
        (None, 2),
        (Some("relu2=patch2,relu4=channel:onehot"), 1),
        (Some("relu2=patch2:noise0.2,relu3=patch2"), 1),
    ] {
        let mut spec = tiny.clone();
        if let Some(f) = free {
            presets::apply_freeform(&mut spec, f).unwrap();
        }
        let model = Model::random(spec, None, 11).unwrap();
        let mut fm = FixedModel::from_model(&model, 13).unwrap();
        fuse(&mut fm).unwrap();
        let plan = crate::runner::build_plan(&fm, batch, &vec![None; fm.layers.len()]);
        let (r, fused, _) = check_model_fused(&model, batch);
        if free.is_some_and(|f| f.contains("relu2=patch2")) {
            assert!(fused.contains(&"relu2".to_string()), "{fused:?}");
        }
        assert!(
            !fused.contains(&"relu3".to_string()),
            "relu3 reads an add: {fused:?}"
        );
        assert_eq!(
            r.online_rounds() as usize,
            expected_rounds(&plan),
            "{free:?}"
        );
    }
    // conv1 + maxpool (4 levels) + 5 convs (the shortcut's too) + relu1..relu5 + the input.
    let model = Model::random(tiny, None, 11).unwrap();
    assert_eq!(check_model(&model, 1).online_rounds(), 1 + 1 + 4 + 5 + 5);
}

/// ResNet-20 (calibrated rings: its interval bounds compound past 63 bits), layer by layer:
/// 41 online rounds (the input, 21 convolutions, 19 ReLU layers; adds and pooling are local).
#[test]
fn resnet20_layer_by_layer() {
    let m = Model::random(
        presets::build(Arch::Resnet20, "original").unwrap(),
        None,
        11,
    )
    .unwrap();
    let fm = FixedModel::from_model(&m, 13).unwrap();
    let (_, kind) = rings_for_model(&fm, &m).unwrap();
    assert_eq!(kind, crate::fast::bounds::BoundsKind::Calibrated);
    let r = check_model(&m, 1);
    let plan = crate::runner::build_plan(&fm, 1, &vec![None; fm.layers.len()]);
    assert_eq!(r.online_rounds() as usize, expected_rounds(&plan));
    assert_eq!(r.online_rounds(), 41);
}

/// The rings of a graph: a tensor read by several ops is known modulo the largest ring they
/// need (the residual input of a block: its convolution's `R + f` and the add's), an add's
/// operands modulo the add's output ring, a max pool's input modulo `max(k, out)`.
#[test]
fn layout_of_a_graph() {
    let m = Model::random(relushare_model::resnet::tiny_graph(), None, 2).unwrap();
    let fm = FixedModel::from_model(&m, 13).unwrap();
    let cfg = config_for_model(&fm, &m).unwrap();
    let plan = crate::runner::build_plan(&fm, 1, &vec![None; fm.layers.len()]);
    let lay = layout(&plan, &cfg, 13).unwrap();
    let g = graph(&plan).unwrap();
    let edges = plan.edges();
    for (i, op) in plan.ops.iter().enumerate() {
        if matches!(op, PlanOp::Identity { .. }) {
            continue;
        }
        // Every tensor's ring is the largest its readers need.
        let readers: Vec<usize> = (0..plan.ops.len())
            .filter(|&j| {
                !matches!(plan.ops[j], PlanOp::Identity { .. }) && g.srcs[j].contains(&(i + 1))
            })
            .collect();
        let want = readers.iter().map(|&j| lay.inp[j]).max().unwrap_or(64);
        assert_eq!(lay.out[i], want, "{}", op.name());
        match op {
            PlanOp::Add { .. } => {
                assert_eq!(lay.inp[i], lay.out[i]);
                for &t in &edges[i] {
                    assert!(t > 0 && lay.out[t - 1] >= lay.out[i], "{}", op.name());
                }
            }
            PlanOp::MaxPool { name, .. } => {
                assert_eq!(lay.inp[i], cfg.for_layer(name, false).max(lay.out[i]));
            }
            _ => {}
        }
    }
    // A block's input feeds its first convolution and its add: the larger of the two.
    let idx = |n: &str| plan.ops.iter().position(|o| o.name() == n).unwrap();
    let add1 = idx("add1");
    let shortcut = edges[add1]
        .iter()
        .copied()
        .find(|&t| t > 0 && !matches!(plan.ops[t - 1], PlanOp::Conv { .. }))
        .unwrap();
    let readers: Vec<usize> = (0..plan.ops.len())
        .filter(|&j| g.srcs[j].contains(&shortcut))
        .collect();
    assert!(readers.len() >= 2, "the residual input has two readers");
    assert_eq!(
        lay.out[shortcut - 1],
        readers.iter().map(|&j| lay.inp[j]).max().unwrap()
    );
}

/// The max pool and the adds cost what the formulas say: per tree level a ReLU gate on the
/// level's pairs (online `2 * pairs * m` bits, one round, a key to each party and `[r']` to P1),
/// an add nothing; and every dealt message was checked against them by the suite.
#[test]
fn graph_layer_costs_match_formulas() {
    let model = Model::random(relushare_model::resnet::tiny_graph(), None, 4).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let cfg = config_for_model(&fm, &model).unwrap();
    let n = 2;
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let imgs: Vec<Vec<u64>> = (0..n)
        .map(|b| {
            fm.encode_input(&crate::fast::tests::e2e::image(
                fm.input_len,
                21 + b as u64,
                lim,
            ))
            .unwrap()
        })
        .collect();
    let f = test_factory(cfg.clone(), TestHooks::default());
    let res = run_session(&fm, &[imgs], &f, &RunOptions::default()).unwrap();
    let rep = &res.batches[0].report;
    let plan = crate::runner::build_plan(&fm, n, &vec![None; fm.layers.len()]);
    let lay = layout(&plan, &cfg, 13).unwrap();
    let i = plan
        .ops
        .iter()
        .position(|o| matches!(o, PlanOp::MaxPool { .. }))
        .unwrap();
    let PlanOp::MaxPool { name, geom } = &plan.ops[i] else {
        unreachable!()
    };
    let k = cfg.bits[name];
    let levels = geom.level_pairs();
    assert_eq!(levels.len(), 4, "3x3 windows: ceil(log2 9) levels");
    assert_eq!(
        levels.iter().sum::<usize>(),
        n * relushare_model::count(&model.spec)
            .unwrap()
            .maxpool_comparisons
    );
    let (mut on, mut off) = (0, 0);
    for (l, &p) in levels.iter().enumerate() {
        let m = if l + 1 == levels.len() {
            lay.out[i]
        } else {
            k.max(lay.out[i])
        };
        let key = relu_shape(k, m).unwrap().bytes(p);
        on += 2 * (p * m as usize).div_ceil(8);
        off += 2 * key + (p * m as usize).div_ceil(8);
    }
    let l = rep.get(name).unwrap();
    assert_eq!(l.online_bytes as usize, on);
    assert_eq!(l.online_rounds as usize, levels.len());
    assert_eq!(l.offline_bytes as usize, off);
    let c = op_costs(&plan, &cfg, 13).unwrap();
    assert_eq!(
        (c[i].online, c[i].rounds, c[i].to_p1 + c[i].to_p0),
        (on, 4, off)
    );
    for add in ["add1", "add2"] {
        let j = plan.ops.iter().position(|o| o.name() == add).unwrap();
        assert_eq!(c[j], OpCost::default(), "{add}");
        let a = rep.get(add);
        assert!(
            a.is_none_or(|a| a.online_bytes == 0 && a.online_rounds == 0 && a.offline_bytes == 0),
            "{add}"
        );
    }
    let (on, rounds, off) = totals(&plan, &cfg, 13).unwrap();
    assert_eq!(rep.online_bytes() as usize, on);
    assert_eq!(rep.online_rounds() as usize, rounds);
    assert_eq!(rep.offline_bytes() as usize, off);
}

/// A max pool compares exactly at the edges of its ring: differences of `+-(2^(k-1) - 1)`,
/// ties, and windows cut by the padding (1, 2, 4 and 6 candidates).
#[test]
fn max_pool_gate_exact_at_the_ring_edges() {
    let k = 12u32;
    let lim = (1i64 << (k - 2)) - 1; // |a - b| <= 2 lim < 2^(k-1)
    let (c, h, w) = (3usize, 5usize, 5usize);
    let mut rng = Prg::from_seed([17; 16]);
    let vals: Vec<i64> = (0..c * h * w)
        .map(|i| match i % 7 {
            0 => lim,
            1 => -lim,
            2 => 0,
            3 => lim - 1,
            _ => (rng.next_u64() % (2 * lim as u64 + 1)) as i64 - lim,
        })
        .collect();
    for (kk, stride, pad) in [(2usize, 2usize, 0usize), (3, 2, 1), (2, 1, 1)] {
        let geom = MaxPoolGeom {
            n: 1,
            c,
            h,
            w,
            k: kk,
            stride,
            pad,
        };
        let mut cfg = MimoConfig::defaults(13);
        cfg.bits.insert("pool".into(), k);
        let plan = Plan {
            n: 1,
            input_len: c * h * w,
            output_len: geom.out_len(),
            srcs: Vec::new(),
            ops: vec![PlanOp::MaxPool {
                name: "pool".into(),
                geom,
            }],
        };
        let x: Vec<u64> = vals.iter().map(|&v| v as u64).collect();
        let (y, rep) = run_plan(plan.clone(), cfg.clone(), x.clone());
        for (o, win) in geom.windows().iter().enumerate() {
            let want = win.iter().map(|&e| vals[e as usize]).max().unwrap();
            assert_eq!(y[o] as i64, want, "{kk}/{stride}/{pad} output {o}");
        }
        let c = op_costs(&plan, &cfg, 13).unwrap();
        let l = rep.get("pool").unwrap();
        assert_eq!(l.online_bytes as usize, c[0].online);
        assert_eq!(l.online_rounds as usize, c[0].rounds);
        assert_eq!(l.online_rounds as usize, 1 + geom.level_pairs().len());
        assert_eq!(l.offline_bytes as usize, c[0].to_p1 + c[0].to_p0);
    }
}

/// Pipelined streams run graphs too (the offline twin hands each batch's material, with the
/// plan's tensors and readers, to the online suite): every batch costs per layer what the same
/// batch costs run alone, and the logits are the plaintext fixed point's.
#[test]
fn tiny_graph_streams_like_sequential_runs() {
    let model = Model::random(relushare_model::resnet::tiny_graph(), None, 5).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let cfg = config_for_model(&fm, &model).unwrap();
    let f = factory(cfg);
    let lim = crate::fast::input_abs_max(&model.spec.normalization);
    let imgs: Vec<Vec<u64>> = (0..5)
        .map(|b| {
            fm.encode_input(&crate::fast::tests::e2e::image(
                fm.input_len,
                40 + b as u64,
                lim,
            ))
            .unwrap()
        })
        .collect();
    let batches = vec![imgs[0..2].to_vec(), imgs[2..4].to_vec(), imgs[4..].to_vec()];
    let opts = RunOptions::default();
    let seq = run_session(&fm, &batches, &f, &opts).unwrap();
    let st = crate::runner::run_stream(&fm, &batches, &f, &opts, 1).unwrap();
    assert_eq!(st.batches.len(), 3);
    let key = |r: &CostReport| {
        r.layers
            .iter()
            .map(crate::cost::LabelCost::shape)
            .collect::<Vec<_>>()
    };
    for (a, b) in st.batches.iter().zip(&seq.batches) {
        assert_eq!(key(&a.report), key(&b.report));
    }
    let outs: Vec<&Vec<u64>> = st.batches.iter().flat_map(|b| &b.outputs).collect();
    assert_eq!(outs.len(), 5);
    for (x, out) in imgs.iter().zip(outs) {
        let t = plain::forward_fixed_trace(&fm, x, &mut |_| false).unwrap();
        for (a, b) in fm
            .fp
            .decode_vec(out)
            .iter()
            .zip(fm.fp.decode_vec(t.last().unwrap()))
        {
            assert!((a - b).abs() < 0.01 + 0.01 * b.abs(), "{a} vs {b}");
        }
    }
}

/// A model fused for mimo with a noisy FC gate is refused by the fast suites (they fuse
/// noise-free learned/one-hot gates only) with an error, not run with the wrong semantics.
#[test]
fn fast_refuses_noisy_fused_gates() {
    let mut spec = presets::build(Arch::Svhn, "original").unwrap();
    presets::apply_freeform(&mut spec, "act1=channel:fc:noise0.2").unwrap();
    let model = Model::random(spec, None, 2).unwrap();
    let mut fm = FixedModel::from_model(&model, 13).unwrap();
    assert_eq!(fuse(&mut fm).unwrap(), vec!["act1".to_string()]);
    let cfg = crate::fast::config_for_model(&fm, &model).unwrap();
    let f = crate::fast::factory(cfg, crate::fast::CmpMode::Tree);
    let x = fm.encode_input(&vec![0.5; fm.input_len]).unwrap();
    let e = match run_session(&fm, &[vec![x]], &f, &RunOptions::default()) {
        Ok(_) => panic!("fast ran a noisy fused gate"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("noise-free"), "{e}");
}
