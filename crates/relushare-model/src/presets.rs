//! Named presets matching the paper's table rows, and a free-form per-layer spec.
//!
//! Sharing applies to the layers the paper names: `act1` and `act2` for CIFAR-10, `act1` for
//! SVHN and Fashion-MNIST ([`Arch::shared_layers`]).

use crate::spec::{ActKind, Arch, Decider, EdgePolicy, Grouping, ModelSpec, SharedAct};
use crate::ModelError;

/// Every preset name, in the order of the paper's tables.
pub const NAMES: [&str; 12] = [
    "original",
    "uniform3",
    "uniform4",
    "uniform32",
    "layer1-only",
    "layer2-only",
    "noise",
    "fc-noise",
    "shafran",
    "adaptive256",
    "cluster8x8k8",
    "cluster-mixed",
];

/// Noise level of the paper's noisy presets (Eq. 4 with p = 20%).
pub const PAPER_NOISE: f32 = 0.2;

fn shared(grouping: Grouping, decider: Decider, noise: f32) -> ActKind {
    ActKind::Shared(SharedAct {
        grouping,
        decider,
        noise,
    })
}

/// The edge policy the paper's tables imply: 32x32 planes use partial edge patches
/// (Table 5: 11x11 = 121 3x3 patches), 29x29 and 28x28 planes merge the remainder
/// (Table 6: 9x9 = 81).
fn paper_edge(arch: Arch) -> EdgePolicy {
    match arch {
        Arch::Cifar10 | Arch::Resnet20 | Arch::Resnet18 | Arch::Custom => EdgePolicy::Partial,
        Arch::Svhn | Arch::Fmnist => EdgePolicy::Merge,
    }
}

/// Build the spec of a named preset.
pub fn build(arch: Arch, preset: &str) -> Result<ModelSpec, ModelError> {
    if arch == Arch::Custom {
        return Err(ModelError::Spec(format!(
            "preset '{preset}' needs one of the paper's architectures (cifar10, svhn, fmnist); a custom or imported model takes a per-layer --spec"
        )));
    }
    let mut spec = ModelSpec::original(arch);
    let layers = arch.shared_layers();
    if preset == "original" {
        return Ok(spec);
    }
    if layers.is_empty() {
        return Err(ModelError::Spec(format!(
            "{arch} has only the 'original' preset; share its ReLUs with a per-layer --spec (e.g. \"relu1=patch2,relu2=patch2\")"
        )));
    }
    let first = layers[0];
    let second = layers.get(1).copied();
    let need_second = || {
        second.ok_or_else(|| {
            ModelError::Spec(format!(
                "preset '{preset}' needs two shared layers; {arch} shares only {first} (try uniform32)"
            ))
        })
    };
    let act2_channels = spec.layer_input("act2").map(|d| d.c);
    let mut set = |name: &str, kind: ActKind| -> Result<(), ModelError> {
        *spec
            .act_mut(name)
            .ok_or_else(|| ModelError::Spec(format!("{arch} has no layer {name}")))? = kind;
        Ok(())
    };
    let patch = |k| Grouping::Patch {
        k,
        edge: paper_edge(arch),
    };
    match preset {
        "original" => {}
        "uniform3" | "uniform4" => {
            let k = if preset == "uniform3" { 3 } else { 4 };
            for l in layers {
                set(l, shared(patch(k), Decider::Learned, 0.0))?;
            }
        }
        "uniform32" => {
            for l in layers {
                set(l, shared(Grouping::Channel, Decider::Learned, 0.0))?;
            }
        }
        "layer1-only" => set(first, shared(Grouping::Channel, Decider::Learned, 0.0))?,
        "layer2-only" => set(
            need_second()?,
            shared(Grouping::Channel, Decider::Learned, 0.0),
        )?,
        "noise" => {
            // Single ReLU per channel on the middle activation; noise on the last shared layer.
            for (i, l) in layers.iter().enumerate() {
                let noise = if i + 1 == layers.len() {
                    PAPER_NOISE
                } else {
                    0.0
                };
                set(l, shared(Grouping::Channel, Decider::OneHot, noise))?;
            }
        }
        "fc-noise" => {
            for l in layers {
                set(l, shared(Grouping::Channel, Decider::Fc, PAPER_NOISE))?;
            }
        }
        "shafran" => {
            // Shafran et al.: first ReLU layer removed, second a 50% partial activation.
            set("act1", ActKind::Identity)?;
            let c = act2_channels.ok_or_else(|| {
                ModelError::Spec(format!("{arch} has no second activation layer"))
            })?;
            set(
                "act2",
                ActKind::Partial {
                    relu_channels: c / 2,
                },
            )?;
        }
        "adaptive256" => {
            for l in layers {
                set(
                    l,
                    shared(
                        Grouping::Cluster {
                            window: None,
                            k: 256,
                        },
                        Decider::Learned,
                        0.0,
                    ),
                )?;
            }
        }
        "cluster8x8k8" => {
            for l in layers {
                set(
                    l,
                    shared(
                        Grouping::Cluster {
                            window: Some(8),
                            k: 8,
                        },
                        Decider::Learned,
                        0.0,
                    ),
                )?;
            }
        }
        "cluster-mixed" => {
            let second = need_second()?;
            set(first, shared(Grouping::Channel, Decider::OneHot, 0.0))?;
            set(
                second,
                shared(
                    Grouping::Cluster {
                        window: None,
                        k: 256,
                    },
                    Decider::Learned,
                    0.0,
                ),
            )?;
        }
        other => {
            return Err(ModelError::Spec(format!(
                "unknown preset '{other}': expected one of {}",
                NAMES.join(", ")
            )))
        }
    }
    spec.preset = preset.to_string();
    spec.validate()?;
    Ok(spec)
}

/// Apply a free-form per-layer spec on top of `spec`.
///
/// Grammar: comma-separated `LAYER=KIND[:OPTION]...`, where KIND is `relu`, `identity`,
/// `partialF` (fraction of channels with ReLU, e.g. `partial0.5`), `patchK` (partial edges),
/// `patchK-merge`, `patchK/cM` or `patchK-merge/cM` (each KxK patch shares one decision across
/// M consecutive channels), `channel`, `clusterK` (K clusters per channel) or `clusterK/wM`
/// (K clusters per MxM window); OPTION is `learned` (default), `onehot`, `fc` or
/// `noiseP` (e.g. `noise0.2`). Example: `act1=patch3,act2=channel:fc:noise0.2`.
pub fn apply_freeform(spec: &mut ModelSpec, text: &str) -> Result<(), ModelError> {
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (layer, rest) = item.split_once('=').ok_or_else(|| {
            ModelError::Spec(format!("'{item}': expected LAYER=KIND, e.g. act1=patch3"))
        })?;
        let mut parts = rest.split(':');
        let kind_s = parts.next().unwrap_or_default();
        let mut decider = Decider::Learned;
        let mut noise = 0.0f32;
        for opt in parts {
            match opt {
                "learned" => decider = Decider::Learned,
                "onehot" | "one-hot" => decider = Decider::OneHot,
                "fc" => decider = Decider::Fc,
                o if o.starts_with("noise") => {
                    noise = o[5..].parse().map_err(|_| {
                        ModelError::Spec(format!("'{item}': bad noise '{o}', e.g. noise0.2"))
                    })?
                }
                o => {
                    return Err(ModelError::Spec(format!(
                        "'{item}': unknown option '{o}' (learned, onehot, fc, noiseP)"
                    )))
                }
            }
        }
        let num = |s: &str| -> Result<usize, ModelError> {
            s.parse()
                .map_err(|_| ModelError::Spec(format!("'{item}': bad number '{s}'")))
        };
        let dims = spec
            .layer_input(layer)
            .ok_or_else(|| ModelError::Spec(format!("'{item}': no layer named {layer}")))?;
        let kind = if kind_s == "relu" {
            ActKind::Relu
        } else if kind_s == "identity" {
            ActKind::Identity
        } else if let Some(f) = kind_s.strip_prefix("partial") {
            let f: f32 = f
                .parse()
                .map_err(|_| ModelError::Spec(format!("'{item}': bad fraction '{f}'")))?;
            ActKind::Partial {
                relu_channels: (f * dims.c as f32).round() as usize,
            }
        } else if kind_s == "channel" {
            shared(Grouping::Channel, decider, noise)
        } else if let Some(k) = kind_s.strip_prefix("patch") {
            // patchK[-merge][/cM]: M > 1 shares each patch's decision across M channels
            let (k, channels) = match k.split_once("/c") {
                Some((k, m)) => (k, Some(num(m)?)),
                None => (k, None),
            };
            let (k, edge) = match k.strip_suffix("-merge") {
                Some(k) => (num(k)?, EdgePolicy::Merge),
                None => (num(k)?, EdgePolicy::Partial),
            };
            match channels {
                Some(channels) if channels != 1 => {
                    shared(Grouping::CrossChannel { k, edge, channels }, decider, noise)
                }
                _ => shared(Grouping::Patch { k, edge }, decider, noise),
            }
        } else if let Some(k) = kind_s.strip_prefix("cluster") {
            let (k, window) = match k.split_once("/w") {
                Some((k, m)) => (num(k)?, Some(num(m)?)),
                None => (num(k)?, None),
            };
            shared(Grouping::Cluster { window, k }, decider, noise)
        } else {
            return Err(ModelError::Spec(format!(
                "'{item}': unknown kind '{kind_s}' (relu, identity, partialF, patchK, patchK-merge, patchK/cM, channel, clusterK, clusterK/wM)"
            )));
        };
        *spec.act_mut(layer).ok_or_else(|| {
            ModelError::Spec(format!("'{item}': {layer} is not an activation layer"))
        })? = kind;
    }
    spec.preset = "custom".into();
    spec.validate()
}

/// Whether the spec needs a cluster map (has a `Grouping::Cluster` layer).
pub fn needs_cluster_map(spec: &ModelSpec) -> Vec<String> {
    spec.layers
        .iter()
        .filter_map(|l| match l {
            crate::spec::Layer::Act {
                name,
                kind:
                    ActKind::Shared(SharedAct {
                        grouping: Grouping::Cluster { .. },
                        ..
                    }),
            } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_builds_for_cifar() {
        for p in NAMES {
            let s = build(Arch::Cifar10, p).unwrap();
            assert_eq!(s.preset, p);
        }
        assert!(build(Arch::Cifar10, "nope").is_err());
    }

    #[test]
    fn two_layer_presets_need_two_layers() {
        assert!(build(Arch::Svhn, "layer2-only").is_err());
        assert!(build(Arch::Fmnist, "cluster-mixed").is_err());
        assert!(build(Arch::Svhn, "uniform3").is_ok());
    }

    #[test]
    fn freeform_parses_and_rejects() {
        let mut s = ModelSpec::original(Arch::Cifar10);
        apply_freeform(&mut s, "act1=patch5-merge:onehot, act3=channel:fc:noise0.1").unwrap();
        assert_eq!(
            s.act("act1"),
            Some(&shared(
                Grouping::Patch {
                    k: 5,
                    edge: EdgePolicy::Merge
                },
                Decider::OneHot,
                0.0
            ))
        );
        assert_eq!(
            s.act("act3"),
            Some(&shared(Grouping::Channel, Decider::Fc, 0.1))
        );
        for bad in [
            "act1",
            "act1=blob",
            "act9=relu",
            "conv1=relu",
            "act1=patch3:fast",
            "act1=patchx",
            "act1=patch3:fc",
            "act1=channel:noise2",
        ] {
            let mut s = ModelSpec::original(Arch::Cifar10);
            assert!(apply_freeform(&mut s, bad).is_err(), "{bad} accepted");
        }
    }
}
