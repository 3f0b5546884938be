//! Whole-channel gates fused with the convolution before them.
//!
//! A ReLU-sharing layer whose groups are whole channels (one decision per channel: the
//! `uniform32` rows of the paper) multiplies every activation of channel `c` by one secret bit
//! `d_c`. Done as a separate layer (see [`crate::fast::share`]) it costs what a ReLU layer's
//! select costs: one masked 64-bit opening per activation plus a dealer product per activation,
//! on top of the next layer's own opening of its input. A fused gate removes the per-activation
//! work:
//!
//! * **Decision from the convolution's input.** `z_c = sum_p v_{c,p} conv(x)_{c,p}` is linear
//!   in the convolution's input `x`, so the model owner folds the decider through the
//!   convolution: `U = round_f(v o W)` (`channels x in_len`) and `beta_c = round_f(b_c sum_p v_{c,p})`
//!   ([`fuse`]). `U` is a secret weight like any other (masked once per model load), and
//!   `z = U x + beta` reuses the convolution's own masked input `E = x - A`: no extra opening,
//!   8 dealer bytes per channel. One-hot deciders fold to the leader's row of the convolution.
//! * [`GateMode::Fold`] (no pooling after the gate, or small weights): the opened decisions
//!   `d' = d XOR t` (t is the dealer's bit per channel) scale the convolution's output channels,
//!   i.e. its weights and bias: `W'_c = d_c W_c = d_c F_c + d'_c B_c + (1 - 2 d'_c) (t_c B_c)`
//!   on shares, with `F = W - B` public and `t B` dealt. The convolution then runs with
//!   per-image weights: `W' x = W' E + G A + M A` where `G = W' - M` is opened (16 bytes per
//!   weight per image, both parties) and the dealer supplies `M A`. Per-activation cost: the
//!   output correction only (8 bytes), as for any convolution.
//! * [`GateMode::Pool`] (an average pooling follows): the gate commutes with pooling, so the
//!   convolution only needs its window sums. The dealer's correction is pooled (8 bytes per
//!   *pooled* element instead of per activation), the pooled values are truncated locally, and
//!   the gate is a product with a masked opening of the pooled values `H = Q - R` (opened in the
//!   same round as the decision values) and the dealt `t R`.
//!
//! Patch groups are fused for `mimo` only ([`fuse_patches`]: a sparse `U`, one row per group on
//! its members' receptive fields); [`fuse`] and the fast suites keep to whole channels.
//!
//! The semantics (see [`crate::plain`]) differ from the unfused layer only in rounding: the
//! decision is taken on the exact convolution output, and a pooled gate pools the exact output
//! before truncating. [`fuse`] picks, per eligible block, the mode with the fewest bytes per
//! image, and leaves a layer unfused when fusion would not save bytes. The per-model setup grows
//! by the opening of `U` (16 bytes per element of `U`, once).

use crate::cost::Comm;
use crate::error::{MpcError, Result};
use crate::fast::bits::{self, Plane};
use crate::fast::cmp::{self, CmpAny};
use crate::fast::deal::Deal;
use crate::fast::linear::MaskedWeight;
use crate::fast::CmpMode;
use crate::fixed;
use crate::kernels::{self, ConvGeom};
use crate::plain::{FixedLayer, FixedModel, FixedShared, FusedGate, GateMode};
use crate::suite::{DeciderKind, PoolGeom};

/// The weight key of a fused gate's `U`.
pub fn u_key(gate: &str) -> String {
    format!("{gate}.u")
}

/// The weight key of a folded convolution's bias.
pub fn bias_key(conv: &str) -> String {
    format!("{conv}.bias")
}

/// Is `s` a noise-free whole-channel gate (Learned or OneHot) over the output of `geom` (the
/// gates the fast suites fuse)?
fn whole_channel(geom: &ConvGeom, s: &FixedShared) -> bool {
    s.noise == 0.0
        && matches!(s.decider, DeciderKind::Learned | DeciderKind::OneHot)
        && channel_groups(geom, s)
}

/// Are `s`'s groups the output channels of `geom` (any decider, any noise)?
fn channel_groups(geom: &ConvGeom, s: &FixedShared) -> bool {
    let plane = geom.oh() * geom.ow();
    s.num_groups == geom.o
        && s.len == geom.o * plane
        && s.group_of.len() == s.len
        && s.group_of
            .iter()
            .enumerate()
            .all(|(j, &g)| g as usize == j / plane)
        && (s.decider != DeciderKind::OneHot || s.leaders.len() == geom.o)
}

/// Dealer + online bytes per image of the layer pair (convolution, gate) in each mode, without
/// the parts all modes share (the convolution's input opening, the decisions): `None` where a
/// mode does not apply.
pub fn block_bytes(geom: &ConvGeom, pool: Option<&PoolGeom>) -> [(GateMode, Option<usize>); 2] {
    let g1 = ConvGeom { n: 1, ..*geom };
    let fold = 24 * g1.w_len() + 8 * g1.out_len() + 8 * g1.o;
    let pooled = pool.map(|p| 32 * p.c * p.oh() * p.ow());
    [(GateMode::Fold, Some(fold)), (GateMode::Pool, pooled)]
}

/// The same for the unfused pair (select on every activation and a full output correction).
pub fn unfused_bytes(geom: &ConvGeom) -> usize {
    32 * ConvGeom { n: 1, ..*geom }.out_len()
}

/// Fuse every eligible (convolution, whole-channel gate [, average pooling]) block of `fm` for
/// the fast suites, computing `U` and `beta` from the plaintext weights (the model owner's
/// step; parties without weights get zeros of the right sizes and receive shares). Returns the
/// fused gates' names. Idempotent.
pub fn fuse(fm: &mut FixedModel) -> Result<Vec<String>> {
    fuse_by(fm, |geom, pool, s| {
        if !whole_channel(geom, s) {
            return None;
        }
        let (mode, bytes) = block_bytes(geom, pool)
            .into_iter()
            .filter_map(|(m, b)| b.map(|b| (m, b)))
            .min_by_key(|&(_, b)| b)?;
        (bytes < unfused_bytes(geom)).then_some(mode)
    })
}

/// [`fuse`] with the choice of mode per block of a convolution and a gate whose groups are its
/// output channels left to `pick` (the convolution, the average pooling after the gate if one
/// matches it, the gate; `None`: leave it unfused). A noisy gate may be fused in `Fold` mode
/// only (member `i` keeps `[z_c >= 0] XOR flip_i`), an FC decider's bias is folded into `beta`.
/// Already fused gates are kept as they are. Returns the fused gates' names.
pub fn fuse_by(
    fm: &mut FixedModel,
    pick: impl Fn(&ConvGeom, Option<&PoolGeom>, &FixedShared) -> Option<GateMode>,
) -> Result<Vec<String>> {
    let f = fm.fp.frac_bits;
    let mut names = Vec::new();
    for i in 0..fm.layers.len().saturating_sub(1) {
        // Only a convolution whose output feeds the gate alone (and a pool fed by the gate
        // alone) can be fused.
        if !fm.chained(i + 1) {
            continue;
        }
        let pool = match fm.layers.get(i + 2) {
            Some(FixedLayer::AvgPool { geom, .. }) if fm.chained(i + 2) => Some(*geom),
            _ => None,
        };
        let (head, tail) = fm.layers.split_at_mut(i + 1);
        let (FixedLayer::Conv { geom, w, b, .. }, FixedLayer::Shared { name, s }) =
            (&head[i], &mut tail[0])
        else {
            continue;
        };
        if s.fused.is_some() {
            names.push(name.clone());
            continue;
        }
        if !channel_groups(geom, s) {
            continue;
        }
        let pool = pool.filter(|p| p.c == geom.o && p.h == geom.oh() && p.w == geom.ow());
        let Some(mode) = pick(geom, pool.as_ref(), s) else {
            continue;
        };
        if mode == GateMode::Pool && pool.is_none() {
            return Err(MpcError::Model(format!(
                "{name}: a pooled fused gate needs the average pooling after it"
            )));
        }
        if mode == GateMode::Pool && s.noise > 0.0 {
            return Err(MpcError::Model(format!(
                "{name}: a noisy gate is fused in Fold mode only"
            )));
        }
        let (u, beta) = fold_decider(geom, w, b, s, f)?;
        s.fused = Some(Box::new(FusedGate {
            mode,
            u,
            beta,
            in_len: geom.in_len1(),
            sparse: None,
        }));
        names.push(name.clone());
    }
    Ok(names)
}

/// Fuse every learned/FC gate whose groups are *not* whole channels (patch groups) with the
/// convolution before it, in [`GateMode::Fold`] with a sparse `U` (`mimo` only, see
/// [`crate::mimo::fuse`]; the fast suites never fuse these): per group, the union of its
/// members' receptive fields in the convolution's input and the folded coefficients there
/// ([`fold_sparse`]). Only where the gate reads the convolution's output alone; noise and an FC
/// decider's bias as for whole channels. The rows depend on the structure only, so parties
/// without weights derive the same shapes. Already fused gates are kept. Returns the names of
/// the gates fused here.
pub fn fuse_patches(fm: &mut FixedModel) -> Result<Vec<String>> {
    let f = fm.fp.frac_bits;
    let mut names = Vec::new();
    for i in 0..fm.layers.len().saturating_sub(1) {
        if !fm.chained(i + 1) {
            continue;
        }
        let (head, tail) = fm.layers.split_at_mut(i + 1);
        let (FixedLayer::Conv { geom, w, b, .. }, FixedLayer::Shared { name, s }) =
            (&head[i], &mut tail[0])
        else {
            continue;
        };
        if s.fused.is_some()
            || channel_groups(geom, s)
            || !matches!(s.decider, DeciderKind::Learned | DeciderKind::Fc)
            || s.len != geom.o * geom.oh() * geom.ow()
        {
            continue;
        }
        let (u, beta, sparse) = fold_sparse(geom, w, b, s, f)?;
        s.fused = Some(Box::new(FusedGate {
            mode: GateMode::Fold,
            u,
            beta,
            in_len: geom.in_len1(),
            sparse: Some(sparse),
        }));
        names.push(name.clone());
    }
    Ok(names)
}

/// A learned/FC decider with any groups folded through the convolution before it, row by row:
/// row `g` of `U` lives on the union of the receptive fields of the group's members (offsets in
/// increasing order) and holds `round_f(sum_{i in g} v_i W_{row(i)})` there; `beta_g =
/// round_f(sum_{i in g} v_i b_{ch(i)})` plus the FC bias. For whole channels this is the dense
/// `fold_decider`'s arithmetic on the non-zero part of each row.
pub fn fold_sparse(
    geom: &ConvGeom,
    w: &[u64],
    b: &[u64],
    s: &FixedShared,
    f: u32,
) -> Result<(Vec<u64>, Vec<u64>, crate::plain::SparseRows)> {
    let (oh, ow) = (geom.oh(), geom.ow());
    let plane = oh * ow;
    let in_len = geom.in_len1();
    let per = geom.c * geom.k * geom.k;
    if w.len() != geom.w_len() || b.len() != geom.o {
        return Err(MpcError::Shape("fused gate: convolution parameters".into()));
    }
    if !matches!(s.decider, DeciderKind::Learned | DeciderKind::Fc) {
        return Err(MpcError::Model(
            "sparse fused gate: learned or FC deciders only".into(),
        ));
    }
    if s.len != geom.o * plane || s.v.len() != s.len || s.group_of.len() != s.len {
        return Err(MpcError::Shape("sparse fused gate: decider length".into()));
    }
    let fc = s.decider == DeciderKind::Fc;
    if fc && s.bias.len() != s.num_groups {
        return Err(MpcError::Shape(
            "sparse fused gate: FC decider bias length".into(),
        ));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); s.num_groups];
    for (j, &g) in s.group_of.iter().enumerate() {
        members
            .get_mut(g as usize)
            .ok_or_else(|| MpcError::Shape("sparse fused gate: group id".into()))?
            .push(j);
    }
    let round = |acc: i128| -> u64 { ((acc + (1i128 << (f - 1))) >> f) as i64 as u64 };
    if f == 0 {
        return Err(MpcError::Param("fused gate: no fractional bits".into()));
    }
    let mut acc = vec![0i128; in_len];
    let mut seen = vec![false; in_len];
    let (mut u, mut cols, mut start) = (Vec::new(), Vec::new(), vec![0u32]);
    let mut beta = Vec::with_capacity(s.num_groups);
    for (g, mem) in members.iter().enumerate() {
        let mut touched: Vec<u32> = Vec::new();
        let mut bacc = 0i128;
        for &j in mem {
            let v = s.v[j] as i64 as i128;
            let (c, p) = (j / plane, j % plane);
            bacc += v * (b[c] as i64 as i128);
            for_each_tap(geom, p / ow, p % ow, |q, t| {
                if !seen[q] {
                    seen[q] = true;
                    touched.push(q as u32);
                }
                acc[q] += v * (w[c * per + t] as i64 as i128);
            });
        }
        touched.sort_unstable();
        for &q in &touched {
            u.push(round(acc[q as usize]));
            acc[q as usize] = 0;
            seen[q as usize] = false;
        }
        cols.extend(touched);
        start.push(
            u32::try_from(cols.len())
                .map_err(|_| MpcError::Shape("sparse fused gate: too many entries".into()))?,
        );
        let fc_bias = if fc { s.bias[g] } else { 0 };
        beta.push(round(bacc).wrapping_add(fc_bias));
    }
    Ok((u, beta, crate::plain::SparseRows { start, cols }))
}

/// `U = round_f(v o W)` and `beta = round_f(b * sum v)` (Learned; FC adds its 2f-bit bias to
/// `beta`), or the leader's convolution row and the bias (OneHot); all give 2f-bit decision
/// values.
pub(crate) fn fold_decider(
    geom: &ConvGeom,
    w: &[u64],
    b: &[u64],
    s: &FixedShared,
    f: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let (oh, ow) = (geom.oh(), geom.ow());
    let plane = oh * ow;
    let in_len = geom.in_len1();
    let per = geom.c * geom.k * geom.k;
    if w.len() != geom.w_len() || b.len() != geom.o {
        return Err(MpcError::Shape("fused gate: convolution parameters".into()));
    }
    let one_hot = s.decider == DeciderKind::OneHot;
    if !one_hot && s.v.len() != s.len {
        return Err(MpcError::Shape("fused gate: decider length".into()));
    }
    let fc = s.decider == DeciderKind::Fc;
    if fc && s.bias.len() != geom.o {
        return Err(MpcError::Shape("fused gate: FC decider bias length".into()));
    }
    let shift = if one_hot { 0 } else { f };
    let round = |acc: i128| -> u64 {
        if shift == 0 {
            acc as i64 as u64
        } else {
            ((acc + (1i128 << (shift - 1))) >> shift) as i64 as u64
        }
    };
    let mut u = Vec::with_capacity(geom.o * in_len);
    let mut beta = Vec::with_capacity(geom.o);
    let mut acc = vec![0i128; in_len];
    for c in 0..geom.o {
        acc.iter_mut().for_each(|a| *a = 0);
        let mut vsum = 0i128;
        let positions: Vec<(usize, i128)> = if one_hot {
            let l = s.leaders[c] as usize;
            if l / plane != c {
                return Err(MpcError::Model(
                    "fused gate: leader outside its channel".into(),
                ));
            }
            vec![(l - c * plane, 1)]
        } else {
            (0..plane)
                .map(|p| (p, s.v[c * plane + p] as i64 as i128))
                .filter(|&(_, v)| v != 0)
                .collect()
        };
        for (p, v) in positions {
            vsum += v;
            for_each_tap(geom, p / ow, p % ow, |q, t| {
                acc[q] += v * (w[c * per + t] as i64 as i128);
            });
        }
        u.extend(acc.iter().map(|&a| round(a)));
        let fc_bias = if fc { s.bias[c] } else { 0 };
        beta.push(round(b[c] as i64 as i128 * vsum).wrapping_add(fc_bias));
    }
    Ok((u, beta))
}

/// Every tap of the convolution window at output position `(py, px)` that falls inside the
/// input: `f(q, t)` with `q` the input offset (`ci * h * w + iy * w + ix`) and `t` the weight
/// offset within an output channel's row (`(ci * k + ky) * k + kx`).
fn for_each_tap(geom: &ConvGeom, py: usize, px: usize, mut f: impl FnMut(usize, usize)) {
    for ci in 0..geom.c {
        for ky in 0..geom.k {
            let iy = (py * geom.stride + ky) as isize - geom.pad as isize;
            if iy < 0 || iy >= geom.h as isize {
                continue;
            }
            for kx in 0..geom.k {
                let ix = (px * geom.stride + kx) as isize - geom.pad as isize;
                if ix < 0 || ix >= geom.w as isize {
                    continue;
                }
                f(
                    ci * geom.h * geom.w + iy as usize * geom.w + ix as usize,
                    (ci * geom.k + ky) * geom.k + kx,
                );
            }
        }
    }
}

/// Public description of one fused block, fixed at offline time.
#[derive(Clone, Debug)]
pub struct GateGeom {
    /// Mode.
    pub mode: GateMode,
    /// The convolution on the batch.
    pub conv: ConvGeom,
    /// The average pooling after the gate (Pool mode).
    pub pool: Option<PoolGeom>,
    /// Comparison ring bits of the decisions.
    pub k: u32,
    /// Comparison mode.
    pub cmp_mode: CmpMode,
}

impl GateGeom {
    fn groups(&self) -> usize {
        self.conv.n * self.conv.o
    }
    fn pooled_len(&self) -> usize {
        self.pool
            .map(|p| self.conv.n * p.c * p.oh() * p.ow())
            .unwrap_or(0)
    }
    fn pooled_plane(&self) -> usize {
        self.pool.map(|p| p.oh() * p.ow()).unwrap_or(1)
    }
    fn one(&self) -> ConvGeom {
        ConvGeom { n: 1, ..self.conv }
    }

    /// Dealer bytes: (to P1, to P0).
    pub fn offline_bytes(&self) -> Result<(usize, usize)> {
        let g = self.groups();
        let n = self.conv.n;
        let (c1, c0) = cmp::cmp_offline_bytes(g, self.k, self.cmp_mode)?;
        let body = match self.mode {
            GateMode::Fold => 8 * n * self.one().w_len() + 8 * g + 8 * self.conv.out_len(),
            GateMode::Pool => 16 * self.pooled_len(),
        };
        Ok((c1 + 8 * g + 8 * g + body, c0))
    }

    /// Online bytes sent by one party (both convolution and gate).
    pub fn online_bytes(&self) -> Result<usize> {
        let g = self.groups();
        let cmp_b = cmp::cmp_online_bytes(g, self.k, self.cmp_mode)? + bits::plane_bytes(g);
        Ok(8 * self.conv.in_len()
            + cmp_b
            + match self.mode {
                GateMode::Fold => (g * self.k as usize).div_ceil(8) + 8 * n_w(self),
                GateMode::Pool => 8 * self.pooled_len() + 8 * g,
            })
    }
}

fn n_w(g: &GateGeom) -> usize {
    g.conv.n * g.one().w_len()
}

/// One party's material of a fused block for one batch.
pub struct GateMat {
    /// Public geometry.
    pub geom: GateGeom,
    a: Vec<u64>,
    pre_u: Vec<u64>,
    rho: Vec<u64>,
    cmp: CmpAny,
    t: Plane,
    ta: Vec<u64>,
    // Fold
    tb: Vec<u64>,
    tbb: Vec<u64>,
    m: Vec<u64>,
    cm: Vec<u64>,
    // Pool
    pre_p: Vec<u64>,
    r: Vec<u64>,
    tr: Vec<u64>,
}

/// The masked secrets a block uses.
pub struct GateWeights<'a> {
    /// The convolution's weight.
    pub w: &'a MaskedWeight,
    /// The convolution's bias (Fold only).
    pub bias: Option<&'a MaskedWeight>,
    /// The gate's `U`.
    pub u: &'a MaskedWeight,
}

/// `x[n, in] * U^T` for `U[c, in]`: per-image decision values `[n, c]` (one dot product per
/// image and channel; `U` is wide and short, so no transpose or blocking is needed).
fn apply_u(x: &[u64], u: &[u64], n: usize, in_len: usize, c: usize) -> Vec<u64> {
    use rayon::prelude::*;
    (0..n * c)
        .into_par_iter()
        .map(|j| {
            let (img, ch) = (j / c, j % c);
            dot(
                &x[img * in_len..(img + 1) * in_len],
                &u[ch * in_len..(ch + 1) * in_len],
            )
        })
        .collect()
}

/// Wrapping dot product (four independent accumulators so the multiplies pipeline).
fn dot(a: &[u64], b: &[u64]) -> u64 {
    let mut acc = [0u64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] = acc[i].wrapping_add(x[i].wrapping_mul(y[i]));
        }
    }
    let mut s = acc.iter().fold(0u64, |s, v| s.wrapping_add(*v));
    for (x, y) in ra.iter().zip(rb) {
        s = s.wrapping_add(x.wrapping_mul(*y));
    }
    s
}

/// Window sums of the convolution `w * x` over the pooling windows of `p`, computed at the
/// pooled resolution: pooling is linear in the output positions, so the im2col columns are
/// pooled first and the product has `k^2`-times fewer columns.
pub fn pooled_conv(x: &[u64], w: &[u64], g: &ConvGeom, p: &PoolGeom) -> Vec<u64> {
    let g1 = ConvGeom { n: 1, ..*g };
    let (rows, pp) = (g1.col_rows(), p.oh() * p.ow());
    let mut out = Vec::with_capacity(g.n * g.o * pp);
    for img in x.chunks(g1.in_len1()) {
        let cols = kernels::im2col(img, &g1);
        let pc = kernels::pool_sums(&cols, 1, rows, g1.oh(), g1.ow(), p.k, p.stride);
        out.extend(kernels::matmul(w, &pc, g.o, rows, pp));
    }
    out
}

/// Deal one block's material (all parties run this in lockstep).
pub fn deal_gate(d: &mut Deal, geom: &GateGeom, mw: &GateWeights<'_>) -> Result<GateMat> {
    let conv = geom.conv;
    let (n, ch) = (conv.n, conv.o);
    let in1 = conv.in_len1();
    let groups = geom.groups();
    let dealer = d.is_dealer();
    // The convolution's input mask and the decision values' correction B_U A.
    let a = d.rand_u64(conv.in_len());
    let cu_sec = a
        .secret
        .as_ref()
        .map(|asec| apply_u(asec, &mw.u.b, n, in1, ch));
    let cu = d.corr_u64(groups, cu_sec.as_deref())?;
    let rho = d.rand_u64(groups);
    let cmp = cmp::deal_cmp_any(d, groups, geom.k, rho.secret.as_deref(), geom.cmp_mode)?;
    let t = d.rand_bits(groups);
    let t_sec: Option<Vec<u64>> = t
        .secret
        .as_ref()
        .map(|ts| (0..groups).map(|g| bits::get(ts, g)).collect());
    let ta = d.corr_u64(groups, t_sec.as_deref())?;
    let mut mat = GateMat {
        geom: geom.clone(),
        a: Vec::new(),
        pre_u: Vec::new(),
        rho: rho.mine,
        cmp,
        t: t.mine,
        ta,
        tb: Vec::new(),
        tbb: Vec::new(),
        m: Vec::new(),
        cm: Vec::new(),
        pre_p: Vec::new(),
        r: Vec::new(),
        tr: Vec::new(),
    };
    match geom.mode {
        GateMode::Fold => {
            let g1 = geom.one();
            let wl = g1.w_len();
            let per = wl / ch;
            let bias = mw
                .bias
                .ok_or_else(|| MpcError::Model("fused gate: bias was not masked".into()))?;
            let tb_sec = t_sec.as_ref().map(|ts| {
                let mut v = Vec::with_capacity(n * wl);
                for img in 0..n {
                    for c in 0..ch {
                        let tc = ts[img * ch + c];
                        v.extend(mw.w.b[c * per..(c + 1) * per].iter().map(|b| tc * b));
                    }
                }
                v
            });
            mat.tb = d.corr_u64(n * wl, tb_sec.as_deref())?;
            let tbb_sec = t_sec.as_ref().map(|ts| {
                (0..groups)
                    .map(|g| ts[g].wrapping_mul(bias.b[g % ch]))
                    .collect::<Vec<_>>()
            });
            mat.tbb = d.corr_u64(groups, tbb_sec.as_deref())?;
            let m = d.rand_u64(n * wl);
            let cm_sec = match (&a.secret, &m.secret) {
                (Some(asec), Some(msec)) => {
                    let mut v = Vec::with_capacity(conv.out_len());
                    for img in 0..n {
                        v.extend(kernels::conv2d(
                            &asec[img * in1..(img + 1) * in1],
                            &msec[img * wl..(img + 1) * wl],
                            &g1,
                        ));
                    }
                    Some(v)
                }
                _ => None,
            };
            mat.cm = d.corr_u64(conv.out_len(), cm_sec.as_deref())?;
            mat.m = m.mine;
        }
        GateMode::Pool => {
            let p = geom
                .pool
                .ok_or_else(|| MpcError::Model("pooled gate without pooling".into()))?;
            let cp_sec = a
                .secret
                .as_ref()
                .map(|asec| pooled_conv(asec, &mw.w.b, &conv, &p));
            let cp = d.corr_u64(geom.pooled_len(), cp_sec.as_deref())?;
            let r = d.rand_u64(geom.pooled_len());
            let pp = geom.pooled_plane();
            let tr_sec = match (&t_sec, &r.secret) {
                (Some(ts), Some(rs)) => Some(
                    rs.iter()
                        .enumerate()
                        .map(|(j, &rv)| ts[j / pp].wrapping_mul(rv))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            };
            mat.tr = d.corr_u64(geom.pooled_len(), tr_sec.as_deref())?;
            if !dealer {
                let mut pre = pooled_conv(&a.mine, &mw.w.f, &conv, &p);
                crate::ring::add_assign(&mut pre, &cp);
                mat.pre_p = pre;
            }
            mat.r = r.mine;
        }
    }
    if !dealer {
        let mut pre_u = apply_u(&a.mine, &mw.u.f, n, in1, ch);
        crate::ring::add_assign(&mut pre_u, &cu);
        mat.pre_u = pre_u;
        mat.a = a.mine;
    }
    Ok(mat)
}

/// Shares of the decision values `z = U x + beta` from the opened `E = x - A`.
fn decision_values(mat: &GateMat, u: &MaskedWeight, beta: &[u64], e: &[u64]) -> Result<Vec<u64>> {
    let conv = mat.geom.conv;
    let ch = conv.o;
    crate::ring::check_len("fused gate beta", beta, ch)?;
    let mut z = apply_u(e, &u.online, conv.n, conv.in_len1(), ch);
    crate::ring::add_assign(&mut z, &mat.pre_u);
    for (j, v) in z.iter_mut().enumerate() {
        *v = v.wrapping_add(beta[j % ch]);
    }
    Ok(z)
}

/// The opened decision bits `d' = d XOR t` from the masked decision values `c = z + rho`.
fn decide(comm: &mut Comm, mat: &GateMat, c: &[u64]) -> Result<Plane> {
    let b = cmp::drelu_any(comm, &mat.cmp, c)?;
    let groups = mat.geom.groups();
    Ok(cmp::open_planes(comm, &[&bits::xor(&b, &mat.t)], groups)?
        .pop()
        .unwrap_or_default())
}

/// `(d'_g, arithmetic share of d_g)` with `d = d' + (1 - 2 d') t`.
fn decision_shares(me: usize, dpub: &Plane, ta: &[u64]) -> Vec<(u64, u64)> {
    ta.iter()
        .enumerate()
        .map(|(g, &t)| {
            let dp = bits::get(dpub, g);
            let sign = 1u64.wrapping_sub(2 * dp);
            let da = sign
                .wrapping_mul(t)
                .wrapping_add(if me == 0 { dp } else { 0 });
            (dp, da)
        })
        .collect()
}

/// This party's share of `z + rho` mod 2^k.
fn masked_decisions(mat: &GateMat, z: &[u64]) -> Vec<u64> {
    let mask = (1u64 << mat.geom.k) - 1;
    z.iter()
        .zip(&mat.rho)
        .map(|(a, b)| a.wrapping_add(*b) & mask)
        .collect()
}

/// Fold mode, online (P0/P1): the gated, truncated convolution output of the batch. The
/// decision's traffic is recorded under `gate_label`.
pub fn fold_online(
    comm: &mut Comm,
    mat: &GateMat,
    mw: &GateWeights<'_>,
    beta: &[u64],
    x: &[u64],
    frac: u32,
    gate_label: &str,
) -> Result<Vec<u64>> {
    let me = comm.party();
    let conv = mat.geom.conv;
    let (n, ch) = (conv.n, conv.o);
    let g1 = mat.geom.one();
    let (in1, wl, out1) = (g1.in_len(), g1.w_len(), g1.out_len());
    let per = wl / ch;
    let bias = mw
        .bias
        .ok_or_else(|| MpcError::Model("fused gate: bias was not masked".into()))?;
    crate::ring::check_len("fused convolution input", x, conv.in_len())?;
    let e = cmp::open_u64(comm, &crate::ring::sub(x, &mat.a))?;
    let conv_label = comm.label().to_string();
    comm.set_label(gate_label);
    let z = decision_values(mat, mw.u, beta, &e)?;
    let c = cmp::open_kbit(comm, &masked_decisions(mat, &z), mat.geom.k)?;
    let dpub = decide(comm, mat, &c)?;
    let ds = decision_shares(me, &dpub, &mat.ta);
    comm.set_label(&conv_label);
    // Shares of the per-image weights W' = d W and bias b' = d b.
    let mut wp = Vec::with_capacity(n * wl);
    let mut bp = Vec::with_capacity(n * ch);
    for img in 0..n {
        for c in 0..ch {
            let g = img * ch + c;
            let (dp, da) = ds[g];
            let sign = 1u64.wrapping_sub(2 * dp);
            let f = &mw.w.f[c * per..(c + 1) * per];
            let bi = &mw.w.b[c * per..(c + 1) * per];
            let tb = &mat.tb[g * per..(g + 1) * per];
            wp.extend((0..per).map(|j| {
                da.wrapping_mul(f[j])
                    .wrapping_add(dp.wrapping_mul(bi[j]))
                    .wrapping_add(sign.wrapping_mul(tb[j]))
            }));
            bp.push(
                da.wrapping_mul(bias.f[c])
                    .wrapping_add(dp.wrapping_mul(bias.b[c]))
                    .wrapping_add(sign.wrapping_mul(mat.tbb[g])),
            );
        }
    }
    let gpub = cmp::open_u64(comm, &crate::ring::sub(&wp, &mat.m))?;
    let mut y = Vec::with_capacity(conv.out_len());
    for img in 0..n {
        let ws = &wp[img * wl..(img + 1) * wl];
        let gs = &gpub[img * wl..(img + 1) * wl];
        let mut yi = kernels::conv2d(&e[img * in1..(img + 1) * in1], ws, &g1);
        let ga = kernels::conv2d(&mat.a[img * in1..(img + 1) * in1], gs, &g1);
        crate::ring::add_assign(&mut yi, &ga);
        crate::ring::add_assign(&mut yi, &mat.cm[img * out1..(img + 1) * out1]);
        kernels::add_channel_bias(&mut yi, &bp[img * ch..(img + 1) * ch], g1.oh() * g1.ow());
        y.extend(yi);
    }
    fixed::trunc_share_vec(&mut y, frac, me);
    Ok(y)
}

/// Pool mode, convolution step (P0/P1): opens `E`, returns the pooled, truncated (ungated)
/// values `Q` and the decision value shares `z`.
pub fn pool_conv_online(
    comm: &mut Comm,
    mat: &GateMat,
    mw: &GateWeights<'_>,
    conv_bias: &[u64],
    beta: &[u64],
    x: &[u64],
    frac: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let me = comm.party();
    let conv = mat.geom.conv;
    let p = mat
        .geom
        .pool
        .ok_or_else(|| MpcError::Model("pooled gate without pooling".into()))?;
    crate::ring::check_len("fused convolution input", x, conv.in_len())?;
    crate::ring::check_len("convolution bias", conv_bias, conv.o)?;
    let e = cmp::open_u64(comm, &crate::ring::sub(x, &mat.a))?;
    let z = decision_values(mat, mw.u, beta, &e)?;
    let mut s = pooled_conv(&e, &mw.w.online, &conv, &p);
    crate::ring::add_assign(&mut s, &mat.pre_p);
    let area = (p.k * p.k) as u64;
    let kb: Vec<u64> = conv_bias.iter().map(|b| b.wrapping_mul(area)).collect();
    kernels::add_channel_bias(&mut s, &kb, p.oh() * p.ow());
    let c = fixed::pool_factor(p.k, frac);
    fixed::trunc_share_vec(&mut s, frac, me);
    for v in &mut s {
        *v = v.wrapping_mul(c);
    }
    fixed::trunc_share_vec(&mut s, frac, me);
    Ok((s, z))
}

/// Pool mode, gate step (P0/P1): one round opens `H = Q - R` and the masked decision values,
/// then the comparison; returns the gated pooled output `d Q`.
pub fn pool_gate_online(comm: &mut Comm, mat: &GateMat, q: &[u64], z: &[u64]) -> Result<Vec<u64>> {
    let me = comm.party();
    let len = mat.geom.pooled_len();
    crate::ring::check_len("pooled gate input", q, len)?;
    let mut msg = crate::ring::sub(q, &mat.r);
    msg.extend(masked_decisions(mat, z));
    let opened = cmp::open_u64(comm, &msg)?;
    let (h, zc) = opened.split_at(len);
    let mask = (1u64 << mat.geom.k) - 1;
    let c: Vec<u64> = zc.iter().map(|v| v & mask).collect();
    let dpub = decide(comm, mat, &c)?;
    let ds = decision_shares(me, &dpub, &mat.ta);
    let pp = mat.geom.pooled_plane();
    Ok((0..len)
        .map(|j| {
            let (dp, _) = ds[j / pp];
            let sign = 1u64.wrapping_sub(2 * dp);
            let ta = mat.ta[j / pp];
            dp.wrapping_mul(q[j])
                .wrapping_add(sign.wrapping_mul(ta.wrapping_mul(h[j]).wrapping_add(mat.tr[j])))
        })
        .collect())
}
