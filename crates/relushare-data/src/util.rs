//! Small I/O helpers: bounded reads that allocate only as data actually arrives.

use std::io::{self, Read};
use std::path::Path;

use crate::error::{DataError, FormatProblem};

/// Largest payload any loader accepts from one file (checked before allocating): 4 GiB.
pub const MAX_PAYLOAD: u64 = 4 << 30;

/// Initial reservation for a read whose size comes from an untrusted header.
const RESERVE_CAP: usize = 16 << 20;

/// Maps an error from reading `path` to a [`DataError`]. `UnexpectedEof` becomes a short record;
/// errors from a decompressor (`InvalidData`/`InvalidInput`) become `Corrupt`.
pub fn read_err(path: &Path, e: io::Error, what: &str) -> DataError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => DataError::format(
            path,
            FormatProblem::ShortRecord,
            format!("file ends inside {what}"),
        ),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => DataError::format(
            path,
            FormatProblem::Corrupt,
            format!("while reading {what}: {e}"),
        ),
        _ => DataError::io(path, e),
    }
}

/// Reads exactly `n` bytes, growing the buffer only as bytes arrive (a lying header cannot make
/// us allocate more than the data that is really there, plus a bounded reservation).
pub fn read_exact_vec<R: Read>(
    r: &mut R,
    n: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, DataError> {
    read_exact_vec_reserve(r, n, RESERVE_CAP as u64, path, what)
}

/// Like [`read_exact_vec`], reserving up to `reserve` bytes up front (a bound the caller trusts,
/// e.g. derived from the real size of the input).
pub fn read_exact_vec_reserve<R: Read>(
    r: &mut R,
    n: u64,
    reserve: u64,
    path: &Path,
    what: &str,
) -> Result<Vec<u8>, DataError> {
    if n > MAX_PAYLOAD {
        return Err(DataError::format(
            path,
            FormatProblem::TooLarge,
            format!("{what} announces {n} bytes (limit {MAX_PAYLOAD})"),
        ));
    }
    let mut buf = Vec::with_capacity(n.min(reserve.max(RESERVE_CAP as u64)) as usize);
    let got = r
        .take(n)
        .read_to_end(&mut buf)
        .map_err(|e| read_err(path, e, what))?;
    if (got as u64) < n {
        return Err(DataError::format(
            path,
            FormatProblem::ShortRecord,
            format!("{what}: expected {n} bytes, file has only {got}"),
        ));
    }
    Ok(buf)
}

/// Reads exactly `buf.len()` bytes into `buf`.
pub fn read_exact<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<(), DataError> {
    r.read_exact(buf).map_err(|e| read_err(path, e, what))
}

/// Fails if the reader still has data (a file longer than its header says).
pub fn expect_eof<R: Read>(r: &mut R, path: &Path, what: &str) -> Result<(), DataError> {
    let mut one = [0u8; 1];
    loop {
        match r.read(&mut one) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(DataError::format(
                    path,
                    FormatProblem::CountMismatch,
                    format!("trailing data after {what}"),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(path, e, what)),
        }
    }
}
