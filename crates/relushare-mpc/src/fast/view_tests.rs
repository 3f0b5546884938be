//! View tests of the `fast` and `fss` suites that can catch a leak.
//!
//! **Design.** For a receiving data party `r` (P0, then P1) everything it holds is fixed across
//! the two secrets compared: its input share, its shares of the weights and deciders, and the
//! seed the dealer shares with it. Only the other data party's shares and seed (and the
//! dealer's private noise) are fresh in each run. A secure protocol's view of `r` is then a
//! function of `r`'s fixed inputs and of randomness `r` does not know, so its distribution must
//! not depend on the secret; a message that carries the secret unmasked (e.g. a raw share
//! instead of a masked one) is, here, a fixed function of the secret and differs at once.
//!
//! **Statistic.** Every message `r` (and the dealer) receives is tested, whatever its size:
//! seeds, the weight opening, dealer material, every opening (an empty one by its length). Message `i` of a party is
//! gathered over [`RUNS`] runs per secret, and the byte histograms of each offset mod 8 of the
//! two secrets are compared with a two-sample chi-square test (z-score below [`Z_LIMIT`]). The
//! message pattern (count and sizes) must be identical.
//!
//! **Control.** [`raw_share_leak_is_caught`] plants exactly the raw-share bug in the ReLU
//! (`fast::cmp::PLANT_RAW_SHARE`: a party opens its share of `y` instead of `y + r`) and
//! requires these tests to detect it; it also shows that the previous design (fresh shares for
//! both parties in every run) passes the planted bug.

use super::*;
use crate::cost::Phase;
use crate::plain::{FixedLayer, FixedModel};
use crate::prg::Seed;
use crate::runner::exec_op;
use crate::suite::{GroupPlan, GroupShares, PlanOp, Shared, WeightShare};
use crate::transport::{MemTransport, Transport};
use crate::view_stats::chi_z;
use relushare_model::{presets, Arch, Model};
use std::sync::{Arc, Mutex};

/// Runs per secret over which each message is gathered.
const RUNS: usize = 12;
/// Largest z-score of a histogram comparison that passes.
const Z_LIMIT: f64 = 6.0;
/// The seed the dealer shares with the receiving party in every run.
const FIXED_SEED: Seed = [0x5a; 16];
/// The stream the receiving party's shares are drawn from in every run.
const FIXED_SHARES: Seed = [0xa5; 16];

type Log = Arc<Mutex<Vec<Vec<u8>>>>;
/// Every message each party received, in order.
type Views = [Vec<Vec<u8>>; 3];

/// A transport that records every message it receives.
struct Recording {
    inner: MemTransport,
    log: Log,
}

impl Transport for Recording {
    fn party(&self) -> usize {
        self.inner.party()
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> std::result::Result<(), MpcError> {
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: usize) -> std::result::Result<Vec<u8>, MpcError> {
        let m = self.inner.recv(from)?;
        self.log.lock().expect("log").push(m.clone());
        Ok(m)
    }
}

/// One party's inputs to a run.
#[derive(Clone)]
struct PartyIn {
    plan: Plan,
    weights: Vec<WeightShare>,
    x: Shared,
}

/// Shares for one run: the receiving party's from a stream that is fixed (or fresh, for the
/// old design), the other data party's the difference.
struct Splitter {
    r: usize,
    mine: Prg,
}

impl Splitter {
    fn split(&mut self, v: &[u64]) -> [Shared; 3] {
        let m = self.mine.gen_u64s(v.len());
        let o = crate::ring::sub(v, &m);
        if self.r == 0 {
            [m, o, Vec::new()]
        } else {
            [o, m, Vec::new()]
        }
    }
}

/// Builds the three parties' inputs of a run for secret 0 or 1.
type Build<'a> = dyn Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync + 'a;

/// One run: prepare, offline and every op of the plan online; returns what each party received.
fn run_once(
    mode: CmpMode,
    cfg: &FastConfig,
    ins: [PartyIn; 3],
    hooks: TestHooks,
    plant: bool,
) -> Views {
    let ts = MemTransport::trio();
    let logs: Vec<Log> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    std::thread::scope(|s| {
        for ((p, t), inp) in ts.into_iter().enumerate().zip(ins) {
            let log = logs[p].clone();
            let (cfg, hooks) = (cfg.clone(), hooks.clone());
            s.spawn(move || {
                cmp::PLANT_RAW_SHARE.with(|c| c.set(plant && p < 2));
                let rec = Recording { inner: t, log };
                let mut sn = FastSuite::new(Comm::new(Box::new(rec)), 13, cfg, mode);
                if p == 2 {
                    sn.set_test_hooks(hooks);
                }
                sn.comm().set_phase(Phase::Offline);
                sn.prepare(&inp.plan, &inp.weights).expect("prepare");
                sn.offline(&inp.plan, &inp.weights).expect("offline");
                sn.comm().set_phase(Phase::Online);
                let mut x = inp.x;
                for op in &inp.plan.ops {
                    x = exec_op(&mut sn, op, &x, inp.plan.n, &inp.weights).expect("op");
                }
            });
        }
    });
    std::array::from_fn(|p| std::mem::take(&mut *logs[p].lock().expect("log")))
}

/// The views of [`RUNS`] runs per secret with receiving party `r`. `fixed`: `r`'s shares and
/// seed are the same in every run (the new design); otherwise everything is fresh.
fn gather(
    mode: CmpMode,
    cfg: &FastConfig,
    build: &Build<'_>,
    r: usize,
    fixed: bool,
    plant: bool,
) -> [Vec<Views>; 2] {
    std::array::from_fn(|secret| {
        (0..RUNS)
            .map(|_| {
                let mine = if fixed {
                    Prg::from_seed(FIXED_SHARES)
                } else {
                    Prg::from_os().expect("os rng")
                };
                let ins = build(secret, &mut Splitter { r, mine });
                let mut hooks = TestHooks::default();
                if fixed {
                    hooks.seeds[r] = Some(FIXED_SEED);
                }
                run_once(mode, cfg, ins, hooks, plant)
            })
            .collect()
    })
}

/// The worst comparison of two secrets' views.
#[derive(Debug)]
struct Worst {
    z: f64,
    at: String,
    /// Messages compared (all that the parties compared received).
    total: usize,
}

/// Compares the views of `parties` message by message, every message, pooled over the runs.
fn compare(va: &[Views], vb: &[Views], parties: &[usize]) -> Worst {
    let mut w = Worst {
        z: f64::MIN,
        at: String::new(),
        total: 0,
    };
    for &p in parties {
        let count = va[0][p].len();
        for v in va.iter().chain(vb) {
            assert_eq!(v[p].len(), count, "party {p}: number of messages differs");
        }
        for k in 0..count {
            w.total += 1;
            let len = va[0][p][k].len();
            let mut h = [[[0u64; 256]; 8]; 2];
            for (side, views) in [va, vb].into_iter().enumerate() {
                for v in views {
                    assert_eq!(v[p][k].len(), len, "party {p} message {k}: length differs");
                    for (i, &b) in v[p][k].iter().enumerate() {
                        h[side][i % 8][b as usize] += 1;
                    }
                }
            }
            // An empty message is compared by its length alone.
            for (o, (ha, hb)) in h[0].iter().zip(&h[1]).enumerate().take(len.min(8)) {
                let z = chi_z(ha, hb);
                if z > w.z {
                    w.z = z;
                    w.at = format!("party {p} message {k} ({len} bytes) offset {o}");
                }
            }
        }
    }
    w
}

/// The new-design check: for each receiving party, its view (and the dealer's) must not
/// depend on the secret. Returns the worst comparison over both receivers.
fn check(mode: CmpMode, cfg: &FastConfig, build: &Build<'_>, plant: bool) -> Worst {
    let mut worst = Worst {
        z: f64::MIN,
        at: String::new(),
        total: 0,
    };
    for r in 0..2 {
        let [va, vb] = gather(mode, cfg, build, r, true, plant);
        let w = compare(&va, &vb, &[r, 2]);
        assert!(w.total > 0, "receiver {r}: no messages");
        worst.total += w.total;
        if w.z > worst.z {
            worst.z = w.z;
            worst.at = format!("receiver {r}: {}", w.at);
        }
    }
    worst
}

fn assert_private(what: &str, w: &Worst) {
    assert!(
        w.z < Z_LIMIT,
        "{what}: view differs at {} (z = {:.1})",
        w.at,
        w.z
    );
}

/// A ReLU layer of `n` elements on the constant secret `secrets[s]`.
fn relu_case(n: usize, secrets: [i64; 2]) -> impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync {
    move |s, sp| {
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
        let xs = sp.split(&vec![secrets[s] as u64; n]);
        xs.map(|x| PartyIn {
            plan: plan.clone(),
            weights: Vec::new(),
            x,
        })
    }
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
            let w = check(mode, &relu_cfg(), &relu_case(1024, secrets), false);
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
        let w = check(mode, &relu_cfg(), &build, true);
        assert!(
            w.z >= Z_LIMIT,
            "{mode:?}: the planted raw share was not detected (worst z = {:.1} at {})",
            w.z,
            w.at
        );
        let [va, vb] = gather(mode, &relu_cfg(), &build, 0, false, true);
        let old = compare(&va, &vb, &[0, 1, 2]);
        assert!(
            old.z < Z_LIMIT,
            "{mode:?}: fresh shares in every run hide the raw share, z = {:.1}",
            old.z
        );
    }
}

/// A ReLU-sharing layer of 4 channels of 16x16, one group per 4x4 patch (64 groups), with the
/// given decider and noise, on two different inputs.
fn shared_case(
    decider: DeciderKind,
    noise: f32,
) -> impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync {
    let (c, h, w) = (4usize, 16usize, 16usize);
    let len = c * h * w;
    let group_of: Vec<u32> = (0..len)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            (ch * 16 + (y / 4) * 4 + x / 4) as u32
        })
        .collect();
    let leaders: Vec<u32> = (0..c * 16)
        .map(|g| {
            let (ch, py, px) = (g / 16, (g % 16) / 4, g % 4);
            (ch * h * w + (py * 4 + 1) * w + px * 4 + 2) as u32
        })
        .collect();
    let mut rng = Prg::from_seed([3; 16]);
    let v: Vec<u64> = (0..len)
        .map(|_| ((rng.next_u64() % 8192) as i64 - 4096) as u64)
        .collect();
    let bias: Vec<u64> = (0..c * 16)
        .map(|_| ((rng.next_u64() % (1 << 26)) as i64 - (1 << 25)) as u64)
        .collect();
    let inputs: [Vec<u64>; 2] = std::array::from_fn(|_| {
        (0..len)
            .map(|_| ((rng.next_u64() % (1 << 15)) as i64 - (1 << 14)) as u64)
            .collect()
    });
    move |s, sp| {
        let none: &[u64] = &[];
        let vs = sp.split(if decider == DeciderKind::OneHot {
            none
        } else {
            &v
        });
        let bs = sp.split(if decider == DeciderKind::Fc {
            &bias
        } else {
            none
        });
        let xs = sp.split(&inputs[s]);
        std::array::from_fn(|p| {
            let gp = GroupPlan {
                len,
                group_of: group_of.clone(),
                num_groups: c * 16,
                leaders: leaders.clone(),
                decider,
                v: vs[p].clone(),
                bias: bs[p].clone(),
                noise,
                fused: None,
            };
            PartyIn {
                plan: Plan {
                    n: 1,
                    input_len: len,
                    output_len: len,
                    srcs: Vec::new(),
                    ops: vec![PlanOp::SharedRelu {
                        name: "act".into(),
                        plan: Box::new(gp),
                    }],
                },
                weights: Vec::new(),
                x: xs[p].clone(),
            }
        })
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
        let w = check(CmpMode::Tree, &cfg, &shared_case(decider, noise), false);
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
    let build = move |s: usize, sp: &mut Splitter| {
        let mut weights: [Vec<WeightShare>; 3] = Default::default();
        let mut gp: [Vec<Option<GroupShares>>; 3] = Default::default();
        for l in &fm.layers {
            let mut g: [Option<GroupShares>; 3] = Default::default();
            match l {
                FixedLayer::Conv { name, w, b, .. } | FixedLayer::Linear { name, w, b, .. } => {
                    let (ws, bs) = (sp.split(w), sp.split(b));
                    for (p, (w, bias)) in ws.into_iter().zip(bs).enumerate() {
                        weights[p].push(WeightShare {
                            name: name.clone(),
                            w,
                            bias,
                        });
                    }
                }
                FixedLayer::Shared { s, .. } => {
                    let (vs, bs) = (sp.split(&s.v), sp.split(&s.bias));
                    let (us, cs) = match &s.fused {
                        Some(fg) => (sp.split(&fg.u), sp.split(&fg.beta)),
                        None => (sp.split(&[]), sp.split(&[])),
                    };
                    for (p, gi) in g.iter_mut().enumerate() {
                        *gi = Some(GroupShares {
                            v: vs[p].clone(),
                            bias: bs[p].clone(),
                            u: us[p].clone(),
                            beta: cs[p].clone(),
                        });
                    }
                }
                _ => {}
            }
            for (p, gi) in g.into_iter().enumerate() {
                gp[p].push(gi);
            }
        }
        let secret = if s == 0 { 1.5 } else { -1.5 };
        let img = fm.encode_input(&vec![secret; fm.input_len]).unwrap();
        let xs = sp.split(&img);
        std::array::from_fn(|p| PartyIn {
            plan: crate::runner::build_plan(&fm, 1, &gp[p]),
            weights: weights[p].clone(),
            x: xs[p].clone(),
        })
    };
    (cfg, build)
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
        let w = check(mode, &cfg, &build, false);
        assert_private(&format!("{arch} {preset} {mode:?}"), &w);
    }
}
