//! relushare-model: the paper's CNNs as data, ReLU-sharing layer specs, group maps, ReLU
//! counting, the model file shared by training and secure inference, and a plain f32
//! reference forward pass. No Burn, no MPC: both sides build on this crate.
//!
//! - [`spec`]: architectures ([`Arch`]), layers, activation kinds, [`ModelSpec`].
//! - [`presets`]: the paper's table rows by name, plus a free-form per-layer spec.
//! - [`group`]: which activations share one decision ([`GroupMap`]).
//! - [`count`]: secure comparisons and multiplications per layer.
//! - [`file`]: [`Model`] (spec + parameters + cluster maps) and its safetensors file.
//! - [`clustermap`]: cluster-map files from `relushare cluster`.
//! - [`reference`]: the f32 forward pass every other implementation is checked against.
//! - [`resnet`]: ResNet-20 and ResNet-18 (CIFAR variants) as graph data.

pub mod clustermap;
pub mod count;
pub mod file;
pub mod group;
pub mod io;
pub mod presets;
pub mod reference;
pub mod resnet;
pub mod spec;

pub use clustermap::{ClusterMaps, LayerClusters};
pub use count::{count, LayerCount, ReluCount};
pub use file::{Model, Tensor};
pub use group::GroupMap;
pub use spec::{
    ActKind, Arch, Decider, Dims, EdgePolicy, Grouping, Layer, ModelSpec, Normalization, SharedAct,
};

/// Errors of this crate. Every message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid model spec: {0}")]
    Spec(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("bad model file: {0}")]
    Format(String),
    #[error("{path}: {inner}")]
    InFile {
        path: String,
        inner: Box<ModelError>,
    },
}

impl ModelError {
    /// Attach the file this error came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            e @ (ModelError::Io { .. } | ModelError::InFile { .. }) => e,
            e => ModelError::InFile {
                path: path.display().to_string(),
                inner: Box::new(e),
            },
        }
    }
}
