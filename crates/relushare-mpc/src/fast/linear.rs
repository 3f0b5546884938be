//! Linear layers with shared weights: masked weights opened once per model load, then one
//! masked opening of the input per layer and image batch.
//!
//! Per model load the dealer deals a random `B` for every weight tensor `W` (free, from the
//! seeds) and P0/P1 open `F = W - B` (8 bytes per weight element per party, once). Per batch
//! the dealer deals a random input mask `A` (free) and the correction `C = B * A` (8 bytes per
//! output element, to P1). Offline each party precomputes `F * A_i + C_i`. Online the parties
//! open `E = X - A` (8 bytes per input element per party, one round) and compute
//! `Y_0 = (F + B_0) * E + pre_0`, `Y_1 = B_1 * E + pre_1`, so `Y_0 + Y_1 = (F + B)(E + A) = W X`.
//! The bias (2f fractional bits) is added and the result truncated locally by `f` bits
//! ([`crate::fixed::trunc_share`]; error at most one unit in the last place, except with
//! probability about `|y| / 2^63`).

use crate::error::{MpcError, Result};
use crate::fast::deal::Deal;
use crate::kernels::{self, ConvGeom};

/// The shape of a linear operator `y = W * x` on a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinOp {
    /// Convolution.
    Conv(ConvGeom),
    /// Fully connected, `x[n, in] -> y[n, out]`, `w[out, in]`.
    Fc { n: usize, in_f: usize, out_f: usize },
}

impl LinOp {
    /// Input elements.
    pub fn in_len(&self) -> usize {
        match self {
            LinOp::Conv(g) => g.in_len(),
            LinOp::Fc { n, in_f, .. } => n * in_f,
        }
    }
    /// Output elements.
    pub fn out_len(&self) -> usize {
        match self {
            LinOp::Conv(g) => g.out_len(),
            LinOp::Fc { n, out_f, .. } => n * out_f,
        }
    }
    /// Weight elements.
    pub fn w_len(&self) -> usize {
        match self {
            LinOp::Conv(g) => g.w_len(),
            LinOp::Fc { in_f, out_f, .. } => in_f * out_f,
        }
    }
    /// Output elements per image "plane" for the bias (conv: `oh*ow`; fc: 1).
    pub fn bias_plane(&self) -> usize {
        match self {
            LinOp::Conv(g) => g.oh() * g.ow(),
            LinOp::Fc { .. } => 1,
        }
    }
    /// `W * x` over Z_2^64 (no bias, no truncation).
    pub fn apply(&self, x: &[u64], w: &[u64]) -> Result<Vec<u64>> {
        if x.len() != self.in_len() || w.len() != self.w_len() {
            return Err(MpcError::Shape(format!(
                "linear operator {self:?}: input {} (expected {}), weight {} (expected {})",
                x.len(),
                self.in_len(),
                w.len(),
                self.w_len()
            )));
        }
        Ok(match self {
            LinOp::Conv(g) => kernels::conv2d(x, w, g),
            LinOp::Fc { n, in_f, out_f } => {
                let wt = kernels::transpose(w, *out_f, *in_f);
                kernels::matmul(x, &wt, *n, *in_f, *out_f)
            }
        })
    }
}

/// A weight tensor after the one-time masking: the public `F = W - B` and this party's `B_i`
/// (the dealer keeps the whole `B`).
#[derive(Clone, Debug, Default)]
pub struct MaskedWeight {
    /// Public `F = W - B` (empty for the dealer).
    pub f: Vec<u64>,
    /// P0: `F + B_0`; P1: `B_1`; the dealer: `B`.
    pub online: Vec<u64>,
    /// P0/P1: `B_i`; the dealer: `B`.
    pub b: Vec<u64>,
}

/// Per-batch material of a linear layer (this party's view).
pub struct LinMat {
    /// Share of the input mask `A` (empty for the dealer).
    pub a: Vec<u64>,
    /// `F * A_i + C_i` (empty for the dealer).
    pub pre: Vec<u64>,
}

/// Deal the per-batch material of `op` whose weight was masked as `mw`
/// ([`deal_linear_pre`] then [`deal_linear_finish`]).
pub fn deal_linear(d: &mut Deal, op: &LinOp, mw: &MaskedWeight) -> Result<LinMat> {
    let pre = deal_linear_pre(d, op, mw)?;
    deal_linear_finish(d, op, pre)
}

/// The part of a linear layer's dealing that needs no dealer message: the mask `A` (from the
/// seeds) and the layer's product, `B * A` for the dealer and `F * A_i` for P0/P1. P1 can run
/// it before it waits for the dealer's corrections, so its product overlaps the dealer's.
pub struct LinPre {
    a: Vec<u64>,
    prod: Vec<u64>,
}

/// First half of [`deal_linear`] (see [`LinPre`]); draws from the seed streams exactly as
/// `deal_linear` does, so the halves may be split around the receipt of the corrections.
pub fn deal_linear_pre(d: &mut Deal, op: &LinOp, mw: &MaskedWeight) -> Result<LinPre> {
    let a = d.rand_u64(op.in_len());
    Ok(match &a.secret {
        Some(asec) => LinPre {
            prod: op.apply(asec, &mw.b)?,
            a: Vec::new(),
        },
        None => LinPre {
            prod: op.apply(&a.mine, &mw.f)?,
            a: a.mine,
        },
    })
}

/// Second half of [`deal_linear`]: the correction `C = B * A` (dealer: written for P1; P1:
/// read; P0: from the seed) and `pre = F * A_i + C_i`.
pub fn deal_linear_finish(d: &mut Deal, op: &LinOp, pre: LinPre) -> Result<LinMat> {
    if pre.prod.len() != op.out_len() {
        return Err(MpcError::Shape(format!(
            "linear material of {} elements for {op:?}",
            pre.prod.len()
        )));
    }
    if d.is_dealer() {
        d.reserve_corrections(linear_offline_bytes(op));
        d.corr_u64(op.out_len(), Some(&pre.prod))?;
        return Ok(LinMat {
            a: Vec::new(),
            pre: Vec::new(),
        });
    }
    let c = d.corr_u64(op.out_len(), None)?;
    let mut y = pre.prod;
    crate::ring::add_assign(&mut y, &c);
    Ok(LinMat { a: pre.a, pre: y })
}

/// Online bytes one party sends for `op`: `8 * in_len`.
pub fn linear_online_bytes(op: &LinOp) -> usize {
    8 * op.in_len()
}

/// Dealer bytes (to P1) for `op`: `8 * out_len`.
pub fn linear_offline_bytes(op: &LinOp) -> usize {
    8 * op.out_len()
}
