//! The `fss` comparison mode for high-latency links: comparisons by function secret sharing.
//!
//! For a secret `y` (`|y| < 2^(k-1)`) masked by the dealer's `r`, P0 and P1 open `c = y + r`
//! (the same opening the `fast` suite does) and then evaluate, without any further
//! interaction, a distributed comparison function keyed at `alpha = r mod 2^(k-1)`:
//! `[y >= 0] = c_u[k-1] XOR r[k-1] XOR [c_u mod 2^(k-1) < alpha]` with
//! `c_u = c + 2^(k-1) mod 2^k` (see [`crate::fast::cmp`]). One round of `k`..64 bits per
//! party per comparison online; offline the dealer sends both parties the DCF correction words
//! (plus one bit for `r[k-1]`), which is the honest price of the single round: [`dcf`] on
//! `k - 1` bits with early termination, `16 (k - 8) + ceil((3 (k - 8) + 128) / 8)` bytes per key
//! (a third less than without it on CIFAR-10's rings). The root seeds are derived from the
//! dealer's PRG seeds. `deal_keys` deals batches of the payload DCF [`vdcf`] for the `mimo`
//! gates.

pub mod dcf;
pub mod vdcf;

use crate::error::{MpcError, Result};
use crate::fast::bits::{self, Plane};
use crate::fast::deal::Deal;
use vdcf::Shape;

/// A batch of DCF keys: shape, this party's roots, the shared corrections.
pub(crate) struct Keys {
    pub(crate) shape: Shape,
    pub(crate) root: Vec<u128>,
    pub(crate) cw: vdcf::Cws,
}

pub(crate) fn to_u128(v: &[u64]) -> Vec<u128> {
    v.chunks_exact(2)
        .map(|c| (c[0] as u128) << 64 | c[1] as u128)
        .collect()
}

/// Deal the DCF keys of one batch: points `alpha`, payloads `beta` (dealer only).
pub(crate) fn deal_keys(
    d: &mut Deal,
    shape: Shape,
    count: usize,
    alpha: Option<&[u64]>,
    beta: Option<&[u64]>,
) -> Result<Keys> {
    let (mine, both) = d.rand_u64_both(2 * count);
    let len = shape.bytes(count);
    let cw_bytes = match (&both, alpha, beta) {
        (Some((r0, r1)), Some(a), Some(b)) => {
            let cw = vdcf::gen(&vdcf::Prg::new(), &shape, a, b, &to_u128(r0), &to_u128(r1))?;
            Some(cw.to_bytes(&shape, count))
        }
        _ => None,
    };
    let got = d.public_bytes(len, cw_bytes.as_deref())?;
    if d.is_dealer() {
        return Ok(Keys {
            shape,
            root: Vec::new(),
            cw: vdcf::Cws::default(),
        });
    }
    let cw = vdcf::Cws::from_bytes(&got, &shape, count).ok_or_else(|| MpcError::Malformed {
        from: 2,
        reason: "DCF correction words".into(),
    })?;
    Ok(Keys {
        shape,
        root: to_u128(&mine),
        cw,
    })
}

/// This party's DCF comparison material for `n` values on `k` bits.
pub struct FssCmpMat {
    /// Comparison ring bits.
    pub k: u32,
    /// Elements.
    pub n: usize,
    root: Vec<u128>,
    cw: dcf::Cws,
    rtop: Plane,
}

/// Deal DCF comparison material for `n` values whose masks (dealer) are `r_secret`.
pub fn deal_fss_cmp(d: &mut Deal, n: usize, k: u32, r_secret: Option<&[u64]>) -> Result<FssCmpMat> {
    if !(2..=64).contains(&k) {
        return Err(MpcError::Param(format!(
            "fss comparison bits must be in 2..=64, got {k}"
        )));
    }
    let (mine, both) = d.rand_u64_both(2 * n);
    let top = r_secret.map(|r| bits::bit_plane(r, k - 1));
    let rtop = d.corr_bits(n, top.as_deref())?;
    let len = n * dcf::cw_bytes(k - 1);
    let prg = dcf::TreePrg::new();
    let cw_bytes = match (&both, r_secret) {
        (Some((a, b)), Some(r)) => {
            let mask = (1u64 << (k - 1)) - 1;
            let alpha: Vec<u64> = r.iter().map(|x| x & mask).collect();
            let cw = dcf::gen(&prg, k - 1, &alpha, &to_u128(a), &to_u128(b));
            Some(cw.to_bytes())
        }
        _ => None,
    };
    let got = d.public_bytes(len, cw_bytes.as_deref())?;
    if d.is_dealer() {
        return Ok(FssCmpMat {
            k,
            n,
            root: Vec::new(),
            cw: dcf::Cws::default(),
            rtop: Vec::new(),
        });
    }
    let cw = dcf::Cws::from_bytes(&got, n, k - 1).ok_or_else(|| MpcError::Malformed {
        from: 2,
        reason: "DCF correction words".into(),
    })?;
    Ok(FssCmpMat {
        k,
        n,
        root: to_u128(&mine),
        cw,
        rtop,
    })
}

/// XOR shares of `[y >= 0]` from the public `c = y + r` (no communication).
pub fn drelu_bits(me: usize, mat: &FssCmpMat, c: &[u64]) -> Result<Plane> {
    if c.len() != mat.n {
        return Err(MpcError::Shape(format!(
            "fss comparison of {} values, material for {}",
            c.len(),
            mat.n
        )));
    }
    let k = mat.k;
    let half = 1u64 << (k - 1);
    let mask = half - 1;
    let cu: Vec<u64> = c.iter().map(|x| x.wrapping_add(half)).collect();
    let x: Vec<u64> = cu.iter().map(|v| v & mask).collect();
    let w = dcf::eval(&dcf::TreePrg::new(), me as u64, &mat.root, &mat.cw, &x);
    let mut b = bits::from_fn(mat.n, |i| w[i] == 1);
    bits::xor_assign(&mut b, &mat.rtop);
    if me == 0 {
        let top = bits::bit_plane(&cu, k - 1);
        bits::xor_assign(&mut b, &top);
    }
    Ok(b)
}

/// Dealer bytes of `n` fss comparisons: (to P1, to P0).
pub fn offline_bytes(n: usize, k: u32) -> (usize, usize) {
    let cw = n * dcf::cw_bytes(k - 1);
    (cw + bits::plane_bytes(n), cw)
}
