//! relushare-nn: the paper's ReLU-sharing CNNs on Burn.
//!
//! - [`net`]: a [`relushare_model::ModelSpec`] as a Burn network: graph models (residual adds,
//!   max and global pooling, batch norm with running statistics), every activation kind (ReLU
//!   sharing with a straight-through estimator), import from and export to the model file.
//! - [`finetune`]: the starting model of `train --init` (an imported or trained model with
//!   ReLU sharing applied to its activation layers).
//! - [`batch`]: normalization and CIFAR-style augmentation of `u8` image batches.
//! - [`train()`](train::train): SGD/Adam training with schedules, weight decay, checkpoints
//!   and resume, per-epoch metrics; [`evaluate`](eval::evaluate): accuracy of a model file.
//! - [`conv`]: a faster convolution (im2col + GEMM, hand-written backward) for training on flex.
//! - [`norm`]: training-mode batch norm with a hand-written backward on flex.
//! - [`pool`]: average pooling with a hand-written backward for training on flex.
//! - [`backend`]: the Burn device (CPU `flex` by default; `wgpu`, `cuda`, `tch` behind features).
//!
//! The library has no CLI and prints nothing: progress goes through [`train::Progress`].

pub mod backend;
pub mod batch;
pub mod conv;
pub mod eval;
pub mod finetune;
pub mod gate;
pub mod net;
pub mod norm;
pub mod pool;
pub mod train;

pub use backend::BackendKind;
pub use batch::{normalization_for, Augmentation};
pub use eval::{evaluate, evaluate_detailed, EvalConfig, Evaluation};
pub use finetune::init_from;
pub use net::Net;
pub use train::{
    train, train_model, Distill, EpochMetrics, LrSchedule, NoProgress, OptimizerKind, Progress,
    TrainConfig, TrainOutcome,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error(transparent)]
    Model(#[from] relushare_model::ModelError),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("backend error: {0}")]
    Backend(String),
    #[error("{path}: {message}")]
    Checkpoint { path: String, message: String },
    #[error("training diverged at epoch {epoch}: loss is {loss} (try a smaller --lr)")]
    Diverged { epoch: usize, loss: f32 },
}
