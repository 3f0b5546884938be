//! Helpers shared by the view-uniformity tests: a transport that records what a party
//! receives, and a two-sample chi-square test on byte histograms of the recorded views.
#![allow(dead_code)]

use relushare_mpc::prg::Prg;
use relushare_mpc::runner::share_vec;
use relushare_mpc::transport::{MemTransport, Transport};
use relushare_mpc::MpcError;
use std::sync::{Arc, Mutex};

pub type Log = Arc<Mutex<Vec<Vec<u8>>>>;

/// A transport that records every message it receives.
pub struct Recording {
    pub inner: MemTransport,
    pub log: Log,
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

#[path = "../../src/view_stats.rs"]
mod view_stats;
pub use view_stats::chi_z;

pub fn histograms(msg: &[u8]) -> Vec<[u64; 256]> {
    let mut h = vec![[0u64; 256]; 8];
    for (i, &b) in msg.iter().enumerate() {
        h[i % 8][b as usize] += 1;
    }
    h
}

/// Largest z over parties, messages (>= 16 KiB) and byte offsets; also checks that the
/// message pattern (count and sizes) is identical.
pub fn max_z(va: &[Vec<Vec<u8>>], vb: &[Vec<Vec<u8>>]) -> (f64, String, usize) {
    let mut worst = (f64::MIN, String::new(), 0);
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
            worst.2 += 1;
            let (ha, hb) = (histograms(ma), histograms(mb));
            for o in 0..8 {
                let z = chi_z(&ha[o], &hb[o]);
                if z > worst.0 {
                    worst = (z, format!("party {p} message {k} offset {o}"), worst.2);
                }
            }
        }
    }
    worst
}

pub fn shares_of(v: &[u64]) -> [Vec<u64>; 3] {
    let mut prg = Prg::from_os().unwrap();
    let (a, b) = share_vec(&mut prg, v);
    [a, b, Vec::new()]
}

pub const Z_LIMIT: f64 = 6.0;
