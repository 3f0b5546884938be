//! Fine-tuning a given model (`relushare train --init MODEL --spec ...`): the network is the
//! init model's (its layers, graph edges, input normalisation and classes), with ReLU-sharing
//! kinds from a free-form spec applied to its named activation layers
//! ([`relushare_model::presets::apply_freeform`]); the parameters start from the init model's.
//!
//! Rules ([`init_from`]):
//! - every parameter of the new network whose name and shape the init model has is copied
//!   (convolutions, linear layers, batch norm with its running statistics);
//! - the sharing parameters (`<act>.v`, `<act>.fc_bias`) are copied only where the layer keeps
//!   the init model's activation kind; a layer that changes kind gets them initialised as a
//!   fresh network does (`v = 1`, FC bias 0);
//! - anything else missing or of another shape is an error naming the parameter.
//!
//! Cluster layers take their maps from the given cluster-map file, or else from the init
//! model when the layer keeps its kind.

use relushare_model::{
    presets, ActKind, ClusterMaps, Grouping, LayerClusters, Model, ModelSpec, SharedAct,
};

use crate::NnError;

/// Whether a parameter is a ReLU-sharing layer's (`v`, `fc_bias`).
fn is_sharing_param(name: &str) -> bool {
    name.ends_with(".v") || name.ends_with(".fc_bias")
}

/// The layer a parameter belongs to (`conv1.weight` -> `conv1`).
fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map(|(l, _)| l).unwrap_or(name)
}

/// The starting model of a fine-tuning run: `init`'s network with `freeform` applied (e.g.
/// `"relu3=channel,relu5=patch3"`; `None` keeps its activations), parameters copied from
/// `init` (see the module docs), new sharing parameters initialised from `seed`.
pub fn init_from(
    init: &Model,
    freeform: Option<&str>,
    cluster_maps: Option<&ClusterMaps>,
    seed: u64,
) -> Result<Model, NnError> {
    init.validate()
        .map_err(|e| NnError::Invalid(format!("the init model is not valid: {e}")))?;
    let mut spec: ModelSpec = init.spec.clone();
    if let Some(text) = freeform {
        presets::apply_freeform(&mut spec, text).map_err(|e| {
            NnError::Invalid(format!(
                "--spec on the init model's layers: {e} (its activation layers: {})",
                init.spec.act_names().join(", ")
            ))
        })?;
    }
    let unchanged = |layer: &str| -> bool {
        matches!((init.spec.act(layer), spec.act(layer)), (Some(a), Some(b)) if a == b)
    };

    // Cluster maps: the given file, or the init model's for layers that keep their kind.
    let need = presets::needs_cluster_map(&spec);
    let maps = match cluster_maps {
        Some(m) => Some(m.clone()),
        None if need.is_empty() => None,
        None => {
            let mut maps = ClusterMaps::default();
            for name in &need {
                let map = init.group_maps.get(name).filter(|_| unchanged(name));
                let (
                    Some(map),
                    Some(ActKind::Shared(SharedAct {
                        grouping: Grouping::Cluster { window, k },
                        ..
                    })),
                ) = (map, spec.act(name))
                else {
                    return Err(NnError::Invalid(format!(
                        "layer {name} clusters by data and the init model has no cluster map for it: run `relushare cluster` on the init model and pass --cluster-map"
                    )));
                };
                let dims = spec
                    .layer_input(name)
                    .expect("a validated spec's layer has input dims");
                maps.insert(
                    name,
                    LayerClusters {
                        k: *k,
                        window: *window,
                        dims,
                        map: map.clone(),
                    },
                )?;
            }
            Some(maps)
        }
    };

    let mut model = Model::random(spec.clone(), maps.as_ref(), seed)?;
    for (name, t) in model.params.iter_mut() {
        let sharing = is_sharing_param(name);
        match init.params.get(name) {
            Some(src) if src.shape == t.shape => {
                if !sharing || unchanged(layer_of(name)) {
                    t.data.clone_from(&src.data);
                }
            }
            Some(src) => {
                if !sharing {
                    return Err(NnError::Invalid(format!(
                        "parameter {name}: the init model's has shape {:?}, the network needs {:?}",
                        src.shape, t.shape
                    )));
                }
            }
            None if sharing => {}
            None => {
                return Err(NnError::Invalid(format!(
                    "the init model has no parameter {name} (shape {:?})",
                    t.shape
                )))
            }
        }
    }
    model.validate()?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use relushare_model::{Arch, Decider};

    #[test]
    fn copies_weights_and_initialises_new_sharing_params() {
        let mut spec = presets::build(Arch::Svhn, "original").unwrap();
        presets::apply_freeform(&mut spec, "act2=patch3").unwrap();
        let mut init = Model::random(spec, None, 3).unwrap();
        for x in &mut init.params.get_mut("act2.v").unwrap().data {
            *x = 0.5;
        }
        // act1 becomes a channel-sharing FC layer; act2 keeps its kind and its v.
        let m = init_from(&init, Some("act1=channel:fc"), None, 9).unwrap();
        assert!(matches!(
            m.spec.act("act1"),
            Some(ActKind::Shared(SharedAct {
                grouping: Grouping::Channel,
                decider: Decider::Fc,
                ..
            }))
        ));
        for name in [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "fc1.bias",
            "act2.v",
        ] {
            assert_eq!(m.params[name], init.params[name], "{name}");
        }
        assert!(m.params["act1.v"].data.iter().all(|&x| x == 1.0));
        assert!(m.params["act1.fc_bias"].data.iter().all(|&x| x == 0.0));
        // act2 changed kind: fresh v.
        let m = init_from(&init, Some("act2=patch4"), None, 9).unwrap();
        assert!(m.params["act2.v"].data.iter().all(|&x| x == 1.0));
        // no spec: the init model itself
        assert_eq!(init_from(&init, None, None, 1).unwrap(), init);
    }

    #[test]
    fn mismatches_are_clear_errors() {
        let init = Model::random(presets::build(Arch::Svhn, "original").unwrap(), None, 3).unwrap();
        let e = init_from(&init, Some("relu9=channel"), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("relu9") && e.contains("act1, act2"), "{e}");
        let e = init_from(&init, Some("conv1=channel"), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an activation layer"), "{e}");
        let e = init_from(&init, Some("act1=cluster4"), None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cluster map"), "{e}");
        let mut broken = init.clone();
        broken.params.remove("conv2.bias");
        let e = init_from(&broken, None, None, 1).unwrap_err().to_string();
        assert!(e.contains("init model"), "{e}");
    }
}
