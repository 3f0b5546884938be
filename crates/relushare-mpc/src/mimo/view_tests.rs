//! View tests of the `mimo` suite that can catch a leak (design and statistic:
//! [`crate::view_harness`]; the values a party opens are recorded by the suite's openings under
//! `cfg(test)`).
//!
//! **Control.** [`raw_share_leak_is_caught`] plants the raw-share bug in the input gate
//! ([`PLANT_RAW_SHARE`]: a party opens its share of `x` instead of `x + r_in`) and requires these
//! tests to detect it, on a ReLU layer, on a graph and on fused gates' blocks (whole channels
//! and patches, [`fused_gate_views_do_not_depend_on_the_secret`]); [`unmasked_relu_output_is_caught`]
//! plants a ReLU gate that opens its output without the fresh mask ([`PLANT_UNMASKED_RELU`]),
//! which no single message shows and the opened values do; [`reused_mask_is_caught_by_pairs_only`]
//! plants a ReLU gate that masks its output with its input mask ([`PLANT_REUSED_MASK`]), which
//! no single message or opened value shows and the pair of the two openings does. (A bug whose opened value is still
//! hidden by other randomness the receiver does not hold, e.g. decisions opened without `r_z`
//! but with the other party's `U_b x^` term, would need a statistic joint with the public
//! masked inputs; these tests do not see it.)

use super::*;
use crate::plain::FixedModel;
use crate::suite::{MaxPoolGeom, Suite};
use crate::view_harness::{
    self as harness, assert_caught, assert_caught_at, assert_private, model_inputs, relu_case,
    shared_case, Build, PartyIn, Splitter, ViewSuite, Worst, FIXED_SHARES,
};
use relushare_model::{presets, Arch, Model};

/// A bug planted in both data parties, which the view tests must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plant {
    Nothing,
    /// The input gate opens the raw share instead of `x + r_in`.
    RawShare,
    /// The ReLU gate opens `ReLU(t)` without its fresh output mask: every message alone is
    /// still uniform (the other party's share is masked by the DCF key's pseudo-random
    /// output), only the opened value, i.e. a message together with the receiver's own
    /// share, carries the secret.
    UnmaskedRelu,
    /// The ReLU gate masks its output with its input mask: the opened input `x + r_in` and
    /// output `ReLU(x) + r_in` are each uniform, their difference is `min(x, 0)`.
    ReusedMask,
}

/// The `mimo` parties: the rings and the bug both data parties plant.
struct Mimo {
    cfg: MimoConfig,
    plant: Plant,
}

impl ViewSuite for Mimo {
    fn party(&self, p: usize, comm: Comm, hooks: Option<TestHooks>) -> Box<dyn Suite> {
        PLANT_RAW_SHARE.with(|c| c.set(self.plant == Plant::RawShare && p < 2));
        PLANT_UNMASKED_RELU.with(|c| c.set(self.plant == Plant::UnmaskedRelu && p < 2));
        PLANT_REUSED_MASK.with(|c| c.set(self.plant == Plant::ReusedMask && p < 2));
        harness::start_recording();
        let mut sn = MimoSuite::new(comm, 13, self.cfg.clone());
        if let Some(hooks) = hooks {
            sn.set_test_hooks(hooks);
        }
        Box::new(sn)
    }
}

/// The new-design check ([`harness::check`]) of the `mimo` parties.
fn check(cfg: &MimoConfig, build: &Build<'_>, plant: Plant) -> Worst {
    let cfg = cfg.clone();
    harness::check(&Mimo { cfg, plant }, build)
}

fn relu_cfg() -> MimoConfig {
    let mut cfg = MimoConfig::defaults(13);
    cfg.bits.insert("act".into(), 24);
    cfg
}

#[test]
fn relu_views_do_not_depend_on_the_secret() {
    // 0 vs -1 ulp (opposite decisions at the edge), then +5.0 vs -3.0.
    for secrets in [[0i64, -1], [5 << 13, -3 << 13]] {
        let w = check(&relu_cfg(), &relu_case(1024, secrets), Plant::Nothing);
        assert_private(&format!("ReLU {secrets:?}"), &w);
    }
}

/// A ReLU gate that opens its output without the fresh mask is caught by the opened values,
/// though no single message shows it.
#[test]
fn unmasked_relu_output_is_caught() {
    let w = check(
        &relu_cfg(),
        &relu_case(1024, [5 << 13, -3 << 13]),
        Plant::UnmaskedRelu,
    );
    assert_caught_at("the unmasked ReLU output", &w, "opened");
}

/// A ReLU gate that reuses its input mask for its output is caught by the pair statistic,
/// though no message or opened value alone shows it.
#[test]
fn reused_mask_is_caught_by_pairs_only() {
    let cfg = relu_cfg();
    let w = check(
        &cfg,
        &relu_case(1024, [5 << 13, -3 << 13]),
        Plant::ReusedMask,
    );
    assert_caught_at("the reused mask", &w, "xor");
    let alone = harness::check_by(
        &Mimo {
            cfg,
            plant: Plant::ReusedMask,
        },
        &relu_case(1024, [5 << 13, -3 << 13]),
        harness::compare_marginals,
    );
    assert_private("the reused mask, value by value", &alone);
}

/// The planted raw-share bug must make the view test fail.
#[test]
fn raw_share_leak_is_caught() {
    let w = check(
        &relu_cfg(),
        &relu_case(1024, [5 << 13, -3 << 13]),
        Plant::RawShare,
    );
    assert_caught("the planted raw share", &w);
}

#[test]
fn shared_relu_views_do_not_depend_on_the_secret() {
    for (decider, noise, k) in [
        (DeciderKind::Learned, 0.0, 40),
        (DeciderKind::OneHot, 0.0, 18),
        (DeciderKind::Fc, 0.25, 40),
    ] {
        let mut cfg = MimoConfig::defaults(13);
        cfg.bits.insert("act".into(), k);
        let w = check(&cfg, &shared_case(decider, noise), Plant::Nothing);
        assert_private(&format!("{decider:?} noise {noise}"), &w);
    }
}

/// The first `layers` layers (all if `None`) of a random `arch`/`preset` model on the constant
/// images 1.5 and -1.5, prepared for mimo ([`fuse`]: learned whole-channel gates fused with
/// their convolutions), weights, deciders and fused gates' `U`/`beta` shared like the inputs.
fn network_case(
    arch: Arch,
    preset: &str,
    layers: Option<usize>,
) -> (
    MimoConfig,
    impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync,
) {
    model_case(
        Model::random(presets::build(arch, preset).unwrap(), None, 3).unwrap(),
        layers,
    )
}

/// [`network_case`] of a model.
fn model_case(
    m: Model,
    layers: Option<usize>,
) -> (
    MimoConfig,
    impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync,
) {
    let mut fm = FixedModel::from_model(&m, 13).unwrap();
    if let Some(l) = layers {
        fm.truncate(l);
    }
    fuse(&mut fm).unwrap();
    let cfg = config_for_model(&fm, &m).unwrap();
    (cfg, model_inputs(fm))
}

/// Whole networks: SVHN `original` (conv, ReLU, pooling, linear) and the first five layers of
/// Fashion-MNIST `fc-noise` (a noisy FC channel gate, fused with its convolution, and pooling).
#[test]
fn network_views_do_not_depend_on_the_secret() {
    for (arch, preset, layers) in [
        (Arch::Svhn, "original", None),
        (Arch::Fmnist, "fc-noise", Some(5)),
    ] {
        let (cfg, build) = network_case(arch, preset, layers);
        let w = check(&cfg, &build, Plant::Nothing);
        assert_private(&format!("{arch} {preset}"), &w);
    }
}

/// A graph of the gates a model graph adds: a ReLU, the residual add of its input and output
/// (local, masks add), a 2x2 max pool on the sum (two tree levels of ReLU gates on masked
/// differences, then local adds) and a ReLU on the pooled values, on the constant secrets
/// `secrets[s]` (opposite signs: every comparison decides the other way).
fn add_max_pool_case(secrets: [i64; 2]) -> impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync {
    let (c, h, w) = (4usize, 16usize, 16usize);
    let len = c * h * w;
    let geom = MaxPoolGeom {
        n: 1,
        c,
        h,
        w,
        k: 2,
        stride: 2,
        pad: 0,
    };
    let mut rng = Prg::from_seed([8; 16]);
    // Per-element offsets, so the window members differ; the same for both secrets.
    let offs: Vec<i64> = (0..len)
        .map(|_| (rng.next_u64() % (1 << 12)) as i64 - (1 << 11))
        .collect();
    move |s, sp| {
        let plan = Plan {
            n: 1,
            input_len: len,
            output_len: geom.out_len(),
            srcs: vec![vec![0], vec![0, 1], vec![2], vec![3]],
            ops: vec![
                PlanOp::Relu {
                    name: "act".into(),
                    len,
                },
                PlanOp::Add {
                    name: "add".into(),
                    len,
                },
                PlanOp::MaxPool {
                    name: "pool".into(),
                    geom,
                },
                PlanOp::Relu {
                    name: "act2".into(),
                    len: geom.out_len(),
                },
            ],
        };
        let x: Vec<u64> = offs.iter().map(|o| (secrets[s] + o) as u64).collect();
        sp.split(&x).map(|x| PartyIn {
            plan: plan.clone(),
            weights: Vec::new(),
            x,
        })
    }
}

/// The graph gates: a residual add and a max pool (on a hand-built graph and on the whole
/// `tiny_graph` model: convolutions, folded batch norms, a 3x3/2 max pool with padding, two
/// residual blocks, global average pooling).
#[test]
fn add_and_max_pool_views_do_not_depend_on_the_secret() {
    let mut cfg = MimoConfig::defaults(13);
    for (l, k) in [("act", 24), ("pool", 26), ("act2", 26)] {
        cfg.bits.insert(l.into(), k);
    }
    for secrets in [[5 << 13, -3 << 13], [0, -(1 << 13)]] {
        let w = check(&cfg, &add_max_pool_case(secrets), Plant::Nothing);
        assert_private(&format!("add + max pool {secrets:?}"), &w);
    }
    let m = Model::random(relushare_model::resnet::tiny_graph(), None, 3).unwrap();
    let (cfg, build) = model_case(m, None);
    let w = check(&cfg, &build, Plant::Nothing);
    assert_private("tiny_graph", &w);
}

/// The planted raw-share bug is caught on the graph case too.
#[test]
fn raw_share_leak_is_caught_on_a_graph() {
    let mut cfg = MimoConfig::defaults(13);
    for (l, k) in [("act", 24), ("pool", 26), ("act2", 26)] {
        cfg.bits.insert(l.into(), k);
    }
    let w = check(
        &cfg,
        &add_max_pool_case([5 << 13, -3 << 13]),
        Plant::RawShare,
    );
    assert_caught("the planted raw share", &w);
}

/// A fused gate (SVHN `uniform32`'s first block: the convolution opens its output and the
/// channels' decisions `z^ = U x^ + ...` in one round, the gate decides on them; SVHN
/// `uniform3`'s: the same with 3x3 patch groups and sparse rows of `U`): the views do not
/// depend on the secret, and the planted raw input share is caught on these blocks too.
#[test]
fn fused_gate_views_do_not_depend_on_the_secret() {
    for (preset, patches) in [("uniform32", false), ("uniform3", true)] {
        let (cfg, build) = network_case(Arch::Svhn, preset, Some(2));
        let ins = build(
            0,
            &mut Splitter {
                r: 0,
                mine: Prg::from_seed(FIXED_SHARES),
            },
        );
        assert!(
            matches!(
                &ins[0].plan.ops[1],
                PlanOp::SharedRelu { plan, .. }
                    if plan.fused.as_ref().is_some_and(|f| f.sparse.is_some() == patches)
            ),
            "{preset}: the block is fused (sparse: {patches})"
        );
        let w = check(&cfg, &build, Plant::Nothing);
        assert_private(&format!("SVHN {preset} fused block"), &w);
        let w = check(&cfg, &build, Plant::RawShare);
        assert_caught(
            &format!("{preset}: the planted raw share on the fused block"),
            &w,
        );
    }
}
