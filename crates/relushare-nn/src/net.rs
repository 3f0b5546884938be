//! A [`ModelSpec`] as a Burn network: parameters in a Burn [`Module`], the layer list as a
//! [`Plan`] of operations with the group maps turned into index tensors.
//!
//! # Graphs
//!
//! Every layer reads the tensors [`ModelSpec::sources`] names (the previous layer's output in
//! a sequential network); [`forward`] keeps a tensor until its last reader has run. `Add`
//! sums its two operands (residual connections), `MaxPool` is Burn's max pooling (padding
//! takes no part, as in the reference), `GlobalAvgPool` the mean of each plane, `Flatten` may
//! follow any layer, and a spatial layer after a flat tensor sees it reshaped to its input
//! dimensions. `BatchNorm` normalises with the batch's statistics in training (gradients
//! through them, as PyTorch) and moves its running statistics towards them (momentum 0.1, the
//! variance unbiased); evaluation uses the running statistics, which are exported as the
//! layer's `running_mean` / `running_var` parameters. They are [`RunningState`] buffers, not
//! [`Param`]s: the optimizer never updates them.
//!
//! # ReLU sharing on Burn
//!
//! A sharing layer flattens its input `s` to `[B, N]` (`N = C*H*W`, CHW order) and computes the
//! group values `z = [B, G]` as a segment sum: `z = 0.select_assign(1, group_id, v * s, Add)`
//! (one-hot: `z = s.select(1, leader)`; FC: plus a per-channel bias gathered per group). The
//! decision `keep_g = step(z_g)` (`z_g >= 0`) is broadcast back with `keep.select(1, group_id)`
//! and every member outputs `s_i * keep_i`. With noise `p`, each member's decision is flipped
//! with probability `p` (in training and in evaluation, Eq. 4): `keep_i XOR flip_i`.
//!
//! # Straight-through estimator
//!
//! The step has zero gradient almost everywhere. In training the gate is
//! `hard + sigmoid(z/τ) - detach(sigmoid(z/τ))`: its forward value is exactly the hard step
//! (the two sigmoid terms cancel to 0.0), its backward is the gradient of `sigmoid(z/τ)`
//! (τ = [`crate::TrainConfig::ste_temperature`], default 1). A flipped member uses `1 - gate`,
//! so its surrogate gradient is that of `sigmoid(-z/τ)`: the flip "uses -v.s" as in the paper.
//! Gradients reach `v`, the FC bias and, through `z`, the pre-activations `s` (in addition to
//! the direct path `y_i = s_i * keep_i`). Inference uses the exact step.

use burn::module::{Module, Param, ParamId, RunningState};
use burn::tensor::activation;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use relushare_model::{ActKind, Decider, Dims, GroupMap, Layer, Model, ModelSpec};

use crate::NnError;

/// Convolution parameters: weight `[out, in, k, k]`, bias `[out]`.
#[derive(Module, Debug)]
pub struct ConvParams {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
}

/// Linear parameters: weight `[out, in]` (PyTorch layout), bias `[out]`.
#[derive(Module, Debug)]
pub struct LinearParams {
    pub weight: Param<Tensor<2>>,
    pub bias: Param<Tensor<1>>,
}

/// Parameters of a sharing layer: `v` `[C, H, W]` (learned and FC deciders) and the FC bias `[C]`.
#[derive(Module, Debug)]
pub struct SharedParams {
    pub v: Option<Param<Tensor<3>>>,
    pub fc_bias: Option<Param<Tensor<1>>>,
}

/// Parameters of a batch-norm layer: the trained scale and shift `[C]`, and the running
/// statistics `[C]` as [`RunningState`]s (buffers the optimizer never sees: they have no
/// gradient and are updated by the training forward pass, momentum [`BN_MOMENTUM`]).
#[derive(Module, Debug)]
pub struct BnParams {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
}

/// Momentum of the batch-norm running statistics (PyTorch's default):
/// `running = (1 - m) * running + m * batch`, the batch variance unbiased (`n / (n - 1)`).
pub const BN_MOMENTUM: f64 = 0.1;

/// Every trainable tensor of a network, in layer order. (`bns` comes last so the networks
/// without batch norm keep the module layout and parameter ids they always had.)
#[derive(Module, Debug)]
pub struct NetModule {
    pub convs: Vec<ConvParams>,
    pub linears: Vec<LinearParams>,
    pub shared: Vec<SharedParams>,
    pub bns: Vec<BnParams>,
}

/// A sharing layer's constants on the device.
#[derive(Debug, Clone)]
pub struct SharedOp {
    pub name: String,
    /// Index into [`NetModule::shared`].
    pub index: usize,
    pub decider: Decider,
    pub noise: f32,
    /// Activations `N = C*H*W` and groups `G`.
    pub n: usize,
    pub groups: usize,
    /// Global group id of every activation, `[N]`.
    pub group_id: Tensor<1, Int>,
    /// The same ids on the host, and as runs, for the fused gate.
    pub group_of: std::sync::Arc<Vec<u32>>,
    pub runs: std::sync::Arc<Vec<crate::gate::Run>>,
    /// The map as a grid on every plane, when it is one (patch groupings).
    pub grid: Option<std::sync::Arc<crate::gate::Grid>>,
    /// One-hot: flat index of every group's leader, `[G]`.
    pub leaders: Option<Tensor<1, Int>>,
    /// FC: channel of every group, `[G]`.
    pub channel_of_group: Option<Tensor<1, Int>>,
}

/// One operation of the forward pass.
#[derive(Debug, Clone)]
pub enum Op {
    Conv {
        index: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
    },
    /// Max pooling; padded positions take no part (Burn pads with -inf, as PyTorch).
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Mean over each channel's plane, `[B, C, H, W] -> [B, C, 1, 1]`.
    GlobalAvgPool,
    /// Batch norm: batch statistics in training (updating the running ones), running
    /// statistics otherwise.
    BatchNorm {
        index: usize,
        eps: f32,
    },
    /// Sum of the layer's two input tensors (a residual connection).
    Add,
    Relu,
    Identity,
    Partial {
        relu_channels: usize,
        channels: usize,
    },
    Shared(SharedOp),
    Dropout {
        p: f32,
    },
    Flatten,
    Linear {
        index: usize,
    },
}

/// The layer list of a spec, ready to run on a device.
///
/// Tensors are routed by [`ModelSpec::sources`]: tensor `0` is the image, tensor `i + 1` the
/// output of op `i`; a tensor is kept until its last reader has run (for a sequential network
/// every tensor is read once, by the next op, so the pass holds one tensor at a time).
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: ModelSpec,
    pub ops: Vec<Op>,
    /// The tensor ids every op reads (one, two for `Add`).
    pub sources: Vec<Vec<usize>>,
    /// Number of reads of every tensor id (`ops.len() + 1` entries).
    pub reads: Vec<usize>,
    /// Dimensions of every tensor id (per image).
    pub dims: Vec<Dims>,
    /// Op `i` is a convolution whose output only feeds a plain ReLU at op `i + 1`: both run as
    /// one fused operation.
    pub fuse_relu: Vec<bool>,
    /// Cluster maps (copied into exported models).
    pub group_maps: std::collections::BTreeMap<String, Vec<u32>>,
    pub device: Device,
}

/// How to run a forward pass.
pub struct ForwardMode<'a> {
    /// Training: dropout active, straight-through gates.
    pub train: bool,
    /// Apply the noise flips of noisy sharing layers (Eq. 4).
    pub noise: bool,
    /// Straight-through sigmoid temperature.
    pub temperature: f32,
    /// Source of dropout masks and noise flips.
    pub rng: &'a mut ChaCha8Rng,
}

/// A network: Burn parameters plus the plan.
#[derive(Debug, Clone)]
pub struct Net {
    pub module: NetModule,
    pub plan: Plan,
}

fn param<const D: usize>(
    id: u64,
    data: &relushare_model::Tensor,
    shape: [usize; D],
    device: &Device,
    train: bool,
) -> Param<Tensor<D>> {
    let t = Tensor::<D>::from_data(TensorData::new(data.data.clone(), shape), device);
    let t = if train { t.require_grad() } else { t };
    Param::initialized(ParamId::from(id), t)
}

fn int_tensor(values: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::<1, Int>::from_data(TensorData::new(values, [n]), device)
}

impl Plan {
    /// The operations of `spec` on `device`. `group_maps` holds the cluster maps of
    /// `Grouping::Cluster` layers (as in [`Model::group_maps`]).
    pub fn build(
        spec: &ModelSpec,
        group_maps: &std::collections::BTreeMap<String, Vec<u32>>,
        device: &Device,
    ) -> Result<Self, NnError> {
        spec.validate()?;
        let (sources, tensor_dims) = spec.graph()?;
        let dims: Vec<Dims> = sources.iter().map(|s| tensor_dims[s[0]]).collect();
        let mut ops = Vec::new();
        let (mut convs, mut linears, mut shared, mut bns) = (0, 0, 0, 0);
        for (layer, d) in spec.layers.iter().zip(&dims) {
            let op = match layer {
                Layer::Conv {
                    stride, padding, ..
                } => {
                    convs += 1;
                    Op::Conv {
                        index: convs - 1,
                        stride: *stride,
                        padding: *padding,
                    }
                }
                Layer::Linear { .. } => {
                    linears += 1;
                    Op::Linear { index: linears - 1 }
                }
                Layer::AvgPool { kernel, stride, .. } => Op::AvgPool {
                    kernel: *kernel,
                    stride: *stride,
                },
                Layer::Dropout { p, .. } => Op::Dropout { p: *p },
                Layer::Flatten => Op::Flatten,
                Layer::MaxPool {
                    kernel,
                    stride,
                    padding,
                    ..
                } => Op::MaxPool {
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                },
                Layer::GlobalAvgPool { .. } => Op::GlobalAvgPool,
                Layer::BatchNorm { eps, .. } => {
                    bns += 1;
                    Op::BatchNorm {
                        index: bns - 1,
                        eps: *eps,
                    }
                }
                Layer::Add { .. } => Op::Add,
                Layer::Act { name, kind } => match kind {
                    ActKind::Relu => Op::Relu,
                    ActKind::Identity => Op::Identity,
                    ActKind::Partial { relu_channels } => Op::Partial {
                        relu_channels: *relu_channels,
                        channels: d.c,
                    },
                    ActKind::Shared(s) => {
                        let explicit = match s.grouping {
                            relushare_model::Grouping::Cluster { .. } => {
                                Some(group_maps.get(name).ok_or_else(|| {
                                    NnError::Invalid(format!(
                                        "layer {name} uses data-driven clusters but no cluster map was given (--cluster-map)"
                                    ))
                                })?)
                            }
                            _ => None,
                        };
                        let map = GroupMap::build(s, *d, explicit.map(|m| m.as_slice()))?;
                        shared += 1;
                        let ids = map.global_ids();
                        let group_of =
                            std::sync::Arc::new(ids.iter().map(|&g| g as u32).collect::<Vec<_>>());
                        let group_id = ids.into_iter().map(|g| g as i64).collect();
                        let leaders = (s.decider == Decider::OneHot).then(|| {
                            int_tensor(
                                map.global_leaders().into_iter().map(|g| g as i64).collect(),
                                device,
                            )
                        });
                        let channel_of_group = (s.decider == Decider::Fc).then(|| {
                            let mut v = Vec::with_capacity(map.total());
                            for (c, &g) in map.groups.iter().enumerate() {
                                v.extend(std::iter::repeat_n(c as i64, g));
                            }
                            int_tensor(v, device)
                        });
                        Op::Shared(SharedOp {
                            name: name.clone(),
                            index: shared - 1,
                            decider: s.decider,
                            noise: s.noise,
                            n: d.len(),
                            groups: map.total(),
                            group_id: int_tensor(group_id, device),
                            runs: std::sync::Arc::new(crate::gate::runs_of(&group_of)),
                            grid: crate::gate::grid_of(&group_of, d.c, d.h, d.w)
                                .map(std::sync::Arc::new),
                            group_of,
                            leaders,
                            channel_of_group,
                        })
                    }
                },
            };
            ops.push(op);
        }
        let mut reads = vec![0usize; ops.len() + 1];
        for s in &sources {
            for &t in s {
                reads[t] += 1;
            }
        }
        let fuse_relu = (0..ops.len())
            .map(|i| {
                matches!(ops[i], Op::Conv { .. })
                    && matches!(ops.get(i + 1), Some(Op::Relu))
                    && sources[i + 1] == [i + 1]
                    && reads[i + 1] == 1
            })
            .collect();
        Ok(Plan {
            spec: spec.clone(),
            ops,
            sources,
            reads,
            dims: tensor_dims,
            fuse_relu,
            group_maps: group_maps.clone(),
            device: device.clone(),
        })
    }

    /// The same plan on another device (e.g. the non-autodiff device for evaluation).
    pub fn on_device(&self, device: &Device) -> Result<Self, NnError> {
        Plan::build(&self.spec, &self.group_maps, device)
    }
}

/// Burn parameters holding `model`'s values; ids are deterministic (layer order), so
/// optimizer state saved for one build of a model applies to another.
pub fn module_from_model(model: &Model, device: &Device) -> Result<NetModule, NnError> {
    let spec = &model.spec;
    let dims = spec.in_dims()?;
    let train = device.is_autodiff();
    let mut next_id = 1u64;
    let mut id = || {
        next_id += 1;
        next_id - 1
    };
    let mut module = NetModule {
        convs: Vec::new(),
        linears: Vec::new(),
        shared: Vec::new(),
        bns: Vec::new(),
    };
    for (layer, d) in spec.layers.iter().zip(&dims) {
        match layer {
            Layer::Conv {
                name,
                in_ch,
                out_ch,
                kernel,
                ..
            } => {
                let w = model.param(&format!("{name}.weight"))?;
                let b = model.param(&format!("{name}.bias"))?;
                module.convs.push(ConvParams {
                    weight: param(id(), w, [*out_ch, *in_ch, *kernel, *kernel], device, train),
                    bias: param(id(), b, [*out_ch], device, train),
                });
            }
            Layer::Linear { name, in_f, out_f } => {
                let w = model.param(&format!("{name}.weight"))?;
                let b = model.param(&format!("{name}.bias"))?;
                module.linears.push(LinearParams {
                    weight: param(id(), w, [*out_f, *in_f], device, train),
                    bias: param(id(), b, [*out_f], device, train),
                });
            }
            Layer::Act {
                name,
                kind: ActKind::Shared(s),
            } => {
                let v = if matches!(s.decider, Decider::Learned | Decider::Fc) {
                    let t = model.param(&format!("{name}.v"))?;
                    Some(param(id(), t, [d.c, d.h, d.w], device, train))
                } else {
                    None
                };
                let fc_bias = if s.decider == Decider::Fc {
                    let t = model.param(&format!("{name}.fc_bias"))?;
                    Some(param(id(), t, [d.c], device, train))
                } else {
                    None
                };
                module.shared.push(SharedParams { v, fc_bias });
            }
            Layer::BatchNorm { name, .. } => {
                let t = |p: &str| model.param(&format!("{name}.{p}"));
                let (w, b) = (t("weight")?, t("bias")?);
                let (m, v) = (t("running_mean")?, t("running_var")?);
                let weight = param(id(), w, [d.c], device, train);
                let bias = param(id(), b, [d.c], device, train);
                let state = |id: u64, x: &relushare_model::Tensor| {
                    let x = Tensor::<1>::from_data(TensorData::new(x.data.clone(), [d.c]), device);
                    RunningState::with_id(ParamId::from(id), x)
                };
                let running_mean = state(id(), m);
                let running_var = state(id(), v);
                module.bns.push(BnParams {
                    weight,
                    bias,
                    running_mean,
                    running_var,
                });
            }
            _ => {}
        }
    }
    Ok(module)
}

impl Net {
    /// Build the network of `model` on `device` (use an autodiff device to train it).
    pub fn from_model(model: &Model, device: &Device) -> Result<Self, NnError> {
        model.validate()?;
        let plan = Plan::build(&model.spec, &model.group_maps, device)?;
        let module = module_from_model(model, device)?;
        Ok(Net { module, plan })
    }

    /// The device the network lives on.
    pub fn device(&self) -> &Device {
        &self.plan.device
    }

    /// Logits `[B, classes]` for a batch of normalized images `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>, mode: &mut ForwardMode<'_>) -> Tensor<2> {
        forward(&self.module, &self.plan, x, mode)
    }

    /// Export to the model file's representation (same parameter layout as the spec).
    pub fn to_model(&self) -> Result<Model, NnError> {
        to_model(&self.module, &self.plan)
    }
}

/// Bernoulli(p) mask as 0/1 floats, drawn on the host from `rng`.
fn bernoulli(rng: &mut ChaCha8Rng, n: usize, p: f32) -> Vec<f32> {
    bernoulli_bits(rng, n, p)
        .into_iter()
        .map(|b| b as f32)
        .collect()
}

/// Bernoulli(p) draws as 0/1 bytes: 32-bit uniforms from `rng` compared with `p * 2^32` (the
/// same stream and outcomes as [`bernoulli`]).
fn bernoulli_bits(rng: &mut ChaCha8Rng, n: usize, p: f32) -> Vec<u8> {
    let threshold = (p as f64 * 4294967296.0) as u64;
    // the generator's words in bulk (the same words, in order, as `next_u32` one by one)
    let mut words = vec![0u32; n];
    for chunk in words.chunks_mut(4096) {
        let mut bytes = [0u8; 4 * 4096];
        let bytes = &mut bytes[..4 * chunk.len()];
        rng.fill_bytes(bytes);
        for (w, b) in chunk.iter_mut().zip(bytes.chunks_exact(4)) {
            *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
    words
        .into_iter()
        .map(|w| ((w as u64) < threshold) as u8)
        .collect()
}

/// A tensor flowing through the network: an image batch `[B, C, H, W]` or flat `[B, N]`.
enum Act {
    Img(Tensor<4>),
    Flat(Tensor<2>),
}

impl Act {
    /// As an image batch of per-image dimensions `d` (a flat tensor is reshaped).
    fn img(self, d: Dims) -> Tensor<4> {
        match self {
            Act::Img(x) => x,
            Act::Flat(x) => {
                let b = x.dims()[0];
                x.reshape([b, d.c, d.h, d.w])
            }
        }
    }

    /// As a flat batch `[B, N]` (CHW order).
    fn flat(self) -> Tensor<2> {
        match self {
            Act::Flat(x) => x,
            Act::Img(x) => {
                let [b, c, h, w] = x.dims();
                x.reshape([b, c * h * w])
            }
        }
    }

    fn map(
        self,
        f4: impl FnOnce(Tensor<4>) -> Tensor<4>,
        f2: impl FnOnce(Tensor<2>) -> Tensor<2>,
    ) -> Act {
        match self {
            Act::Img(x) => Act::Img(f4(x)),
            Act::Flat(x) => Act::Flat(f2(x)),
        }
    }
}

/// Partial activation: ReLU on the first `r` of `c` channels (dimension 1), identity on the rest.
fn partial<const D: usize>(x: Tensor<D>, r: usize, c: usize) -> Tensor<D> {
    if r == 0 {
        x
    } else if r >= c {
        activation::relu(x)
    } else {
        let head = activation::relu(x.clone().narrow(1, 0, r));
        let tail = x.narrow(1, r, c - r);
        Tensor::cat(vec![head, tail], 1)
    }
}

/// Inverted dropout with keep probability `1 - p`, the mask drawn on the host from `rng`.
fn dropout<const D: usize>(
    x: Tensor<D>,
    p: f32,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Tensor<D> {
    let keep = 1.0 - p;
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let m: Vec<f32> = bernoulli(rng, n, keep);
    let m = Tensor::<D>::from_data(TensorData::new(m, dims), device);
    x * m.div_scalar(keep)
}

/// Batch norm over dimension 1 of `x` (`[B, C, ...]`). Training: normalise with the batch
/// statistics (gradients through them) and move the running statistics towards them
/// (momentum [`BN_MOMENTUM`], unbiased variance as PyTorch). Otherwise: the running statistics.
fn batch_norm<const D: usize>(x: Tensor<D>, p: &BnParams, eps: f32, train: bool) -> Tensor<D> {
    let eps = eps as f64;
    let device = x.device();
    if train {
        let dims = x.dims();
        let n: usize = dims.iter().product::<usize>() / dims[1].max(1);
        let (y, batch_mean, batch_var) =
            crate::norm::batch_norm_train(x, p.weight.val(), p.bias.val(), eps);
        let m = BN_MOMENTUM;
        let unbias = if n > 1 {
            n as f64 / (n - 1) as f64
        } else {
            1.0
        };
        let mean = p.running_mean.value_sync().to_device(&device);
        let var = p.running_var.value_sync().to_device(&device);
        let mean = mean.mul_scalar(1.0 - m) + batch_mean.detach().mul_scalar(m);
        let var = var.mul_scalar(1.0 - m) + batch_var.detach().mul_scalar(m * unbias);
        p.running_mean.update(mean.detach());
        p.running_var.update(var.detach());
        y
    } else {
        let mean = p.running_mean.value_sync().to_device(&device);
        let var = p.running_var.value_sync().to_device(&device);
        burn::tensor::module::batch_norm(x, p.weight.val(), p.bias.val(), mean, var, eps)
    }
}

/// The forward pass of `module` under `plan` (see the module docs for the sharing layer and
/// [`Plan`] for the routing of tensors).
pub fn forward(
    module: &NetModule,
    plan: &Plan,
    x: Tensor<4>,
    mode: &mut ForwardMode<'_>,
) -> Tensor<2> {
    let device = &plan.device;
    let n = plan.ops.len();
    let mut tensors: Vec<Option<Act>> = (0..=n).map(|_| None).collect();
    tensors[0] = Some(Act::Img(x));
    let mut left = plan.reads.clone();
    // Reads tensor `t`: the last reader takes it, earlier ones get a (shallow) clone.
    let mut read = |tensors: &mut Vec<Option<Act>>, t: usize| -> Act {
        left[t] -= 1;
        let slot = &mut tensors[t];
        if left[t] == 0 {
            slot.take().expect("tensor computed before its readers")
        } else {
            match slot.as_ref().expect("tensor computed before its readers") {
                Act::Img(x) => Act::Img(x.clone()),
                Act::Flat(x) => Act::Flat(x.clone()),
            }
        }
    };
    // A convolution directly followed by a plain ReLU (its only reader) runs as one fused
    // operation whose result is the ReLU's output.
    let mut relu_done = false;
    for (i, op) in plan.ops.iter().enumerate() {
        if std::mem::take(&mut relu_done) {
            debug_assert!(matches!(op, Op::Relu));
            continue;
        }
        let src = &plan.sources[i];
        let d = plan.dims[src[0]];
        let cur = read(&mut tensors, src[0]);
        let mut out = i + 1;
        let y = match op {
            Op::Conv {
                index,
                stride,
                padding,
            } => {
                let c = &module.convs[*index];
                let (w, b) = (c.weight.val(), c.bias.val());
                let x = cur.img(d);
                if plan.fuse_relu[i] {
                    relu_done = true;
                    out = i + 2;
                    Act::Img(crate::conv::conv2d_relu(x, w, b, *stride, *padding))
                } else {
                    Act::Img(crate::conv::conv2d(x, w, b, *stride, *padding))
                }
            }
            Op::AvgPool { kernel, stride } => {
                Act::Img(crate::pool::avg_pool2d(cur.img(d), *kernel, *stride))
            }
            Op::MaxPool {
                kernel,
                stride,
                padding,
            } => Act::Img(burn::tensor::module::max_pool2d(
                cur.img(d),
                MaxPoolOptions::new([*kernel; 2])
                    .with_stride([*stride; 2])
                    .with_padding([*padding; 2]),
            )),
            Op::GlobalAvgPool => {
                let x = cur.img(d);
                let [b, c, h, w] = x.dims();
                Act::Img(x.reshape([b, c, h * w]).mean_dim(2).reshape([b, c, 1, 1]))
            }
            Op::BatchNorm { index, eps } => {
                let p = &module.bns[*index];
                cur.map(
                    |x| batch_norm(x, p, *eps, mode.train),
                    |x| batch_norm(x, p, *eps, mode.train),
                )
            }
            Op::Add => {
                let other = read(&mut tensors, src[1]);
                match (cur, other) {
                    (Act::Img(a), Act::Img(b)) => Act::Img(a + b),
                    (a, b) => Act::Flat(a.flat() + b.flat()),
                }
            }
            Op::Relu => cur.map(activation::relu, activation::relu),
            Op::Identity => cur,
            Op::Partial {
                relu_channels,
                channels,
            } => cur.map(
                |x| partial(x, *relu_channels, *channels),
                |x| partial(x, *relu_channels, *channels),
            ),
            Op::Shared(s) => match cur {
                Act::Img(x) => {
                    let dims = x.dims();
                    let y = shared_forward(module, s, x.reshape([dims[0], s.n]), mode, device);
                    Act::Img(y.reshape(dims))
                }
                Act::Flat(x) => Act::Flat(shared_forward(module, s, x, mode, device)),
            },
            Op::Dropout { p } if mode.train && *p > 0.0 => match cur {
                Act::Img(x) => Act::Img(dropout(x, *p, mode.rng, device)),
                Act::Flat(x) => Act::Flat(dropout(x, *p, mode.rng, device)),
            },
            Op::Dropout { .. } => cur,
            Op::Flatten => Act::Flat(cur.flat()),
            Op::Linear { index } => {
                let l = &module.linears[*index];
                let x = cur.flat();
                Act::Flat(x.matmul(l.weight.val().transpose()) + l.bias.val().unsqueeze_dim(0))
            }
        };
        tensors[out] = Some(y);
    }
    tensors[n]
        .take()
        .expect("the last op's output is the network's output")
        .flat()
}

fn shared_forward(
    module: &NetModule,
    s: &SharedOp,
    x: Tensor<2>,
    mode: &mut ForwardMode<'_>,
    device: &Device,
) -> Tensor<2> {
    let b = x.dims()[0];
    let p = &module.shared[s.index];
    // z_g = Σ v_i x_i + c_g; one-hot is v = the leaders' indicator
    let v = match s.decider {
        Decider::OneHot => {
            let leaders = s.leaders.clone().expect("one-hot layer has leaders");
            Tensor::<1>::zeros([s.n], device).select_assign(
                0,
                leaders,
                Tensor::<1>::ones([s.groups], device),
                IndexingUpdateOp::Add,
            )
        }
        Decider::Learned | Decider::Fc => {
            p.v.as_ref()
                .expect("learned layer has v")
                .val()
                .reshape([s.n])
        }
    };
    let c = match (&p.fc_bias, &s.channel_of_group) {
        (Some(bias), Some(cog)) => bias.val().select(0, cog.clone()),
        _ => Tensor::<1>::zeros([s.groups], device),
    };
    let flips = (mode.noise && s.noise > 0.0)
        .then(|| std::sync::Arc::new(bernoulli_bits(mode.rng, b * s.n, s.noise)));
    let args = crate::gate::GateArgs {
        group_of: s.group_of.clone(),
        runs: s.runs.clone(),
        groups: s.groups,
        flips,
        temperature: mode.temperature,
        grid: s.grid.clone(),
    };
    crate::gate::shared_gate(x, v, c, &s.group_id, args, mode.train)
}

fn host<const D: usize>(t: Tensor<D>) -> Result<relushare_model::Tensor, NnError> {
    let shape = t.dims().to_vec();
    let data = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| NnError::Backend(format!("reading a tensor back: {e:?}")))?;
    Ok(relushare_model::Tensor::new(shape, data))
}

/// Export `module` under `plan` to a [`Model`].
pub fn to_model(module: &NetModule, plan: &Plan) -> Result<Model, NnError> {
    let mut params = std::collections::BTreeMap::new();
    let mut conv = 0;
    let mut lin = 0;
    let mut shared = 0;
    let mut bn = 0;
    for layer in &plan.spec.layers {
        match layer {
            Layer::Conv { name, .. } => {
                let c = &module.convs[conv];
                conv += 1;
                params.insert(format!("{name}.weight"), host(c.weight.val())?);
                params.insert(format!("{name}.bias"), host(c.bias.val())?);
            }
            Layer::Linear { name, .. } => {
                let l = &module.linears[lin];
                lin += 1;
                params.insert(format!("{name}.weight"), host(l.weight.val())?);
                params.insert(format!("{name}.bias"), host(l.bias.val())?);
            }
            Layer::Act {
                name,
                kind: ActKind::Shared(_),
            } => {
                let p = &module.shared[shared];
                shared += 1;
                if let Some(v) = &p.v {
                    params.insert(format!("{name}.v"), host(v.val())?);
                }
                if let Some(b) = &p.fc_bias {
                    params.insert(format!("{name}.fc_bias"), host(b.val())?);
                }
            }
            Layer::BatchNorm { name, .. } => {
                // `valid()` merges the running statistics' updates from every thread.
                let p = &module.bns[bn];
                bn += 1;
                params.insert(format!("{name}.weight"), host(p.weight.val())?);
                params.insert(format!("{name}.bias"), host(p.bias.val())?);
                params.insert(
                    format!("{name}.running_mean"),
                    host(p.running_mean.valid().value())?,
                );
                params.insert(
                    format!("{name}.running_var"),
                    host(p.running_var.valid().value())?,
                );
            }
            _ => {}
        }
    }
    let model = Model {
        spec: plan.spec.clone(),
        params,
        group_maps: plan.group_maps.clone(),
    };
    model.validate()?;
    Ok(model)
}

/// Normalized images `[B, C, H, W]` as a tensor on `device`.
pub fn images_tensor(
    data: Vec<f32>,
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Tensor<4> {
    Tensor::<4>::from_data(TensorData::new(data, [b, c, h, w]), device)
}

/// Predicted classes of a logits batch.
pub fn argmax_rows(logits: Tensor<2>) -> Result<Vec<usize>, NnError> {
    let preds = logits.argmax(1);
    let v = preds
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| NnError::Backend(format!("reading predictions: {e:?}")))?;
    Ok(v.into_iter().map(|x| x as usize).collect())
}

/// Cross-entropy loss (mean over the batch) of logits against labels.
pub fn cross_entropy(logits: Tensor<2>, labels: &[u8], device: &Device) -> Tensor<1> {
    let b = labels.len();
    let idx: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let idx = Tensor::<2, Int>::from_data(TensorData::new(idx, [b, 1]), device);
    let logp = activation::log_softmax(logits, 1);
    logp.gather(1, idx).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use relushare_model::{presets, Arch};

    /// The bulk draws are the generator's words one by one, so noisy training keeps its stream
    /// (and a seed its results); the stream continues where the bulk draw left it.
    #[test]
    fn bernoulli_bits_follow_the_word_stream() {
        for n in [0, 1, 7, 4096, 4097, 10_000] {
            let mut a = ChaCha8Rng::seed_from_u64(5);
            let mut b = a.clone();
            let bulk = bernoulli_bits(&mut a, n, 0.2);
            let one_by_one: Vec<u8> = (0..n)
                .map(|_| ((b.next_u32() as u64) < (0.2f64 * 4294967296.0) as u64) as u8)
                .collect();
            assert_eq!(bulk, one_by_one, "n = {n}");
            assert_eq!(
                a.next_u32(),
                b.next_u32(),
                "n = {n}: the streams go on together"
            );
        }
        let ones = bernoulli_bits(&mut ChaCha8Rng::seed_from_u64(1), 100_000, 0.2)
            .iter()
            .filter(|&&x| x == 1)
            .count();
        assert!((19_000..21_000).contains(&ones), "{ones}");
    }

    /// The straight-through estimator gives `v` (and the FC bias) finite, non-zero gradients,
    /// while the forward value of the training gate is exactly the hard step.
    #[test]
    fn ste_gradients_reach_sharing_parameters() {
        let mut spec = presets::build(Arch::Svhn, "original").unwrap();
        presets::apply_freeform(&mut spec, "act1=patch3:noise0.2,act2=channel:fc").unwrap();
        let model = Model::random(spec, None, 5).unwrap();
        let device = Device::flex().autodiff();
        let net = Net::from_model(&model, &device).unwrap();
        let x: Vec<f32> = (0..4 * 3 * 32 * 32)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let x = images_tensor(x, 4, 3, 32, 32, &device);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut mode = ForwardMode {
            train: true,
            noise: false,
            temperature: 1.0,
            rng: &mut rng,
        };
        let logits = net.forward(x.clone(), &mut mode);
        // Same logits as inference mode (the surrogate terms cancel in the forward pass).
        let plain = Net::from_model(&model, &Device::flex()).unwrap();
        let xs = x
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        let want = plain.logits(&xs, 4, false, 0).unwrap();
        let got = logits
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        for (a, b) in got.iter().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let loss = cross_entropy(logits, &[0, 1, 2, 3], &device);
        let grads = loss.backward();
        for (i, p) in net.module.shared.iter().enumerate() {
            let g =
                p.v.as_ref()
                    .unwrap()
                    .val()
                    .grad(&grads)
                    .expect("v has a gradient");
            let g = g
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            assert!(g.iter().all(|x| x.is_finite()));
            assert!(
                g.iter().any(|&x| x != 0.0),
                "layer {i}: all-zero v gradient"
            );
        }
        let b = net.module.shared[1]
            .fc_bias
            .as_ref()
            .unwrap()
            .val()
            .grad(&grads)
            .unwrap();
        let b = b
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(b.iter().any(|&x| x != 0.0));
    }
}
