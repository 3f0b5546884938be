//! Network specifications as data: layers, activation kinds, the paper's three architectures.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// Largest channel count, side, kernel, stride or padding a spec may use.
pub const MAX_SIDE: usize = 1 << 16;
/// Largest number of values in one layer's tensor (guards allocations on hostile specs).
pub const MAX_ACTIVATIONS: usize = 1 << 26;

fn check_size(name: &str, d: Dims) -> Result<(), ModelError> {
    let n = d.c.checked_mul(d.h).and_then(|x| x.checked_mul(d.w));
    match n {
        Some(n)
            if n <= MAX_ACTIVATIONS
                && d.c <= MAX_ACTIVATIONS
                && d.h <= MAX_SIDE
                && d.w <= MAX_SIDE =>
        {
            Ok(())
        }
        _ => Err(ModelError::Spec(format!(
            "{name}: tensor {}x{}x{} exceeds the size limit ({MAX_ACTIVATIONS} values)",
            d.c, d.h, d.w
        ))),
    }
}

/// Version of the model-file format written by this crate. Version 2 added graph models
/// (`inputs`, `Add`, `MaxPool`, `GlobalAvgPool`, `BatchNorm`) and class names; version-1
/// files (the sequential specs) still load.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest model-file format version this build reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// The name of the network's input tensor in [`ModelSpec::inputs`].
pub const INPUT: &str = "input";

/// The paper's three architectures (Tables 2, 3 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Cifar10,
    Svhn,
    Fmnist,
    /// ResNet-20 for CIFAR-10 (a graph: residual adds, batch norm; see [`crate::resnet`]).
    Resnet20,
    /// ResNet-18 in its CIFAR-100 variant (3x3 stem, no max pooling; 557,056 ReLUs).
    Resnet18,
    /// Any other network (an imported ONNX model): its input and layers are only in the spec.
    Custom,
}

impl Arch {
    /// The paper's three architectures.
    pub const ALL: [Arch; 3] = [Arch::Cifar10, Arch::Svhn, Arch::Fmnist];
    /// The residual networks relushare builds besides the paper's.
    pub const RESNETS: [Arch; 2] = [Arch::Resnet20, Arch::Resnet18];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Cifar10 => "cifar10",
            Arch::Svhn => "svhn",
            Arch::Fmnist => "fmnist",
            Arch::Resnet20 => "resnet20",
            Arch::Resnet18 => "resnet18",
            Arch::Custom => "custom",
        }
    }

    /// Input dimensions (channels, height, width); a custom network has none of its own
    /// (`0x0x0`: its spec's `input` holds them).
    pub fn input(self) -> Dims {
        match self {
            Arch::Cifar10 | Arch::Svhn | Arch::Resnet20 | Arch::Resnet18 => Dims::new(3, 32, 32),
            Arch::Fmnist => Dims::new(1, 28, 28),
            Arch::Custom => Dims::new(0, 0, 0),
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            Arch::Resnet18 => 100,
            _ => 10,
        }
    }

    /// The layers and graph edges of the architecture (edges empty for the sequential ones).
    pub fn network(self) -> (Vec<Layer>, BTreeMap<String, Vec<String>>) {
        match self {
            Arch::Resnet20 => crate::resnet::resnet20(),
            Arch::Resnet18 => crate::resnet::resnet18_cifar100(),
            _ => (self.layers(), BTreeMap::new()),
        }
    }

    /// Names of the activation layers the paper applies ReLU sharing to:
    /// the first two for CIFAR-10, the first for SVHN and Fashion-MNIST.
    pub fn shared_layers(self) -> &'static [&'static str] {
        match self {
            Arch::Cifar10 => &["act1", "act2"],
            Arch::Svhn | Arch::Fmnist => &["act1"],
            Arch::Resnet20 | Arch::Resnet18 | Arch::Custom => &[],
        }
    }

    /// The architecture with a plain ReLU after every convolution / hidden linear layer.
    pub fn layers(self) -> Vec<Layer> {
        let mut b = Builder::default();
        match self {
            Arch::Cifar10 => {
                // Table 2 (MiniONN-style, average pooling instead of max pooling).
                b.conv(3, 64, 3, 1).act();
                b.conv(64, 64, 3, 1).act();
                b.pool(2, 2);
                b.conv(64, 64, 3, 1).act();
                b.conv(64, 64, 3, 1).act();
                b.pool(2, 2);
                b.conv(64, 64, 3, 1).act();
                b.conv(64, 64, 1, 0).act();
                b.conv(64, 16, 1, 0).act();
                b.flatten();
                b.linear(1024, 10);
            }
            Arch::Svhn => {
                // Table 3.
                b.conv(3, 32, 4, 0).act();
                b.pool(3, 3);
                b.conv(32, 64, 4, 0).act();
                b.flatten();
                b.linear(2304, 10);
            }
            Arch::Fmnist => {
                // Table 4.
                b.conv(1, 32, 3, 1).act();
                b.pool(2, 2);
                b.conv(32, 64, 3, 1).act();
                b.pool(2, 2);
                b.dropout(0.5);
                b.flatten();
                b.linear(3136, 128).act();
                b.linear(128, 10);
            }
            Arch::Resnet20 | Arch::Resnet18 => return self.network().0,
            Arch::Custom => {}
        }
        b.layers
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cifar10" | "cifar-10" | "cifar" => Ok(Arch::Cifar10),
            "svhn" => Ok(Arch::Svhn),
            "fmnist" | "fashion-mnist" | "fashion_mnist" => Ok(Arch::Fmnist),
            "resnet20" | "resnet-20" => Ok(Arch::Resnet20),
            "resnet18" | "resnet-18" => Ok(Arch::Resnet18),
            _ => Err(ModelError::Spec(format!(
                "unknown architecture '{s}': expected one of cifar10, svhn, fmnist, resnet20, resnet18"
            ))),
        }
    }
}

#[derive(Default)]
struct Builder {
    layers: Vec<Layer>,
    convs: usize,
    acts: usize,
    pools: usize,
    linears: usize,
    dropouts: usize,
}

impl Builder {
    fn conv(&mut self, in_ch: usize, out_ch: usize, kernel: usize, padding: usize) -> &mut Self {
        self.convs += 1;
        self.layers.push(Layer::Conv {
            name: format!("conv{}", self.convs),
            in_ch,
            out_ch,
            kernel,
            stride: 1,
            padding,
        });
        self
    }
    fn act(&mut self) -> &mut Self {
        self.acts += 1;
        self.layers.push(Layer::Act {
            name: format!("act{}", self.acts),
            kind: ActKind::Relu,
        });
        self
    }
    fn pool(&mut self, kernel: usize, stride: usize) {
        self.pools += 1;
        self.layers.push(Layer::AvgPool {
            name: format!("pool{}", self.pools),
            kernel,
            stride,
        });
    }
    fn dropout(&mut self, p: f32) {
        self.dropouts += 1;
        self.layers.push(Layer::Dropout {
            name: format!("dropout{}", self.dropouts),
            p,
        });
    }
    fn flatten(&mut self) {
        self.layers.push(Layer::Flatten);
    }
    fn linear(&mut self, in_f: usize, out_f: usize) -> &mut Self {
        self.linears += 1;
        self.layers.push(Layer::Linear {
            name: format!("fc{}", self.linears),
            in_f,
            out_f,
        });
        self
    }
}

/// The input positions `(y, x)` of output `(oy, ox)` of a `k x k` pool with `stride` and
/// `pad` on a `d.h x d.w` plane, padded positions left out (row-major order). Every window
/// of a valid pool (padding at most half the window) holds at least one position.
pub fn pool_window(
    d: Dims,
    k: usize,
    stride: usize,
    pad: usize,
    oy: usize,
    ox: usize,
) -> impl Iterator<Item = (usize, usize)> {
    let (y0, x0) = (
        (oy * stride) as isize - pad as isize,
        (ox * stride) as isize - pad as isize,
    );
    let (h, w) = (d.h as isize, d.w as isize);
    (y0..y0 + k as isize)
        .filter(move |&y| y >= 0 && y < h)
        .flat_map(move |y| {
            (x0..x0 + k as isize)
                .filter(move |&x| x >= 0 && x < w)
                .map(move |x| (y as usize, x as usize))
        })
}

/// Tensor dimensions of one image: channels, height, width. A flat vector is `(n, 1, 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dims {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Dims {
    pub const fn new(c: usize, h: usize, w: usize) -> Self {
        Dims { c, h, w }
    }
    pub const fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub const fn plane(&self) -> usize {
        self.h * self.w
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

/// One layer of a network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Layer {
    /// 2-D convolution, square kernel, zero padding. Weight `[out, in, k, k]`, bias `[out]`.
    Conv {
        name: String,
        in_ch: usize,
        out_ch: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    /// Average pooling, square window, no padding, output size floored.
    AvgPool {
        name: String,
        kernel: usize,
        stride: usize,
    },
    /// An element-wise activation (ReLU or a ReLU-sharing layer).
    Act { name: String, kind: ActKind },
    /// Dropout: active in training only, identity at inference.
    Dropout { name: String, p: f32 },
    /// Flatten in C, H, W order.
    Flatten,
    /// Fully connected. Weight `[out, in]`, bias `[out]`.
    Linear {
        name: String,
        in_f: usize,
        out_f: usize,
    },
    /// Max pooling, square window, output size floored. Padded positions take no part in the
    /// maximum (PyTorch pads with -inf). Secure: `k*k - 1` comparisons per output at most,
    /// counted apart from the ReLUs.
    MaxPool {
        name: String,
        kernel: usize,
        stride: usize,
        #[serde(default)]
        padding: usize,
    },
    /// Global average pooling: one value per channel (`[C,H,W] -> [C,1,1]`).
    GlobalAvgPool { name: String },
    /// Batch normalisation with running statistics: parameters `<name>.weight`, `.bias`,
    /// `.running_mean`, `.running_var` (`[C]`). Trained as such; folded into the convolution
    /// or linear layer before it for inference ([`crate::file::Model::fold_batchnorm`]).
    BatchNorm { name: String, eps: f32 },
    /// Element-wise sum of two tensors of equal shape (a residual connection). Its two inputs
    /// are named in [`ModelSpec::inputs`]; local on shares.
    Add { name: String },
}

impl Layer {
    pub fn name(&self) -> &str {
        match self {
            Layer::Conv { name, .. }
            | Layer::AvgPool { name, .. }
            | Layer::Act { name, .. }
            | Layer::Dropout { name, .. }
            | Layer::Linear { name, .. }
            | Layer::MaxPool { name, .. }
            | Layer::GlobalAvgPool { name }
            | Layer::BatchNorm { name, .. }
            | Layer::Add { name } => name,
            Layer::Flatten => "flatten",
        }
    }

    /// Output dimensions for the given input dimensions.
    pub fn output_dims(&self, d: Dims) -> Result<Dims, ModelError> {
        let out = self.output_dims_unchecked(d)?;
        check_size(self.name(), out)?;
        Ok(out)
    }

    fn output_dims_unchecked(&self, d: Dims) -> Result<Dims, ModelError> {
        let sizes: &[usize] = match self {
            Layer::Conv {
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
                ..
            } => &[*in_ch, *out_ch, *kernel, *stride, *padding],
            Layer::AvgPool { kernel, stride, .. } => &[*kernel, *stride],
            Layer::MaxPool {
                kernel,
                stride,
                padding,
                ..
            } => &[*kernel, *stride, *padding],
            Layer::Linear { .. }
            | Layer::Act { .. }
            | Layer::Dropout { .. }
            | Layer::Flatten
            | Layer::GlobalAvgPool { .. }
            | Layer::BatchNorm { .. }
            | Layer::Add { .. } => &[],
        };
        if sizes.iter().any(|&v| v > MAX_SIDE) {
            return Err(ModelError::Spec(format!(
                "{}: a size exceeds the limit {MAX_SIDE}",
                self.name()
            )));
        }
        if let Layer::Linear { name, in_f, out_f } = self {
            if *in_f > MAX_ACTIVATIONS || *out_f > MAX_ACTIVATIONS {
                return Err(ModelError::Spec(format!("{name}: too many features")));
            }
        }
        match self {
            Layer::Conv {
                name,
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
            } => {
                if d.c != *in_ch {
                    return Err(ModelError::Spec(format!(
                        "{name}: expects {in_ch} input channels, gets {}",
                        d.c
                    )));
                }
                if *stride == 0 || *kernel == 0 {
                    return Err(ModelError::Spec(format!("{name}: zero kernel or stride")));
                }
                let (h, w) = (d.h + 2 * padding, d.w + 2 * padding);
                if h < *kernel || w < *kernel {
                    return Err(ModelError::Spec(format!(
                        "{name}: kernel {kernel} larger than padded input {h}x{w}"
                    )));
                }
                Ok(Dims::new(
                    *out_ch,
                    (h - kernel) / stride + 1,
                    (w - kernel) / stride + 1,
                ))
            }
            Layer::AvgPool {
                name,
                kernel,
                stride,
            } => {
                if *stride == 0 || *kernel == 0 || d.h < *kernel || d.w < *kernel {
                    return Err(ModelError::Spec(format!(
                        "{name}: pool {kernel}/{stride} does not fit input {d}"
                    )));
                }
                Ok(Dims::new(
                    d.c,
                    (d.h - kernel) / stride + 1,
                    (d.w - kernel) / stride + 1,
                ))
            }
            Layer::MaxPool {
                name,
                kernel,
                stride,
                padding,
            } => {
                if *stride == 0 || *kernel == 0 || 2 * padding > *kernel {
                    return Err(ModelError::Spec(format!(
                        "{name}: max pool {kernel}/{stride} with padding {padding} (padding must be at most half the window)"
                    )));
                }
                let (h, w) = (d.h + 2 * padding, d.w + 2 * padding);
                if h < *kernel || w < *kernel {
                    return Err(ModelError::Spec(format!(
                        "{name}: max pool {kernel}/{stride} does not fit input {d}"
                    )));
                }
                Ok(Dims::new(
                    d.c,
                    (h - kernel) / stride + 1,
                    (w - kernel) / stride + 1,
                ))
            }
            Layer::GlobalAvgPool { .. } => Ok(Dims::new(d.c, 1, 1)),
            Layer::BatchNorm { name, eps } => {
                if !(*eps > 0.0) || !eps.is_finite() {
                    return Err(ModelError::Spec(format!(
                        "{name}: batch-norm epsilon must be positive, got {eps}"
                    )));
                }
                Ok(d)
            }
            Layer::Act { .. } | Layer::Dropout { .. } | Layer::Add { .. } => Ok(d),
            Layer::Flatten => Ok(Dims::new(d.len(), 1, 1)),
            Layer::Linear { name, in_f, out_f } => {
                if d.len() != *in_f {
                    return Err(ModelError::Spec(format!(
                        "{name}: expects {in_f} inputs, gets {} ({d})",
                        d.len()
                    )));
                }
                Ok(Dims::new(*out_f, 1, 1))
            }
        }
    }
}

/// What an activation layer does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ActKind {
    /// Plain ReLU: every activation decides for itself.
    Relu,
    /// No non-linearity (Shafran et al.'s removed ReLU layer).
    Identity,
    /// Partial activation (Shafran et al.): channels `[0, relu_channels)` get a ReLU, the rest identity.
    Partial { relu_channels: usize },
    /// A ReLU-sharing layer (gReLU, Eqs. 2-4 of the paper).
    Shared(SharedAct),
}

/// A ReLU-sharing layer: activations are partitioned into groups, each group takes one
/// decision `z_g >= 0` and every member `i` outputs `s_i * decision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedAct {
    pub grouping: Grouping,
    pub decider: Decider,
    /// Probability that a member's decision is flipped (Eq. 4); 0 disables noise.
    #[serde(default)]
    pub noise: f32,
}

/// How the channel plane is partitioned into groups. Every channel is partitioned the same
/// way, except for `Cluster`, whose map is explicit per channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Grouping {
    /// Non-overlapping `k x k` patches.
    Patch { k: usize, edge: EdgePolicy },
    /// One group per channel.
    Channel,
    /// Data-driven clusters: `k` clusters for the whole channel, or for every non-overlapping
    /// `window x window` window. The map itself comes from a cluster-map file.
    Cluster { window: Option<usize>, k: usize },
    /// Cross-channel sharing: one decision for a `k x k` patch in each block of `channels`
    /// consecutive channels (the last block may be smaller), so a group has up to
    /// `channels * k * k` members. `channels = 1` is [`Grouping::Patch`].
    CrossChannel {
        k: usize,
        edge: EdgePolicy,
        channels: usize,
    },
}

/// What happens when the patch size does not divide the plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgePolicy {
    /// Smaller patches at the edges: 32 with k=3 gives ceil(32/3) = 11 patches per side.
    Partial,
    /// The remainder joins the last patch: 29 or 28 with k=3 gives floor(n/3) = 9 per side.
    Merge,
}

/// How a group computes its decision value `z_g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decider {
    /// `z_g = sum_{i in g} v_i s_i` with learned `v` (parameter `<act>.v`, shape `[C,H,W]`).
    Learned,
    /// `z_g = s_leader(g)`: the middle member of the group decides; no parameters.
    OneHot,
    /// A learned fully connected unit over the whole channel: `z_c = sum_i v_i s_i + b_c`
    /// (parameters `<act>.v` and `<act>.fc_bias` `[C]`). Requires `Grouping::Channel`.
    Fc,
}

impl SharedAct {
    pub fn describe(&self) -> String {
        let g = match &self.grouping {
            Grouping::Patch { k, edge } => format!(
                "{k}x{k} patches ({})",
                match edge {
                    EdgePolicy::Partial => "partial edges",
                    EdgePolicy::Merge => "merged edges",
                }
            ),
            Grouping::Channel => "whole channel".to_string(),
            Grouping::CrossChannel { k, edge, channels } => format!(
                "{k}x{k} patches ({}) across {channels} channels",
                match edge {
                    EdgePolicy::Partial => "partial edges",
                    EdgePolicy::Merge => "merged edges",
                }
            ),
            Grouping::Cluster { window: None, k } => format!("{k} clusters per channel"),
            Grouping::Cluster { window: Some(m), k } => format!("{k} clusters per {m}x{m} window"),
        };
        let d = match self.decider {
            Decider::Learned => "learned v",
            Decider::OneHot => "one-hot",
            Decider::Fc => "FC",
        };
        if self.noise > 0.0 {
            format!("gReLU {g}, {d}, noise {:.0}%", self.noise * 100.0)
        } else {
            format!("gReLU {g}, {d}")
        }
    }
}

impl ActKind {
    pub fn describe(&self) -> String {
        match self {
            ActKind::Relu => "ReLU".into(),
            ActKind::Identity => "identity".into(),
            ActKind::Partial { relu_channels } => {
                format!("partial ReLU ({relu_channels} channels)")
            }
            ActKind::Shared(s) => s.describe(),
        }
    }
}

/// Per-channel input normalization (pixels scaled to [0, 1] first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    pub fn identity(channels: usize) -> Self {
        Normalization {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Normalize a CHW `u8` image into `out`.
    pub fn apply(&self, img: &[u8], out: &mut [f32]) {
        let plane = img.len() / self.mean.len().max(1);
        for (i, (o, &p)) in out.iter_mut().zip(img).enumerate() {
            let c = i / plane.max(1);
            *o = (p as f32 / 255.0 - self.mean[c]) / self.std[c];
        }
    }
}

/// A whole network: architecture, per-layer kinds, input normalization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub format_version: u32,
    pub arch: Arch,
    /// Preset name, or "custom".
    pub preset: String,
    pub input: Dims,
    pub num_classes: usize,
    pub layers: Vec<Layer>,
    pub normalization: Normalization,
    /// Graph edges: the tensors a layer reads, by name (a layer's output tensor carries the
    /// layer's name, the image is [`INPUT`]). A layer not listed reads the previous layer's
    /// output, so a sequential network has no entries; `Add` lists its two operands.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, Vec<String>>,
    /// Class names (from `import --classes`); empty: the dataset's names, or `class-N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

impl ModelSpec {
    /// The plain-ReLU network of an architecture.
    pub fn original(arch: Arch) -> Self {
        let (layers, inputs) = arch.network();
        ModelSpec {
            format_version: FORMAT_VERSION,
            arch,
            preset: "original".into(),
            input: arch.input(),
            num_classes: arch.classes(),
            layers,
            normalization: Normalization::identity(arch.input().c),
            inputs,
            class_names: Vec::new(),
        }
    }

    /// Whether every layer reads the previous layer's output (no graph edges).
    pub fn is_sequential(&self) -> bool {
        self.inputs.is_empty()
    }

    /// The tensors every layer reads, as tensor ids: `0` is the image, `i + 1` the output of
    /// layer `i`. Checks the edges: names exist and come earlier, `Add` reads two tensors and
    /// every other layer one, every listed layer exists.
    pub fn sources(&self) -> Result<Vec<Vec<usize>>, ModelError> {
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        ids.insert(INPUT, 0);
        for key in self.inputs.keys() {
            if !self.layers.iter().any(|l| l.name() == key) || key == "flatten" {
                return Err(ModelError::Spec(format!(
                    "inputs names layer '{key}', which the spec does not have"
                )));
            }
        }
        let mut out = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let src: Vec<usize> = match self.inputs.get(l.name()) {
                Some(names) if !matches!(l, Layer::Flatten) => names
                    .iter()
                    .map(|n| {
                        ids.get(n.as_str()).copied().ok_or_else(|| {
                            ModelError::Spec(format!(
                                "{}: reads tensor '{n}', which no earlier layer produces",
                                l.name()
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => vec![i],
            };
            let want = if matches!(l, Layer::Add { .. }) { 2 } else { 1 };
            if src.len() != want {
                return Err(ModelError::Spec(format!(
                    "{}: reads {} tensors, needs {want}{}",
                    l.name(),
                    src.len(),
                    if want == 2 {
                        " (list both operands in inputs)"
                    } else {
                        ""
                    }
                )));
            }
            out.push(src);
            if !matches!(l, Layer::Flatten) {
                ids.insert(l.name(), i + 1);
            }
        }
        Ok(out)
    }

    /// Dimensions of every tensor: the image, then the output of every layer (so the result
    /// has `layers.len() + 1` entries and the last is the network's output). For a
    /// sequential network entry `i` is also the input of layer `i`; in general use
    /// [`ModelSpec::in_dims`]. Validates the graph.
    pub fn dims(&self) -> Result<Vec<Dims>, ModelError> {
        Ok(self.graph()?.1)
    }

    /// Dimensions of the (first) input of every layer.
    pub fn in_dims(&self) -> Result<Vec<Dims>, ModelError> {
        let (src, dims) = self.graph()?;
        Ok(src.iter().map(|s| dims[s[0]]).collect())
    }

    /// [`ModelSpec::sources`] and [`ModelSpec::dims`] together.
    pub fn graph(&self) -> Result<(Vec<Vec<usize>>, Vec<Dims>), ModelError> {
        check_size(INPUT, self.input)?;
        let src = self.sources()?;
        let mut dims = Vec::with_capacity(self.layers.len() + 1);
        dims.push(self.input);
        for (l, s) in self.layers.iter().zip(&src) {
            let d = dims[s[0]];
            if let (Layer::Add { name }, Some(&b)) = (l, s.get(1)) {
                if dims[b] != d {
                    return Err(ModelError::Spec(format!(
                        "{name}: adds tensors of shapes {d} and {}",
                        dims[b]
                    )));
                }
            }
            dims.push(l.output_dims(d)?);
        }
        Ok((src, dims))
    }

    /// For every tensor id, the layers that read it.
    pub fn consumers(&self) -> Result<Vec<Vec<usize>>, ModelError> {
        let src = self.sources()?;
        let mut out = vec![Vec::new(); self.layers.len() + 1];
        for (i, s) in src.iter().enumerate() {
            for &t in s {
                out[t].push(i);
            }
        }
        Ok(out)
    }

    /// Rebuild [`ModelSpec::inputs`] for `layers` whose sources (tensor ids in the sense of
    /// [`ModelSpec::sources`], relative to `layers`) are `src`: edges to the previous layer stay
    /// implicit. Fails if a layer reads a `Flatten` output that is not its predecessor (such a
    /// tensor has no name).
    pub fn set_graph(&mut self, layers: Vec<Layer>, src: &[Vec<usize>]) -> Result<(), ModelError> {
        let mut inputs = BTreeMap::new();
        for (i, (l, s)) in layers.iter().zip(src).enumerate() {
            if s.len() == 1 && s[0] == i && !matches!(l, Layer::Add { .. }) {
                continue;
            }
            let names = s
                .iter()
                .map(|&t| match t {
                    0 => Ok(INPUT.to_string()),
                    t => match &layers[t - 1] {
                        Layer::Flatten => Err(ModelError::Spec(format!(
                            "{}: reads the output of a flatten that is not just before it",
                            l.name()
                        ))),
                        p => Ok(p.name().to_string()),
                    },
                })
                .collect::<Result<Vec<_>, _>>()?;
            inputs.insert(l.name().to_string(), names);
        }
        self.layers = layers;
        self.inputs = inputs;
        Ok(())
    }

    /// Check the whole spec: shapes chain, names are unique, activation kinds fit their inputs.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(ModelError::Spec(format!(
                "unsupported model format version {} (this build reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION})",
                self.format_version
            )));
        }
        if self.normalization.mean.len() != self.input.c
            || self.normalization.std.len() != self.input.c
        {
            return Err(ModelError::Spec(format!(
                "normalization has {} means / {} stds for {} input channels",
                self.normalization.mean.len(),
                self.normalization.std.len(),
                self.input.c
            )));
        }
        if self.normalization.std.iter().any(|s| !(*s > 0.0)) {
            return Err(ModelError::Spec(
                "normalization std must be positive".into(),
            ));
        }
        if self.layers.is_empty() {
            return Err(ModelError::Spec("the network has no layers".into()));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.layers {
            if !matches!(l, Layer::Flatten) && !names.insert(l.name().to_string()) {
                return Err(ModelError::Spec(format!(
                    "duplicate layer name {}",
                    l.name()
                )));
            }
            if l.name() == INPUT {
                return Err(ModelError::Spec(format!(
                    "a layer may not be called '{INPUT}' (the image's name)"
                )));
            }
        }
        let (src, dims) = self.graph()?;
        for (l, s) in self.layers.iter().zip(&src) {
            if let Layer::Act { name, kind } = l {
                crate::group::validate_act(name, kind, dims[s[0]])?;
            }
        }
        // Every tensor but the output feeds some layer (a dangling branch is a broken graph).
        let mut used = vec![false; dims.len()];
        for s in &src {
            for &t in s {
                used[t] = true;
            }
        }
        if let Some(i) = (0..self.layers.len()).find(|&i| !used[i]) {
            let what = if i == 0 {
                INPUT
            } else {
                self.layers[i - 1].name()
            };
            return Err(ModelError::Spec(format!(
                "the output of {what} is never used (only the last layer's output may be unread)"
            )));
        }
        let out = dims.last().copied().unwrap_or(self.input);
        if out.len() != self.num_classes {
            return Err(ModelError::Spec(format!(
                "network outputs {} values but num_classes is {}",
                out.len(),
                self.num_classes
            )));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.num_classes {
            return Err(ModelError::Spec(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            )));
        }
        Ok(())
    }

    /// Input dimensions of the named layer.
    pub fn layer_input(&self, name: &str) -> Option<Dims> {
        let dims = self.in_dims().ok()?;
        self.layers
            .iter()
            .position(|l| l.name() == name)
            .map(|i| dims[i])
    }

    /// The activation kind of a named activation layer.
    pub fn act(&self, name: &str) -> Option<&ActKind> {
        self.layers.iter().find_map(|l| match l {
            Layer::Act { name: n, kind } if n == name => Some(kind),
            _ => None,
        })
    }

    pub fn act_mut(&mut self, name: &str) -> Option<&mut ActKind> {
        self.layers.iter_mut().find_map(|l| match l {
            Layer::Act { name: n, kind } if n == name => Some(kind),
            _ => None,
        })
    }

    /// Names of the activation layers, in order.
    pub fn act_names(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter_map(|l| match l {
                Layer::Act { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_output_sizes() {
        // Table 2: 32x32x64 ... 8x8x16, FC 1024 -> 10.
        let s = ModelSpec::original(Arch::Cifar10);
        let d = s.dims().unwrap();
        assert_eq!(d[1], Dims::new(64, 32, 32));
        assert_eq!(*d.last().unwrap(), Dims::new(10, 1, 1));
        // Table 3: 29x29x32, pool to 9x9, conv to 6x6x64.
        let d = ModelSpec::original(Arch::Svhn).dims().unwrap();
        assert_eq!(d[1], Dims::new(32, 29, 29));
        assert_eq!(d[3], Dims::new(32, 9, 9));
        assert_eq!(d[4], Dims::new(64, 6, 6));
        // Table 4: 28x28x32, 14x14x64, 7x7x64, 128, 10.
        let d = ModelSpec::original(Arch::Fmnist).dims().unwrap();
        assert_eq!(d[1], Dims::new(32, 28, 28));
        assert_eq!(d[4], Dims::new(64, 14, 14));
        for a in Arch::ALL {
            ModelSpec::original(a).validate().unwrap();
        }
    }

    #[test]
    fn arch_names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
        }
        assert!("resnet".parse::<Arch>().is_err());
    }

    #[test]
    fn bad_chain_is_an_error() {
        let mut s = ModelSpec::original(Arch::Svhn);
        if let Layer::Linear { in_f, .. } = s.layers.last_mut().unwrap() {
            *in_f = 100;
        }
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("fc1"), "{e}");
    }
}
