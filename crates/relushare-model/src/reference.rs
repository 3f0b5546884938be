//! The plain f32 forward pass of a [`Model`]: the definition every other implementation
//! (Burn training, fixed-point and secure inference) is checked against.
//!
//! Noise (Eq. 4) is drawn through a callback `flip(p) -> bool`, called once per member of a
//! noisy sharing layer in CHW order; pass `&mut |_| false` for the noise-free network.

use crate::file::Model;
use crate::group::GroupMap;
use crate::spec::{ActKind, Decider, Dims, Layer, SharedAct};
use crate::ModelError;

/// Logits for one normalized CHW image.
pub fn forward(
    model: &Model,
    image: &[f32],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<f32>, ModelError> {
    Ok(forward_trace(model, image, flip)?
        .pop()
        .expect("trace holds at least the input"))
}

/// Index of the largest logit.
pub fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// The input followed by every layer's output (`layers.len() + 1` tensors, the ids of
/// [`crate::spec::ModelSpec::sources`]). Layer `i` reads entry `sources[i][0]` (entry `i` in a
/// sequential network): for an activation layer that is its pre-activation `s`.
pub fn forward_trace(
    model: &Model,
    image: &[f32],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<Vec<f32>>, ModelError> {
    let spec = &model.spec;
    let (src, dims) = spec.graph()?;
    if image.len() != spec.input.len() {
        return Err(ModelError::Shape(format!(
            "image has {} values, the model expects {} ({})",
            image.len(),
            spec.input.len(),
            spec.input
        )));
    }
    let maps = model.group_maps_built()?;
    let mut trace = vec![image.to_vec()];
    for (i, layer) in spec.layers.iter().enumerate() {
        let x = &trace[src[i][0]];
        let (din, dout) = (dims[src[i][0]], dims[i + 1]);
        let y = match layer {
            Layer::Conv {
                name,
                kernel,
                stride,
                padding,
                ..
            } => conv2d(
                x,
                din,
                &model.param(&format!("{name}.weight"))?.data,
                &model.param(&format!("{name}.bias"))?.data,
                dout,
                *kernel,
                *stride,
                *padding,
            ),
            Layer::AvgPool { kernel, stride, .. } => avg_pool(x, din, dout, *kernel, *stride),
            Layer::GlobalAvgPool { .. } => avg_pool(x, din, dout, din.h.max(din.w), 1),
            Layer::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => max_pool(x, din, dout, *kernel, *stride, *padding),
            Layer::BatchNorm { name, eps } => {
                let p = |s: &str| model.param(&format!("{name}.{s}")).map(|t| &t.data);
                let (g, b, m, v) = (
                    p("weight")?,
                    p("bias")?,
                    p("running_mean")?,
                    p("running_var")?,
                );
                x.iter()
                    .enumerate()
                    .map(|(j, &u)| {
                        let c = j / din.plane().max(1);
                        (u - m[c]) / (v[c] + eps).sqrt() * g[c] + b[c]
                    })
                    .collect()
            }
            Layer::Add { .. } => {
                let other = &trace[src[i][1]];
                x.iter().zip(other).map(|(a, b)| a + b).collect()
            }
            Layer::Dropout { .. } | Layer::Flatten => x.clone(),
            Layer::Linear { name, in_f, out_f } => {
                let w = &model.param(&format!("{name}.weight"))?.data;
                let b = &model.param(&format!("{name}.bias"))?.data;
                (0..*out_f)
                    .map(|o| {
                        let row = &w[o * in_f..(o + 1) * in_f];
                        b[o] + row.iter().zip(x).map(|(a, b)| a * b).sum::<f32>()
                    })
                    .collect()
            }
            Layer::Act { name, kind } => match kind {
                ActKind::Relu => x.iter().map(|v| v.max(0.0)).collect(),
                ActKind::Identity => x.clone(),
                ActKind::Partial { relu_channels } => {
                    let cut = relu_channels * din.plane();
                    x.iter()
                        .enumerate()
                        .map(|(j, &v)| if j < cut { v.max(0.0) } else { v })
                        .collect()
                }
                ActKind::Shared(s) => {
                    let v = match s.decider {
                        Decider::Learned | Decider::Fc => {
                            Some(model.param(&format!("{name}.v"))?.data.as_slice())
                        }
                        Decider::OneHot => None,
                    };
                    let b = match s.decider {
                        Decider::Fc => {
                            Some(model.param(&format!("{name}.fc_bias"))?.data.as_slice())
                        }
                        _ => None,
                    };
                    shared_act(x, &maps[name], s, v, b, flip)
                }
            },
        };
        trace.push(y);
    }
    Ok(trace)
}

/// Group decision values `z_g` of a sharing layer, in global group order.
pub fn group_values(
    x: &[f32],
    map: &GroupMap,
    decider: Decider,
    v: Option<&[f32]>,
    fc_bias: Option<&[f32]>,
) -> Vec<f32> {
    match decider {
        Decider::OneHot => map.global_leaders().iter().map(|&i| x[i]).collect(),
        Decider::Learned | Decider::Fc => {
            let v = v.expect("learned decider needs v");
            let mut z = vec![0f32; map.total()];
            for (i, g) in map.global_ids().into_iter().enumerate() {
                z[g] += v[i] * x[i];
            }
            if let Some(b) = fc_bias {
                for c in 0..map.c {
                    for g in 0..map.groups[c] {
                        z[map.offset(c) + g] += b[c];
                    }
                }
            }
            z
        }
    }
}

fn shared_act(
    x: &[f32],
    map: &GroupMap,
    s: &SharedAct,
    v: Option<&[f32]>,
    fc_bias: Option<&[f32]>,
    flip: &mut dyn FnMut(f32) -> bool,
) -> Vec<f32> {
    let z = group_values(x, map, s.decider, v, fc_bias);
    map.global_ids()
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let mut keep = z[g] >= 0.0;
            if s.noise > 0.0 && flip(s.noise) {
                keep = !keep;
            }
            if keep {
                x[i]
            } else {
                0.0
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn conv2d(
    x: &[f32],
    din: Dims,
    w: &[f32],
    b: &[f32],
    dout: Dims,
    k: usize,
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let mut y = vec![0f32; dout.len()];
    for oc in 0..dout.c {
        let out = &mut y[oc * dout.plane()..(oc + 1) * dout.plane()];
        out.fill(b[oc]);
        for ic in 0..din.c {
            let xin = &x[ic * din.plane()..(ic + 1) * din.plane()];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = w[((oc * din.c + ic) * k + ky) * k + kx];
                    for oy in 0..dout.h {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        if iy < 0 || iy >= din.h as isize {
                            continue;
                        }
                        let row = &xin[iy as usize * din.w..(iy as usize + 1) * din.w];
                        for ox in 0..dout.w {
                            let ix = (ox * stride + kx) as isize - pad as isize;
                            if ix >= 0 && ix < din.w as isize {
                                out[oy * dout.w + ox] += wv * row[ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// Average pooling; a global pool passes `k = max(h, w)`, and only positions inside the
/// input are summed (divided by the window's full size, like a `k x k` pool without padding).
fn avg_pool(x: &[f32], din: Dims, dout: Dims, k: usize, stride: usize) -> Vec<f32> {
    let mut y = vec![0f32; dout.len()];
    let (kh, kw) = (k.min(din.h), k.min(din.w));
    let inv = 1.0 / (kh * kw) as f32;
    for c in 0..din.c {
        for oy in 0..dout.h {
            for ox in 0..dout.w {
                let mut s = 0.0;
                for ky in 0..kh {
                    for kx in 0..kw {
                        s += x[c * din.plane() + (oy * stride + ky) * din.w + ox * stride + kx];
                    }
                }
                y[c * dout.plane() + oy * dout.w + ox] = s * inv;
            }
        }
    }
    y
}

/// Max pooling; padded positions take no part.
fn max_pool(x: &[f32], din: Dims, dout: Dims, k: usize, stride: usize, pad: usize) -> Vec<f32> {
    let mut y = vec![0f32; dout.len()];
    for c in 0..din.c {
        for oy in 0..dout.h {
            for ox in 0..dout.w {
                let mut m = f32::NEG_INFINITY;
                for (iy, ix) in crate::spec::pool_window(din, k, stride, pad, oy, ox) {
                    m = m.max(x[c * din.plane() + iy * din.w + ix]);
                }
                y[c * dout.plane() + oy * dout.w + ox] = m;
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::build;
    use crate::spec::Arch;

    fn image(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn shared_layer_with_unit_groups_is_relu() {
        // 1x1 patches with v = 1 (the initial value) decide exactly like ReLU.
        let mut spec = build(Arch::Svhn, "original").unwrap();
        let relu = Model::random(spec.clone(), None, 3).unwrap();
        crate::presets::apply_freeform(&mut spec, "act1=patch1").unwrap();
        let mut shared = Model::random(spec, None, 3).unwrap();
        for (k, t) in &relu.params {
            shared.params.insert(k.clone(), t.clone());
        }
        let x = image(3 * 32 * 32, 1);
        let a = forward(&relu, &x, &mut |_| false).unwrap();
        let b = forward(&shared, &x, &mut |_| false).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn whole_channel_decision_zeroes_or_keeps_channels() {
        let m = Model::random(build(Arch::Svhn, "uniform32").unwrap(), None, 5).unwrap();
        let x = image(3 * 32 * 32, 2);
        let t = forward_trace(&m, &x, &mut |_| false).unwrap();
        let (pre, post) = (&t[1], &t[2]);
        for c in 0..32 {
            let p = &pre[c * 841..(c + 1) * 841];
            let q = &post[c * 841..(c + 1) * 841];
            let keep = p.iter().sum::<f32>() >= 0.0;
            assert_eq!(q, if keep { p.to_vec() } else { vec![0.0; 841] });
        }
    }

    #[test]
    fn noise_flips_decisions() {
        let m = Model::random(build(Arch::Fmnist, "noise").unwrap(), None, 5).unwrap();
        let x = image(28 * 28, 3);
        let clean = forward_trace(&m, &x, &mut |_| false).unwrap();
        let flipped = forward_trace(&m, &x, &mut |_| true).unwrap();
        // Every member flips: kept channels become zero and zeroed ones are restored.
        for (i, (&a, &s)) in clean[2].iter().zip(&clean[1]).enumerate() {
            let b = flipped[2][i];
            assert!(a == 0.0 || b == 0.0, "{i}");
            assert!(a == s || b == s, "{i}");
        }
    }

    #[test]
    fn rejects_wrong_image_size() {
        let m = Model::random(build(Arch::Fmnist, "original").unwrap(), None, 5).unwrap();
        assert!(forward(&m, &[0.0; 10], &mut |_| false).is_err());
    }

    #[test]
    fn conv_matches_direct_definition() {
        // 1 channel 3x3 input, 2x2 kernel of ones, padding 1: corner sums.
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let y = conv2d(
            &x,
            Dims::new(1, 3, 3),
            &[1.0; 4],
            &[0.5],
            Dims::new(1, 4, 4),
            2,
            1,
            1,
        );
        assert_eq!(y[0], 1.5);
        assert_eq!(y[5], 1.0 + 2.0 + 4.0 + 5.0 + 0.5);
        assert_eq!(y[15], 9.5);
    }
}
