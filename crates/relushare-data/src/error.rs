//! Error type of the crate: every failure names the file (or URL) and what is wrong with it.

use std::fmt;
use std::path::PathBuf;

/// What is wrong with a dataset file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatProblem {
    /// The file does not start with the expected magic number / header.
    BadMagic,
    /// Two counts that must agree do not (images vs labels, header vs payload, dims vs data).
    CountMismatch,
    /// The file ends in the middle of a record or before the data its header announces.
    ShortRecord,
    /// A label is outside the dataset's class range.
    LabelOutOfRange,
    /// The images do not have the dimensions the dataset requires.
    WrongDims,
    /// The header announces more data than this crate accepts (checked before allocating).
    TooLarge,
    /// A valid file of a kind this crate does not read (e.g. MATLAB v7.3/HDF5, complex data).
    Unsupported,
    /// Anything else that makes the file unreadable (bad compression stream, bad element tag, ...).
    Corrupt,
}

impl fmt::Display for FormatProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            FormatProblem::BadMagic => "bad magic",
            FormatProblem::CountMismatch => "count mismatch",
            FormatProblem::ShortRecord => "short record",
            FormatProblem::LabelOutOfRange => "label out of range",
            FormatProblem::WrongDims => "wrong dims",
            FormatProblem::TooLarge => "too large",
            FormatProblem::Unsupported => "unsupported",
            FormatProblem::Corrupt => "corrupt",
        };
        f.write_str(s)
    }
}

/// Errors of `relushare-data`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A required dataset file is missing.
    #[error("dataset file not found: {path}\n  {hint}")]
    NotFound { path: PathBuf, hint: String },
    /// A real dataset was requested without a data directory.
    #[error("dataset `{dataset}` needs a data directory (--data-dir DIR); fetch it with `relushare data fetch --dataset {dataset} --data-dir DIR`")]
    NoDataDir { dataset: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but its contents are wrong.
    #[error("{path}: {problem}: {detail}")]
    Format {
        path: PathBuf,
        problem: FormatProblem,
        detail: String,
    },
    /// A download failed (network error, HTTP status, offline).
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    /// A downloaded or existing file does not have the published checksum.
    #[error("{path}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// A name that is not a dataset.
    #[error("unknown dataset `{0}` (expected one of: cifar10, svhn, fmnist, synthetic)")]
    UnknownDataset(String),
    /// Invalid argument (e.g. zero-sized synthetic dims).
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn format(
        path: impl Into<PathBuf>,
        problem: FormatProblem,
        detail: impl Into<String>,
    ) -> Self {
        DataError::Format {
            path: path.into(),
            problem,
            detail: detail.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }

    /// The format problem, if this is a [`DataError::Format`].
    pub fn problem(&self) -> Option<FormatProblem> {
        match self {
            DataError::Format { problem, .. } => Some(*problem),
            _ => None,
        }
    }
}
