//! Provable magnitude bounds of every comparison input, and the comparison ring size `k` they
//! allow.
//!
//! Interval arithmetic on the fixed-point model (integers, `f` fractional bits), per element:
//! * input: `|x| <= input_abs_max * 2^f + 1`;
//! * conv / linear: `|y| <= (sum |w| * B_in + |b|) / 2^f + 1` (the `+ 1` covers truncation;
//!   conv bounds are kept per channel, linear per output);
//! * avg pool: `(k^2 * B * round(2^f/k^2)) / 2^f + 1`; ReLU and sharing keep the bound;
//! * a ReLU-sharing layer's Learned/Fc group value: `max_g sum_{i in g} |v_i| B_i + |b_g|`
//!   (2f bits, compared without truncation);
//! * a fused gate's decision value ([`crate::fast::gate`]): `max_c sum_q |U_cq| B_q + |beta_c|`
//!   over the bounds `B_q` of the convolution's input (2f bits).
//!
//! A comparison of `y` with `|y| <= B` on `k` bits is exact when `B < 2^(k-1)`; we use
//! `k = bitlen(B) + 2` (one sign bit and one spare bit), rounded up to an odd number (the
//! comparison tree works on pairs of bits), at least 3 and at most 63. The remaining failure
//! mode is the probabilistic local truncation of [`crate::fixed`], which is independent of `k`.

use crate::error::{MpcError, Result};
use crate::fast::FastConfig;
use crate::fixed;
use crate::plain::{FixedLayer, FixedModel};
use crate::suite::DeciderKind;

/// `k` for a bound `b` (in integer fixed-point units).
pub fn bits_for_bound(b: f64) -> u32 {
    let bl = if b < 1.0 {
        1
    } else {
        (b + 1.0).log2().ceil() as u32
    };
    let k = (bl + 2).max(3);
    let k = if k % 2 == 0 { k + 1 } else { k };
    k.min(63)
}

fn sv(v: u64) -> f64 {
    (v as i64).unsigned_abs() as f64
}

/// Per layer with comparisons: its provable bound (integer units) and `k`.
pub fn layer_bounds(fm: &FixedModel, input_abs_max: f64) -> Result<Vec<(String, f64, u32)>> {
    let f = fm.fp.frac_bits;
    let scale = (1u64 << f) as f64;
    let mut b: Vec<f64> = vec![input_abs_max * scale + 1.0; fm.input_len];
    let mut out = Vec::new();
    let mut prev_in = b.clone();
    for l in &fm.layers {
        let layer_in = b.clone();
        b = match l {
            FixedLayer::Conv {
                geom, w, b: bias, ..
            } => {
                let plane_in = geom.h * geom.w;
                let cmax: Vec<f64> = (0..geom.c)
                    .map(|c| {
                        b[c * plane_in..(c + 1) * plane_in]
                            .iter()
                            .cloned()
                            .fold(0.0, f64::max)
                    })
                    .collect();
                let per = geom.c * geom.k * geom.k;
                let plane = geom.oh() * geom.ow();
                let mut nb = Vec::with_capacity(geom.o * plane);
                for o in 0..geom.o {
                    let mut acc = sv(bias[o]);
                    for (j, &wv) in w[o * per..(o + 1) * per].iter().enumerate() {
                        acc += sv(wv) * cmax[j / (geom.k * geom.k)];
                    }
                    nb.extend(std::iter::repeat_n(acc / scale + 1.0, plane));
                }
                nb
            }
            FixedLayer::Linear {
                geom, w, b: bias, ..
            } => {
                if b.len() != geom.in_f {
                    return Err(MpcError::Shape(format!(
                        "bounds: linear input {} vs {}",
                        b.len(),
                        geom.in_f
                    )));
                }
                (0..geom.out_f)
                    .map(|o| {
                        let acc: f64 = w[o * geom.in_f..(o + 1) * geom.in_f]
                            .iter()
                            .zip(&b)
                            .map(|(&wv, &bi)| sv(wv) * bi)
                            .sum::<f64>()
                            + sv(bias[o]);
                        acc / scale + 1.0
                    })
                    .collect()
            }
            FixedLayer::AvgPool { geom, .. } => {
                let c = fixed::pool_factor(geom.k, f) as f64;
                let plane_in = geom.h * geom.w;
                let plane = geom.oh() * geom.ow();
                let mut nb = Vec::with_capacity(geom.c * plane);
                for ch in 0..geom.c {
                    let m = b[ch * plane_in..(ch + 1) * plane_in]
                        .iter()
                        .cloned()
                        .fold(0.0, f64::max);
                    nb.extend(std::iter::repeat_n(
                        (geom.k * geom.k) as f64 * m * c / scale + 1.0,
                        plane,
                    ));
                }
                nb
            }
            FixedLayer::Relu { name, .. } => {
                let m = b.iter().cloned().fold(0.0, f64::max);
                out.push((name.clone(), m, bits_for_bound(m)));
                b
            }
            FixedLayer::Partial {
                name,
                plane,
                relu_channels,
                ..
            } => {
                let m = b[..relu_channels * plane]
                    .iter()
                    .cloned()
                    .fold(0.0, f64::max);
                out.push((name.clone(), m, bits_for_bound(m)));
                b
            }
            FixedLayer::Shared { name, s } if s.fused.is_some() => {
                let fg = s.fused.as_deref().expect("guarded");
                if prev_in.len() != fg.in_len {
                    return Err(MpcError::Shape(format!(
                        "bounds: fused gate {name} input {} vs {}",
                        prev_in.len(),
                        fg.in_len
                    )));
                }
                let m = fg
                    .beta
                    .iter()
                    .enumerate()
                    .map(|(c, &bc)| {
                        fg.u[c * fg.in_len..(c + 1) * fg.in_len]
                            .iter()
                            .zip(&prev_in)
                            .map(|(&u, &bq)| sv(u) * bq)
                            .sum::<f64>()
                            + sv(bc)
                    })
                    .fold(0.0, f64::max);
                out.push((name.clone(), m, bits_for_bound(m)));
                b
            }
            FixedLayer::Shared { name, s } => {
                let m = match s.decider {
                    DeciderKind::OneHot => {
                        s.leaders.iter().map(|&l| b[l as usize]).fold(0.0, f64::max)
                    }
                    _ => {
                        let mut z = vec![0.0f64; s.num_groups];
                        for (i, &g) in s.group_of.iter().enumerate() {
                            z[g as usize] += sv(s.v[i]) * b[i];
                        }
                        if s.decider == DeciderKind::Fc {
                            for (zg, bb) in z.iter_mut().zip(&s.bias) {
                                *zg += sv(*bb);
                            }
                        }
                        z.into_iter().fold(0.0, f64::max)
                    }
                };
                out.push((name.clone(), m, bits_for_bound(m)));
                b
            }
            FixedLayer::Identity { .. } => b,
        };
        prev_in = layer_in;
    }
    Ok(out)
}

/// A [`FastConfig`] with the provable `k` of every comparison layer (`input_abs_max`: largest
/// magnitude of a normalized input value, e.g. `max_c max(|0 - mean_c|, |1 - mean_c|) / std_c`).
pub fn comparison_bits(fm: &FixedModel, input_abs_max: f64) -> Result<FastConfig> {
    let mut cfg = FastConfig::defaults(fm.fp.frac_bits);
    for (name, _, k) in layer_bounds(fm, input_abs_max)? {
        cfg.bits.insert(name, k);
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        assert_eq!(bits_for_bound(0.0), 3);
        assert_eq!(bits_for_bound(1.0), 3);
        // B = 1000 needs 10 magnitude bits + sign + spare = 12 -> 13.
        assert_eq!(bits_for_bound(1000.0), 13);
        assert_eq!(bits_for_bound(1e30), 63);
        assert!((1u64 << (bits_for_bound(65535.0) - 1)) as f64 > 65535.0);
    }
}
