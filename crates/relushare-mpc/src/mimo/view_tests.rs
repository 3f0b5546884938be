//! View tests of the `mimo` suite that can catch a leak (the design of `fast`'s view tests).
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
//! seeds, the weight opening, dealer material, every opening (an empty one by its length);
//! and every value `r` opens (its own share plus the received one, recorded by the suite's
//! openings under `cfg(test)`), which catches a message that is uniform alone but completes
//! `r`'s own share to the secret. Message `i` of a party is
//! gathered over [`RUNS`] runs per secret, and the byte histograms of each offset mod 8 of the
//! two secrets are compared with a two-sample chi-square test (z-score below [`Z_LIMIT`]). The
//! message pattern (count and sizes) must be identical.
//!
//! **Control.** [`raw_share_leak_is_caught`] plants the raw-share bug in the input gate
//! ([`PLANT_RAW_SHARE`]: a party opens its share of `x` instead of `x + r_in`) and requires these
//! tests to detect it, on a ReLU layer, on a graph and on fused gates' blocks (whole channels
//! and patches, [`fused_gate_views_do_not_depend_on_the_secret`]); [`unmasked_relu_output_is_caught`]
//! plants a ReLU gate that opens its output without the fresh mask ([`PLANT_UNMASKED_RELU`]),
//! which no single message shows and the opened values do. (A bug whose opened value is still
//! hidden by other randomness the receiver does not hold, e.g. decisions opened without `r_z`
//! but with the other party's `U_b x^` term, would need a statistic joint with the public
//! masked inputs; these tests do not see it.)

use super::*;
use crate::cost::Phase;
use crate::plain::{FixedLayer, FixedModel};
use crate::prg::Seed;
use crate::runner::exec_op;
use crate::suite::Suite as _;
use crate::suite::{GroupPlan, GroupShares, MaxPoolGeom, PlanOp, Shared, WeightShare};
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
/// Every message each party received, in order (`[p]`), and every value data party `p`
/// opened (`[3 + p]`, as little-endian `u64`s: computed from its own and the received share).
type Views = [Vec<Vec<u8>>; 6];

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
}

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
fn run_once(cfg: &MimoConfig, ins: [PartyIn; 3], hooks: TestHooks, plant: Plant) -> Views {
    let ts = MemTransport::trio();
    let logs: Vec<Log> = (0..6).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    std::thread::scope(|s| {
        for ((p, t), inp) in ts.into_iter().enumerate().zip(ins) {
            let log = logs[p].clone();
            let log_opened = logs[3 + p].clone();
            let (cfg, hooks) = (cfg.clone(), hooks.clone());
            s.spawn(move || {
                PLANT_RAW_SHARE.with(|c| c.set(plant == Plant::RawShare && p < 2));
                PLANT_UNMASKED_RELU.with(|c| c.set(plant == Plant::UnmaskedRelu && p < 2));
                OPENED.with(|o| *o.borrow_mut() = Some(Vec::new()));
                let rec = Recording { inner: t, log };
                let mut sn = MimoSuite::new(Comm::new(Box::new(rec)), 13, cfg);
                if p == 2 {
                    sn.set_test_hooks(hooks);
                }
                sn.comm().set_phase(Phase::Offline);
                sn.prepare(&inp.plan, &inp.weights).expect("prepare");
                sn.offline(&inp.plan, &inp.weights).expect("offline");
                sn.comm().set_phase(Phase::Online);
                // Along the plan's edges (a graph's add reads two tensors).
                let edges = inp.plan.edges();
                let mut vals = vec![inp.x];
                for (i, op) in inp.plan.ops.iter().enumerate() {
                    let y = match (op, edges[i].as_slice()) {
                        (PlanOp::Add { .. }, &[a, b]) => sn.add(&vals[a], &vals[b]).expect("add"),
                        (_, &[a]) => {
                            exec_op(&mut sn, op, &vals[a], inp.plan.n, &inp.weights).expect("op")
                        }
                        _ => panic!("{}: edges {:?}", op.name(), edges[i]),
                    };
                    vals.push(y);
                }
                // The values this party opened.
                let opened = OPENED.with(|o| o.borrow_mut().take()).unwrap_or_default();
                log_opened.lock().expect("log").extend(opened);
            });
        }
    });
    std::array::from_fn(|p| std::mem::take(&mut *logs[p].lock().expect("log")))
}

/// The views of [`RUNS`] runs per secret with receiving party `r`. `fixed`: `r`'s shares and
/// seed are the same in every run (the new design); otherwise everything is fresh.
fn gather(
    cfg: &MimoConfig,
    build: &Build<'_>,
    r: usize,
    fixed: bool,
    plant: Plant,
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
                run_once(cfg, ins, hooks, plant)
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
                    w.at = if p >= 3 {
                        format!("party {} opened value {k} ({len} bytes) offset {o}", p - 3)
                    } else {
                        format!("party {p} message {k} ({len} bytes) offset {o}")
                    };
                }
            }
        }
    }
    w
}

/// The new-design check: for each receiving party, its view (and the dealer's) must not
/// depend on the secret. Returns the worst comparison over both receivers.
fn check(cfg: &MimoConfig, build: &Build<'_>, plant: Plant) -> Worst {
    let mut worst = Worst {
        z: f64::MIN,
        at: String::new(),
        total: 0,
    };
    for r in 0..2 {
        let [va, vb] = gather(cfg, build, r, true, plant);
        let w = compare(&va, &vb, &[r, 2, 3 + r]);
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
    assert!(
        w.z >= Z_LIMIT && w.at.contains("opened"),
        "the unmasked ReLU output was not detected by the opened values (worst z = {:.1} at {})",
        w.z,
        w.at
    );
}

/// The planted raw-share bug must make the view test fail.
#[test]
fn raw_share_leak_is_caught() {
    let w = check(
        &relu_cfg(),
        &relu_case(1024, [5 << 13, -3 << 13]),
        Plant::RawShare,
    );
    assert!(
        w.z >= Z_LIMIT,
        "the planted raw share was not detected (worst z = {:.1} at {})",
        w.z,
        w.at
    );
}

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
    assert!(
        w.z >= Z_LIMIT,
        "the planted raw share was not detected (worst z = {:.1} at {})",
        w.z,
        w.at
    );
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
        assert!(
            w.z >= Z_LIMIT,
            "{preset}: the planted raw share was not detected on the fused block (worst z = \
             {:.1} at {})",
            w.z,
            w.at
        );
    }
}
