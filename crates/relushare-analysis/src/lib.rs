//! Analysis for the ReLU-sharing reproduction: data-driven clustering of activations by their
//! ReLU responses ([`cluster`]), activation traces of the plain f32 reference network
//! ([`trace`]), total variation per layer ([`tv`]), the paper's published numbers
//! ([`paper`]), the PNG figures ([`plot`]) and the reproduction report ([`report`]). No Burn: everything runs on
//! `relushare_model`'s reference forward pass.

pub mod cluster;
pub mod paper;
pub mod plot;
pub mod report;
pub mod trace;
pub mod tv;

/// Errors of the analysis crate.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    /// Sizes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A bad parameter or input.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// An error from the model crate.
    #[error(transparent)]
    Model(#[from] relushare_model::ModelError),
    /// Drawing a figure failed.
    #[error("plot {path}: {msg}")]
    Plot { path: String, msg: String },
    /// File system errors.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
