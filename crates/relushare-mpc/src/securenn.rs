//! The `securenn` protocol suite: a faithful implementation of SecureNN (Wagh, Gupta,
//! Chandran 2019) as used by PySyft, the paper's baseline. There is no offline phase: like
//! PySyft, every message (including P2's triples) is sent during inference and counted online.
//!
//! Protocols and their costs (l = 64 bits, log p = 8 bits: a Z_67 element travels as one byte;
//! a round is one step of the schedule, see [`crate::cost`]):
//!
//! | op | rounds | bits | schedule |
//! |----|--------|------|----------|
//! | MatMul X[m x n] * Y[n x v] | 2 | (2mn + 2nv + mv) l | P2 -> P1: C1 (mv); P0 <-> P1: E, F |
//! | Conv2d (im2col; m = output side) | 2 | (2 m^2 f^2 i + 2 f^2 o i + m^2 o) l | as MatMul |
//! | Mul / SelectShare | 2 | 5 l | P2 -> P1: c1; P0 <-> P1: e, f |
//! | PrivateCompare | 1 | 2 l log p | P0, P1 -> P2 |
//! | ShareConvert | 4 | 4 l log p + 6 l | see [`SecureNn::drelu`] |
//! | ComputeMSB | 4 | 4 l log p + 13 l | its dealer message rides in ShareConvert's round 2, its Mul triple in its own round 3 |
//! | DReLU | 8 | (8 log p + 19) l = 83 l | ShareConvert(2a) then ComputeMSB |
//! | ReLU = DReLU + SelectShare | 10 | 88 l | |
//!
//! Triples: P2 shares one PRG seed with P0 and one with P1; P0's triple share (A0, B0, C0) and
//! P1's (A1, B1) come from those seeds, and P2 sends only C1 = AB - C0 to P1.
//! The Z_p bit shares, wrap shares and MSB dealer values are sent to both parties in full, as
//! SecureNN counts them.

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::fixed::FixedPoint;
use crate::kernels::{self, ConvGeom};
use crate::prg::{PartyPrgs, Prg};
use crate::ring::{self, Zp};
use crate::suite::{DeciderKind, GroupPlan, LinearGeom, Primitives, Shared, Suite, WeightShare};
use rayon::prelude::*;

/// The prime of PrivateCompare.
pub const P: u8 = 67;
const ZP: Zp = Zp { p: P };
/// The odd modulus L - 1 = 2^64 - 1 of ShareConvert's output ring.
const M: u64 = u64::MAX;

/// `(a + b) mod (2^64 - 1)` for any `a, b` (reduced first).
#[inline]
fn add_m(a: u64, b: u64) -> u64 {
    let (a, b) = (red_m(a), red_m(b));
    let (s, carry) = a.overflowing_add(b);
    // a + b = s + 2^64 * carry and 2^64 = 1 (mod 2^64 - 1)
    red_m(s + u64::from(carry))
}
/// Reduce into `[0, 2^64 - 1)`.
#[inline]
fn red_m(a: u64) -> u64 {
    if a == M {
        0
    } else {
        a
    }
}
/// `(a - b) mod (2^64 - 1)`.
#[inline]
fn sub_m(a: u64, b: u64) -> u64 {
    add_m(a, M - red_m(b))
}
/// `2a mod (2^64 - 1)`.
#[inline]
fn dbl_m(a: u64) -> u64 {
    add_m(a, a)
}

/// One party of the SecureNN suite.
pub struct SecureNn {
    comm: Comm,
    prgs: PartyPrgs,
    fp: FixedPoint,
    me: usize,
}

/// Shares of an elementwise Beaver triple held by P0/P1 (empty for P2).
struct ElemTriple {
    a: Vec<u64>,
    b: Vec<u64>,
    c: Vec<u64>,
}

impl SecureNn {
    /// Create party `comm.party()`'s suite; agrees on pairwise PRG seeds (one round, counted
    /// under the current label, "setup" in the runner).
    pub fn new(mut comm: Comm, fp: FixedPoint) -> Result<SecureNn> {
        let prgs = PartyPrgs::setup(&mut comm)?;
        let me = comm.party();
        Ok(SecureNn { comm, prgs, fp, me })
    }

    fn prg(&mut self, j: usize) -> Result<&mut Prg> {
        self.prgs.pair(j)
    }

    // ---------------------------------------------------------------- Beaver products

    /// Local half of an elementwise triple: P0 derives (a0, b0, c0) and P1 (a1, b1) from the
    /// seeds shared with P2; P2 derives both and returns `c1` (to be sent to P1).
    fn elem_triple(&mut self, n: usize) -> Result<(ElemTriple, Option<Vec<u64>>)> {
        match self.me {
            0 => {
                let p = self.prg(2)?;
                let (a, b, c) = (p.gen_u64s(n), p.gen_u64s(n), p.gen_u64s(n));
                Ok((ElemTriple { a, b, c }, None))
            }
            1 => {
                let p = self.prg(2)?;
                let (a, b) = (p.gen_u64s(n), p.gen_u64s(n));
                Ok((
                    ElemTriple {
                        a,
                        b,
                        c: Vec::new(),
                    },
                    None,
                ))
            }
            _ => {
                let p0 = self.prg(0)?;
                let (a0, b0, c0) = (p0.gen_u64s(n), p0.gen_u64s(n), p0.gen_u64s(n));
                let p1 = self.prg(1)?;
                let (a1, b1) = (p1.gen_u64s(n), p1.gen_u64s(n));
                let c1: Vec<u64> = (0..n)
                    .map(|i| {
                        let a = a0[i].wrapping_add(a1[i]);
                        let b = b0[i].wrapping_add(b1[i]);
                        a.wrapping_mul(b).wrapping_sub(c0[i])
                    })
                    .collect();
                Ok((
                    ElemTriple {
                        a: vec![],
                        b: vec![],
                        c: vec![],
                    },
                    Some(c1),
                ))
            }
        }
    }

    /// The opening round of an elementwise product with a ready triple (P0 <-> P1).
    fn mul_open(&mut self, x: &[u64], y: &[u64], t: &ElemTriple) -> Result<Shared> {
        if self.me == 2 {
            return Ok(Vec::new());
        }
        let n = x.len();
        let mut ef = Vec::with_capacity(2 * n);
        ef.extend(x.iter().zip(&t.a).map(|(x, a)| x.wrapping_sub(*a)));
        ef.extend(y.iter().zip(&t.b).map(|(y, b)| y.wrapping_sub(*b)));
        let other = self.comm.exchange_u64(1 - self.me, &ef)?;
        let me0 = self.me == 0;
        Ok((0..n)
            .map(|i| {
                let e = ef[i].wrapping_add(other[i]);
                let f = ef[n + i].wrapping_add(other[n + i]);
                let mut z = e
                    .wrapping_mul(t.b[i])
                    .wrapping_add(t.a[i].wrapping_mul(f))
                    .wrapping_add(t.c[i]);
                if me0 {
                    z = z.wrapping_add(e.wrapping_mul(f));
                }
                z
            })
            .collect())
    }

    /// Matrix Beaver product `Z = X * Y` for X `[m x k]`, Y `[k x v]`, both shared. 2 rounds,
    /// (2mk + 2kv + mv) l bits.
    fn matmul_shared(
        &mut self,
        x: &[u64],
        y: &[u64],
        m: usize,
        k: usize,
        v: usize,
    ) -> Result<Shared> {
        match self.me {
            2 => {
                let p0 = self.prg(0)?;
                let (a0, b0, c0) = (p0.gen_u64s(m * k), p0.gen_u64s(k * v), p0.gen_u64s(m * v));
                let p1 = self.prg(1)?;
                let (a1, b1) = (p1.gen_u64s(m * k), p1.gen_u64s(k * v));
                let a = ring::add(&a0, &a1);
                let b = ring::add(&b0, &b1);
                let mut c1 = kernels::matmul(&a, &b, m, k, v);
                ring::sub_assign(&mut c1, &c0);
                self.comm.send_u64(1, &c1)?;
                Ok(Vec::new())
            }
            me => {
                ring::check_len("matmul left operand", x, m * k)?;
                ring::check_len("matmul right operand", y, k * v)?;
                let p = self.prg(2)?;
                let (a, b) = (p.gen_u64s(m * k), p.gen_u64s(k * v));
                let c = if me == 0 {
                    p.gen_u64s(m * v)
                } else {
                    self.comm.recv_u64(2, m * v)?
                };
                let mut ef = Vec::with_capacity(m * k + k * v);
                ef.extend(x.iter().zip(&a).map(|(x, a)| x.wrapping_sub(*a)));
                ef.extend(y.iter().zip(&b).map(|(y, b)| y.wrapping_sub(*b)));
                let other = self.comm.exchange_u64(1 - me, &ef)?;
                ring::add_assign(&mut ef, &other);
                let (e, f) = ef.split_at(m * k);
                // Z_j = E * (B_j + [j=0] F) + A_j * F + C_j
                let bf = if me == 0 { ring::add(&b, f) } else { b };
                let mut z = kernels::matmul(e, &bf, m, k, v);
                kernels::matmul_into(&a, f, &mut z, m, k, v);
                ring::add_assign(&mut z, &c);
                Ok(z)
            }
        }
    }

    // ---------------------------------------------------------------- PrivateCompare

    /// Local part of PrivateCompare for one element: P_j's masked, permuted vector d_j (64
    /// bytes) for the predicate `beta XOR [x > t]`, given its Z_p shares of the bits of x
    /// (`xb`, LSB first), the public `t`, the common bit `beta`, and common randomness
    /// (`s`: 64 nonzero multipliers, `perm`: a permutation of 0..64).
    fn pc_local(me: usize, xb: &[u8], t: u64, beta: u8, s: &[u8], perm: &[u8], out: &mut [u8]) {
        let j0 = u32::from(me == 0);
        let p = P as u32;
        let mut c = [0u32; 64];
        if beta == 1 && t == u64::MAX {
            // [x <= 2^64 - 1] is always true: exactly one zero, as in the regular case.
            for (i, ci) in c.iter_mut().enumerate() {
                *ci = if i == 0 { 0 } else { j0 };
            }
        } else {
            let u = if beta == 0 { t } else { t + 1 };
            // Integers stay below 64 * 2p, so one reduction per c_i suffices.
            let mut suffix = 0u32; // sum of the shares of w_k for k > i
            for i in (0..64).rev() {
                let ub = ((u >> i) & 1) as u32;
                let xi = xb[i] as u32;
                let ci = if beta == 0 {
                    // [x > t]: c_i = t_i - x_i + 1 + sum_{k>i} w_k
                    j0 * (ub + 1) + p - xi + suffix
                } else {
                    // [t + 1 > x]: c_i = x_i - u_i + 1 + sum_{k>i} w_k
                    xi + j0 * (1 + p - ub) + suffix
                };
                c[i] = ci % p;
                // w_i = x_i XOR u_i = x_i (1 - 2 u_i) + [j=0] u_i
                suffix += if ub == 1 { p - xi + j0 } else { xi };
            }
        }
        for i in 0..64 {
            out[perm[i] as usize] = (s[i] as u32 * c[i] % p) as u8;
        }
    }

    /// Common randomness of PrivateCompare for `n` elements (P0 and P1 draw identically).
    fn pc_randomness(prg: &mut Prg, n: usize) -> (Vec<u8>, Vec<u8>) {
        let s: Vec<u8> = prg
            .gen_zp(P - 1, n * 64)
            .into_iter()
            .map(|v| v + 1)
            .collect();
        let mut perm = vec![0u8; n * 64];
        let r = prg.gen_u64s(n * 64);
        perm.par_chunks_mut(64).enumerate().for_each(|(e, p)| {
            for (i, v) in p.iter_mut().enumerate() {
                *v = i as u8;
            }
            for i in (1..64).rev() {
                let j = (r[e * 64 + i] % (i as u64 + 1)) as usize;
                p.swap(i, j);
            }
        });
        (s, perm)
    }

    /// P2's side of PrivateCompare: the bit `beta'` = [some reconstructed d_i is zero].
    fn pc_open(d0: &[u8], d1: &[u8], n: usize) -> Vec<u8> {
        (0..n)
            .into_par_iter()
            .map(|e| {
                let z = (0..64).any(|i| ZP.add(d0[e * 64 + i], d1[e * 64 + i]) == 0);
                u8::from(z)
            })
            .collect()
    }

    /// P2: split bits of each value into Z_p shares for P0 and P1 (64 bytes per value each).
    fn share_bits_zp(prg: &mut Prg, vals: &[u64]) -> (Vec<u8>, Vec<u8>) {
        let s0 = prg.gen_zp(P, vals.len() * 64);
        let mut s1 = vec![0u8; vals.len() * 64];
        for (e, (&v, dst)) in vals.iter().zip(s1.chunks_mut(64)).enumerate() {
            let src = &s0[e * 64..(e + 1) * 64];
            for i in 0..64 {
                // (bit - s0) mod p without a division
                let d = ((v >> i) & 1) as u8 + P - src[i];
                dst[i] = if d >= P { d - P } else { d };
            }
        }
        (s0, s1)
    }

    fn split_msg(b: &[u8], from: usize, parts: &[usize]) -> Result<Vec<Vec<u8>>> {
        let total: usize = parts.iter().sum();
        if b.len() != total {
            return Err(MpcError::Malformed {
                from,
                reason: format!("expected {total} bytes, got {}", b.len()),
            });
        }
        let mut out = Vec::new();
        let mut off = 0;
        for &p in parts {
            out.push(b[off..off + p].to_vec());
            off += p;
        }
        Ok(out)
    }

    fn u64s(b: &[u8], from: usize) -> Result<Vec<u64>> {
        ring::bytes_to_u64s(b, from)
    }

    fn zp_bytes(b: Vec<u8>, from: usize) -> Result<Vec<u8>> {
        ZP.check(&b, from)?;
        Ok(b)
    }

    /// Shares in Z_{L-1} must be < L - 1.
    fn check_m(v: &[u64], from: usize) -> Result<()> {
        if v.contains(&M) {
            return Err(MpcError::Malformed {
                from,
                reason: "element outside Z_(2^64-1)".into(),
            });
        }
        Ok(())
    }
}

impl Suite for SecureNn {
    fn name(&self) -> &'static str {
        "securenn"
    }

    fn comm(&mut self) -> &mut Comm {
        &mut self.comm
    }

    fn frac_bits(&self) -> u32 {
        self.fp.frac_bits
    }

    fn party(&mut self) -> usize {
        self.me
    }

    fn conv2d(&mut self, x: &Shared, w: &WeightShare, g: &ConvGeom) -> Result<Shared> {
        g.validate()?;
        let (rows, cols) = (g.col_rows(), g.col_cols());
        let total_cols = g.n * cols;
        // Stack the batch's im2col matrices side by side: [c*k*k, n*oh*ow].
        let xcol = if self.me == 2 {
            Vec::new()
        } else {
            ring::check_len("conv input", x, g.in_len())?;
            ring::check_len("conv weight", &w.w, g.w_len())?;
            ring::check_len("conv bias", &w.bias, g.o)?;
            let per = kernels::im2col_batch(x, g);
            let mut s = vec![0u64; rows * total_cols];
            for img in 0..g.n {
                for r in 0..rows {
                    let src =
                        &per[img * rows * cols + r * cols..img * rows * cols + (r + 1) * cols];
                    s[r * total_cols + img * cols..r * total_cols + (img + 1) * cols]
                        .copy_from_slice(src);
                }
            }
            s
        };
        let z = self.matmul_shared(&w.w, &xcol, g.o, rows, total_cols)?;
        if self.me == 2 {
            return Ok(Vec::new());
        }
        // [o, n*cols] -> [n, o, cols], add bias (2f), truncate.
        let mut y = vec![0u64; g.out_len()];
        for o in 0..g.o {
            for img in 0..g.n {
                let src = &z[o * total_cols + img * cols..o * total_cols + (img + 1) * cols];
                let dst = &mut y[(img * g.o + o) * cols..(img * g.o + o + 1) * cols];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.wrapping_add(w.bias[o]);
                }
            }
        }
        let f = self.fp.frac_bits;
        self.truncate(&mut y, f)?;
        Ok(y)
    }

    fn linear(&mut self, x: &Shared, w: &WeightShare, g: &LinearGeom) -> Result<Shared> {
        let wt = if self.me == 2 {
            Vec::new()
        } else {
            ring::check_len("linear input", x, g.n * g.in_f)?;
            ring::check_len("linear weight", &w.w, g.in_f * g.out_f)?;
            ring::check_len("linear bias", &w.bias, g.out_f)?;
            kernels::transpose(&w.w, g.out_f, g.in_f)
        };
        let mut z = self.matmul_shared(x, &wt, g.n, g.in_f, g.out_f)?;
        if self.me == 2 {
            return Ok(Vec::new());
        }
        for row in z.chunks_mut(g.out_f) {
            ring::add_assign(row, &w.bias);
        }
        let f = self.fp.frac_bits;
        self.truncate(&mut z, f)?;
        Ok(z)
    }

    fn relu(&mut self, x: &Shared, len: usize) -> Result<Shared> {
        crate::suite::default_relu(self, x, len)
    }

    /// ReLU sharing. Without noise: the generic layer ([`crate::suite::default_shared_relu`]:
    /// dot product Mul, DReLU per group, SelectShare). With noise the flips are fused: in the
    /// dot product's two rounds P2 also deals the secret Bernoulli bits `nb` and P0/P1 compute
    /// `u = x * nb` next to `x * v` (one opening of `x - a` serves both products); after the
    /// DReLU, `y = u + (x - 2u) * d_g` (one SelectShare), which equals `x * (d_g XOR nb)`.
    /// Rounds: 2 + 8 + 2, like the noise-free layer with a dot product.
    fn shared_relu(&mut self, x: &Shared, n: usize, plan: &GroupPlan) -> Result<Shared> {
        if plan.fused.is_some() {
            return Err(MpcError::Param(
                "securenn runs the unfused model; fused gates are for the fast suites".into(),
            ));
        }
        if plan.noise <= 0.0 {
            return crate::suite::default_shared_relu(self, x, n, plan);
        }
        if !(0.0..=1.0).contains(&plan.noise) {
            return Err(MpcError::Param(format!(
                "noise probability {} not in [0, 1]",
                plan.noise
            )));
        }
        let me = self.me;
        let total = n * plan.len;
        let groups = n * plan.num_groups;
        let dot = plan.decider != DeciderKind::OneHot;
        if me != 2 {
            ring::check_len("shared ReLU input", x, total)?;
            if dot {
                ring::check_len("decider v", &plan.v, plan.len)?;
            }
        }
        // R1: P2 deals triples (a, bv, a*bv) and (a, bn, a*bn) sharing the mask a of x, and nb.
        let (a, bv, cv, bn, cn, nb) = match me {
            2 => {
                let p0 = self.prg(0)?;
                let a0 = p0.gen_u64s(total);
                let (bv0, cv0) = if dot {
                    (p0.gen_u64s(total), p0.gen_u64s(total))
                } else {
                    (vec![], vec![])
                };
                let (bn0, cn0) = (p0.gen_u64s(total), p0.gen_u64s(total));
                let nb0 = p0.gen_u64s(total);
                let p1 = self.prg(1)?;
                let a1 = p1.gen_u64s(total);
                let bv1 = if dot { p1.gen_u64s(total) } else { vec![] };
                let bn1 = p1.gen_u64s(total);
                let bits = self.prgs.own.bernoulli(total, plan.noise as f64);
                let a = ring::add(&a0, &a1);
                let mut msg = Vec::with_capacity(3 * total);
                if dot {
                    let bv = ring::add(&bv0, &bv1);
                    msg.extend((0..total).map(|i| a[i].wrapping_mul(bv[i]).wrapping_sub(cv0[i])));
                }
                let bn = ring::add(&bn0, &bn1);
                msg.extend((0..total).map(|i| a[i].wrapping_mul(bn[i]).wrapping_sub(cn0[i])));
                msg.extend((0..total).map(|i| (bits[i] as u64).wrapping_sub(nb0[i])));
                self.comm.send_u64(1, &msg)?;
                Default::default()
            }
            0 => {
                let p = self.prg(2)?;
                let a = p.gen_u64s(total);
                let (bv, cv) = if dot {
                    (p.gen_u64s(total), p.gen_u64s(total))
                } else {
                    (vec![], vec![])
                };
                let (bn, cn) = (p.gen_u64s(total), p.gen_u64s(total));
                let nb = p.gen_u64s(total);
                (a, bv, cv, bn, cn, nb)
            }
            _ => {
                let p = self.prg(2)?;
                let a = p.gen_u64s(total);
                let bv = if dot { p.gen_u64s(total) } else { vec![] };
                let bn = p.gen_u64s(total);
                let k = if dot { 3 } else { 2 };
                let msg = self.comm.recv_u64(2, k * total)?;
                let (cv, rest) = if dot {
                    msg.split_at(total)
                } else {
                    msg.split_at(0)
                };
                let (cn, nb) = rest.split_at(total);
                (a, bv, cv.to_vec(), bn, cn.to_vec(), nb.to_vec())
            }
        };
        // R2: open e = x - a, fv = v - bv, fn = nb - bn.
        let (prod_v, u) = if me == 2 {
            (Vec::new(), Vec::new())
        } else {
            let mut msg = Vec::with_capacity(3 * total);
            msg.extend(x.iter().zip(&a).map(|(x, a)| x.wrapping_sub(*a)));
            if dot {
                for img in 0..n {
                    let bvi = &bv[img * plan.len..(img + 1) * plan.len];
                    msg.extend(plan.v.iter().zip(bvi).map(|(v, b)| v.wrapping_sub(*b)));
                }
            }
            msg.extend(nb.iter().zip(&bn).map(|(v, b)| v.wrapping_sub(*b)));
            let other = self.comm.exchange_u64(1 - me, &msg)?;
            ring::add_assign(&mut msg, &other);
            let e = &msg[..total];
            let j0 = me == 0;
            let prod = |f: &[u64], b: &[u64], c: &[u64]| -> Vec<u64> {
                (0..total)
                    .map(|i| {
                        let mut z = e[i]
                            .wrapping_mul(b[i])
                            .wrapping_add(a[i].wrapping_mul(f[i]))
                            .wrapping_add(c[i]);
                        if j0 {
                            z = z.wrapping_add(e[i].wrapping_mul(f[i]));
                        }
                        z
                    })
                    .collect()
            };
            let (pv, fnb) = if dot {
                (prod(&msg[total..2 * total], &bv, &cv), &msg[2 * total..])
            } else {
                (Vec::new(), &msg[total..])
            };
            (pv, prod(fnb, &bn, &cn))
        };
        // group values
        let z: Shared = if me == 2 {
            Vec::new()
        } else if dot {
            let mut z = vec![0u64; groups];
            for img in 0..n {
                let zi = &mut z[img * plan.num_groups..(img + 1) * plan.num_groups];
                for (i, &g) in plan.group_of.iter().enumerate() {
                    zi[g as usize] = zi[g as usize].wrapping_add(prod_v[img * plan.len + i]);
                }
                if plan.decider == DeciderKind::Fc {
                    ring::add_assign(zi, &plan.bias);
                }
            }
            z
        } else {
            let mut z = Vec::with_capacity(groups);
            for img in 0..n {
                z.extend(plan.leaders.iter().map(|&l| x[img * plan.len + l as usize]));
            }
            z
        };
        let d = self.drelu(&z, groups)?;
        // y = u + (x - 2u) * d_g
        let w: Shared = if me == 2 {
            Vec::new()
        } else {
            x.iter()
                .zip(&u)
                .map(|(x, u)| x.wrapping_sub(u.wrapping_mul(2)))
                .collect()
        };
        let map = plan.batch_map(n);
        let t = self.select(&w, &d, &map)?;
        if me == 2 {
            return Ok(Vec::new());
        }
        Ok(ring::add(&u, &t))
    }
}

impl Primitives for SecureNn {
    fn mul_elem(&mut self, a: &Shared, b: &Shared, len: usize) -> Result<Shared> {
        if self.me != 2 {
            ring::check_len("mul operand", a, len)?;
            ring::check_len("mul operand", b, len)?;
        }
        let (mut t, c1) = self.elem_triple(len)?;
        match self.me {
            2 => {
                self.comm.send_u64(1, &c1.unwrap_or_default())?;
                Ok(Vec::new())
            }
            1 => {
                t.c = self.comm.recv_u64(2, len)?;
                self.mul_open(a, b, &t)
            }
            _ => self.mul_open(a, b, &t),
        }
    }

    /// DReLU in 8 rounds, (8 log p + 19) l bits per element:
    /// ShareConvert(c = 2a) to Z_{L-1} (rounds 1-4), then ComputeMSB (rounds 5-8), output
    /// 1 - MSB. Correct for |a| < 2^62 (a signed).
    fn drelu(&mut self, x: &Shared, n: usize) -> Result<Shared> {
        let me = self.me;
        if me != 2 {
            ring::check_len("drelu input", x, n)?;
        }
        // ---- common randomness of P0 and P1 (identical draws)
        let (r, r0, eta2, sc_s, sc_perm, beta, msb_s, msb_perm) = if me != 2 {
            let p = self.prg(1 - me)?;
            let r = p.gen_u64s(n);
            let r0 = p.gen_u64s(n);
            let eta2 = p.gen_bits(n);
            let (sc_s, sc_perm) = Self::pc_randomness(p, n);
            let beta = p.gen_bits(n);
            let (msb_s, msb_perm) = Self::pc_randomness(p, n);
            (r, r0, eta2, sc_s, sc_perm, beta, msb_s, msb_perm)
        } else {
            Default::default()
        };

        if me == 2 {
            return self.drelu_helper(n);
        }
        let j0 = u64::from(me == 0);
        // ---- ShareConvert of c = 2a
        let c: Vec<u64> = x.iter().map(|v| v.wrapping_mul(2)).collect();
        let rj: Vec<u64> = if me == 0 {
            r0.clone()
        } else {
            ring::sub(&r, &r0)
        };
        let alpha: Vec<u64> = r0
            .iter()
            .zip(&r)
            .map(|(a, rr)| u64::from(ring::wraps(*a, rr.wrapping_sub(*a))))
            .collect();
        let at: Vec<u64> = c.iter().zip(&rj).map(|(a, b)| a.wrapping_add(*b)).collect();
        let betaj: Vec<u64> = c
            .iter()
            .zip(&rj)
            .map(|(a, b)| u64::from(ring::wraps(*a, *b)))
            .collect();
        // R1: send a~_j to P2
        self.comm.send_u64(2, &at)?;
        // R2: bits of x (Z_p), delta share (Z_{L-1}), MSB dealer values
        let msg = self.comm.round(vec![], &[2])?.pop().unwrap_or_default();
        let parts = Self::split_msg(&msg, 2, &[n * 64, n * 8, n * 8, n * 64, n * 8])?;
        let xbits = Self::zp_bytes(parts[0].clone(), 2)?;
        let delta = Self::u64s(&parts[1], 2)?;
        let xp = Self::u64s(&parts[2], 2)?;
        let xpbits = Self::zp_bytes(parts[3].clone(), 2)?;
        let xp_lsb = Self::u64s(&parts[4], 2)?;
        Self::check_m(&delta, 2)?;
        Self::check_m(&xp, 2)?;
        // R3: PrivateCompare [x > r - 1] with flip eta''
        let mut d = vec![0u8; n * 64];
        d.par_chunks_mut(64).enumerate().for_each(|(e, out)| {
            let t = r[e].wrapping_sub(1);
            Self::pc_local(
                me,
                &xbits[e * 64..(e + 1) * 64],
                t,
                eta2[e],
                &sc_s[e * 64..(e + 1) * 64],
                &sc_perm[e * 64..(e + 1) * 64],
                out,
            );
        });
        self.comm.round(vec![(2, d)], &[])?;
        // R4: shares of eta' over Z_{L-1}
        let etap = self.comm.recv_u64(2, n)?;
        Self::check_m(&etap, 2)?;
        let mut y = Vec::with_capacity(n);
        for e in 0..n {
            // eta = eta' XOR eta''  (= [x >= r])
            let eta = if r[e] == 0 {
                j0
            } else if eta2[e] == 1 {
                add_m(sub_m(0, etap[e]), j0)
            } else {
                etap[e]
            };
            // theta = beta0 + beta1 + delta - alpha - 1 + eta ; y = c - theta (mod L-1)
            let mut theta = add_m(add_m(betaj[e], delta[e]), eta);
            if me == 0 {
                theta = sub_m(theta, alpha[e] + 1);
            }
            y.push(sub_m(c[e], theta));
        }
        // ---- ComputeMSB(y) over Z_{L-1}: MSB(y) = LSB(2y mod L-1)
        let rr_j: Vec<u64> = y
            .iter()
            .zip(&xp)
            .map(|(v, m)| add_m(dbl_m(*v), *m))
            .collect();
        // R5: open rr = 2y + x'
        let other = self.comm.exchange_u64(1 - me, &rr_j)?;
        Self::check_m(&other, 1 - me)?;
        let rr: Vec<u64> = rr_j
            .iter()
            .zip(&other)
            .map(|(a, b)| add_m(*a, *b))
            .collect();
        // R6: PrivateCompare [x' > rr] with flip beta
        let mut d = vec![0u8; n * 64];
        d.par_chunks_mut(64).enumerate().for_each(|(e, out)| {
            Self::pc_local(
                me,
                &xpbits[e * 64..(e + 1) * 64],
                rr[e],
                beta[e],
                &msb_s[e * 64..(e + 1) * 64],
                &msb_perm[e * 64..(e + 1) * 64],
                out,
            );
        });
        self.comm.round(vec![(2, d)], &[])?;
        // R7: shares of beta' over Z_L (+ the Mul triple's c1 for P1)
        let (mut tri, _) = self.elem_triple(n)?;
        let msg = self.comm.recv_u64(2, if me == 1 { 2 * n } else { n })?;
        let betap = &msg[..n];
        if me == 1 {
            tri.c = msg[n..].to_vec();
        }
        let mut gamma = Vec::with_capacity(n);
        let mut delta2 = Vec::with_capacity(n);
        for e in 0..n {
            let b = beta[e] as u64;
            gamma.push(
                betap[e]
                    .wrapping_mul(1u64.wrapping_sub(2 * b))
                    .wrapping_add(j0 * b),
            );
            let r0b = rr[e] & 1;
            delta2.push(
                xp_lsb[e]
                    .wrapping_mul(1u64.wrapping_sub(2 * r0b))
                    .wrapping_add(j0 * r0b),
            );
        }
        // R8: theta = gamma * delta
        let theta = self.mul_open(&gamma, &delta2, &tri)?;
        // alpha = gamma + delta - 2 theta = MSB ; DReLU = 1 - MSB
        Ok((0..n)
            .map(|e| {
                let msb = gamma[e]
                    .wrapping_add(delta2[e])
                    .wrapping_sub(theta[e].wrapping_mul(2));
                j0.wrapping_sub(msb)
            })
            .collect())
    }

    fn dealer_bernoulli(&mut self, len: usize, p: f32) -> Result<Shared> {
        if !(0.0..=1.0).contains(&p) {
            return Err(MpcError::Param(format!(
                "noise probability {p} not in [0, 1]"
            )));
        }
        match self.me {
            2 => {
                let bits = self.prgs.own.bernoulli(len, p as f64);
                let s0 = self.prg(0)?.gen_u64s(len);
                let s1: Vec<u64> = bits
                    .iter()
                    .zip(&s0)
                    .map(|(b, s)| (*b as u64).wrapping_sub(*s))
                    .collect();
                self.comm.send_u64(1, &s1)?;
                Ok(Vec::new())
            }
            0 => Ok(self.prg(2)?.gen_u64s(len)),
            _ => self.comm.recv_u64(2, len),
        }
    }
}

impl SecureNn {
    /// P2's side of DReLU (see [`SecureNn::drelu`]).
    fn drelu_helper(&mut self, n: usize) -> Result<Shared> {
        // R1
        let got = self.comm.round(vec![], &[0, 1])?;
        let a0 = ring::bytes_to_u64s_n(&got[0], n, 0)?;
        let a1 = ring::bytes_to_u64s_n(&got[1], n, 1)?;
        let x: Vec<u64> = a0
            .iter()
            .zip(&a1)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        let delta: Vec<u64> = a0
            .iter()
            .zip(&a1)
            .map(|(a, b)| u64::from(ring::wraps(*a, *b)))
            .collect();
        // R2: dealer values for ShareConvert and ComputeMSB
        let own = &mut self.prgs.own;
        let (xb0, xb1) = Self::share_bits_zp(own, &x);
        let d0: Vec<u64> = own.gen_u64s(n).into_iter().map(red_m).collect();
        let d1: Vec<u64> = delta.iter().zip(&d0).map(|(d, s)| sub_m(*d, *s)).collect();
        let mut xp = Vec::with_capacity(n);
        while xp.len() < n {
            xp.extend(own.gen_u64s(n - xp.len()).into_iter().filter(|&v| v != M));
        }
        let xp0: Vec<u64> = own.gen_u64s(n).into_iter().map(red_m).collect();
        let xp1: Vec<u64> = xp.iter().zip(&xp0).map(|(v, s)| sub_m(*v, *s)).collect();
        let (xpb0, xpb1) = Self::share_bits_zp(own, &xp);
        let l0 = own.gen_u64s(n);
        let l1: Vec<u64> = xp
            .iter()
            .zip(&l0)
            .map(|(v, s)| (v & 1).wrapping_sub(*s))
            .collect();
        let pack = |bits: &[u8], d: &[u64], xs: &[u64], xpb: &[u8], l: &[u64]| {
            let mut m = Vec::with_capacity(n * 152);
            m.extend_from_slice(bits);
            m.extend(ring::u64s_to_bytes(d));
            m.extend(ring::u64s_to_bytes(xs));
            m.extend_from_slice(xpb);
            m.extend(ring::u64s_to_bytes(l));
            m
        };
        let m0 = pack(&xb0, &d0, &xp0, &xpb0, &l0);
        let m1 = pack(&xb1, &d1, &xp1, &xpb1, &l1);
        self.comm.round(vec![(0, m0), (1, m1)], &[])?;
        // R3: PrivateCompare messages -> eta'
        let got = self.comm.round(vec![], &[0, 1])?;
        if got[0].len() != n * 64 || got[1].len() != n * 64 {
            return Err(MpcError::Malformed {
                from: 0,
                reason: "PrivateCompare message length".into(),
            });
        }
        ZP.check(&got[0], 0)?;
        ZP.check(&got[1], 1)?;
        let etap = Self::pc_open(&got[0], &got[1], n);
        // R4: shares of eta' over Z_{L-1}
        let own = &mut self.prgs.own;
        let e0: Vec<u64> = own.gen_u64s(n).into_iter().map(red_m).collect();
        let e1: Vec<u64> = etap
            .iter()
            .zip(&e0)
            .map(|(b, s)| sub_m(*b as u64, *s))
            .collect();
        self.comm.round_u64(&[(0, &e0), (1, &e1)], &[])?;
        // R5 is P0 <-> P1 only. R6: PrivateCompare messages -> beta'
        let got = self.comm.round(vec![], &[0, 1])?;
        if got[0].len() != n * 64 || got[1].len() != n * 64 {
            return Err(MpcError::Malformed {
                from: 0,
                reason: "PrivateCompare message length".into(),
            });
        }
        ZP.check(&got[0], 0)?;
        ZP.check(&got[1], 1)?;
        let betap = Self::pc_open(&got[0], &got[1], n);
        // R7: shares of beta' over Z_L, plus the Mul triple's c1 to P1
        let b0 = self.prgs.own.gen_u64s(n);
        let b1: Vec<u64> = betap
            .iter()
            .zip(&b0)
            .map(|(b, s)| (*b as u64).wrapping_sub(*s))
            .collect();
        let (_, c1) = self.elem_triple(n)?;
        let mut m1 = b1;
        m1.extend(c1.unwrap_or_default());
        self.comm.round_u64(&[(0, &b0), (1, &m1)], &[])?;
        // R8 is P0 <-> P1 only.
        Ok(Vec::new())
    }
}

/// Factory for the runner.
pub fn factory(comm: Comm, fp: FixedPoint) -> Result<Box<dyn Suite>> {
    Ok(Box::new(SecureNn::new(comm, fp)?))
}

/// Expected cost of one layer under SecureNN's Table 1 formulas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormulaCost {
    /// Layer name.
    pub name: String,
    /// Bits sent (all parties).
    pub bits: u64,
    /// Rounds.
    pub rounds: u64,
}

/// Bits of a DReLU: (8 log p + 19) l with log p = 8.
pub const DRELU_BITS: u64 = (8 * 8 + 19) * 64;
/// Bits of a Mul / SelectShare: 5 l.
pub const MUL_BITS: u64 = 5 * 64;

/// The per-layer cost predicted by Table 1 for a batch of `n` images, computed from the model's
/// structure (not from measurements):
/// * Conv2d_{m,i,f,o}: 2 rounds, (2 m^2 f^2 i + 2 f^2 o i + m^2 o) l with m^2 = output pixels
///   (for a batch the weight term is paid once: the batch's im2col matrices are stacked);
/// * Linear_{m,n,v} (m = batch): 2 rounds, (2mn + 2nv + mv) l;
/// * ReLU: DReLU (8 rounds, 83 l) + Mul (2 rounds, 5 l) per element; Partial likewise on its
///   ReLU channels;
/// * ReLU sharing: [Learned/Fc: dot products, one Mul per element, 2 rounds] + one DReLU per group
///   (8 rounds) + one select per element (2 rounds, 5 l); with noise the flips are fused
///   into the dot product's two rounds (dealer bits l, x * nb: 3 l more, or a 5 l Mul in 2
///   rounds of its own for one-hot), so a noisy layer costs 14 l (one-hot: 11 l) per element;
/// * max pooling: a tree of pairwise maxima, one ReLU (DReLU + Mul) per compared pair and 10
///   rounds per tree level;
/// * average pooling, residual adds, identity, dropout, flatten: free (local).
pub fn table1_cost(fm: &crate::plain::FixedModel, n: usize) -> Vec<FormulaCost> {
    use crate::plain::FixedLayer;
    use crate::suite::DeciderKind;
    let n = n as u64;
    let l = 64u64;
    fm.layers
        .iter()
        .map(|layer| {
            let (bits, rounds) = match layer {
                FixedLayer::Conv { geom, .. } => {
                    let m2 = (geom.oh() * geom.ow()) as u64;
                    let f2 = (geom.k * geom.k) as u64;
                    let (i, o) = (geom.c as u64, geom.o as u64);
                    ((2 * n * m2 * f2 * i + 2 * f2 * o * i + n * m2 * o) * l, 2)
                }
                FixedLayer::Linear { geom, .. } => {
                    let (nn, v) = (geom.in_f as u64, geom.out_f as u64);
                    ((2 * n * nn + 2 * nn * v + n * v) * l, 2)
                }
                FixedLayer::Relu { len, .. } => (n * *len as u64 * (DRELU_BITS + MUL_BITS), 10),
                FixedLayer::Partial {
                    plane,
                    relu_channels,
                    ..
                } => {
                    let k = (relu_channels * plane) as u64;
                    (n * k * (DRELU_BITS + MUL_BITS), 10)
                }
                FixedLayer::Shared { s, .. } => {
                    let len = n * s.len as u64;
                    let groups = n * s.num_groups as u64;
                    let (mut bits, mut rounds) = (groups * DRELU_BITS, 8);
                    if s.decider != DeciderKind::OneHot {
                        bits += len * MUL_BITS;
                        rounds += 2;
                    }
                    if s.noise > 0.0 {
                        // fused flips: dealer nb (l) + x*nb (c1: l, openings of f: 2l; the
                        // opening of x - a is shared with the dot product, or 2l without one)
                        // in the dot product's rounds, then one select (5 l).
                        bits += len * (l + 3 * l + MUL_BITS);
                        if s.decider == DeciderKind::OneHot {
                            bits += len * 2 * l;
                            rounds += 2;
                        }
                        rounds += 2;
                    } else {
                        bits += len * MUL_BITS;
                        rounds += 2;
                    }
                    (bits, rounds)
                }
                FixedLayer::MaxPool { geom, .. } => {
                    // One ReLU (DReLU + Mul) per compared pair, 10 rounds per tree level.
                    let levels = geom.level_pairs();
                    let pairs: u64 = levels.iter().map(|&p| p as u64).sum();
                    (
                        n * pairs * (DRELU_BITS + MUL_BITS),
                        10 * levels.len() as u64,
                    )
                }
                FixedLayer::AvgPool { .. }
                | FixedLayer::Identity { .. }
                | FixedLayer::Add { .. } => (0, 0),
            };
            FormulaCost {
                name: layer.name().to_string(),
                bits,
                rounds,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mod_odd_ring_matches_u128() {
        let m = M as u128;
        let vals = [
            0u64,
            1,
            2,
            M - 1,
            M,
            M - 2,
            1 << 63,
            (1 << 63) - 1,
            12345678901234567,
        ];
        for &a in &vals {
            for &b in &vals {
                let want = ((a as u128 % m + b as u128 % m) % m) as u64;
                assert_eq!(add_m(a, b), want, "{a} + {b}");
                let want = ((a as u128 % m + m - b as u128 % m) % m) as u64;
                assert_eq!(sub_m(a, b), want, "{a} - {b}");
            }
            assert_eq!(dbl_m(a), ((2 * (a as u128 % m)) % m) as u64);
        }
    }
}
