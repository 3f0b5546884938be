//! ReLU counting: secure comparisons and per-activation multiplications of each layer,
//! derived from the spec (never from constants).

use serde::{Deserialize, Serialize};

use crate::group::{cluster_groups, patches_per_side};
use crate::spec::{ActKind, Decider, Grouping, Layer, ModelSpec};
use crate::ModelError;

/// Costs of one activation layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCount {
    pub name: String,
    pub kind: String,
    /// Activations in the layer (C*H*W).
    pub activations: usize,
    /// Secure comparisons (ReLU decisions) in the layer.
    pub relus: usize,
    /// Comparisons per channel (channel 0), as in the paper's "#ReLU per channel" columns.
    pub relus_per_channel: usize,
    /// Member x decision products (one per activation that is not identity).
    pub selects: usize,
    /// Secret x secret products in the group dot products `v_g . s_g`.
    pub dot_mults: usize,
    /// Products that apply secret noise flips (decision XOR noise bit).
    pub noise_mults: usize,
    /// `selects + dot_mults + noise_mults`.
    pub mults: usize,
}

/// Comparisons of one max-pooling layer (reported apart from the ReLUs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolCount {
    pub name: String,
    /// Output values (C*OH*OW).
    pub outputs: usize,
    /// Secure comparisons: one less than the window's positions inside the input, per output.
    pub comparisons: usize,
    /// Sequential comparison rounds of a balanced tree: `ceil(log2(k*k))`.
    pub depth: usize,
}

/// Counts of a whole network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReluCount {
    pub arch: String,
    pub preset: String,
    pub layers: Vec<LayerCount>,
    pub total_relus: usize,
    pub total_mults: usize,
    /// Max-pooling layers and their comparisons (not in `total_relus`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_pools: Vec<PoolCount>,
    /// Comparisons of all max-pooling layers.
    #[serde(default)]
    pub maxpool_comparisons: usize,
}

impl ReluCount {
    /// Every secure comparison: ReLU decisions plus max-pooling comparisons.
    pub fn total_comparisons(&self) -> usize {
        self.total_relus + self.maxpool_comparisons
    }
}

/// Comparisons of a max pool on input `d` (see [`PoolCount`]).
pub fn max_pool_count(
    name: &str,
    d: crate::spec::Dims,
    out: crate::spec::Dims,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> PoolCount {
    let mut cmp = 0;
    for oy in 0..out.h {
        for ox in 0..out.w {
            cmp += crate::spec::pool_window(d, kernel, stride, padding, oy, ox)
                .count()
                .saturating_sub(1);
        }
    }
    PoolCount {
        name: name.to_string(),
        outputs: out.len(),
        comparisons: cmp * d.c,
        depth: (kernel * kernel).next_power_of_two().trailing_zeros() as usize,
    }
}

fn relus_of(per_channel: &[usize]) -> usize {
    per_channel.iter().sum()
}

/// Count comparisons and multiplications per activation layer.
pub fn count(spec: &ModelSpec) -> Result<ReluCount, ModelError> {
    let (src, dims) = spec.graph()?;
    let mut layers = Vec::new();
    let mut max_pools = Vec::new();
    for (i, l) in spec.layers.iter().enumerate() {
        let d = &dims[src[i][0]];
        if let Layer::MaxPool {
            name,
            kernel,
            stride,
            padding,
        } = l
        {
            max_pools.push(max_pool_count(
                name,
                *d,
                dims[i + 1],
                *kernel,
                *stride,
                *padding,
            ));
            continue;
        }
        let Layer::Act { name, kind } = l else {
            continue;
        };
        let n = d.len();
        let plane = d.plane();
        let (per_channel_relus, selects, dot, noise): (Vec<usize>, usize, usize, usize) = match kind
        {
            ActKind::Relu => (vec![plane; d.c], n, 0, 0),
            ActKind::Identity => (vec![0; d.c], 0, 0, 0),
            ActKind::Partial { relu_channels } => {
                let mut v = vec![0; d.c];
                v[..*relu_channels].fill(plane);
                (v, relu_channels * plane, 0, 0)
            }
            ActKind::Shared(s) => {
                let per = match &s.grouping {
                    Grouping::Patch { k, edge } | Grouping::CrossChannel { k, edge, .. } => {
                        patches_per_side(d.h, *k, *edge) * patches_per_side(d.w, *k, *edge)
                    }
                    Grouping::Channel => 1,
                    Grouping::Cluster { window, k } => cluster_groups(d.h, d.w, *window, *k),
                };
                // across channels: the first channel of each block carries the block's groups
                let span = match &s.grouping {
                    Grouping::CrossChannel { channels, .. } => (*channels).max(1),
                    _ => 1,
                };
                let per_channel = (0..d.c)
                    .map(|c| if c % span == 0 { per } else { 0 })
                    .collect();
                let dot = match s.decider {
                    Decider::Learned | Decider::Fc => n,
                    Decider::OneHot => 0,
                };
                let noise = if s.noise > 0.0 { n } else { 0 };
                (per_channel, n, dot, noise)
            }
        };
        let relus = relus_of(&per_channel_relus);
        layers.push(LayerCount {
            name: name.clone(),
            kind: kind.describe(),
            activations: n,
            relus,
            // comparisons per channel, rounded up where groups span several channels
            relus_per_channel: relus_of(&per_channel_relus).div_ceil(d.c.max(1)),
            selects,
            dot_mults: dot,
            noise_mults: noise,
            mults: selects + dot + noise,
        });
    }
    Ok(ReluCount {
        arch: spec.arch.to_string(),
        preset: spec.preset.clone(),
        total_relus: layers.iter().map(|l| l.relus).sum(),
        total_mults: layers.iter().map(|l| l.mults).sum(),
        maxpool_comparisons: max_pools.iter().map(|p| p.comparisons).sum(),
        max_pools,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::build;
    use crate::spec::Arch;

    /// Expected counts derived independently from the architecture's output sizes.
    fn plain_relus(arch: Arch) -> usize {
        let s = ModelSpec::original(arch);
        let dims = s.dims().unwrap();
        s.layers
            .iter()
            .zip(&dims)
            .filter(|(l, _)| matches!(l, Layer::Act { .. }))
            .map(|(_, d)| d.len())
            .sum()
    }

    fn total(arch: Arch, preset: &str) -> usize {
        count(&build(arch, preset).unwrap()).unwrap().total_relus
    }

    #[test]
    fn issue_acceptance_counts() {
        assert_eq!(total(Arch::Cifar10, "original"), 173056);
        assert_eq!(total(Arch::Cifar10, "uniform32"), 42112);
        assert_eq!(total(Arch::Cifar10, "uniform3"), 57472);
        assert_eq!(total(Arch::Svhn, "original"), 29216);
        assert_eq!(total(Arch::Svhn, "uniform32"), 2336);
    }

    #[test]
    fn counts_follow_the_architecture() {
        for arch in Arch::ALL {
            assert_eq!(total(arch, "original"), plain_relus(arch));
            let spec = ModelSpec::original(arch);
            let dims = spec.dims().unwrap();
            // Whole-channel sharing replaces each shared layer's C*H*W by C.
            let saved: usize = arch
                .shared_layers()
                .iter()
                .map(|n| {
                    let i = spec.layers.iter().position(|l| l.name() == *n).unwrap();
                    dims[i].len() - dims[i].c
                })
                .sum();
            assert_eq!(total(arch, "uniform32"), plain_relus(arch) - saved);
        }
    }

    #[test]
    fn per_channel_columns_match_paper_tables() {
        let per = |arch, p: &str| -> Vec<usize> {
            count(&build(arch, p).unwrap())
                .unwrap()
                .layers
                .iter()
                .map(|l| l.relus_per_channel)
                .collect()
        };
        // Table 5: (1024,1024), (121,121), (64,64), (1,1), (1,1024), (1024,1).
        assert_eq!(per(Arch::Cifar10, "original")[..2], [1024, 1024]);
        assert_eq!(per(Arch::Cifar10, "uniform3")[..2], [121, 121]);
        assert_eq!(per(Arch::Cifar10, "uniform4")[..2], [64, 64]);
        assert_eq!(per(Arch::Cifar10, "uniform32")[..2], [1, 1]);
        assert_eq!(per(Arch::Cifar10, "layer1-only")[..2], [1, 1024]);
        assert_eq!(per(Arch::Cifar10, "layer2-only")[..2], [1024, 1]);
        // Table 7: 8x8 windows with 8 clusters = 128 per channel per layer; mixed = 1 + 256.
        assert_eq!(per(Arch::Cifar10, "cluster8x8k8")[..2], [128, 128]);
        assert_eq!(per(Arch::Cifar10, "cluster-mixed")[..2], [1, 256]);
        // Table 6: 29x29 and 28x28 -> 9x9 with 3x3 patches.
        assert_eq!(per(Arch::Svhn, "original")[0], 29 * 29);
        assert_eq!(per(Arch::Svhn, "uniform3")[0], 81);
        assert_eq!(per(Arch::Fmnist, "uniform3")[0], 81);
        assert_eq!(per(Arch::Svhn, "adaptive256")[0], 256);
    }

    #[test]
    fn shafran_halves_second_layer() {
        let c = count(&build(Arch::Cifar10, "shafran").unwrap()).unwrap();
        assert_eq!(c.layers[0].relus, 0);
        assert_eq!(c.layers[1].relus, 32 * 1024);
        assert_eq!(
            c.total_relus,
            total(Arch::Cifar10, "original") - 65536 - 32768
        );
    }

    #[test]
    fn multiplications() {
        let c = count(&build(Arch::Cifar10, "fc-noise").unwrap()).unwrap();
        // select + dot product + noise flip per activation in the two shared layers.
        assert_eq!(c.layers[0].mults, 3 * 65536);
        let c = count(&build(Arch::Cifar10, "noise").unwrap()).unwrap();
        assert_eq!(c.layers[0].mults, 65536);
        assert_eq!(c.layers[1].mults, 2 * 65536);
    }
}
