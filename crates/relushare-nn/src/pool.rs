//! Average pooling (square window, no padding) for training on the `flex` CPU backend.
//!
//! flex's generic pooling kernels (written for 3-D pooling with padding and ceil mode) took
//! about a tenth of a CIFAR-10 training step, most of it in the backward pass. The paper's
//! networks only pool with a `k x k` window, stride `s` and no padding: the forward pass is
//! the window mean, the backward pass spreads `dy / k²` over each window. Both run over the
//! `n·c` planes in parallel. Like [`crate::conv`], the operation is a Burn backend extension
//! on `Flex` and `Autodiff<Flex>` with a hand-written backward; [`avg_pool2d`] falls back to
//! Burn's [`burn::tensor::module::avg_pool2d`] on other backends and data types.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::ops::AvgPoolOptions;
use burn::tensor::{DType, Tensor};
use rayon::prelude::*;

use crate::conv::{fast_kernels, flex_slice, flex_tensor, flex_values, is_flex};

/// Shape of one pooling: input `[n, c, h, w]`, window `k`, stride `s`, output `[n, c, ho, wo]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub ho: usize,
    pub wo: usize,
}

impl PoolGeometry {
    /// `None` when the window or stride is zero or the window does not fit in the input.
    pub fn new(x: &[usize], k: usize, stride: usize) -> Option<Self> {
        let &[n, c, h, w] = x else {
            return None;
        };
        if k == 0 || stride == 0 || h < k || w < k {
            return None;
        }
        Some(PoolGeometry {
            n,
            c,
            h,
            w,
            k,
            stride,
            ho: (h - k) / stride + 1,
            wo: (w - k) / stride + 1,
        })
    }
}

/// Window means, `[n, c, ho, wo]`.
pub fn forward(g: &PoolGeometry, x: &[f32]) -> Vec<f32> {
    let (k, s) = (g.k, g.stride);
    let scale = 1.0 / (k * k) as f32;
    let mut y = vec![0f32; g.n * g.c * g.ho * g.wo];
    y.par_chunks_mut(g.ho * g.wo)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(yp, xp)| {
            for oy in 0..g.ho {
                let out = &mut yp[oy * g.wo..(oy + 1) * g.wo];
                for i in 0..k {
                    let line = &xp[(oy * s + i) * g.w..(oy * s + i + 1) * g.w];
                    for (ox, v) in out.iter_mut().enumerate() {
                        *v += line[ox * s..ox * s + k].iter().sum::<f32>();
                    }
                }
                out.iter_mut().for_each(|v| *v *= scale);
            }
        });
    y
}

/// Input gradient, `[n, c, h, w]`: each window's `dy / k²` added to its members (pixels in no
/// window get 0).
pub fn backward(g: &PoolGeometry, dy: &[f32]) -> Vec<f32> {
    let (k, s) = (g.k, g.stride);
    let scale = 1.0 / (k * k) as f32;
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    dx.par_chunks_mut(g.h * g.w)
        .zip(dy.par_chunks(g.ho * g.wo))
        .for_each(|(dxp, dyp)| {
            for oy in 0..g.ho {
                let grads = &dyp[oy * g.wo..(oy + 1) * g.wo];
                for i in 0..k {
                    let line = &mut dxp[(oy * s + i) * g.w..(oy * s + i + 1) * g.w];
                    for (ox, d) in grads.iter().enumerate() {
                        let v = d * scale;
                        line[ox * s..ox * s + k].iter_mut().for_each(|t| *t += v);
                    }
                }
            }
        });
    dx
}

fn flex_forward(x: FlexTensor, k: usize, stride: usize) -> FlexTensor {
    let xs = x.shape();
    let g = PoolGeometry::new(xs.as_ref(), k, stride).expect("checked by the caller");
    let x = flex_values(x);
    flex_tensor(forward(&g, flex_slice(&x)), [g.n, g.c, g.ho, g.wo])
}

/// Average pooling with a `k x k` window, stride `stride`, no padding; `x` is `[n, c, h, w]`
/// `f32` and the caller ([`avg_pool2d`]) checks the shapes and the backend.
#[backend_extension(Flex, Autodiff)]
pub trait PoolExt: Backend {
    fn relushare_avg_pool2d(x: FloatTensor<Self>, k: usize, stride: usize) -> FloatTensor<Self>;
}

impl PoolExt for Flex {
    fn relushare_avg_pool2d(x: FloatTensor<Self>, k: usize, stride: usize) -> FloatTensor<Self> {
        flex_forward(x, k, stride)
    }
}

/// The backward step of [`PoolExt::relushare_avg_pool2d`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    /// The geometry (the input's values are not needed).
    type State = PoolGeometry;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = flex_values(grads.consume::<Flex>(&ops.node));
        let g = ops.state;
        if let Some(node) = node_x {
            let dx = backward(&g, flex_slice(&dy));
            grads.register::<Flex>(node.id, flex_tensor(dx, [g.n, g.c, g.h, g.w]));
        }
    }
}

impl<C: CheckpointStrategy> PoolExt for Autodiff<Flex, C> {
    fn relushare_avg_pool2d(x: FloatTensor<Self>, k: usize, stride: usize) -> FloatTensor<Self> {
        let xs = x.shape();
        let g = PoolGeometry::new(xs.as_ref(), k, stride).expect("checked by the caller");
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(g, flex_forward(x.into_primitive(), k, stride)),
            OpsKind::UnTracked(prep) => prep.finish(flex_forward(x.into_primitive(), k, stride)),
        }
    }
}

/// Average pooling with a `kernel x kernel` window and stride `stride` (no padding, output
/// size rounded down): this module's kernels on flex for `f32`, Burn's built-in pooling
/// otherwise.
pub fn avg_pool2d(x: Tensor<4>, kernel: usize, stride: usize) -> Tensor<4> {
    let fits = PoolGeometry::new(&x.dims(), kernel, stride).is_some();
    if fits && fast_kernels() && x.dtype() == DType::F32 && is_flex(&x.device()) {
        Tensor::from_dispatch(<Dispatch as PoolExt>::relushare_avg_pool2d(
            x.into_dispatch(),
            kernel,
            stride,
        ))
    } else {
        burn::tensor::module::avg_pool2d(
            x,
            AvgPoolOptions::new([kernel; 2]).with_stride([stride; 2]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};
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
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs Burn's {b}"
            );
        }
    }

    /// Values and input gradients of [`avg_pool2d`] against Burn's built-in pooling.
    #[test]
    fn matches_burn_pooling() {
        let dev = Device::flex().autodiff();
        assert!(is_flex(&dev), "the fast path must be the one under test");
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        // (n, c, h, w, kernel, stride): the paper's poolings, odd sizes, overlapping windows.
        for &(n, c, h, w, k, s) in &[
            (2, 3, 8, 8, 2, 2),
            (2, 2, 29, 29, 3, 3),
            (1, 3, 7, 9, 2, 2),
            (2, 2, 7, 7, 3, 2),
            (1, 1, 5, 6, 3, 1),
            (1, 2, 4, 4, 4, 4),
        ] {
            let case = format!("n{n} c{c} {h}x{w} k{k} s{s}");
            let len = n * c * h * w;
            let xd: Vec<f32> = (0..len)
                .map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5)
                .collect();
            let g = PoolGeometry::new(&[n, c, h, w], k, s).unwrap();
            let rd: Vec<f32> = (0..n * c * g.ho * g.wo)
                .map(|_| rng.next_u32() as f32 / u32::MAX as f32 - 0.5)
                .collect();
            let run = |ours: bool| {
                let x = Tensor::<4>::from_data(TensorData::new(xd.clone(), [n, c, h, w]), &dev)
                    .require_grad();
                let y = if ours {
                    avg_pool2d(x.clone(), k, s)
                } else {
                    burn::tensor::module::avg_pool2d(
                        x.clone(),
                        AvgPoolOptions::new([k; 2]).with_stride([s; 2]),
                    )
                };
                assert_eq!(y.dims(), [n, c, g.ho, g.wo], "{case}: output shape");
                let r =
                    Tensor::<4>::from_data(TensorData::new(rd.clone(), [n, c, g.ho, g.wo]), &dev);
                let grads = (y.clone() * r).sum().backward();
                (values(y), values(x.grad(&grads).unwrap()))
            };
            let (y1, dx1) = run(true);
            let (y2, dx2) = run(false);
            assert_close(&format!("{case} y"), &y1, &y2);
            assert_close(&format!("{case} dx"), &dx1, &dx2);
        }
    }
}
