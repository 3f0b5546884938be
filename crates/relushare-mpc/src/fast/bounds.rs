//! Provable magnitude bounds of every comparison input and every truncated value, the
//! comparison ring size `k` they allow, and the truncation failure bound they imply.
//!
//! Interval arithmetic on the fixed-point model (integers, `f` fractional bits), per element:
//! * input: `|x| <= input_abs_max * 2^f + 1` ([`input_bound`]; inputs beyond it are refused by
//!   [`check_input`], so the bounds below hold for every input that is run);
//! * conv / linear: `|y| <= (sum |w| * B_in + |b|) / 2^f + 1` (the `+ 1` covers truncation;
//!   conv bounds are kept per channel, linear per output); where the inputs are known
//!   non-negative (after a ReLU, see *Truncation*) the sum is taken by sign instead,
//!   `max(sum_{w>0} w B_in + b, -(sum_{w<0} w B_in + b))`;
//! * avg pool: `(k^2 * B * round(2^f/k^2)) / 2^f + 1`; ReLU and sharing keep the bound;
//! * a ReLU-sharing layer's Learned/Fc group value: `max_g sum_{i in g} |v_i| B_i + |b_g|`
//!   (2f bits, compared without truncation);
//! * a fused gate's decision value ([`crate::fast::gate`]): `max_c sum_q |U_cq| B_q + |beta_c|`
//!   over the bounds `B_q` of the convolution's input (2f bits).
//!
//! # Comparison rings
//! A comparison of `y` with `|y| <= B` on `k` bits is exact when `B < 2^(k-1)`; we use
//! `k = bitlen(B) + 2` (one sign bit and one spare bit), rounded up to an odd number (the
//! comparison tree works on pairs of bits), at least 3. A bound that would need more than 63
//! bits is an error ([`bits_for_bound`]), never a silently smaller ring. `k` is public: it
//! reveals a power-of-two bound on each layer's comparison inputs (see the threat model).
//!
//! # Truncation
//! Local share truncation ([`crate::fixed`]) of a value with `|x| < 2^e` fails (returns garbage
//! instead of `x / 2^f` within one unit) with probability at most `2^(e + 1 - 64)` per element.
//! [`analyse`] bounds the value *before* truncation of every truncating layer (the product sum
//! plus bias, `2f` fractional bits: `sum |w| B_in + |b|`; for pooling `k^2 B round(2^f/k^2)`;
//! for a pooled fused gate first the window sum of the exact convolution, `k^2 (sum |w| B_in +
//! |b|)`, then that truncated times the pooling constant), using signs where known: after a
//! ReLU a value lies in `[0, B]` (pooling and sharing keep the sign), so a product sum lies in
//! `[sum_{w<0} w B, sum_{w>0} w B]` plus the bias. The per-inference failure probability is at
//! most the sum over all truncated elements of one image, [`Bounds::failure_bound`] (union
//! bound), and [`Bounds::check_truncation`] refuses a model whose bound exceeds
//! [`MAX_TRUNC_FAILURE`] = 2^-6 ([`crate::fast::config_for_model`] then names the largest
//! `--frac-bits` that meets it: the rescaling).
//!
//! Per image at f = 13 with the tests' random weights (`Model::random`, seed 3, the presets'
//! normalization): CIFAR-10 `original` truncates
//! 193,546 values and the bound is 1.2e-3 (the deep layers' worst cases reach 2^39-2^44);
//! `uniform32` (fused) 144,394 and 4.7e-3 (shared layers keep negative values, so fewer signs
//! are known); SVHN 31,818 and 2.3e-6; Fashion-MNIST 47,178 and 2.9e-6. For comparison, the
//! assumption `|x| < 2^36` for every value would give 193,546 * 2^-27 = 1.4e-3 for CIFAR-10.
//! These are worst cases over all inputs in range; the actual values are far smaller.

use crate::error::{MpcError, Result};
use crate::fast::{CmpMode, FastConfig};
use crate::fixed;
use crate::plain::{FixedLayer, FixedModel};
use crate::suite::DeciderKind;

/// `k` for a bound `b` (in integer fixed-point units): odd, at least 3, `b < 2^(k-2)`. A bound
/// that needs more than 63 bits (or is not a finite non-negative number) is an error.
pub fn bits_for_bound(b: f64) -> Result<u32> {
    if !(b.is_finite() && b >= 0.0) {
        return Err(MpcError::Model(format!(
            "comparison input bound {b} is not a finite magnitude"
        )));
    }
    let k = (bitlen_bound(b) + 2).max(3);
    let k = if k.is_multiple_of(2) { k + 1 } else { k };
    if k > 63 {
        return Err(MpcError::Model(format!(
            "comparison inputs bounded by {b:.3e} (2^{:.1}) need a {k}-bit ring; at most 63 bits \
             are supported (use fewer fractional bits, or a model with smaller weights)",
            b.max(1.0).log2()
        )));
    }
    Ok(k)
}

/// Largest proven per-inference truncation failure probability ([`Bounds::failure_bound`]) of
/// a model the fast suites run: 2^-6. The interval bounds are worst cases (products of the
/// layers' weight norms), so the actual rate is far lower; a model beyond this is refused and
/// the error names the largest `--frac-bits` that meets it (each bit less divides every bound
/// on a product by 4).
pub const MAX_TRUNC_FAILURE: f64 = 1.0 / 64.0;

/// The input bound (integer units) for normalized inputs of magnitude at most `input_abs_max`.
pub fn input_bound(input_abs_max: f64, frac_bits: u32) -> f64 {
    input_abs_max * (1u64 << frac_bits) as f64 + 1.0
}

/// Refuses an encoded input (`f` bits) with an element beyond [`input_bound`]: the comparison
/// rings and truncation bounds are proven only for inputs within it.
pub fn check_input(x: &[u64], input_abs_max: f64, frac_bits: u32) -> Result<()> {
    let lim = input_bound(input_abs_max, frac_bits);
    if let Some((i, &v)) = x.iter().enumerate().find(|(_, &v)| sv(v) > lim) {
        let scale = (1u64 << frac_bits) as f64;
        return Err(MpcError::Param(format!(
            "input element {i} is {:.4} after normalization, outside +-{input_abs_max:.4} (the \
             range of pixels in [0, 1] that the comparison rings were proven for); the input is \
             refused",
            (v as i64) as f64 / scale
        )));
    }
    Ok(())
}

/// A comparison layer's provable bound.
#[derive(Clone, Debug, PartialEq)]
pub struct CmpBound {
    /// Layer name.
    pub name: String,
    /// Largest magnitude of a comparison input (integer units: f bits for ReLU inputs and
    /// one-hot group values, 2f bits for Learned/Fc group values and fused decisions).
    pub bound: f64,
    /// Comparison ring bits.
    pub k: u32,
}

/// A truncating layer's provable bound on the values it truncates.
#[derive(Clone, Debug, PartialEq)]
pub struct TruncBound {
    /// Layer name.
    pub name: String,
    /// Truncated elements per image.
    pub elements: usize,
    /// Largest magnitude of a value before truncation (integer units, 2f bits).
    pub bound: f64,
    /// `e` with `bound < 2^e`.
    pub bits: u32,
}

impl TruncBound {
    /// Failure probability bound per truncated element, `2^(e + 1 - 64)`.
    pub fn per_element(&self) -> f64 {
        2f64.powi(self.bits as i32 + 1 - 64)
    }
}

/// All provable bounds of a model.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounds {
    /// Per comparison layer.
    pub comparisons: Vec<CmpBound>,
    /// Per truncation step (a pooled fused gate truncates twice, listed under the pooling).
    pub truncations: Vec<TruncBound>,
}

impl Bounds {
    /// Truncated elements per image.
    pub fn truncated_elements(&self) -> usize {
        self.truncations.iter().map(|t| t.elements).sum()
    }

    /// Upper bound on the probability that any truncation of one image fails (union bound).
    pub fn failure_bound(&self) -> f64 {
        self.truncations
            .iter()
            .map(|t| t.elements as f64 * t.per_element())
            .sum()
    }

    /// Refuses the model when its proven per-inference failure bound exceeds
    /// [`MAX_TRUNC_FAILURE`].
    pub fn check_truncation(&self) -> Result<()> {
        let p = self.failure_bound();
        if p > MAX_TRUNC_FAILURE {
            let worst = self
                .truncations
                .iter()
                .max_by(|a, b| {
                    (a.elements as f64 * a.per_element())
                        .total_cmp(&(b.elements as f64 * b.per_element()))
                })
                .map(|t| format!("; worst layer {}: values up to 2^{}", t.name, t.bits))
                .unwrap_or_default();
            return Err(MpcError::Model(format!(
                "local truncation may fail with probability up to {p:.3e} per inference by the \
                 proven bounds, above the {MAX_TRUNC_FAILURE} the fast suites accept{worst}"
            )));
        }
        Ok(())
    }
}

/// The smallest `e` with `b < 2^e` (exact for powers of two, where `log2` may round).
pub(crate) fn bitlen_bound(b: f64) -> u32 {
    if !b.is_finite() {
        return 1024;
    }
    if b < 1.0 {
        return 0;
    }
    let mut e = (b.log2().floor() as i32 + 1).clamp(1, 2000);
    while 2f64.powi(e) <= b {
        e += 1;
    }
    while e > 1 && 2f64.powi(e - 1) > b {
        e -= 1;
    }
    e as u32
}

fn trunc(name: &str, elements: usize, bound: f64) -> TruncBound {
    TruncBound {
        name: name.to_string(),
        elements,
        bound,
        bits: bitlen_bound(bound),
    }
}

fn sv(v: u64) -> f64 {
    (v as i64).unsigned_abs() as f64
}

/// Per layer with comparisons: its provable bound (integer units) and `k`.
pub fn layer_bounds(fm: &FixedModel, input_abs_max: f64) -> Result<Vec<(String, f64, u32)>> {
    Ok(analyse(fm, input_abs_max)?
        .comparisons
        .into_iter()
        .map(|c| (c.name, c.bound, c.k))
        .collect())
}

/// Every comparison and truncation bound of `fm` (fused or not) for normalized inputs of
/// magnitude at most `input_abs_max`. Both use the signs: after a ReLU (and through pooling and
/// sharing, which keep signs) a value lies in `[0, B]`, so a product sum lies in
/// `[sum_{w<0} w B, sum_{w>0} w B]` (+ bias) instead of `+-sum |w| B`, and a max pool's window
/// members of one sign differ by at most `B`. (Until session 7 the comparison bounds used
/// magnitudes only; the signs shrink CIFAR-10 `original`'s comparison rings by 0 to 5 bits
/// per layer, deeper layers more.)
pub fn analyse(fm: &FixedModel, input_abs_max: f64) -> Result<Bounds> {
    propagate(fm, input_abs_max)
}

/// One pass of interval arithmetic, tracking which values are known non-negative.
fn propagate(fm: &FixedModel, input_abs_max: f64) -> Result<Bounds> {
    let f = fm.fp.frac_bits;
    let scale = (1u64 << f) as f64;
    let mut b: Vec<f64> = vec![input_bound(input_abs_max, f); fm.input_len];
    // Is each value known to be non-negative?
    let mut nonneg: Vec<bool> = vec![false; fm.input_len];
    // Range of a product sum: (sum of the largest, sum of the smallest) contributions.
    let range = |acc: &mut (f64, f64), w: u64, bound: f64, nn: bool| {
        let wv = (w as i64) as f64;
        if nn {
            acc.0 += (wv * bound).max(0.0);
            acc.1 += (wv * bound).min(0.0);
        } else {
            acc.0 += wv.abs() * bound;
            acc.1 -= wv.abs() * bound;
        }
    };
    let magnitude = |acc: (f64, f64), bias: u64| {
        let bv = (bias as i64) as f64;
        (acc.0 + bv).max(-(acc.1 + bv))
    };
    let mut cmps = Vec::new();
    let mut truncs = Vec::new();
    let mut prev_in = b.clone();
    // Pre-truncation bound per output channel of a convolution heading a pooled fused gate
    // (its truncation happens after the window sums, see the module doc).
    let mut pooled_head: Option<Vec<f64>> = None;
    let mut cmp = |name: &str, m: f64| -> Result<()> {
        let k = bits_for_bound(m).map_err(|e| MpcError::Model(format!("{name}: {e}")))?;
        cmps.push(CmpBound {
            name: name.to_string(),
            bound: m,
            k,
        });
        Ok(())
    };
    // Bounds and signs of every tensor (graph models read earlier tensors; dropped after
    // their last reader).
    if fm.srcs.len() != fm.layers.len()
        || fm
            .srcs
            .iter()
            .enumerate()
            .any(|(i, s)| s.iter().any(|&t| t > i))
    {
        return Err(MpcError::Model(
            "bounds: the model's graph edges do not fit its layers".into(),
        ));
    }
    let mut last = vec![0usize; fm.layers.len() + 1];
    for (i, src) in fm.srcs.iter().enumerate() {
        for &t in src {
            last[t] = i;
        }
    }
    let mut vals: Vec<Option<(Vec<f64>, Vec<bool>)>> = vec![None; fm.layers.len() + 1];
    vals[0] = Some((b.clone(), nonneg.clone()));
    let tensor = |vals: &[Option<(Vec<f64>, Vec<bool>)>], t: usize| {
        vals.get(t)
            .cloned()
            .flatten()
            .ok_or_else(|| MpcError::Model(format!("bounds: tensor {t} is not available")))
    };
    for (li, l) in fm.layers.iter().enumerate() {
        let src = fm
            .srcs
            .get(li)
            .ok_or_else(|| MpcError::Model(format!("bounds: layer {li} has no inputs")))?;
        (b, nonneg) = tensor(&vals, src[0])?;
        let layer_in = b.clone();
        b = match l {
            FixedLayer::Add { .. } => {
                let (b2, n2) = tensor(&vals, src[1])?;
                for (x, y) in nonneg.iter_mut().zip(&n2) {
                    *x = *x && *y;
                }
                b.iter().zip(&b2).map(|(x, y)| x + y).collect()
            }
            FixedLayer::MaxPool { name, geom } => {
                let wins = geom.windows();
                // A difference of two window members: |a - b| <= 2 max |x| (max |x| when both
                // are known non-negative).
                let mut m = 0.0f64;
                let mut nb = Vec::with_capacity(wins.len());
                let mut nn = Vec::with_capacity(wins.len());
                for w in &wins {
                    let bm = w.iter().map(|&i| b[i as usize]).fold(0.0, f64::max);
                    let all = w.iter().all(|&i| nonneg[i as usize]);
                    m = m.max(if all { bm } else { 2.0 * bm });
                    nb.push(bm);
                    nn.push(w.iter().any(|&i| nonneg[i as usize]));
                }
                cmp(name, m)?;
                nonneg = nn;
                nb
            }
            FixedLayer::Conv {
                name,
                geom,
                w,
                b: bias,
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
                let cnn: Vec<bool> = (0..geom.c)
                    .map(|c| nonneg[c * plane_in..(c + 1) * plane_in].iter().all(|&x| x))
                    .collect();
                let per = geom.c * geom.k * geom.k;
                let plane = geom.oh() * geom.ow();
                let mut nb = Vec::with_capacity(geom.o * plane);
                let mut accs = Vec::with_capacity(geom.o);
                for o in 0..geom.o {
                    let mut acc = (0.0, 0.0);
                    for (j, &wv) in w[o * per..(o + 1) * per].iter().enumerate() {
                        let c = j / (geom.k * geom.k);
                        range(&mut acc, wv, cmax[c], cnn[c]);
                    }
                    let acc = magnitude(acc, bias[o]);
                    accs.push(acc);
                    nb.extend(std::iter::repeat_n(acc / scale + 1.0, plane));
                }
                nonneg = vec![false; nb.len()];
                let pooled = matches!(
                    crate::plain::fused_at(fm, li),
                    Some((fg, _)) if fg.mode == crate::plain::GateMode::Pool
                );
                if pooled {
                    pooled_head = Some(accs);
                } else {
                    let m = accs.iter().cloned().fold(0.0, f64::max);
                    truncs.push(trunc(name, geom.o * plane, m));
                }
                nb
            }
            FixedLayer::Linear {
                name,
                geom,
                w,
                b: bias,
            } => {
                if b.len() != geom.in_f {
                    return Err(MpcError::Shape(format!(
                        "bounds: linear input {} vs {}",
                        b.len(),
                        geom.in_f
                    )));
                }
                let accs: Vec<f64> = (0..geom.out_f)
                    .map(|o| {
                        let mut acc = (0.0, 0.0);
                        for ((&wv, &bi), &nn) in w[o * geom.in_f..(o + 1) * geom.in_f]
                            .iter()
                            .zip(&b)
                            .zip(&nonneg)
                        {
                            range(&mut acc, wv, bi, nn);
                        }
                        magnitude(acc, bias[o])
                    })
                    .collect();
                nonneg = vec![false; geom.out_f];
                let m = accs.iter().cloned().fold(0.0, f64::max);
                truncs.push(trunc(name, geom.out_f, m));
                accs.into_iter().map(|acc| acc / scale + 1.0).collect()
            }
            FixedLayer::AvgPool { name, geom } => {
                let c = fixed::pool_factor(geom.k, f) as f64;
                let kk = (geom.k * geom.k) as f64;
                let plane_in = geom.h * geom.w;
                let plane = geom.oh() * geom.ow();
                let mut nb = Vec::with_capacity(geom.c * plane);
                let mut first = 0.0f64;
                let mut second = 0.0f64;
                let head = pooled_head.take();
                for ch in 0..geom.c {
                    let m = b[ch * plane_in..(ch + 1) * plane_in]
                        .iter()
                        .cloned()
                        .fold(0.0, f64::max);
                    if let Some(accs) = &head {
                        // trunc(window sum of the exact convolution), then trunc(t * c).
                        let ws = kk * accs[ch];
                        first = first.max(ws);
                        second = second.max((ws / scale + 1.0) * c);
                    } else {
                        second = second.max(kk * m * c);
                    }
                    nb.extend(std::iter::repeat_n(kk * m * c / scale + 1.0, plane));
                }
                let n = geom.c * plane;
                nonneg = (0..geom.c)
                    .flat_map(|ch| {
                        let all = nonneg[ch * plane_in..(ch + 1) * plane_in]
                            .iter()
                            .all(|&x| x);
                        std::iter::repeat_n(all, plane)
                    })
                    .collect();
                if head.is_some() {
                    truncs.push(trunc(&format!("{name} (fused sums)"), n, first));
                }
                truncs.push(trunc(name, n, second));
                nb
            }
            FixedLayer::Relu { name, .. } => {
                cmp(name, b.iter().cloned().fold(0.0, f64::max))?;
                nonneg = vec![true; b.len()];
                b
            }
            FixedLayer::Partial {
                name,
                plane,
                relu_channels,
                ..
            } => {
                cmp(
                    name,
                    b[..relu_channels * plane]
                        .iter()
                        .cloned()
                        .fold(0.0, f64::max),
                )?;
                for x in &mut nonneg[..relu_channels * plane] {
                    *x = true;
                }
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
                if let Some(sp) = &fg.sparse {
                    sp.check(fg.in_len)?;
                }
                if fg.beta.len() != fg.groups() {
                    return Err(MpcError::Shape(format!("bounds: fused gate {name} beta")));
                }
                let m = fg
                    .beta
                    .iter()
                    .enumerate()
                    .map(|(g, &bg)| {
                        let (cols, u) = fg.row(g);
                        let dot: f64 = match cols {
                            Some(cols) => cols
                                .iter()
                                .zip(u)
                                .map(|(&q, &u)| sv(u) * prev_in[q as usize])
                                .sum(),
                            None => u.iter().zip(&prev_in).map(|(&u, &bq)| sv(u) * bq).sum(),
                        };
                        dot + sv(bg)
                    })
                    .fold(0.0, f64::max);
                cmp(name, m)?;
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
                cmp(name, m)?;
                b
            }
            FixedLayer::Identity { .. } => b,
        };
        prev_in = layer_in;
        for &t in src {
            if last[t] == li {
                vals[t] = None;
            }
        }
        vals[li + 1] = Some((b.clone(), nonneg.clone()));
    }
    Ok(Bounds {
        comparisons: cmps,
        truncations: truncs,
    })
}

/// Margin of calibrated comparison bounds over the largest magnitude seen in calibration:
/// `2^12` (a comparison input beyond its ring gives a wrong sign).
pub const CALIBRATION_MARGIN_BITS: u32 = 12;
/// Margin of calibrated truncation bounds: `2^4` (a local truncation's failure probability
/// grows linearly with the value, `|x| / 2^63`, so values 16x beyond calibration raise the
/// estimate 16x rather than break anything deterministically).
pub const CALIBRATION_TRUNC_MARGIN_BITS: u32 = 4;
/// Calibration inputs (uniform in the input range; a fixed public seed).
pub const CALIBRATION_SAMPLES: usize = 4;

/// Bounds *measured* rather than proven, for networks too deep for interval arithmetic
/// (a ResNet's worst case compounds over 17+ layers past 2^63): the plaintext fixed-point model
/// runs on [`CALIBRATION_SAMPLES`] public pseudo-random inputs uniform in the input range, and
/// every comparison input gets the largest magnitude seen times `2^`[`CALIBRATION_MARGIN_BITS`],
/// every truncated value times `2^`[`CALIBRATION_TRUNC_MARGIN_BITS`]. Not a proof: a real input far outside what calibration saw
/// could overflow a ring; the model owner computes it (it sees the plaintext anyway) and the
/// reports say `calibrated`. Same structure as [`analyse`]'s result.
pub fn calibrate(fm: &FixedModel, input_abs_max: f64) -> Result<Bounds> {
    let f = fm.fp.frac_bits;
    let scale = (1u64 << f) as f64;
    let margin = 2f64.powi(CALIBRATION_MARGIN_BITS as i32);
    let mut cmax: Vec<f64> = vec![0.0; fm.layers.len()];
    let mut tmax: Vec<f64> = vec![0.0; fm.layers.len()];
    let mut prg = crate::prg::Prg::from_seed(*b"relushare-calib!");
    let amax = |v: &[u64]| v.iter().map(|&x| sv(x)).fold(0.0, f64::max);
    for _ in 0..CALIBRATION_SAMPLES {
        let img: Vec<f32> = prg
            .gen_u64s(fm.input_len)
            .into_iter()
            .map(|r| {
                ((r >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * input_abs_max as f32
            })
            .collect();
        let x = fm.encode_input(&img)?;
        let tr = crate::plain::forward_fixed_trace(fm, &x, &mut |_| false)?;
        for (li, l) in fm.layers.iter().enumerate() {
            let xin = &tr[fm.srcs[li][0]];
            let out = &tr[li + 1];
            let c = match l {
                FixedLayer::Relu { .. } | FixedLayer::MaxPool { .. } => 2.0 * amax(xin),
                FixedLayer::Partial {
                    plane,
                    relu_channels,
                    ..
                } => amax(&xin[..relu_channels * plane]),
                FixedLayer::Shared { s, .. } => match &s.fused {
                    Some(fg) => {
                        let conv_in = &tr[fm.srcs[li - 1][0]];
                        amax(&fg.decisions(conv_in)?)
                    }
                    None => amax(&crate::plain::group_values(s, xin)),
                },
                _ => 0.0,
            };
            cmax[li] = cmax[li].max(c);
            let t = match l {
                FixedLayer::Conv { .. } | FixedLayer::Linear { .. } => amax(out) + 1.0,
                // a pooled fused gate truncates window sums of the exact convolution first
                FixedLayer::AvgPool { geom, .. } => (amax(out) + 1.0) * (geom.k * geom.k) as f64,
                _ => 0.0,
            };
            tmax[li] = tmax[li].max(t * scale);
        }
    }
    let mut comparisons = Vec::new();
    let mut truncations = Vec::new();
    for (li, l) in fm.layers.iter().enumerate() {
        match l {
            FixedLayer::Relu { name, .. }
            | FixedLayer::Partial { name, .. }
            | FixedLayer::Shared { name, .. }
            | FixedLayer::MaxPool { name, .. } => {
                let bound = cmax[li] * margin;
                let k =
                    bits_for_bound(bound).map_err(|e| MpcError::Model(format!("{name}: {e}")))?;
                comparisons.push(CmpBound {
                    name: name.clone(),
                    bound,
                    k,
                });
            }
            FixedLayer::Conv { name, .. }
            | FixedLayer::Linear { name, .. }
            | FixedLayer::AvgPool { name, .. } => {
                let tm = 2f64.powi(CALIBRATION_TRUNC_MARGIN_BITS as i32);
                truncations.push(trunc(name, fm.out_lens[li], tmax[li] * tm));
            }
            _ => {}
        }
    }
    Ok(Bounds {
        comparisons,
        truncations,
    })
}

/// Where a [`FastConfig`]'s rings come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundsKind {
    /// Interval arithmetic over all inputs in range ([`analyse`]).
    Proven,
    /// Measured on calibration inputs with a margin ([`calibrate`]).
    Calibrated,
}

impl BoundsKind {
    /// "proven" or "calibrated".
    pub fn name(self) -> &'static str {
        match self {
            BoundsKind::Proven => "proven",
            BoundsKind::Calibrated => "calibrated",
        }
    }
}

/// [`comparison_bits`], or where the proof fails (rings past 63 bits or a truncation failure
/// bound past [`MAX_TRUNC_FAILURE`]: deep networks), the same from [`calibrate`]. The proof's
/// error is returned if calibration fails too.
pub fn comparison_bits_or_calibrated(
    fm: &FixedModel,
    input_abs_max: f64,
    mode: CmpMode,
) -> Result<(FastConfig, BoundsKind)> {
    match comparison_bits(fm, input_abs_max, mode) {
        Ok(c) => Ok((c, BoundsKind::Proven)),
        Err(e) => {
            let bounds = match calibrate(fm, input_abs_max) {
                Ok(b) => b,
                Err(c) => {
                    return Err(MpcError::Model(format!(
                        "{e}; calibrated bounds fail too: {c}"
                    )))
                }
            };
            if let Err(c) = bounds.check_truncation() {
                return Err(MpcError::Model(format!(
                    "{e}; calibrated bounds fail too: {c}"
                )));
            }
            Ok((
                config_from(fm, bounds.comparisons, mode),
                BoundsKind::Calibrated,
            ))
        }
    }
}

/// A [`FastConfig`] with the provable `k` of every comparison layer for `mode`
/// (`input_abs_max`: largest magnitude of a normalized input value, e.g. `max_c max(|0 -
/// mean_c|, |1 - mean_c|) / std_c`). Refuses a model whose proven per-inference truncation
/// failure bound exceeds [`MAX_TRUNC_FAILURE`].
pub fn comparison_bits(fm: &FixedModel, input_abs_max: f64, mode: CmpMode) -> Result<FastConfig> {
    let bounds = analyse(fm, input_abs_max)?;
    bounds.check_truncation()?;
    Ok(config_from(fm, bounds.comparisons, mode))
}

/// The smallest ring for comparison inputs with `|y| <= b`: `b < 2^(k-1)`, `k = bitlen(b) + 1`
/// (at least 2), for comparisons that need no spare bit and no odd size (the DCF comparisons of
/// `fss`, the `mimo` gates).
pub fn smallest_bits(b: f64) -> u32 {
    (bitlen_bound(b) + 1).max(2)
}

/// The rings of `comparisons` for `mode`: each bound's `k` ([`bits_for_bound`]: a spare bit and
/// an odd size) for the tree circuit, [`smallest_bits`] for the DCF comparisons of
/// [`CmpMode::Fss`] (at most `k - 1`, so within 63 bits wherever `k` is).
fn config_from(fm: &FixedModel, comparisons: Vec<CmpBound>, mode: CmpMode) -> FastConfig {
    let mut cfg = FastConfig::defaults(fm.fp.frac_bits);
    for c in comparisons {
        let k = match mode {
            CmpMode::Tree => c.k,
            CmpMode::Fss => smallest_bits(c.bound),
        };
        cfg.bits.insert(c.name, k);
    }
    cfg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        assert_eq!(bits_for_bound(0.0).unwrap(), 3);
        assert_eq!(bits_for_bound(1.0).unwrap(), 3);
        // B = 1000 needs 10 magnitude bits + sign + spare = 12 -> 13.
        assert_eq!(bits_for_bound(1000.0).unwrap(), 13);
        assert!((1u64 << (bits_for_bound(65535.0).unwrap() - 1)) as f64 > 65535.0);
        // The largest ring: 2^60 needs 61 + 2 = 63 bits; 2^61 would need 65.
        assert_eq!(bits_for_bound((1u64 << 60) as f64).unwrap(), 63);
        assert_eq!(bitlen_bound((1u64 << 36) as f64), 37);
        assert_eq!(bitlen_bound((1u64 << 36) as f64 - 1.0), 36);
        for b in [(1u64 << 61) as f64, 1e30, f64::INFINITY, f64::NAN, -1.0] {
            assert!(bits_for_bound(b).is_err(), "{b}");
        }
    }

    use crate::plain::FixedModel;
    use relushare_model::{presets, Arch, Model};

    fn fixed(arch: Arch, preset: &str, f: u32) -> (Model, FixedModel) {
        let m = Model::random(presets::build(arch, preset).unwrap(), None, 3).unwrap();
        let fm = FixedModel::from_model(&m, f).unwrap();
        (m, fm)
    }

    /// The sign-aware comparison bounds are sound and tighter than magnitudes alone. Sound: on
    /// inputs at the corners of the proven input range (every value `+-lim`: random sign
    /// patterns, and patterns that drive a first-layer channel to its extreme at the centre)
    /// no comparison input of any layer exceeds its bound (conv1's pattern meets act1's bound
    /// within the `+ 1` of truncation, so a halved bound fails here). Tighter: act2's bound is
    /// below the magnitude-only bound `max_o sum |w| max_c B_c + |b|` of conv2 over act1's
    /// per-channel bounds (with magnitudes only, as before session 7, this fails).
    #[test]
    fn sign_aware_comparison_bounds_hold_and_are_tighter() {
        let (m, fm) = fixed(Arch::Cifar10, "original", 13);
        let lim = crate::fast::input_abs_max(&m.spec.normalization);
        let b = analyse(&fm, lim).unwrap();
        let bound = |name: &str| b.comparisons.iter().find(|c| c.name == name).unwrap().bound;
        let FixedLayer::Conv { geom, w, .. } = &fm.layers[0] else {
            panic!("conv first")
        };
        let (c, h, wd, k) = (geom.c, geom.h, geom.w, geom.k);
        let corner = |neg: bool| if neg { -lim as f32 } else { lim as f32 };
        let mut rng = crate::prg::Prg::from_seed([21; 16]);
        let mut inputs: Vec<Vec<f32>> = (0..6)
            .map(|_| {
                (0..fm.input_len)
                    .map(|_| corner(rng.next_u64() & 1 == 1))
                    .collect()
            })
            .collect();
        for o in [0usize, 7, 33] {
            // x = lim * sign(w) over the 3x3 window at the centre (padding 1).
            let mut x = inputs[0].clone();
            let (cy, cx) = (h / 2, wd / 2);
            for ci in 0..c {
                for dy in 0..k {
                    for dx in 0..k {
                        let wv = w[((o * c + ci) * k + dy) * k + dx] as i64;
                        let (y, xx) = (cy + dy - k / 2, cx + dx - k / 2);
                        x[(ci * h + y) * wd + xx] = corner(wv < 0);
                    }
                }
            }
            inputs.push(x);
        }
        let mut seen = std::collections::BTreeMap::<String, f64>::new();
        for x in &inputs {
            let enc = fm.encode_input(x).unwrap();
            let t = crate::plain::forward_fixed_trace(&fm, &enc, &mut |_| false).unwrap();
            for (i, l) in fm.layers.iter().enumerate() {
                if let FixedLayer::Relu { name, .. } = l {
                    let mx = t[i].iter().map(|&v| sv(v)).fold(0.0, f64::max);
                    let e = seen.entry(name.clone()).or_default();
                    *e = e.max(mx);
                }
            }
        }
        assert_eq!(seen.len(), 7);
        for (name, &mx) in &seen {
            assert!(
                mx <= bound(name),
                "{name}: {mx} above the bound {}",
                bound(name)
            );
        }
        assert!(
            seen["act1"] > 0.9 * bound("act1"),
            "act1: {} vs {}",
            seen["act1"],
            bound("act1")
        );
        // act1's per-channel bounds, then conv2's magnitude-only bound over them.
        let scale = (1u64 << 13) as f64;
        let b_act1: Vec<f64> = {
            let FixedLayer::Conv { w, b, geom, .. } = &fm.layers[0] else {
                panic!("conv first")
            };
            let per = geom.c * geom.k * geom.k;
            (0..geom.o)
                .map(|o| {
                    let s: f64 = w[o * per..(o + 1) * per].iter().map(|&v| sv(v)).sum();
                    (s * input_bound(lim, 13) + sv(b[o])) / scale + 1.0
                })
                .collect()
        };
        assert_eq!(b_act1.iter().cloned().fold(0.0, f64::max), bound("act1"));
        let (i2, w2, b2, g2) = fm
            .layers
            .iter()
            .enumerate()
            .skip(1)
            .find_map(|(i, l)| match l {
                FixedLayer::Conv { w, b, geom, .. } => Some((i, w, b, geom)),
                _ => None,
            })
            .unwrap();
        let per2 = g2.c * g2.k * g2.k;
        let magnitude_only = (0..g2.o)
            .map(|o| {
                let s: f64 = w2[o * per2..(o + 1) * per2]
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| sv(v) * b_act1[j / (g2.k * g2.k)])
                    .sum();
                (s + sv(b2[o])) / scale + 1.0
            })
            .fold(0.0, f64::max);
        let name2 = fm.layers[i2 + 1].name().to_string();
        assert!(
            matches!(fm.layers[i2 + 1], FixedLayer::Relu { .. }),
            "{name2}"
        );
        assert!(
            bound(&name2) < 0.75 * magnitude_only,
            "{name2}: {} vs magnitude-only {magnitude_only}",
            bound(&name2)
        );
    }

    /// Every truncating layer is listed with its elements, and the failure bound is the sum of
    /// `n * 2^(e + 1 - 64)`; CIFAR-10 truncates 193,546 values per image.
    #[test]
    fn truncations_counted_and_bounded() {
        let (m, fm) = fixed(Arch::Cifar10, "original", 13);
        let b = analyse(&fm, crate::fast::input_abs_max(&m.spec.normalization)).unwrap();
        let want: usize = fm
            .layers
            .iter()
            .zip(&fm.out_lens)
            .filter(|(l, _)| {
                matches!(
                    l,
                    FixedLayer::Conv { .. }
                        | FixedLayer::Linear { .. }
                        | FixedLayer::AvgPool { .. }
                )
            })
            .map(|(_, n)| n)
            .sum();
        assert_eq!(b.truncated_elements(), want);
        assert_eq!(want, 193_546);
        let sum: f64 = b
            .truncations
            .iter()
            .map(|t| {
                assert!(
                    t.bound < 2f64.powi(t.bits as i32) && t.bound >= 2f64.powi(t.bits as i32 - 1)
                );
                t.elements as f64 * 2f64.powi(t.bits as i32 - 63)
            })
            .sum();
        assert_eq!(b.failure_bound(), sum);
        assert!(b.failure_bound() <= MAX_TRUNC_FAILURE);
        // The first convolution: |x| <= lim * 2^13 + 1 per input, 27 weights per output.
        let FixedLayer::Conv { w, b: bias, .. } = &fm.layers[0] else {
            panic!("conv first")
        };
        let lim = input_bound(crate::fast::input_abs_max(&m.spec.normalization), 13);
        let first = (0..64)
            .map(|o| {
                w[o * 27..(o + 1) * 27]
                    .iter()
                    .map(|&v| sv(v) * lim)
                    .sum::<f64>()
                    + sv(bias[o])
            })
            .fold(0.0, f64::max);
        assert_eq!(b.truncations[0].bound, first);
    }

    /// A model whose proven failure bound is too large is refused with a clear error that
    /// names the rescaling, and the rescaled model is accepted.
    #[test]
    fn large_bounds_are_refused_with_the_rescaling() {
        let (mut m, _) = fixed(Arch::Fmnist, "original", 13);
        // Scale the last layer's weights by 2^20: its products grow by 2^20.
        let t = m.params.get_mut("fc2.weight").expect("fc2 weight");
        for v in t.data.iter_mut() {
            *v *= (1u32 << 20) as f32;
        }
        let fm = FixedModel::from_model(&m, 13).unwrap();
        let e = crate::fast::config_for_model(&fm, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fc2") && e.contains("--frac-bits"), "{e}");
        let g: u32 = e
            .rsplit("--frac-bits ")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .expect("a suggested number of bits");
        assert!(g < 13);
        let fm = FixedModel::from_model(&m, g).unwrap();
        crate::fast::config_for_model(&fm, &m).unwrap();
        let fm = FixedModel::from_model(&m, g + 1).unwrap();
        assert!(crate::fast::config_for_model(&fm, &m).is_err());
    }

    /// Inputs beyond the proven range are refused, inputs at its edge accepted.
    #[test]
    fn inputs_outside_the_proven_range_are_refused() {
        let lim = 2.5;
        let fp = crate::fixed::FixedPoint::new(13).unwrap();
        let ok = fp.encode_vec(&[0.0, 2.5, -2.5, 1.0]);
        check_input(&ok, lim, 13).unwrap();
        for bad in [2.51f32, -2.6, 1e6] {
            let x = fp.encode_vec(&[0.0, bad]);
            let e = check_input(&x, lim, 13).unwrap_err().to_string();
            assert!(e.contains("element 1") && e.contains("refused"), "{e}");
        }
    }

    /// A ResNet's interval bounds compound past 63 bits, so its rings come from calibration:
    /// every ring fits, the estimated truncation failure is under the threshold, and a secure
    /// run agrees with the plaintext fixed point (fast tests' layer-by-layer check).
    #[test]
    fn deep_networks_fall_back_to_calibrated_bounds() {
        let (m, fm) = fixed(Arch::Resnet20, "original", 13);
        let lim = crate::fast::input_abs_max(&m.spec.normalization);
        assert!(comparison_bits(&fm, lim, CmpMode::Tree).is_err());
        let (cfg, kind) = comparison_bits_or_calibrated(&fm, lim, CmpMode::Tree).unwrap();
        assert_eq!(kind, BoundsKind::Calibrated);
        assert_eq!(cfg.bits.len(), 19);
        assert!(cfg.bits.values().all(|&k| (3..=63).contains(&k)));
        let cal = calibrate(&fm, lim).unwrap();
        assert!(cal.failure_bound() <= MAX_TRUNC_FAILURE);
        // Calibration is deterministic (a public seed): every party computes the same rings.
        assert_eq!(calibrate(&fm, lim).unwrap(), cal);
        // The paper's networks keep their proofs.
        let (m, fm) = fixed(Arch::Cifar10, "original", 13);
        let lim = crate::fast::input_abs_max(&m.spec.normalization);
        assert_eq!(
            comparison_bits_or_calibrated(&fm, lim, CmpMode::Tree)
                .unwrap()
                .1,
            BoundsKind::Proven
        );
    }
}
