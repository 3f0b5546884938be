//! The model file: a safetensors file whose metadata holds the JSON [`ModelSpec`] under the
//! key `"relushare"`; f32 tensors for the parameters and u32 tensors `<act>.groups` for
//! cluster maps. `train` writes it; `eval`, `count`, `cluster` and secure inference load it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::clustermap::ClusterMaps;
use crate::group::GroupMap;
use crate::spec::{ActKind, Decider, Grouping, Layer, ModelSpec, SharedAct};
use crate::ModelError;

/// Metadata key holding the JSON spec.
pub const SPEC_KEY: &str = "relushare";
/// Largest model file we read (guards against absurd allocations).
pub const MAX_FILE_BYTES: u64 = 1 << 32;

/// A dense f32 tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape/data mismatch"
        );
        Tensor { shape, data }
    }
    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: vec![0.0; n],
        }
    }
}

/// A spec with its parameters and cluster maps.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub spec: ModelSpec,
    pub params: BTreeMap<String, Tensor>,
    /// Cluster maps of `Grouping::Cluster` layers: channel-local group id per activation.
    pub group_maps: BTreeMap<String, Vec<u32>>,
}

/// The parameters of a `BatchNorm` layer, each `[C]`.
pub const BN_PARAMS: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// Every parameter a spec needs, with its shape, in layer order.
pub fn expected_params(spec: &ModelSpec) -> Result<Vec<(String, Vec<usize>)>, ModelError> {
    let dims = spec.in_dims()?;
    let mut out = Vec::new();
    for (l, d) in spec.layers.iter().zip(&dims) {
        match l {
            Layer::Conv {
                name,
                in_ch,
                out_ch,
                kernel,
                ..
            } => {
                out.push((
                    format!("{name}.weight"),
                    vec![*out_ch, *in_ch, *kernel, *kernel],
                ));
                out.push((format!("{name}.bias"), vec![*out_ch]));
            }
            Layer::Linear { name, in_f, out_f } => {
                out.push((format!("{name}.weight"), vec![*out_f, *in_f]));
                out.push((format!("{name}.bias"), vec![*out_f]));
            }
            Layer::Act {
                name,
                kind: ActKind::Shared(s),
            } => {
                if matches!(s.decider, Decider::Learned | Decider::Fc) {
                    out.push((format!("{name}.v"), vec![d.c, d.h, d.w]));
                }
                if s.decider == Decider::Fc {
                    out.push((format!("{name}.fc_bias"), vec![d.c]));
                }
            }
            Layer::BatchNorm { name, .. } => {
                for p in BN_PARAMS {
                    out.push((format!("{name}.{p}"), vec![d.c]));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Model {
    /// Freshly initialised parameters (PyTorch's default uniform(-1/sqrt(fan_in), ..) for
    /// weights and biases, v = 1, FC bias 0), deterministic from `seed`. Cluster layers take
    /// their maps from `maps`.
    pub fn random(
        spec: ModelSpec,
        maps: Option<&ClusterMaps>,
        seed: u64,
    ) -> Result<Self, ModelError> {
        spec.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = BTreeMap::new();
        for (name, shape) in expected_params(&spec)? {
            let n: usize = shape.iter().product();
            let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or(&name);
            let is_bn = spec
                .layers
                .iter()
                .any(|l| matches!(l, Layer::BatchNorm { name: b, .. } if b == layer));
            let data = if name.ends_with(".v")
                || (is_bn && (name.ends_with(".weight") || name.ends_with(".running_var")))
            {
                vec![1.0; n]
            } else if name.ends_with(".fc_bias") || is_bn {
                vec![0.0; n]
            } else {
                let layer = name.rsplit_once('.').map(|(l, _)| l).unwrap_or(&name);
                let fan_in = fan_in(&spec, layer);
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            params.insert(name, Tensor::new(shape, data));
        }
        let mut group_maps = BTreeMap::new();
        for name in crate::presets::needs_cluster_map(&spec) {
            let maps = maps.ok_or_else(|| {
                ModelError::Spec(format!(
                    "layer {name} uses data-driven clusters: pass a cluster map (relushare cluster --out MAP, then --cluster-map MAP)"
                ))
            })?;
            let m = maps.get(&name).ok_or_else(|| {
                ModelError::Spec(format!("the cluster map file has no map for layer {name}"))
            })?;
            group_maps.insert(name, m.map.clone());
        }
        let model = Model {
            spec,
            params,
            group_maps,
        };
        model.validate()?;
        Ok(model)
    }

    /// Check that parameters and cluster maps match the spec exactly.
    pub fn validate(&self) -> Result<(), ModelError> {
        self.spec.validate()?;
        let expected = expected_params(&self.spec)?;
        for (name, shape) in &expected {
            let t = self.params.get(name).ok_or_else(|| {
                ModelError::Shape(format!("missing parameter {name} (shape {shape:?})"))
            })?;
            if &t.shape != shape {
                return Err(ModelError::Shape(format!(
                    "parameter {name} has shape {:?}, the spec needs {shape:?}",
                    t.shape
                )));
            }
            if t.data.len() != shape.iter().product::<usize>() {
                return Err(ModelError::Shape(format!("parameter {name}: data length")));
            }
            if t.data.iter().any(|x| !x.is_finite()) {
                return Err(ModelError::Format(format!(
                    "parameter {name} holds NaN or infinite values"
                )));
            }
        }
        if let Some(extra) = self
            .params
            .keys()
            .find(|k| !expected.iter().any(|(n, _)| n == *k))
        {
            return Err(ModelError::Shape(format!(
                "unexpected parameter {extra} (not used by the spec)"
            )));
        }
        for name in self.group_maps.keys() {
            if !crate::presets::needs_cluster_map(&self.spec).contains(name) {
                return Err(ModelError::Shape(format!(
                    "cluster map for {name}, which is not a cluster layer"
                )));
            }
        }
        self.group_maps_built()?;
        Ok(())
    }

    /// Group maps of every sharing layer, by layer name.
    pub fn group_maps_built(&self) -> Result<BTreeMap<String, GroupMap>, ModelError> {
        let dims = self.spec.in_dims()?;
        let mut out = BTreeMap::new();
        for (l, d) in self.spec.layers.iter().zip(&dims) {
            if let Layer::Act {
                name,
                kind: ActKind::Shared(s),
            } = l
            {
                out.insert(name.clone(), self.group_map_for(name, s, *d)?);
            }
        }
        Ok(out)
    }

    fn group_map_for(
        &self,
        name: &str,
        s: &SharedAct,
        d: crate::spec::Dims,
    ) -> Result<GroupMap, ModelError> {
        let explicit = match s.grouping {
            Grouping::Cluster { .. } => Some(self.group_maps.get(name).ok_or_else(|| {
                ModelError::Shape(format!("cluster layer {name} has no group map"))
            })?),
            _ => None,
        };
        GroupMap::build(s, d, explicit.map(|v| v.as_slice()))
            .map_err(|e| ModelError::Shape(format!("{name}: {e}")))
    }

    pub fn param(&self, name: &str) -> Result<&Tensor, ModelError> {
        self.params
            .get(name)
            .ok_or_else(|| ModelError::Shape(format!("missing parameter {name}")))
    }

    /// Serialize to bytes (the model-file format).
    pub fn to_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let spec = serde_json::to_string(&self.spec)
            .map_err(|e| ModelError::Format(format!("spec to JSON: {e}")))?;
        let f32_bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .params
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.shape.clone(),
                    t.data.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let dims = self.spec.in_dims()?;
        let mut u32_bytes = Vec::new();
        for (name, map) in &self.group_maps {
            let d = self
                .spec
                .layers
                .iter()
                .position(|l| l.name() == name)
                .map(|i| dims[i])
                .ok_or_else(|| ModelError::Shape(format!("group map for unknown layer {name}")))?;
            u32_bytes.push((
                format!("{name}.groups"),
                vec![d.c, d.h, d.w],
                map.iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>(),
            ));
        }
        let mut views = Vec::new();
        for (n, s, b) in &f32_bytes {
            views.push((n.clone(), view(Dtype::F32, s, b)?));
        }
        for (n, s, b) in &u32_bytes {
            views.push((n.clone(), view(Dtype::U32, s, b)?));
        }
        let meta = HashMap::from([(SPEC_KEY.to_string(), spec)]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| ModelError::Format(format!("safetensors: {e}")))
    }

    /// Parse and validate a model file's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(|e| {
            ModelError::Format(format!("not a relushare model file (safetensors: {e})"))
        })?;
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Format(format!("safetensors header: {e}")))?;
        let spec_json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(SPEC_KEY))
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "safetensors file without a '{SPEC_KEY}' spec in its metadata (not written by relushare)"
                ))
            })?;
        let spec: ModelSpec = serde_json::from_str(spec_json)
            .map_err(|e| ModelError::Format(format!("broken model spec header: {e}")))?;
        spec.validate()?;
        let mut params = BTreeMap::new();
        let mut group_maps = BTreeMap::new();
        for (name, t) in st.tensors() {
            let shape = t.shape().to_vec();
            match t.dtype() {
                Dtype::F32 => {
                    let data = t
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    params.insert(name, Tensor { shape, data });
                }
                Dtype::U32 => {
                    let layer = name.strip_suffix(".groups").ok_or_else(|| {
                        ModelError::Format(format!("u32 tensor {name} is not a group map"))
                    })?;
                    let data = t
                        .data()
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    group_maps.insert(layer.to_string(), data);
                }
                other => {
                    return Err(ModelError::Format(format!(
                        "tensor {name} has dtype {other:?}; expected F32 or U32"
                    )))
                }
            }
        }
        let model = Model {
            spec,
            params,
            group_maps,
        };
        model.validate()?;
        Ok(model)
    }

    /// Write atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.validate()?;
        crate::io::write_atomic(path, &self.to_bytes()?)
    }

    /// Read and validate a model file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = crate::io::read_limited(path, MAX_FILE_BYTES)?;
        Self::from_bytes(&bytes).map_err(|e| e.in_file(path))
    }
}

impl Model {
    /// The inference form of the model: every `BatchNorm` folded into the convolution or
    /// linear layer that feeds it (`W' = W * g / sqrt(var + eps)` per output channel,
    /// `b' = (b - mean) * g / sqrt(var + eps) + beta`), so fixed-point and secure inference
    /// never see a batch norm. A model without batch norms comes back unchanged. Fails, naming
    /// the layer, when a batch norm reads anything else or its input also feeds another layer.
    pub fn fold_batchnorm(&self) -> Result<Model, ModelError> {
        if !self
            .spec
            .layers
            .iter()
            .any(|l| matches!(l, Layer::BatchNorm { .. }))
        {
            return Ok(self.clone());
        }
        let src = self.spec.sources()?;
        let users = self.spec.consumers()?;
        let mut params = self.params.clone();
        // Tensor id each old tensor is replaced by (a folded norm's output is its input).
        let mut alias: Vec<usize> = (0..=self.spec.layers.len()).collect();
        let mut keep = vec![true; self.spec.layers.len()];
        for (j, l) in self.spec.layers.iter().enumerate() {
            let Layer::BatchNorm { name, eps } = l else {
                continue;
            };
            let t = src[j][0];
            let prev = t.checked_sub(1).map(|i| &self.spec.layers[i]);
            let (lin, out_ch) = match prev {
                Some(Layer::Conv { name, out_ch, .. }) => (name.clone(), *out_ch),
                Some(Layer::Linear { name, out_f, .. }) => (name.clone(), *out_f),
                _ => {
                    return Err(ModelError::Spec(format!(
                        "batch norm {name} cannot be folded: it reads {}, not a convolution or linear layer",
                        prev.map(|p| p.name()).unwrap_or(crate::spec::INPUT)
                    )))
                }
            };
            if users[t].len() != 1 {
                return Err(ModelError::Spec(format!(
                    "batch norm {name} cannot be folded: the output of {lin} also feeds another layer"
                )));
            }
            let get = |p: &str| -> Result<Vec<f32>, ModelError> {
                Ok(self.param(&format!("{name}.{p}"))?.data.clone())
            };
            let (g, beta, mean, var) = (
                get("weight")?,
                get("bias")?,
                get("running_mean")?,
                get("running_var")?,
            );
            let w = params
                .get_mut(&format!("{lin}.weight"))
                .ok_or_else(|| ModelError::Shape(format!("missing parameter {lin}.weight")))?;
            let per = w.data.len() / out_ch.max(1);
            let scale: Vec<f32> = (0..out_ch).map(|o| g[o] / (var[o] + eps).sqrt()).collect();
            for (o, row) in w.data.chunks_mut(per.max(1)).enumerate() {
                row.iter_mut().for_each(|v| *v *= scale[o]);
            }
            let b = params
                .get_mut(&format!("{lin}.bias"))
                .ok_or_else(|| ModelError::Shape(format!("missing parameter {lin}.bias")))?;
            for o in 0..out_ch {
                b.data[o] = (b.data[o] - mean[o]) * scale[o] + beta[o];
            }
            for p in BN_PARAMS {
                params.remove(&format!("{name}.{p}"));
            }
            alias[j + 1] = alias[t];
            keep[j] = false;
        }
        // Renumber: tensor ids of the kept layers.
        let mut new_id = vec![0usize; self.spec.layers.len() + 1];
        let mut layers = Vec::new();
        let mut new_src = Vec::new();
        for (j, l) in self.spec.layers.iter().enumerate() {
            if !keep[j] {
                continue;
            }
            new_src.push(src[j].iter().map(|&t| new_id[alias[t]]).collect::<Vec<_>>());
            layers.push(l.clone());
            new_id[j + 1] = layers.len();
        }
        let mut spec = self.spec.clone();
        spec.set_graph(layers, &new_src)?;
        let folded = Model {
            spec,
            params,
            group_maps: self.group_maps.clone(),
        };
        folded.validate()?;
        Ok(folded)
    }
}

fn view<'a>(dtype: Dtype, shape: &[usize], bytes: &'a [u8]) -> Result<TensorView<'a>, ModelError> {
    TensorView::new(dtype, shape.to_vec(), bytes)
        .map_err(|e| ModelError::Format(format!("tensor view: {e}")))
}

fn fan_in(spec: &ModelSpec, layer: &str) -> usize {
    spec.layers
        .iter()
        .find_map(|l| match l {
            Layer::Conv {
                name,
                in_ch,
                kernel,
                ..
            } if name == layer => Some(in_ch * kernel * kernel),
            Layer::Linear { name, in_f, .. } if name == layer => Some(*in_f),
            _ => None,
        })
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::{build, NAMES};
    use crate::spec::Arch;

    fn maps_for(spec: &ModelSpec) -> ClusterMaps {
        crate::clustermap::tests::patchlike_maps(spec)
    }

    #[test]
    fn round_trip_every_preset() {
        let dir = tempfile::tempdir().unwrap();
        for arch in Arch::ALL {
            for p in NAMES {
                let Ok(spec) = build(arch, p) else { continue };
                let maps = maps_for(&spec);
                let m = Model::random(spec, Some(&maps), 7).unwrap();
                let path = dir.path().join(format!("{arch}-{p}.safetensors"));
                m.save(&path).unwrap();
                assert_eq!(Model::load(&path).unwrap(), m, "{arch} {p}");
            }
        }
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let m = Model::random(build(Arch::Svhn, "fc-noise").unwrap(), None, 1).unwrap();
        let bytes = m.to_bytes().unwrap();
        // Truncated file.
        let e = Model::from_bytes(&bytes[..bytes.len() / 2]).unwrap_err();
        assert!(matches!(e, ModelError::Format(_)), "{e}");
        // Garbage.
        assert!(Model::from_bytes(b"hello").is_err());
        // Wrong shape: a spec whose conv has another size.
        let mut other = m.clone();
        other.params.get_mut("conv1.weight").unwrap().shape = vec![32, 3, 2, 8];
        let e = Model::from_bytes(&other.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("conv1.weight"), "{e}");
        // Missing parameter.
        let mut other = m.clone();
        other.params.remove("act1.fc_bias");
        let e = Model::from_bytes(&other.to_bytes().unwrap()).unwrap_err();
        assert!(e.to_string().contains("act1.fc_bias"), "{e}");
        // No spec.
        let plain = safetensors::serialize(
            vec![("x", view(Dtype::F32, &[1], &[0, 0, 0, 0]).unwrap())],
            None,
        )
        .unwrap();
        let e = Model::from_bytes(&plain).unwrap_err();
        assert!(e.to_string().contains("spec"), "{e}");
    }

    #[test]
    fn cluster_presets_need_maps() {
        let e = Model::random(build(Arch::Cifar10, "adaptive256").unwrap(), None, 1).unwrap_err();
        assert!(e.to_string().contains("cluster"), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.safetensors");
        std::fs::write(&p, b"\x08\0\0\0\0\0\0\0{}").unwrap();
        let e = Model::load(&p).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors"), "{e}");
        let e = Model::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
