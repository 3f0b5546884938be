//! Privacy check: a party's view (every message it receives) has the same distribution for two
//! different secrets. For each party, each received message and each byte offset mod 8, a
//! two-sample chi-square test compares the byte histograms of the two runs.

use relushare_mpc::cost::Comm;
use relushare_mpc::fixed::FixedPoint;
use relushare_mpc::prg::Prg;
use relushare_mpc::securenn::SecureNn;
use relushare_mpc::suite::{LinearGeom, Suite, WeightShare};
use relushare_mpc::transport::MemTransport;
use std::sync::{Arc, Mutex};

mod common;
use common::{chi_z, histograms, max_z, shares_of, Log, Recording, Z_LIMIT};

/// Views (received messages after setup) of the three parties for one run of `op`.
fn views(op: impl Fn(&mut SecureNn, usize) + Sync) -> Vec<Vec<Vec<u8>>> {
    let ts = MemTransport::trio();
    let logs: Vec<Log> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    std::thread::scope(|s| {
        for (p, t) in ts.into_iter().enumerate() {
            let log = logs[p].clone();
            let op = &op;
            s.spawn(move || {
                let rec = Recording {
                    inner: t,
                    log: log.clone(),
                };
                let mut sn =
                    SecureNn::new(Comm::new(Box::new(rec)), FixedPoint::default()).unwrap();
                log.lock().unwrap().clear(); // drop the seed messages
                op(&mut sn, p);
            });
        }
    });
    logs.iter().map(|l| l.lock().unwrap().clone()).collect()
}

#[test]
fn chi_square_detects_a_leak() {
    // control: the statistic must flag bytes whose low bit carries the secret
    let mut prg = Prg::from_os().unwrap();
    let mut a = vec![0u8; 1 << 16];
    let mut b = vec![0u8; 1 << 16];
    prg.fill_bytes(&mut a);
    prg.fill_bytes(&mut b);
    for (i, x) in b.iter_mut().enumerate() {
        if i % 3 == 0 {
            *x &= !1;
        }
    }
    let (ha, hb) = (histograms(&a), histograms(&b));
    assert!((0..8).any(|o| chi_z(&ha[o], &hb[o]) > Z_LIMIT));
    let mut c = vec![0u8; 1 << 16];
    prg.fill_bytes(&mut c);
    let hc = histograms(&c);
    assert!((0..8).all(|o| chi_z(&ha[o], &hc[o]) < Z_LIMIT));
}

#[test]
fn relu_views_do_not_depend_on_the_secret() {
    let n = 4096;
    let run = |secret: i64| {
        let sh = shares_of(&vec![secret as u64; n]);
        views(move |s, p| {
            s.relu(&sh[p], n).unwrap();
        })
    };
    // 0 vs -1 ulp: opposite DReLU outcomes at the comparison's edge; then +5.0 vs -3.0
    for (a, b) in [(0i64, -1i64), (5 << 13, -3 << 13)] {
        let (va, vb) = (run(a), run(b));
        let (z, at, _) = max_z(&va, &vb);
        assert!(
            z < Z_LIMIT,
            "secrets {a} vs {b}: view differs at {at} (z = {z:.1})"
        );
    }
}

#[test]
fn linear_views_do_not_depend_on_the_input() {
    let (inf, outf) = (512, 64);
    let w: Vec<u64> = (0..inf * outf)
        .map(|i| ((i % 13) as i64 - 6) as u64 * 1000)
        .collect();
    let bias = vec![0u64; outf];
    let run = |x: i64| {
        let sx = shares_of(&vec![x as u64; inf]);
        let (sw, sb) = (shares_of(&w), shares_of(&bias));
        views(move |s, p| {
            let ws = WeightShare {
                name: "fc".into(),
                w: sw[p].clone(),
                bias: sb[p].clone(),
            };
            s.linear(
                &sx[p],
                &ws,
                &LinearGeom {
                    n: 1,
                    in_f: inf,
                    out_f: outf,
                },
            )
            .unwrap();
        })
    };
    let (va, vb) = (run(0), run(7 << 13));
    let (z, at, _) = max_z(&va, &vb);
    assert!(z < Z_LIMIT, "view differs at {at} (z = {z:.1})");
}
