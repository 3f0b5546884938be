//! Privacy check: a party's view (every message it receives) has the same distribution for two
//! different secrets. For each party, each received message and each byte offset mod 8, a
//! two-sample chi-square test compares the byte histograms of the two runs.

use relushare_mpc::cost::Comm;
use relushare_mpc::fixed::FixedPoint;
use relushare_mpc::prg::Prg;
use relushare_mpc::runner::share_vec;
use relushare_mpc::securenn::SecureNn;
use relushare_mpc::suite::{LinearGeom, Suite, WeightShare};
use relushare_mpc::transport::{MemTransport, Transport};
use relushare_mpc::MpcError;
use std::sync::{Arc, Mutex};

type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// A transport that records every message it receives.
struct Recording {
    inner: MemTransport,
    log: Log,
}

impl Transport for Recording {
    fn party(&self) -> usize {
        self.inner.party()
    }
    fn send(&mut self, to: usize, msg: &[u8]) -> Result<(), MpcError> {
        self.inner.send(to, msg)
    }
    fn recv(&mut self, from: usize) -> Result<Vec<u8>, MpcError> {
        let m = self.inner.recv(from)?;
        self.log.lock().unwrap().push(m.clone());
        Ok(m)
    }
}

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

/// z-score of the two-sample chi-square statistic of two byte histograms.
fn chi_z(a: &[u64; 256], b: &[u64; 256]) -> f64 {
    let (na, nb) = (a.iter().sum::<u64>() as f64, b.iter().sum::<u64>() as f64);
    let (ka, kb) = ((nb / na).sqrt(), (na / nb).sqrt());
    let mut chi = 0.0;
    let mut bins = 0;
    for i in 0..256 {
        let s = (a[i] + b[i]) as f64;
        if s > 0.0 {
            let d = ka * a[i] as f64 - kb * b[i] as f64;
            chi += d * d / s;
            bins += 1;
        }
    }
    let df = (bins - 1).max(1) as f64;
    (chi - df) / (2.0 * df).sqrt()
}

fn histograms(msg: &[u8]) -> Vec<[u64; 256]> {
    let mut h = vec![[0u64; 256]; 8];
    for (i, &b) in msg.iter().enumerate() {
        h[i % 8][b as usize] += 1;
    }
    h
}

/// Largest z-score over parties, messages and byte offsets (messages of >= 16 KiB).
fn max_z(va: &[Vec<Vec<u8>>], vb: &[Vec<Vec<u8>>]) -> (f64, String) {
    let mut worst = (f64::MIN, String::new());
    for p in 0..3 {
        assert_eq!(
            va[p].len(),
            vb[p].len(),
            "party {p}: number of messages differs"
        );
        for (k, (ma, mb)) in va[p].iter().zip(&vb[p]).enumerate() {
            assert_eq!(ma.len(), mb.len(), "party {p} message {k}: length differs");
            if ma.len() < 16 * 1024 {
                continue;
            }
            let (ha, hb) = (histograms(ma), histograms(mb));
            for o in 0..8 {
                let z = chi_z(&ha[o], &hb[o]);
                if z > worst.0 {
                    worst = (z, format!("party {p} message {k} offset {o}"));
                }
            }
        }
    }
    worst
}

fn shares_of(v: &[u64]) -> [Vec<u64>; 3] {
    let mut prg = Prg::from_os().unwrap();
    let (a, b) = share_vec(&mut prg, v);
    [a, b, Vec::new()]
}

const Z_LIMIT: f64 = 6.0;

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
        let (z, at) = max_z(&va, &vb);
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
    let (z, at) = max_z(&va, &vb);
    assert!(z < Z_LIMIT, "view differs at {at} (z = {z:.1})");
}
