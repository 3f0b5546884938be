//! A faster 2-D convolution for training on the `flex` CPU backend.
//!
//! Profiling a CIFAR-10 training step showed most of its time in Burn's generic convolution
//! backward pass (the weight gradient as a convolution over the batch, the input gradient as a
//! transposed convolution) and in flex's forward im2col. This module computes the same
//! convolution (square kernel, any stride and padding, no dilation, one group, `f32`, NCHW)
//! with im2col + GEMM per image:
//!
//! - forward: `y_n = W · col(x_n) + b`, with `W` as `[O, C·k·k]` and `col(x_n)` as
//!   `[C·k·k, Ho·Wo]`;
//! - weight gradient: `dW = Σ_n dy_n · patches(x_n)` with a pixel-major patch matrix
//!   (`[Ho·Wo, k·k·C]`, which the GEMM reads without repacking; each thread sums its images,
//!   then the per-thread sums are added), bias gradient `db = Σ_{n,pixel} dy`;
//! - input gradient: with stride 1, the forward convolution of `dy` with the flipped,
//!   transposed kernel; otherwise `dx_n = col⁻¹(Wᵀ · dy_n)` (col2im adds each column entry back
//!   to the pixel it was read from).
//!
//! Images are split over the rayon pool (each GEMM runs single-threaded, so both cores stay
//! busy without nested parallelism); 1x1 convolutions with stride 1 and no padding skip
//! im2col. The GEMMs are the `gemm` crate's (the one flex itself uses).
//!
//! The operation is registered with Burn as a backend extension ([`ConvExt`]) on `Flex` and on
//! `Autodiff<Flex>`, where its backward pass is written by hand (no second-order gradients).
//! [`conv2d`] uses it on flex for `f32` tensors and falls back to Burn's
//! [`burn::tensor::module::conv2d`] everywhere else, so other backends are unaffected.
//! The tests compare values and gradients with Burn's built-in convolution.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// Geometry of one convolution: input `[n, c, h, w]`, weight `[o, c, k, k]`, output
/// `[n, o, ho, wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Geometry {
    /// The geometry of `x` (`[n, c, h, w]`) convolved with `weight` (`[o, c, k, k]`), or
    /// `None` when the shapes do not fit together or the output would be empty.
    pub fn new(x: &[usize], weight: &[usize], stride: usize, padding: usize) -> Option<Self> {
        let (&[n, c, h, w], &[o, wc, k, k2]) = (x, weight) else {
            return None;
        };
        if wc != c || k != k2 || k == 0 || stride == 0 || h + 2 * padding < k || w + 2 * padding < k
        {
            return None;
        }
        Some(Geometry {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            padding,
            ho: (h + 2 * padding - k) / stride + 1,
            wo: (w + 2 * padding - k) / stride + 1,
        })
    }

    /// Rows of the im2col matrix, `c·k·k`.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output pixels per channel, `ho·wo`.
    fn pixels(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1 stride-1 unpadded convolution reads its input as the im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.padding == 0
    }

    /// The range of output columns `ox` whose input column `ox·s + kj - p` lies in `[0, w)`.
    fn valid_cols(&self, kj: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        // ox·s + kj >= p  <=>  ox >= ceil((p - kj) / s)
        let lo = if kj >= p { 0 } else { (p - kj).div_ceil(s) };
        // ox·s + kj - p <= w - 1  <=>  ox <= (w - 1 + p - kj) / s
        let hi = if self.w + p > kj {
            ((self.w - 1 + p - kj) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

/// Unfold one image `x` (`[c, h, w]`) into `col` (`[c·k·k, ho·wo]`, zero padded).
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let (k, s, p, l) = (g.k, g.stride, g.padding, g.pixels());
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (c * k + ki) * k + kj;
                let row = &mut col[r * l..(r + 1) * l];
                let (lo, hi) = g.valid_cols(kj);
                if s == 1 && g.wo == g.w {
                    same_size_row(g, plane, row, ki, (lo, hi), kj);
                    continue;
                }
                for oy in 0..g.ho {
                    let seg = &mut row[oy * g.wo..(oy + 1) * g.wo];
                    let iy = (oy * s + ki) as isize - p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    seg[..lo].fill(0.0);
                    seg[hi..].fill(0.0);
                    if s == 1 {
                        let start = lo + kj - p;
                        seg[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    } else {
                        for (ox, v) in seg.iter_mut().enumerate().take(hi).skip(lo) {
                            *v = src[ox * s + kj - p];
                        }
                    }
                }
            }
        }
    }
}

/// One im2col row of a stride-1 convolution whose output is as wide as its input (`2p = k-1`,
/// e.g. 3x3 with padding 1): the row is the input plane shifted by `(ki-p)·w + (kj-p)`, so it
/// is one contiguous copy followed by zeroing the padded rows and the (at most `p`) wrapped
/// columns of every output row. Thousands of short copies per image become one.
fn same_size_row(
    g: &Geometry,
    plane: &[f32],
    row: &mut [f32],
    ki: usize,
    (lo, hi): (usize, usize),
    kj: usize,
) {
    let (w, p) = (g.w as isize, g.padding as isize);
    let len = (g.h * g.w) as isize;
    let shift = (ki as isize - p) * w + (kj as isize - p);
    // Output rows whose input row oy + ki - p is inside the image.
    let oy_lo = (p - ki as isize).clamp(0, g.ho as isize);
    let oy_hi = (g.h as isize + p - ki as isize).clamp(oy_lo, g.ho as isize);
    // Flat output positions j with a valid input row and 0 <= j + shift < h·w.
    let l = row.len() as isize;
    let j_lo = (oy_lo * w).max(-shift).clamp(0, l);
    let j_hi = (oy_hi * w).min(len - shift).clamp(j_lo, l);
    let (j_lo, j_hi) = (j_lo as usize, j_hi as usize);
    row[..j_lo].fill(0.0);
    row[j_hi..].fill(0.0);
    if j_hi > j_lo {
        // j_lo + shift >= 0 and j_hi + shift <= h·w by the bounds above.
        let src = (j_lo as isize + shift) as usize;
        row[j_lo..j_hi].copy_from_slice(&plane[src..src + (j_hi - j_lo)]);
    }
    // Columns whose input column ox + kj - p falls outside [0, w) read a neighbouring row.
    if lo > 0 || hi < g.wo {
        for out in row.chunks_exact_mut(g.wo) {
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
        }
    }
}

/// Add the im2col matrix `col` back onto the image `dx` (`[c, h, w]`): the adjoint of
/// [`im2col`].
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let (k, s, p, l) = (g.k, g.stride, g.padding, g.pixels());
    for c in 0..g.c {
        let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for ki in 0..k {
            for kj in 0..k {
                let r = (c * k + ki) * k + kj;
                let row = &col[r * l..(r + 1) * l];
                let (lo, hi) = g.valid_cols(kj);
                for oy in 0..g.ho {
                    let iy = (oy * s + ki) as isize - p as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let seg = &row[oy * g.wo..(oy + 1) * g.wo];
                    let dst = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if s == 1 {
                        let start = lo + kj - p;
                        for (d, v) in dst[start..start + (hi - lo)].iter_mut().zip(&seg[lo..hi]) {
                            *d += *v;
                        }
                    } else {
                        for (ox, v) in seg.iter().enumerate().take(hi).skip(lo) {
                            dst[ox * s + kj - p] += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Transpose one image `x` (`[c, h·w]`) to pixel-major `xt` (`[h·w, c]`).
fn to_pixel_major(g: &Geometry, x: &[f32], xt: &mut [f32]) {
    let hw = g.h * g.w;
    // Blocks of 64 pixels keep both sides of the transpose in L1.
    for p0 in (0..hw).step_by(64) {
        let p1 = (p0 + 64).min(hw);
        let block = &mut xt[p0 * g.c..p1 * g.c];
        for c in 0..g.c {
            let src = &x[c * hw + p0..c * hw + p1];
            for (pixel, v) in block.chunks_exact_mut(g.c).zip(src) {
                pixel[c] = *v;
            }
        }
    }
}

/// Patch matrix of one pixel-major image `xt` (`[h·w, c]`): row `l` of `rows` (`[ho·wo,
/// k·k·c]`) holds output pixel `l`'s receptive field in `(ki, kj, c)` order, zero padded.
fn im2row(g: &Geometry, xt: &[f32], rows: &mut [f32]) {
    let (k, s, p, c) = (g.k, g.stride, g.padding as isize, g.c);
    let r = k * k * c;
    for oy in 0..g.ho {
        for ox in 0..g.wo {
            let row = &mut rows[(oy * g.wo + ox) * r..(oy * g.wo + ox + 1) * r];
            let ix0 = (ox * s) as isize - p;
            for ki in 0..k {
                let iy = (oy * s + ki) as isize - p;
                let band = &mut row[ki * k * c..(ki + 1) * k * c];
                if iy < 0 || iy >= g.h as isize {
                    band.fill(0.0);
                    continue;
                }
                let line = &xt[iy as usize * g.w * c..(iy as usize + 1) * g.w * c];
                if s == 1 && ix0 >= 0 && ix0 + k as isize <= g.w as isize {
                    // The whole band is inside the image: one contiguous copy.
                    let start = ix0 as usize * c;
                    band.copy_from_slice(&line[start..start + k * c]);
                    continue;
                }
                for kj in 0..k {
                    let ix = (ox * s + kj) as isize - p;
                    let seg = &mut band[kj * c..(kj + 1) * c];
                    if ix < 0 || ix >= g.w as isize {
                        seg.fill(0.0);
                    } else {
                        seg.copy_from_slice(&line[ix as usize * c..(ix as usize + 1) * c]);
                    }
                }
            }
        }
    }
}

/// `dst (m x n) = [dst +] a (m x k) · b (k x n)`, every matrix given by its element strides
/// (`rs` between rows, `cs` between columns), computed on the calling thread.
#[allow(clippy::too_many_arguments)]
fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds of the strided views, checked here so the unsafe call below only reads and
    // writes inside the slices.
    assert!(
        dst.len() >= (m - 1) * n + n,
        "matmul: destination too small"
    );
    if k > 0 {
        assert!(
            a.len() > (m - 1) * a_rs + (k - 1) * a_cs,
            "matmul: lhs too small"
        );
        assert!(
            b.len() > (k - 1) * b_rs + (n - 1) * b_cs,
            "matmul: rhs too small"
        );
    }
    // SAFETY: the views are in bounds (checked above), `dst` is exclusively borrowed and does
    // not alias `a` or `b` (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Run `f` with this thread's scratch buffer of at least `len` floats (kept between calls:
/// the im2col matrices are megabytes, and fresh allocations of that size cost page faults on
/// every training step). Callers overwrite what they read.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Forward pass: `y[n] = W · col(x[n]) + b`, `[n, o, ho, wo]` row-major.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    forward_act(g, x, weight, bias, false)
}

/// [`forward`], followed by a ReLU when `relu` is set (applied to each image's output while it
/// is still in cache).
fn forward_act(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32], relu: bool) -> Vec<f32> {
    let (rows, l) = (g.rows(), g.pixels());
    let in_len = g.c * g.h * g.w;
    let mut y = vec![0f32; g.n * g.o * l];
    y.par_chunks_mut(g.o * l).enumerate().for_each(|(i, yi)| {
        for (o, row) in yi.chunks_mut(l).enumerate() {
            row.fill(bias[o]);
        }
        let xi = &x[i * in_len..(i + 1) * in_len];
        if g.pointwise() {
            matmul(g.o, l, rows, yi, true, weight, (rows, 1), xi, (l, 1));
        } else {
            with_scratch(rows * l, |col| {
                im2col(g, xi, col);
                matmul(g.o, l, rows, yi, true, weight, (rows, 1), col, (l, 1));
            });
        }
        if relu {
            yi.iter_mut()
                .for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 });
        }
    });
    y
}

/// Input gradient `[n, c, h, w]`. With stride 1 (and `padding < k`) it is the forward
/// convolution of `dy` with the flipped, transposed kernel (`W'[c, o, i, j] = W[o, c, k-1-i,
/// k-1-j]`, padding `k-1-padding`); otherwise `dx[n] = col2im(Wᵀ · dy[n])`.
pub fn input_grad(g: &Geometry, weight: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.stride == 1 && g.padding < g.k {
        let k = g.k;
        let mut flipped = vec![0f32; weight.len()];
        for o in 0..g.o {
            for c in 0..g.c {
                for i in 0..k {
                    for j in 0..k {
                        flipped[((c * g.o + o) * k + i) * k + j] =
                            weight[((o * g.c + c) * k + (k - 1 - i)) * k + (k - 1 - j)];
                    }
                }
            }
        }
        let gt = Geometry::new(
            &[g.n, g.o, g.ho, g.wo],
            &[g.c, g.o, k, k],
            1,
            k - 1 - g.padding,
        )
        .expect("the transposed geometry of a valid convolution is valid");
        debug_assert_eq!((gt.ho, gt.wo), (g.h, g.w));
        return forward(&gt, dy, &flipped, &vec![0f32; g.c]);
    }
    let (rows, l) = (g.rows(), g.pixels());
    let in_len = g.c * g.h * g.w;
    let mut dx = vec![0f32; g.n * in_len];
    dx.par_chunks_mut(in_len).enumerate().for_each(|(i, dxi)| {
        let dyi = &dy[i * g.o * l..(i + 1) * g.o * l];
        with_scratch(rows * l, |col| {
            // Wᵀ is [rows, o]: element (r, o) at W[o·rows + r].
            matmul(rows, l, g.o, col, false, weight, (1, rows), dyi, (l, 1));
            col2im(g, col, dxi);
        });
    });
    dx
}

/// Images per partial sum of the weight gradient.
const WGRAD_GROUP: usize = 4;

/// Weight and bias gradients: `dW = Σ_n dy[n] · patches(x[n])` (`[o, c, k, k]`),
/// `db = Σ dy` per output channel. The patch matrix is pixel-major (`[ho·wo, k·k·c]`, built
/// from a channels-last copy of the image), which the GEMM reads without repacking; the
/// `(ki, kj, c)` column order is permuted to `(c, ki, kj)` at the end.
pub fn weight_bias_grad(g: &Geometry, x: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (k, l) = (g.k, g.pixels());
    let r = k * k * g.c;
    let in_len = g.c * g.h * g.w;
    // Fixed groups of images, summed in order: the result does not depend on how rayon
    // schedules the work (a training run is reproducible from its seed).
    let groups = g.n.div_ceil(WGRAD_GROUP);
    let partial: Vec<(Vec<f32>, Vec<f32>)> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let (mut dw, mut db) = (vec![0f32; g.o * r], vec![0f32; g.o]);
            with_scratch(in_len + l * r, |scratch| {
                let (xt, rows) = scratch.split_at_mut(in_len);
                for i in gi * WGRAD_GROUP..((gi + 1) * WGRAD_GROUP).min(g.n) {
                    let xi = &x[i * in_len..(i + 1) * in_len];
                    let dyi = &dy[i * g.o * l..(i + 1) * g.o * l];
                    to_pixel_major(g, xi, xt);
                    im2row(g, xt, rows);
                    matmul(g.o, r, l, &mut dw, true, dyi, (l, 1), rows, (r, 1));
                    for (b, row) in db.iter_mut().zip(dyi.chunks(l)) {
                        *b += row.iter().sum::<f32>();
                    }
                }
            });
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0f32; g.o * r], vec![0f32; g.o]);
    for (pw, pb) in &partial {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    // [o, (ki, kj, c)] -> [o, (c, ki, kj)]
    let mut out = vec![0f32; g.o * r];
    for o in 0..g.o {
        for ki in 0..k {
            for kj in 0..k {
                for c in 0..g.c {
                    out[((o * g.c + c) * k + ki) * k + kj] = dw[o * r + (ki * k + kj) * g.c + c];
                }
            }
        }
    }
    (out, db)
}

/// The `f32` values of a flex tensor in row-major order (copied only when not contiguous).
pub(crate) fn flex_values(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

pub(crate) fn flex_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("flex_values returns contiguous f32 tensors")
}

pub(crate) fn flex_tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn flex_forward(
    x: FlexTensor,
    weight: FlexTensor,
    bias: FlexTensor,
    stride: usize,
    padding: usize,
    relu: bool,
) -> FlexTensor {
    let (xs, ws) = (x.shape(), weight.shape());
    let g = Geometry::new(xs.as_ref(), ws.as_ref(), stride, padding)
        .expect("conv2d shapes were checked by the caller");
    let (x, weight, bias) = (flex_values(x), flex_values(weight), flex_values(bias));
    let y = forward_act(
        &g,
        flex_slice(&x),
        flex_slice(&weight),
        flex_slice(&bias),
        relu,
    );
    flex_tensor(y, [g.n, g.o, g.ho, g.wo])
}

/// A convolution (optionally followed by a ReLU) whose training backward pass is
/// [`input_grad`] and [`weight_bias_grad`] (of `dy` masked by the ReLU).
///
/// `x` `[n, c, h, w]`, `weight` `[o, c, k, k]`, `bias` `[o]`, all `f32`; the caller
/// ([`conv2d`], [`conv2d_relu`]) checks the shapes and the backend.
#[backend_extension(Flex, Autodiff)]
pub trait ConvExt: Backend {
    fn relushare_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> FloatTensor<Self>;
}

impl ConvExt for Flex {
    fn relushare_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        flex_forward(x, weight, bias, stride, padding, relu)
    }
}

/// The backward step of [`ConvExt::relushare_conv2d`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 3> for ConvBackward {
    /// Checkpointed input and weight, the stride and padding, and the output when a ReLU
    /// was fused in (its mask).
    type State = (NodeId, NodeId, usize, usize, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = flex_values(grads.consume::<Flex>(&ops.node));
        let (x_id, w_id, stride, padding, relu_out) = ops.state;
        let dy = match relu_out {
            // The ReLU's gradient: dy where the output is positive, 0 elsewhere.
            Some(y) => {
                let y = flex_values(y);
                let (yv, dyv) = (flex_slice(&y), flex_slice(&dy));
                let masked: Vec<f32> = yv
                    .par_iter()
                    .zip(dyv.par_iter())
                    .map(|(v, d)| if *v > 0.0 { *d } else { 0.0 })
                    .collect();
                let ys = y.shape();
                FlexTensor::from_data(TensorData::new(masked, ys))
            }
            None => dy,
        };
        let x = flex_values(ckpt.retrieve_node_output::<FlexTensor>(x_id));
        let w = flex_values(ckpt.retrieve_node_output::<FlexTensor>(w_id));
        let (xs, ws) = (x.shape(), w.shape());
        let g = Geometry::new(xs.as_ref(), ws.as_ref(), stride, padding)
            .expect("shapes were valid in the forward pass");
        if let Some(node) = node_x {
            let dx = input_grad(&g, flex_slice(&w), flex_slice(&dy));
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.n, g.c, g.h, g.w]));
        }
        if node_w.is_some() || node_b.is_some() {
            let (dw, db) = weight_bias_grad(&g, flex_slice(&x), flex_slice(&dy));
            if let Some(node) = node_w {
                grads.register::<Flex>(node.id, flex_tensor(dw, [g.o, g.c, g.k, g.k]));
            }
            if let Some(node) = node_b {
                grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(db, [g.o])));
            }
        }
    }
}

impl<C: CheckpointStrategy> ConvExt for Autodiff<Flex, C> {
    fn relushare_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        relu: bool,
    ) -> FloatTensor<Self> {
        match ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let w_id = prep.checkpoint(&weight);
                let y = flex_forward(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    stride,
                    padding,
                    relu,
                );
                let mask = relu.then(|| y.clone());
                prep.finish((x_id, w_id, stride, padding, mask), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                stride,
                padding,
                relu,
            )),
        }
    }
}

static FAST_KERNELS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Use this crate's convolution and average pooling on flex (the default) or always Burn's
/// built-in operations (for comparisons; affects every [`conv2d`] and
/// [`crate::pool::avg_pool2d`] call in the process).
pub fn set_fast_kernels(enabled: bool) {
    FAST_KERNELS.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`conv2d`] and [`crate::pool::avg_pool2d`] use this crate's kernels on flex (see
/// [`set_fast_kernels`]).
pub fn fast_kernels() -> bool {
    FAST_KERNELS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether `device` runs on flex (with or without autodiff).
pub(crate) fn is_flex(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// `conv2d(x, weight) + bias` with stride `stride` and padding `padding` on both axes: this
/// module's implementation on flex for `f32` tensors of fitting shapes, Burn's built-in
/// convolution otherwise. Values and gradients are the same either way (up to float rounding).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    conv2d_act(x, weight, bias, stride, padding, false)
}

/// `relu(conv2d(x, weight) + bias)`: [`conv2d`] with the ReLU fused into the same operation on
/// flex (one pass less over the activations forward and backward).
pub fn conv2d_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    conv2d_act(x, weight, bias, stride, padding, true)
}

fn conv2d_act(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<1>,
    stride: usize,
    padding: usize,
    relu: bool,
) -> Tensor<4> {
    let fits = Geometry::new(&x.dims(), &weight.dims(), stride, padding)
        .is_some_and(|g| bias.dims() == [g.o]);
    let f32s = [x.dtype(), weight.dtype(), bias.dtype()]
        .iter()
        .all(|d| *d == DType::F32);
    if fits && f32s && fast_kernels() && is_flex(&x.device()) {
        Tensor::from_dispatch(<Dispatch as ConvExt>::relushare_conv2d(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            stride,
            padding,
            relu,
        ))
    } else {
        let y = burn::tensor::module::conv2d(
            x,
            weight,
            Some(bias),
            ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1),
        );
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(shape: Vec<usize>, rng: &mut ChaCha8Rng) -> TensorData {
        let len = shape.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|_| (rng.next_u32() as f32 / u32::MAX as f32) * 2.0 - 1.0)
            .collect();
        TensorData::new(v, shape)
    }

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
                "{what}[{i}]: {a} vs Burn's {b}"
            );
        }
    }

    /// Values and all three gradients of [`conv2d`] against Burn's built-in convolution.
    #[allow(clippy::too_many_arguments)]
    fn check(n: usize, c: usize, h: usize, w: usize, o: usize, k: usize, s: usize, p: usize) {
        let case = format!("n{n} c{c} {h}x{w} o{o} k{k} s{s} p{p}");
        let mut rng = ChaCha8Rng::seed_from_u64((n * 1000 + c * 100 + h * 10 + k + s + p) as u64);
        let dev = Device::flex().autodiff();
        assert!(is_flex(&dev), "the fast path must be the one under test");
        let xd = random(vec![n, c, h, w], &mut rng);
        let wd = random(vec![o, c, k, k], &mut rng);
        let bd = random(vec![o], &mut rng);
        let g = Geometry::new(&[n, c, h, w], &[o, c, k, k], s, p).unwrap();
        let rd = random(vec![n, o, g.ho, g.wo], &mut rng);
        for relu in [false, true] {
            let case = format!("{case} relu={relu}");
            let run = |ours: bool| {
                let x = Tensor::<4>::from_data(xd.clone(), &dev).require_grad();
                let wt = Tensor::<4>::from_data(wd.clone(), &dev).require_grad();
                let b = Tensor::<1>::from_data(bd.clone(), &dev).require_grad();
                let y = match (ours, relu) {
                    (true, false) => conv2d(x.clone(), wt.clone(), b.clone(), s, p),
                    (true, true) => conv2d_relu(x.clone(), wt.clone(), b.clone(), s, p),
                    (false, _) => {
                        let y = burn::tensor::module::conv2d(
                            x.clone(),
                            wt.clone(),
                            Some(b.clone()),
                            ConvOptions::new([s; 2], [p; 2], [1, 1], 1),
                        );
                        if relu {
                            burn::tensor::activation::relu(y)
                        } else {
                            y
                        }
                    }
                };
                assert_eq!(y.dims(), [n, o, g.ho, g.wo], "{case}: output shape");
                let r = Tensor::<4>::from_data(rd.clone(), &dev);
                let grads = (y.clone() * r).sum().backward();
                (
                    values(y),
                    values(x.grad(&grads).unwrap()),
                    values(wt.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                )
            };
            let (y1, dx1, dw1, db1) = run(true);
            let (y2, dx2, dw2, db2) = run(false);
            assert_close(&format!("{case} y"), &y1, &y2);
            assert_close(&format!("{case} dx"), &dx1, &dx2);
            assert_close(&format!("{case} dw"), &dw1, &dw2);
            assert_close(&format!("{case} db"), &db1, &db2);
            // The plain (inference) device takes the same path.
            let plain = Device::flex();
            let f = if relu { conv2d_relu } else { conv2d };
            let y3 = f(
                Tensor::<4>::from_data(xd.clone(), &plain),
                Tensor::<4>::from_data(wd.clone(), &plain),
                Tensor::<1>::from_data(bd.clone(), &plain),
                s,
                p,
            );
            assert_close(&format!("{case} inference y"), &values(y3), &y2);
        }
    }

    #[test]
    fn matches_burn_convolution() {
        // (n, c, h, w, o, k, stride, padding): the paper's layer kinds and odd cases.
        for &(n, c, h, w, o, k, s, p) in &[
            (2, 3, 8, 8, 4, 3, 1, 1),
            (3, 5, 7, 6, 4, 3, 1, 1),
            (2, 4, 9, 9, 3, 4, 1, 0),
            (1, 2, 6, 6, 5, 1, 1, 0),
            (2, 3, 7, 7, 2, 3, 2, 1),
            (2, 2, 8, 5, 3, 3, 2, 0),
            (1, 3, 5, 5, 2, 3, 1, 2),
            (2, 2, 6, 6, 3, 1, 2, 1),
            (1, 1, 3, 3, 1, 3, 1, 0),
            (1, 2, 5, 5, 3, 1, 1, 1),
            (2, 3, 6, 7, 2, 2, 1, 1),
            (2, 3, 6, 5, 4, 5, 1, 2),
            (1, 2, 3, 4, 2, 3, 1, 1),
            (1, 2, 1, 1, 2, 3, 1, 1),
        ] {
            check(n, c, h, w, o, k, s, p);
        }
    }

    /// The weight gradient is a sum over images: it must not depend on how the work was
    /// scheduled over threads (a seeded training run is reproducible).
    #[test]
    fn weight_gradient_is_deterministic() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let g = Geometry::new(&[13, 5, 9, 9], &[6, 5, 3, 3], 1, 1).unwrap();
        let x = random(vec![13, 5, 9, 9], &mut rng)
            .try_to_vec::<f32>()
            .unwrap();
        let dy = random(vec![13, 6, 9, 9], &mut rng)
            .try_to_vec::<f32>()
            .unwrap();
        let first = weight_bias_grad(&g, &x, &dy);
        for _ in 0..20 {
            assert_eq!(weight_bias_grad(&g, &x, &dy), first);
        }
    }

    #[test]
    fn geometry_rejects_mismatched_shapes() {
        assert!(Geometry::new(&[1, 3, 8, 8], &[4, 2, 3, 3], 1, 1).is_none());
        assert!(Geometry::new(&[1, 3, 2, 2], &[4, 3, 5, 5], 1, 0).is_none());
        assert!(Geometry::new(&[1, 3, 8, 8], &[4, 3, 3, 3], 0, 1).is_none());
        let g = Geometry::new(&[2, 3, 32, 32], &[64, 3, 3, 3], 1, 1).unwrap();
        assert_eq!((g.ho, g.wo), (32, 32));
    }
}
