//! Tests of the fast suite against plaintext fixed-point evaluation, and of its cost formulas.

use super::*;
use crate::cost::{CostReport, PartyCosts, Phase};
use crate::fixed;
use crate::suite::{GroupPlan, Plan, PlanOp, Shared, Suite, WeightShare};
use crate::transport::MemTransport;
use proptest::prelude::*;

/// Split plaintext values into two additive shares.
pub(crate) fn share(v: &[u64], rng: &mut Prg) -> (Vec<u64>, Vec<u64>) {
    let a = rng.gen_u64s(v.len());
    let b = v.iter().zip(&a).map(|(x, y)| x.wrapping_sub(*y)).collect();
    (a, b)
}

/// Run `body` on the three parties of a fresh fast suite; returns per-party outputs and costs.
pub(crate) fn run3<R: Send + 'static>(
    mode: CmpMode,
    cfg: FastConfig,
    body: impl Fn(&mut FastSuite) -> Result<R> + Send + Sync + 'static,
) -> (Vec<R>, CostReport) {
    let body = std::sync::Arc::new(body);
    let ts = MemTransport::trio();
    let mut hs = Vec::new();
    for t in ts {
        let body = body.clone();
        let cfg = cfg.clone();
        hs.push(std::thread::spawn(move || {
            let mut s = FastSuite::new(Comm::new(Box::new(t)), 13, cfg, mode);
            let r = body(&mut s).expect("party failed");
            let c: PartyCosts = s.into_comm().take_costs();
            (r, c)
        }));
    }
    let mut outs = Vec::new();
    let mut costs = Vec::new();
    for h in hs {
        let (r, c) = h.join().expect("thread");
        outs.push(r);
        costs.push(c);
    }
    (outs, CostReport::from_parties(&costs, &[]))
}

fn reconstruct(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

fn relu_case(vals: Vec<i64>, k: u32) -> (Vec<u64>, CostReport) {
    relu_case_mode(vals, k, CmpMode::Tree)
}

fn relu_case_mode(vals: Vec<i64>, k: u32, mode: CmpMode) -> (Vec<u64>, CostReport) {
    let n = vals.len();
    let v: Vec<u64> = vals.iter().map(|&x| x as u64).collect();
    let mut rng = Prg::from_os().unwrap();
    let (x0, x1) = share(&v, &mut rng);
    let mut cfg = FastConfig::defaults(13);
    cfg.bits.insert("act".into(), k);
    let (outs, rep) = run3(mode, cfg, move |s| {
        let plan = Plan::relu_act(n);
        s.prepare(&plan, &[])?;
        s.comm().set_phase(Phase::Offline);
        s.offline(&plan, &[])?;
        s.comm().set_phase(Phase::Online);
        s.comm().set_label("act");
        let x = match s.party() {
            0 => x0.clone(),
            1 => x1.clone(),
            _ => Vec::new(),
        };
        s.relu(&x, n)
    });
    (reconstruct(&outs[0], &outs[1]), rep)
}

#[test]
fn relu_exact_and_costs_match_formulas() {
    let k = 21u32;
    let lim = (1i64 << (k - 1)) - 1;
    let mut vals = vec![
        0,
        1,
        -1,
        2,
        -2,
        lim,
        -lim,
        -lim - 1,
        5000,
        -5000,
        12345,
        -77,
    ];
    let mut rng = Prg::from_seed([9; 16]);
    for _ in 0..1000 {
        vals.push((rng.next_u64() % (2 * lim as u64)) as i64 - lim);
    }
    let n = vals.len();
    for mode in [CmpMode::Tree, CmpMode::Fss] {
        let (y, rep) = relu_case_mode(vals.clone(), k, mode);
        for (i, &x) in vals.iter().enumerate() {
            assert_eq!(y[i] as i64, x.max(0), "{mode:?} element {i}: x = {x}");
        }
        let l = rep.get("act").unwrap();
        assert_eq!(
            l.online_bytes as usize,
            2 * cmp::relu_online_bytes(n, k, mode).unwrap()
        );
        let (b1, b0) = cmp::relu_offline_bytes(n, k, mode).unwrap();
        assert_eq!(l.offline_bytes as usize, b1 + b0);
        assert_eq!(l.online_rounds as usize, cmp::relu_rounds(k, mode).unwrap());
    }
}

/// `fss` compares on the smallest ring, `|y| < 2^(k-1)` with `k` of any parity
/// (`fast::config_for_mode`): exact at the ring's edges and at zero for even and odd `k`, with
/// early-terminated DCF keys (domains of 1 to 31 bits), and the offline bytes equal the formula.
#[test]
fn fss_relu_exact_on_rings_of_any_size() {
    for k in [2u32, 3, 8, 9, 10, 20, 21, 32] {
        let lim = (1i64 << (k - 1)) - 1;
        let mut vals = vec![0, 1, -1, lim, -lim, -lim - 1, lim - 1, -(lim / 2)];
        let mut rng = Prg::from_seed([k as u8; 16]);
        for _ in 0..200 {
            vals.push((rng.next_u64() % (2 * lim as u64 + 2)) as i64 - lim - 1);
        }
        let n = vals.len();
        let (y, rep) = relu_case_mode(vals.clone(), k, CmpMode::Fss);
        for (i, &x) in vals.iter().enumerate() {
            assert_eq!(y[i] as i64, x.max(0), "k {k} element {i}: x = {x}");
        }
        let (b1, b0) = cmp::relu_offline_bytes(n, k, CmpMode::Fss).unwrap();
        assert_eq!(
            rep.get("act").unwrap().offline_bytes as usize,
            b1 + b0,
            "k {k}"
        );
    }
}

#[test]
fn schedule_shapes() {
    let s = Schedule::new(3).unwrap();
    assert_eq!(s.leaves, 1);
    assert_eq!(s.rounds(), 0);
    let s = Schedule::new(25).unwrap();
    assert_eq!(s.leaves, 12);
    assert_eq!(s.rounds(), 2);
    assert!(Schedule::new(24).is_err());
    assert!(Schedule::new(65).is_err());
    // Every odd k: ceil(log5 L) levels, each covering its segments in order with one node of
    // two or more per level, the lowest segment's node without P.
    for k in (3..=63).step_by(2) {
        let s = Schedule::new(k).unwrap();
        let depth = (0..).find(|&d| cmp::MAX_WIDTH.pow(d) >= s.leaves).unwrap() as usize;
        assert_eq!(s.rounds(), depth, "k {k}");
        let mut segs = s.leaves;
        for lv in &s.levels {
            let mut first = 0;
            for (i, node) in lv.iter().enumerate() {
                assert_eq!(node.first, first, "k {k}");
                assert!((1..=cmp::MAX_WIDTH).contains(&node.width), "k {k}");
                assert_eq!(node.need_p, i + 1 != lv.len(), "k {k}");
                first += node.width;
            }
            assert_eq!(first, segs, "k {k}");
            assert!(lv.last().unwrap().width >= 2, "k {k}");
            segs = lv.len();
        }
        assert_eq!(segs, 1, "k {k}");
        let opened: usize = s.levels.iter().flatten().map(|n| n.vars()).sum();
        assert_eq!(s.online_bytes(8), opened, "k {k}");
    }
    // Dealt products and opened variables per node width, without and with P.
    for (w, prods, vars) in [
        (2, [1, 2], [2, 3]),
        (3, [5, 8], [4, 5]),
        (4, [15, 22], [6, 7]),
        (5, [37, 52], [8, 9]),
    ] {
        for need_p in [false, true] {
            let node = cmp::Node {
                first: 0,
                width: w,
                need_p,
            };
            assert_eq!(
                node.products().len(),
                prods[usize::from(need_p)],
                "width {w}"
            );
            assert_eq!(node.vars(), vars[usize::from(need_p)], "width {w}");
        }
    }
    // L = 8 (k = 17), two levels: the cheapest widths in bits (dealt products plus opened
    // variables of both parties) beat the other two-level trees.
    let bits = |widths: &[Vec<usize>]| -> usize {
        widths
            .iter()
            .flat_map(|lv| {
                lv.iter().enumerate().map(|(i, &width)| {
                    let node = cmp::Node {
                        first: 0,
                        width,
                        need_p: i + 1 != lv.len(),
                    };
                    if width < 2 {
                        0
                    } else {
                        node.products().len() + 2 * node.vars()
                    }
                })
            })
            .sum()
    };
    let s = Schedule::new(17).unwrap();
    let widths: Vec<Vec<usize>> = s
        .levels
        .iter()
        .map(|lv| lv.iter().map(|n| n.width).collect())
        .collect();
    assert_eq!(widths, vec![vec![2, 3, 3], vec![3]]);
    assert_eq!(bits(&widths), 52);
    assert_eq!(s.and_gates() + 2 * s.open_planes(), 52);
    for other in [
        vec![vec![2, 2, 2, 2], vec![4]],
        vec![vec![4, 4], vec![2]],
        vec![vec![1, 3, 4], vec![3]],
        vec![vec![2, 2, 4], vec![3]],
    ] {
        assert!(bits(&other) > 52, "{other:?}: {}", bits(&other));
    }
}

use cmp::Schedule;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn relu_random(k in (1u32..31).prop_map(|h| 2 * h + 1), seed in any::<u64>(), n in 1usize..200) {
        let lim = (1i64 << (k - 1)) - 1;
        let mut r = Prg::from_seed([(seed & 0xff) as u8; 16]);
        let vals: Vec<i64> = (0..n).map(|i| match i % 7 {
            0 => 0, 1 => lim, 2 => -lim - 1, 3 => 1, 4 => -1,
            _ => (r.next_u64() % (2 * lim as u64 + 1)) as i64 - lim,
        }).collect();
        let (y, _) = relu_case(vals.clone(), k);
        for (i, &x) in vals.iter().enumerate() {
            prop_assert_eq!(y[i] as i64, x.max(0));
        }
    }
}

fn plain_conv(x: &[u64], w: &[u64], bias: &[u64], g: &ConvGeom, f: u32) -> Vec<u64> {
    let mut y = kernels::conv2d(x, w, g);
    kernels::add_channel_bias(&mut y, bias, g.oh() * g.ow());
    y.iter().map(|&v| fixed::trunc_plain(v, f)).collect()
}

#[test]
fn conv_and_linear_within_one_ulp() {
    let fp = fixed::FixedPoint::default();
    let mut rng = Prg::from_seed([5; 16]);
    let g = ConvGeom {
        n: 2,
        c: 3,
        h: 6,
        w: 5,
        o: 4,
        k: 3,
        stride: 1,
        pad: 1,
    };
    let small = |rng: &mut Prg, n: usize, s: f32| -> Vec<u64> {
        (0..n)
            .map(|_| fp.encode(((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * s))
            .collect()
    };
    let x = small(&mut rng, g.in_len(), 3.0);
    let w = small(&mut rng, g.w_len(), 0.5);
    let bias: Vec<u64> = (0..g.o)
        .map(|i| fp.encode_double(i as f32 * 0.25 - 0.5))
        .collect();
    let lg = LinearGeom {
        n: 2,
        in_f: 7,
        out_f: 3,
    };
    let lx = small(&mut rng, 14, 2.0);
    let lw = small(&mut rng, 21, 1.0);
    let lb: Vec<u64> = (0..3).map(|i| fp.encode_double(i as f32 * 0.1)).collect();
    let want = plain_conv(&x, &w, &bias, &g, 13);
    let lwt = kernels::transpose(&lw, 3, 7);
    let mut lwant = kernels::matmul(&lx, &lwt, 2, 7, 3);
    kernels::add_channel_bias(&mut lwant, &lb, 1);
    let lwant: Vec<u64> = lwant.iter().map(|&v| fixed::trunc_plain(v, 13)).collect();
    let mut prg = Prg::from_os().unwrap();
    let sh = |v: &[u64], p: &mut Prg| share(v, p);
    let (x0, x1) = sh(&x, &mut prg);
    let (w0, w1) = sh(&w, &mut prg);
    let (b0, b1) = sh(&bias, &mut prg);
    let (lx0, lx1) = sh(&lx, &mut prg);
    let (lw0, lw1) = sh(&lw, &mut prg);
    let (lb0, lb1) = sh(&lb, &mut prg);
    let (outs, rep) = run3(CmpMode::Tree, FastConfig::defaults(13), move |s| {
        let me = s.party();
        let pick = |a: &Vec<u64>, b: &Vec<u64>| -> Shared {
            match me {
                0 => a.clone(),
                1 => b.clone(),
                _ => Vec::new(),
            }
        };
        let ws = vec![
            WeightShare {
                name: "conv1".into(),
                w: pick(&w0, &w1),
                bias: pick(&b0, &b1),
            },
            WeightShare {
                name: "fc1".into(),
                w: pick(&lw0, &lw1),
                bias: pick(&lb0, &lb1),
            },
        ];
        let plan = Plan {
            n: 2,
            input_len: g.in_len1(),
            output_len: 3,
            srcs: Vec::new(),
            ops: vec![
                PlanOp::Conv {
                    name: "conv1".into(),
                    geom: g,
                    weight: 0,
                },
                PlanOp::Linear {
                    name: "fc1".into(),
                    geom: lg,
                    weight: 1,
                },
            ],
        };
        s.comm().set_phase(Phase::Offline);
        s.comm().set_label("model-setup");
        s.prepare(&plan, &ws)?;
        s.offline(&plan, &ws)?;
        s.comm().set_phase(Phase::Online);
        s.comm().set_label("conv1");
        let y = s.conv2d(&pick(&x0, &x1), &ws[0], &g)?;
        s.comm().set_label("fc1");
        let z = s.linear(&pick(&lx0, &lx1), &ws[1], &lg)?;
        Ok((y, z))
    });
    let y = reconstruct(&outs[0].0, &outs[1].0);
    let z = reconstruct(&outs[0].1, &outs[1].1);
    let plan = Plan {
        n: 2,
        input_len: g.in_len1(),
        output_len: 3,
        srcs: Vec::new(),
        ops: vec![
            PlanOp::Conv {
                name: "conv1".into(),
                geom: g,
                weight: 0,
            },
            PlanOp::Linear {
                name: "fc1".into(),
                geom: lg,
                weight: 1,
            },
        ],
    };
    let off: u64 = rep
        .layers
        .iter()
        .filter(|l| l.label != "model-setup")
        .map(|l| l.offline_bytes)
        .sum();
    assert_eq!(
        off as usize,
        offline_bytes(&plan, &FastConfig::defaults(13), CmpMode::Tree).unwrap()
    );
    for (a, b) in y.iter().zip(&want).chain(z.iter().zip(&lwant)) {
        let d = (*a as i64).wrapping_sub(*b as i64);
        assert!(d == 0 || d == 1, "secure {} plain {}", *a as i64, *b as i64);
    }
    let c = rep.get("conv1").unwrap();
    let op = LinOp::Conv(g);
    assert_eq!(
        c.online_bytes as usize,
        2 * linear::linear_online_bytes(&op)
    );
    assert_eq!(c.offline_bytes as usize, linear::linear_offline_bytes(&op));
    assert_eq!(c.online_rounds, 1);
    let setup = rep.get("model-setup").unwrap();
    assert_eq!(setup.offline_bytes as usize, 32 + 2 * 8 * (g.w_len() + 21));
}

fn group_case(
    decider: DeciderKind,
    noise: f32,
    vals: Vec<i64>,
    vv: Vec<i64>,
    gb: Vec<i64>,
    k: u32,
) -> (Vec<u64>, Vec<u64>, CostReport) {
    // 2 images of 1 channel 4x4, groups = 2x2 patches (4 groups), leaders = top-left.
    let len = 16;
    let group_of: Vec<u32> = (0..16)
        .map(|i| ((i / 4) / 2 * 2 + (i % 4) / 2) as u32)
        .collect();
    let leaders = vec![0u32, 2, 8, 10];
    let n = vals.len() / len;
    let v: Vec<u64> = vals.iter().map(|&x| x as u64).collect();
    let mut prg = Prg::from_os().unwrap();
    let (x0, x1) = share(&v, &mut prg);
    let vu: Vec<u64> = vv.iter().map(|&x| x as u64).collect();
    let (v0, v1) = share(&vu, &mut prg);
    let bu: Vec<u64> = gb.iter().map(|&x| x as u64).collect();
    let (bb0, bb1) = share(&bu, &mut prg);
    let mut cfg = FastConfig::defaults(13);
    cfg.bits.insert("act".into(), k);
    let gp0 = GroupPlan {
        len,
        group_of: group_of.clone(),
        num_groups: 4,
        leaders: leaders.clone(),
        decider,
        v: Vec::new(),
        bias: Vec::new(),
        noise,
        fused: None,
    };
    let (outs, rep) = run3(CmpMode::Tree, cfg, move |s| {
        let me = s.party();
        let mut gp = gp0.clone();
        let pick = |a: &Vec<u64>, b: &Vec<u64>| -> Shared {
            match me {
                0 => a.clone(),
                1 => b.clone(),
                _ => Vec::new(),
            }
        };
        if decider != DeciderKind::OneHot {
            gp.v = pick(&v0, &v1);
        }
        if decider == DeciderKind::Fc {
            gp.bias = pick(&bb0, &bb1);
        }
        let plan = Plan {
            n,
            input_len: len,
            output_len: len,
            srcs: Vec::new(),
            ops: vec![PlanOp::SharedRelu {
                name: "act".into(),
                plan: Box::new(gp.clone()),
            }],
        };
        s.comm().set_phase(Phase::Offline);
        s.prepare(&plan, &[])?;
        s.offline(&plan, &[])?;
        s.comm().set_phase(Phase::Online);
        s.comm().set_label("act");
        s.shared_relu(&pick(&x0, &x1), n, &gp)
    });
    let y = reconstruct(&outs[0], &outs[1]);
    // Plaintext decisions.
    let mut keep = vec![0u64; n * 4];
    for img in 0..n {
        for g in 0..4 {
            let z: i64 = match decider {
                DeciderKind::OneHot => vals[img * len + leaders[g] as usize],
                _ => {
                    let mut acc = 0i64;
                    for i in 0..len {
                        if group_of[i] as usize == g {
                            acc = acc.wrapping_add(vv[i].wrapping_mul(vals[img * len + i]));
                        }
                    }
                    if decider == DeciderKind::Fc {
                        acc = acc.wrapping_add(gb[g]);
                    }
                    acc
                }
            };
            keep[img * 4 + g] = u64::from(z >= 0);
        }
    }
    let want: Vec<u64> = (0..n * len)
        .map(|i| (vals[i] as u64).wrapping_mul(keep[(i / len) * 4 + group_of[i % len] as usize]))
        .collect();
    (y, want, rep)
}

#[test]
fn shared_relu_all_deciders() {
    let mut rng = Prg::from_seed([3; 16]);
    let vals: Vec<i64> = (0..32)
        .map(|i| {
            if i % 5 == 0 {
                0
            } else {
                (rng.next_u64() % 20001) as i64 - 10000
            }
        })
        .collect();
    let vv: Vec<i64> = (0..16)
        .map(|_| (rng.next_u64() % 2001) as i64 - 1000)
        .collect();
    let gb = vec![5000i64, -7000, 0, 123];
    for dec in [DeciderKind::OneHot, DeciderKind::Learned, DeciderKind::Fc] {
        let k = if dec == DeciderKind::OneHot { 17 } else { 35 };
        let (y, want, rep) = group_case(dec, 0.0, vals.clone(), vv.clone(), gb.clone(), k);
        assert_eq!(y, want, "{dec:?}");
        let gp = GroupPlan {
            len: 16,
            group_of: vec![0; 16],
            num_groups: 4,
            leaders: vec![],
            decider: dec,
            v: vec![],
            bias: vec![],
            noise: 0.0,
            fused: None,
        };
        let l = rep.get("act").unwrap();
        assert_eq!(
            l.online_bytes as usize,
            2 * group_online_bytes(2, &gp, k, CmpMode::Tree).unwrap(),
            "{dec:?}"
        );
        assert_eq!(
            l.offline_bytes as usize,
            group_offline_bytes(2, &gp, k, CmpMode::Tree).unwrap().0,
            "{dec:?}"
        );
    }
}

#[test]
fn shared_relu_noise_flips_members() {
    // All-positive inputs: without noise every member is kept; with p = 1 every member flips.
    let vals: Vec<i64> = (0..32).map(|i| 100 + i).collect();
    let (y, want, _) = group_case(
        DeciderKind::OneHot,
        1.0,
        vals.clone(),
        vec![0; 16],
        vec![0; 4],
        17,
    );
    assert_eq!(want, vals.iter().map(|&v| v as u64).collect::<Vec<_>>());
    assert!(y.iter().all(|&v| v == 0), "p = 1 must flip every decision");
    let (y, _, _) = group_case(
        DeciderKind::OneHot,
        0.5,
        vals.clone(),
        vec![0; 16],
        vec![0; 4],
        17,
    );
    let kept = y.iter().filter(|&&v| v != 0).count();
    assert!(kept > 4 && kept < 28, "p = 0.5 kept {kept} of 32");
    for (a, b) in y.iter().zip(&vals) {
        assert!(*a == 0 || *a == *b as u64);
    }
}

pub(crate) mod e2e {
    use super::*;
    use crate::plain::{self, FixedLayer, FixedModel};
    use crate::runner::{run_session, RunOptions};
    use relushare_model::{presets, Arch, Model};

    /// A deterministic test image with values in `[-lim, lim]` (the mimo tests use it too).
    pub(crate) fn image(len: usize, seed: u64, lim: f64) -> Vec<f32> {
        let mut r = Prg::from_seed([seed as u8; 16]);
        (0..len)
            .map(|_| ((r.next_u64() % 20001) as f64 / 10000.0 - 1.0) as f32 * lim as f32)
            .collect()
    }

    /// The dealer's noise source in these tests.
    pub(in crate::fast) const NOISE_SEED: crate::prg::Seed = [0x6e; 16];

    /// The noise bits the dealer draws for a batch of `n` with its noise source seeded by
    /// `seed`: per noisy layer (by index), `n * len` bits, image-major, layers in order.
    pub(in crate::fast) fn dealer_noise(
        fm: &FixedModel,
        n: usize,
        seed: crate::prg::Seed,
    ) -> std::collections::BTreeMap<usize, Vec<u8>> {
        let mut rng = Prg::from_seed(seed);
        let mut out = std::collections::BTreeMap::new();
        for (li, l) in fm.layers.iter().enumerate() {
            if let FixedLayer::Shared { s, .. } = l {
                if s.noise > 0.0 && s.fused.is_none() {
                    out.insert(li, rng.bernoulli(n * s.len, s.noise as f64));
                }
            }
        }
        out
    }

    /// Secure == plaintext per layer (each layer re-evaluated in plaintext on the secure input of
    /// that layer: exact for comparisons and selects, within one ulp after truncation), and
    /// the logits end to end within a small tolerance. The dealer's noise source is fixed
    /// ([`NOISE_SEED`]) and the plaintext reference flips exactly the members the dealer
    /// flipped, so noisy layers are compared exactly too.
    fn check(arch: Arch, preset: &str, mode: CmpMode, batch: usize) {
        check_spec(arch, preset, None, mode, batch)
    }

    /// [`check`] on a preset with a free-form spec applied on top.
    fn check_spec(arch: Arch, preset: &str, free: Option<&str>, mode: CmpMode, batch: usize) {
        let mut spec = presets::build(arch, preset).unwrap();
        if let Some(f) = free {
            presets::apply_freeform(&mut spec, f).unwrap();
            spec.preset = f.to_string();
        }
        check_model(&Model::random(spec, None, 11).unwrap(), mode, batch);
    }

    pub(in crate::fast) fn check_model(model: &Model, mode: CmpMode, batch: usize) {
        let (arch, preset) = (model.spec.arch, model.spec.preset.clone());
        let fm = FixedModel::from_model(model, 13).unwrap();
        let cfg = super::config_for_mode(&fm, model, mode).unwrap();
        let lim = input_abs_max(&model.spec.normalization);
        let imgs: Vec<Vec<u64>> = (0..batch)
            .map(|b| {
                fm.encode_input(&image(fm.input_len, 7 + b as u64, lim))
                    .unwrap()
            })
            .collect();
        let hooks = TestHooks {
            noise_seed: Some(NOISE_SEED),
            ..Default::default()
        };
        let f = test_factory(cfg, mode, hooks);
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
        let noise = dealer_noise(&fm, batch, NOISE_SEED);
        let flips: usize = noise.values().flatten().map(|&b| b as usize).sum();
        let members: usize = noise.values().map(|v| v.len()).sum();
        assert!(
            members == 0 || (flips > 0 && flips < members),
            "{arch} {preset}: {flips} of {members} members flipped"
        );
        let br = &res.batches[0];
        // Output shares to the client: P0 and P1 each send the batch's logits.
        assert_eq!(
            br.report.client_bytes as usize,
            2 * 8 * batch * fm.output_len,
            "{arch} {preset}"
        );
        let tr = br.trace.as_ref().unwrap();
        let len_of = |t: usize| {
            if t == 0 {
                fm.input_len
            } else {
                fm.out_lens[t - 1]
            }
        };
        for (li, l) in fm.layers.iter().enumerate() {
            let per_out = fm.out_lens[li];
            for img in 0..batch {
                let xins: Vec<&[u64]> = fm.srcs[li]
                    .iter()
                    .map(|&t| &tr[t][img * len_of(t)..(img + 1) * len_of(t)])
                    .collect();
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
                    FixedLayer::Conv { .. }
                        | FixedLayer::Linear { .. }
                        | FixedLayer::AvgPool { .. }
                );
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    if truncates {
                        let d = (*a as i64).wrapping_sub(*b as i64);
                        assert!(
                            d == 0 || d == 1,
                            "{arch} {preset} {} [{i}]: {} vs {}",
                            l.name(),
                            *a as i64,
                            *b as i64
                        );
                    } else {
                        assert_eq!(a, b, "{arch} {preset} {} [{i}]", l.name());
                    }
                }
            }
        }
        // End to end vs the plaintext fixed-point forward pass, with the dealer's flips.
        for (img, (x, out)) in imgs.iter().zip(&br.outputs).enumerate() {
            let mut bits = noise
                .iter()
                .flat_map(|(li, b)| {
                    let len = fm.out_lens[*li];
                    b[img * len..(img + 1) * len].iter()
                })
                .collect::<Vec<_>>()
                .into_iter();
            let t = plain::forward_fixed_trace(&fm, x, &mut |_| {
                *bits.next().expect("a noise bit per member") == 1
            })
            .unwrap();
            assert!(bits.next().is_none(), "unused noise bits");
            let want = fm.fp.decode_vec(t.last().unwrap());
            let got = fm.fp.decode_vec(out);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 0.01 + 0.01 * b.abs(),
                    "{arch} {preset}: logit {a} vs {b}"
                );
            }
        }
    }

    /// Noisy ReLU-sharing layers with learned, FC and one-hot deciders (patches and channels,
    /// batches of two), their exact outputs and the logits against the reference with the
    /// dealer's flips; a wrong flip anywhere fails the layer comparison.
    #[test]
    fn noisy_layers_with_a_fixed_noise_source() {
        for (arch, text, mode, batch) in [
            (
                Arch::Fmnist,
                "act1=patch4:learned:noise0.3",
                CmpMode::Tree,
                2,
            ),
            (Arch::Svhn, "act1=channel:fc:noise0.2", CmpMode::Fss, 1),
            (
                Arch::Fmnist,
                "act1=patch3:onehot:noise0.5",
                CmpMode::Tree,
                1,
            ),
        ] {
            let mut spec = presets::build(arch, "original").unwrap();
            presets::apply_freeform(&mut spec, text).unwrap();
            spec.preset = text.to_string();
            check_model(&Model::random(spec, None, 5).unwrap(), mode, batch);
        }
    }

    #[test]
    fn svhn_fmnist_all_kinds() {
        for preset in [
            "original",
            "uniform3",
            "uniform32",
            "fc-noise",
            "shafran",
            "noise",
        ] {
            check(Arch::Svhn, preset, CmpMode::Tree, 1);
        }
        check(Arch::Fmnist, "original", CmpMode::Tree, 2);
        check(Arch::Fmnist, "uniform4", CmpMode::Tree, 1);
    }

    /// Groups spanning several channels (cross-channel sharing), with every decider and noise,
    /// on both comparison modes.
    #[test]
    fn cross_channel_groups() {
        check_spec(
            Arch::Fmnist,
            "original",
            Some("act1=patch2/c4,act2=patch3-merge/c2:onehot"),
            CmpMode::Tree,
            2,
        );
        check_spec(
            Arch::Svhn,
            "original",
            Some("act1=patch4/c3:noise0.2"),
            CmpMode::Tree,
            1,
        );
        check_spec(
            Arch::Fmnist,
            "original",
            Some("act1=patch2/c4,act2=patch7/c8"),
            CmpMode::Fss,
            1,
        );
    }

    #[test]
    fn fss_mode_end_to_end() {
        check(Arch::Svhn, "original", CmpMode::Fss, 1);
        check(Arch::Svhn, "uniform3", CmpMode::Fss, 1);
        check(Arch::Fmnist, "fc-noise", CmpMode::Fss, 1);
    }

    /// Graph models: residual adds, max pooling (a ReLU tree per window), global average
    /// pooling and folded batch norms, layer by layer against the plaintext fixed point, with
    /// shared ReLUs on a graph's activation layers too; both comparison modes.
    #[test]
    fn graph_models_layer_by_layer() {
        let tiny = relushare_model::resnet::tiny_graph();
        for (free, mode, batch) in [
            (None, CmpMode::Tree, 2),
            (None, CmpMode::Fss, 1),
            (Some("relu2=patch2,relu4=channel:onehot"), CmpMode::Tree, 1),
        ] {
            let mut spec = tiny.clone();
            if let Some(f) = free {
                presets::apply_freeform(&mut spec, f).unwrap();
            }
            check_model(&Model::random(spec, None, 11).unwrap(), mode, batch);
        }
        // ResNet-20 (calibrated rings, see bounds): every layer against the plaintext.
        check(Arch::Resnet20, "original", CmpMode::Tree, 1);
    }

    /// A graph's max pool and adds cost what the formulas say: per tree level one ReLU on the
    /// level's pairs (online bytes, rounds, dealer bytes); an add nothing.
    #[test]
    fn graph_layer_costs_match_formulas() {
        let model = Model::random(relushare_model::resnet::tiny_graph(), None, 4).unwrap();
        let fm = FixedModel::from_model(&model, 13).unwrap();
        let cfg = config_for_model(&fm, &model).unwrap();
        let lim = input_abs_max(&model.spec.normalization);
        for mode in [CmpMode::Tree, CmpMode::Fss] {
            let n = 2;
            let imgs: Vec<Vec<u64>> = (0..n)
                .map(|b| {
                    fm.encode_input(&image(fm.input_len, 3 + b as u64, lim))
                        .unwrap()
                })
                .collect();
            let f = test_factory(cfg.clone(), mode, TestHooks::default());
            let res = run_session(&fm, &[imgs], &f, &RunOptions::default()).unwrap();
            let rep = &res.batches[0].report;
            let Some(FixedLayer::MaxPool { geom, .. }) = fm
                .layers
                .iter()
                .find(|l| matches!(l, FixedLayer::MaxPool { .. }))
            else {
                panic!("the tiny graph has a max pool")
            };
            let geom = crate::suite::MaxPoolGeom { n, ..*geom };
            let levels = geom.level_pairs();
            assert_eq!(levels.len(), 4);
            assert_eq!(
                levels.iter().sum::<usize>(),
                n * relushare_model::count(&model.spec)
                    .unwrap()
                    .maxpool_comparisons
            );
            let k = cfg.bits["maxpool1"];
            let l = rep.get("maxpool1").unwrap();
            let (mut on, mut off, mut rounds) = (0, 0, 0);
            for &p in &levels {
                on += 2 * cmp::relu_online_bytes(p, k, mode).unwrap();
                let (b1, b0) = cmp::relu_offline_bytes(p, k, mode).unwrap();
                off += b1 + b0;
                rounds += cmp::relu_rounds(k, mode).unwrap();
            }
            assert_eq!(l.online_bytes as usize, on, "{mode:?}");
            assert_eq!(l.offline_bytes as usize, off, "{mode:?}");
            assert_eq!(l.online_rounds as usize, rounds, "{mode:?}");
            for add in ["add1", "add2"] {
                let a = rep.get(add);
                assert!(
                    a.is_none_or(|a| a.online_bytes == 0 && a.online_rounds == 0),
                    "{add}"
                );
            }
            // The whole offline phase equals the plan's formula.
            let plan = crate::runner::build_plan(&fm, n, &vec![None; fm.layers.len()]);
            assert_eq!(
                rep.offline_bytes() as usize,
                super::super::offline_bytes(&plan, &cfg, mode).unwrap(),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn cifar10_original_and_uniform32() {
        check(Arch::Cifar10, "original", CmpMode::Tree, 1);
        check(Arch::Cifar10, "uniform32", CmpMode::Tree, 1);
    }
}

/// Prints costs and times of whole-network runs (`cargo test --release -- --ignored --nocapture measure`).
#[test]
#[ignore]
fn measure() {
    use crate::plain::FixedModel;
    use crate::runner::{run_session, RunOptions};
    use relushare_model::{presets, Arch, Model};
    let which = std::env::var("MEASURE").unwrap_or_default();
    for (arch, preset) in [
        (Arch::Cifar10, "original"),
        (Arch::Cifar10, "uniform32"),
        (Arch::Cifar10, "uniform3"),
        (Arch::Svhn, "original"),
        (Arch::Fmnist, "original"),
    ] {
        let spec = presets::build(arch, preset).unwrap();
        let model = Model::random(spec, None, 1).unwrap();
        let fm = FixedModel::from_model(&model, 13).unwrap();
        let cfg = config_for_model(&fm, &model).unwrap();
        let img = vec![0u64; fm.input_len];
        for mode in [CmpMode::Tree, CmpMode::Fss] {
            if !which.is_empty()
                && !which.contains(&format!("{arch}-{preset}-{mode:?}"))
                && which != "all"
            {
                continue;
            }
            let f = factory(cfg.clone(), mode);
            let batches = vec![vec![img.clone()], vec![img.clone()], vec![img.clone()]];
            let res = run_session(&fm, &batches, &f, &RunOptions::default()).unwrap();
            let b = &res.batches[2];
            println!(
                "{arch} {preset} {mode:?}: online {:.3} MB offline {:.3} MB total {:.3} MB rounds {} | offline {:.3}s online {:.3}s | setup {:.3} MB",
                b.report.online_bytes() as f64 / 1e6,
                b.report.offline_bytes() as f64 / 1e6,
                (b.report.online_bytes() + b.report.offline_bytes()) as f64 / 1e6,
                b.report.online_rounds(),
                b.offline_seconds,
                b.online_seconds,
                (res.setup.online_bytes() + res.setup.offline_bytes()) as f64 / 1e6,
            );
            for l in &b.report.layers {
                if std::env::var("LAYERS").is_ok() {
                    println!(
                        "   {:10} on {:9} off {:9} r {:3} {:.4}s",
                        l.label, l.online_bytes, l.offline_bytes, l.online_rounds, l.seconds
                    );
                }
            }
        }
    }
    for (k, v) in &FastConfig::defaults(13).bits {
        println!("{k} {v}");
    }
}

/// Seconds and bytes of `securenn` vs `fast` on CIFAR-10 `original` in the same process, and
/// `fast` throughput at several batch sizes
/// (`cargo test --release -- --ignored --nocapture compare_and_batch`).
#[test]
#[ignore]
fn compare_and_batch() {
    use crate::plain::FixedModel;
    use crate::runner::{run_session, RunOptions};
    use relushare_model::{presets, Arch, Model};
    let spec = presets::build(Arch::Cifar10, "original").unwrap();
    let model = Model::random(spec, None, 1).unwrap();
    let fm = FixedModel::from_model(&model, 13).unwrap();
    let cfg = config_for_model(&fm, &model).unwrap();
    let img = vec![0u64; fm.input_len];
    let t = std::time::Instant::now();
    let snn = run_session(
        &fm,
        &[vec![img.clone()]],
        &crate::securenn::factory,
        &RunOptions::default(),
    )
    .unwrap();
    let snn_s = t.elapsed().as_secs_f64();
    let f = factory(cfg.clone(), CmpMode::Tree);
    let t = std::time::Instant::now();
    let fast = run_session(&fm, &[vec![img.clone()]], &f, &RunOptions::default()).unwrap();
    let fast_s = t.elapsed().as_secs_f64();
    let b = &snn.batches[0];
    println!(
        "securenn: {:.3}s session, online {:.3}s, {:.2} MB, {} rounds",
        snn_s,
        b.online_seconds,
        (b.report.online_bytes() + b.report.offline_bytes()) as f64 / 1e6,
        b.report.online_rounds()
    );
    let b = &fast.batches[0];
    println!(
        "fast: {:.3}s session, offline {:.3}s online {:.3}s, {:.2} MB; speedup (session) {:.1}x",
        fast_s,
        b.offline_seconds,
        b.online_seconds,
        (b.report.online_bytes() + b.report.offline_bytes()) as f64 / 1e6,
        snn_s / fast_s
    );
    for bs in [1usize, 16, 64] {
        let batch = vec![img.clone(); bs];
        let res = run_session(&fm, &[batch.clone(), batch], &f, &RunOptions::default()).unwrap();
        let b = &res.batches[1];
        let secs = b.offline_seconds + b.online_seconds;
        println!(
            "fast batch {bs}: {:.3}s offline + {:.3}s online, {:.1} images/s (online only {:.1}), {:.2} MB/image",
            b.offline_seconds,
            b.online_seconds,
            bs as f64 / secs,
            bs as f64 / b.online_seconds,
            (b.report.online_bytes() + b.report.offline_bytes()) as f64 / 1e6 / bs as f64
        );
    }
}

/// One secure conv (fast suite) against the plaintext fixed-point conv; returns max |diff|.
fn conv_case(g: ConvGeom, seed: u64) -> i64 {
    let fp = fixed::FixedPoint::default();
    let mut rng = Prg::from_seed([(seed % 251) as u8; 16]);
    let mut val = |s: f32| fp.encode(((rng.next_u64() % 2001) as f32 / 1000.0 - 1.0) * s);
    let x: Vec<u64> = (0..g.in_len()).map(|_| val(4.0)).collect();
    let w: Vec<u64> = (0..g.w_len()).map(|_| val(0.5)).collect();
    let bias: Vec<u64> = (0..g.o)
        .map(|i| fp.encode_double(i as f32 * 0.125 - 0.25))
        .collect();
    let want = plain_conv(&x, &w, &bias, &g, 13);
    let mut prg = Prg::from_os().unwrap();
    let (x0, x1) = share(&x, &mut prg);
    let (w0, w1) = share(&w, &mut prg);
    let (b0, b1) = share(&bias, &mut prg);
    let (outs, _) = run3(CmpMode::Tree, FastConfig::defaults(13), move |s| {
        let me = s.party();
        let pick = |a: &Vec<u64>, b: &Vec<u64>| -> Shared {
            match me {
                0 => a.clone(),
                1 => b.clone(),
                _ => Vec::new(),
            }
        };
        let ws = vec![WeightShare {
            name: "c".into(),
            w: pick(&w0, &w1),
            bias: pick(&b0, &b1),
        }];
        let plan = Plan {
            n: g.n,
            input_len: g.in_len1(),
            output_len: g.out_len() / g.n,
            srcs: Vec::new(),
            ops: vec![PlanOp::Conv {
                name: "c".into(),
                geom: g,
                weight: 0,
            }],
        };
        s.prepare(&plan, &ws)?;
        s.offline(&plan, &ws)?;
        s.conv2d(&pick(&x0, &x1), &ws[0], &g)
    });
    let y = reconstruct(&outs[0], &outs[1]);
    assert_eq!(y.len(), want.len());
    y.iter()
        .zip(&want)
        .map(|(a, b)| (*a as i64).wrapping_sub(*b as i64))
        .map(|d| if d == 0 || d == 1 { d } else { i64::MAX })
        .max()
        .unwrap_or(0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]
    #[test]
    fn conv_random_shapes(n in 1usize..3, c in 1usize..5, h in 1usize..9, w in 1usize..9, o in 1usize..20,
                          k in 1usize..4, stride in 1usize..3, pad in 0usize..2, seed in any::<u64>()) {
        let g = ConvGeom { n, c, h, w, o, k, stride, pad };
        prop_assume!(g.validate().is_ok());
        let d = conv_case(g, seed);
        prop_assert!(d == 0 || d == 1, "{g:?}: secure differs from plaintext by more than one ulp");
    }
}
