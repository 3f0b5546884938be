//! IDX files (MNIST / Fashion-MNIST): big-endian header `00 00 08 NDIM`, NDIM big-endian u32
//! dimensions, then the unsigned bytes. Gzip-compressed files are recognised by their magic.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{DataError, FormatProblem};
use crate::util::{expect_eof, read_exact, read_exact_vec, MAX_PAYLOAD};

/// A decoded IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Decodes an IDX stream with `ndim` dimensions. `total_len` is the stream's exact length when
/// known (uncompressed files): it is checked against the header before anything is allocated.
pub fn read_idx<R: Read>(
    r: &mut R,
    ndim: u8,
    total_len: Option<u64>,
    path: &Path,
) -> Result<Idx, DataError> {
    let mut magic = [0u8; 4];
    read_exact(r, &mut magic, path, "the IDX header")?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != ndim {
        return Err(DataError::format(
            path,
            FormatProblem::BadMagic,
            format!(
                "magic {:02x}{:02x}{:02x}{:02x}, expected 000008{:02x} (unsigned bytes, {ndim} dims)",
                magic[0], magic[1], magic[2], magic[3], ndim
            ),
        ));
    }
    let mut dims = Vec::with_capacity(ndim as usize);
    let mut total: u64 = 1;
    for _ in 0..ndim {
        let mut d = [0u8; 4];
        read_exact(r, &mut d, path, "the IDX dimensions")?;
        let d = u32::from_be_bytes(d) as u64;
        total = total.saturating_mul(d);
        dims.push(d as usize);
    }
    if total > MAX_PAYLOAD {
        return Err(DataError::format(
            path,
            FormatProblem::TooLarge,
            format!("dimensions {dims:?} announce {total} bytes (limit {MAX_PAYLOAD})"),
        ));
    }
    let header = 4 + 4 * ndim as u64;
    if let Some(len) = total_len {
        let have = len.saturating_sub(header);
        if have < total {
            return Err(DataError::format(
                path,
                FormatProblem::ShortRecord,
                format!("dimensions {dims:?} announce {total} data bytes, file has {have}"),
            ));
        }
        if have > total {
            return Err(DataError::format(
                path,
                FormatProblem::CountMismatch,
                format!(
                    "dimensions {dims:?} announce {total} data bytes, file has {have} (trailing data)"
                ),
            ));
        }
    }
    let data = read_exact_vec(r, total, path, "the IDX data")?;
    expect_eof(r, path, "the IDX data")?;
    Ok(Idx { dims, data })
}

/// Reads an IDX file from disk, gunzipping it if it starts with the gzip magic.
pub fn read_idx_file(path: &Path, ndim: u8) -> Result<Idx, DataError> {
    let mut f = File::open(path).map_err(|e| DataError::io(path, e))?;
    let len = f.metadata().map_err(|e| DataError::io(path, e))?.len();
    let mut head = [0u8; 2];
    let n = read_prefix(&mut f, &mut head).map_err(|e| DataError::io(path, e))?;
    let chained = std::io::Cursor::new(head[..n].to_vec()).chain(BufReader::new(f));
    if n == 2 && head == [0x1f, 0x8b] {
        let mut gz = GzDecoder::new(chained);
        read_idx(&mut gz, ndim, None, path)
    } else {
        let mut plain = chained;
        read_idx(&mut plain, ndim, Some(len), path)
    }
}

/// Decodes IDX bytes held in memory (gzip or plain).
pub fn read_idx_bytes(bytes: &[u8], ndim: u8, path: &Path) -> Result<Idx, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        read_idx(&mut GzDecoder::new(bytes), ndim, None, path)
    } else {
        read_idx(&mut &bytes[..], ndim, Some(bytes.len() as u64), path)
    }
}

fn read_prefix<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
