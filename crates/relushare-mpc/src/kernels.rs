//! Plain (non-interactive) kernels over Z_2^64 with wrapping arithmetic: matrix product,
//! im2col convolution, average-pool window sums. Used on shares and on public values alike.
//! Cache-blocked and parallel (rayon) over output rows; no per-element allocation.

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
    // NOTE(mpc-fast): AVX-512 register-tiled path (8x16 tile of C in registers across the whole
    // k loop) when the CPU has AVX-512F/DQ; the portable loop below otherwise.
    #[cfg(target_arch = "x86_64")]
    if m >= avx512::MR && n >= avx512::NR && avx512::available() {
        // Pack B into contiguous k x NR column panels (one pass over B) so the micro-kernel
        // streams them instead of striding by n (which thrashes the cache sets).
        let nfull = n / avx512::NR * avx512::NR;
        let mut packed = vec![0u64; k * nfull];
        let pack = |(s, dst): (usize, &mut [u64])| {
            for p in 0..k {
                let src = &b[p * n + s * avx512::NR..p * n + (s + 1) * avx512::NR];
                dst[p * avx512::NR..(p + 1) * avx512::NR].copy_from_slice(src);
            }
        };
        if m * n * k < 1 << 16 {
            packed.chunks_mut(k * avx512::NR).enumerate().for_each(pack);
        } else {
            packed
                .par_chunks_mut(k * avx512::NR)
                .enumerate()
                .for_each(pack);
        }
        let packed = &packed;
        let body = |(bi, cblk): (usize, &mut [u64])| {
            let rows = cblk.len() / n;
            let ablk = &a[bi * avx512::MR * k..(bi * avx512::MR + rows) * k];
            // SAFETY: `available()` checked the CPU features; slices have the lengths
            // `block` expects (rows*k, k*n, k*nfull, rows*n).
            unsafe { avx512::block(ablk, b, packed, cblk, rows, k, n) }
        };
        if m * n * k < 1 << 16 {
            c.chunks_mut(avx512::MR * n).enumerate().for_each(body);
        } else {
            c.par_chunks_mut(avx512::MR * n).enumerate().for_each(body);
        }
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
pub fn conv2d(x: &[u64], w: &[u64], g: &ConvGeom) -> Vec<u64> {
    assert_eq!(x.len(), g.in_len(), "conv2d: input length");
    assert_eq!(w.len(), g.w_len(), "conv2d: weight length");
    conv_from_cols(&im2col_batch(x, g), w, g)
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

    /// `C[rows x n] += A[rows x k] * B[k x n]` (wrapping), row-major slices of exactly those
    /// lengths; `packed` holds B's first `n / NR * NR` columns as contiguous `k x NR` panels.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512DQ; `a.len() == rows*k`, `b.len() == k*n`,
    /// `packed.len() == k*(n/NR*NR)`, `c.len() == rows*n`.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn block(
        a: &[u64],
        b: &[u64],
        packed: &[u64],
        c: &mut [u64],
        rows: usize,
        k: usize,
        n: usize,
    ) {
        debug_assert!(a.len() == rows * k && b.len() == k * n && c.len() == rows * n);
        debug_assert!(packed.len() == k * (n / NR * NR));
        let nfull = n / NR * NR;
        let mut r0 = 0;
        while r0 + MR <= rows {
            let mut j = 0;
            while j < nfull {
                let mut acc = [[_mm512_setzero_si512(); 2]; MR];
                let ap = a.as_ptr().add(r0 * k);
                for p in 0..k {
                    let bp = packed.as_ptr().add((j / NR) * k * NR + p * NR);
                    let b0 = _mm512_loadu_si512(bp as *const _);
                    let b1 = _mm512_loadu_si512(bp.add(8) as *const _);
                    for (r, accr) in acc.iter_mut().enumerate() {
                        let av = _mm512_set1_epi64(*ap.add(r * k + p) as i64);
                        accr[0] = _mm512_add_epi64(accr[0], _mm512_mullo_epi64(av, b0));
                        accr[1] = _mm512_add_epi64(accr[1], _mm512_mullo_epi64(av, b1));
                    }
                }
                for (r, accr) in acc.iter().enumerate() {
                    let cp = c.as_mut_ptr().add((r0 + r) * n + j);
                    let c0 = _mm512_loadu_si512(cp as *const _);
                    let c1 = _mm512_loadu_si512(cp.add(8) as *const _);
                    _mm512_storeu_si512(cp as *mut _, _mm512_add_epi64(c0, accr[0]));
                    _mm512_storeu_si512(cp.add(8) as *mut _, _mm512_add_epi64(c1, accr[1]));
                }
                j += NR;
            }
            for r in r0..r0 + MR {
                for jj in nfull..n {
                    let mut s = 0u64;
                    for p in 0..k {
                        s = s.wrapping_add(a[r * k + p].wrapping_mul(b[p * n + jj]));
                    }
                    c[r * n + jj] = c[r * n + jj].wrapping_add(s);
                }
            }
            r0 += MR;
        }
        for r in r0..rows {
            let crow = &mut c[r * n..(r + 1) * n];
            for p in 0..k {
                let av = a[r * k + p];
                for (cv, bv) in crow.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *cv = cv.wrapping_add(av.wrapping_mul(*bv));
                }
            }
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
