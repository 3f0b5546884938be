//! Residual networks as graph data: the CIFAR ResNets of He et al. (2016) that ReLU-reduction
//! work evaluates, built from the same layers and edges as any other spec.
//!
//! - ResNet-20 for CIFAR-10: a 3x3 stem (16 channels), three stages of three basic blocks
//!   (16, 32, 64 channels; stride 2 at the start of stages 2 and 3), global average pooling,
//!   one linear layer. 19 ReLU layers.
//! - ResNet-18, CIFAR-100 variant: a 3x3 stem (64 channels, no max pooling), four stages of two
//!   basic blocks (64, 128, 256, 512 channels; stride 2 at the start of stages 2-4), global
//!   average pooling, one linear layer to 100 classes: 557,056 ReLUs at 32x32.
//!
//! A basic block is `conv3x3 - bn - relu - conv3x3 - bn`, added to the shortcut (the block's
//! input, or a strided `conv1x1 - bn` where the shape changes), then `relu`. Names count up
//! per kind: `conv1`, `bn1`, `relu1`, `add1`, ...; the classifier is `fc1`.

use std::collections::BTreeMap;

use crate::spec::{ActKind, Layer, INPUT};

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f32 = 1e-5;

#[derive(Default)]
struct Net {
    layers: Vec<Layer>,
    inputs: BTreeMap<String, Vec<String>>,
    convs: usize,
    bns: usize,
    relus: usize,
    adds: usize,
}

impl Net {
    /// The name of the last layer's output (the image before any layer).
    fn last(&self) -> String {
        self.layers
            .last()
            .map(|l| l.name().to_string())
            .unwrap_or_else(|| INPUT.to_string())
    }

    /// Push `layer`, reading `from` (the previous layer's output if `None`).
    fn push(&mut self, layer: Layer, from: Option<String>) -> String {
        let name = layer.name().to_string();
        if let Some(f) = from.filter(|f| *f != self.last()) {
            self.inputs.insert(name.clone(), vec![f]);
        }
        self.layers.push(layer);
        name
    }

    fn conv_bn(&mut self, from: Option<String>, c: usize, o: usize, k: usize, s: usize) -> String {
        self.convs += 1;
        self.push(
            Layer::Conv {
                name: format!("conv{}", self.convs),
                in_ch: c,
                out_ch: o,
                kernel: k,
                stride: s,
                padding: k / 2,
            },
            from,
        );
        self.bns += 1;
        self.push(
            Layer::BatchNorm {
                name: format!("bn{}", self.bns),
                eps: BN_EPS,
            },
            None,
        )
    }

    fn relu(&mut self) -> String {
        self.relus += 1;
        self.push(
            Layer::Act {
                name: format!("relu{}", self.relus),
                kind: ActKind::Relu,
            },
            None,
        )
    }

    /// One basic block from `c` to `o` channels with stride `s`.
    fn block(&mut self, c: usize, o: usize, s: usize) {
        let x = self.last();
        self.conv_bn(Some(x.clone()), c, o, 3, s);
        self.relu();
        let main = self.conv_bn(None, o, o, 3, 1);
        let short = if s != 1 || c != o {
            self.conv_bn(Some(x), c, o, 1, s)
        } else {
            x
        };
        self.adds += 1;
        let add = format!("add{}", self.adds);
        self.inputs.insert(add.clone(), vec![main, short]);
        self.layers.push(Layer::Add { name: add });
        self.relu();
    }
}

/// A CIFAR ResNet: stem width `stem`, `stages` as (channels, blocks), `classes` outputs.
/// Returns the layers and the graph edges (see [`crate::ModelSpec::inputs`]).
pub fn resnet(
    stem: usize,
    stages: &[(usize, usize)],
    classes: usize,
) -> (Vec<Layer>, BTreeMap<String, Vec<String>>) {
    let mut n = Net::default();
    n.conv_bn(None, 3, stem, 3, 1);
    n.relu();
    let mut c = stem;
    for (i, &(o, blocks)) in stages.iter().enumerate() {
        for b in 0..blocks {
            let s = if i > 0 && b == 0 { 2 } else { 1 };
            n.block(c, o, s);
            c = o;
        }
    }
    n.push(Layer::GlobalAvgPool { name: "gap".into() }, None);
    n.push(Layer::Flatten, None);
    n.push(
        Layer::Linear {
            name: "fc1".into(),
            in_f: c,
            out_f: classes,
        },
        None,
    );
    (n.layers, n.inputs)
}

/// ResNet-20 for CIFAR-10.
pub fn resnet20() -> (Vec<Layer>, BTreeMap<String, Vec<String>>) {
    resnet(16, &[(16, 3), (32, 3), (64, 3)], 10)
}

/// ResNet-18, CIFAR-100 variant.
pub fn resnet18_cifar100() -> (Vec<Layer>, BTreeMap<String, Vec<String>>) {
    resnet(64, &[(64, 2), (128, 2), (256, 2), (512, 2)], 100)
}

/// A small graph with every graph layer kind, for tests: `input 3x12x12 -> conv-bn-relu ->
/// maxpool 3/2 pad 1 -> basic block (identity shortcut) -> basic block (strided 1x1 shortcut)
/// -> global average pooling -> linear to 5`.
pub fn tiny_graph() -> crate::ModelSpec {
    let mut n = Net::default();
    n.conv_bn(None, 3, 4, 3, 1);
    n.relu();
    n.push(
        Layer::MaxPool {
            name: "maxpool1".into(),
            kernel: 3,
            stride: 2,
            padding: 1,
        },
        None,
    );
    n.block(4, 4, 1);
    n.block(4, 6, 2);
    n.push(Layer::GlobalAvgPool { name: "gap".into() }, None);
    n.push(Layer::Flatten, None);
    n.push(
        Layer::Linear {
            name: "fc1".into(),
            in_f: 6,
            out_f: 5,
        },
        None,
    );
    let mut spec = crate::ModelSpec::original(crate::Arch::Custom);
    spec.preset = "tiny-graph".into();
    spec.input = crate::Dims::new(3, 12, 12);
    spec.normalization = crate::Normalization::identity(3);
    spec.num_classes = 5;
    spec.layers = n.layers;
    spec.inputs = n.inputs;
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::Model;
    use crate::reference::forward;
    use crate::spec::{Arch, ModelSpec};
    use crate::{count, ModelError};

    fn image(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn resnet_relu_counts() {
        let c = count(&ModelSpec::original(Arch::Resnet18)).unwrap();
        assert_eq!(c.total_relus, 557_056);
        assert_eq!(c.layers.len(), 17);
        let c = count(&ModelSpec::original(Arch::Resnet20)).unwrap();
        assert_eq!(c.total_relus, 16 * 1024 * 7 + 32 * 256 * 6 + 64 * 64 * 6);
        assert_eq!(c.layers.len(), 19);
        for a in Arch::RESNETS {
            let s = ModelSpec::original(a);
            s.validate().unwrap();
            assert_eq!(
                *s.dims().unwrap().last().unwrap(),
                crate::Dims::new(a.classes(), 1, 1)
            );
        }
    }

    #[test]
    fn tiny_graph_counts_max_pool_comparisons_apart() {
        let s = tiny_graph();
        s.validate().unwrap();
        let c = count(&s).unwrap();
        // 4x12x12 -> 6x6 with a 3x3 window, stride 2, padding 1: the first row and column of
        // outputs see 2 input rows/columns, the others 3.
        let per_plane: usize = (0..6)
            .flat_map(|oy| (0..6).map(move |ox| (oy, ox)))
            .map(|(oy, ox)| {
                let r = if oy == 0 { 2 } else { 3 };
                let q = if ox == 0 { 2 } else { 3 };
                r * q - 1
            })
            .sum();
        assert_eq!(c.maxpool_comparisons, 4 * per_plane);
        assert_eq!(c.max_pools[0].depth, 4);
        assert_eq!(c.total_relus, 4 * 144 + 2 * 4 * 36 + 2 * 6 * 9);
        assert_eq!(c.total_comparisons(), c.total_relus + 4 * per_plane);
    }

    #[test]
    fn folding_batch_norm_keeps_the_function() {
        let mut m = Model::random(tiny_graph(), None, 5).unwrap();
        // Non-trivial statistics.
        for (k, t) in m.params.iter_mut() {
            if k.starts_with("bn") {
                for (i, v) in t.data.iter_mut().enumerate() {
                    let u = ((i * 7 + k.len()) % 11) as f32 / 11.0;
                    *v = if k.ends_with("running_var") || k.ends_with("weight") {
                        0.5 + u
                    } else {
                        u - 0.5
                    };
                }
            }
        }
        let folded = m.fold_batchnorm().unwrap();
        assert!(!folded
            .spec
            .layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm { .. })));
        assert!(!folded.params.keys().any(|k| k.starts_with("bn")));
        folded.validate().unwrap();
        for seed in 0..3 {
            let x = image(3 * 144, seed);
            let a = forward(&m, &x, &mut |_| false).unwrap();
            let b = forward(&folded, &x, &mut |_| false).unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()), "{p} vs {q}");
            }
        }
        // The residual block's edges survive the fold (the add reads the folded convs).
        assert_eq!(
            folded.spec.inputs["add2"],
            vec!["conv5".to_string(), "conv6".to_string()]
        );
    }

    #[test]
    fn broken_edges_are_named() {
        let base = tiny_graph();
        let err = |f: &dyn Fn(&mut ModelSpec)| -> String {
            let mut s = base.clone();
            f(&mut s);
            match s.validate() {
                Err(ModelError::Spec(m)) => m,
                other => panic!("expected a spec error, got {other:?}"),
            }
        };
        let e = err(&|s| {
            s.inputs.insert("add1".into(), vec!["bn3".into()]);
        });
        assert!(e.contains("add1") && e.contains("needs 2"), "{e}");
        let e = err(&|s| {
            s.inputs.insert("conv2".into(), vec!["fc1".into()]);
        });
        assert!(e.contains("conv2") && e.contains("fc1"), "{e}");
        let e = err(&|s| {
            s.inputs.insert("nope".into(), vec!["input".into()]);
        });
        assert!(e.contains("nope"), "{e}");
        let e = err(&|s| {
            s.inputs
                .insert("add2".into(), vec!["bn5".into(), "relu3".into()]);
        });
        assert!(e.contains("add2") && e.contains("shapes"), "{e}");
        // A branch nobody reads.
        let e = err(&|s| {
            s.inputs
                .insert("add2".into(), vec!["bn5".into(), "bn5".into()]);
        });
        assert!(e.contains("never used"), "{e}");
    }

    #[test]
    fn version_one_files_still_load() {
        let m = Model::random(ModelSpec::original(Arch::Svhn), None, 1).unwrap();
        let mut json: serde_json::Value = serde_json::to_value(&m.spec).unwrap();
        assert!(json.get("inputs").is_none() && json.get("class_names").is_none());
        json["format_version"] = 1.into();
        let old: ModelSpec = serde_json::from_value(json).unwrap();
        old.validate().unwrap();
        let mut mm = m.clone();
        mm.spec = old;
        let back = Model::from_bytes(&mm.to_bytes().unwrap()).unwrap();
        assert_eq!(back.spec.format_version, 1);
        assert_eq!(back.params, m.params);
        let mut bad = mm.spec.clone();
        bad.format_version = 3;
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("version 3"));
    }
}
