//! Plain (non-interactive) kernels over Z_2^64 with wrapping arithmetic: matrix product,
//! im2col convolution, average-pool window sums. Used on shares and on public values alike.
//! Register-tiled (AVX-512 `vpmullq` where available) and parallel (rayon) over column panels of
//! the product; convolutions gather their im2col panels on the fly; no per-element allocation.

use crate::error::{MpcError, Result};
use rayon::prelude::*;

/// Geometry of a 2-D convolution on a batch: input `[n, c, h, w]`, weight `[o, c, k, k]`,
/// output `[n, o, oh, ow]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Square kernel size.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad).saturating_sub(self.k) / self.stride.max(1) + 1
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad).saturating_sub(self.k) / self.stride.max(1) + 1
    }
    /// Elements of the input batch.
    pub fn in_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// Elements of one input image.
    pub fn in_len1(&self) -> usize {
        self.c * self.h * self.w
    }
    /// Elements of the weight tensor.
    pub fn w_len(&self) -> usize {
        self.o * self.c * self.k * self.k
    }
    /// Rows of the im2col matrix (`c*k*k`).
    pub fn col_rows(&self) -> usize {
        self.c * self.k * self.k
    }
    /// Columns of one image's im2col matrix (`oh*ow`).
    pub fn col_cols(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Elements of the output batch.
    pub fn out_len(&self) -> usize {
        self.n * self.o * self.oh() * self.ow()
    }
    /// Check the geometry is usable.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 || self.stride == 0 || self.c == 0 || self.o == 0 {
            return Err(MpcError::Shape(format!("degenerate convolution {self:?}")));
        }
        if self.h + 2 * self.pad < self.k || self.w + 2 * self.pad < self.k {
            return Err(MpcError::Shape(format!(
                "kernel {} larger than padded input {}x{}",
                self.k,
                self.h + 2 * self.pad,
                self.w + 2 * self.pad
            )));
        }
        Ok(())
    }
}

const ROW_BLOCK: usize = 4;
const K_BLOCK: usize = 256;
const N_BLOCK: usize = 1024;

/// `C[m x n] = A[m x k] * B[k x n]` (row-major, wrapping).
pub fn matmul(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut c = vec![0u64; m * n];
    matmul_into(a, b, &mut c, m, k, n);
    c
}

/// `C += A * B` into a caller-provided buffer (shapes as in [`matmul`]).
pub fn matmul_into(a: &[u64], b: &[u64], c: &mut [u64], m: usize, k: usize, n: usize) {
    assert_eq!(a.len(), m * k, "matmul: A has the wrong length");
    assert_eq!(b.len(), k * n, "matmul: B has the wrong length");
    assert_eq!(c.len(), m * n, "matmul: C has the wrong length");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // AVX-512 register-tiled path (8x16 tile of C in registers across the whole k loop,
    // `vpmullq`) when the CPU has AVX-512F/DQ; the portable loop below otherwise.
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let fill = |j0: usize, cols: usize, panel: &mut [u64]| {
            for (p, dst) in panel.chunks_exact_mut(avx512::NR).enumerate() {
                dst[..cols].copy_from_slice(&b[p * n + j0..p * n + j0 + cols]);
                dst[cols..].fill(0);
            }
        };
        avx512::gemm_panels(a, m, k, n, c, &fill);
        return;
    }
    let work = m * n * k;
    let body = |(bi, cblk): (usize, &mut [u64])| {
        let i0 = bi * ROW_BLOCK;
        let rows = cblk.len() / n;
        for k0 in (0..k).step_by(K_BLOCK) {
            let k1 = (k0 + K_BLOCK).min(k);
            for n0 in (0..n).step_by(N_BLOCK) {
                let n1 = (n0 + N_BLOCK).min(n);
                for r in 0..rows {
                    let arow = &a[(i0 + r) * k..(i0 + r + 1) * k];
                    let crow = &mut cblk[r * n + n0..r * n + n1];
                    for p in k0..k1 {
                        let av = arow[p];
                        if av == 0 {
                            continue;
                        }
                        let brow = &b[p * n + n0..p * n + n1];
                        for (cv, bv) in crow.iter_mut().zip(brow) {
                            *cv = cv.wrapping_add(av.wrapping_mul(*bv));
                        }
                    }
                }
            }
        }
    };
    if work < 1 << 16 {
        c.chunks_mut(ROW_BLOCK * n).enumerate().for_each(body);
    } else {
        c.par_chunks_mut(ROW_BLOCK * n).enumerate().for_each(body);
    }
}

/// Transpose a row-major `[r x c]` matrix.
pub fn transpose(a: &[u64], r: usize, c: usize) -> Vec<u64> {
    assert_eq!(a.len(), r * c);
    let mut t = vec![0u64; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

/// im2col of one image `[c, h, w]`: returns the `[c*k*k, oh*ow]` matrix (zero padding).
pub fn im2col(x: &[u64], g: &ConvGeom) -> Vec<u64> {
    let mut out = vec![0u64; g.col_rows() * g.col_cols()];
    im2col_into(x, g, &mut out);
    out
}

/// im2col into a buffer of length `c*k*k*oh*ow`.
pub fn im2col_into(x: &[u64], g: &ConvGeom, out: &mut [u64]) {
    let (oh, ow) = (g.oh(), g.ow());
    assert_eq!(x.len(), g.in_len1());
    assert_eq!(out.len(), g.col_rows() * oh * ow);
    let cols = oh * ow;
    out.par_chunks_mut(cols).enumerate().for_each(|(row, dst)| {
        let ch = row / (g.k * g.k);
        let ky = (row / g.k) % g.k;
        let kx = row % g.k;
        let plane = &x[ch * g.h * g.w..(ch + 1) * g.h * g.w];
        for oy in 0..oh {
            let iy = (oy * g.stride + ky) as isize - g.pad as isize;
            let drow = &mut dst[oy * ow..(oy + 1) * ow];
            if iy < 0 || iy >= g.h as isize {
                drow.fill(0);
                continue;
            }
            let srow = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
            for (ox, d) in drow.iter_mut().enumerate() {
                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                *d = if ix < 0 || ix >= g.w as isize {
                    0
                } else {
                    srow[ix as usize]
                };
            }
        }
    });
}

/// im2col of a whole batch: `n` matrices `[c*k*k, oh*ow]` one after the other.
pub fn im2col_batch(x: &[u64], g: &ConvGeom) -> Vec<u64> {
    let per = g.col_rows() * g.col_cols();
    let mut out = vec![0u64; g.n * per];
    for (img, dst) in x.chunks(g.in_len1()).zip(out.chunks_mut(per)) {
        im2col_into(img, g, dst);
    }
    out
}

/// `out[n, o, oh*ow] = W[o, c*k*k] * cols[n][c*k*k, oh*ow]` for a batch of im2col matrices.
pub fn conv_from_cols(cols: &[u64], w: &[u64], g: &ConvGeom) -> Vec<u64> {
    let per_in = g.col_rows() * g.col_cols();
    let per_out = g.o * g.col_cols();
    let mut out = vec![0u64; g.n * per_out];
    for (col, dst) in cols.chunks(per_in).zip(out.chunks_mut(per_out)) {
        matmul_into(w, col, dst, g.o, g.col_rows(), g.col_cols());
    }
    out
}

/// Convolution of a batch `x[n, c, h, w]` with `w[o, c, k, k]` (no bias), wrapping.
///
/// With AVX-512 the im2col matrix is never materialised: every task gathers the `c*k*k x 16`
/// column panel of 16 output pixels straight from the input into a reused per-thread buffer
/// and multiplies it with the whole weight matrix (which stays in L2).
pub fn conv2d(x: &[u64], w: &[u64], g: &ConvGeom) -> Vec<u64> {
    assert_eq!(x.len(), g.in_len(), "conv2d: input length");
    assert_eq!(w.len(), g.w_len(), "conv2d: weight length");
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        let (oh, ow) = (g.oh(), g.ow());
        let cols = oh * ow;
        if cols == 0 || g.n == 0 {
            return vec![0u64; g.out_len()];
        }
        let mut out: Vec<u64> = Vec::with_capacity(g.out_len());
        let base = out.spare_capacity_mut().as_mut_ptr() as *mut u64;
        for (i, img) in x.chunks(g.in_len1()).enumerate() {
            let fill =
                |j0: usize, nc: usize, panel: &mut [u64]| conv_panel(img, g, ow, j0, nc, panel);
            // SAFETY: image i's output is the o x cols block at offset i*o*cols of the
            // allocation (capacity out_len = n*o*cols); the product overwrites all of it.
            unsafe {
                avx512::gemm_panels_raw(
                    w,
                    g.o,
                    g.col_rows(),
                    cols,
                    base.add(i * g.o * cols),
                    true,
                    &fill,
                )
            };
        }
        // SAFETY: every element 0..out_len was written above (each image's block entirely).
        unsafe { out.set_len(g.out_len()) };
        return out;
    }
    conv_from_cols(&im2col_batch(x, g), w, g)
}

/// Gather the im2col panel of output pixels `j0..j0+nc` (`nc <= 16`) of one image: row
/// `p = (ch, ky, kx)` of the panel holds the 16 input values under those pixels (zero for
/// padding and for the columns past `nc`), i.e. `panel[p*16 + t] = cols[p][j0 + t]`.
#[cfg(target_arch = "x86_64")]
fn conv_panel(x: &[u64], g: &ConvGeom, ow: usize, j0: usize, nc: usize, panel: &mut [u64]) {
    const NR: usize = avx512::NR;
    let kk = g.k * g.k;
    let hw = g.h * g.w;
    let mut off = [usize::MAX; NR];
    for ky in 0..g.k {
        for kx in 0..g.k {
            let mut contiguous = nc == NR;
            for (t, o) in off.iter_mut().enumerate() {
                *o = usize::MAX;
                if t >= nc {
                    continue;
                }
                let (oy, ox) = ((j0 + t) / ow, (j0 + t) % ow);
                let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w {
                    *o = iy as usize * g.w + ix as usize;
                }
            }
            for t in 0..NR {
                if off[t] == usize::MAX || (t > 0 && off[t] != off[t - 1] + 1) {
                    contiguous = false;
                    break;
                }
            }
            let r0 = ky * g.k + kx;
            if contiguous {
                let o0 = off[0];
                for ch in 0..g.c {
                    let p = ch * kk + r0;
                    let src = &x[ch * hw + o0..ch * hw + o0 + NR];
                    let dst = &mut panel[p * NR..(p + 1) * NR];
                    // A fixed-size copy (inlined as two vector moves, no library call).
                    let src: &[u64; NR] = src.try_into().expect("NR elements");
                    let dst: &mut [u64; NR] = dst.try_into().expect("NR elements");
                    *dst = *src;
                }
                continue;
            }
            // The valid lanes at consecutive input addresses `base + t` (a panel row at the
            // image border): masked vector loads, zeros elsewhere.
            let first = off.iter().position(|&o| o != usize::MAX);
            let shifted = first.and_then(|t0| {
                let base = off[t0] as isize - t0 as isize;
                let mut mask = 0u16;
                for (t, &o) in off.iter().enumerate() {
                    if o != usize::MAX {
                        if o as isize != base + t as isize {
                            return None;
                        }
                        mask |= 1 << t;
                    }
                }
                Some((base, mask))
            });
            match (first, shifted) {
                (None, _) => {
                    for ch in 0..g.c {
                        let p = ch * kk + r0;
                        panel[p * NR..(p + 1) * NR].fill(0);
                    }
                }
                (Some(_), Some((base, mask))) => {
                    assert!(panel.len() >= g.c * kk * NR && x.len() >= g.c * hw);
                    // SAFETY: features checked by the caller (the AVX-512 conv path); every
                    // unmasked lane reads x[ch*hw + off[t]] (in bounds); the stores write row p
                    // of the panel (in bounds by the assertion).
                    unsafe {
                        avx512::masked_rows(
                            x.as_ptr(),
                            base,
                            hw,
                            g.c,
                            kk,
                            r0,
                            mask,
                            panel.as_mut_ptr(),
                        )
                    }
                }
                (Some(_), None) => {
                    for ch in 0..g.c {
                        let p = ch * kk + r0;
                        let plane = &x[ch * hw..(ch + 1) * hw];
                        for (d, &o) in panel[p * NR..(p + 1) * NR].iter_mut().zip(&off) {
                            *d = if o == usize::MAX { 0 } else { plane[o] };
                        }
                    }
                }
            }
        }
    }
}

/// Add a per-channel bias to `[n, o, plane]` data.
pub fn add_channel_bias(y: &mut [u64], bias: &[u64], plane: usize) {
    let o = bias.len();
    if o == 0 || plane == 0 {
        return;
    }
    for (i, chunk) in y.chunks_mut(plane).enumerate() {
        let b = bias[i % o];
        for v in chunk {
            *v = v.wrapping_add(b);
        }
    }
}

/// Average-pool window sums (no padding, floor output): `x[n, c, h, w]` -> `[n, c, oh, ow]`.
pub fn pool_sums(
    x: &[u64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
) -> Vec<u64> {
    let oh = (h - k) / s + 1;
    let ow = (w - k) / s + 1;
    let mut out = vec![0u64; n * c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, plane)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0u64;
                    for ky in 0..k {
                        let row =
                            &plane[(oy * s + ky) * w + ox * s..(oy * s + ky) * w + ox * s + k];
                        for v in row {
                            acc = acc.wrapping_add(*v);
                        }
                    }
                    dst[oy * ow + ox] = acc;
                }
            }
        });
    out
}

/// AVX-512 micro-kernel for Z_2^64 matrix products (`vpmullq`), see [`matmul_into`].
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of the register tile.
    pub const MR: usize = 8;
    /// Columns of the register tile (two 8-lane vectors).
    pub const NR: usize = 16;

    /// Does this CPU have AVX-512F and AVX-512DQ?
    pub fn available() -> bool {
        std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq")
    }

    /// Work (multiply-adds) below which a product runs on the calling thread.
    const PAR_WORK: usize = 1 << 18;

    thread_local! {
        /// Reused panel buffer of this thread (no allocation per panel or per call).
        static PANEL: std::cell::RefCell<Vec<u64>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// `C` as a raw pointer that tasks writing disjoint columns may share.
    #[derive(Clone, Copy)]
    struct CPtr(*mut u64);
    // SAFETY: every task writes a disjoint set of columns of C (see `gemm_panels`).
    unsafe impl Send for CPtr {}
    unsafe impl Sync for CPtr {}

    impl CPtr {
        fn get(self) -> *mut u64 {
            self.0
        }
    }

    /// `C[m x n] += A[m x k] * B[k x n]` (wrapping, row-major `A` and `C`), where `B` is given
    /// by `fill(j0, cols, panel)`: write B's columns `j0..j0+cols` (`cols <= NR`) as a `k x NR`
    /// row-major panel, zero beyond `cols`. Parallel over column panels (rayon) when the product
    /// is large; every panel is multiplied with the whole of `A`.
    ///
    /// The caller must have checked [`available`].
    pub fn gemm_panels(
        a: &[u64],
        m: usize,
        k: usize,
        n: usize,
        c: &mut [u64],
        fill: &(dyn Fn(usize, usize, &mut [u64]) + Sync),
    ) {
        assert_eq!(c.len(), m * n);
        // SAFETY: `c` is an initialised m x n matrix that we borrow exclusively.
        unsafe { gemm_panels_raw(a, m, k, n, c.as_mut_ptr(), false, fill) }
    }

    /// [`gemm_panels`] on a raw `m x n` matrix: `C += A * B`, or with `overwrite` `C = A * B`
    /// (then `C` may be uninitialised memory; every element is written).
    ///
    /// # Safety
    /// `c` must be valid for writes (and, without `overwrite`, reads) of `m * n` elements, and
    /// not accessed by anyone else during the call.
    pub unsafe fn gemm_panels_raw(
        a: &[u64],
        m: usize,
        k: usize,
        n: usize,
        c: *mut u64,
        overwrite: bool,
        fill: &(dyn Fn(usize, usize, &mut [u64]) + Sync),
    ) {
        assert!(available(), "gemm_panels needs AVX-512F/DQ");
        assert_eq!(a.len(), m * k);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if overwrite {
                std::ptr::write_bytes(c, 0, m * n);
            }
            return;
        }
        let panels = n.div_ceil(NR);
        let cp = CPtr(c);
        let run = |pi: usize| {
            PANEL.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < k * NR {
                    buf.resize(k * NR, 0);
                }
                let panel = &mut buf[..k * NR];
                let j0 = pi * NR;
                let cols = NR.min(n - j0);
                fill(j0, cols, panel);
                // SAFETY: features checked; `panel` is k*NR, `a` is m*k, and this task writes
                // only columns j0..j0+cols of the m x n matrix behind `cp`.
                unsafe { panel_product(a, m, k, panel, cp.get(), n, j0, cols, overwrite) }
            })
        };
        if m * n * k < PAR_WORK || panels == 1 {
            (0..panels).for_each(run);
        } else {
            use rayon::prelude::*;
            // About 4 tasks per thread for load balance, at least 2^16 multiply-adds each.
            let per_panel = m * k * NR;
            let min_len = (panels / (4 * rayon::current_num_threads().max(1)))
                .max((1 << 16) / per_panel.max(1))
                .max(1);
            (0..panels)
                .into_par_iter()
                .with_min_len(min_len)
                .for_each(run);
        }
    }

    /// Panel rows `p = ch*kk + r0` (`ch < c`): the 16 values at `x + ch*hw + base + t` for the
    /// lanes `t` in `mask`, zero elsewhere (masked-off lanes are not read, so they may point
    /// outside `x`).
    ///
    /// # Safety
    /// AVX-512F available; every unmasked lane's address lies in `x`; `panel` has room for row
    /// `(c-1)*kk + r0`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn masked_rows(
        x: *const u64,
        base: isize,
        hw: usize,
        c: usize,
        kk: usize,
        r0: usize,
        mask: u16,
        panel: *mut u64,
    ) {
        let (m0, m1) = (mask as __mmask8, (mask >> 8) as __mmask8);
        for ch in 0..c {
            let src = x.wrapping_offset((ch * hw) as isize + base);
            let dst = panel.add((ch * kk + r0) * NR);
            let v0 = _mm512_maskz_loadu_epi64(m0, src as *const _);
            let v1 = _mm512_maskz_loadu_epi64(m1, src.wrapping_add(8) as *const _);
            _mm512_storeu_si512(dst as *mut _, v0);
            _mm512_storeu_si512(dst.add(8) as *mut _, v1);
        }
    }

    /// All row tiles of one column panel: `C[:, j0..j0+cols] += A * panel`.
    ///
    /// # Safety
    /// AVX-512F/DQ available; `a.len() == m*k`, `panel.len() == k*NR`, `c` points to an
    /// `m x n` row-major matrix with `j0 + cols <= n`, `cols <= NR`, and nobody else touches
    /// those columns meanwhile.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn panel_product(
        a: &[u64],
        m: usize,
        k: usize,
        panel: &[u64],
        c: *mut u64,
        n: usize,
        j0: usize,
        cols: usize,
        overwrite: bool,
    ) {
        let lo = (1u16 << cols.min(8)) - 1;
        let hi = if cols > 8 {
            (1u16 << (cols - 8)) - 1
        } else {
            0
        };
        let (m0, m1) = (lo as __mmask8, hi as __mmask8);
        let mut r0 = 0;
        while r0 + MR <= m {
            tile::<MR>(
                a.as_ptr().add(r0 * k),
                k,
                panel.as_ptr(),
                c.add(r0 * n + j0),
                n,
                m0,
                m1,
                overwrite,
            );
            r0 += MR;
        }
        let ap = a.as_ptr().add(r0 * k);
        let cp = c.add(r0 * n + j0);
        match m - r0 {
            0 => {}
            1 => tile::<1>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            2 => tile::<2>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            3 => tile::<3>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            4 => tile::<4>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            5 => tile::<5>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            6 => tile::<6>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
            _ => tile::<7>(ap, k, panel.as_ptr(), cp, n, m0, m1, overwrite),
        }
    }

    /// One `R x 16` tile: `C[R x 16] += A[R x k] * panel[k x 16]`, the accumulators in
    /// registers across the whole `k` loop; masked loads/stores for partial panels.
    ///
    /// # Safety
    /// As [`panel_product`]; `a` points to `R` rows of stride `lda`, `c` to `R` rows of stride
    /// `ldc` with the columns selected by the masks valid.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    unsafe fn tile<const R: usize>(
        a: *const u64,
        lda: usize,
        panel: *const u64,
        c: *mut u64,
        ldc: usize,
        m0: __mmask8,
        m1: __mmask8,
        overwrite: bool,
    ) {
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        let mut bp = panel;
        for p in 0..lda {
            let b0 = _mm512_loadu_si512(bp as *const _);
            let b1 = _mm512_loadu_si512(bp.add(8) as *const _);
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_epi64(*a.add(r * lda + p) as i64);
                accr[0] = _mm512_add_epi64(accr[0], _mm512_mullo_epi64(av, b0));
                accr[1] = _mm512_add_epi64(accr[1], _mm512_mullo_epi64(av, b1));
            }
            bp = bp.add(NR);
        }
        for (r, accr) in acc.iter().enumerate() {
            let cp = c.add(r * ldc);
            let (mut v0, mut v1) = (accr[0], accr[1]);
            if !overwrite {
                v0 = _mm512_add_epi64(v0, _mm512_maskz_loadu_epi64(m0, cp as *const _));
                v1 = _mm512_add_epi64(v1, _mm512_maskz_loadu_epi64(m1, cp.add(8) as *const _));
            }
            _mm512_mask_storeu_epi64(cp as *mut _, m0, v0);
            _mm512_mask_storeu_epi64(cp.add(8) as *mut _, m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_all_paths_agree_with_naive() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed
        };
        for &(m, k, n) in &[
            (1, 3, 5),
            (8, 4, 16),
            (9, 7, 17),
            (17, 33, 40),
            (64, 70, 130),
            (24, 600, 48),
            (13, 577, 1037),
            (64, 576, 1024),
        ] {
            let a: Vec<u64> = (0..m * k).map(|_| next()).collect();
            let b: Vec<u64> = (0..k * n).map(|_| next()).collect();
            let mut want = vec![0u64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0u64;
                    for p in 0..k {
                        s = s.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
                    }
                    want[i * n + j] = s;
                }
            }
            let mut c = vec![1u64; m * n];
            matmul_into(&a, &b, &mut c, m, k, n);
            let got: Vec<u64> = c.iter().map(|x| x.wrapping_sub(1)).collect();
            assert_eq!(got, want, "{m}x{k}x{n}");
        }
    }

    fn naive_conv(x: &[u64], w: &[u64], g: &ConvGeom) -> Vec<u64> {
        let (oh, ow) = (g.oh(), g.ow());
        let mut out = vec![0u64; g.out_len()];
        for b in 0..g.n {
            for o in 0..g.o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0u64;
                        for c in 0..g.c {
                            for ky in 0..g.k {
                                for kx in 0..g.k {
                                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                                    let ix = (ox * g.stride + kx) as isize - g.pad as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((b * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    let wv = w[((o * g.c + c) * g.k + ky) * g.k + kx];
                                    acc = acc.wrapping_add(xv.wrapping_mul(wv));
                                }
                            }
                        }
                        out[((b * g.o + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn lcg(n: usize, mut s: u64) -> Vec<u64> {
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s
            })
            .collect()
    }

    #[test]
    fn matmul_matches_naive() {
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (9, 300, 1030), (17, 2, 3)] {
            let a = lcg(m * k, 1);
            let b = lcg(k * n, 2);
            let c = matmul(&a, &b, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0u64;
                    for p in 0..k {
                        acc = acc.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
                    }
                    assert_eq!(c[i * n + j], acc);
                }
            }
        }
    }

    #[test]
    fn conv_matches_naive() {
        for g in [
            ConvGeom {
                n: 2,
                c: 3,
                h: 8,
                w: 8,
                o: 4,
                k: 3,
                stride: 1,
                pad: 1,
            },
            ConvGeom {
                n: 1,
                c: 2,
                h: 9,
                w: 7,
                o: 3,
                k: 4,
                stride: 1,
                pad: 0,
            },
            ConvGeom {
                n: 1,
                c: 2,
                h: 9,
                w: 9,
                o: 2,
                k: 3,
                stride: 2,
                pad: 1,
            },
            ConvGeom {
                n: 1,
                c: 5,
                h: 4,
                w: 4,
                o: 3,
                k: 1,
                stride: 1,
                pad: 0,
            },
        ] {
            g.validate().unwrap();
            let x = lcg(g.in_len(), 3);
            let w = lcg(g.w_len(), 4);
            assert_eq!(conv2d(&x, &w, &g), naive_conv(&x, &w, &g), "{g:?}");
        }
        // Wide images (whole 16-pixel panels inside a row: the contiguous gather), odd
        // channel counts (partial row tiles), panels crossing rows and partial last panels.
        for (n, c, h, w, o, k, stride, pad) in [
            (2, 3, 20, 21, 9, 3, 1, 1),
            (1, 4, 18, 33, 8, 5, 2, 2),
            (1, 7, 32, 32, 13, 1, 1, 0),
            (1, 64, 32, 32, 64, 3, 1, 1),
            (3, 2, 5, 40, 17, 3, 1, 0),
        ] {
            let g = ConvGeom {
                n,
                c,
                h,
                w,
                o,
                k,
                stride,
                pad,
            };
            g.validate().unwrap();
            let x = lcg(g.in_len(), 5);
            let wt = lcg(g.w_len(), 6);
            assert_eq!(conv2d(&x, &wt, &g), naive_conv(&x, &wt, &g), "{g:?}");
        }
        let bad = ConvGeom {
            n: 1,
            c: 1,
            h: 2,
            w: 2,
            o: 1,
            k: 3,
            stride: 1,
            pad: 0,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn pool_sums_small() {
        let x: Vec<u64> = (0..16).collect();
        assert_eq!(pool_sums(&x, 1, 1, 4, 4, 2, 2), vec![10, 18, 42, 50]);
        let y = pool_sums(&x, 1, 1, 4, 4, 3, 3);
        assert_eq!(y, vec![45]);
    }
}
