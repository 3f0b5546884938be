//! CIFAR-10 binary version: files of 3073-byte records (1 label byte, then 1024 R, 1024 G and
//! 1024 B bytes, each plane row-major), i.e. already planar CHW.

use std::fs::File;
use std::path::Path;

use crate::error::{DataError, FormatProblem};
use crate::util::{read_err, read_exact_vec};

/// Bytes per image (3 x 32 x 32).
pub const IMAGE_BYTES: usize = 3 * 32 * 32;
/// Bytes per record (label + image).
pub const RECORD_BYTES: usize = 1 + IMAGE_BYTES;
/// Number of classes.
pub const CLASSES: u8 = 10;

/// Parses a whole CIFAR-10 batch held in memory into (images, labels).
pub fn parse_records(bytes: &[u8], path: &Path) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    if bytes.is_empty() {
        return Err(DataError::format(
            path,
            FormatProblem::CountMismatch,
            "file is empty (no records)",
        ));
    }
    let rem = bytes.len() % RECORD_BYTES;
    if rem != 0 {
        return Err(DataError::format(
            path,
            FormatProblem::ShortRecord,
            format!(
                "size {} is not a multiple of the {RECORD_BYTES}-byte record: record {} has only {rem} bytes",
                bytes.len(),
                bytes.len() / RECORD_BYTES
            ),
        ));
    }
    let n = bytes.len() / RECORD_BYTES;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(RECORD_BYTES).enumerate() {
        if rec[0] >= CLASSES {
            return Err(DataError::format(
                path,
                FormatProblem::LabelOutOfRange,
                format!("record {i} has label {} (classes are 0..=9)", rec[0]),
            ));
        }
        labels.push(rec[0]);
        images.extend_from_slice(&rec[1..]);
    }
    Ok((images, labels))
}

/// Reads one CIFAR-10 batch file, at most `max_records` records of it (the file's size is still
/// checked in full).
pub fn read_batch(
    path: &Path,
    max_records: Option<usize>,
) -> Result<(Vec<u8>, Vec<u8>), DataError> {
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
    if len == 0 {
        return parse_records(&[], path);
    }
    if len % RECORD_BYTES as u64 != 0 {
        let rem = len % RECORD_BYTES as u64;
        return Err(DataError::format(
            path,
            FormatProblem::ShortRecord,
            format!(
                "size {len} is not a multiple of the {RECORD_BYTES}-byte record: record {} has only {rem} bytes",
                len / RECORD_BYTES as u64
            ),
        ));
    }
    let records = len / RECORD_BYTES as u64;
    let take = match max_records {
        Some(m) => records.min(m as u64),
        None => records,
    };
    if take == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let bytes = read_exact_vec(&mut f, take * RECORD_BYTES as u64, path, "CIFAR-10 records")
        .map_err(|e| match e {
            DataError::Io { source, .. } => read_err(path, source, "CIFAR-10 records"),
            other => other,
        })?;
    parse_records(&bytes, path)
}
