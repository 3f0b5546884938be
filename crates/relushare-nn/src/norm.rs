//! Batch normalisation in training mode for the `flex` CPU backend.
//!
//! Burn's generic `batch_norm_train` computes the statistics and the output with about ten
//! passes over the activations (transposed copies, reductions, broadcasts); in a ResNet the
//! batch-norm layers then cost more than the convolutions they follow. Here the batch
//! statistics come from one pass on the host ([`batch_stats`]), the output is one pass over
//! the `n·c` planes, and the backward pass is a per-channel reduction plus one pass:
//! with `x̂ = (x - μ)/σ`, `dγ = Σ dy·x̂`, `dβ = Σ dy` and
//! `dx = γ/σ · (dy - dβ/N - x̂·dγ/N)` (the gradient through the batch statistics included,
//! as Burn's and PyTorch's). Like [`crate::conv`], it is a Burn backend extension on `Flex`
//! and `Autodiff<Flex>`; [`batch_norm_train`] falls back to Burn's operation elsewhere.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::conv::{fast_kernels, flex_slice, flex_values, is_flex};

/// `(batch, channels, values per channel and image)` of a `[B, C, ...]` shape.
fn layout(shape: &[usize]) -> (usize, usize, usize) {
    let (b, c) = (shape[0], shape[1]);
    let rest = shape[2..].iter().product::<usize>();
    (b, c, rest)
}

/// Per-channel mean and biased variance of `x` (`[B, C, ...]` values in row-major order),
/// accumulated in `f64`.
pub fn batch_stats(x: &[f32], b: usize, c: usize, plane: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (b * plane).max(1) as f64;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..b).map(move |i| &x[(i * c + ch) * plane..(i * c + ch + 1) * plane]);
            let sum: f64 = planes()
                .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
                .sum();
            let mean = sum / n;
            let sq: f64 = planes()
                .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
                .sum();
            (mean as f32, (sq / n) as f32)
        })
        .unzip()
}

/// `y = (x - mean) · γ/√(var + eps) + β` per channel, over the `[B, C, ...]` planes.
fn forward(x: &[f32], c: usize, plane: usize, scale: &[f32], shift: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(plane.max(1))
        .zip(x.par_chunks(plane.max(1)))
        .enumerate()
        .for_each(|(i, (yp, xp))| {
            let (s, t) = (scale[i % c], shift[i % c]);
            yp.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * s + t);
        });
    y
}

/// What the backward pass needs besides the checkpointed input.
#[derive(Debug, Clone)]
pub struct BnState {
    x: NodeId,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

/// Gradients of the input, γ and β.
fn backward(x: &[f32], dy: &[f32], shape: &[usize], s: &BnState) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (b, c, plane) = layout(shape);
    let n = (b * plane).max(1) as f32;
    // per channel: Σ dy and Σ dy·x̂
    let (dbeta, dgamma): (Vec<f32>, Vec<f32>) = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (m, r) = (s.mean[ch], s.inv_std[ch]);
            let (mut sd, mut sdx) = (0f64, 0f64);
            for i in 0..b {
                let o = (i * c + ch) * plane;
                let (xp, dp) = (&x[o..o + plane], &dy[o..o + plane]);
                let (mut a, mut bb) = (0f32, 0f32);
                for (&xv, &d) in xp.iter().zip(dp) {
                    a += d;
                    bb += d * (xv - m) * r;
                }
                sd += a as f64;
                sdx += bb as f64;
            }
            (sd as f32, sdx as f32)
        })
        .unzip();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(plane.max(1))
        .zip(x.par_chunks(plane.max(1)).zip(dy.par_chunks(plane.max(1))))
        .enumerate()
        .for_each(|(i, (dxp, (xp, dp)))| {
            let ch = i % c;
            let (m, r) = (s.mean[ch], s.inv_std[ch]);
            let k = s.gamma[ch] * r;
            let (mb, mg) = (dbeta[ch] / n, dgamma[ch] / n);
            for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dp) {
                *o = k * (d - mb - (xv - m) * r * mg);
            }
        });
    (dx, dgamma, dbeta)
}

fn values(t: FlexTensor) -> Vec<f32> {
    flex_slice(&flex_values(t)).to_vec()
}

/// The forward pass on flex tensors; returns the output and the backward state's numbers.
fn flex_forward(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    mean: FlexTensor,
    var: FlexTensor,
    eps: f64,
) -> (FlexTensor, Vec<f32>, Vec<f32>, Vec<f32>) {
    let shape = x.shape();
    let (_, c, plane) = layout(shape.as_ref());
    let (gamma, beta, mean, var) = (values(gamma), values(beta), values(mean), values(var));
    let inv_std: Vec<f32> = var
        .iter()
        .map(|v| 1.0 / ((*v as f64 + eps).sqrt() as f32))
        .collect();
    let scale: Vec<f32> = gamma.iter().zip(&inv_std).map(|(g, r)| g * r).collect();
    let shift: Vec<f32> = (0..c).map(|i| beta[i] - mean[i] * scale[i]).collect();
    let x = flex_values(x);
    let y = forward(flex_slice(&x), c, plane, &scale, &shift);
    let y = FlexTensor::from_data(TensorData::new(y, shape));
    (y, mean, inv_std, gamma)
}

/// Batch norm of `x` (`[B, C, ...]`, `f32`) with its batch statistics `mean` / `var` (biased,
/// `[C]`, from [`batch_stats`]); the backward pass differentiates through the statistics. The
/// caller ([`batch_norm_train`]) checks shapes and backend.
#[backend_extension(Flex, Autodiff)]
pub trait NormExt: Backend {
    fn relushare_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self>;
}

impl NormExt for Flex {
    fn relushare_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        flex_forward(x, gamma, beta, mean, var, eps).0
    }
}

/// The backward step of [`NormExt::relushare_batch_norm_train`] on `Autodiff<Flex>`.
#[derive(Debug)]
struct BnBackward;

impl Backward<Flex, 3> for BnBackward {
    type State = BnState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let dy = flex_values(grads.consume::<Flex>(&ops.node));
        let s = ops.state;
        let x = flex_values(ckpt.retrieve_node_output::<FlexTensor>(s.x));
        let shape = x.shape();
        let (dx, dgamma, dbeta) = backward(flex_slice(&x), flex_slice(&dy), shape.as_ref(), &s);
        let c = dgamma.len();
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
        }
        if let Some(node) = node_g {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dgamma, [c])));
        }
        if let Some(node) = node_b {
            grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dbeta, [c])));
        }
    }
}

impl<C: CheckpointStrategy> NormExt for Autodiff<Flex, C> {
    fn relushare_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        eps: f64,
    ) -> FloatTensor<Self> {
        match BnBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let (y, mean, inv_std, gamma) = flex_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    mean.into_primitive(),
                    var.into_primitive(),
                    eps,
                );
                let state = BnState {
                    x: x_id,
                    mean,
                    inv_std,
                    gamma,
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                flex_forward(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    mean.into_primitive(),
                    var.into_primitive(),
                    eps,
                )
                .0,
            ),
        }
    }
}

/// Batch norm with the batch's own statistics (training mode): the output and the batch mean
/// and biased variance `[C]` (detached). This module's kernels on flex for `f32`, Burn's
/// `batch_norm_train` otherwise.
pub fn batch_norm_train<const D: usize>(
    x: Tensor<D>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    eps: f64,
) -> (Tensor<D>, Tensor<1>, Tensor<1>) {
    let device = x.device();
    if D >= 2 && fast_kernels() && x.dtype() == DType::F32 && is_flex(&device) {
        let dims = x.dims();
        let (b, c, plane) = layout(&dims);
        let host = x
            .clone()
            .detach()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("an f32 tensor reads back as f32");
        let (mean, var) = batch_stats(&host, b, c, plane);
        let mean = Tensor::<1>::from_data(TensorData::new(mean, [c]), &device);
        let var = Tensor::<1>::from_data(TensorData::new(var, [c]), &device);
        let y = Tensor::from_dispatch(<Dispatch as NormExt>::relushare_batch_norm_train(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            mean.clone().into_dispatch(),
            var.clone().into_dispatch(),
            eps,
        ));
        (y, mean, var)
    } else {
        let out = burn::tensor::module::batch_norm_train(x, gamma, beta, eps);
        (out.output, out.mean, out.variance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{what}[{i}]: {a} vs Burn's {b}"
            );
        }
    }

    /// Values, statistics and gradients (input, γ, β) against Burn's `batch_norm_train`.
    fn check<const D: usize>(shape: [usize; D]) {
        let dev = Device::flex().autodiff();
        assert!(is_flex(&dev));
        let mut rng = ChaCha8Rng::seed_from_u64(shape.iter().product::<usize>() as u64);
        let mut rnd = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n)
                .map(|_| lo + (hi - lo) * (rng.next_u32() as f32 / u32::MAX as f32))
                .collect()
        };
        let n: usize = shape.iter().product();
        let c = shape[1];
        let (xd, gd, bd, rd) = (
            rnd(n, -2.0, 3.0),
            rnd(c, 0.5, 1.5),
            rnd(c, -0.5, 0.5),
            rnd(n, -1.0, 1.0),
        );
        let run = |ours: bool| {
            let x = Tensor::<D>::from_data(TensorData::new(xd.clone(), shape), &dev).require_grad();
            let g = Tensor::<1>::from_data(TensorData::new(gd.clone(), [c]), &dev).require_grad();
            let b = Tensor::<1>::from_data(TensorData::new(bd.clone(), [c]), &dev).require_grad();
            let (y, m, v) = if ours {
                batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5)
            } else {
                let o =
                    burn::tensor::module::batch_norm_train(x.clone(), g.clone(), b.clone(), 1e-5);
                (o.output, o.mean, o.variance)
            };
            let r = Tensor::<D>::from_data(TensorData::new(rd.clone(), shape), &dev);
            let grads = (y.clone() * r).sum().backward();
            [
                vals(y),
                vals(m),
                vals(v),
                vals(x.grad(&grads).unwrap()),
                vals(g.grad(&grads).unwrap()),
                vals(b.grad(&grads).unwrap()),
            ]
        };
        let (ours, burn) = (run(true), run(false));
        for (i, what) in ["y", "mean", "var", "dx", "dgamma", "dbeta"]
            .iter()
            .enumerate()
        {
            close(&format!("{shape:?} {what}"), &ours[i], &burn[i]);
        }
    }

    #[test]
    fn matches_burn_batch_norm_train() {
        check([4, 3, 5, 5]);
        check([2, 8, 7, 3]);
        check([6, 5]);
    }
}
