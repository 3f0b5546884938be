//! Cluster-map files: the output of `relushare cluster`, the input of cluster presets.
//!
//! A safetensors file with one U32 tensor per activation layer (named by the layer, shape
//! `[C,H,W]`, channel-local group ids; with a window M the ids of window `j` are
//! `start_j .. start_j + k`) and the metadata key `"relushare-clustermap"` holding
//! `{"layers": {"act2": {"k": 256, "window": null}}}`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::group::GroupMap;
use crate::spec::{Decider, Dims, Grouping, SharedAct};
use crate::ModelError;

pub const META_KEY: &str = "relushare-clustermap";

/// One layer's clustering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerClusters {
    pub k: usize,
    pub window: Option<usize>,
    pub dims: Dims,
    /// Channel-local group id of every activation, CHW order.
    pub map: Vec<u32>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LayerMeta {
    k: usize,
    window: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    layers: BTreeMap<String, LayerMeta>,
}

/// Cluster maps of one or more layers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterMaps {
    pub layers: BTreeMap<String, LayerClusters>,
}

impl LayerClusters {
    /// Validate the ids against k / window.
    pub fn validate(&self) -> Result<GroupMap, ModelError> {
        let act = SharedAct {
            grouping: Grouping::Cluster {
                window: self.window,
                k: self.k,
            },
            decider: Decider::Learned,
            noise: 0.0,
        };
        GroupMap::build(&act, self.dims, Some(&self.map))
    }
}

impl ClusterMaps {
    pub fn get(&self, layer: &str) -> Option<&LayerClusters> {
        self.layers.get(layer)
    }

    pub fn insert(&mut self, layer: &str, c: LayerClusters) -> Result<(), ModelError> {
        c.validate()
            .map_err(|e| ModelError::Shape(format!("cluster map {layer}: {e}")))?;
        self.layers.insert(layer.to_string(), c);
        Ok(())
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let meta = Meta {
            layers: self
                .layers
                .iter()
                .map(|(n, l)| {
                    (
                        n.clone(),
                        LayerMeta {
                            k: l.k,
                            window: l.window,
                        },
                    )
                })
                .collect(),
        };
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .layers
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    vec![l.dims.c, l.dims.h, l.dims.w],
                    l.map.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let mut views = Vec::new();
        for (n, s, b) in &bytes {
            views.push((
                n.clone(),
                TensorView::new(Dtype::U32, s.clone(), b)
                    .map_err(|e| ModelError::Format(e.to_string()))?,
            ));
        }
        let meta = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&meta).map_err(|e| ModelError::Format(e.to_string()))?,
        )]);
        safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Format(e.to_string()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            ModelError::Format(format!("not a cluster-map file (safetensors: {e})"))
        })?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Format(format!("safetensors header: {e}")))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "no '{META_KEY}' metadata: not written by `relushare cluster`"
                ))
            })?;
        let meta: Meta = serde_json::from_str(meta_json)
            .map_err(|e| ModelError::Format(format!("broken cluster-map metadata: {e}")))?;
        let mut out = ClusterMaps::default();
        for (name, lm) in meta.layers {
            let t = st.tensor(&name).map_err(|_| {
                ModelError::Format(format!(
                    "cluster-map metadata names {name}, which has no tensor"
                ))
            })?;
            if t.dtype() != Dtype::U32 || t.shape().len() != 3 {
                return Err(ModelError::Format(format!(
                    "cluster map {name}: expected a U32 [C,H,W] tensor, got {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            let s = t.shape();
            let map = t
                .data()
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.insert(
                &name,
                LayerClusters {
                    k: lm.k,
                    window: lm.window,
                    dims: Dims::new(s[0], s[1], s[2]),
                    map,
                },
            )?;
        }
        Ok(out)
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        crate::io::write_atomic(path, &self.to_bytes()?)
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = crate::io::read_limited(path, crate::file::MAX_FILE_BYTES)?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::{ActKind, Layer, ModelSpec};

    /// Valid cluster maps for every cluster layer of `spec`: groups assigned in raster order
    /// within each window (a patch-like map), for tests.
    pub(crate) fn patchlike_maps(spec: &ModelSpec) -> ClusterMaps {
        let dims = spec.dims().unwrap();
        let mut maps = ClusterMaps::default();
        for (l, d) in spec.layers.iter().zip(&dims) {
            if let Layer::Act {
                name,
                kind: ActKind::Shared(s),
            } = l
            {
                if let Grouping::Cluster { window, k } = s.grouping {
                    let m = window.unwrap_or(d.h.max(d.w));
                    let nx = d.w.div_ceil(m);
                    let mut starts = vec![];
                    let mut acc = 0;
                    for wy in 0..d.h.div_ceil(m) {
                        for wx in 0..nx {
                            starts.push(acc);
                            acc += k.min(m.min(d.h - wy * m) * m.min(d.w - wx * m));
                        }
                    }
                    let mut plane = vec![0u32; d.plane()];
                    let mut seen = vec![0usize; starts.len()];
                    for y in 0..d.h {
                        for x in 0..d.w {
                            let win = (y / m) * nx + x / m;
                            let cap = if win + 1 < starts.len() {
                                starts[win + 1] - starts[win]
                            } else {
                                acc - starts[win]
                            };
                            plane[y * d.w + x] = (starts[win] + seen[win] % cap) as u32;
                            seen[win] += 1;
                        }
                    }
                    let map = (0..d.c).flat_map(|_| plane.iter().copied()).collect();
                    maps.insert(
                        name,
                        LayerClusters {
                            k,
                            window,
                            dims: *d,
                            map,
                        },
                    )
                    .unwrap();
                }
            }
        }
        maps
    }

    #[test]
    fn round_trip_and_errors() {
        let spec = crate::presets::build(crate::spec::Arch::Cifar10, "cluster8x8k8").unwrap();
        let maps = patchlike_maps(&spec);
        assert_eq!(maps.layers.len(), 2);
        let bytes = maps.to_bytes().unwrap();
        assert_eq!(ClusterMaps::from_bytes(&bytes).unwrap(), maps);
        assert!(ClusterMaps::from_bytes(&bytes[..100]).is_err());
        let mut bad = maps.clone();
        bad.layers.get_mut("act1").unwrap().map[0] = 9999;
        assert!(ClusterMaps::from_bytes(&bad.to_bytes().unwrap()).is_err());
    }
}
