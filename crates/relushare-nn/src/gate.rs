//! The ReLU-sharing gate for training on the `flex` CPU backend, fused into one operation.
//!
//! A sharing layer computes, for every image `b` and group `g`,
//! `z_bg = Σ_{i ∈ g} v_i x_bi + c_g` (learned and FC deciders; one-hot is the same with `v` the
//! indicator of the groups' leaders and `c = 0`), the hard decision `d_bg = [z_bg >= 0]`, and
//! `y_bi = x_bi · (d_{b,g(i)} XOR f_bi)` with the noise flips `f` (Eq. 4; all zero without
//! noise). Training uses the straight-through estimator of `net`: the gate is
//! `d + σ(z/τ) − sg(σ(z/τ))`, so the backward pass is
//!
//! - `∂L/∂x_bi = dy_bi · keep_bi + v_i · δ_{b,g(i)}` (keep = the forward's 0/1 factor),
//! - `δ_bg = σ'(z_bg/τ)/τ · Σ_{i ∈ g} dy_bi · x_bi · (1 − 2 f_bi)`,
//! - `∂L/∂v_i = Σ_b δ_{b,g(i)} x_bi`, `∂L/∂c_g = Σ_b δ_bg`.
//!
//! Built from Burn's generic ops the layer is a scatter-add (`select_assign`), a gather
//! (`select`) and half a dozen element-wise passes over `[B, N]` tensors, each with its own
//! backward; on flex that made `uniform32` train at about 0.6x the speed of plain ReLU. Here
//! the forward is one pass over `x` per image and the backward one more (images split over the
//! rayon pool). The operation is registered as a backend extension ([`GateExt`]) on `Flex` and
//! `Autodiff<Flex>` like [`crate::conv`]; [`shared_gate`] uses it on flex and falls back to the
//! generic formulation elsewhere. The tests compare values and gradients with that formulation.

use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::activation;
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::conv::{fast_kernels, flex_slice, flex_values, is_flex};

/// A run of consecutive activations of one group: `start..start + len` in group `group`.
/// Groups are unions of runs (a whole channel is one run, a `k x k` patch `k` runs of `k`), and
/// the kernels work run by run so that the inner loops are contiguous dot products and copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
    pub group: u32,
}

/// The runs of a group map (see [`Run`]).
pub fn runs_of(group_of: &[u32]) -> Vec<Run> {
    let mut out: Vec<Run> = Vec::new();
    for (i, &g) in group_of.iter().enumerate() {
        match out.last_mut() {
            Some(r) if r.group == g => r.len += 1,
            _ => out.push(Run {
                start: i as u32,
                len: 1,
                group: g,
            }),
        }
    }
    out
}

/// Whether the runs are too short (under 8 members on average, e.g. 3x3 patches) for the
/// run-wise loops to pay; the kernels then go element by element.
fn short_runs(a: &GateArgs) -> bool {
    a.runs.len() * 8 > a.group_of.len()
}

/// `Σ a_i b_i` with independent partial sums (vectorised by the compiler).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a_i b_i (1 − 2 f_i)` with independent partial sums, like [`dot`].
fn signed_dot(a: &[f32], b: &[f32], f: &[u8]) -> f32 {
    let sign = |x: f32, fi: u8| if fi != 0 { -x } else { x };
    if a.len() < 8 {
        return a
            .iter()
            .zip(b)
            .zip(f)
            .map(|((x, y), &fi)| sign(x * y, fi))
            .sum();
    }
    let mut acc = [0f32; 8];
    let (ca, cb, cf) = (a.chunks_exact(8), b.chunks_exact(8), f.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cf.remainder())
        .map(|((x, y), &fi)| sign(x * y, fi))
        .sum();
    for ((x, y), fl) in ca.zip(cb).zip(cf) {
        for j in 0..8 {
            acc[j] += sign(x[j] * y[j], fl[j]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// What a gate call needs besides its tensors.
#[derive(Debug, Clone)]
pub struct GateArgs {
    /// Global group id of every activation (`N` entries).
    pub group_of: Arc<Vec<u32>>,
    /// The same map as runs ([`runs_of`]).
    pub runs: Arc<Vec<Run>>,
    /// Number of groups `G`.
    pub groups: usize,
    /// Noise flips `f_bi` (`B·N` entries, 0 or 1), if the layer is noisy in this pass.
    pub flips: Option<Arc<Vec<u8>>>,
    /// Straight-through temperature τ.
    pub temperature: f32,
    /// The map as a grid on every plane ([`grid_of`]), when it is one: short-run maps (small
    /// patches) then go band by band.
    pub grid: Option<Arc<Grid>>,
}

/// A group map that tiles every channel plane with the same grid of row bands and column
/// segments, each channel with groups of its own:
/// `group_of[c, y, x] = base + (c·bands + band(y))·segs + seg(x)`. Patch groupings (either edge
/// policy) are grids. The kernels then sum a band's rows column by column (contiguous,
/// vectorised) and each segment of those column sums, instead of going run by run, and expand a
/// band's decisions to one row mask applied to each of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grid {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Row range of every band.
    pub bands: Vec<(usize, usize)>,
    /// Column range of every segment.
    pub segs: Vec<(usize, usize)>,
    /// Segment of every column (to expand a band's per-segment values to a row).
    pub seg_of: Vec<u32>,
}

impl Grid {
    /// `row[x] = per_segment[segment of x]`.
    #[inline]
    fn expand<T: Copy>(&self, per_segment: &[T], row: &mut [T]) {
        for (o, &k) in row.iter_mut().zip(&self.seg_of) {
            *o = per_segment[k as usize];
        }
    }
}

/// Maximal ranges of equal consecutive values.
fn ranges_of(ids: impl Iterator<Item = u32>) -> Vec<(usize, usize, u32)> {
    let mut out: Vec<(usize, usize, u32)> = Vec::new();
    for (i, g) in ids.enumerate() {
        match out.last_mut() {
            Some(r) if r.2 == g => r.1 = i + 1,
            _ => out.push((i, i + 1, g)),
        }
    }
    out
}

/// The grid of `group_of` over `c` planes of `h x w` with group ids `0..c·bands·segs` in
/// channel, band, segment order, if the map is one (see [`Grid`]).
pub fn grid_of(group_of: &[u32], c: usize, h: usize, w: usize) -> Option<Grid> {
    if c == 0 || h == 0 || w == 0 || group_of.len() != c * h * w {
        return None;
    }
    let segs: Vec<(usize, usize)> = ranges_of(group_of[..w].iter().copied())
        .into_iter()
        .map(|(a, b, _)| (a, b))
        .collect();
    let bands: Vec<(usize, usize)> = ranges_of((0..h).map(|y| group_of[y * w]))
        .into_iter()
        .map(|(a, b, _)| (a, b))
        .collect();
    let (nb, ns) = (bands.len(), segs.len());
    let mut band_of = vec![0usize; h];
    for (k, &(a, b)) in bands.iter().enumerate() {
        band_of[a..b].fill(k);
    }
    let mut seg_of = vec![0usize; w];
    for (k, &(a, b)) in segs.iter().enumerate() {
        seg_of[a..b].fill(k);
    }
    let ok = group_of.iter().enumerate().all(|(i, &g)| {
        let (ch, y, x) = (i / (h * w), i / w % h, i % w);
        g as usize == (ch * nb + band_of[y]) * ns + seg_of[x]
    });
    ok.then_some(Grid {
        c,
        h,
        w,
        bands,
        segs,
        seg_of: seg_of.iter().map(|&k| k as u32).collect(),
    })
}

/// `out[segment] += Σ_{(y, x) in band × segment} a[y, x]·b[y, x]` for one band of one plane
/// (`a`, `b` the plane's rows), through column sums; `sign` flips a term where it is set.
#[inline]
fn band_sums(
    grid: &Grid,
    band: (usize, usize),
    a: &[f32],
    b: &[f32],
    flips: Option<&[u8]>,
    col: &mut [f32],
    out: &mut [f32],
) {
    let w = grid.w;
    col.fill(0.0);
    for y in band.0..band.1 {
        let r = y * w..(y + 1) * w;
        match flips {
            None => {
                for ((s, &ai), &bi) in col.iter_mut().zip(&a[r.clone()]).zip(&b[r]) {
                    *s += ai * bi;
                }
            }
            Some(f) => {
                for (((s, &ai), &bi), &fi) in col
                    .iter_mut()
                    .zip(&a[r.clone()])
                    .zip(&b[r.clone()])
                    .zip(&f[r])
                {
                    let t = ai * bi;
                    *s += if fi != 0 { -t } else { t };
                }
            }
        }
    }
    for (o, &(x0, x1)) in out.iter_mut().zip(&grid.segs) {
        *o += col[x0..x1].iter().sum::<f32>();
    }
}

fn flex2(values: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn flex1(values: Vec<f32>, len: usize) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [len]))
}

/// `out[i] = x[i]` where `keep[i] != 0`, else 0, without branches (vectorised).
fn masked_copy(out: &mut [f32], x: &[f32], keep: impl Iterator<Item = bool>) {
    for ((o, &xi), k) in out.iter_mut().zip(x).zip(keep) {
        *o = if k { xi } else { 0.0 };
    }
}

/// Forward on plain slices: `(y [B·N], z [B·G])` (public for the kernel benchmark).
///
/// Per image: the group sums `z` run by run (element by element for short runs), then the
/// decisions as bytes, then `y` in one branch-free pass (run by run when runs are long).
pub fn forward_values(x: &[f32], v: &[f32], c: &[f32], a: &GateArgs) -> (Vec<f32>, Vec<f32>) {
    let n = v.len();
    let g = a.groups;
    let b = x.len() / n.max(1);
    let short = short_runs(a);
    let mut y = vec![0f32; b * n];
    let mut z = vec![0f32; b * g];
    y.par_chunks_mut(n.max(1))
        .zip(z.par_chunks_mut(g.max(1)))
        .enumerate()
        .for_each(|(row, (yr, zr))| {
            let xr = &x[row * n..(row + 1) * n];
            zr.copy_from_slice(c);
            let flips = a.flips.as_ref().map(|f| &f[row * n..(row + 1) * n]);
            if let Some(grid) = a.grid.as_deref().filter(|_| short) {
                grid_forward(grid, xr, v, zr, flips, yr);
                return;
            }
            if short {
                // the runs partition 0..n in order: one pass, no slicing per run
                let mut pv = v.iter().zip(xr);
                for r in a.runs.iter() {
                    let t: f32 = pv.by_ref().take(r.len as usize).map(|(a, b)| a * b).sum();
                    zr[r.group as usize] += t;
                }
            } else {
                for r in a.runs.iter() {
                    let s = r.start as usize..(r.start + r.len) as usize;
                    zr[r.group as usize] += dot(&v[s.clone()], &xr[s]);
                }
            }
            match (short, flips) {
                (false, None) => {
                    // y is zero-initialised: only kept runs are written
                    for r in a.runs.iter().filter(|r| zr[r.group as usize] >= 0.0) {
                        let s = r.start as usize..(r.start + r.len) as usize;
                        yr[s.clone()].copy_from_slice(&xr[s]);
                    }
                }
                (false, Some(f)) => {
                    for r in a.runs.iter() {
                        let s = r.start as usize..(r.start + r.len) as usize;
                        let d = (zr[r.group as usize] >= 0.0) as u8;
                        masked_copy(
                            &mut yr[s.clone()],
                            &xr[s.clone()],
                            f[s].iter().map(|&fi| fi != d),
                        );
                    }
                }
                (true, f) => {
                    let d: Vec<u8> = zr.iter().map(|&zg| (zg >= 0.0) as u8).collect();
                    let dec = a.group_of.iter().map(|&gi| d[gi as usize]);
                    match f {
                        Some(f) => masked_copy(yr, xr, dec.zip(f).map(|(di, &fi)| di != fi)),
                        None => masked_copy(yr, xr, dec.map(|di| di != 0)),
                    }
                }
            }
        });
    (y, z)
}

/// `out = dy·keep + v·δ_g` element by element (the input gradient of the gate).
fn fused_dx(
    out: &mut [f32],
    dy: &[f32],
    v: &[f32],
    keep: impl Iterator<Item = bool>,
    delta: impl Iterator<Item = f32>,
) {
    for ((((o, &dyi), &vi), k), d) in out.iter_mut().zip(dy).zip(v).zip(keep).zip(delta) {
        *o = if k { dyi } else { 0.0 } + vi * d;
    }
}

/// Elements per task of the `dv` reduction over images.
const DV_CHUNK: usize = 2048;

/// Backward on plain slices: `(dx, dv, dc)` (public for the kernel benchmark).
pub fn backward_values(
    x: &[f32],
    v: &[f32],
    z: &[f32],
    dy: &[f32],
    a: &GateArgs,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = v.len();
    let g = a.groups;
    let b = x.len() / n.max(1);
    let inv_t = 1.0 / a.temperature;
    let short = short_runs(a);
    let mut dx = vec![0f32; b * n];
    let mut delta = vec![0f32; b * g];
    dx.par_chunks_mut(n.max(1))
        .zip(delta.par_chunks_mut(g.max(1)))
        .enumerate()
        .for_each(|(row, (dxr, dr))| {
            let xr = &x[row * n..(row + 1) * n];
            let dyr = &dy[row * n..(row + 1) * n];
            let zr = &z[row * g..(row + 1) * g];
            let flips = a.flips.as_ref().map(|f| &f[row * n..(row + 1) * n]);
            if let Some(grid) = a.grid.as_deref().filter(|_| short) {
                grid_backward(grid, xr, dyr, v, zr, flips, inv_t, dr, dxr);
                return;
            }
            // δ: Σ_{i∈g} dy·x·(1 − 2f) run by run (each run summed on its own: no chain
            // through dr), then the sigmoid's slope
            match (short, flips) {
                (true, None) => {
                    let mut pd = dyr.iter().zip(xr);
                    for r in a.runs.iter() {
                        let t: f32 = pd.by_ref().take(r.len as usize).map(|(a, b)| a * b).sum();
                        dr[r.group as usize] += t;
                    }
                }
                (true, Some(f)) => {
                    let mut pd = dyr.iter().zip(xr).zip(f);
                    for r in a.runs.iter() {
                        let t: f32 = pd
                            .by_ref()
                            .take(r.len as usize)
                            .map(|((a, b), &fi)| if fi != 0 { -a * b } else { a * b })
                            .sum();
                        dr[r.group as usize] += t;
                    }
                }
                (false, f) => {
                    for r in a.runs.iter() {
                        let s = r.start as usize..(r.start + r.len) as usize;
                        dr[r.group as usize] += match f {
                            Some(f) => signed_dot(&dyr[s.clone()], &xr[s.clone()], &f[s]),
                            None => dot(&dyr[s.clone()], &xr[s]),
                        };
                    }
                }
            }
            for (d, &zg) in dr.iter_mut().zip(zr) {
                let s = 1.0 / (1.0 + (-zg * inv_t).exp());
                *d *= s * (1.0 - s) * inv_t;
            }
            // dx = dy·keep + v·δ in one pass: element by element with the group gathered for
            // short runs, run by run otherwise
            if short {
                let d: Vec<u8> = zr.iter().map(|&zg| (zg >= 0.0) as u8).collect();
                let dg = a.group_of.iter().map(|&gi| dr[gi as usize]);
                let dec = a.group_of.iter().map(|&gi| d[gi as usize]);
                match flips {
                    Some(f) => fused_dx(dxr, dyr, v, dec.zip(f).map(|(di, &fi)| di != fi), dg),
                    None => fused_dx(dxr, dyr, v, dec.map(|di| di != 0), dg),
                }
            } else {
                for r in a.runs.iter() {
                    let s = r.start as usize..(r.start + r.len) as usize;
                    let (d, keep) = (dr[r.group as usize], zr[r.group as usize] >= 0.0);
                    let (o, dyr, vr) = (&mut dxr[s.clone()], &dyr[s.clone()], &v[s.clone()]);
                    match flips {
                        Some(f) => {
                            for (((o, &dyi), &vi), &fi) in o.iter_mut().zip(dyr).zip(vr).zip(&f[s])
                            {
                                *o = if keep != (fi != 0) { dyi } else { 0.0 } + vi * d;
                            }
                        }
                        None if keep => {
                            for ((o, &dyi), &vi) in o.iter_mut().zip(dyr).zip(vr) {
                                *o = dyi + vi * d;
                            }
                        }
                        None => {
                            for (o, &vi) in o.iter_mut().zip(vr) {
                                *o = vi * d;
                            }
                        }
                    }
                }
            }
        });
    // dv_i = Σ_b δ_{b,g(i)} x_bi, split over the pool: run by run when runs are long (a
    // whole run's images in turn), else in contiguous element chunks with the group gathered
    let mut dv = vec![0f32; n];
    if let Some(grid) = a.grid.as_deref().filter(|_| short) {
        // plane by plane: each band's slopes expanded to one row, applied to its rows
        let (plane, nb, ns) = (grid.h * grid.w, grid.bands.len(), grid.segs.len());
        dv.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(ch, out)| {
                let mut slope = vec![0f32; grid.w];
                for row in 0..b {
                    let xp = &x[row * n + ch * plane..][..plane];
                    for (k, &band) in grid.bands.iter().enumerate() {
                        let db = &delta[row * g + (ch * nb + k) * ns..][..ns];
                        grid.expand(db, &mut slope);
                        for yy in band.0..band.1 {
                            let r = yy * grid.w..(yy + 1) * grid.w;
                            for ((o, &xi), &sl) in out[r.clone()].iter_mut().zip(&xp[r]).zip(&slope)
                            {
                                *o += sl * xi;
                            }
                        }
                    }
                }
            });
    } else if short {
        dv.par_chunks_mut(DV_CHUNK)
            .enumerate()
            .for_each(|(k, out)| {
                let lo = k * DV_CHUNK;
                let groups = &a.group_of[lo..lo + out.len()];
                for row in 0..b {
                    let dr = &delta[row * g..(row + 1) * g];
                    let xr = &x[row * n + lo..row * n + lo + out.len()];
                    for ((o, &xi), &gi) in out.iter_mut().zip(xr).zip(groups) {
                        *o += dr[gi as usize] * xi;
                    }
                }
            });
    } else {
        let mut parts: Vec<(&Run, &mut [f32])> = Vec::with_capacity(a.runs.len());
        let mut rest = dv.as_mut_slice();
        for r in a.runs.iter() {
            let (head, tail) = rest.split_at_mut(r.len as usize);
            parts.push((r, head));
            rest = tail;
        }
        parts.into_par_iter().with_min_len(16).for_each(|(r, out)| {
            let lo = r.start as usize;
            for row in 0..b {
                let d = delta[row * g + r.group as usize];
                let xr = &x[row * n + lo..row * n + lo + out.len()];
                for (o, &xi) in out.iter_mut().zip(xr) {
                    *o += d * xi;
                }
            }
        });
    }
    let mut dc = vec![0f32; g];
    for row in delta.chunks(g.max(1)) {
        for (o, d) in dc.iter_mut().zip(row) {
            *o += d;
        }
    }
    (dx, dv, dc)
}

/// The forward pass of one image on a [`Grid`]: `z` (holding `c`) gets the group sums, `y` the
/// gated values.
fn grid_forward(
    grid: &Grid,
    x: &[f32],
    v: &[f32],
    z: &mut [f32],
    flips: Option<&[u8]>,
    y: &mut [f32],
) {
    let (plane, ns) = (grid.h * grid.w, grid.segs.len());
    let mut col = vec![0f32; grid.w];
    let mut mask = vec![0u8; grid.w];
    let mut dec = vec![0u8; ns];
    for ch in 0..grid.c {
        let p = ch * plane..(ch + 1) * plane;
        let (xp, vp, yp) = (&x[p.clone()], &v[p.clone()], &mut y[p.clone()]);
        let fp = flips.map(|f| &f[p]);
        for (k, &band) in grid.bands.iter().enumerate() {
            let zb = &mut z[(ch * grid.bands.len() + k) * ns..][..ns];
            band_sums(grid, band, vp, xp, None, &mut col, zb);
            for (d, &zg) in dec.iter_mut().zip(zb.iter()) {
                *d = (zg >= 0.0) as u8;
            }
            grid.expand(&dec, &mut mask);
            for yy in band.0..band.1 {
                let r = yy * grid.w..(yy + 1) * grid.w;
                let keep = mask.iter();
                match fp {
                    Some(f) => masked_copy(
                        &mut yp[r.clone()],
                        &xp[r.clone()],
                        keep.zip(&f[r]).map(|(&m, &fi)| m != fi),
                    ),
                    None => masked_copy(&mut yp[r.clone()], &xp[r], keep.map(|&m| m != 0)),
                }
            }
        }
    }
}

/// The backward pass of one image on a [`Grid`]: `delta` gets δ, `dx` the input gradient.
#[allow(clippy::too_many_arguments)]
fn grid_backward(
    grid: &Grid,
    x: &[f32],
    dy: &[f32],
    v: &[f32],
    z: &[f32],
    flips: Option<&[u8]>,
    inv_t: f32,
    delta: &mut [f32],
    dx: &mut [f32],
) {
    let (plane, ns) = (grid.h * grid.w, grid.segs.len());
    let mut col = vec![0f32; grid.w];
    let mut keep = vec![0u8; grid.w];
    let mut slope = vec![0f32; grid.w];
    let mut dec = vec![0u8; ns];
    for ch in 0..grid.c {
        let p = ch * plane..(ch + 1) * plane;
        let (xp, dyp, vp, dxp) = (
            &x[p.clone()],
            &dy[p.clone()],
            &v[p.clone()],
            &mut dx[p.clone()],
        );
        let fp = flips.map(|f| &f[p]);
        for (k, &band) in grid.bands.iter().enumerate() {
            let off = (ch * grid.bands.len() + k) * ns;
            let db = &mut delta[off..off + ns];
            band_sums(grid, band, dyp, xp, fp, &mut col, db);
            for ((d, dk), &zg) in db.iter_mut().zip(dec.iter_mut()).zip(&z[off..off + ns]) {
                let s = 1.0 / (1.0 + (-zg * inv_t).exp());
                *d *= s * (1.0 - s) * inv_t;
                *dk = (zg >= 0.0) as u8;
            }
            grid.expand(&dec, &mut keep);
            grid.expand(db, &mut slope);
            for yy in band.0..band.1 {
                let r = yy * grid.w..(yy + 1) * grid.w;
                let dl = slope.iter().copied();
                match fp {
                    Some(f) => fused_dx(
                        &mut dxp[r.clone()],
                        &dyp[r.clone()],
                        &vp[r.clone()],
                        keep.iter().zip(&f[r]).map(|(&m, &fi)| m != fi),
                        dl,
                    ),
                    None => fused_dx(
                        &mut dxp[r.clone()],
                        &dyp[r.clone()],
                        &vp[r],
                        keep.iter().map(|&m| m != 0),
                        dl,
                    ),
                }
            }
        }
    }
}

fn flex_forward(
    x: FlexTensor,
    v: FlexTensor,
    c: FlexTensor,
    a: &GateArgs,
) -> (FlexTensor, Vec<f32>) {
    let shape = x.shape();
    let (x, v, c) = (flex_values(x), flex_values(v), flex_values(c));
    let (y, z) = forward_values(flex_slice(&x), flex_slice(&v), flex_slice(&c), a);
    (flex2(y, [shape[0], shape[1]]), z)
}

/// The fused gate: `x` is `[B, N]`, `v` `[N]`, `c` `[G]`, all `f32`; the caller
/// ([`shared_gate`]) checks shapes and backend.
#[backend_extension(Flex, Autodiff)]
pub trait GateExt: Backend {
    fn relushare_shared_gate(
        x: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: FloatTensor<Self>,
        args: GateArgs,
    ) -> FloatTensor<Self>;
}

impl GateExt for Flex {
    fn relushare_shared_gate(
        x: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: FloatTensor<Self>,
        args: GateArgs,
    ) -> FloatTensor<Self> {
        flex_forward(x, v, c, &args).0
    }
}

/// The backward step of [`GateExt::relushare_shared_gate`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct GateBackward;

impl Backward<Flex, 3> for GateBackward {
    /// Checkpointed `x` and `v`, the decision values `z` and the call's arguments.
    type State = (NodeId, NodeId, Vec<f32>, GateArgs);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_v, node_c] = ops.parents;
        let dy = flex_values(grads.consume::<Flex>(&ops.node));
        let (x_id, v_id, z, args) = ops.state;
        let x = flex_values(ckpt.retrieve_node_output::<FlexTensor>(x_id));
        let v = flex_values(ckpt.retrieve_node_output::<FlexTensor>(v_id));
        let shape = x.shape();
        let (dx, dv, dc) =
            backward_values(flex_slice(&x), flex_slice(&v), &z, flex_slice(&dy), &args);
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex2(dx, [shape[0], shape[1]]));
        }
        if let Some(node) = node_v {
            let n = dv.len();
            grads.register::<Flex>(node.id, flex1(dv, n));
        }
        if let Some(node) = node_c {
            let g = dc.len();
            grads.register::<Flex>(node.id, flex1(dc, g));
        }
    }
}

impl<C: CheckpointStrategy> GateExt for Autodiff<Flex, C> {
    fn relushare_shared_gate(
        x: FloatTensor<Self>,
        v: FloatTensor<Self>,
        c: FloatTensor<Self>,
        args: GateArgs,
    ) -> FloatTensor<Self> {
        match GateBackward
            .prepare::<C>([x.node(), v.node(), c.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let v_id = prep.checkpoint(&v);
                let (y, z) = flex_forward(
                    x.into_primitive(),
                    v.into_primitive(),
                    c.into_primitive(),
                    &args,
                );
                prep.finish((x_id, v_id, z, args), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                flex_forward(
                    x.into_primitive(),
                    v.into_primitive(),
                    c.into_primitive(),
                    &args,
                )
                .0,
            ),
        }
    }
}

/// The sharing gate `y = x · (step(z_g) XOR f)` with the straight-through gradient when
/// `straight_through` (training), the hard step otherwise: `x` `[B, N]`, `v` `[N]` (the
/// leaders' indicator for one-hot), `c` `[G]` per-group offsets (the FC bias, else zeros),
/// `group_of` `[N]` as a tensor and in `args`, `flips` `[B, N]` of 0/1 in `args`. This module's
/// fused kernel on flex for `f32`; Burn's generic ops ([`generic_gate`]) elsewhere.
pub fn shared_gate(
    x: Tensor<2>,
    v: Tensor<1>,
    c: Tensor<1>,
    group_of: &Tensor<1, Int>,
    args: GateArgs,
    straight_through: bool,
) -> Tensor<2> {
    let [_, n] = x.dims();
    let fits = v.dims() == [n]
        && c.dims() == [args.groups]
        && args.group_of.len() == n
        && args.runs.iter().map(|r| r.len as usize).sum::<usize>() == n
        && x.dtype() == DType::F32;
    // the fused backward is the straight-through one; a hard gate under autodiff has none
    let ad = x.device().is_autodiff();
    if fits && fast_kernels() && is_flex(&x.device()) && (straight_through || !ad) {
        Tensor::from_dispatch(<Dispatch as GateExt>::relushare_shared_gate(
            x.into_dispatch(),
            v.into_dispatch(),
            c.into_dispatch(),
            args,
        ))
    } else {
        generic_gate(x, v, c, group_of, &args, straight_through)
    }
}

/// The same gate from Burn's generic operations (scatter-add, gather, element-wise).
pub fn generic_gate(
    x: Tensor<2>,
    v: Tensor<1>,
    c: Tensor<1>,
    group_of: &Tensor<1, Int>,
    args: &GateArgs,
    straight_through: bool,
) -> Tensor<2> {
    let [b, n] = x.dims();
    let device = x.device();
    let z = Tensor::<2>::zeros([b, args.groups], &device).select_assign(
        1,
        group_of.clone(),
        x.clone() * v.reshape([1, n]),
        IndexingUpdateOp::Add,
    ) + c.unsqueeze_dim(0);
    let hard = z.clone().greater_equal_elem(0.0).float();
    let gate = if straight_through {
        let soft = activation::sigmoid(z.div_scalar(args.temperature));
        hard + (soft.clone() - soft.detach())
    } else {
        hard
    };
    let mut keep = gate.select(1, group_of.clone());
    if let Some(f) = &args.flips {
        let f: Vec<f32> = f.iter().map(|&x| x as f32).collect();
        let f = Tensor::<2>::from_data(TensorData::new(f, [b, n]), &device);
        // keep XOR flip = keep * (1 - 2 flip) + flip
        keep = keep * f.clone().mul_scalar(-2.0).add_scalar(1.0) + f;
    }
    x * keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn assert_close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}[{i}]: fused {a} vs generic {b}"
            );
        }
    }

    /// Values and gradients (x, v, c) of the fused gate against the generic formulation, for
    /// patch groups, whole channels, groups across channels, and with noise flips.
    #[test]
    fn fused_gate_matches_generic_ops() {
        let dev = Device::flex().autodiff();
        assert!(is_flex(&dev), "the fused path must be the one under test");
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // (batch, channels, plane, plane height, group of activation i of channel c)
        type Group = Box<dyn Fn(usize, usize) -> u32>;
        // 3x3 patches of a w x w plane, the remainder merged into the last patch
        let patches = |w: usize| -> Group {
            let per = w / 3;
            Box::new(move |c, p| {
                let (y, x) = ((p / w / 3).min(per - 1), (p % w / 3).min(per - 1));
                (c * per * per + y * per + x) as u32
            })
        };
        let cases: Vec<(usize, usize, usize, usize, Group, &str)> = vec![
            (
                3,
                2,
                16,
                4,
                Box::new(|c, p| (c * 4 + (p / 4)) as u32),
                "rows (a grid)",
            ),
            (
                2,
                3,
                49,
                7,
                patches(7),
                "3x3 patches, merged edges (a grid)",
            ),
            (2, 2, 784, 28, patches(28), "3x3 patches of 28x28 (a grid)"),
            (
                2,
                3,
                9,
                3,
                Box::new(|c, _| c as u32),
                "whole channels (a grid, long runs)",
            ),
            // runs that cross rows (not a grid), several chunks of the dv reduction, and runs
            // longer than the 8-lane dot products
            (
                2,
                3,
                1500,
                30,
                Box::new(|c, p| (c * 500 + p / 3) as u32),
                "short runs, large planes",
            ),
            (
                2,
                2,
                1500,
                30,
                Box::new(|c, _| c as u32),
                "long channels (a grid, long runs)",
            ),
            (
                2,
                4,
                8,
                2,
                Box::new(|c, p| ((c / 2) * 8 + p) as u32),
                "across channels",
            ),
        ];
        for (b, ch, plane, h, group, name) in cases {
            let n = ch * plane;
            let group_of: Vec<u32> = (0..n).map(|i| group(i / plane, i % plane)).collect();
            let g = *group_of.iter().max().unwrap() as usize + 1;
            let grid = grid_of(&group_of, ch, h, plane / h);
            assert_eq!(
                grid.is_some(),
                name.contains("a grid"),
                "{name}: grid detection"
            );
            for noisy in [false, true] {
                let case = format!("{name}, noise {noisy}");
                let r = |rng: &mut ChaCha8Rng, len| -> Vec<f32> {
                    (0..len)
                        .map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5)
                        .collect()
                };
                let (xd, vd, cd, rd) = (
                    r(&mut rng, b * n),
                    r(&mut rng, n),
                    r(&mut rng, g),
                    r(&mut rng, b * n),
                );
                let flips = noisy.then(|| {
                    Arc::new(
                        (0..b * n)
                            .map(|_| (rng.next_u32() % 5 == 0) as u8)
                            .collect::<Vec<_>>(),
                    )
                });
                let args = GateArgs {
                    runs: Arc::new(runs_of(&group_of)),
                    grid: grid.clone().map(Arc::new),
                    group_of: Arc::new(group_of.clone()),
                    groups: g,
                    flips,
                    temperature: 0.7,
                };
                let gid = Tensor::<1, Int>::from_data(
                    TensorData::new(group_of.iter().map(|&x| x as i64).collect::<Vec<_>>(), [n]),
                    &dev,
                );
                let run = |fused: bool| {
                    let x = Tensor::<2>::from_data(TensorData::new(xd.clone(), [b, n]), &dev)
                        .require_grad();
                    let v = Tensor::<1>::from_data(TensorData::new(vd.clone(), [n]), &dev)
                        .require_grad();
                    let c = Tensor::<1>::from_data(TensorData::new(cd.clone(), [g]), &dev)
                        .require_grad();
                    let y = if fused {
                        shared_gate(x.clone(), v.clone(), c.clone(), &gid, args.clone(), true)
                    } else {
                        generic_gate(x.clone(), v.clone(), c.clone(), &gid, &args, true)
                    };
                    let rt = Tensor::<2>::from_data(TensorData::new(rd.clone(), [b, n]), &dev);
                    let grads = (y.clone() * rt).sum().backward();
                    (
                        values(y),
                        values(x.grad(&grads).unwrap()),
                        values(v.grad(&grads).unwrap()),
                        values(c.grad(&grads).unwrap()),
                    )
                };
                let (y1, dx1, dv1, dc1) = run(true);
                let (y2, dx2, dv2, dc2) = run(false);
                assert!(
                    y1.iter().any(|&t| t == 0.0) && y1.iter().any(|&t| t != 0.0),
                    "{case}: both outcomes occur"
                );
                assert_close(&format!("{case} y"), &y1, &y2);
                assert_close(&format!("{case} dx"), &dx1, &dx2);
                assert_close(&format!("{case} dv"), &dv1, &dv2);
                assert_close(&format!("{case} dc"), &dc1, &dc2);
                // inference (no autodiff): the hard gate, same values
                let inf = Device::flex();
                let x = Tensor::<2>::from_data(TensorData::new(xd.clone(), [b, n]), &inf);
                let v = Tensor::<1>::from_data(TensorData::new(vd.clone(), [n]), &inf);
                let c = Tensor::<1>::from_data(TensorData::new(cd.clone(), [g]), &inf);
                let gi = Tensor::<1, Int>::from_data(gid.to_data(), &inf);
                assert_close(
                    &format!("{case} inference"),
                    &values(shared_gate(x, v, c, &gi, args.clone(), false)),
                    &y2,
                );
            }
        }
    }
}
