//! Seed-compressed dealer material.
//!
//! P2 (the dealer) shares one PRG seed with P0 and one with P1. A *random* shared value costs
//! nothing to distribute: P0's share is the next output of the P0 stream, P1's share the next
//! output of the P1 stream, and the dealer, who runs both streams, knows the secret (their sum,
//! or XOR for bits). A *correlated* value `v` (a product, the bits of a random mask, ...) costs
//! exactly its size once: P0's share is PRG output and P1 receives the correction
//! `v - share0` (or `v ^ share0`), appended to one byte buffer per layer. The same dealing code
//! runs on all three parties ([`Deal`] knows its role), so the streams stay in lockstep.

use crate::error::{MpcError, Result};
use crate::fast::bits::{self, Plane};
use crate::prg::Prg;

/// The dealer's view of a value drawn from both streams: (P0's values, P1's values).
pub type DealerPair = (Vec<u64>, Vec<u64>);

/// Who is running the dealing code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// P2: knows both streams, writes corrections.
    Dealer,
    /// P0: its shares are all PRG output.
    P0,
    /// P1: random shares from its stream, correlated shares read from the corrections.
    P1,
}

/// A dealing context of one party.
pub struct Deal {
    role: Role,
    s0: Option<Prg>,
    s1: Option<Prg>,
    corr: Vec<u8>,
    pos: usize,
    corr0: Vec<u8>,
    pos0: usize,
}

/// A freshly dealt random arithmetic value: this party's share, and the secret (dealer only).
pub struct RandU64 {
    /// This party's share (empty for the dealer).
    pub mine: Vec<u64>,
    /// The secret (dealer only).
    pub secret: Option<Vec<u64>>,
}

/// A freshly dealt random bit vector (XOR-shared).
pub struct RandBits {
    /// This party's share plane (empty for the dealer).
    pub mine: Plane,
    /// The secret plane (dealer only).
    pub secret: Option<Plane>,
}

impl Deal {
    /// The dealer, with its streams shared with P0 and P1.
    pub fn dealer(with_p0: Prg, with_p1: Prg) -> Deal {
        Deal {
            role: Role::Dealer,
            s0: Some(with_p0),
            s1: Some(with_p1),
            corr: Vec::new(),
            pos: 0,
            corr0: Vec::new(),
            pos0: 0,
        }
    }

    /// P0, with its stream shared with the dealer.
    pub fn p0(with_dealer: Prg) -> Deal {
        Deal {
            role: Role::P0,
            s0: Some(with_dealer),
            s1: None,
            corr: Vec::new(),
            pos: 0,
            corr0: Vec::new(),
            pos0: 0,
        }
    }

    /// P1, with its stream shared with the dealer; corrections are supplied with [`Deal::feed`].
    pub fn p1(with_dealer: Prg) -> Deal {
        Deal {
            role: Role::P1,
            s0: None,
            s1: Some(with_dealer),
            corr: Vec::new(),
            pos: 0,
            corr0: Vec::new(),
            pos0: 0,
        }
    }

    /// This context's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Is this the dealer?
    pub fn is_dealer(&self) -> bool {
        self.role == Role::Dealer
    }

    /// Dealer: make room for `bytes` more bytes of corrections (one allocation for a layer's
    /// message instead of repeated growth); a no-op for P0 and P1.
    pub fn reserve_corrections(&mut self, bytes: usize) {
        if self.role == Role::Dealer {
            self.corr.reserve(bytes);
        }
    }

    /// Dealer: take the corrections written so far (to be sent to P1).
    pub fn take_corrections(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.corr)
    }

    /// P1: install the corrections received from the dealer (replacing any unread ones).
    pub fn feed(&mut self, corr: Vec<u8>) {
        self.corr = corr;
        self.pos = 0;
    }

    /// Dealer: take the public material written so far for P0 (see [`Deal::public_bytes`]).
    pub fn take_public0(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.corr0)
    }

    /// P0: install the public material received from the dealer.
    pub fn feed0(&mut self, b: Vec<u8>) {
        self.corr0 = b;
        self.pos0 = 0;
    }

    /// Material that both P0 and P1 need verbatim (e.g. DCF correction words): the dealer
    /// passes it and it is sent to both; P0 and P1 get `len` bytes back.
    pub fn public_bytes(&mut self, len: usize, data: Option<&[u8]>) -> Result<Vec<u8>> {
        match self.role {
            Role::Dealer => {
                let d = data.ok_or_else(|| MpcError::Param("dealer data missing".into()))?;
                if d.len() != len {
                    return Err(MpcError::Shape(format!(
                        "public material of {} bytes, expected {len}",
                        d.len()
                    )));
                }
                self.corr.extend_from_slice(d);
                self.corr0.extend_from_slice(d);
                Ok(Vec::new())
            }
            Role::P1 => Ok(self.take(len)?.to_vec()),
            Role::P0 => {
                if self.pos0 + len > self.corr0.len() {
                    return Err(MpcError::Malformed {
                        from: 2,
                        reason: format!("dealer material too short for P0: need {len} bytes"),
                    });
                }
                let v = self.corr0[self.pos0..self.pos0 + len].to_vec();
                self.pos0 += len;
                Ok(v)
            }
        }
    }

    /// Random ring elements where the dealer needs each party's value separately (e.g. DCF
    /// root seeds): returns (this party's values, the dealer's (P0 values, P1 values)).
    pub fn rand_u64_both(&mut self, n: usize) -> (Vec<u64>, Option<DealerPair>) {
        match self.role {
            Role::Dealer => {
                let a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(n);
                let b = self.s1.as_mut().expect("dealer stream 1").gen_u64s(n);
                (Vec::new(), Some((a, b)))
            }
            Role::P0 => (self.s0.as_mut().expect("stream").gen_u64s(n), None),
            Role::P1 => (self.s1.as_mut().expect("stream").gen_u64s(n), None),
        }
    }

    /// P0/P1: check that every received byte was consumed.
    pub fn finish(&self) -> Result<()> {
        if self.role == Role::P0 && self.pos0 != self.corr0.len() {
            return Err(MpcError::Malformed {
                from: 2,
                reason: format!(
                    "dealer material for P0 has {} bytes, {} were expected",
                    self.corr0.len(),
                    self.pos0
                ),
            });
        }
        if self.role == Role::P1 && self.pos != self.corr.len() {
            return Err(MpcError::Malformed {
                from: 2,
                reason: format!(
                    "dealer material has {} bytes, {} were expected",
                    self.corr.len(),
                    self.pos
                ),
            });
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.pos + n > self.corr.len() {
            return Err(MpcError::Malformed {
                from: 2,
                reason: format!(
                    "dealer material too short: need {} bytes at offset {}, have {}",
                    n,
                    self.pos,
                    self.corr.len()
                ),
            });
        }
        let s = &self.corr[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A random ring vector of length `n` (free: both shares are PRG output).
    pub fn rand_u64(&mut self, n: usize) -> RandU64 {
        match self.role {
            Role::Dealer => {
                let a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(n);
                let b = self.s1.as_mut().expect("dealer stream 1").gen_u64s(n);
                let s = a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect();
                RandU64 {
                    mine: Vec::new(),
                    secret: Some(s),
                }
            }
            Role::P0 => RandU64 {
                mine: self.s0.as_mut().expect("stream").gen_u64s(n),
                secret: None,
            },
            Role::P1 => RandU64 {
                mine: self.s1.as_mut().expect("stream").gen_u64s(n),
                secret: None,
            },
        }
    }

    /// A random bit vector of `n` bits (free).
    pub fn rand_bits(&mut self, n: usize) -> RandBits {
        let w = bits::words(n);
        match self.role {
            Role::Dealer => {
                let mut a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(w);
                let mut b = self.s1.as_mut().expect("dealer stream 1").gen_u64s(w);
                bits::mask_tail(&mut a, n);
                bits::mask_tail(&mut b, n);
                RandBits {
                    mine: Vec::new(),
                    secret: Some(bits::xor(&a, &b)),
                }
            }
            Role::P0 | Role::P1 => {
                let s = if self.role == Role::P0 {
                    self.s0.as_mut()
                } else {
                    self.s1.as_mut()
                };
                let mut a = s.expect("stream").gen_u64s(w);
                bits::mask_tail(&mut a, n);
                RandBits {
                    mine: a,
                    secret: None,
                }
            }
        }
    }

    /// A correlated ring vector: the dealer passes the secret; P0 gets PRG output, P1 the
    /// correction (8 bytes per element). Returns this party's share (empty for the dealer).
    pub fn corr_u64(&mut self, n: usize, secret: Option<&[u64]>) -> Result<Vec<u64>> {
        match self.role {
            Role::Dealer => {
                let s = secret.ok_or_else(|| MpcError::Param("dealer secret missing".into()))?;
                if s.len() != n {
                    return Err(MpcError::Shape(format!(
                        "dealer secret of {} for {n}",
                        s.len()
                    )));
                }
                let mut a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(n);
                for (y, x) in a.iter_mut().zip(s) {
                    *y = x.wrapping_sub(*y).to_le();
                }
                // SAFETY: any u64 memory may be viewed as bytes; the values are little-endian.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        a.as_ptr() as *const u8,
                        std::mem::size_of_val(&a[..]),
                    )
                };
                self.corr.extend_from_slice(bytes);
                Ok(Vec::new())
            }
            Role::P0 => Ok(self.s0.as_mut().expect("stream").gen_u64s(n)),
            Role::P1 => {
                let b = self.take(8 * n)?;
                let mut out = vec![0u64; n];
                // SAFETY: `out` has exactly `8 n == b.len()` bytes; any bytes are a valid u64.
                unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, 8 * n) }
                    .copy_from_slice(b);
                for v in out.iter_mut() {
                    *v = u64::from_le(*v);
                }
                Ok(out)
            }
        }
    }

    /// Shares mod `2^bits` of the dealer's secret `n` values: P0's share is drawn from its
    /// stream, P1 receives `secret - share0 mod 2^bits` bit-packed (`ceil(n * bits / 8)` bytes).
    pub fn corr_kbit(&mut self, n: usize, bits: u32, secret: Option<&[u64]>) -> Result<Vec<u64>> {
        let mask = crate::fss::vdcf::ring_mask(bits);
        match self.role {
            Role::Dealer => {
                let s = secret.ok_or_else(|| MpcError::Param("dealer secret missing".into()))?;
                if s.len() != n {
                    return Err(MpcError::Shape(format!(
                        "dealer secret of {} for {n}",
                        s.len()
                    )));
                }
                let mut a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(n);
                for (y, x) in a.iter_mut().zip(s) {
                    *y = x.wrapping_sub(*y) & mask;
                }
                self.corr.extend_from_slice(&bits::pack_kbit(&a, bits));
                Ok(Vec::new())
            }
            Role::P0 => {
                let mut a = self.s0.as_mut().expect("stream").gen_u64s(n);
                for v in a.iter_mut() {
                    *v &= mask;
                }
                Ok(a)
            }
            Role::P1 => {
                let b = self.take((n * bits as usize).div_ceil(8))?.to_vec();
                bits::unpack_kbit(&b, n, bits, 2)
            }
        }
    }

    /// A correlated bit vector of `n` bits (`ceil(n/8)` bytes of correction).
    pub fn corr_bits(&mut self, n: usize, secret: Option<&[u64]>) -> Result<Plane> {
        let w = bits::words(n);
        match self.role {
            Role::Dealer => {
                let s = secret.ok_or_else(|| MpcError::Param("dealer secret missing".into()))?;
                let mut a = self.s0.as_mut().expect("dealer stream 0").gen_u64s(w);
                bits::mask_tail(&mut a, n);
                let c = bits::xor(&s[..w], &a);
                let bytes = bits::pack_planes(&[&c], n);
                self.corr.extend_from_slice(&bytes);
                Ok(Vec::new())
            }
            Role::P0 => {
                let mut a = self.s0.as_mut().expect("stream").gen_u64s(w);
                bits::mask_tail(&mut a, n);
                Ok(a)
            }
            Role::P1 => {
                let pb = bits::plane_bytes(n);
                let b = self.take(pb)?.to_vec();
                Ok(bits::unpack_planes(&b, 1, n, 2)?.pop().unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trio() -> (Deal, Deal, Deal) {
        let (a, b) = ([3u8; 16], [4u8; 16]);
        (
            Deal::dealer(Prg::from_seed(a), Prg::from_seed(b)),
            Deal::p0(Prg::from_seed(a)),
            Deal::p1(Prg::from_seed(b)),
        )
    }

    #[test]
    fn shares_reconstruct() {
        let (mut d, mut p0, mut p1) = trio();
        let r = d.rand_u64(10);
        let r0 = p0.rand_u64(10);
        let r1 = p1.rand_u64(10);
        let sec = r.secret.unwrap();
        for ((a, b), s) in r0.mine.iter().zip(&r1.mine).zip(&sec) {
            assert_eq!(a.wrapping_add(*b), *s);
        }
        let sq: Vec<u64> = sec.iter().map(|x| x.wrapping_mul(*x)).collect();
        d.corr_u64(10, Some(&sq)).unwrap();
        let bsec = d.rand_bits(70).secret.unwrap();
        d.corr_bits(70, Some(&bsec)).unwrap();
        let c = d.take_corrections();
        assert_eq!(c.len(), 80 + 9);
        let q0 = p0.corr_u64(10, None).unwrap();
        let b0 = p0.rand_bits(70).mine;
        let c0 = p0.corr_bits(70, None).unwrap();
        p1.feed(c);
        let q1 = p1.corr_u64(10, None).unwrap();
        let b1 = p1.rand_bits(70).mine;
        let c1 = p1.corr_bits(70, None).unwrap();
        p1.finish().unwrap();
        for i in 0..10 {
            assert_eq!(q0[i].wrapping_add(q1[i]), sq[i]);
        }
        assert_eq!(bits::xor(&b0, &b1), bsec);
        assert_eq!(bits::xor(&c0, &c1), bsec);
        assert!(p1.corr_u64(1, None).is_err());
    }
}
