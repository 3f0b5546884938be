//! SecureNN per-operation tests: correctness against plaintext, and bytes/rounds equal to the
//! paper's Table 1 formulas.

use proptest::prelude::*;
use relushare_mpc::cost::{Comm, CostReport, PartyCosts};
use relushare_mpc::fixed::FixedPoint;
use relushare_mpc::kernels::{self, ConvGeom};
use relushare_mpc::prg::Prg;
use relushare_mpc::runner::share_vec;
use relushare_mpc::securenn::SecureNn;
use relushare_mpc::suite::{DeciderKind, GroupPlan, LinearGeom, Primitives, Suite, WeightShare};
use relushare_mpc::transport::MemTransport;

const L: u64 = 64;

/// Run `f` on the three parties of a fresh SecureNN session; returns each party's result and
/// the cost report of everything after setup (label "op").
fn run3<R: Send>(f: impl Fn(&mut SecureNn, usize) -> R + Sync) -> (Vec<R>, CostReport) {
    let ts = MemTransport::trio();
    let out: Vec<(R, PartyCosts)> = std::thread::scope(|s| {
        let hs: Vec<_> = ts
            .into_iter()
            .enumerate()
            .map(|(p, t)| {
                let f = &f;
                s.spawn(move || {
                    let comm = Comm::new(Box::new(t));
                    let mut sn = SecureNn::new(comm, FixedPoint::default()).unwrap();
                    sn.comm().take_costs();
                    sn.comm().set_label("op");
                    let r = f(&mut sn, p);
                    (r, sn.comm().take_costs())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let costs: Vec<PartyCosts> = out.iter().map(|(_, c)| c.clone()).collect();
    let rep = CostReport::from_parties(&costs, &["op".to_string()]);
    (out.into_iter().map(|(r, _)| r).collect(), rep)
}

fn shares(v: &[u64]) -> [Vec<u64>; 3] {
    let mut prg = Prg::from_os().unwrap();
    let (a, b) = share_vec(&mut prg, v);
    [a, b, Vec::new()]
}

fn open(r: &[Vec<u64>]) -> Vec<u64> {
    r[0].iter()
        .zip(&r[1])
        .map(|(a, b)| a.wrapping_add(*b))
        .collect()
}

fn cost(rep: &CostReport) -> (u64, u64) {
    let l = rep.get("op").unwrap();
    (l.online_bytes, l.online_rounds)
}

fn drelu_plain(v: u64) -> u64 {
    u64::from((v as i64) >= 0)
}

#[test]
fn drelu_edge_values_and_table1_cost() {
    let mut vals: Vec<u64> = vec![
        0,
        1,
        u64::MAX,
        2,
        u64::MAX - 1,
        1 << 40,
        (1u64 << 40).wrapping_neg(),
    ];
    vals.extend([
        (1u64 << 61) - 1,
        (1u64 << 61).wrapping_neg(),
        8192,
        8192u64.wrapping_neg(),
    ]);
    let mut prg = Prg::from_os().unwrap();
    for _ in 0..200 {
        let r = prg.next_u64();
        vals.push(((r as i64) >> 3) as u64); // |x| < 2^61
    }
    let n = vals.len();
    let sh = shares(&vals);
    let (res, rep) = run3(|s, p| s.drelu(&sh[p], n).unwrap());
    let got = open(&res);
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(got[i], drelu_plain(*v), "DReLU({})", *v as i64);
    }
    // Table 1: DReLU 8 rounds, (8 log p + 19) l bits with log p = 8 (one byte per Z_67 element).
    let (bytes, rounds) = cost(&rep);
    assert_eq!(rounds, 8);
    assert_eq!(bytes * 8, n as u64 * (8 * 8 + 19) * L);
}

#[test]
fn relu_is_drelu_plus_mul_cost() {
    let vals: Vec<u64> = (-50i64..50).map(|v| (v * 977) as u64).collect();
    let n = vals.len();
    let sh = shares(&vals);
    let (res, rep) = run3(|s, p| s.relu(&sh[p], n).unwrap());
    let got = open(&res);
    for (i, v) in vals.iter().enumerate() {
        assert_eq!(got[i], if (*v as i64) >= 0 { *v } else { 0 });
    }
    let (bytes, rounds) = cost(&rep);
    assert_eq!(rounds, 10);
    assert_eq!(bytes * 8, n as u64 * (83 + 5) * L);
}

#[test]
fn mul_cost_and_value() {
    let a: Vec<u64> = (0..37u64)
        .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    let b: Vec<u64> = (0..37u64).map(|i| (i as i64 - 18) as u64).collect();
    let (sa, sb) = (shares(&a), shares(&b));
    let (res, rep) = run3(|s, p| s.mul_elem(&sa[p], &sb[p], 37).unwrap());
    assert_eq!(open(&res), relushare_mpc::ring::mul(&a, &b));
    let (bytes, rounds) = cost(&rep);
    assert_eq!((bytes * 8, rounds), (37 * 5 * L, 2));
}

fn linear_case(n_in: usize, n_out: usize, xv: &[i64], wv: &[i64]) {
    let fp = FixedPoint::default();
    let x: Vec<u64> = xv.iter().map(|&v| v as u64).collect();
    let w: Vec<u64> = wv.iter().map(|&v| v as u64).collect();
    let bias: Vec<u64> = (0..n_out).map(|i| ((i as i64 - 2) << 20) as u64).collect();
    let (sx, sw, sb) = (shares(&x), shares(&w), shares(&bias));
    let g = LinearGeom {
        n: 1,
        in_f: n_in,
        out_f: n_out,
    };
    let (res, rep) = run3(|s, p| {
        let ws = WeightShare {
            name: "fc".into(),
            w: sw[p].clone(),
            bias: sb[p].clone(),
        };
        s.linear(&sx[p], &ws, &g).unwrap()
    });
    let got = open(&res);
    let wt = kernels::transpose(&w, n_out, n_in);
    let want = kernels::matmul(&x, &wt, 1, n_in, n_out);
    for o in 0..n_out {
        let exact = relushare_mpc::fixed::trunc_plain(want[o].wrapping_add(bias[o]), fp.frac_bits);
        let d = (got[o] as i64).wrapping_sub(exact as i64);
        assert!(d == 0 || d == 1, "linear output {o}: diff {d}");
    }
    // Table 1: Linear_{m,n,v} with m = 1: 2 rounds, (2mn + 2nv + mv) l.
    let (m, nn, v) = (1u64, n_in as u64, n_out as u64);
    let (bytes, rounds) = cost(&rep);
    assert_eq!(rounds, 2);
    assert_eq!(bytes * 8, (2 * m * nn + 2 * nn * v + m * v) * L);
}

fn conv_case(g: ConvGeom, xv: &[i64], wv: &[i64]) {
    let fp = FixedPoint::default();
    let x: Vec<u64> = xv.iter().map(|&v| v as u64).collect();
    let w: Vec<u64> = wv.iter().map(|&v| v as u64).collect();
    let bias: Vec<u64> = (0..g.o).map(|i| ((i as i64 - 1) << 18) as u64).collect();
    let (sx, sw, sb) = (shares(&x), shares(&w), shares(&bias));
    let (res, rep) = run3(|s, p| {
        let ws = WeightShare {
            name: "conv".into(),
            w: sw[p].clone(),
            bias: sb[p].clone(),
        };
        s.conv2d(&sx[p], &ws, &g).unwrap()
    });
    let got = open(&res);
    let mut want = kernels::conv2d(&x, &w, &g);
    kernels::add_channel_bias(&mut want, &bias, g.oh() * g.ow());
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        let exact = relushare_mpc::fixed::trunc_plain(*b, fp.frac_bits);
        let d = (*a as i64).wrapping_sub(exact as i64);
        assert!(d == 0 || d == 1, "conv output {i}: diff {d}");
    }
    // Table 1: Conv2d_{m,i,f,o}: 2 rounds, (2 m^2 f^2 i + 2 f^2 o i + m^2 o) l, m = output side
    // (im2col rows = m^2 per image; with padding 1 and stride 1 it equals the input side).
    let (m2, f2, i, o, n) = (
        (g.oh() * g.ow()) as u64,
        (g.k * g.k) as u64,
        g.c as u64,
        g.o as u64,
        g.n as u64,
    );
    let (bytes, rounds) = cost(&rep);
    assert_eq!(rounds, 2);
    assert_eq!(
        bytes * 8,
        (2 * n * m2 * f2 * i + 2 * f2 * o * i + n * m2 * o) * L
    );
}

#[test]
fn linear_and_conv_fixed_examples() {
    linear_case(
        3,
        2,
        &[8192, -8192, 4096],
        &[8192, 8192, -8192, 16384, 0, 1],
    );
    let g = ConvGeom {
        n: 1,
        c: 2,
        h: 5,
        w: 5,
        o: 3,
        k: 3,
        stride: 1,
        pad: 1,
    };
    let x: Vec<i64> = (0..g.in_len() as i64).map(|i| (i - 20) * 300).collect();
    let w: Vec<i64> = (0..g.w_len() as i64).map(|i| (i % 7 - 3) * 2000).collect();
    conv_case(g, &x, &w);
    let g = ConvGeom {
        n: 2,
        c: 3,
        h: 7,
        w: 7,
        o: 2,
        k: 4,
        stride: 1,
        pad: 0,
    };
    let x: Vec<i64> = (0..g.in_len() as i64)
        .map(|i| (i * 37 % 91 - 45) * 150)
        .collect();
    let w: Vec<i64> = (0..g.w_len() as i64).map(|i| (i % 5 - 2) * 3000).collect();
    conv_case(g, &x, &w);
}

fn fixed_val() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..=3,
        -(1i64 << 20)..(1i64 << 20),
        -(1i64 << 30)..(1i64 << 30),
        Just(8192i64),
        Just(-8192i64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn prop_drelu(vals in prop::collection::vec(prop_oneof![-4i64..=4, -(1i64 << 60)..(1i64 << 60)], 1..40)) {
        let v: Vec<u64> = vals.iter().map(|&x| x as u64).collect();
        let n = v.len();
        let sh = shares(&v);
        let (res, _) = run3(|s, p| s.drelu(&sh[p], n).unwrap());
        let got = open(&res);
        for (i, x) in v.iter().enumerate() {
            prop_assert_eq!(got[i], drelu_plain(*x));
        }
    }

    #[test]
    fn prop_linear(n_in in 1usize..12, n_out in 1usize..6, seed in any::<u64>()) {
        let mut s = seed | 1;
        let mut next = |lim: i64| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % (2 * lim as u64 + 1)) as i64 - lim };
        let x: Vec<i64> = (0..n_in).map(|_| next(1 << 16)).collect();
        let w: Vec<i64> = (0..n_in * n_out).map(|_| next(1 << 14)).collect();
        linear_case(n_in, n_out, &x, &w);
    }

    #[test]
    fn prop_conv(c in 1usize..4, hw in 3usize..9, o in 1usize..4, k in 1usize..4, pad in 0usize..2,
                 stride in 1usize..3, n in 1usize..3, x0 in fixed_val(), seed in any::<u64>()) {
        let g = ConvGeom { n, c, h: hw, w: hw, o, k: k.min(hw), stride, pad };
        let mut s = seed | 1;
        let mut next = |lim: i64| { s ^= s << 13; s ^= s >> 7; s ^= s << 17; (s % (2 * lim as u64 + 1)) as i64 - lim };
        let mut x: Vec<i64> = (0..g.in_len()).map(|_| next(1 << 15)).collect();
        x[0] = x0.clamp(-(1 << 20), 1 << 20);
        let w: Vec<i64> = (0..g.w_len()).map(|_| next(1 << 13)).collect();
        conv_case(g, &x, &w);
    }
}

#[test]
fn shared_relu_noise_certain_flips_exactly() {
    // noise 1.0 flips every decision: y = x * (1 - [z_g >= 0]); noise 0.0: y = x * [z_g >= 0]
    let len = 12;
    let x: Vec<u64> = (0..len as i64).map(|i| ((i - 6) * 1000) as u64).collect();
    let v: Vec<u64> = (0..len as i64)
        .map(|i| ((i % 3) - 1) as u64 * 8192)
        .collect();
    let group_of: Vec<u32> = (0..len as u32).map(|i| i / 3).collect();
    for decider in [DeciderKind::Learned, DeciderKind::OneHot, DeciderKind::Fc] {
        for noise in [0.0f32, 1.0] {
            let (sx, sv) = (shares(&x), shares(&v));
            let bias = vec![(3i64 << 26) as u64; 4];
            let sb = shares(&bias);
            let (res, rep) = run3(|s, p| {
                let plan = GroupPlan {
                    len,
                    group_of: group_of.clone(),
                    num_groups: 4,
                    leaders: vec![1, 4, 7, 10],
                    decider,
                    v: if decider == DeciderKind::OneHot {
                        vec![]
                    } else {
                        sv[p].clone()
                    },
                    bias: if decider == DeciderKind::Fc {
                        sb[p].clone()
                    } else {
                        vec![]
                    },
                    noise,
                    fused: None,
                };
                s.shared_relu(&sx[p], 1, &plan).unwrap()
            });
            let got = open(&res);
            for i in 0..len {
                let g = group_of[i] as usize;
                let z: i64 = match decider {
                    DeciderKind::OneHot => x[[1, 4, 7, 10][g]] as i64,
                    _ => {
                        let mut z = (0..len)
                            .filter(|&j| group_of[j] as usize == g)
                            .map(|j| (x[j] as i64).wrapping_mul(v[j] as i64))
                            .sum::<i64>();
                        if decider == DeciderKind::Fc {
                            z += bias[g] as i64;
                        }
                        z
                    }
                };
                let keep = (z >= 0) != (noise >= 1.0);
                assert_eq!(
                    got[i],
                    if keep { x[i] } else { 0 },
                    "{decider:?} noise {noise} element {i}"
                );
            }
            let (_, rounds) = cost(&rep);
            let want = if decider == DeciderKind::OneHot && noise == 0.0 {
                10
            } else {
                12
            };
            assert_eq!(rounds, want, "{decider:?} noise {noise}");
        }
    }
}
