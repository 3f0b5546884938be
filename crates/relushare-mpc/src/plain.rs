//! The model in fixed point ([`FixedModel`]) and its plaintext fixed-point evaluation
//! ([`forward_fixed`]): exactly the arithmetic the secure suites perform, without secret
//! sharing. Secure results are compared against it: equal for comparisons, selects, pooling
//! sums and products; within the truncation error of [`crate::fixed`] (one unit in the last
//! place per truncation) for layers that truncate.
//!
//! Semantics (f = fractional bits; weights, activations and `v` carry f bits; biases 2f):
//! * conv / linear: `trunc_f(x * w + bias)`;
//! * avg pool: `trunc_f(window sum * round(2^f / k^2))`;
//! * ReLU: `x * [x >= 0]`; partial: ReLU on the first channels;
//! * sharing: `z_g = sum v_i x_i (+ b_c)` (2f bits, Learned/Fc) or `x_leader` (OneHot),
//!   `keep_i = [z_g >= 0] XOR flip_i`, `y_i = x_i * keep_i` (no truncation anywhere);
//! * a gate *fused* with the convolution before it ([`FusedGate`], chosen by
//!   [`crate::fast::gate::fuse`] for the fast suites (whole channels), by [`crate::mimo::fuse`]
//!   (learned/FC deciders, whole channels or patches, always `Fold`) for `mimo`): the group's
//!   decision value is `z_g = sum_q U[g, q] x_q + beta_g` on the convolution's *input* `x` (2f
//!   bits; `U` and `beta` are the decider folded through the convolution by the model owner; a
//!   patch gate's `U` is sparse, [`SparseRows`]: row `g` on its members' receptive fields), and
//!   - [`GateMode::Fold`]: output `i` of the convolution is `[z_g >= 0] * trunc_f(conv)_i` (`g`
//!     its group), the gate layer passes it on (a noisy gate, fused for `mimo` only: member `i`
//!     keeps `[z_g >= 0] XOR flip_i`, flips drawn in element order as for the unfused layer; an FC
//!     decider's bias is part of `beta`);
//!   - [`GateMode::Pool`]: the average pooling after the gate pools the *exact* convolution
//!     output: `[z_c >= 0] * trunc_f(trunc_f(window sum(conv + b)) * round(2^f/k^2))`; the
//!     convolution and gate layers are not materialized (their trace entries are zeros).

use crate::error::{MpcError, Result};
use crate::fixed::{self, FixedPoint};
use crate::kernels::{self, ConvGeom};
use crate::suite::{DeciderKind, LinearGeom, MaxPoolGeom, PoolGeom};
use relushare_model::{ActKind, Decider, Layer, Model};

/// A ReLU-sharing layer in fixed point (public structure + encoded parameters).
#[derive(Clone, Debug)]
pub struct FixedShared {
    /// Elements per image.
    pub len: usize,
    /// Global group id per element.
    pub group_of: Vec<u32>,
    /// Groups per image.
    pub num_groups: usize,
    /// Element index of each group's leader.
    pub leaders: Vec<u32>,
    /// Decider.
    pub decider: DeciderKind,
    /// `v` (f bits), Learned/Fc only.
    pub v: Vec<u64>,
    /// Per-group bias (2f bits), Fc only.
    pub bias: Vec<u64>,
    /// Flip probability.
    pub noise: f32,
    /// Set when this gate is fused with the convolution before it.
    pub fused: Option<Box<FusedGate>>,
}

/// How a fused whole-channel gate is evaluated (see [`crate::fast::gate`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// The decisions scale the convolution's output channels.
    Fold,
    /// The gate is applied after the average pooling that follows it, on pooled exact sums.
    Pool,
}

/// A ReLU-sharing layer (whole channels, or patches with [`FusedGate::sparse`]) fused with the
/// convolution before it: its decision values are a linear function of the convolution's input.
#[derive(Clone, Debug)]
pub struct FusedGate {
    /// Evaluation mode.
    pub mode: GateMode,
    /// `U[g, q]` (`groups x in_len`, f bits, or the entries of [`FusedGate::sparse`]'s rows):
    /// the decider folded through the convolution.
    pub u: Vec<u64>,
    /// `beta[g]` (2f bits): the convolution bias folded through the decider (plus an FC
    /// decider's bias).
    pub beta: Vec<u64>,
    /// Convolution input elements per image.
    pub in_len: usize,
    /// `None`: `U` is dense (one row of `in_len` per channel). Set for a patch-group gate
    /// (fused for `mimo` only, see [`crate::mimo::fuse`]): row `g` of `U` has entries only on
    /// its members' receptive field, `u` holds them row after row.
    pub sparse: Option<SparseRows>,
}

/// The public shape of a sparse `U`: row `g` holds `u[start[g]..start[g + 1]]` at the
/// convolution-input offsets `cols[start[g]..start[g + 1]]` (the union of the receptive fields
/// of the group's members, fixed by the structure alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SparseRows {
    /// Row starts (`rows + 1` entries, from 0 to `cols.len()`).
    pub start: Vec<u32>,
    /// Input offset of every entry.
    pub cols: Vec<u32>,
}

impl SparseRows {
    /// Rows (decisions per image).
    pub fn rows(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    /// The offsets of row `g`.
    pub fn row(&self, g: usize) -> &[u32] {
        &self.cols[self.start[g] as usize..self.start[g + 1] as usize]
    }

    /// Is this a well-formed shape for inputs of `in_len` elements?
    pub fn check(&self, in_len: usize) -> Result<()> {
        let ok = self.start.first() == Some(&0)
            && self.start.last().map(|&e| e as usize) == Some(self.cols.len())
            && self.start.windows(2).all(|w| w[0] <= w[1])
            && self.cols.iter().all(|&q| (q as usize) < in_len);
        if ok {
            Ok(())
        } else {
            Err(MpcError::Shape("sparse fused gate: malformed rows".into()))
        }
    }

    /// `z[img, g] = sum_j u[j] x[img, cols[j]]` (j in row g) for a batch of images of `in_len`
    /// elements: `rows x window` multiply-adds per image.
    pub fn apply(&self, x: &[u64], u: &[u64], in_len: usize) -> Result<Vec<u64>> {
        crate::ring::check_len("sparse fused gate U", u, self.cols.len())?;
        if in_len == 0 || !x.len().is_multiple_of(in_len) {
            return Err(MpcError::Shape("sparse fused gate: input length".into()));
        }
        self.check(in_len)?;
        let rows = self.rows();
        let mut z = Vec::with_capacity(x.len() / in_len * rows);
        for img in x.chunks_exact(in_len) {
            z.extend((0..rows).map(|g| {
                let (a, b) = (self.start[g] as usize, self.start[g + 1] as usize);
                self.cols[a..b]
                    .iter()
                    .zip(&u[a..b])
                    .fold(0u64, |acc, (&q, &w)| {
                        acc.wrapping_add(w.wrapping_mul(img[q as usize]))
                    })
            }));
        }
        Ok(z)
    }
}

impl FusedGate {
    /// Decisions per image.
    pub fn groups(&self) -> usize {
        self.sparse.as_ref().map_or(self.beta.len(), |sp| sp.rows())
    }

    /// Row `g` of `U`: its input offsets (`None`: all of `0..in_len`) and its coefficients.
    pub fn row(&self, g: usize) -> (Option<&[u32]>, &[u64]) {
        match &self.sparse {
            Some(sp) => (
                Some(sp.row(g)),
                &self.u[sp.start[g] as usize..sp.start[g + 1] as usize],
            ),
            None => (None, &self.u[g * self.in_len..(g + 1) * self.in_len]),
        }
    }

    /// Decision values `z_g = sum_q U[g, q] x_q + beta_g` of one image (2f bits).
    pub fn decisions(&self, x_in: &[u64]) -> Result<Vec<u64>> {
        crate::ring::check_len("fused gate input", x_in, self.in_len)?;
        if let Some(sp) = &self.sparse {
            crate::ring::check_len("fused gate beta", &self.beta, sp.rows())?;
            let mut z = sp.apply(x_in, &self.u, self.in_len)?;
            crate::ring::add_assign(&mut z, &self.beta);
            return Ok(z);
        }
        crate::ring::check_len("fused gate U", &self.u, self.beta.len() * self.in_len)?;
        Ok(self
            .beta
            .iter()
            .enumerate()
            .map(|(c, &b)| {
                self.u[c * self.in_len..(c + 1) * self.in_len]
                    .iter()
                    .zip(x_in)
                    .fold(b, |acc, (&u, &x)| acc.wrapping_add(u.wrapping_mul(x)))
            })
            .collect())
    }
}

/// One layer in fixed point.
#[derive(Clone, Debug)]
pub enum FixedLayer {
    /// Convolution (`geom.n` = 1); weight f bits, bias 2f bits.
    Conv {
        name: String,
        geom: ConvGeom,
        w: Vec<u64>,
        b: Vec<u64>,
    },
    /// Fully connected (`geom.n` = 1).
    Linear {
        name: String,
        geom: LinearGeom,
        w: Vec<u64>,
        b: Vec<u64>,
    },
    /// Average pooling (`geom.n` = 1).
    AvgPool { name: String, geom: PoolGeom },
    /// ReLU on `len` elements.
    Relu { name: String, len: usize },
    /// Partial ReLU.
    Partial {
        name: String,
        c: usize,
        plane: usize,
        relu_channels: usize,
    },
    /// ReLU sharing.
    Shared { name: String, s: Box<FixedShared> },
    /// Identity / dropout / flatten.
    Identity { name: String },
    /// Residual sum of two tensors of `len` elements (its inputs are in [`FixedModel::srcs`]).
    Add { name: String, len: usize },
    /// Max pooling (`geom.n` = 1).
    MaxPool { name: String, geom: MaxPoolGeom },
}

impl FixedLayer {
    /// Layer name.
    pub fn name(&self) -> &str {
        match self {
            FixedLayer::Conv { name, .. }
            | FixedLayer::Linear { name, .. }
            | FixedLayer::AvgPool { name, .. }
            | FixedLayer::Relu { name, .. }
            | FixedLayer::Partial { name, .. }
            | FixedLayer::Shared { name, .. }
            | FixedLayer::Identity { name }
            | FixedLayer::Add { name, .. }
            | FixedLayer::MaxPool { name, .. } => name,
        }
    }
}

/// A model encoded in fixed point, ready for plaintext or secure evaluation.
#[derive(Clone, Debug)]
pub struct FixedModel {
    /// Format.
    pub fp: FixedPoint,
    /// Input elements per image.
    pub input_len: usize,
    /// Output elements per image.
    pub output_len: usize,
    /// Layers in order (one entry per spec layer; flatten is named "flatten").
    pub layers: Vec<FixedLayer>,
    /// Elements per image after each layer (`layers.len()` entries).
    pub out_lens: Vec<usize>,
    /// The tensors each layer reads (`0` the input, `i + 1` the output of layer `i`; see
    /// `relushare_model::ModelSpec::sources`).
    pub srcs: Vec<Vec<usize>>,
}

fn model_err(e: relushare_model::ModelError) -> MpcError {
    MpcError::Model(e.to_string())
}

impl FixedModel {
    /// Encode a (validated) model with `frac_bits` fractional bits. Batch norms are folded
    /// into the layers before them first ([`Model::fold_batchnorm`]).
    pub fn from_model(model: &Model, frac_bits: u32) -> Result<FixedModel> {
        let fp = FixedPoint::new(frac_bits)?;
        model.validate().map_err(model_err)?;
        let folded = model.fold_batchnorm().map_err(model_err)?;
        let model = &folded;
        let spec = &model.spec;
        let (srcs, dims) = spec.graph().map_err(model_err)?;
        let maps = model.group_maps_built().map_err(model_err)?;
        let enc = |name: &str, double: bool| -> Result<Vec<u64>> {
            let t = model.param(name).map_err(model_err)?;
            Ok(t.data
                .iter()
                .map(|&v| {
                    if double {
                        fp.encode_double(v)
                    } else {
                        fp.encode(v)
                    }
                })
                .collect())
        };
        let mut layers = Vec::new();
        let mut flat = 0;
        for (i, l) in spec.layers.iter().enumerate() {
            let (din, dout) = (dims[srcs[i][0]], dims[i + 1]);
            let fl = match l {
                Layer::Add { name } => FixedLayer::Add {
                    name: name.clone(),
                    len: dout.len(),
                },
                Layer::MaxPool {
                    name,
                    kernel,
                    stride,
                    padding,
                } => {
                    let geom = MaxPoolGeom {
                        n: 1,
                        c: din.c,
                        h: din.h,
                        w: din.w,
                        k: *kernel,
                        stride: *stride,
                        pad: *padding,
                    };
                    geom.validate()?;
                    FixedLayer::MaxPool {
                        name: name.clone(),
                        geom,
                    }
                }
                Layer::GlobalAvgPool { name } => {
                    if din.h != din.w {
                        return Err(MpcError::Model(format!(
                            "{name}: global average pooling of a {}x{} plane (secure inference pools square planes)",
                            din.h, din.w
                        )));
                    }
                    FixedLayer::AvgPool {
                        name: name.clone(),
                        geom: PoolGeom {
                            n: 1,
                            c: din.c,
                            h: din.h,
                            w: din.w,
                            k: din.h,
                            stride: 1,
                        },
                    }
                }
                Layer::BatchNorm { name, .. } => {
                    return Err(MpcError::Model(format!(
                        "{name}: batch norm left after folding"
                    )))
                }
                Layer::Conv {
                    name,
                    in_ch,
                    out_ch,
                    kernel,
                    stride,
                    padding,
                } => {
                    let geom = ConvGeom {
                        n: 1,
                        c: *in_ch,
                        h: din.h,
                        w: din.w,
                        o: *out_ch,
                        k: *kernel,
                        stride: *stride,
                        pad: *padding,
                    };
                    geom.validate()?;
                    if geom.oh() != dout.h || geom.ow() != dout.w {
                        return Err(MpcError::Model(format!("{name}: output size mismatch")));
                    }
                    FixedLayer::Conv {
                        name: name.clone(),
                        geom,
                        w: enc(&format!("{name}.weight"), false)?,
                        b: enc(&format!("{name}.bias"), true)?,
                    }
                }
                Layer::Linear { name, in_f, out_f } => FixedLayer::Linear {
                    name: name.clone(),
                    geom: LinearGeom {
                        n: 1,
                        in_f: *in_f,
                        out_f: *out_f,
                    },
                    w: enc(&format!("{name}.weight"), false)?,
                    b: enc(&format!("{name}.bias"), true)?,
                },
                Layer::AvgPool {
                    name,
                    kernel,
                    stride,
                } => FixedLayer::AvgPool {
                    name: name.clone(),
                    geom: PoolGeom {
                        n: 1,
                        c: din.c,
                        h: din.h,
                        w: din.w,
                        k: *kernel,
                        stride: *stride,
                    },
                },
                Layer::Dropout { name, .. } => FixedLayer::Identity { name: name.clone() },
                Layer::Flatten => {
                    flat += 1;
                    let name = if flat == 1 {
                        "flatten".to_string()
                    } else {
                        format!("flatten{flat}")
                    };
                    FixedLayer::Identity { name }
                }
                Layer::Act { name, kind } => match kind {
                    ActKind::Relu => FixedLayer::Relu {
                        name: name.clone(),
                        len: din.len(),
                    },
                    ActKind::Identity => FixedLayer::Identity { name: name.clone() },
                    ActKind::Partial { relu_channels } => FixedLayer::Partial {
                        name: name.clone(),
                        c: din.c,
                        plane: din.plane(),
                        relu_channels: *relu_channels,
                    },
                    ActKind::Shared(s) => {
                        let map = maps
                            .get(name)
                            .ok_or_else(|| MpcError::Model(format!("{name}: no group map")))?;
                        let decider = match s.decider {
                            Decider::Learned => DeciderKind::Learned,
                            Decider::OneHot => DeciderKind::OneHot,
                            Decider::Fc => DeciderKind::Fc,
                        };
                        let v = match decider {
                            DeciderKind::OneHot => Vec::new(),
                            _ => enc(&format!("{name}.v"), false)?,
                        };
                        let bias = if decider == DeciderKind::Fc {
                            let b = enc(&format!("{name}.fc_bias"), true)?;
                            let mut per_group = Vec::with_capacity(map.total());
                            for (c, &g) in map.groups.iter().enumerate() {
                                per_group.extend(std::iter::repeat_n(b[c], g));
                            }
                            per_group
                        } else {
                            Vec::new()
                        };
                        if !(0.0..=1.0).contains(&s.noise) {
                            return Err(MpcError::Param(format!(
                                "{name}: noise {} not in [0,1]",
                                s.noise
                            )));
                        }
                        FixedLayer::Shared {
                            name: name.clone(),
                            s: Box::new(FixedShared {
                                len: din.len(),
                                group_of: map.global_ids().into_iter().map(|g| g as u32).collect(),
                                num_groups: map.total(),
                                leaders: map
                                    .global_leaders()
                                    .into_iter()
                                    .map(|g| g as u32)
                                    .collect(),
                                decider,
                                v,
                                bias,
                                noise: s.noise,
                                fused: None,
                            }),
                        }
                    }
                },
            };
            layers.push(fl);
        }
        Ok(FixedModel {
            fp,
            input_len: spec.input.len(),
            output_len: dims.last().map(|d| d.len()).unwrap_or(0),
            layers,
            out_lens: dims[1..].iter().map(|d| d.len()).collect(),
            srcs,
        })
    }

    /// Keep the first `l` layers only (the output becomes layer `l - 1`'s).
    pub fn truncate(&mut self, l: usize) {
        self.layers.truncate(l);
        self.out_lens.truncate(l);
        self.srcs.truncate(l);
        if let Some(&o) = self.out_lens.last() {
            self.output_len = o;
        }
    }

    /// Does layer `i` read layer `i - 1`'s output alone, which no other layer reads? (Where
    /// layers `i - 1` and `i` may be fused.)
    pub fn chained(&self, i: usize) -> bool {
        i >= 1
            && self.srcs.get(i).is_some_and(|s| s == &[i])
            && self
                .srcs
                .iter()
                .enumerate()
                .all(|(j, s)| j == i || !s.contains(&i))
    }

    /// The model's public structure: every secret parameter (weights, biases, deciders `v`,
    /// decider biases, fused gates' `U` and `beta`) emptied, everything else kept. This is
    /// what a party other than the model owner may know; the runner's party threads get only
    /// this (as networked parties rebuild it from the owner's structure message).
    pub fn skeleton(&self) -> FixedModel {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                FixedLayer::Conv { name, geom, .. } => FixedLayer::Conv {
                    name: name.clone(),
                    geom: *geom,
                    w: Vec::new(),
                    b: Vec::new(),
                },
                FixedLayer::Linear { name, geom, .. } => FixedLayer::Linear {
                    name: name.clone(),
                    geom: *geom,
                    w: Vec::new(),
                    b: Vec::new(),
                },
                FixedLayer::Shared { name, s } => FixedLayer::Shared {
                    name: name.clone(),
                    s: Box::new(FixedShared {
                        len: s.len,
                        group_of: s.group_of.clone(),
                        num_groups: s.num_groups,
                        leaders: s.leaders.clone(),
                        decider: s.decider,
                        v: Vec::new(),
                        bias: Vec::new(),
                        noise: s.noise,
                        fused: s.fused.as_ref().map(|fg| {
                            Box::new(FusedGate {
                                mode: fg.mode,
                                u: Vec::new(),
                                beta: Vec::new(),
                                in_len: fg.in_len,
                                sparse: fg.sparse.clone(),
                            })
                        }),
                    }),
                },
                other => other.clone(),
            })
            .collect();
        FixedModel {
            fp: self.fp,
            input_len: self.input_len,
            output_len: self.output_len,
            layers,
            out_lens: self.out_lens.clone(),
            srcs: self.srcs.clone(),
        }
    }

    /// Does this model hold no secret parameter (see [`FixedModel::skeleton`])?
    pub fn is_skeleton(&self) -> bool {
        self.layers.iter().all(|l| match l {
            FixedLayer::Conv { w, b, .. } | FixedLayer::Linear { w, b, .. } => {
                w.is_empty() && b.is_empty()
            }
            FixedLayer::Shared { s, .. } => {
                s.v.is_empty()
                    && s.bias.is_empty()
                    && s.fused
                        .as_ref()
                        .is_none_or(|fg| fg.u.is_empty() && fg.beta.is_empty())
            }
            _ => true,
        })
    }

    /// Encode a normalized image (f bits).
    pub fn encode_input(&self, image: &[f32]) -> Result<Vec<u64>> {
        if image.len() != self.input_len {
            return Err(MpcError::Shape(format!(
                "image has {} values, the model expects {}",
                image.len(),
                self.input_len
            )));
        }
        Ok(self.fp.encode_vec(image))
    }
}

/// Plaintext fixed-point evaluation of one layer on one image. `flip(p)` is called once per
/// member of a noisy sharing layer (element order) and returns that member's noise bit.
pub fn eval_layer(
    fp: FixedPoint,
    layer: &FixedLayer,
    x: &[u64],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<u64>> {
    let f = fp.frac_bits;
    Ok(match layer {
        FixedLayer::Conv { geom, w, b, .. } => {
            crate::ring::check_len("conv input", x, geom.in_len())?;
            let mut y = kernels::conv2d(x, w, geom);
            kernels::add_channel_bias(&mut y, b, geom.oh() * geom.ow());
            y.iter().map(|&v| fixed::trunc_plain(v, f)).collect()
        }
        FixedLayer::Linear { geom, w, b, .. } => {
            crate::ring::check_len("linear input", x, geom.in_f)?;
            let wt = kernels::transpose(w, geom.out_f, geom.in_f);
            let y = kernels::matmul(x, &wt, 1, geom.in_f, geom.out_f);
            y.iter()
                .zip(b)
                .map(|(&v, &bb)| fixed::trunc_plain(v.wrapping_add(bb), f))
                .collect()
        }
        FixedLayer::AvgPool { geom, .. } => {
            crate::ring::check_len("pool input", x, geom.c * geom.h * geom.w)?;
            let c = fixed::pool_factor(geom.k, f);
            kernels::pool_sums(x, 1, geom.c, geom.h, geom.w, geom.k, geom.stride)
                .into_iter()
                .map(|s| fixed::trunc_plain(s.wrapping_mul(c), f))
                .collect()
        }
        FixedLayer::Relu { .. } => x.iter().map(|&v| relu(v)).collect(),
        FixedLayer::Partial {
            plane,
            relu_channels,
            ..
        } => {
            let cut = relu_channels * plane;
            x.iter()
                .enumerate()
                .map(|(i, &v)| if i < cut { relu(v) } else { v })
                .collect()
        }
        FixedLayer::Shared { s, .. } => {
            crate::ring::check_len("sharing input", x, s.len)?;
            let z = group_values(s, x);
            x.iter()
                .enumerate()
                .map(|(i, &v)| {
                    let mut keep = (z[s.group_of[i] as usize] as i64) >= 0;
                    if s.noise > 0.0 && flip(s.noise) {
                        keep = !keep;
                    }
                    if keep {
                        v
                    } else {
                        0
                    }
                })
                .collect()
        }
        FixedLayer::Identity { .. } => x.to_vec(),
        FixedLayer::MaxPool { geom, .. } => {
            crate::ring::check_len("max pool input", x, geom.in_len())?;
            geom.windows()
                .iter()
                .map(|w| max_tree(w.iter().map(|&i| x[i as usize]).collect()))
                .collect()
        }
        FixedLayer::Add { name, .. } => {
            return Err(MpcError::Model(format!(
                "{name}: an add reads two tensors (use eval_node)"
            )))
        }
    })
}

/// [`eval_layer`] for a layer with all its inputs (two for `Add`, one otherwise).
pub fn eval_node(
    fp: FixedPoint,
    layer: &FixedLayer,
    inputs: &[&[u64]],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<u64>> {
    match (layer, inputs) {
        (FixedLayer::Add { len, .. }, [a, b]) => {
            crate::ring::check_len("add input", a, *len)?;
            crate::ring::check_len("add input", b, *len)?;
            Ok(crate::ring::add(a, b))
        }
        (_, [x]) => eval_layer(fp, layer, x, flip),
        _ => Err(MpcError::Model(format!(
            "{}: {} inputs",
            layer.name(),
            inputs.len()
        ))),
    }
}

/// The maximum of `c` by the pairwise tree of [`crate::suite::default_max_pool`]
/// (`max(a, b) = b + ReLU(a - b)` in the ring).
fn max_tree(mut c: Vec<u64>) -> u64 {
    while c.len() > 1 {
        let odd = (c.len() % 2 == 1).then(|| c[c.len() - 1]);
        c = c
            .chunks_exact(2)
            .map(|p| p[1].wrapping_add(relu(p[0].wrapping_sub(p[1]))))
            .chain(odd)
            .collect();
    }
    c.first().copied().unwrap_or(0)
}

/// Group decision values `z_g` of a sharing layer (plaintext fixed point).
pub fn group_values(s: &FixedShared, x: &[u64]) -> Vec<u64> {
    match s.decider {
        DeciderKind::OneHot => s.leaders.iter().map(|&l| x[l as usize]).collect(),
        DeciderKind::Learned | DeciderKind::Fc => {
            let mut z = vec![0u64; s.num_groups];
            for (i, &g) in s.group_of.iter().enumerate() {
                z[g as usize] = z[g as usize].wrapping_add(s.v[i].wrapping_mul(x[i]));
            }
            if s.decider == DeciderKind::Fc {
                crate::ring::add_assign(&mut z, &s.bias);
            }
            z
        }
    }
}

#[inline]
fn relu(v: u64) -> u64 {
    if (v as i64) >= 0 {
        v
    } else {
        0
    }
}

/// Encoded input followed by every layer's output, for one encoded image.
pub fn forward_fixed_trace(
    fm: &FixedModel,
    x: &[u64],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<Vec<u64>>> {
    crate::ring::check_len("input", x, fm.input_len)?;
    let mut trace = vec![x.to_vec()];
    let mut i = 0;
    while i < fm.layers.len() {
        let src = fm
            .srcs
            .get(i)
            .ok_or_else(|| MpcError::Model(format!("layer {i} has no inputs")))?;
        if let Some((fg, conv)) = fused_at(fm, i) {
            let used = eval_fused(fm, i, fg, conv, &trace[src[0]], flip)?;
            trace.extend(used);
            i = trace.len() - 1;
            continue;
        }
        let inputs: Vec<&[u64]> = src.iter().map(|&t| trace[t].as_slice()).collect();
        let y = eval_node(fm.fp, &fm.layers[i], &inputs, flip)?;
        trace.push(y);
        i += 1;
    }
    Ok(trace)
}

/// The fused gate whose convolution is layer `i`, if any.
pub fn fused_at(fm: &FixedModel, i: usize) -> Option<(&FusedGate, &FixedLayer)> {
    if !fm.chained(i + 1) {
        return None;
    }
    match (fm.layers.get(i), fm.layers.get(i + 1)) {
        (Some(conv @ FixedLayer::Conv { .. }), Some(FixedLayer::Shared { s, .. })) => {
            s.fused.as_deref().map(|fg| (fg, conv))
        }
        _ => None,
    }
}

/// Reference outputs of the layers of the fused block starting at convolution `i` (two layers
/// for [`GateMode::Fold`], three for [`GateMode::Pool`]) on the block input `x_in`.
pub fn eval_fused_block(fm: &FixedModel, i: usize, x_in: &[u64]) -> Result<Vec<Vec<u64>>> {
    eval_fused_block_noisy(fm, i, x_in, &mut |_| false)
}

/// [`eval_fused_block`] of a noisy gate: `flip(p)` is called once per member (element order)
/// and returns that member's noise bit.
pub fn eval_fused_block_noisy(
    fm: &FixedModel,
    i: usize,
    x_in: &[u64],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<Vec<u64>>> {
    let (fg, conv) =
        fused_at(fm, i).ok_or_else(|| MpcError::Model(format!("no fused gate at layer {i}")))?;
    eval_fused(fm, i, fg, conv, x_in, flip)
}

fn eval_fused(
    fm: &FixedModel,
    i: usize,
    fg: &FusedGate,
    conv: &FixedLayer,
    x_in: &[u64],
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<Vec<u64>>> {
    let f = fm.fp.frac_bits;
    let FixedLayer::Conv { geom, w, b, .. } = conv else {
        return Err(MpcError::Model("fused gate without a convolution".into()));
    };
    let Some(FixedLayer::Shared { s, .. }) = fm.layers.get(i + 1) else {
        return Err(MpcError::Model("fused convolution without its gate".into()));
    };
    let noise = s.noise;
    crate::ring::check_len("conv input", x_in, geom.in_len())?;
    let keep: Vec<bool> = fg
        .decisions(x_in)?
        .into_iter()
        .map(|z| (z as i64) >= 0)
        .collect();
    let mut z = kernels::conv2d(x_in, w, geom);
    kernels::add_channel_bias(&mut z, b, geom.oh() * geom.ow());
    match fg.mode {
        GateMode::Fold => {
            // Whole channels: the group of output `j` is its channel; patches: the layer's map.
            let plane = geom.oh() * geom.ow();
            if fg.sparse.is_some() && (s.group_of.len() != z.len() || keep.len() != s.num_groups) {
                return Err(MpcError::Shape("fused gate: decisions per image".into()));
            }
            let group = |j: usize| match fg.sparse {
                Some(_) => s.group_of[j] as usize,
                None => j / plane,
            };
            let y: Vec<u64> = z
                .iter()
                .enumerate()
                .map(|(j, &v)| {
                    let flipped = noise > 0.0 && flip(noise);
                    if keep[group(j)] != flipped {
                        fixed::trunc_plain(v, f)
                    } else {
                        0
                    }
                })
                .collect();
            Ok(vec![y.clone(), y])
        }
        GateMode::Pool => {
            if fg.sparse.is_some() {
                return Err(MpcError::Model(
                    "a patch-group fused gate is fused in Fold mode only".into(),
                ));
            }
            if noise > 0.0 {
                return Err(MpcError::Model(
                    "a noisy gate is fused in Fold mode only".into(),
                ));
            }
            let Some(FixedLayer::AvgPool { geom: pg, .. }) = fm.layers.get(i + 2) else {
                return Err(MpcError::Model(
                    "a pooled fused gate must be followed by average pooling".into(),
                ));
            };
            let c = fixed::pool_factor(pg.k, f);
            let plane = pg.oh() * pg.ow();
            let y: Vec<u64> = kernels::pool_sums(&z, 1, pg.c, pg.h, pg.w, pg.k, pg.stride)
                .into_iter()
                .enumerate()
                .map(|(j, s)| {
                    if keep[j / plane] {
                        let t = fixed::trunc_plain(s, f);
                        fixed::trunc_plain(t.wrapping_mul(c), f)
                    } else {
                        0
                    }
                })
                .collect();
            Ok(vec![
                vec![0; fm.out_lens[i]],
                vec![0; fm.out_lens[i + 1]],
                y,
            ])
        }
    }
}

/// Plaintext fixed-point logits (decoded) of one normalized CHW image; `flip` as in
/// [`eval_layer`] (pass `&mut |_| false` for the noise-free network).
pub fn forward_fixed(
    model: &Model,
    image: &[f32],
    frac_bits: u32,
    flip: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<f32>> {
    let fm = FixedModel::from_model(model, frac_bits)?;
    let x = fm.encode_input(image)?;
    let t = forward_fixed_trace(&fm, &x, flip)?;
    Ok(fm.fp.decode_vec(t.last().expect("non-empty")))
}

/// Index of the largest (signed) value; ties go to the first.
pub fn argmax_fixed(x: &[u64]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if (v as i64) > (x[best] as i64) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use relushare_model::{presets, reference, Arch};

    #[test]
    fn fixed_forward_close_to_f32_reference() {
        for (arch, preset) in [
            (Arch::Svhn, "original"),
            (Arch::Fmnist, "uniform32"),
            (Arch::Cifar10, "uniform4"),
        ] {
            let spec = presets::build(arch, preset).unwrap();
            let model = Model::random(spec, None, 3).unwrap();
            let n = model.spec.input.len();
            let img: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let want = reference::forward(&model, &img, &mut |_| false).unwrap();
            let got = forward_fixed(&model, &img, 13, &mut |_| false).unwrap();
            for (a, b) in want.iter().zip(&got) {
                assert!(
                    (a - b).abs() < 0.02 + 0.02 * a.abs(),
                    "{arch} {preset}: {a} vs {b}"
                );
            }
        }
    }
}
