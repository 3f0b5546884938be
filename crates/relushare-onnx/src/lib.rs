//! relushare-onnx: import a CNN exported by PyTorch (`torch.onnx.export`, opsets 11-20) as a
//! relushare [`Model`] (graph spec + parameters), ready for counting, ReLU sharing, training and
//! secure inference.
//!
//! - [`proto`]: the ONNX protobuf messages, generated at build time by prost-build from the
//!   official `onnx.proto` (compiled with the pure-Rust protox, so no `protoc` is needed).
//! - [`import_file`] / [`import_bytes`]: decoding and conversion. Every operator maps to one
//!   layer of [`relushare_model::Layer`] or folds away; see [`SUPPORTED`] and the README for
//!   the exact rules.
//!
//! Anything outside the supported set (another operator, a dynamic shape, a grouped or
//! dilated convolution, a bias that cannot fold, a corrupt file) is an [`OnnxError`] that
//! names the node, its operator and what is supported. The importer never panics on its
//! input: a property test feeds it mutated files.
//!
//! Every imported ReLU becomes an activation layer named after its ONNX node if that name is
//! a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`, unique), else `relu1`, `relu2`, ... by
//! position among the ReLUs, so `--spec "relu3=channel"` addresses the third ReLU. Other
//! layers follow the same rule with the prefixes `conv`, `fc`, `bn`, `pool`, `maxpool`, `gap`,
//! `add` and `dropout`.

mod convert;

/// The ONNX protobuf messages (package `onnx`), generated from `proto/onnx.proto`.
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use convert::{
    describe, import_bytes, import_file, ImportOptions, Imported, LayerOrigin, LayerRow,
};

use relushare_model::ModelError;

/// The operators the importer accepts (domain `ai.onnx`).
pub const SUPPORTED: &str = "Conv (square kernel, symmetric padding, group 1, dilation 1), Gemm, MatMul (+ Add of a constant bias), Relu, AveragePool (no padding), GlobalAveragePool, MaxPool, BatchNormalization, Add, Flatten, Reshape (to [batch, features], static shape), Dropout, Identity, Constant";

/// Oldest and newest default-domain opset versions accepted.
pub const OPSETS: (i64, i64) = (11, 23);

/// Largest ONNX file read (guards allocations; weights must be inside the file).
pub const MAX_FILE_BYTES: u64 = 1 << 31;

/// Errors of the importer. Every message says what is wrong and, for a node, which one.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a protobuf `ModelProto` (corrupt, truncated, another format).
    #[error(
        "not a readable ONNX file (protobuf decoding failed: {0}); is it a complete .onnx model?"
    )]
    Decode(String),
    /// A well-formed protobuf that is not a usable ONNX model (no graph, unknown opset, ...).
    #[error("not a usable ONNX model: {0}")]
    Model(String),
    /// An operator outside [`SUPPORTED`].
    #[error("node '{node}': unsupported operator {op}; relushare imports {SUPPORTED}")]
    Unsupported { node: String, op: String },
    /// A supported operator used in a way the importer cannot express.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },
    /// The graph's inputs or outputs are not one NCHW float image and one output.
    #[error("graph {0}")]
    Graph(String),
    /// The converted model does not validate (a bug or a graph shape the spec rejects).
    #[error("the imported network is not a valid relushare model: {0}")]
    Spec(#[from] ModelError),
}

/// Shorthand for results of this crate.
pub type Result<T, E = OnnxError> = std::result::Result<T, E>;
