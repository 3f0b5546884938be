//! The harness of the view tests that can catch a leak, for the `fast`/`fss` suites
//! (`fast::view_tests`) and the `mimo` suite (`mimo::view_tests`); each suite's module supplies
//! its parties ([`ViewSuite`]: the suite, the dealer's hooks and the bug it plants) and its cases
//! and controls. Test-only code.
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
//! and every value `r` opens (its own share plus the received one, recorded by the suites'
//! openings: [`record_opened`]), which catches a message that is uniform alone but
//! completes `r`'s own share to the secret. Message `i` of a party is gathered over [`RUNS`]
//! runs per secret, and the byte histograms of each offset mod 8 of the two secrets are
//! compared with a two-sample chi-square test ([`chi_z`]; z-score below [`Z_LIMIT`]). The
//! message pattern (count and sizes) must be identical.
//!
//! **Pairs.** Values that are uniform one by one can still carry the secret together: one mask
//! used for two openings gives `x + r` and `y + r`. So every pair of messages (and of opened
//! values) of a party is tested too, by the histograms of the XOR of their first
//! [`PAIR_PREFIX`] bytes ([`compare_pairs`]); `mimo`'s planted reused mask is caught there and
//! only there. Joint leaks of three or more values, or between bytes of different offsets of
//! a pair, are not tested.

use crate::cost::{Comm, Phase};
use crate::fast::TestHooks;
use crate::plain::{FixedLayer, FixedModel};
use crate::prg::{Prg, Seed};
use crate::runner::exec_op;
use crate::suite::{DeciderKind, GroupPlan, GroupShares, Plan, PlanOp, Shared, Suite, WeightShare};
use crate::transport::{MemTransport, Recording, RecvLog};
use crate::view_stats::chi_z;
use std::sync::{Arc, Mutex};

/// Runs per secret over which each message is gathered.
pub(crate) const RUNS: usize = 12;
/// Largest z-score of a histogram comparison that passes.
pub(crate) const Z_LIMIT: f64 = 6.0;
/// The seed the dealer shares with the receiving party in every run.
pub(crate) const FIXED_SEED: Seed = [0x5a; 16];
/// The stream the receiving party's shares are drawn from in every run.
pub(crate) const FIXED_SHARES: Seed = [0xa5; 16];

/// Every message each party received, in order (`[p]`), and every value data party `p` opened
/// (`[3 + p]`, as little-endian `u64`s, bit planes as their words: computed from its own and
/// the received share).
pub(crate) type Views = [Vec<Vec<u8>>; 6];

/// The parties of the suite under test.
pub(crate) trait ViewSuite: Sync {
    /// Party `p`'s suite on `comm` (the dealer's with `hooks`). Called in the party's own
    /// thread before anything runs, so that it may set the party's thread-local test switches
    /// (a planted bug, the recording of opened values).
    fn party(&self, p: usize, comm: Comm, hooks: Option<TestHooks>) -> Box<dyn Suite>;

    /// The values the party of this thread opened, after its run (see [`Views`]; those the
    /// suite recorded with [`record_opened`] since [`start_recording`]).
    fn opened(&self) -> Vec<Vec<u8>> {
        take_opened()
    }
}

thread_local! {
    /// When set ([`start_recording`]), every value this thread's party opens is appended (as
    /// little-endian `u64`s) by the suites' openings ([`record_opened`]), so that the view
    /// tests can test the opened values, which a party computes from its own and the received
    /// share, rather than the messages alone.
    static OPENED: std::cell::RefCell<Option<Vec<Vec<u8>>>> = const { std::cell::RefCell::new(None) };
}

/// Records an opened vector, where this thread records (see [`OPENED`]).
pub(crate) fn record_opened(v: &[u64]) {
    OPENED.with(|o| {
        if let Some(log) = o.borrow_mut().as_mut() {
            log.push(v.iter().flat_map(|x| x.to_le_bytes()).collect());
        }
    });
}

/// Starts recording this thread's opened values (for [`ViewSuite::party`]).
pub(crate) fn start_recording() {
    OPENED.with(|o| *o.borrow_mut() = Some(Vec::new()));
}

/// This thread's recorded opened values (for [`ViewSuite::opened`]).
pub(crate) fn take_opened() -> Vec<Vec<u8>> {
    OPENED.with(|o| o.borrow_mut().take()).unwrap_or_default()
}

/// One party's inputs to a run.
#[derive(Clone)]
pub(crate) struct PartyIn {
    pub plan: Plan,
    pub weights: Vec<WeightShare>,
    pub x: Shared,
}

/// Shares for one run: the receiving party's from a stream that is fixed (or fresh, for the
/// old design), the other data party's the difference.
pub(crate) struct Splitter {
    pub r: usize,
    pub mine: Prg,
}

impl Splitter {
    pub(crate) fn split(&mut self, v: &[u64]) -> [Shared; 3] {
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
pub(crate) type Build<'a> = dyn Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync + 'a;

/// One run: prepare, offline and every op of the plan online (along the plan's edges: a
/// graph's add reads two tensors); returns what each party received and opened.
fn run_once(suite: &dyn ViewSuite, ins: [PartyIn; 3], hooks: TestHooks) -> Views {
    let ts = MemTransport::trio();
    let logs: Vec<RecvLog> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let opened: Vec<Mutex<Vec<Vec<u8>>>> = (0..3).map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|s| {
        for ((p, t), inp) in ts.into_iter().enumerate().zip(ins) {
            let log = logs[p].clone();
            let (opened, hooks) = (&opened[p], (p == 2).then(|| hooks.clone()));
            s.spawn(move || {
                let rec = Recording { inner: t, log };
                let mut sn = suite.party(p, Comm::new(Box::new(rec)), hooks);
                sn.comm().set_phase(Phase::Offline);
                sn.prepare(&inp.plan, &inp.weights).expect("prepare");
                sn.offline(&inp.plan, &inp.weights).expect("offline");
                sn.comm().set_phase(Phase::Online);
                let edges = inp.plan.edges();
                let mut vals = vec![inp.x];
                for (i, op) in inp.plan.ops.iter().enumerate() {
                    let y = match (op, edges[i].as_slice()) {
                        (PlanOp::Add { .. }, &[a, b]) => sn.add(&vals[a], &vals[b]).expect("add"),
                        (_, &[a]) => {
                            exec_op(&mut *sn, op, &vals[a], inp.plan.n, &inp.weights).expect("op")
                        }
                        _ => panic!("{}: edges {:?}", op.name(), edges[i]),
                    };
                    vals.push(y);
                }
                opened.lock().expect("log").extend(suite.opened());
            });
        }
    });
    std::array::from_fn(|i| {
        if i < 3 {
            let log = std::mem::take(&mut *logs[i].lock().expect("log"));
            log.into_iter().map(|(_, m)| m).collect()
        } else {
            std::mem::take(&mut *opened[i - 3].lock().expect("log"))
        }
    })
}

/// The views of [`RUNS`] runs per secret with receiving party `r`. `fixed`: `r`'s shares and
/// seed are the same in every run (the new design); otherwise everything is fresh.
pub(crate) fn gather(
    suite: &dyn ViewSuite,
    build: &Build<'_>,
    r: usize,
    fixed: bool,
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
                run_once(suite, ins, hooks)
            })
            .collect()
    })
}

/// The worst comparison of two secrets' views.
#[derive(Debug)]
pub(crate) struct Worst {
    pub z: f64,
    pub at: String,
    /// Messages compared (all that the parties compared received).
    pub total: usize,
}

impl Worst {
    fn new() -> Worst {
        Worst {
            z: f64::MIN,
            at: String::new(),
            total: 0,
        }
    }

    fn update(&mut self, z: f64, at: impl FnOnce() -> String) {
        if z > self.z {
            self.z = z;
            self.at = at();
        }
    }
}

/// Bytes of each message prefix that the pair statistic combines.
pub(crate) const PAIR_PREFIX: usize = 1024;

/// The largest z (and its offset mod 8) of the byte histograms of `byte(view, i)`,
/// `i < len`, pooled over the runs of each secret.
fn offset_z(
    va: &[Views],
    vb: &[Views],
    len: usize,
    byte: impl Fn(&Views, usize) -> u8,
) -> (f64, usize) {
    let mut h = [[[0u64; 256]; 8]; 2];
    for (side, views) in [va, vb].into_iter().enumerate() {
        for v in views {
            for i in 0..len {
                h[side][i % 8][byte(v, i) as usize] += 1;
            }
        }
    }
    h[0].iter()
        .zip(&h[1])
        .take(len.min(8))
        .enumerate()
        .map(|(o, (ha, hb))| (chi_z(ha, hb), o))
        .fold((f64::MIN, 0), |a, b| if b.0 > a.0 { b } else { a })
}

/// How message or opened value `k` of view index `p` is named.
fn item(p: usize, k: usize) -> String {
    if p >= 3 {
        format!("party {} opened value {k}", p - 3)
    } else {
        format!("party {p} message {k}")
    }
}

/// Checks that the message pattern (count and sizes) of `parties` is the same in every run.
fn check_pattern(va: &[Views], vb: &[Views], parties: &[usize]) {
    for &p in parties {
        let count = va[0][p].len();
        for v in va.iter().chain(vb) {
            assert_eq!(v[p].len(), count, "party {p}: number of messages differs");
            for (k, m) in v[p].iter().enumerate() {
                let len = va[0][p][k].len();
                assert_eq!(m.len(), len, "party {p} message {k}: length differs");
            }
        }
    }
}

/// Message by message: the byte histograms of every message (and opened value) of `parties`
/// (indices of [`Views`]), pooled over the runs. An empty message is compared by its length
/// alone.
pub(crate) fn compare_marginals(va: &[Views], vb: &[Views], parties: &[usize]) -> Worst {
    check_pattern(va, vb, parties);
    let mut w = Worst::new();
    for &p in parties {
        for k in 0..va[0][p].len() {
            w.total += 1;
            let len = va[0][p][k].len();
            let (z, o) = offset_z(va, vb, len, |v, i| v[p][k][i]);
            w.update(z, || format!("{} ({len} bytes) offset {o}", item(p, k)));
        }
    }
    w
}

/// Jointly, two at a time: for every pair of messages (and opened values) of the same view
/// index, the byte histograms of the XOR of their first [`PAIR_PREFIX`] bytes. A secret
/// carried by two values that are each uniform, e.g. one mask used for two openings
/// (`x + r` and `y + r`), shows here and in no single message.
pub(crate) fn compare_pairs(va: &[Views], vb: &[Views], parties: &[usize]) -> Worst {
    check_pattern(va, vb, parties);
    let mut w = Worst::new();
    for &p in parties {
        let count = va[0][p].len();
        for k in 0..count {
            for l in k + 1..count {
                let len = va[0][p][k].len().min(va[0][p][l].len()).min(PAIR_PREFIX);
                if len == 0 {
                    continue;
                }
                let (z, o) = offset_z(va, vb, len, |v, i| v[p][k][i] ^ v[p][l][i]);
                w.update(z, || {
                    format!(
                        "{} xor {} (first {len} bytes) offset {o}",
                        item(p, k),
                        item(p, l)
                    )
                });
            }
        }
    }
    w
}

/// Compares the views of `parties` (indices of [`Views`]): every message alone
/// ([`compare_marginals`]) and every pair ([`compare_pairs`]), pooled over the runs.
pub(crate) fn compare(va: &[Views], vb: &[Views], parties: &[usize]) -> Worst {
    let mut w = compare_marginals(va, vb, parties);
    let pairs = compare_pairs(va, vb, parties);
    w.update(pairs.z, || pairs.at);
    w
}

/// The new-design check: for each receiving party, its view (what it received and opened, and
/// what the dealer received) must not depend on the secret. Returns the worst comparison over
/// both receivers.
pub(crate) fn check(suite: &dyn ViewSuite, build: &Build<'_>) -> Worst {
    check_by(suite, build, compare)
}

/// [`check`] with the comparison `by` ([`compare`], or one of its halves for the controls).
pub(crate) fn check_by(
    suite: &dyn ViewSuite,
    build: &Build<'_>,
    by: fn(&[Views], &[Views], &[usize]) -> Worst,
) -> Worst {
    let mut worst = Worst::new();
    for r in 0..2 {
        let [va, vb] = gather(suite, build, r, true);
        let w = by(&va, &vb, &[r, 2, 3 + r]);
        assert!(w.total > 0, "receiver {r}: no messages");
        worst.total += w.total;
        worst.update(w.z, || format!("receiver {r}: {}", w.at));
    }
    worst
}

pub(crate) fn assert_private(what: &str, w: &Worst) {
    assert!(
        w.z < Z_LIMIT,
        "{what}: view differs at {} (z = {:.1})",
        w.at,
        w.z
    );
}

/// A planted leak `what` must make the views differ where the worst comparison's description
/// contains `at` (e.g. "opened" for an opened value, "xor" for a pair).
pub(crate) fn assert_caught_at(what: &str, w: &Worst, at: &str) {
    assert!(
        w.z >= Z_LIMIT && w.at.contains(at),
        "{what} was not detected at a comparison naming {at:?} (worst z = {:.1} at {})",
        w.z,
        w.at
    );
}

/// A planted leak `what` must make the views differ.
pub(crate) fn assert_caught(what: &str, w: &Worst) {
    assert!(
        w.z >= Z_LIMIT,
        "{what} was not detected (worst z = {:.1} at {})",
        w.z,
        w.at
    );
}

/// A ReLU layer of `n` elements on the constant secret `secrets[s]`.
pub(crate) fn relu_case(
    n: usize,
    secrets: [i64; 2],
) -> impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync {
    move |s, sp| {
        let plan = Plan::relu_act(n);
        let xs = sp.split(&vec![secrets[s] as u64; n]);
        xs.map(|x| PartyIn {
            plan: plan.clone(),
            weights: Vec::new(),
            x,
        })
    }
}

/// A ReLU-sharing layer of 4 channels of 16x16, one group per 4x4 patch (64 groups), with the
/// given decider and noise, on two different inputs.
pub(crate) fn shared_case(
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

/// The fixed model `fm` (prepared as the suite runs it) on the constant images 1.5 and -1.5,
/// weights, deciders and fused gates' `U`/`beta` shared like the inputs.
pub(crate) fn model_inputs(fm: FixedModel) -> impl Fn(usize, &mut Splitter) -> [PartyIn; 3] + Sync {
    move |s: usize, sp: &mut Splitter| {
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
    }
}
