//! View tests of the `fast` and `fss` suites that can catch a leak (design and statistic:
//! [`crate::view_harness`]).
//!
//! **Control.** [`raw_share_leak_is_caught`] plants exactly the raw-share bug in the ReLU
//! (`fast::cmp::PLANT_RAW_SHARE`: a party opens its share of `y` instead of `y + r`) and
//! requires these tests to detect it; it also shows that the previous design (fresh shares for
//! both parties in every run) passes the planted bug. [`unmasked_decision_is_caught_by_the_opened_values_only`]
//! plants a ReLU that opens its decision bits without the dealer's mask
//! (`fast::cmp::PLANT_UNMASKED_BIT`), which the values a party opens show and no message does.

use super::*;
use crate::plain::FixedModel;
use crate::suite::Suite;
use crate::view_harness::{
    self as harness, assert_caught, assert_caught_at, assert_private, compare, model_inputs,
    relu_case, shared_case, Build, PartyIn, Splitter, ViewSuite, Worst, Z_LIMIT,
};
use relushare_model::{presets, Arch, Model};

/// A bug planted in both data parties, which the view tests must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plant {
    Nothing,
    /// The ReLU opens the raw share of `y` instead of `y + r`.
    RawShare,
    /// The ReLU opens its decision bits `b` instead of `b ^ t`: each message is still masked
    /// by the receiver's own share of `b`, the opened value is the sign of `y`.
    UnmaskedBit,
}

/// The `fast` or `fss` parties: the comparison mode, the rings, and the bug both data parties
/// plant.
struct Fast {
    mode: CmpMode,
    cfg: FastConfig,
    plant: Plant,
}

impl ViewSuite for Fast {
    fn party(&self, p: usize, comm: Comm, hooks: Option<TestHooks>) -> Box<dyn Suite> {
        cmp::PLANT_RAW_SHARE.with(|c| c.set(self.plant == Plant::RawShare && p < 2));
        cmp::PLANT_UNMASKED_BIT.with(|c| c.set(self.plant == Plant::UnmaskedBit && p < 2));
        harness::start_recording();
        let mut sn = FastSuite::new(comm, 13, self.cfg.clone(), self.mode);
        if let Some(hooks) = hooks {
            sn.set_test_hooks(hooks);
        }
        Box::new(sn)
    }
}

/// The new-design check ([`harness::check`]) of the `fast`/`fss` parties.
fn check(mode: CmpMode, cfg: &FastConfig, build: &Build<'_>, plant: Plant) -> Worst {
    let cfg = cfg.clone();
    harness::check(&Fast { mode, cfg, plant }, build)
}

fn relu_cfg() -> FastConfig {
    let mut cfg = FastConfig::defaults(13);
    cfg.bits.insert("act".into(), 25);
    cfg
}

#[test]
fn relu_views_do_not_depend_on_the_secret() {
    for mode in [CmpMode::Tree, CmpMode::Fss] {
        // 0 vs -1 ulp (opposite decisions at the edge), then +5.0 vs -3.0.
        for secrets in [[0i64, -1], [5 << 13, -3 << 13]] {
            let w = check(mode, &relu_cfg(), &relu_case(1024, secrets), Plant::Nothing);
            assert_private(&format!("{mode:?} ReLU {secrets:?}"), &w);
        }
    }
}

/// The planted raw-share bug must make the view test fail; the old design (fresh shares for
/// both parties in every run) does not see it.
#[test]
fn raw_share_leak_is_caught() {
    let build = relu_case(1024, [5 << 13, -3 << 13]);
    for mode in [CmpMode::Tree, CmpMode::Fss] {
        let w = check(mode, &relu_cfg(), &build, Plant::RawShare);
        assert_caught(&format!("{mode:?}: the planted raw share"), &w);
        let fresh = Fast {
            mode,
            cfg: relu_cfg(),
            plant: Plant::RawShare,
        };
        let [va, vb] = harness::gather(&fresh, &build, 0, false);
        let old = compare(&va, &vb, &[0, 1, 2]);
        assert!(
            old.z < Z_LIMIT,
            "{mode:?}: fresh shares in every run hide the raw share, z = {:.1}",
            old.z
        );
    }
}

/// A ReLU that opens its decision bits without the dealer's mask is caught by the opened
/// values, and by no message alone.
#[test]
fn unmasked_decision_is_caught_by_the_opened_values_only() {
    let build = relu_case(1024, [5 << 13, -3 << 13]);
    for mode in [CmpMode::Tree, CmpMode::Fss] {
        let w = check(mode, &relu_cfg(), &build, Plant::UnmaskedBit);
        assert_caught_at(&format!("{mode:?}: the unmasked decision"), &w, "opened");
        let suite = Fast {
            mode,
            cfg: relu_cfg(),
            plant: Plant::UnmaskedBit,
        };
        // What the receiver and the dealer received (view indices r and 2), each and in pairs.
        let alone = harness::check_by(&suite, &build, |va, vb, parties| {
            compare(va, vb, &parties[..2])
        });
        assert_private(
            &format!("{mode:?}: the unmasked decision, messages only"),
            &alone,
        );
    }
}

#[test]
fn shared_relu_views_do_not_depend_on_the_secret() {
    for (decider, noise, k) in [
        (DeciderKind::Learned, 0.0, 41),
        (DeciderKind::OneHot, 0.0, 19),
        (DeciderKind::Fc, 0.25, 41),
    ] {
        let mut cfg = FastConfig::defaults(13);
        cfg.bits.insert("act".into(), k);
        let w = check(
            CmpMode::Tree,
            &cfg,
            &shared_case(decider, noise),
            Plant::Nothing,
        );
        assert_private(&format!("{decider:?} noise {noise}"), &w);
    }
}

/// The first `layers` layers (all if `None`) of `arch`/`preset` on the constant images 1.5
/// and -1.5, the fast suites' fusing applied, weights and deciders shared like the inputs.
fn network_case(
    arch: Arch,
    preset: &str,
    layers: Option<usize>,
) -> (
    FastConfig,
    impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync,
) {
    let m = Model::random(presets::build(arch, preset).unwrap(), None, 3).unwrap();
    let mut fm = FixedModel::from_model(&m, 13).unwrap();
    crate::fast::gate::fuse(&mut fm).unwrap();
    if let Some(l) = layers {
        fm.truncate(l);
    }
    let cfg = config_for_model(&fm, &m).unwrap();
    (cfg, model_inputs(fm))
}

/// Fused whole-channel blocks (Fold: CIFAR-10 `uniform32`'s first block; Pool: the whole
/// Fashion-MNIST `uniform32` network, with its plain convolution, ReLU and linear layers) and
/// an unfused noisy FC-decider network (Fashion-MNIST `fc-noise`), in both comparison modes.
#[test]
fn network_views_do_not_depend_on_the_secret() {
    for (arch, preset, layers, mode) in [
        (Arch::Cifar10, "uniform32", Some(2), CmpMode::Tree),
        (Arch::Fmnist, "uniform32", None, CmpMode::Tree),
        (Arch::Fmnist, "fc-noise", None, CmpMode::Fss),
    ] {
        let (cfg, build) = network_case(arch, preset, layers);
        let w = check(mode, &cfg, &build, Plant::Nothing);
        assert_private(&format!("{arch} {preset} {mode:?}"), &w);
    }
}
